//! `pingpost ledger export`: the records of a range of UTC days, for a spreadsheet or a
//! warehouse.
//!
//! - `jsonl`: each record's line exactly as stored, framing (`seq`, `sum`) included, so
//!   `seq` is a stable row id (load idempotently on it) and the lines still chain.
//! - `csv`: one record type per file (`--type`, default `sale`), with a fixed column set
//!   per type ([`columns`]); money in integer micros.
//!
//! Nothing is summed. A ledger whose chain does not verify, or with a malformed money
//! field anywhere (see [`super::money_problems`]), is refused before anything is written.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::report::csv_field;
use super::{
    check_money, read_records, verified_upto, DateRange, Entry, MoneyFields, ReadStats,
    KNOWN_TYPES, PRE_SEND_TYPES,
};

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

/// The CSV columns of a record type (the fixed set; a field a record lacks is empty).
/// `buyers`, `bids` and `skipped_total` of an auction are counts of its buyer lines, its
/// bids and its filter skips.
pub fn columns(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "sale" => &[
            "seq",
            "at",
            "generation",
            "lead_id",
            "ping_id",
            "auction_id",
            "seller",
            "buyer",
            "vertical",
            "currency",
            "test",
            "bid_micros",
            "seller_price_micros",
            "margin_micros",
            "attempt",
            "buyer_lead_id",
            // Last: added after the others, so a reader by position keeps working.
            "buyer_name",
        ],
        "auction" => &[
            "seq",
            "at",
            "generation",
            "auction_id",
            "ping_id",
            "seller",
            "vertical",
            "test",
            "direct",
            "score",
            "reserve_micros",
            "buyers",
            "bids",
            "skipped_total",
            "winner",
            "bid_micros",
            "seller_price_micros",
            "no_bid",
            "took_us",
        ],
        "post_attempt" => &[
            "seq",
            "at",
            "generation",
            "lead_id",
            "auction_id",
            "buyer",
            "attempt",
            "outcome",
            "reason",
            // Last: added after the others, so a reader by position keeps working.
            "test",
        ],
        "unsold" => &[
            "seq",
            "at",
            "generation",
            "lead_id",
            "ping_id",
            "auction_id",
            "seller",
            "reason",
            "attempts",
            // Last: added after the others.
            "test",
        ],
        "quote_reserved" | "quote_released" | "quote_expired" => &[
            "seq",
            "at",
            "generation",
            "type",
            "ping_id",
            "buyer",
            "price_micros",
            "reason",
            // Last: added after the others (`true` only for a test quote's holdless end).
            "test",
        ],
        "flush" => &["seq", "at", "generation", "start"],
        "model_decision" => &[
            "seq",
            "at",
            "generation",
            "vertical",
            "challenger",
            "champion",
            "promoted",
            "reason",
        ],
        "disposition" => &[
            "seq",
            "at",
            "generation",
            "lead_id",
            "auction_id",
            "buyer",
            "seller",
            "vertical",
            "outcome",
            "reason",
            "test",
        ],
        "refund" => &[
            "seq",
            "at",
            "generation",
            "lead_id",
            "auction_id",
            "buyer",
            "seller",
            "vertical",
            "currency",
            "buyer_refund_micros",
            "seller_clawback_micros",
            "margin_reversed_micros",
            "sold_at_ms",
            "return_window_days",
        ],
        "quote_opened" => &[
            "seq",
            "at",
            "generation",
            "ping_id",
            "auction_id",
            "seller",
            "vertical",
            "test",
            "price_micros",
            "currency",
            "expires_at_ms",
            "score",
        ],
        "post_sent" | "post_sending" | "pre_send" => &[
            "seq",
            "at",
            "generation",
            "type",
            "lead_id",
            "auction_id",
            "ping_id",
            "seller",
            "buyer",
            "attempt",
            "price_micros",
            "test",
        ],
        _ => return None,
    })
}

