//! The finance tools over the ledger: `pingpost ledger report | replay | export` and the
//! reconciliation half of `pingpost ledger verify` (docs/LEDGER.md, "Finance commands").
//!
//! Owns: reading the ledger's records tolerantly (any field or record type it does not
//! know is ignored; a record of a newer format version than [`RECORD_VERSION`] is skipped
//! and counted, never misread), the money fields' check ([`money_problems`]: a `*_micros`
//! field that is not an integer fitting `i64` is refused by `report`, `export` and
//! `replay`, and listed and skipped by `verify`, never read as 0), UTC date ranges, money
//! as decimal text, and loading a configuration without its secrets.
//!
//! Never: changes the ledger, reads lead fields (records carry none), uses floats for
//! money (integer micros throughout), or adds money in `i64`: each field is an `i64` as
//! the ledger writes it, and every sum is an exact `i128` (9,400 sales of 10^15 micros
//! already pass `i64::MAX`; no sum saturates or wraps).

pub mod export;
mod html;
pub mod reconcile;
pub mod replay;
pub mod report;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;

use chrono::NaiveDate;
use serde_json::Value;

use crate::core::record::RECORD_VERSION;
use crate::ledger::segments;

/// The record types this version of the tools knows (docs/OPERATIONS.md, "The ledger"):
/// every type this pingpost writes (the core's `Record`, see the test
/// `every_record_type_this_binary_writes_is_known`) but `post_sent`, which is in
/// [`PRE_SEND_TYPES`].
pub const KNOWN_TYPES: [&str; 12] = [
    "auction",
    "post_attempt",
    "sale",
    "unsold",
    "quote_opened",
    "quote_reserved",
    "quote_released",
    "quote_expired",
    "flush",
    "model_decision",
    "disposition",
    "refund",
];

/// Record types that say a lead is about to leave for a buyer (written before the
/// delivery, with `lead_id`, `buyer` and `attempt`): the exchange writes `post_sent`
/// (docs/LEDGER.md); the other names are accepted too. `verify` checks that each has an
/// outcome and lists those without one as "delivered, outcome unknown".
pub const PRE_SEND_TYPES: [&str; 3] = ["post_sending", "post_sent", "pre_send"];

/// One record read from the ledger.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The segment's file name (`seg-00000001.jsonl`).
    pub segment: String,
    /// 1-based line number in the segment.
    pub line: usize,
    /// The framing's sequence number (0 if the line has none).
    pub seq: u64,
    /// `type`.
    pub kind: String,
    /// The day of `at` (UTC), if it has one.
    pub day: Option<NaiveDate>,
    /// The line as stored (without its `\n`).
    pub raw: String,
    /// The line parsed.
    pub value: Value,
}

impl Entry {
    pub fn str(&self, field: &str) -> &str {
        self.value.get(field).and_then(Value::as_str).unwrap_or("")
    }

    pub fn i64(&self, field: &str) -> Option<i64> {
        self.value.get(field).and_then(Value::as_i64)
    }

