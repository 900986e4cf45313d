//! `pingpost ledger report`: profit and loss by day, seller, buyer or vertical.
//!
//! Columns (test leads are left out and counted apart):
//! - `pings`: auctions (by buyer: auctions in which the buyer was pinged);
//! - `bids`: bid lines (`bid` and `fixed_price`; by buyer: the buyer's own);
//! - `quotes`: firm quotes held (`quote_reserved`);
//! - `sales`, `revenue_micros` (Σ `bid_micros`, what buyers pay), `payouts_micros`
//!   (Σ `seller_price_micros`, what sellers get), `margin_micros` (Σ `margin_micros`);
//! - `returns` (refund records: returned leads refunded inside the buyer's window) and
//!   `refunds_micros` (Σ their `buyer_refund_micros`). Revenue, payouts and margin are net
//!   of them: a refund takes its `buyer_refund_micros` off revenue, its
//!   `seller_clawback_micros` off payouts and its `margin_reversed_micros` off margin, in
//!   the refund's day, seller, buyer and vertical (so revenue = payouts + margin still).
//!
//! Rows are per key and currency: money of different currencies is never added. A sale
//! or refund counts in the currency **recorded on it** (a vertical whose currency a reload
//! changed has rows in both); pings, bids and quotes (counts, no money) count in the
//! currency recorded on their auction, or for an auction record without one (written
//! before 2026-12-01) the currency the vertical had at that point of the ledger (its
//! latest record naming one before them; before any, the first one after, else the
//! configuration's).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use super::{for_each, money, DateRange, Entry, ReadStats};

/// What the rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum By {
    Day,
    Seller,
    Buyer,
    Vertical,
}

impl By {
    pub const ALL: [By; 4] = [By::Day, By::Seller, By::Buyer, By::Vertical];

    pub fn parse(text: &str) -> Result<By, String> {
        match text {
            "day" => Ok(By::Day),
            "seller" => Ok(By::Seller),
            "buyer" => Ok(By::Buyer),
            "vertical" => Ok(By::Vertical),
            other => Err(format!(
                "--by {:?}: unknown grouping (one of: day, seller, buyer, vertical)",
                other.chars().take(40).collect::<String>()
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            By::Day => "day",
            By::Seller => "seller",
            By::Buyer => "buyer",
            By::Vertical => "vertical",
        }
    }
}

/// One row: the figures of one key in one currency. Money sums are exact `i128` (each
/// field added is an `i64`; a sum passes `i64::MAX` on a large enough ledger) and are
/// written exactly: JSON and CSV as integers, the table and HTML as decimals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    pub key: String,
    pub currency: String,
    pub pings: u64,
    pub bids: u64,
    pub quotes: u64,
    pub sales: u64,
    pub revenue_micros: i128,
    pub payouts_micros: i128,
    pub margin_micros: i128,
    pub returns: u64,
    pub refunds_micros: i128,
}

impl Row {
    fn add(&mut self, o: &Figures) {
        self.pings += o.pings;
        self.bids += o.bids;
        self.quotes += o.quotes;
        self.sales += o.sales;
        self.revenue_micros += o.revenue;
        self.payouts_micros += o.payouts;
        self.margin_micros += o.margin;
        self.returns += o.returns;
        self.refunds_micros += o.refunds;
    }
}

/// The figures of one cell (one grouping key, vertical and currency).
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    pings: u64,
    bids: u64,
    quotes: u64,
    sales: u64,
    revenue: i128,
    payouts: i128,
    margin: i128,
    returns: u64,
    refunds: i128,
}

/// Test leads left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub test_auctions: u64,
    pub test_sales: u64,
}

/// The report of one grouping.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub by: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The zone whose days `from`, `to` and the day grouping are (`--tz`): `UTC` or an
    /// IANA name.
    pub zone: &'static str,
    pub rows: Vec<Row>,
    /// One per currency: every row of that currency added up.
    pub totals: Vec<Row>,
    pub excluded: Excluded,
    /// What the read skipped (newer versions, unknown types, unreadable lines).
    pub notes: Vec<String>,
}

/// Every grouping at once, from one read of the ledger.
#[derive(Debug, Clone)]
pub struct Reports {
    pub by: BTreeMap<By, Report>,
    pub stats: ReadStats,
}

/// A cell: (grouping, key, vertical, currency). The currency is the one recorded on a
/// sale or refund; `None` for counts (pings, bids, quotes) of a vertical no currency was
/// seen for yet, resolved at the end.
type CellKey = (By, String, String, Option<String>);