/// `--type a,b`: the types asked for (every known type when empty).
pub fn parse_types(text: Option<&str>) -> Result<Vec<String>, String> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    // An empty name between commas is refused, as `--type ""` is (black-box round 71a:
    // `sale,` ran as `sale`).
    if text.split(',').any(|t| t.trim().is_empty()) {
        return Err(format!(
            "--type {:?}: an empty record type (give types separated by commas, as in --type sale,refund)",
            text.chars().take(40).collect::<String>()
        ));
    }
    for t in text.split(',').map(str::trim) {
        if !KNOWN_TYPES.contains(&t) && !PRE_SEND_TYPES.contains(&t) {
            return Err(format!(
                "--type {:?}: unknown record type (known: {}, {})",
                t.chars().take(40).collect::<String>(),
                KNOWN_TYPES.join(", "),
                PRE_SEND_TYPES.join(", ")
            ));
        }
        if !out.iter().any(|x| x == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

fn cell(e: &Entry, col: &str) -> String {
    let v = &e.value;
    let count = |field: &str, pred: &dyn Fn(&Value) -> bool| {
        v.get(field)
            .and_then(Value::as_array)
            .map_or(0, |a| a.iter().filter(|x| pred(x)).count())
            .to_string()
    };
    match (e.kind.as_str(), col) {
        ("auction", "buyers") => count("buyers", &|_| true),
        ("auction", "bids") => count("buyers", &|l| {
            matches!(
                l.get("outcome").and_then(Value::as_str),
                Some("bid" | "fixed_price")
            )
        }),
        // A shutdown's flush has no `start`: written `false`, a start's `true`.
        ("flush", "start") => v
            .get("start")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        // These records carry `test` only for a test lead's (and did not before): `false`
        // when absent.
        (
            "post_attempt" | "unsold" | "quote_reserved" | "quote_released" | "quote_expired",
            "test",
        ) => v
            .get("test")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        ("auction", "skipped_total") => v
            .get("skipped")
            .and_then(|s| s.get("total"))
            .map_or(String::new(), |t| t.to_string()),
        _ => match v.get(col) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        },
    }
}

/// Writes the records of `range` (of `types`; all when empty) from `dir` to `out`.
/// CSV takes one type (`sale` when none is given). Returns the records written and what
/// the read skipped.
pub fn export(
    dir: &Path,
    range: DateRange,
    format: Format,
    types: &[String],
    out: &mut dyn Write,
) -> Result<(u64, ReadStats), String> {
    let csv_type = match (format, types) {
        (Format::Csv, []) => Some("sale".to_string()),
        (Format::Csv, [one]) => Some(one.clone()),
        (Format::Csv, _) => {
            return Err("--format csv takes one --type (a fixed column set per type); use --format jsonl for several".into())
        }
        (Format::Jsonl, _) => None,
    };
    let cols = match &csv_type {
        Some(t) => Some(columns(t).ok_or_else(|| {
            format!("--type {t}: no CSV columns for this type; use --format jsonl")
        })?),
        None => None,
    };
    let mut written = 0u64;
    let mut failed: Option<String> = None;
    // The ledger is refused before anything is written (the chain, then every money
    // field: records stream out as they are read, and a refused ledger leaves stdout
    // empty).
    let upto = verified_upto(dir)?;
    check_money(dir, upto)?;
    if let Some(cols) = cols {
        if let Err(e) = writeln!(out, "{}", cols.join(",")) {
            return Err(format!("writing: {e}"));
        }
    }
    let stats = read_records(dir, Some(upto), MoneyFields::Refuse, |e| {
        if !range.contains(range.day_of(&e)) {
            return true;
        }
        let wanted = match &csv_type {
            Some(t) => e.kind == *t,
            None => types.is_empty() || types.contains(&e.kind),
        };
        if !wanted {
            return true;
        }
        let r = match cols {
            Some(cols) => {
                let line: Vec<String> = cols.iter().map(|c| csv_field(&cell(&e, c))).collect();
                writeln!(out, "{}", line.join(","))
            }
            None => writeln!(out, "{}", e.raw),
        };
        if let Err(err) = r {
            failed = Some(format!("writing: {err}"));
            return false;
        }
        written += 1;
        true
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok((written, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_lists_refuse_empty_and_unknown_names() {
        assert_eq!(
            parse_types(Some("sale, refund,sale")).unwrap(),
            ["sale", "refund"]
        );
        assert!(parse_types(None).unwrap().is_empty());
        for bad in ["", "sale,", ",sale", "sale,,refund", " "] {
            let e = parse_types(Some(bad)).unwrap_err();
            assert!(e.contains("an empty record type"), "{bad:?}: {e}");
        }
        let e = parse_types(Some("sale,nope")).unwrap_err();
        assert!(e.contains("unknown record type"), "{e}");
    }
}