    pub fn bool(&self, field: &str) -> bool {
        self.value
            .get(field)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// Where it is, for messages: `seg-00000001.jsonl seq 42`, or by its line number for
    /// a line with no `seq` (black-box round 93b: such a line was named "seq 0").
    pub fn place(&self) -> String {
        if self.value.get("seq").and_then(Value::as_u64).is_some() {
            format!("{} seq {}", self.segment, self.seq)
        } else {
            format!("{} line {}", self.segment, self.line)
        }
    }

    /// What is wrong with the record's money fields ([`money_problems`]), naming the
    /// record (segment and seq), its type and each field; `None` when nothing is.
    pub fn money_problem(&self) -> Option<String> {
        let bad = record_money_problems(&self.kind, &self.value);
        if bad.is_empty() {
            return None;
        }
        let kind = if self.kind.is_empty() {
            "untyped"
        } else {
            &self.kind
        };
        Some(format!(
            "{}: {kind} record: {}: a money field must be a whole number of micros from {} to {}, as the exchange writes it, and every {kind} record has each of its money fields",
            self.place(),
            bad.join(", "),
            i64::MIN,
            i64::MAX
        ))
    }
}

impl Entry {
    /// A record of a type this tool knows without a readable `at` (missing, or not an
    /// RFC 3339 time): the exchange writes one on every record, so this is damage or an
    /// edit (black-box round 57a: a sale with `"at":"yesterday"` was counted by `report`
    /// on a blank day, left out of `export --from/--to`, and `verify` passed).
    pub fn time_problem(&self) -> Option<String> {
        if self.day.is_some()
            || !(KNOWN_TYPES.contains(&self.kind.as_str())
                || PRE_SEND_TYPES.contains(&self.kind.as_str()))
        {
            return None;
        }
        let shown = match self.value.get("at") {
            None => "missing".to_string(),
            Some(v) => v.to_string().chars().take(40).collect::<String>(),
        };
        Some(format!(
            "{}: {} record: at is {shown}: every record carries its time as RFC 3339 UTC, as the exchange writes it",
            self.place(),
            self.kind
        ))
    }
}

/// What is wrong with the money fields of a record of type `kind`: the malformed ones
/// ([`money_problems`]) first, then the missing ones ([`missing_money`], `… is missing`),
/// at most [`MONEY_PROBLEMS_NAMED_MAX`] named and the rest counted. The finance tools
/// ([`Entry::money_problem`]) and the exchange's start (`recovery`) read records by it.
pub fn record_money_problems(kind: &str, value: &Value) -> Vec<String> {
    let (mut bad, mut more) = malformed_money(value);
    for f in missing_money(kind, value) {
        if bad.len() < MONEY_PROBLEMS_NAMED_MAX {
            bad.push(format!("{f} is missing"));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        bad.push(format!("{more} more"));
    }
    bad
}

/// The money fields a record of type `kind` always has, as the exchange writes it (every
/// record format version: each type has had them since it was added), that `value`
/// lacks: read as 0, a sale without its `bid_micros` would leave the figures without its
/// money. Top level: an auction's `reserve_micros` (and, when it has a `winner`, its
/// `bid_micros` and `seller_price_micros`); `post_sent`'s and a quote hold's
/// `price_micros`; a sale's `bid_micros`, `seller_price_micros` and `margin_micros`; a
/// refund's three amounts; `quote_opened`'s `price_micros`, each `ranked` bid's
/// `price_micros` and `seller_price_micros`, and its `hold`'s `price_micros`; the
/// `bid_micros` of an auction's buyer line whose outcome carries an amount (`bid`,
/// `fixed_price`, `capped_at_award`, `bid_above_max`, `bid_expired`). A field that is
/// present but malformed is [`money_problems`]'s.
pub fn missing_money(kind: &str, value: &Value) -> Vec<String> {
    let top: &[&str] = match kind {
        "auction" if value.get("winner").is_some_and(|w| !w.is_null()) => {
            &["reserve_micros", "bid_micros", "seller_price_micros"]
        }
        "auction" => &["reserve_micros"],
        "post_sent" | "quote_opened" | "quote_reserved" | "quote_released" | "quote_expired" => {
            &["price_micros"]
        }
        "sale" => &["bid_micros", "seller_price_micros", "margin_micros"],
        "refund" => &[
            "buyer_refund_micros",
            "seller_clawback_micros",
            "margin_reversed_micros",
        ],
        _ => &[],
    };
    let mut out: Vec<String> = top
        .iter()
        .filter(|f| value.get(**f).is_none())
        .map(|f| f.to_string())
        .collect();
    if kind == "auction" {
        // A buyer line that bid carries its amount (round 56a: one without it was read
        // as a pass of 0, and replay re-derived the award without it).
        if let Some(lines) = value.get("buyers").and_then(Value::as_array) {
            for (i, line) in lines.iter().enumerate() {
                let bid = line
                    .get("outcome")
                    .and_then(Value::as_str)
                    .is_some_and(|o| {
                        matches!(
                            o,
                            "bid"
                                | "fixed_price"
                                | "capped_at_award"
                                | "bid_above_max"
                                | "bid_expired"
                        )
                    });
                if bid && line.get("bid_micros").is_none() {
                    out.push(format!("buyers[{i}].bid_micros"));
                }
            }
        }
    }
    if kind == "quote_opened" {
        if let Some(ranked) = value.get("ranked").and_then(Value::as_array) {
            for (i, bid) in ranked.iter().enumerate() {
                for f in ["price_micros", "seller_price_micros"] {
                    if bid.is_object() && bid.get(f).is_none() {
                        out.push(format!("ranked[{i}].{f}"));
                    }
                }
            }
        }
        if let Some(hold) = value.get("hold").filter(|h| h.is_object()) {
            if hold.get("price_micros").is_none() {
                out.push("hold.price_micros".to_string());
            }
        }
    }
    out
}

/// Money fields named in one message at most (the rest are counted).
const MONEY_PROBLEMS_NAMED_MAX: usize = 5;

/// The money fields of a record (`value`) that are present but not an integer that fits
/// `i64`, each as `bid_micros is 1e22` (a float, a string, `null`, or an integer out of
/// range). A money field is any field named `*_micros`: at the top level and in the
/// record's nested lines (an auction's `buyers`, a quote's `ranked` bids and `hold`),
/// but not in a quote's `lead` (the ping's own fields, named by the configuration). A
/// field that is absent is not a problem here ([`missing_money`] says which a type has).
pub fn money_problems(value: &Value) -> Vec<String> {
    let (mut out, more) = malformed_money(value);
    if more > 0 {
        out.push(format!("{more} more"));
    }
    out
}

/// [`money_problems`]: the first [`MONEY_PROBLEMS_NAMED_MAX`] named, and how many more.
fn malformed_money(value: &Value) -> (Vec<String>, usize) {
    enum Part<'a> {
        Key(&'a str),
        Index(usize),
    }
    fn path(parts: &[Part<'_>]) -> String {
        let mut out = String::new();
        for p in parts {
            match p {
                Part::Key(k) if out.is_empty() => out.push_str(k),
                Part::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Part::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }
    fn walk<'a>(v: &'a Value, parts: &mut Vec<Part<'a>>, out: &mut Vec<String>, more: &mut usize) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if parts.is_empty() && k == "lead" {
                        continue;
                    }
                    parts.push(Part::Key(k));
                    if k.ends_with("_micros") && x.as_i64().is_none() {
                        if out.len() < MONEY_PROBLEMS_NAMED_MAX {
                            let shown: String = x.to_string().chars().take(40).collect();
                            out.push(format!("{} is {shown}", path(parts)));
                        } else {
                            *more += 1;
                        }
                    } else {
                        walk(x, parts, out, more);
                    }
                    parts.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    if x.is_object() || x.is_array() {
                        parts.push(Part::Index(i));
                        walk(x, parts, out, more);
                        parts.pop();
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut more = 0usize;
    walk(value, &mut Vec::new(), &mut out, &mut more);
    (out, more)
}

/// What a reading does with a record whose money field is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoneyFields {
    /// Refuse the ledger (`report`, `export`, `replay`): the money would be misread.
    Refuse,
    /// Skip the record and list it in [`ReadStats::malformed_money`] (`verify`, which
    /// names every such record as a `PROBLEM` and fails).
    Skip,
    /// Not checked (a reader that takes no money from the records: `models train`).
    Unchecked,
}

/// What a read skipped.
#[derive(Debug, Clone, Default)]
pub struct ReadStats {
    pub records: u64,
    /// Records with a malformed money field ([`Entry::money_problem`]) or time
    /// ([`Entry::time_problem`]), skipped: by
    /// `verify`'s readings only (the other readings refuse the ledger at the first).
    pub malformed_money: Vec<String>,
    /// Records of a format version newer than this tool knows, by version: skipped.
    pub newer: BTreeMap<u64, u64>,
    /// Records of a type this tool does not know, by type: passed on, ignored by the
    /// tools.
    pub unknown_types: BTreeMap<String, u64>,
    /// Lines skipped as unreadable, `segment:line`: a last line cut short (no newline:
    /// a torn write, which the exchange removes at its next start).
    pub unreadable: Vec<String>,
    /// Of [`ReadStats::unreadable`], the lines cut short in a sealed segment (one a later
    /// segment follows): damage, not a torn last write; the exchange refuses to start on
    /// it (black-box round 50: the note said it would remove it).
    pub cut_short_sealed: Vec<String>,
    /// Whole lines (ending in a newline) that are not a JSON object record, each with
    /// why (`seg-00000001.jsonl:503: not a readable record: number out of range at line
    /// 1 column 301`): the exchange writes none, so one is damage or an edit whose chain
    /// was recomputed (black-box round 43: `"bid_micros":1e400` made a sale's line
    /// unparseable, and every tool skipped the sale with exit 0). `verify`'s readings
    /// list them (a `PROBLEM`), and so does the reading that takes no money (`train`
    /// refuses the ledger on them); the other readings refuse the ledger at the first.
    pub malformed_lines: Vec<String>,
    /// The sequence number the reading stopped after (the last record its chain check
    /// saw), if it had one: a later reading of the same ledger for the same output
    /// stops there too (black-box round 189a: `report`'s reconciliation note read a
    /// running exchange's ledger further, and said the money did not reconcile).
    pub upto: Option<u64>,
}

impl ReadStats {
    /// Notes for the end of a command's output (empty when nothing was skipped).
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (v, n) in &self.newer {
            out.push(format!(
                "{n} record(s) of format version {v} skipped: this pingpost knows versions up to {RECORD_VERSION} (upgrade it to read them)"
            ));
        }
        for (t, n) in &self.unknown_types {
            out.push(format!(
                "{n} record(s) of type {t:?} ignored (a type this pingpost does not know)"
            ));
        }
        let torn: Vec<&String> = self
            .unreadable
            .iter()
            .filter(|l| !self.cut_short_sealed.contains(l))
            .collect();
        if let Some(first) = torn.first() {
            out.push(format!(
                "{} line(s) cut short were skipped (first: {first}): a torn last write, which the exchange removes at its next start, unless the ledger's HEAD file says a record there was synced (then the start is refused, and `pingpost ledger verify` names the records removed)",
                torn.len(),
            ));
        }
        if let Some(first) = self.cut_short_sealed.first() {
            out.push(format!(
                "{} line(s) cut short in a sealed segment were skipped (first: {first}): not a torn last write but damage; the exchange refuses to start on such a ledger",
                self.cut_short_sealed.len(),
            ));
        }
        out
    }
}

/// Calls `f` with every readable record of the ledger in `dir`, in order, and returns
/// what was skipped. `f` returns `false` to stop. Errors: the directory or a segment
/// cannot be read, the segment numbering has a gap, the chain does not verify, or a
/// record has a malformed money field ([`Entry::money_problem`]; `f` may have had the
/// records before it: see [`check_money`]).
pub fn for_each(dir: &Path, f: impl FnMut(Entry) -> bool) -> Result<ReadStats, String> {
    let upto = verified_upto(dir)?;
    read_records(dir, Some(upto), MoneyFields::Refuse, f)
}

/// [`for_each`] without the money fields' check: for a reader that takes no money from
/// the records (`models train`).
pub fn for_each_ignoring_money(
    dir: &Path,
    f: impl FnMut(Entry) -> bool,
) -> Result<ReadStats, String> {
    let upto = verified_upto(dir)?;
    read_records(dir, Some(upto), MoneyFields::Unchecked, f)
}

/// Checks every money field of the records up to `upto` (from [`verified_upto`]) before
/// anything is written: `export` streams its records, and refuses a ledger with nothing
/// on stdout.
fn check_money(dir: &Path, upto: u64) -> Result<(), String> {
    read_records(dir, Some(upto), MoneyFields::Refuse, |_| true).map(|_| ())
}

/// Why `dir` (not a directory) cannot be read as a ledger, and what to give instead
/// (black-box round 68d: "is not a ledger directory" for a path that does not exist,
/// with no word of `--dir` or `--config`).
pub fn not_a_ledger_directory(dir: &Path) -> String {
    let what = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(_) => "cannot be read",
        Ok(_) => "is not a directory (a ledger is a directory of segment files)",
    };
    format!(
        "{} {what}: give the ledger's directory with --dir DIR, or the configuration that names it (ledger_path) with --config FILE; without either, the tools read ./{}",
        crate::cli_out::shown_path(dir),
        crate::config::defaults::LEDGER_PATH
    )
}

/// Why the directory `dir` is not a ledger: it holds no segment file (a mistyped `--dir`;
/// black-box round 71a: such a directory was read as a clean, empty ledger). The
/// exchange's first start makes the first segment.
pub fn no_ledger_in(dir: &Path) -> Option<String> {
    no_ledger_in_for(dir, "--dir")
}

/// [`no_ledger_in`] for a command whose ledger flag is `flag` (`pingpost train` takes
/// `--ledger`; black-box round 88a: its message named `--dir`, which it refuses).
pub fn no_ledger_in_for(dir: &Path, flag: &str) -> Option<String> {
    match segments::list(dir) {
        Ok(segs) if segs.is_empty() => Some(format!(
            "{} holds no ledger (no {} segment file): give the ledger's directory with {flag} DIR, or the configuration that names it (ledger_path) with --config FILE; without either, the tools read ./{}",
            crate::cli_out::shown_path(dir),
            segments::segment_name(1),
            crate::config::defaults::LEDGER_PATH
        )),
        _ => None,
    }
}

/// Checks the chain of the ledger in `dir` and returns the sequence number of the last
/// record it checked: what a reading may count.
fn verified_upto(dir: &Path) -> Result<u64, String> {
    if !dir.is_dir() {
        return Err(not_a_ledger_directory(dir));
    }
    let refuse = |p: &dyn std::fmt::Display| {
        format!(
            "the ledger does not verify: {p}; report, export and replay read only a \
             ledger whose checksums and chain verify (`pingpost ledger verify` shows \
             what is wrong)"
        )
    };
    // No segment: not a ledger, or, beside a fingerprint key, one whose records were
    // removed (as verify says it; black-box round 72a: two messages for one directory).
    if let Some(why) = no_ledger_in(dir) {
        return Err(crate::ledger::segments_lost(dir).map_or(why, |lost| refuse(&lost)));
    }
    // Segments, but only empty ones, beside the key: removed records too, as a start and
    // `verify` say (black-box round 93b: an all-zero P&L with exit 0).
    if let Some(lost) = crate::ledger::segments_lost(dir) {
        return Err(refuse(&lost));
    }
    // Records removed from the end (`HEAD` names a later one), as a start and `verify`
    // refuse them (black-box round 71a: report, export and replay counted such a ledger,
    // a refund short). The head is read before the segments: what it names was synced
    // before they are read, so a running exchange's appends are never taken for it.
    let head = crate::ledger::head::read(dir);
    // Only a ledger whose checksums and chain verify is read: a changed, inserted or
    // forged line would otherwise be counted as money. A last line cut short (a torn
    // write the exchange truncates at its next start) is skipped and reported.
    let check =
        segments::verify(dir).map_err(|e| format!("{}: {e}", crate::cli_out::shown_path(dir)))?;
    if let Some(p) = &check.problem {
        if !p.is_torn_tail(dir) {
            return Err(refuse(p));
        }
    }
    let said = head.map_err(|why| refuse(&why))?;
    if let Some(why) = crate::ledger::head::removed(dir, said, check.last_seq) {
        return Err(refuse(&why));
    }
    // Only what the check saw: a running exchange appends meanwhile, and a line appended
    // after the check is not verified (black-box round 20: a forged line appended then
    // was counted as money).
    Ok(check.last_seq)
}

/// [`for_each`] without the chain check first: for `pingpost ledger verify`, which
/// reports the chain's problem itself and then reconciles whatever it can read, to name
/// what is wrong with the money too. A record with a malformed money field is not
/// refused either: it is skipped and listed in [`ReadStats::malformed_money`] (verify
/// names each as a `PROBLEM` and fails).
pub fn for_each_unverified(dir: &Path, f: impl FnMut(Entry) -> bool) -> Result<ReadStats, String> {
    for_each_unverified_upto(dir, None, f)
}

/// [`for_each_unverified`], stopping after the record with sequence number `upto` when
/// given: `ledger verify` checks the chain of a ledger the exchange may still be writing,
/// then reads it again to reconcile, and must read only what it checked (black-box round
/// 19: a sale appended between two readings made it fail a ledger that reconciles).
pub fn for_each_unverified_upto(
    dir: &Path,
    upto: Option<u64>,
    f: impl FnMut(Entry) -> bool,
) -> Result<ReadStats, String> {
    if !dir.is_dir() {
        return Err(not_a_ledger_directory(dir));
    }
    read_records(dir, upto, MoneyFields::Skip, f)
}

/// The reading they all share, once the directory is known to be one.
fn read_records(
    dir: &Path,
    upto: Option<u64>,
    money: MoneyFields,
    mut f: impl FnMut(Entry) -> bool,
) -> Result<ReadStats, String> {
    let segs =
        segments::list(dir).map_err(|e| format!("{}: {e}", crate::cli_out::shown_path(dir)))?;
    let mut stats = ReadStats {
        upto,
        ..ReadStats::default()
    };
    let last_segment = segs.len();
    for (i, (_, path)) in segs.into_iter().enumerate() {
        let sealed = i + 1 < last_segment;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("{}: {e}", crate::cli_out::shown_path(&path)))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut buf = Vec::with_capacity(4096);
        let mut line_no = 0usize;
        loop {
            buf.clear();
            let n = segments::read_line_bounded(&mut reader, &mut buf)
                .map_err(|e| format!("{}: {e}", crate::cli_out::shown_path(&path)))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            // A last line without its newline is whole when the chain's check counted it
            // (its seq is within `upto`: framing, sequence and sum verified); the start
            // completes it (black-box round 65a: the tools dropped such a sale as torn). A
            // line cut short is not, though what is left may read as a `seq` within `upto`.
            let complete = buf.ends_with(b"\n")
                || (buf.len() <= segments::LINE_BYTES_MAX
                    && upto.is_some_and(|u| segments::framed_seq(&buf).is_some_and(|s| s <= u)));
            if !complete && buf.len() > segments::LINE_BYTES_MAX {
                // One line over the limit, not a line cut short and another after it
                // (black-box round 50): the rest of it is passed over, unread.
                let mut rest = Vec::with_capacity(64 * 1024);
                loop {
                    rest.clear();
                    let n = std::io::BufRead::read_until(
                        &mut std::io::Read::take(&mut reader, 64 * 1024),
                        b'\n',
                        &mut rest,
                    )
                    .map_err(|e| format!("{}: {e}", crate::cli_out::shown_path(&path)))?;
                    if n == 0 || rest.ends_with(b"\n") {
                        break;
                    }
                }
                let p = format!(
                    "{name}:{line_no}: not a readable record: a line over {} MiB",
                    segments::LINE_BYTES_MAX >> 20
                );
                if money == MoneyFields::Refuse {
                    return Err(format!(
                        "the ledger {} has a line that is not a readable record: {p}",
                        crate::cli_out::shown_path(dir)
                    ));
                }
                stats.malformed_lines.push(p);
                continue;
            }
            if let Some(upto) = upto {
                let seq = std::str::from_utf8(&buf)
                    .ok()
                    .and_then(crate::ledger::segments::line_seq);
                if seq.is_some_and(|s| s > upto) {
                    // Past what the check saw. A last line cut short is still said
                    // (black-box round 44: one ending in `"}` carries a seq, and went
                    // unreported).
                    if !complete {
                        stats.unreadable.push(format!("{name}:{line_no}"));
                        if sealed {
                            stats.cut_short_sealed.push(format!("{name}:{line_no}"));
                        }
                    }
                    return Ok(stats);
                }
            }
            let text = std::str::from_utf8(buf.strip_suffix(b"\n").unwrap_or(&buf));
            let parsed = match text {
                Ok(t) => match serde_json::from_str::<Value>(t) {
                    // `v`, when present, is a version number; absent, the record is of
                    // version 1 (black-box round 44: `6.5`, `"6"` and 2^64 were read as
                    // the current version, and counted).
                    Ok(v) if v.get("v").is_some_and(|x| x.as_u64().is_none()) => Err(format!(
                        "its format version \"v\" is {}, not a version number (a whole number from 1 to 2^64 - 1)",
                        v.get("v")
                            .map(|x| x.to_string().chars().take(40).collect::<String>())
                            .unwrap_or_default()
                    )),
                    // Versions begin at 1 (black-box round 203b: `"v":0` was read as a
                    // record of the current version).
                    Ok(v) if v.get("v").and_then(Value::as_u64) == Some(0) => {
                        Err("its format version \"v\" is 0: versions begin at 1".to_string())
                    }
                    // Every record names its type (black-box round 62b: a foreign JSON
                    // line was called a record of a type a newer pingpost writes).
                    Ok(v) if v.is_object() && !v.get("type").is_some_and(Value::is_string) => {
                        Err("it has no \"type\" (a string): not a ledger record".to_string())
                    }
                    Ok(v) if v.is_object() => {
                        match crate::ledger::segments::repeated_name_in(t, &v) {
                            None => Ok((t, v)),
                            Some(name) => Err(format!(
                                "the name \"{name}\" appears more than once in one object"
                            )),
                        }
                    }
                    Ok(_) => Err("not a JSON object".to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(_) => Err("not UTF-8".to_string()),
            };
            let (text, value) = match parsed {
                Ok(read) if complete => read,
                Err(why) if complete => {
                    let p = format!("{name}:{line_no}: not a readable record: {why}");
                    if money == MoneyFields::Refuse {
                        return Err(format!(
                            "the ledger {} has a line that is not a readable record: {p}; report, export and replay refuse such a ledger (`pingpost ledger verify` lists every such line)",
                            crate::cli_out::shown_path(dir)
                        ));
                    }
                    stats.malformed_lines.push(p);
                    continue;
                }
                _ => {
                    stats.unreadable.push(format!("{name}:{line_no}"));
                    if sealed && !complete {
                        stats.cut_short_sealed.push(format!("{name}:{line_no}"));
                    }
                    continue;
                }
            };
            let v = value.get("v").and_then(Value::as_u64).unwrap_or(1);
            if v > u64::from(RECORD_VERSION) {
                *stats.newer.entry(v).or_default() += 1;
                continue;
            }
            let kind = value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let day = value
                .get("at")
                .and_then(Value::as_str)
                .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
                .map(|t| t.with_timezone(&chrono::Utc).date_naive());
            let entry = Entry {
                segment: name.clone(),
                line: line_no,
                seq: value.get("seq").and_then(Value::as_u64).unwrap_or(0),
                kind,
                day,
                raw: text.to_string(),
                value,
            };
            // A money field that is not an integer of micros would be read as 0 (black-box
            // round 41: a sale of `1e22` left the report, exit 0, without its money).
            if money != MoneyFields::Unchecked {
                let problem = entry
                    .money_problem()
                    .map(|p| ("a malformed money field", p))
                    .or_else(|| {
                        entry
                            .time_problem()
                            .map(|p| ("a record without a readable time", p))
                    });
                if let Some((what, p)) = problem {
                    if money == MoneyFields::Refuse {
                        return Err(format!(
                            "the ledger {} has {what}: {p}; report, export and replay refuse such a ledger (`pingpost ledger verify` lists every such record)",
                            crate::cli_out::shown_path(dir)
                        ));
                    }
                    stats.malformed_money.push(p);
                    continue;
                }
            }
            if !KNOWN_TYPES.contains(&entry.kind.as_str())
                && !PRE_SEND_TYPES.contains(&entry.kind.as_str())
            {
                *stats.unknown_types.entry(entry.kind.clone()).or_default() += 1;
            }
            stats.records += 1;
            if !f(entry) {
                return Ok(stats);
            }
        }
    }
    Ok(stats)
}

/// An inclusive range of days, UTC days or those of `zone`; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateRange {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    /// The IANA zone whose days these are (`--tz`); `None` for UTC.
    pub zone: Option<chrono_tz::Tz>,
}

impl DateRange {
    /// The range of `--from` and `--to` (`YYYY-MM-DD`, UTC); `from` after `to` is an
    /// error.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<DateRange, String> {
        let from = from.map(|d| parse_date("--from", d)).transpose()?;
        let to = to.map(|d| parse_date("--to", d)).transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(format!(
                    "--from {f} is after --to {t} (the range is inclusive: use the same day for one day)"
                ));
            }
        }
        Ok(DateRange {
            from,
            to,
            zone: None,
        })
    }

    /// The range with its days those of the IANA zone `name` (`--tz`, such as
    /// `America/New_York`; `UTC` or none: UTC days), so that finance closes its books on
    /// its own midnight.
    pub fn with_zone(self, name: Option<&str>) -> Result<DateRange, String> {
        let Some(name) = name else {
            return Ok(self);
        };
        let shown: String = name.chars().take(64).collect();
        let zone = name.parse::<chrono_tz::Tz>().map_err(|_| {
            format!("--tz {shown:?}: not an IANA time zone (such as America/New_York, Europe/Berlin or UTC)")
        })?;
        Ok(DateRange {
            zone: (zone != chrono_tz::UTC).then_some(zone),
            ..self
        })
    }

    /// The name of the zone whose days these are: `UTC` or the IANA name.
    pub fn zone_name(&self) -> &'static str {
        self.zone.map_or("UTC", |z| z.name())
    }

    /// The day of `e` in this range's zone ([`Entry::day`] is its UTC day).
    pub fn day_of(&self, e: &Entry) -> Option<NaiveDate> {
        let Some(zone) = self.zone else {
            return e.day;
        };
        e.value
            .get("at")
            .and_then(Value::as_str)
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|t| t.with_timezone(&zone).date_naive())
    }

    /// Is a record of `day` inside? A record without a day is inside only an open range.
    pub fn contains(&self, day: Option<NaiveDate>) -> bool {
        match day {
            Some(d) => self.from.is_none_or(|f| d >= f) && self.to.is_none_or(|t| d <= t),
            None => self.from.is_none() && self.to.is_none(),
        }
    }
}