#[derive(Default)]
struct Acc {
    cells: BTreeMap<CellKey, Figures>,
    /// The latest currency recorded for each vertical (quotes, sales, refunds), in ledger
    /// order: the currency its pings, bids and quotes count in.
    latest: HashMap<String, String>,
    /// The first currency recorded for each vertical: for counts seen before any.
    first: HashMap<String, String>,
    /// ping_id -> (seller, vertical, test, currency) of auctions, to place quote holds.
    pings: HashMap<String, (String, String, bool, Option<String>)>,
    /// Quote holds: (ping_id, buyer, day).
    quotes: Vec<(String, String, String)>,
    excluded: Excluded,
}

impl Acc {
    fn cell(&mut self, by: By, key: &str, vertical: &str, currency: Option<&str>) -> &mut Figures {
        self.cells
            .entry((
                by,
                key.to_string(),
                vertical.to_string(),
                currency.map(str::to_string),
            ))
            .or_default()
    }

    /// Notes the currency a record carries (every record, in range or not), so counts
    /// are placed in the currency their vertical had at that point of the ledger.
    fn observe(&mut self, e: &Entry) {
        if matches!(
            e.kind.as_str(),
            "auction" | "quote_opened" | "sale" | "refund"
        ) {
            let (vertical, currency) = (e.str("vertical"), e.str("currency"));
            if currency.is_empty() {
                return;
            }
            if self.latest.get(vertical).map(String::as_str) != Some(currency) {
                self.latest
                    .insert(vertical.to_string(), currency.to_string());
            }
            if !self.first.contains_key(vertical) {
                self.first
                    .insert(vertical.to_string(), currency.to_string());
            }
        }
    }

    fn take(&mut self, e: &Entry) {
        let day = e.day.map(|d| d.to_string()).unwrap_or_default();
        match e.kind.as_str() {
            "auction" => {
                let (seller, vertical) = (e.str("seller"), e.str("vertical"));
                let test = e.bool("test");
                // The currency the auction ran in (recorded since 2026-12-01); for an
                // older record, the one its vertical had at that point of the ledger.
                let currency = Some(e.str("currency"))
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .or_else(|| self.latest.get(vertical).cloned());
                self.pings.insert(
                    e.str("ping_id").to_string(),
                    (
                        seller.to_string(),
                        vertical.to_string(),
                        test,
                        currency.clone(),
                    ),
                );
                let currency = currency.as_deref();
                if test {
                    self.excluded.test_auctions += 1;
                    return;
                }
                let lines = e
                    .value
                    .get("buyers")
                    .and_then(|b| b.as_array())
                    .cloned()
                    .unwrap_or_default();
                let bids = lines.iter().filter(|l| is_bid(l)).count() as u64;
                for (by, key) in [
                    (By::Day, day.as_str()),
                    (By::Seller, seller),
                    (By::Vertical, vertical),
                ] {
                    let c = self.cell(by, key, vertical, currency);
                    c.pings += 1;
                    c.bids += bids;
                }
                // Per buyer: each buyer once per auction (a capped_at_award line repeats
                // a buyer that bid).
                let mut seen: Vec<&str> = Vec::new();
                for l in &lines {
                    let buyer = l.get("buyer").and_then(|b| b.as_str()).unwrap_or("");
                    let outcome = l.get("outcome").and_then(|b| b.as_str()).unwrap_or("");
                    if seen.contains(&buyer) {
                        continue;
                    }
                    let pinged = matches!(
                        outcome,
                        "bid" | "no_bid" | "bid_above_max" | "bid_expired" | "invalid" | "error"
                    ) || (outcome == "timeout"
                        && l.get("detail").and_then(|d| d.as_str()) != Some("no_time_left"));
                    if !pinged && !is_bid(l) {
                        continue;
                    }
                    seen.push(buyer);
                    let c = self.cell(By::Buyer, buyer, vertical, currency);
                    c.pings += u64::from(pinged);
                    c.bids += u64::from(is_bid(l));
                }
            }
            "sale" => {
                if e.bool("test") {
                    self.excluded.test_sales += 1;
                    return;
                }
                let vertical = e.str("vertical").to_string();
                // The currency recorded on the sale, never the vertical's (a reload may
                // have changed it): money of different currencies is never added.
                let currency = e.str("currency").to_string();
                // Each field is an integer or absent: a malformed one stopped the reading
                // (`super::MoneyFields`).
                let (bid, price, margin) = (
                    i128::from(e.i64("bid_micros").unwrap_or(0)),
                    i128::from(e.i64("seller_price_micros").unwrap_or(0)),
                    i128::from(e.i64("margin_micros").unwrap_or(0)),
                );
                for (by, key) in [
                    (By::Day, day.as_str()),
                    (By::Seller, e.str("seller")),
                    (By::Buyer, e.str("buyer")),
                    (By::Vertical, vertical.as_str()),
                ] {
                    let c = self.cell(by, key, &vertical, Some(&currency));
                    c.sales += 1;
                    c.revenue += bid;
                    c.payouts += price;
                    c.margin += margin;
                }
            }
            "refund" => {
                let vertical = e.str("vertical").to_string();
                let currency = e.str("currency").to_string();
                let (refund, clawback, reversed) = (
                    i128::from(e.i64("buyer_refund_micros").unwrap_or(0)),
                    i128::from(e.i64("seller_clawback_micros").unwrap_or(0)),
                    i128::from(e.i64("margin_reversed_micros").unwrap_or(0)),
                );
                for (by, key) in [
                    (By::Day, day.as_str()),
                    (By::Seller, e.str("seller")),
                    (By::Buyer, e.str("buyer")),
                    (By::Vertical, vertical.as_str()),
                ] {
                    let c = self.cell(by, key, &vertical, Some(&currency));
                    c.returns += 1;
                    c.refunds += refund;
                    c.revenue -= refund;
                    c.payouts -= clawback;
                    c.margin -= reversed;
                }
            }
            "quote_reserved" => self.quotes.push((
                e.str("ping_id").to_string(),
                e.str("buyer").to_string(),
                day,
            )),
            _ => {}
        }
    }