/// A UTC date `YYYY-MM-DD`, strictly.
pub fn parse_date(flag: &str, text: &str) -> Result<NaiveDate, String> {
    let shaped = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    let shown: String = text.chars().take(40).collect();
    if !shaped {
        return Err(format!(
            "{flag} {shown:?}: not a date (expected YYYY-MM-DD, a UTC day or one of --tz)"
        ));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!("{flag} {shown:?}: no such day (expected YYYY-MM-DD, a UTC day or one of --tz)")
    })
}

/// Micros as a decimal amount: `14400000` -> `14.40`, `1` -> `0.000001` (at least two
/// decimals, more only when needed). Takes a field (`i64`) or a sum (`i128`), exactly.
pub fn money(micros: impl Into<i128>) -> String {
    let micros: i128 = micros.into();
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let units = abs / 1_000_000;
    let frac = abs % 1_000_000;
    let mut frac = format!("{frac:06}");
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}{units}.{frac}")
}

/// A value only present to satisfy the loader: the finance tools never sign, call a
/// buyer or serve the admin listener, so secrets and the admin token are not needed.
const PLACEHOLDER_SECRET: &str = "finance-tools-placeholder-never-used";

/// The environment the tools load a configuration with: a placeholder for every secret
/// and token variable, whatever is set; one of its own per variable, so that the admin
/// token is a buyer's signing secret only where the configuration names one variable
/// for both (which the exchange refuses too).
pub fn placeholder_env(name: &str) -> Option<String> {
    Some(format!("{PLACEHOLDER_SECRET}-{name}"))
}