    fn finish(
        mut self,
        range: DateRange,
        stats: ReadStats,
        currencies: &HashMap<String, String>,
    ) -> Reports {
        for (ping, buyer, day) in std::mem::take(&mut self.quotes) {
            let Some((seller, vertical, test, currency)) = self.pings.get(&ping).cloned() else {
                // A hold whose auction is outside the range or missing: counted by day
                // and buyer only.
                self.cell(By::Day, &day, "", None).quotes += 1;
                self.cell(By::Buyer, &buyer, "", None).quotes += 1;
                continue;
            };
            if test {
                continue;
            }
            for (by, key) in [
                (By::Day, day.as_str()),
                (By::Seller, seller.as_str()),
                (By::Buyer, buyer.as_str()),
                (By::Vertical, vertical.as_str()),
            ] {
                self.cell(by, key, &vertical, currency.as_deref()).quotes += 1;
            }
        }
        // Counts of a vertical before any currency was recorded for it: the first one
        // recorded after, else the configuration's.
        let currency_of = |vertical: &str, recorded: &Option<String>| -> String {
            recorded
                .as_ref()
                .or_else(|| self.first.get(vertical))
                .or_else(|| currencies.get(vertical))
                .cloned()
                .unwrap_or_default()
        };
        let mut rows: BTreeMap<(By, String, String), Row> = BTreeMap::new();
        for ((by, key, vertical, recorded), f) in &self.cells {
            // Names and currencies as their text allows: an edited ledger's may hold
            // anything (black-box round 176a: a buyer name with a line break and escapes
            // forged a line and drove the terminal in every format).
            let currency = shown(&currency_of(vertical, recorded));
            let key = shown(key);
            rows.entry((*by, key.clone(), currency.clone()))
                .or_insert_with(|| Row {
                    key,
                    currency,
                    ..Row::default()
                })
                .add(f);
        }
        let notes = stats.notes();
        let mut by = BTreeMap::new();
        for g in By::ALL {
            let rows: Vec<Row> = rows
                .iter()
                .filter(|((b, _, _), _)| *b == g)
                .map(|(_, r)| r.clone())
                .collect();
            let mut totals: BTreeMap<String, Row> = BTreeMap::new();
            for r in &rows {
                let t = totals.entry(r.currency.clone()).or_insert_with(|| Row {
                    key: "total".into(),
                    currency: r.currency.clone(),
                    ..Row::default()
                });
                t.pings += r.pings;
                t.bids += r.bids;
                t.quotes += r.quotes;
                t.sales += r.sales;
                t.revenue_micros += r.revenue_micros;
                t.payouts_micros += r.payouts_micros;
                t.margin_micros += r.margin_micros;
                t.returns += r.returns;
                t.refunds_micros += r.refunds_micros;
            }
            by.insert(
                g,
                Report {
                    by: g.as_str(),
                    from: range.from.map(|d| d.to_string()),
                    to: range.to.map(|d| d.to_string()),
                    zone: range.zone_name(),
                    rows,
                    totals: totals.into_values().collect(),
                    excluded: self.excluded,
                    notes: notes.clone(),
                },
            );
        }
        Reports { by, stats }
    }
}

/// Most characters of a row's name shown.
const KEY_SHOWN_MAX: usize = 256;

/// `text` with its hidden characters as `?`, cut past [`KEY_SHOWN_MAX`]; a name the
/// exchange wrote is unchanged.
pub fn shown(text: &str) -> String {
    proto::error::shown_text(text, KEY_SHOWN_MAX)
}

/// A bid line: a ping answered with a bid, or a fixed-price buyer's standing price.
fn is_bid(line: &serde_json::Value) -> bool {
    matches!(
        line.get("outcome").and_then(|o| o.as_str()),
        Some("bid" | "fixed_price")
    )
}

/// Reads the ledger in `dir` once and builds every grouping for the records in `range`.
/// `currencies` (vertical -> currency, from a configuration) names the currency of
/// verticals without sales.
pub fn build(
    dir: &Path,
    range: DateRange,
    currencies: &HashMap<String, String>,
) -> Result<Reports, String> {
    build_from(dir, range, currencies, true, None)
}

/// [`build`] on a ledger whose chain may not verify, for `pingpost ledger verify`'s
/// reconciliation (see [`super::for_each_unverified`]).
pub fn build_unverified(
    dir: &Path,
    range: DateRange,
    currencies: &HashMap<String, String>,
    upto: Option<u64>,
) -> Result<Reports, String> {
    build_from(dir, range, currencies, false, upto)
}

fn build_from(
    dir: &Path,
    range: DateRange,
    currencies: &HashMap<String, String>,
    verified: bool,
    upto: Option<u64>,
) -> Result<Reports, String> {
    let mut acc = Acc::default();
    let take = |mut e: Entry| {
        // Its day in the report's zone (`--tz`), for the range and the day grouping.
        e.day = range.day_of(&e);
        acc.observe(&e);
        if range.contains(e.day) {
            acc.take(&e);
        }
        true
    };
    let stats = if verified {
        for_each(dir, take)?
    } else {
        super::for_each_unverified_upto(dir, upto, take)?
    };
    Ok(acc.finish(range, stats, currencies))
}

const COLUMNS: [&str; 11] = [
    "key", "currency", "pings", "bids", "quotes", "sales", "revenue", "payouts", "margin",
    "returns", "refunds",
];

/// The columns of [`COLUMNS`] that hold money.
const MONEY_COLUMNS: [usize; 4] = [6, 7, 8, 10];

fn cells(r: &Row, micros_as_units: bool) -> Vec<String> {
    let m = |v: i128| {
        if micros_as_units {
            money(v)
        } else {
            v.to_string()
        }
    };
    vec![
        r.key.clone(),
        if r.currency.is_empty() {
            "-".into()
        } else {
            r.currency.clone()
        },
        r.pings.to_string(),
        r.bids.to_string(),
        r.quotes.to_string(),
        r.sales.to_string(),
        m(r.revenue_micros),
        m(r.payouts_micros),
        m(r.margin_micros),
        r.returns.to_string(),
        m(r.refunds_micros),
    ]
}