/// Loads a configuration file for the finance and model tools: the real loader and
/// validation, with a placeholder for every secret and token. The environment is not
/// read: these tools call no buyer and serve nothing, so a secret that is unset, or set
/// to a value the exchange would refuse, does not stop a report.
pub fn load_config(path: &Path) -> Result<crate::config::Config, String> {
    crate::config::load_file_with_env(path, &placeholder_env).map_err(|e| {
        format!(
            "{} does not load ({} error(s)):\n{e}",
            crate::cli_out::shown_path(path),
            e.0.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record is named by its `seq`, and a line with none by its line number (black-box
    /// round 93b: an unframed line was "seq 0", which names no record).
    #[test]
    fn a_record_is_placed_by_its_seq_or_else_its_line() {
        let entry = |value: Value| Entry {
            segment: "seg-00000250.jsonl".into(),
            line: 7,
            seq: value.get("seq").and_then(Value::as_u64).unwrap_or(0),
            kind: "flush".into(),
            day: None,
            raw: String::new(),
            value,
        };
        assert_eq!(
            entry(serde_json::json!({"seq": 42})).place(),
            "seg-00000250.jsonl seq 42"
        );
        assert_eq!(
            entry(serde_json::json!({"type": "flush"})).place(),
            "seg-00000250.jsonl line 7"
        );
    }

    #[test]
    fn dates_are_strict_utc_days() {
        assert!(parse_date("--from", "2026-11-29").is_ok());
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "29-11-2026",
            "2026-1-01",
            "",
            "yesterday",
        ] {
            assert!(parse_date("--from", bad).is_err(), "{bad}");
        }
        let e = DateRange::parse(Some("2026-11-30"), Some("2026-11-29")).unwrap_err();
        assert!(e.contains("after"), "{e}");
        let r = DateRange::parse(Some("2026-11-29"), Some("2026-11-29")).unwrap();
        assert!(r.contains(NaiveDate::from_ymd_opt(2026, 11, 29)));
        assert!(!r.contains(NaiveDate::from_ymd_opt(2026, 11, 30)));
        assert!(!r.contains(None));
        assert!(DateRange::default().contains(None));
    }

    /// The `type` of every variant of the core's `Record`. The match has no wildcard arm:
    /// a new record type does not compile here until it is listed (and then must be
    /// known to the tools, below).
    fn written_type(r: &crate::core::record::Record<'_>) -> &'static str {
        use crate::core::record::Record;
        match r {
            Record::Auction(_) => "auction",
            Record::PostSent(_) => "post_sent",
            Record::PostAttempt(_) => "post_attempt",
            Record::Sale(_) => "sale",
            Record::Unsold(_) => "unsold",
            Record::QuoteOpened(_) => "quote_opened",
            Record::QuoteReserved(_) => "quote_reserved",
            Record::QuoteReleased(_) => "quote_released",
            Record::QuoteExpired(_) => "quote_expired",
            Record::Flush(_) => "flush",
            Record::ModelDecision(_) => "model_decision",
            Record::Disposition(_) => "disposition",
            Record::Refund(_) => "refund",
        }
    }

    #[test]
    fn every_record_type_this_binary_writes_is_known() {
        use crate::core::record::{FlushRecord, Head, ModelDecisionRecord, Record};
        let written = [
            "auction",
            "post_sent",
            "post_attempt",
            "sale",
            "unsold",
            "quote_opened",
            "quote_reserved",
            "quote_released",
            "quote_expired",
            "flush",
            "model_decision",
            "disposition",
            "refund",
        ];
        for t in written {
            assert!(
                KNOWN_TYPES.contains(&t) || PRE_SEND_TYPES.contains(&t),
                "{t} is written by this pingpost but unknown to its finance tools"
            );
        }
        // The names above are the ones the core writes.
        let head = Head::new(1, 0);
        let decision = Record::ModelDecision(ModelDecisionRecord {
            head,
            vertical: "v",
            challenger: "c",
            champion: None,
            promoted: false,
            reason: "r",
        });
        for r in [
            Record::Flush(FlushRecord {
                head,
                start: false,
                key_id: None,
            }),
            decision,
        ] {
            assert_eq!(written_type(&r), r.kind());
            assert!(written.contains(&r.kind()));
        }
        // A ledger with model_decision records reads without an "unknown type" note.
        let dir = ledger(&[
            r#"{"type":"model_decision","v":5,"generation":7,"at":"2026-11-30T03:00:00.000Z","vertical":"v","challenger":"c","promoted":true,"reason":"r"}"#,
            r#"{"type":"flush","v":5,"generation":7,"at":"2026-11-30T03:00:01.000Z"}"#,
        ]);
        let stats = for_each(dir.path(), |_| true).unwrap();
        assert_eq!(stats.records, 2);
        assert!(stats.notes().is_empty(), "{:?}", stats.notes());
    }

    #[test]
    fn money_is_exact_decimal_text() {
        assert_eq!(money(14_400_000), "14.40");
        assert_eq!(money(0), "0.00");
        assert_eq!(money(1), "0.000001");
        assert_eq!(money(-2_500_000), "-2.50");
        assert_eq!(money(12_345_670), "12.34567");
        // Fields (i64) and sums (i128), to the last micro.
        assert_eq!(money(i64::MAX), "9223372036854.775807");
        assert_eq!(money(i64::MIN), "-9223372036854.775808");
        assert_eq!(money(i128::from(i64::MAX) * 2 + 1), "18446744073709.551615");
        assert_eq!(
            money(i128::MIN),
            "-170141183460469231731687303715884.105728"
        );
    }

    /// Writes `records` as a framed segment in a fresh directory.
    /// `report`, `export` (writing nothing) and `replay` of `au_1` each refuse the
    /// ledger in `dir`, naming `named`.
    fn refused_by_report_export_and_replay(dir: &Path, named: &str) {
        let e = report::build(dir, DateRange::default(), &std::collections::HashMap::new())
            .unwrap_err();
        assert!(e.contains(named), "{e}");
        let mut out = Vec::new();
        let e = export::export(
            dir,
            DateRange::default(),
            export::Format::Jsonl,
            &[],
            &mut out,
        )
        .unwrap_err();
        assert!(e.contains(named), "{e}");
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        let e = replay::find(dir, "au_1").unwrap_err();
        assert!(e.contains(named), "{e}");
    }

    fn ledger(records: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let out = segments::frame_all(records);
        std::fs::write(dir.path().join(segments::segment_name(1)), out).unwrap();
        dir
    }

    #[test]
    fn money_fields_must_be_integers_that_fit_i64() {
        let problems = |text: &str| money_problems(&serde_json::from_str(text).unwrap());
        assert!(problems(
            r#"{"type":"sale","bid_micros":-9223372036854775808,"seller_price_micros":9223372036854775807,"margin_micros":0}"#
        )
        .is_empty());
        // Absent is not malformed; other fields are not money.
        assert!(problems(r#"{"type":"auction","took_us":1.5,"x":[0.5,1.5]}"#).is_empty());
        assert_eq!(
            problems(
                r#"{"bid_micros":1e22,"seller_price_micros":20000000.5,"margin_micros":"3","price_micros":null,"refund_micros":9223372036854775808}"#
            ),
            [
                "bid_micros is 1e+22",
                "margin_micros is \"3\"",
                "price_micros is null",
                "refund_micros is 9223372036854775808",
                "seller_price_micros is 20000000.5"
            ]
        );
        // Nested lines count, a quote's lead fields (named by the configuration) do not.
        assert_eq!(
            problems(
                r#"{"buyers":[{"bid_micros":1},{"bid_micros":[1]}],"hold":{"price_micros":true},"lead":{"income_micros":"high"}}"#
            ),
            ["buyers[1].bid_micros is [1]", "hold.price_micros is true"]
        );
        // A long value is cut, many fields are counted.
        let many: Vec<String> = (0..8).map(|i| format!(r#""f{i}_micros":0.5"#)).collect();
        let p = problems(&format!("{{{}}}", many.join(",")));
        assert_eq!(p.len(), MONEY_PROBLEMS_NAMED_MAX + 1);
        assert_eq!(p.last().map(String::as_str), Some("3 more"));
        let long = problems(&format!(r#"{{"bid_micros":"{}"}}"#, "9".repeat(100)));
        assert_eq!(long[0].chars().count(), "bid_micros is ".len() + 40);
    }

    /// Black-box round 43: a sale's line with `"bid_micros":1e400` (past a double: not
    /// JSON serde can read), its chain recomputed, was skipped by report, export and
    /// replay with exit 0, the sale left out of the money. They refuse such a ledger.
    #[test]
    fn report_export_and_replay_refuse_a_line_that_is_not_a_readable_record() {
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"b","outcome":"bid","bid_micros":20000000}],"winner":"b","bid_micros":20000000,"seller_price_micros":16000000,"took_us":5}"#;
        let sale = r#"{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":1e400,"seller_price_micros":16000000,"margin_micros":4000000,"attempt":0}"#;
        for forged in [sale, &sale.replace("1e400", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]")] {
            let dir = ledger(&[auction, forged]);
            refused_by_report_export_and_replay(
                dir.path(),
                "seg-00000001.jsonl:2: not a readable record",
            );
        }
    }

    /// Black-box round 44: a record whose `v` is not a whole number (`6.5`, `"6"`, 2^64)
    /// was read as the current version and its money counted; a last line cut short
    /// that ends in `"}` (so it carries a seq past the verified ones) was skipped without
    /// a note.
    #[test]
    fn a_version_that_is_not_a_number_is_refused_and_a_torn_tail_is_always_noted() {
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[],"took_us":5}"#;
        for v in ["6.5", r#""6""#, "18446744073709551616", "-1", "null", "0"] {
            let forged = auction.replace(r#""v":5"#, &format!(r#""v":{v}"#));
            let dir = ledger(&[auction, &forged]);
            let e = for_each(dir.path(), |_| true).unwrap_err();
            assert!(
                e.contains("seg-00000001.jsonl:2: not a readable record: its format version"),
                "{v}: {e}"
            );
            let stats = for_each_unverified(dir.path(), |_| true).unwrap();
            assert_eq!(stats.malformed_lines.len(), 1, "{v}");
        }
        // A missing `v` is version 1, read as before.
        let v1 = auction.replace(r#""v":5,"#, "");
        let dir = ledger(&[auction, &v1]);
        assert_eq!(for_each(dir.path(), |_| true).unwrap().records, 2);
        // A framed last line without only its newline is a whole record, read (black-box
        // round 65a: it was dropped as cut short; the start completes it); one cut inside
        // is noted as cut short.
        let dir = ledger(&[auction, auction]);
        let seg = dir.path().join(segments::segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.pop();
        std::fs::write(&seg, &bytes).unwrap();
        let stats = for_each(dir.path(), |_| true).unwrap();
        assert_eq!(stats.records, 2);
        assert!(stats.unreadable.is_empty(), "{stats:?}");
        bytes.truncate(bytes.len() - 5);
        std::fs::write(&seg, &bytes).unwrap();
        let stats = for_each(dir.path(), |_| true).unwrap();
        assert_eq!(stats.records, 1);
        assert_eq!(stats.unreadable, vec!["seg-00000001.jsonl:2".to_string()]);
    }

    /// Black-box round 50: a line cut short in a sealed segment was noted as a torn last
    /// write "which the exchange removes at its next start" (it refuses to start on it);
    /// a line over the limit was read as a line cut short and another one after it.
    #[test]
    fn a_line_cut_short_in_a_sealed_segment_and_an_overlong_line_are_said_as_they_are() {
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[],"took_us":5}"#;
        let dir = ledger(&[auction, auction]);
        let first = dir.path().join(segments::segment_name(1));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&first, bytes).unwrap();
        std::fs::write(
            dir.path().join(segments::segment_name(2)),
            segments::frame_all([auction]),
        )
        .unwrap();
        let stats = for_each_unverified(dir.path(), |_| true).unwrap();
        assert_eq!(stats.records, 2);
        assert_eq!(stats.cut_short_sealed, ["seg-00000001.jsonl:2"]);
        let notes = stats.notes().join("\n");
        assert!(notes.contains("cut short in a sealed segment"), "{notes}");
        assert!(!notes.contains("removes at its next start"), "{notes}");
        // The last segment's last line cut short is a torn write, as before.
        let dir = ledger(&[auction, auction]);
        let seg = dir.path().join(segments::segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.pop();
        std::fs::write(&seg, bytes).unwrap();
        let stats = for_each_unverified(dir.path(), |_| true).unwrap();
        assert!(stats.cut_short_sealed.is_empty());
        assert!(stats
            .notes()
            .join("\n")
            .contains("removes at its next start"));
        // One line over the limit, ended by a newline: one problem, the record after it
        // read, nothing said to be cut short.
        let mut text = segments::frame_all([auction]);
        text.extend(std::iter::repeat_n(b'A', segments::LINE_BYTES_MAX + 10));
        text.push(b'\n');
        text.extend(segments::frame_all([auction]));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segments::segment_name(1)), text).unwrap();
        let stats = for_each_unverified(dir.path(), |_| true).unwrap();
        assert_eq!(stats.records, 2);
        assert!(stats.unreadable.is_empty(), "{:?}", stats.unreadable);
        assert_eq!(
            stats.malformed_lines,
            ["seg-00000001.jsonl:2: not a readable record: a line over 64 MiB"]
        );
    }

    /// Black-box round 41: a sale whose `bid_micros` is `1e22`, `20000000.5` or
    /// `"20000000"` was read as 0: the report dropped its money with exit 0. `report`,
    /// `export` and `replay` refuse the ledger, naming the record's seq, type and field;
    /// `export` writes nothing first.
    #[test]
    fn report_export_and_replay_refuse_a_malformed_money_field() {
        use std::collections::HashMap;
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"b","outcome":"bid","bid_micros":20000000}],"winner":"b","bid_micros":20000000,"seller_price_micros":16000000,"took_us":5}"#;
        let sale = r#"{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":20000000,"seller_price_micros":16000000,"margin_micros":4000000,"attempt":0}"#;
        // The same ledger, well formed, is read.
        let dir = ledger(&[auction, sale]);
        assert!(report::build(dir.path(), DateRange::default(), &HashMap::new()).is_ok());
        for (bad, shown) in [
            ("1e22", "1e+22"),
            ("20000000.5", "20000000.5"),
            (r#""20000000""#, r#""20000000""#),
        ] {
            let forged = sale.replace(
                r#""bid_micros":20000000"#,
                &format!(r#""bid_micros":{bad}"#),
            );
            let dir = ledger(&[auction, &forged]);
            let named = format!("seg-00000001.jsonl seq 2: sale record: bid_micros is {shown}");
            let e = report::build(dir.path(), DateRange::default(), &HashMap::new()).unwrap_err();
            assert!(e.contains(&named), "{e}");
            assert!(e.contains("has a malformed money field"), "{e}");
            let mut out = Vec::new();
            let range = DateRange::default();
            for (format, types) in [
                (export::Format::Jsonl, vec![]),
                (export::Format::Csv, vec!["auction".to_string()]),
            ] {
                let e = export::export(dir.path(), range, format, &types, &mut out).unwrap_err();
                assert!(e.contains(&named), "{e}");
                assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
            }
            let e = replay::find(dir.path(), "au_1").unwrap_err();
            assert!(e.contains(&named), "{e}");
            // The reading that takes no money from the records is not stopped.
            assert_eq!(
                for_each_ignoring_money(dir.path(), |_| true)
                    .unwrap()
                    .records,
                2
            );
        }
    }

    /// A money field the record type always has, missing (a sale without its
    /// `bid_micros`, the chain recomputed), was read as 0: the report counted the sale
    /// at no money, exit 0. It is refused as a malformed one is; `verify`'s reading
    /// lists it.
    #[test]
    fn a_missing_money_field_is_refused_not_read_as_0() {
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"b","outcome":"bid","bid_micros":20000000}],"winner":"b","bid_micros":20000000,"seller_price_micros":16000000,"took_us":5}"#;
        let sale = r#"{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":20000000,"seller_price_micros":16000000,"margin_micros":4000000,"attempt":0}"#;
        for (forged_auction, forged_sale, named) in [
            (
                auction.to_string(),
                sale.replace(r#""bid_micros":20000000,"#, ""),
                "seg-00000001.jsonl seq 2: sale record: bid_micros is missing",
            ),
            (
                auction.to_string(),
                sale.replace(r#""margin_micros":4000000,"#, ""),
                "seg-00000001.jsonl seq 2: sale record: margin_micros is missing",
            ),
            (
                auction.replace(r#""seller_price_micros":16000000,"#, ""),
                sale.to_string(),
                "seg-00000001.jsonl seq 1: auction record: seller_price_micros is missing",
            ),
            // Round 56a: a buyer line that bid, without its amount.
            (
                auction.replace(
                    r#""outcome":"bid","bid_micros":20000000"#,
                    r#""outcome":"bid""#,
                ),
                sale.to_string(),
                "seg-00000001.jsonl seq 1: auction record: buyers[0].bid_micros is missing",
            ),
        ] {
            let dir = ledger(&[&forged_auction, &forged_sale]);
            refused_by_report_export_and_replay(dir.path(), named);
            let stats = for_each_unverified(dir.path(), |_| true).unwrap();
            assert_eq!(
                stats.malformed_money.len(),
                1,
                "{:?}",
                stats.malformed_money
            );
            assert!(stats.malformed_money[0].contains(named));
        }
    }

    /// Black-box round 57a: a sale with `"at":"yesterday"` (or none), the chain
    /// recomputed, was counted by `report` on a blank day and left out of `export
    /// --from/--to` without a word, and `verify` passed. It is refused like a malformed
    /// money field.
    #[test]
    fn a_record_without_a_readable_time_is_refused() {
        use std::collections::HashMap;
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[],"took_us":5}"#;
        let sale = r#"{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":20000000,"seller_price_micros":16000000,"margin_micros":4000000,"attempt":0}"#;
        for (forged, shown) in [
            (
                sale.replace("2026-11-29T10:00:01.000Z", "yesterday"),
                "\"yesterday\"",
            ),
            (
                sale.replace(r#""at":"2026-11-29T10:00:01.000Z","#, ""),
                "missing",
            ),
        ] {
            let dir = ledger(&[auction, &forged]);
            let named = format!("seg-00000001.jsonl seq 2: sale record: at is {shown}");
            let e = report::build(dir.path(), DateRange::default(), &HashMap::new()).unwrap_err();
            assert!(
                e.contains(&named) && e.contains("a record without a readable time"),
                "{e}"
            );
            let mut out = Vec::new();
            let e = export::export(
                dir.path(),
                DateRange::default(),
                export::Format::Jsonl,
                &[],
                &mut out,
            )
            .unwrap_err();
            assert!(e.contains(&named), "{e}");
            let stats = for_each_unverified(dir.path(), |_| true).unwrap();
            assert_eq!(stats.malformed_money.len(), 1);
        }
        // A type this tool does not know is not judged by its time.
        let other = r#"{"type":"future_thing","v":5,"at":"later"}"#;
        let dir = ledger(&[auction, other]);
        assert_eq!(
            for_each_unverified(dir.path(), |_| true)
                .unwrap()
                .malformed_money
                .len(),
            0
        );
    }

    #[test]
    fn the_money_fields_each_type_always_has() {
        let missing =
            |kind: &str, text: &str| missing_money(kind, &serde_json::from_str(text).unwrap());
        // An auction without a winner has no bid; with one it has both amounts.
        assert!(missing("auction", r#"{"reserve_micros":1}"#).is_empty());
        assert!(missing("auction", r#"{"reserve_micros":1,"winner":null}"#).is_empty());
        assert_eq!(
            missing("auction", r#"{"winner":"b"}"#),
            ["reserve_micros", "bid_micros", "seller_price_micros"]
        );
        assert_eq!(
            missing("refund", r#"{"buyer_refund_micros":1}"#),
            ["seller_clawback_micros", "margin_reversed_micros"]
        );
        for kind in [
            "post_sent",
            "quote_reserved",
            "quote_released",
            "quote_expired",
        ] {
            assert_eq!(missing(kind, "{}"), ["price_micros"], "{kind}");
            assert!(missing(kind, r#"{"price_micros":0}"#).is_empty(), "{kind}");
        }
        assert_eq!(
            missing(
                "quote_opened",
                r#"{"price_micros":1,"ranked":[{"price_micros":2,"seller_price_micros":1},{"price_micros":2}],"hold":{"buyer":"b"}}"#
            ),
            ["ranked[1].seller_price_micros", "hold.price_micros"]
        );
        // An auction's buyer lines that carry an amount; a pass or a timeout has none.
        assert_eq!(
            missing(
                "auction",
                r#"{"reserve_micros":1,"buyers":[{"outcome":"no_bid"},{"outcome":"bid"},{"outcome":"timeout"},{"outcome":"bid_expired","bid_micros":5},{"outcome":"fixed_price"},{"outcome":"capped_at_award"},{"outcome":"bid_above_max"}]}"#
            ),
            [
                "buyers[1].bid_micros",
                "buyers[4].bid_micros",
                "buyers[5].bid_micros",
                "buyers[6].bid_micros"
            ]
        );
        // Types without money fields, and types this tool does not know.
        for kind in [
            "post_attempt",
            "unsold",
            "disposition",
            "flush",
            "model_decision",
            "future",
        ] {
            assert!(missing(kind, "{}").is_empty(), "{kind}");
        }
    }
}