impl Report {
    /// A text table, money in currency units.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut lines: Vec<Vec<String>> = vec![COLUMNS.iter().map(|c| c.to_string()).collect()];
        lines[0][0] = self.by.to_string();
        for r in self.rows.iter().chain(&self.totals) {
            lines.push(cells(r, true));
        }
        // Each money column shows one number of decimals (the most any of its cells
        // needs), so its decimal points line up and `-6.59888` reads `-6.598880` (black-box
        // round 62b: `0.00`, `0.000007` and `3345.09523` in one column).
        for col in MONEY_COLUMNS {
            let decimals = lines[1..]
                .iter()
                .filter_map(|l| l[col].split_once('.').map(|(_, f)| f.len()))
                .max()
                .unwrap_or(0);
            for l in &mut lines[1..] {
                if let Some((_, f)) = l[col].split_once('.') {
                    let pad = decimals.saturating_sub(f.len());
                    l[col].push_str(&"0".repeat(pad));
                }
            }
        }
        let widths: Vec<usize> = (0..COLUMNS.len())
            .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "P&L by {} ({}, {} days), test leads left out",
            self.by,
            range_text(self.from.as_deref(), self.to.as_deref()),
            self.zone
        );
        for (n, l) in lines.iter().enumerate() {
            if n == 1 + self.rows.len() {
                let _ = writeln!(
                    out,
                    "{}",
                    "-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1))
                );
            }
            let text: Vec<String> = l
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if i < 2 {
                        format!("{c:<w$}", w = widths[i])
                    } else {
                        format!("{c:>w$}", w = widths[i])
                    }
                })
                .collect();
            let _ = writeln!(out, "{}", text.join("  ").trim_end());
        }
        if self.rows.is_empty() {
            let _ = writeln!(out, "(no records in this range)");
        }
        let _ = writeln!(
            out,
            "left out: {} test auction(s), {} test sale(s); revenue, payouts and margin are net of refunds",
            self.excluded.test_auctions, self.excluded.test_sales
        );
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// CSV: one header line, one line per row then the totals (key `total`); money in
    /// integer micros (`*_micros` columns), exact.
    pub fn csv(&self) -> String {
        let mut out = format!(
            "{},currency,pings,bids,quotes,sales,revenue_micros,payouts_micros,margin_micros,returns,refunds_micros\n",
            self.by
        );
        for r in self.rows.iter().chain(&self.totals) {
            let c: Vec<String> = cells(r, false).iter().map(|c| csv_field(c)).collect();
            out.push_str(&c.join(","));
            out.push('\n');
        }
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

pub(super) fn range_text(from: Option<&str>, to: Option<&str>) -> String {
    match (from, to) {
        (None, None) => "all days".into(),
        (Some(f), None) => format!("from {f}"),
        (None, Some(t)) => format!("up to {t}"),
        (Some(f), Some(t)) => format!("{f} to {t}"),
    }
}

/// One CSV field, quoted when it must be (RFC 4180). A text that a spreadsheet would
/// run as a formula (it starts with `=`, `+`, `-`, `@`, a tab or a carriage return, and
/// is not a number or the `-` placeholder) gets a leading `'`, so a buyer's
/// `buyer_lead_id` of `=HYPERLINK(...)` is shown, not run. A text that starts with `'`
/// gets one too, so taking one leading `'` off any field that has one gives the value
/// back exactly (black-box round 93b: `'=x` and a prefixed `=x` read the same).
pub fn csv_field(s: &str) -> String {
    let formula = s.starts_with('\'')
        || (s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s != "-" && !plain_decimal(s));
    let s = if formula {
        std::borrow::Cow::Owned(format!("'{s}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// A number as the ledger's CSV writes them: an optional sign, digits, and a fraction
/// of digits after a point. Anything else that starts with a sign is text to a
/// spreadsheet's formula reader (black-box round 94b: `-inf`, `-nan` and `-1e5` were
/// taken for numbers, as Rust's float parser reads them, and left bare).
fn plain_decimal(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// The HTML page of every grouping (see [`super::html`]).
pub fn html(reports: &Reports, dir: &Path) -> String {
    super::html::page(reports, dir)
}

#[cfg(test)]
mod csv_tests {
    use super::csv_field;

    #[test]
    fn text_a_spreadsheet_would_run_is_shown_not_run() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http://evil\")"),
            "\"'=HYPERLINK(\"\"http://evil\"\")\""
        );
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("+cmd"), "'+cmd");
        // Numbers, negative ones included, and the `-` placeholder stay as they are.
        for plain in ["-99999999999", "-1.5", "+3", "-", "71481481", "acme"] {
            assert_eq!(csv_field(plain), plain);
        }
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        // A leading `'` is the value's own only if another follows it (round 93b).
        assert_eq!(csv_field("'=x"), "''=x");
        assert_eq!(csv_field("O'Brien"), "O'Brien");
        assert_eq!(csv_field("-1-2"), "'-1-2");
        // Round 94b: what Rust's float parser takes for a number, a spreadsheet does not.
        for text in [
            "-inf",
            "-nan",
            "-NaN",
            "-Infinity",
            "-1e5",
            "-1E5",
            "-.5",
            "-12.",
            "+.5",
        ] {
            assert_eq!(csv_field(text), format!("'{text}"));
        }
    }
}

#[cfg(test)]
mod currency_tests {
    use super::*;
    use crate::ledger::segments;

    fn ledger(records: &[String]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let out = segments::frame_all(records);
        std::fs::write(dir.path().join(segments::segment_name(1)), out).unwrap();
        dir
    }

    fn auction(n: u32, day: &str) -> String {
        format!(
            r#"{{"type":"auction","v":5,"generation":1,"at":"{day}T10:00:00.000Z","auction_id":"au_{n}","ping_id":"pg_{n}","seller":"s","vertical":"v","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{{"buyer":"b","outcome":"bid","bid_micros":15000000}}],"winner":"b","bid_micros":15000000,"seller_price_micros":12000000,"took_us":5}}"#
        )
    }

    fn sale(n: u32, day: &str, currency: &str, bid: i64, price: i64) -> String {
        format!(
            r#"{{"type":"sale","v":5,"generation":2,"at":"{day}T10:00:01.000Z","lead_id":"ld_{n}","ping_id":"pg_{n}","auction_id":"au_{n}","seller":"s","buyer":"b","vertical":"v","currency":"{currency}","test":false,"bid_micros":{bid},"seller_price_micros":{price},"margin_micros":{}}}"#,
            bid - price
        )
    }

    /// `--tz`: finance closes its books on its own midnight. Records at 10:00 UTC are on
    /// the next day at UTC+14 (Pacific/Kiritimati, midnight exactly) and the day before
    /// at UTC-11 (Pacific/Pago_Pago), for the day grouping, `--from`/`--to` and export.
    #[test]
    fn days_are_those_of_the_zone_given() {
        let dir = ledger(&[
            auction(1, "2026-11-29"),
            sale(1, "2026-11-29", "USD", 15_000_000, 12_000_000),
            auction(2, "2026-11-30"),
            sale(2, "2026-11-30", "USD", 20_000_000, 16_000_000),
        ]);
        let days = |range: DateRange| -> Vec<(String, u64, i128)> {
            let reports = build(dir.path(), range, &HashMap::new()).unwrap();
            reports.by[&By::Day]
                .rows
                .iter()
                .map(|r| (r.key.clone(), r.sales, r.revenue_micros))
                .collect()
        };
        let all = DateRange::default();
        let zoned = |name: &str| all.with_zone(Some(name)).unwrap();
        let row = |day: &str, revenue: i128| (day.to_string(), 1, revenue);
        assert_eq!(
            days(all),
            [row("2026-11-29", 15_000_000), row("2026-11-30", 20_000_000)]
        );
        assert_eq!(
            days(zoned("Pacific/Kiritimati")),
            [row("2026-11-30", 15_000_000), row("2026-12-01", 20_000_000)]
        );
        assert_eq!(
            days(zoned("Pacific/Pago_Pago")),
            [row("2026-11-28", 15_000_000), row("2026-11-29", 20_000_000)]
        );
        // UTC named is UTC.
        assert_eq!(zoned("UTC"), all);
        // One day of the zone: the other sale is on another day there.
        let nov_30 = DateRange::parse(Some("2026-11-30"), Some("2026-11-30")).unwrap();
        assert_eq!(days(nov_30), [row("2026-11-30", 20_000_000)]);
        let kiritimati_nov_30 = nov_30.with_zone(Some("Pacific/Kiritimati")).unwrap();
        assert_eq!(days(kiritimati_nov_30), [row("2026-11-30", 15_000_000)]);
        // Every format names the zone.
        let reports = build(dir.path(), kiritimati_nov_30, &HashMap::new()).unwrap();
        let r = &reports.by[&By::Day];
        assert!(
            r.table()
                .starts_with("P&L by day (2026-11-30 to 2026-11-30, Pacific/Kiritimati days)"),
            "{}",
            r.table()
        );
        assert!(
            r.json().contains(r#""zone": "Pacific/Kiritimati""#),
            "{}",
            r.json()
        );
        assert!(
            html(&reports, dir.path()).contains("(Pacific/Kiritimati days)"),
            "the page names the zone"
        );
        // Export takes the zone's days too: the first auction and sale only.
        let mut out = Vec::new();
        let (n, _) = crate::finance::export::export(
            dir.path(),
            kiritimati_nov_30,
            crate::finance::export::Format::Jsonl,
            &[],
            &mut out,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(n, 2, "{out}");
        assert!(
            out.contains(r#""ld_1""#) && !out.contains(r#""ld_2""#),
            "{out}"
        );
        // A name that is not a zone is refused, saying so.
        for bad in ["Mars/Olympus_Mons", "", "utc+3", "EST5EDT,M3"] {
            let e = all.with_zone(Some(bad)).unwrap_err();
            assert!(e.contains("not an IANA time zone"), "{bad:?}: {e}");
        }
    }

    /// Black-box round 41: a revenue past `i64::MAX` (9.4e18 micros, no field near it)
    /// was saturated at `i64::MAX` in every row, breaking revenue = payouts + margin, with
    /// exit 0; with a sale at `i64::MAX` the by-buyer total wrapped negative. Sums are
    /// exact `i128` in every grouping and format.
    #[test]
    fn sums_past_i64_max_are_exact_in_every_grouping_and_format() {
        let big = 5_000_000_000_000_000_000i64;
        let dir = ledger(&[
            auction(1, "2026-11-29"),
            sale(1, "2026-11-29", "USD", big, big - 1_000_000),
            auction(2, "2026-11-30"),
            sale(2, "2026-11-30", "USD", big, big - 2_000_000),
        ]);
        let reports = build(dir.path(), DateRange::default(), &HashMap::new()).unwrap();
        for by in By::ALL {
            let r = &reports.by[&by];
            let t = &r.totals[0];
            assert_eq!(
                (t.sales, t.revenue_micros, t.payouts_micros, t.margin_micros),
                (
                    2,
                    10_000_000_000_000_000_000,
                    9_999_999_999_997_000_000,
                    3_000_000
                ),
                "by {}: {}",
                by.as_str(),
                r.table()
            );
            for row in r.rows.iter().chain(&r.totals) {
                assert_eq!(row.revenue_micros, row.payouts_micros + row.margin_micros);
            }
            let json = r.json();
            assert!(
                json.contains(r#""revenue_micros": 10000000000000000000,"#)
                    && json.contains(r#""payouts_micros": 9999999999997000000,"#),
                "{json}"
            );
            let csv = r.csv();
            assert!(
                csv.contains("\ntotal,USD,")
                    && csv.contains(",2,10000000000000000000,9999999999997000000,3000000,0,0\n"),
                "{csv}"
            );
            let table = r.table();
            let total: Vec<&str> = table
                .lines()
                .find(|l| l.starts_with("total"))
                .map(|l| l.split_whitespace().collect())
                .unwrap_or_default();
            assert_eq!(
                total.get(6..9),
                Some(&["10000000000000.00", "9999999999997.00", "3.00"][..]),
                "{table}"
            );
        }
        let page = html(&reports, dir.path());
        assert!(
            page.contains(
                r#"id="total-revenue-USD" data-value="10000000000000000000">10000000000000.00<"#
            ),
            "{page}"
        );

        // A sale at i64::MAX and another to the same buyer: the buyer's row and the total
        // are exact and positive.
        let dir = ledger(&[
            auction(1, "2026-11-29"),
            sale(1, "2026-11-29", "USD", i64::MAX, i64::MAX - 1),
            auction(2, "2026-11-30"),
            sale(2, "2026-11-30", "USD", 15_000_000, 12_000_000),
        ]);
        let reports = build(dir.path(), DateRange::default(), &HashMap::new()).unwrap();
        let by_buyer = &reports.by[&By::Buyer];
        let expected = i128::from(i64::MAX) + 15_000_000;
        assert_eq!(by_buyer.rows[0].revenue_micros, expected);
        assert_eq!(by_buyer.totals[0].revenue_micros, expected);
        assert_eq!(by_buyer.totals[0].margin_micros, 3_000_001);
        assert!(
            by_buyer.table().contains("9223372036869.775807"),
            "{}",
            by_buyer.table()
        );
        let by_day = &reports.by[&By::Day];
        assert_eq!(by_day.totals[0].revenue_micros, expected);
    }

    /// Black-box round 62b: one money column showed `0.00`, `0.000007` and `-6.59888`.
    /// Each column now has one number of decimals, the most any of its cells needs.
    #[test]
    fn a_money_column_has_one_number_of_decimals() {
        let dir = ledger(&[
            auction(1, "2026-11-29"),
            sale(1, "2026-11-29", "USD", 15_000_000, 12_000_000),
            auction(2, "2026-11-30"),
            sale(2, "2026-11-30", "USD", 7, 2),
            auction(3, "2026-12-01"),
            sale(3, "2026-12-01", "USD", 6_598_880, 5_000_000),
        ]);
        let reports = build(dir.path(), DateRange::default(), &HashMap::new()).unwrap();
        let table = reports.by[&By::Day].table();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .filter(|l| l.starts_with("2026-") || l.starts_with("total"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let revenue: Vec<&str> = rows.iter().map(|r| r[6]).collect();
        assert_eq!(
            revenue,
            ["15.000000", "0.000007", "6.598880", "21.598887"],
            "{table}"
        );
        // The decimal points line up (the revenue's is the first `.` of a row).
        let at: Vec<Option<usize>> = table
            .lines()
            .filter(|l| l.starts_with("2026-") || l.starts_with("total"))
            .map(|l| l.find('.'))
            .collect();
        assert!(at.windows(2).all(|w| w[0] == w[1]), "{table}");
        // Whole cents everywhere: two decimals, as before.
        let dir = ledger(&[
            auction(1, "2026-11-29"),
            sale(1, "2026-11-29", "USD", 15_000_000, 12_000_000),
        ]);
        let reports = build(dir.path(), DateRange::default(), &HashMap::new()).unwrap();
        assert!(
            reports.by[&By::Day].table().contains(" 15.00 "),
            "{}",
            reports.by[&By::Day].table()
        );
    }

    /// Black-box round 45: a buyer pinged whose bid came back `bid_expired` (its
    /// `expires_in_ms` under `quote_min_ms`) was left out of the by-buyer pings (no row
    /// at all when that was all it did). Every pinged outcome counts; a buyer never
    /// pinged (breaker, no time left) does not.
    #[test]
    fn every_pinged_buyer_counts_in_the_by_buyer_pings() {
        let lines = r#"[{"buyer":"b","outcome":"bid","bid_micros":15000000},{"buyer":"x","outcome":"bid_expired","detail":"quote_min_ms","bid_micros":20000000},{"buyer":"m","outcome":"bid_above_max","bid_micros":900000000},{"buyer":"t","outcome":"timeout"},{"buyer":"n","outcome":"timeout","detail":"no_time_left"},{"buyer":"k","outcome":"skipped_breaker"}]"#;
        let records: Vec<String> = (1..=3)
            .map(|n| {
                auction(n, "2026-11-29").replace(
                    r#"[{"buyer":"b","outcome":"bid","bid_micros":15000000}]"#,
                    lines,
                )
            })
            .collect();
        let dir = ledger(&records);
        let reports = build(dir.path(), DateRange::default(), &HashMap::new()).unwrap();
        let by_buyer = &reports.by[&By::Buyer];
        let pings: HashMap<&str, u64> = by_buyer
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.pings))
            .collect();
        assert_eq!(
            pings,
            HashMap::from([("b", 3), ("x", 3), ("m", 3), ("t", 3)]),
            "{}",
            by_buyer.table()
        );
        assert_eq!(by_buyer.totals[0].pings, 12);
    }

    /// A vertical whose currency a reload changed from USD to JPY: its USD sale and its
    /// JPY sale are never added, in any grouping or format.
    #[test]
    fn sales_count_in_the_currency_recorded_on_them_never_the_verticals_first() {
        let dir = ledger(&[
            auction(1, "2026-11-29"),
            sale(1, "2026-11-29", "USD", 15_000_000, 12_000_000),
            auction(2, "2026-11-29"),
            sale(2, "2026-11-29", "JPY", 30_000_000, 24_000_000),
        ]);
        let usd_only: HashMap<String, String> = [("v".to_string(), "USD".to_string())].into();
        let reports = build(dir.path(), DateRange::default(), &usd_only).unwrap();
        for by in By::ALL {
            let r = &reports.by[&by];
            let totals: Vec<(&str, u64, i128, i128, i128)> = r
                .totals
                .iter()
                .map(|t| {
                    (
                        t.currency.as_str(),
                        t.sales,
                        t.revenue_micros,
                        t.payouts_micros,
                        t.margin_micros,
                    )
                })
                .collect();
            assert_eq!(
                totals,
                [
                    ("JPY", 1, 30_000_000, 24_000_000, 6_000_000),
                    ("USD", 1, 15_000_000, 12_000_000, 3_000_000)
                ],
                "by {}: {}",
                by.as_str(),
                r.table()
            );
            for row in &r.rows {
                let money = (row.revenue_micros, row.currency.as_str());
                assert!(
                    matches!(money, (0 | 15_000_000, "USD") | (0 | 30_000_000, "JPY")),
                    "by {}: a row adds currencies: {row:?}",
                    by.as_str()
                );
            }
            let csv = r.csv();
            assert!(csv.contains(",JPY,") && csv.contains(",USD,"), "{csv}");
            assert!(!csv.contains("45000000"), "{csv}");
            let json = r.json();
            assert!(!json.contains("45000000"), "{json}");
            assert!(!r.table().contains("45.00"), "{}", r.table());
        }
        // Each auction's ping counts in the currency the vertical had then.
        let by_day = &reports.by[&By::Day];
        let pings: Vec<(&str, u64)> = by_day
            .rows
            .iter()
            .map(|r| (r.currency.as_str(), r.pings))
            .collect();
        assert_eq!(pings, [("JPY", 0), ("USD", 2)], "{}", by_day.table());
    }
}
