//! Recovery at start: after the ledger has verified itself ([`crate::ledger::Ledger::open`])
//! and before the exchange serves, the ledger is replayed to rebuild what lives only in
//! memory:
//!
//! - caps and budgets: every `sale` counts in the windows it was sold in (its `windows`;
//!   a record without them, written before format 4, or written in another zone than the
//!   buyer's configured one, counts in the windows of its time in the buyer's zone); so
//!   does every delivery with a `post_sent` record and no outcome (when in doubt, count
//!   it), and every late accept (`post_attempt` with outcome `late_accept`: the buyer
//!   accepted after its timeout and has the lead). A buyer that is not configured now is
//!   counted too, under the stable key of its id (interned now), so a reload that brings
//!   it back finds its counts (its zone is not known: its leads count in the windows they
//!   were written with, and the cap book carries them into the zone it comes back with);
//! - idempotency keys: a `post_sent` record names its request's key (as SHA-256); a retry
//!   with that key gets the stored answer (`sold` or `unsold` from the post's outcome, or
//!   `500` when the outcome is unknown) and delivers nothing;
//! - the sold-lead index (`POST /v1/dispositions`): every `sale` (the newest
//!   `server.sold_leads_max`), with the outcomes its `disposition` records took and its
//!   `refund`, so a repeat after a restart is still refused;
//! - buyers' idempotency keys (`POST /v1/dispositions`): a `disposition` record names its
//!   request's key and body (as SHA-256); a retry with that key gets the `200` it was
//!   given, rebuilt from the record and its lead's `refund` by the function that built it
//!   ([`crate::dispositions::answer_json`]), and writes nothing;
//! - deliveries whose outcome is unknown (a `post_sent` with no `sale` or `post_attempt`
//!   of the same lead and attempt): counted, logged at start, listed by
//!   `pingpost ledger verify`.
//!
//! - finished posts: a quote that was posted (sold or unsold) or expired is put back as
//!   finished, so a repeated `/v1/post` of its `ping_id` gets the first answer again;
//! - open quotes: every `quote_opened` with no sale, `unsold`, release or expiry of its
//!   ping, and not yet expired, is firm again with its cap hold (see [`restore_quote`]).
//!
//! Never: panics on a record it cannot read (a line that is not a record it knows is
//! skipped: the ledger's own verification already vouched for every line).

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use proto::error::{ApiError, ErrorCode};
use proto::seller::{NoBidReason, PingAnswer, PingStatus, PostAnswer, PostStatus};
use proto::Micros;
use serde_json::Value;

use crate::core::caps::Windows;
use crate::core::post::{refuse_before_delivery, BeforeDelivery};
use crate::core::record::{LATE_ACCEPT, LATE_NO_ACCEPT};
use crate::core::settlement::release_reason;
use crate::core::UnixMs;
use crate::state::AppState;

/// Most unknown-outcome deliveries named one by one in the start log (the count is
/// always logged).
pub const UNKNOWN_LOGGED_MAX: usize = 100;

/// One `post_sent` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub at: UnixMs,
    pub lead_id: String,
    pub auction_id: String,
    pub ping_id: String,
    pub seller: String,
    pub buyer: String,
    pub attempt: u64,
    pub price_micros: i64,
    pub test: bool,
    pub windows: Option<Windows>,
    /// The zone `windows` are in (`tz`; absent in older records).
    pub tz: Option<String>,
    /// `(key, body)` hex SHA-256, when the request carried an `Idempotency-Key`.
    pub idempotency: Option<(String, String)>,
    /// The lead's dedup keys (`dedup`; absent in older records).
    pub dedup: Vec<crate::core::dedup::DedupKey>,
}

/// One `sale` record (what recovery needs of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    pub at: UnixMs,
    pub lead_id: String,
    pub ping_id: String,
    pub buyer: String,
    /// The display name the `sold` answer gave (`buyer_name`; absent in older records).
    pub buyer_name: Option<String>,
    pub attempt: u64,
    pub bid_micros: i64,
    pub seller_price_micros: i64,
    pub currency: String,
    pub test: bool,
    pub windows: Option<Windows>,
    /// The zone `windows` are in (`tz`; absent in older records).
    pub tz: Option<String>,
    /// The lead's dedup keys (`dedup`; absent in older records).
    pub dedup: Vec<crate::core::dedup::DedupKey>,
    /// The seller's id.
    pub seller: String,
}

/// A record's `dedup` keys (32 hex digits each).
fn dedup_of(v: &Value) -> Vec<crate::core::dedup::DedupKey> {
    v.get("dedup")
        .and_then(Value::as_array)
        .map(|a| crate::fingerprint::dedup_of_hex(a.iter().filter_map(Value::as_str)))
        .unwrap_or_default()
}

/// A keyed ping's `auction` record (what recovery needs of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedPing {
    pub at: UnixMs,
    pub ping_id: String,
    pub seller: String,
    /// `(key, body)` hex SHA-256.
    pub key: (String, String),
    /// Whether the auction had a winner (a quote; no `quote_opened` then means the quote
    /// was refused, an error that kept no key).
    pub won: bool,
    pub no_bid: Option<String>,
    pub score: Option<u8>,
    /// A direct post (`/v1/leads`): its answer is a post's ([`direct_answer_of`]).
    pub direct: bool,
}

/// A keyed disposition's `disposition` record (what recovery needs of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedDisposition {
    pub at: UnixMs,
    pub lead_id: String,
    pub buyer: String,
    pub outcome: String,
    pub test: bool,
    /// `(key, body)` hex SHA-256.
    pub key: (String, String),
}

/// What replaying a ledger found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Records read.
    pub records: u64,
    /// The fingerprint key id the last start recorded (`flush` with `start` and
    /// `key_id`; `None` when it recorded none).
    pub key_id: Option<String>,
    /// Every key id a start recorded, each once, in the order first seen.
    pub key_ids: Vec<String>,
    /// Whole lines that are not a readable record (1-based, counted across the
    /// segments in order), each with why: skipped, and named in the start's log.
    pub unreadable: Vec<(usize, String)>,
    /// Records of a format version newer than this pingpost writes: read as their type
    /// says (counting what they count is the safe side), and said in a warning.
    pub newer: u64,
    pub sent: Vec<Sent>,
    /// Pings that carried an `Idempotency-Key`, in ledger order.
    pub keyed_pings: Vec<KeyedPing>,
    pub sales: Vec<Sale>,
    /// Unsold posts by lead id: `(reason, ping_id, deliveries)`.
    pub unsold: HashMap<String, (String, String, u64)>,
    /// `(lead_id, attempt)` of every recorded outcome (sale or post attempt).
    outcomes: HashSet<(String, u64)>,
    /// `(lead_id, attempt)` of every late accept (a buyer that accepted after its
    /// timeout has the lead).
    late: HashSet<(String, u64)>,
    /// `quote_opened` records by ping id (the last one of each).
    opened: HashMap<String, Value>,
    /// Ping ids whose quote ended or was posted (a sale, an unsold post, a delivery, a
    /// released or expired hold).
    closed_pings: HashSet<String>,
    /// Ping ids whose quote expired unposted (`quote_expired`), with when.
    expired_pings: HashMap<String, UnixMs>,
    /// Ping ids whose post was refused before delivery and answered (`quote_released`
    /// for `mismatch` or `vertical_removed`), with the reason and when.
    refused_posts: HashMap<String, (String, UnixMs, Vec<String>)>,
    /// What buyers did with delivered leads, in ledger order, for the cold-start rates:
    /// `(buyer id, event)`.
    pub buyer_events: Vec<(String, BuyerEvent)>,
    /// Lead ids delivered as test leads (`post_sent` with `test`): their post attempts
    /// (which carry no `test` of their own) teach no buyer's rates, as live.
    test_leads: HashSet<String>,
    /// Every sale, as the sold-lead index keeps it (`POST /v1/dispositions`), in order.
    pub sold: Vec<(String, crate::dispositions::SoldLead)>,
    /// `(lead_id, outcome)` of every `disposition` record, in order.
    pub dispositions: Vec<(String, String)>,
    /// `lead_id` of every `refund` record, in order.
    pub refunds: Vec<String>,
    /// Dispositions that carried an `Idempotency-Key`, in ledger order.
    pub keyed_dispositions: Vec<KeyedDisposition>,
    /// The refund of each refunded lead, as its answer names it: `(currency,
    /// buyer_refund_micros, seller_clawback_micros)` by lead id.
    refund_lines: HashMap<String, (String, i64, i64)>,
    /// Timed-out deliveries of the run being read whose late answer is not recorded yet
    /// (`late_accept` or `late_no_accept`), by `(lead_id, attempt)`.
    hearing: HashSet<(String, u64)>,
    /// Timed-out deliveries whose buyer was still being heard out when the run ended
    /// without a shutdown (a crash or SIGKILL): the buyer may have accepted late, so
    /// the buyer may have the lead ("delivered, outcome unknown").
    cut_short: HashSet<(String, u64)>,
}

/// A buyer's deed that teaches its smoothed rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuyerEvent {
    /// Accepted at (the record's time).
    Accepted(UnixMs),
    /// Rejected (or timed out, failed, answered invalidly) at.
    Rejected(UnixMs),
    Returned,
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

fn at_of(v: &Value) -> UnixMs {
    v.get("at")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or(0, |t| t.timestamp_millis())
}

fn windows_of(v: &Value) -> Option<Windows> {
    let w = v.get("windows")?;
    Some(Windows {
        hour_start_ms: w.get("hour_start_ms")?.as_i64()?,
        day: w.get("day")?.as_i64()?,
        week: w.get("week")?.as_i64()?,
        month: w.get("month")?.as_i64()?,
    })
}

/// The `Idempotency-Key` a record names: `(key, body)` hex SHA-256 (`auction`,
/// `post_sent` and `disposition` records carry both, or neither).
fn idempotency_of(v: &Value) -> Option<(String, String)> {
    let key = v.get("idempotency_key_sha256").and_then(Value::as_str)?;
    let body = v.get("body_sha256").and_then(Value::as_str)?;
    Some((key.to_string(), body.to_string()))
}

/// A `sale` record as the sold-lead index keeps it (its buyer keyed at [`apply`]).
fn sold_lead_of(v: &Value) -> crate::dispositions::SoldLead {
    let micros = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    crate::dispositions::SoldLead {
        buyer_key: None,
        buyer: text(v, "buyer"),
        seller: text(v, "seller"),
        vertical: text(v, "vertical"),
        auction_id: text(v, "auction_id"),
        currency: text(v, "currency"),
        bid_micros: micros("bid_micros"),
        seller_price_micros: micros("seller_price_micros"),
        margin_micros: micros("margin_micros"),
        sold_at: at_of(v),
        test: v.get("test").and_then(Value::as_bool).unwrap_or(false),
        seen: 0,
        pending: 0,
        refunded: false,
    }
}

impl Scan {
    /// A run ended with no shutdown `flush` (the next start's `flush` follows it, or the
    /// ledger ends): a buyer still being heard out after its post timeout then (its late
    /// answer, accept or not, is not recorded) may have accepted.
    fn end_run_cut_short(&mut self) {
        self.cut_short.extend(self.hearing.drain());
    }

    /// Reads the ledger's lines (as [`crate::ledger::segments::read_all`] returns them).
    pub fn of_text(ledger: &str) -> Scan {
        let mut scan = Scan::default();
        for (i, line) in ledger.lines().enumerate() {
            let v = match serde_json::from_str::<Value>(line) {
                Ok(v) if v.is_object() => v,
                Ok(_) => {
                    scan.unreadable.push((i + 1, "not a JSON object".into()));
                    continue;
                }
                Err(e) => {
                    scan.unreadable.push((i + 1, e.to_string()));
                    continue;
                }
            };
            let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
            // A format version that is not a whole number is no record the exchange
            // wrote (round 57a: `"v":"5"` was read; the finance tools refuse it).
            match v.get("v").map(Value::as_u64) {
                None => {}
                Some(Some(n)) => {
                    scan.newer += u64::from(n > u64::from(crate::core::record::RECORD_VERSION));
                }
                Some(None) => {
                    scan.unreadable
                        .push((i + 1, "its format version `v` is not a whole number".into()));
                    continue;
                }
            }
            // A money field malformed or missing (the exchange writes neither: damage or
            // an edit whose chain was recomputed) is not read as 0: the record is skipped
            // as an unreadable line is (black-box round 55a: a sale without `bid_micros`
            // counted 0 against its buyer's budget). Its delivery, if any, then counts as
            // outcome unknown, at its `post_sent`'s price.
            let mut bad = crate::finance::record_money_problems(kind, &v);
            // A sale or delivery whose buyer or lead is not a string would be counted
            // for nobody (round 57a: `"buyer": 7` freed the buyer's budget): unreadable.
            if matches!(kind, "sale" | "post_sent") {
                for f in ["buyer", "lead_id"] {
                    if !v.get(f).is_some_and(Value::is_string) {
                        bad.push(format!("{f} is not a string"));
                    }
                }
            }
            if !bad.is_empty() {
                let kind = if kind.is_empty() { "untyped" } else { kind };
                scan.unreadable.push((
                    i + 1,
                    format!(
                        "{kind} record: {}: not as the exchange writes it",
                        bad.join(", ")
                    ),
                ));
                continue;
            }
            scan.records += 1;
            let attempt = v.get("attempt").and_then(Value::as_u64).unwrap_or(0);
            // Runs: a shutdown's `flush` comes after every late post answer was heard
            // out; a start's `flush` (`start`) begins a run, ending the one before.
            if kind == "flush" {
                if v.get("start").and_then(Value::as_bool) == Some(true) {
                    scan.key_id = v.get("key_id").and_then(Value::as_str).map(String::from);
                    if let Some(id) = &scan.key_id {
                        if !scan.key_ids.contains(id) {
                            scan.key_ids.push(id.clone());
                        }
                    }
                    scan.end_run_cut_short();
                } else {
                    scan.hearing.clear();
                }
                continue;
            }
            let test = v.get("test").and_then(Value::as_bool).unwrap_or(false);
            if kind == "post_sent" && test {
                scan.test_leads.insert(text(&v, "lead_id"));
            }
            // Exactly what the live rates count (`Effect::Post`'s `teaches`): real leads'
            // sales, rejections and failed deliveries, and real leads' returns.
            let event = match (kind, v.get("outcome").and_then(Value::as_str)) {
                ("sale", _) if !test => Some(BuyerEvent::Accepted(at_of(&v))),
                ("post_attempt", Some(o @ ("rejected" | "timeout" | "error" | "invalid")))
                    if !scan.test_leads.contains(&text(&v, "lead_id"))
                        // A timeout the post deadline cut short taught nothing live
                        // (only a timeout's reason is the exchange's own, never a buyer's).
                        && (o != "timeout"
                            || v.get("reason").and_then(Value::as_str)
                                != Some(crate::core::post::TIMEOUT_CUT_BY_DEADLINE)) =>
                {
                    Some(BuyerEvent::Rejected(at_of(&v)))
                }
                ("disposition", Some("returned")) if !test => Some(BuyerEvent::Returned),
                _ => None,
            };
            if let Some(e) = event {
                scan.buyer_events.push((text(&v, "buyer"), e));
            }
            if matches!(
                kind,
                "sale" | "unsold" | "post_sent" | "quote_released" | "quote_expired"
            ) {
                if let Some(p) = v.get("ping_id").and_then(Value::as_str) {
                    scan.closed_pings.insert(p.to_string());
                }
            }
            if kind == "quote_expired" {
                scan.expired_pings.insert(text(&v, "ping_id"), at_of(&v));
            }
            if kind == "quote_released" {
                let reason = text(&v, "reason");
                if reason == release_reason::MISMATCH
                    || reason == release_reason::VERTICAL_REMOVED
                    || reason == release_reason::DUPLICATE
                    || reason == release_reason::SUPPRESSED
                {
                    let changed = v
                        .get("changed_fields")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default();
                    scan.refused_posts
                        .insert(text(&v, "ping_id"), (reason, at_of(&v), changed));
                }
            }
            match kind {
                "quote_opened" => {
                    scan.opened.insert(text(&v, "ping_id"), v);
                    continue;
                }
                "auction" => {
                    if let Some(key) = idempotency_of(&v) {
                        scan.keyed_pings.push(KeyedPing {
                            at: at_of(&v),
                            ping_id: text(&v, "ping_id"),
                            seller: text(&v, "seller"),
                            key,
                            won: v.get("winner").is_some_and(|w| !w.is_null()),
                            no_bid: v.get("no_bid").and_then(Value::as_str).map(String::from),
                            score: v
                                .get("score")
                                .and_then(Value::as_u64)
                                .and_then(|s| u8::try_from(s).ok()),
                            direct: v.get("direct").and_then(Value::as_bool) == Some(true),
                        });
                    }
                }
                "post_sent" => {
                    scan.sent.push(Sent {
                        at: at_of(&v),
                        lead_id: text(&v, "lead_id"),
                        auction_id: text(&v, "auction_id"),
                        ping_id: text(&v, "ping_id"),
                        seller: text(&v, "seller"),
                        buyer: text(&v, "buyer"),
                        attempt,
                        price_micros: v.get("price_micros").and_then(Value::as_i64).unwrap_or(0),
                        test: v.get("test").and_then(Value::as_bool).unwrap_or(false),
                        windows: windows_of(&v),
                        tz: v.get("tz").and_then(Value::as_str).map(String::from),
                        idempotency: idempotency_of(&v),
                        dedup: dedup_of(&v),
                    });
                }
                "post_attempt" => {
                    match v.get("outcome").and_then(Value::as_str) {
                        Some(LATE_ACCEPT) => {
                            scan.hearing.remove(&(text(&v, "lead_id"), attempt));
                            scan.late.insert((text(&v, "lead_id"), attempt));
                        }
                        Some(LATE_NO_ACCEPT) => {
                            scan.hearing.remove(&(text(&v, "lead_id"), attempt));
                        }
                        Some("timeout") => {
                            scan.hearing.insert((text(&v, "lead_id"), attempt));
                        }
                        _ => {}
                    }
                    scan.outcomes.insert((text(&v, "lead_id"), attempt));
                }
                "sale" => {
                    let lead_id = text(&v, "lead_id");
                    scan.sold.push((lead_id.clone(), sold_lead_of(&v)));
                    scan.outcomes.insert((lead_id.clone(), attempt));
                    scan.sales.push(Sale {
                        at: at_of(&v),
                        lead_id,
                        ping_id: text(&v, "ping_id"),
                        buyer: text(&v, "buyer"),
                        buyer_name: v
                            .get("buyer_name")
                            .and_then(Value::as_str)
                            .map(String::from),
                        attempt,
                        bid_micros: v.get("bid_micros").and_then(Value::as_i64).unwrap_or(0),
                        seller_price_micros: v
                            .get("seller_price_micros")
                            .and_then(Value::as_i64)
                            .unwrap_or(0),
                        currency: text(&v, "currency"),
                        test: v.get("test").and_then(Value::as_bool).unwrap_or(false),
                        windows: windows_of(&v),
                        tz: v.get("tz").and_then(Value::as_str).map(String::from),
                        dedup: dedup_of(&v),
                        seller: text(&v, "seller"),
                    });
                }
                "disposition" => {
                    scan.dispositions
                        .push((text(&v, "lead_id"), text(&v, "outcome")));
                    if let Some(key) = idempotency_of(&v) {
                        scan.keyed_dispositions.push(KeyedDisposition {
                            at: at_of(&v),
                            lead_id: text(&v, "lead_id"),
                            buyer: text(&v, "buyer"),
                            outcome: text(&v, "outcome"),
                            test,
                            key,
                        });
                    }
                }
                "refund" => {
                    let micros = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
                    scan.refund_lines.insert(
                        text(&v, "lead_id"),
                        (
                            text(&v, "currency"),
                            micros("buyer_refund_micros"),
                            micros("seller_clawback_micros"),
                        ),
                    );
                    scan.refunds.push(text(&v, "lead_id"));
                }
                "unsold" => {
                    scan.unsold.insert(
                        text(&v, "lead_id"),
                        (
                            text(&v, "reason"),
                            text(&v, "ping_id"),
                            v.get("attempts").and_then(Value::as_u64).unwrap_or(1),
                        ),
                    );
                }
                _ => {}
            }
        }
        // The ledger's last run is the one this start follows.
        scan.end_run_cut_short();
        scan.hold_sales_to_their_deliveries();
        scan
    }

    /// A sale says what its delivery's `post_sent` says: the exchange writes both from
    /// one reservation. Where a forged ledger (its chain rewritten) makes them differ, the
    /// start counts what counts more (black-box round 57a: a sale flipped to `test`, moved
    /// to yesterday's windows or to another buyer freed its buyer's budget): a real
    /// delivery stays real, the delivery's windows are the ones counted, and a sale
    /// charged to another buyer leaves the delivery's own buyer with the lead as outcome
    /// unknown. `ledger verify` names each such sale.
    fn hold_sales_to_their_deliveries(&mut self) {
        let by_delivery: HashMap<(&str, u64), &Sent> = self
            .sent
            .iter()
            .map(|s| ((s.lead_id.as_str(), s.attempt), s))
            .collect();
        let mut unsettled = Vec::new();
        for sale in &mut self.sales {
            let Some(sent) = by_delivery.get(&(sale.lead_id.as_str(), sale.attempt)) else {
                continue;
            };
            if sale.test && !sent.test {
                sale.test = false;
            }
            if sent.windows.is_some() && sale.windows != sent.windows {
                sale.windows = sent.windows;
                sale.tz = sent.tz.clone();
            }
            if sent.buyer != sale.buyer {
                unsettled.push((sale.lead_id.clone(), sale.attempt));
            }
        }
        for key in unsettled {
            self.outcomes.remove(&key);
        }
    }

    /// Timed-out deliveries whose buyer was still being heard out when the exchange
    /// died (see [`Scan::of_text`]): it may have accepted, so it may have the lead.
    pub fn cut_short(&self) -> impl Iterator<Item = &Sent> {
        self.sent
            .iter()
            .filter(|s| self.cut_short.contains(&(s.lead_id.clone(), s.attempt)))
    }

    /// Deliveries with a `post_sent` record and no outcome: the buyer may have the lead
    /// ("delivered, outcome unknown").
    pub fn unknown(&self) -> impl Iterator<Item = &Sent> {
        self.sent
            .iter()
            .filter(|s| !self.outcomes.contains(&(s.lead_id.clone(), s.attempt)))
    }

    /// Deliveries the buyer accepted after its post timeout.
    pub fn late_accepts(&self) -> impl Iterator<Item = &Sent> {
        self.sent
            .iter()
            .filter(|s| self.late.contains(&(s.lead_id.clone(), s.attempt)))
    }
}

/// What [`recover`] rebuilt, for the start log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub records: u64,
    /// Sales counted again in caps and budgets (current windows only; test leads are
    /// not; sales of buyers not configured now are, under their id's key).
    pub sales_counted: u64,
    /// Deliveries with no outcome (all of them, counted or not).
    pub unknown: u64,
    /// Of those, counted in caps.
    pub unknown_counted: u64,
    /// Late accepts counted in caps.
    pub late_counted: u64,
    /// Timed-out deliveries still being heard out when the exchange died, counted in
    /// caps (the buyer may have accepted late).
    pub late_unknown_counted: u64,
    /// Idempotency keys restored.
    pub keys: u64,
    /// Open quotes restored (firm again, their holds re-reserved).
    pub quotes: u64,
    /// Finished posts of quotes restored (a repeat gets the first answer again).
    pub finished_posts: u64,
    /// Open quotes that expired while the exchange was down: closed with a
    /// `quote_expired` record, and answered `expired` to a post as before the stop.
    pub expired_while_down: u64,
    /// Test leads' quotes past their `expires_at` (they hold nothing and no record ends
    /// them, so nothing tells whether they expired before the stop or while down):
    /// answered `expired` to a post, as before the stop. Not in `expired_while_down`
    /// (black-box round 67c: they were counted there, whenever they expired).
    pub test_quotes_expired: u64,
    /// Open quotes not expired that no longer fit the configuration, closed at this
    /// start ([`close_not_restored`]).
    pub quotes_not_restored: u64,
    /// Sold leads put back in the sold-lead index (the newest `server.sold_leads_max`).
    pub sold_leads: u64,
    /// Dispositions and refunds applied to them (a repeat stays refused).
    pub dispositions: u64,
}

/// The `sold` answer a sale's seller was given.
fn sold_answer(s: &Sale, buyer_names: &HashMap<&str, &str>) -> PostAnswer {
    PostAnswer {
        status: PostStatus::Sold,
        lead_id: Some(s.lead_id.clone()),
        ping_id: Some(s.ping_id.clone()),
        price: Some(Micros(s.seller_price_micros)),
        currency: Some(s.currency.clone()),
        // The name the answer gave, as recorded; an older record's from today's
        // configuration.
        buyer: s
            .buyer_name
            .clone()
            .or_else(|| buyer_names.get(s.buyer.as_str()).map(|n| n.to_string())),
        reason: None,
        changed_fields: Vec::new(),
    }
}

/// The answer a keyed ping got, as the seller API wrote it: a `bid` from its
/// `quote_opened`, or a `no_bid` from its auction. `None` for an auction with a winner and
/// no quote (the quote was refused: an error answer, whose key was not kept).
fn ping_answer_of(scan: &Scan, p: &KeyedPing) -> Option<PingAnswer> {
    if let Some(q) = scan.opened.get(&p.ping_id) {
        return Some(PingAnswer {
            ping_id: p.ping_id.clone(),
            status: PingStatus::Bid,
            price: Some(Micros(q.get("price_micros")?.as_i64()?)),
            currency: Some(text(q, "currency")),
            expires_at: Some(crate::clock::rfc3339(q.get("expires_at_ms")?.as_i64()?)),
            reason: None,
            score: p.score,
        });
    }
    if p.won {
        return None;
    }
    let reason = p
        .no_bid
        .as_deref()
        .and_then(|r| serde_json::from_value(Value::String(r.to_string())).ok())
        .unwrap_or(NoBidReason::NoBids);
    Some(PingAnswer {
        ping_id: p.ping_id.clone(),
        status: PingStatus::NoBid,
        price: None,
        currency: None,
        expires_at: None,
        reason: Some(reason),
        score: p.score,
    })
}

/// Lookups over a [`Scan`] by ping and lead id, built once: recovery answers each key
/// and finished post from them, so a start stays linear in the ledger (a search of the
/// scan per key was quadratic: 100,000 keys over 1,000,000 deliveries).
struct Lookup<'s> {
    /// Ping ids with a delivery (`post_sent`).
    sent_pings: HashSet<&'s str>,
    /// Deliveries with no outcome, by ping id.
    unknown_by_ping: HashMap<&'s str, &'s Sent>,
    /// `unsold` records by ping id: (lead id, reason, deliveries).
    unsold_by_ping: HashMap<&'s str, (&'s str, &'s str, u64)>,
    /// The last sale of each lead.
    sale_by_lead: HashMap<&'s str, &'s Sale>,
    /// The last sale of each ping.
    sale_by_ping: HashMap<&'s str, &'s Sale>,
}

impl<'s> Lookup<'s> {
    fn of(scan: &'s Scan) -> Lookup<'s> {
        Lookup {
            sent_pings: scan.sent.iter().map(|s| s.ping_id.as_str()).collect(),
            unknown_by_ping: scan.unknown().map(|s| (s.ping_id.as_str(), s)).collect(),
            unsold_by_ping: scan
                .unsold
                .iter()
                .map(|(lead, (reason, ping, sent))| {
                    (ping.as_str(), (lead.as_str(), reason.as_str(), *sent))
                })
                .collect(),
            sale_by_lead: scan.sales.iter().map(|s| (s.lead_id.as_str(), s)).collect(),
            sale_by_ping: scan.sales.iter().map(|s| (s.ping_id.as_str(), s)).collect(),
        }
    }
}

/// The answer a keyed direct post got when no lead of it went out to a buyer: `unsold`
/// with its no-bid reason, or, with a winner, its `unsold` record's (every candidate
/// expired or capped). `None` when a lead went out (its `post_sent` names the key and
/// [`answer_of`] rebuilds it) or the post ended in an error (whose key was not kept).
fn direct_answer_of(look: &Lookup<'_>, p: &KeyedPing) -> Option<PostAnswer> {
    if !p.won {
        let no_bid = p.no_bid.as_deref().unwrap_or(NoBidReason::NoBids.as_str());
        let mut a = if no_bid == NoBidReason::Duplicate.as_str() {
            crate::server::direct_no_bid_answer(NoBidReason::Duplicate)
        } else if no_bid == NoBidReason::Suppressed.as_str() {
            crate::server::direct_no_bid_answer(NoBidReason::Suppressed)
        } else {
            PostAnswer::status_only(PostStatus::Unsold, Some(no_bid))
        };
        a.ping_id = Some(p.ping_id.clone());
        return Some(a);
    }
    if look.sent_pings.contains(p.ping_id.as_str()) {
        return None;
    }
    look.unsold_by_ping
        .get(p.ping_id.as_str())
        .map(|(lead, reason, sent)| unsold_answer(lead, reason, &p.ping_id, *sent))
}

/// The `unsold` answer of a post that did not sell, as it was given: its lead id only if
/// the lead went out to a buyer (`deliveries`, the record's `attempts`).
fn unsold_answer(lead_id: &str, reason: &str, ping_id: &str, deliveries: u64) -> PostAnswer {
    let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(reason));
    if deliveries > 0 {
        a.lead_id = Some(lead_id.to_string());
    }
    a.ping_id = Some(ping_id.to_string());
    a
}

/// The reason a restored finished post carries when its delivery was cut off by the
/// stop: never sent to a seller as such; a repeat of that post is answered
/// [`outcome_unknown`] instead.
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// The answer to a post (keyed retry or repeat) whose delivery the exchange's stop cut
/// off: `500`, and nothing is delivered again.
pub fn outcome_unknown() -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        "the exchange stopped while this post was being delivered; its outcome is unknown \
         and it is not delivered again",
    )
}

/// The stored answer of a post whose key the ledger names.
fn answer_of(
    scan: &Scan,
    look: &Lookup<'_>,
    lead_id: &str,
    buyer_names: &HashMap<&str, &str>,
) -> (u16, Bytes) {
    if let Some(s) = look.sale_by_lead.get(lead_id) {
        let a = sold_answer(s, buyer_names);
        return (200, Bytes::from(serde_json::to_vec(&a).unwrap_or_default()));
    }
    if let Some((reason, ping_id, sent)) = scan.unsold.get(lead_id) {
        let a = unsold_answer(lead_id, reason, ping_id, *sent);
        return (200, Bytes::from(serde_json::to_vec(&a).unwrap_or_default()));
    }
    let e = outcome_unknown();
    (e.status(), Bytes::from(e.to_json()))
}

/// Does a lead sold in `w` count in any window current at `now` (hour and day windows
/// lie inside their week)?
fn counts_now(w: &Windows, now: &Windows) -> bool {
    w.month >= now.month || w.week >= now.week
}

/// [`counts_now`] for windows of an unknown zone against `now`'s in UTC: zones are at most
/// a day from UTC, so a lead of the previous week or month may still lie in the current
/// one of the buyer's zone (kept; the cap book drops what is past once it knows the zone).
fn may_count_now(w: &Windows, now_utc: &Windows) -> bool {
    w.month.saturating_add(1) >= now_utc.month || w.week.saturating_add(7) >= now_utc.week
}

/// The windows a lead of a configured buyer counts in: the ones it was written with, if
/// they are the windows of their own hour in the buyer's zone now; written in a zone the
/// buyer had before, the current windows of the zone now that its old windows may still
/// be running in, and otherwise the windows of its time `at` ([`Windows::carried`]), so a
/// zone changed across a restart never sells past a cap in either zone's windows; a
/// record written before format 4 (no windows), the windows of `at` in the zone now.
/// With the windows, the latest ends of the old zone's windows when they were of another
/// zone ([`Windows::ends_in_any_zone`]): until then the lead counts in them, and holds
/// must fit their caps too ([`CapBook::restore_former_zone`]).
fn windows_in(
    tz: chrono_tz::Tz,
    windows: Option<Windows>,
    written_in: Option<&str>,
    at: UnixMs,
    now: UnixMs,
) -> Option<(Windows, Option<[i64; crate::core::caps::PERIODS]>)> {
    // The record names its zone (`tz`): another zone is another zone, even where the
    // window numbers read the same in both (black-box round 60a).
    let same_zone = written_in.is_none_or(|z| z == tz.name());
    match windows {
        Some(w) if same_zone && Windows::at(tz, w.hour_start_ms) == Some(w) => Some((w, None)),
        Some(old) => {
            // In the zone the record names, the old windows end exactly (round 61b: taken
            // to end 13 hours after the UTC boundary, a Los Angeles day held its cap until
            // 13:00 UTC, 5 hours past its end); in an unknown zone, at the latest.
            let ends = match written_in.and_then(|z| z.parse::<chrono_tz::Tz>().ok()) {
                Some(old_tz) => old.ends_in(old_tz).filter(|e| e.iter().any(|&e| e > now)),
                None => old.ends_after(now),
            };
            Some((Windows::carried(tz, &old, at, now)?, ends))
        }
        None => Windows::at(tz, at).map(|w| (w, None)),
    }
}

/// The stable key of a buyer the ledger names but the configuration does not, interned
/// now (the cap book grown to cover it); `None` past the registry's bound (logged).
fn key_of_unconfigured(state: &AppState, buyer: &str) -> Option<crate::config::BuyerKey> {
    if buyer.is_empty() {
        return None;
    }
    let Some(key) = state.ids.intern_buyer(buyer) else {
        tracing::warn!(
            buyer = %crate::server::truncate(buyer, 64),
            "ledger: a buyer not configured now could not be keyed (too many buyer ids); its \
             leads are not counted"
        );
        return None;
    };
    state.caps.grow(state.ids.buyer_count());
    state.breakers.grow(state.ids.buyer_count());
    state.late_calls.grow(state.ids.buyer_count());
    state.late_posts.grow(state.ids.buyer_count());
    Some(key)
}

/// The stable key of seller `id`: its configured one, or, for a seller the configuration
/// does not have now, its id's (interned now), so its idempotency keys and finished posts
/// wait for a reload that brings it back (black-box round 23: they were dropped, and the
/// re-added seller's retries sold leads a second time). `None` for an empty id or past
/// the registry's bound.
fn seller_key_of(
    state: &AppState,
    configured: &HashMap<&str, crate::config::SellerKey>,
    id: &str,
) -> Option<crate::config::SellerKey> {
    if let Some(k) = configured.get(id) {
        return Some(*k);
    }
    if id.is_empty() {
        return None;
    }
    let key = state.ids.intern_seller(id);
    if key.is_none() {
        tracing::warn!(
            seller = %crate::server::truncate(id, 64),
            "ledger: a seller not configured now could not be keyed (too many seller ids); \
             its idempotency keys and finished posts are not restored"
        );
    }
    key
}

/// Replays `scan` into `state`'s cap book and idempotency store (see the module
/// documentation). Call it once, before serving.
pub fn apply(state: &AppState, scan: &Scan) -> Recovered {
    let rt = state.runtime.load();
    let cfg = &rt.config;
    let now = state.clock.now_ms();
    let buyers: HashMap<&str, &crate::config::Buyer> =
        cfg.buyers.iter().map(|b| (b.id.as_str(), b)).collect();
    let mut out = Recovered {
        records: scan.records,
        ..Recovered::default()
    };
    let count = |buyer: &str,
                 windows: Option<Windows>,
                 written_in: Option<&str>,
                 at: UnixMs,
                 price: i64|
     -> bool {
        let Some(b) = buyers.get(buyer) else {
            // Not configured now (removed before the restart, or left out of the file):
            // counted under its id's key all the same, so a reload that brings it back
            // cannot sell it past its caps.
            let Some(w) = windows.or_else(|| Windows::at(chrono_tz::Tz::UTC, at)) else {
                return false;
            };
            if let Some(cur) = Windows::at(chrono_tz::Tz::UTC, now) {
                if !may_count_now(&w, &cur) {
                    return false;
                }
            }
            // Its zone is not known: if a reload brings it back in another zone, the
            // windows it was sold in stay limits until they may end (black-box round 36:
            // back in UTC, its Kolkata hour took twice its cap).
            return key_of_unconfigured(state, buyer).is_some_and(|key| {
                if let Some(ends) = w.ends_after(now) {
                    state
                        .caps
                        .restore_former_zone(key, ends, Micros(price), now);
                }
                state.caps.restore_sold(key, None, &w, Micros(price))
            });
        };
        let Some((w, former_ends)) = windows_in(b.timezone, windows, written_in, at, now) else {
            return false;
        };
        if let Some(ends) = former_ends {
            state
                .caps
                .restore_former_zone(b.key, ends, Micros(price), now);
        }
        match Windows::at(b.timezone, now) {
            Some(cur) if !counts_now(&w, &cur) => false,
            _ => state
                .caps
                .restore_sold(b.key, Some(b.timezone), &w, Micros(price)),
        }
    };
    // A lead sold, or delivered with its outcome unknown, stays a duplicate for its
    // vertical's window (the book keeps only what is inside the longest one), as its
    // seller's sale (one the exchange does not know is nobody's).
    let seller_of = |id: &str| {
        state
            .ids
            .seller_key(id)
            .unwrap_or(crate::config::SellerKey(u32::MAX))
    };
    for s in scan.sales.iter().filter(|s| !s.test) {
        if count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.bid_micros) {
            out.sales_counted += 1;
        }
        state
            .dedup
            .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
    }
    for s in scan.unknown() {
        out.unknown += 1;
        if !s.test && count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.price_micros) {
            out.unknown_counted += 1;
        }
        if !s.test {
            state
                .dedup
                .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
        }
    }
    for s in scan.late_accepts().filter(|s| !s.test) {
        if count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.price_micros) {
            out.late_counted += 1;
        }
        state
            .dedup
            .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
    }
    for s in scan.cut_short().filter(|s| !s.test) {
        if count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.price_micros) {
            out.late_unknown_counted += 1;
        }
        state
            .dedup
            .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
    }
    state.metrics.dedup_gauges(&state.dedup);
    // The sold-lead index: every sale, then what its dispositions and refunds took.
    let keep = scan.sold.len().saturating_sub(cfg.server.sold_leads_max);
    for (lead_id, lead) in scan.sold.iter().skip(keep) {
        let mut lead = lead.clone();
        lead.buyer_key = state.ids.buyer_key(&lead.buyer);
        state.sold_leads.insert(lead_id, lead);
        out.sold_leads += 1;
    }
    for (lead_id, outcome) in &scan.dispositions {
        if state.sold_leads.mark_seen(lead_id, outcome) {
            out.dispositions += 1;
        }
    }
    for lead_id in &scan.refunds {
        state.sold_leads.mark_refunded(lead_id);
    }
    // Open quotes: firm again, with their holds (after the sales, which they add to).
    // Those closed here because their vertical is gone are answered as a later start
    // answers them ([`restore_finished`]).
    let mut vertical_gone: HashMap<&str, UnixMs> = HashMap::new();
    for (ping_id, v) in &scan.opened {
        if scan.closed_pings.contains(ping_id) {
            continue;
        }
        if restore_quote(state, cfg, v, now).is_some() {
            out.quotes += 1;
        } else if let Some(reason) = close_not_restored(state, cfg, ping_id, v, now) {
            out.quotes_not_restored += 1;
            if reason == release_reason::VERTICAL_REMOVED {
                vertical_gone.insert(ping_id.as_str(), now);
            }
        }
    }
    let names: HashMap<&str, &str> = cfg
        .buyers
        .iter()
        .map(|b| (b.id.as_str(), b.name.as_str()))
        .collect();
    let look = Lookup::of(scan);
    // Sellers by id; one the configuration does not have now is keyed by its id
    // ([`seller_key_of`]).
    let sellers: HashMap<&str, crate::config::SellerKey> =
        cfg.sellers.iter().map(|x| (x.id.as_str(), x.key)).collect();
    out.finished_posts =
        restore_finished(state, &sellers, scan, &look, &names, &vertical_gone, now);
    (out.expired_while_down, out.test_quotes_expired) =
        close_expired_while_down(state, &sellers, scan, now);
    // Idempotency keys: the last lead each key started.
    let mut last: HashMap<(&str, &str), &Sent> = HashMap::new();
    for s in &scan.sent {
        if let Some((k, _)) = &s.idempotency {
            last.insert((s.seller.as_str(), k.as_str()), s);
        }
    }
    // The keys of direct posts: their `auction` record says so (written before their
    // `post_sent`, by the one ordered writer), and a delivery's key is a direct post's or
    // a post's by it (black-box round 74a: both routes answered after a restart).
    let direct_keys: std::collections::HashSet<(&str, &str)> = scan
        .keyed_pings
        .iter()
        .filter(|p| p.direct)
        .map(|p| (p.seller.as_str(), p.key.0.as_str()))
        .collect();
    // Keyed pings: the answer they got, rebuilt from the auction and its quote. A retry
    // after a restart gets it again, and opens no second quote.
    let mut last_ping: HashMap<(&str, &str), &KeyedPing> = HashMap::new();
    for p in &scan.keyed_pings {
        last_ping.insert((p.seller.as_str(), p.key.0.as_str()), p);
    }
    for ((seller, _), p) in last_ping {
        let Some(seller) = seller_key_of(state, &sellers, seller) else {
            continue;
        };
        let json = if p.direct {
            direct_answer_of(&look, p).and_then(|a| serde_json::to_vec(&a).ok())
        } else {
            ping_answer_of(scan, p).and_then(|a| serde_json::to_vec(&a).ok())
        };
        let (Some(key), Some(body), Some(json)) = (digest(&p.key.0), digest(&p.key.1), json) else {
            continue;
        };
        let answer = (200, Bytes::from(json));
        // The key answers on its own route only (black-box round 73a: any route got
        // the stored answer after a restart).
        let route = if p.direct { "leads" } else { "ping" };
        if state
            .idempotency
            .restore(seller, route, key, body, p.at, now, answer)
        {
            out.keys += 1;
        }
    }
    for ((seller_id, key), s) in last {
        let route = if direct_keys.contains(&(seller_id, key)) {
            "leads"
        } else {
            "post"
        };
        let Some(seller) = seller_key_of(state, &sellers, seller_id) else {
            continue;
        };
        let body = s.idempotency.as_ref().map_or("", |(_, b)| b.as_str());
        let (Some(key), Some(body)) = (digest(key), digest(body)) else {
            continue;
        };
        let answer = answer_of(scan, &look, &s.lead_id, &names);
        if state
            .idempotency
            .restore(seller, route, key, body, s.at, now, answer)
        {
            out.keys += 1;
        }
    }
    out.keys += restore_disposition_keys(state, scan, &buyers, now);
    out
}

/// Buyers' keys on `POST /v1/dispositions`: the last disposition each key recorded, with
/// the `200` it was answered (only a `200` is ever recorded with its key). A buyer not
/// configured now has no key to retry with, and is skipped.
fn restore_disposition_keys(
    state: &AppState,
    scan: &Scan,
    buyers: &HashMap<&str, &crate::config::Buyer>,
    now: UnixMs,
) -> u64 {
    let mut last: HashMap<(&str, &str), &KeyedDisposition> = HashMap::new();
    for d in &scan.keyed_dispositions {
        last.insert((d.buyer.as_str(), d.key.0.as_str()), d);
    }
    let mut restored = 0;
    for ((buyer, _), d) in last {
        // A buyer not configured now keeps its keys under its id's stable key, as its
        // counts are kept: a reload that brings it back finds them (black-box round 22:
        // its retry got 409 instead of its stored refund).
        let Some(party) = buyers
            .get(buyer)
            .map(|b| b.key)
            .or_else(|| key_of_unconfigured(state, buyer))
        else {
            continue;
        };
        let (Some(key), Some(body)) = (digest(&d.key.0), digest(&d.key.1)) else {
            continue;
        };
        let refund = scan
            .refund_lines
            .get(&d.lead_id)
            .map(
                |(currency, refund, clawback)| crate::dispositions::RefundLine {
                    currency,
                    buyer_refund_micros: *refund,
                    seller_clawback_micros: *clawback,
                },
            );
        let answer = crate::dispositions::answer_json(&d.lead_id, &d.outcome, d.test, refund);
        if state.disposition_keys.restore(
            party,
            "dispositions",
            key,
            body,
            d.at,
            now,
            (200, Bytes::from(answer)),
        ) {
            restored += 1;
        }
    }
    restored
}

/// Puts the quotes that were posted (sold or unsold) or expired back in the book as
/// finished, oldest first, so a repeated `/v1/post` of their `ping_id` gets the first
/// answer again and delivers nothing (within the book's TTL and bound for finished
/// entries). A quote whose post's outcome is unknown, or that was released without a
/// recorded answer, is not restored (its repeat is `404` and delivers nothing). A quote
/// this start closed because its vertical is gone (`vertical_gone`) is answered `unsold`
/// `vertical_removed` now, as every later start answers it from its `quote_released`
/// (it was `404` at this start only: black-box round 33).
fn restore_finished(
    state: &AppState,
    sellers: &HashMap<&str, crate::config::SellerKey>,
    scan: &Scan,
    look: &Lookup<'_>,
    names: &HashMap<&str, &str>,
    vertical_gone: &HashMap<&str, UnixMs>,
    now: UnixMs,
) -> u64 {
    let sold = &look.sale_by_ping;
    let unsold = &look.unsold_by_ping;
    let mut done: Vec<(UnixMs, &str, crate::config::SellerKey, Option<PostAnswer>)> = Vec::new();
    for (ping_id, v) in &scan.opened {
        let gone = vertical_gone.get(ping_id.as_str());
        if !scan.closed_pings.contains(ping_id) && gone.is_none() {
            continue;
        }
        let Some(seller) = seller_key_of(state, sellers, text(v, "seller").as_str()) else {
            continue;
        };
        let (at, answer) = if let Some(s) = sold.get(ping_id.as_str()) {
            (s.at, Some(sold_answer(s, names)))
        } else if let Some((lead, reason, sent)) = unsold.get(ping_id.as_str()) {
            (at_of(v), Some(unsold_answer(lead, reason, ping_id, *sent)))
        } else if let Some(at) = scan.expired_pings.get(ping_id) {
            (*at, None)
        } else if let Some(at) = gone {
            let a = refuse_before_delivery(BeforeDelivery::VerticalRemoved, None).answer(ping_id);
            (*at, Some(a))
        } else if let Some((reason, at, changed)) = scan.refused_posts.get(ping_id) {
            // A post refused before delivery, answered by the core's refusal (a mismatch
            // with the `changed_fields` its record keeps; one written before they were
            // kept has none).
            let kind = if reason == release_reason::MISMATCH {
                BeforeDelivery::Mismatch
            } else if reason == release_reason::DUPLICATE {
                BeforeDelivery::Duplicate
            } else if reason == release_reason::SUPPRESSED {
                BeforeDelivery::Suppressed
            } else {
                BeforeDelivery::VerticalRemoved
            };
            let mut a = refuse_before_delivery(kind, None).answer(ping_id);
            a.changed_fields = changed.clone();
            (*at, Some(a))
        } else if let Some(s) = look.unknown_by_ping.get(ping_id.as_str()) {
            // Its delivery was cut off: a repeat gets what a keyed retry gets (the `500`
            // of [`answer_of`]), not `404 unknown ping_id` (black-box round 21).
            let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(OUTCOME_UNKNOWN));
            a.lead_id = Some(s.lead_id.clone());
            a.ping_id = Some(ping_id.clone());
            (s.at, Some(a))
        } else {
            continue;
        };
        done.push((at, ping_id, seller, answer));
    }
    done.sort_by_key(|d| d.0);
    let mut restored = 0;
    for (at, ping_id, seller, answer) in done {
        if state.quotes.restore_done(ping_id, seller, answer, at, now) {
            restored += 1;
        }
    }
    restored
}

/// Open quotes (a `quote_opened` with nothing that ended it) whose `expires_at` passed
/// while the exchange was down: the sweeper never saw them expire. Each one with a hold
/// gets the `quote_expired` record the sweeper would have written (with its `ping_id`, so
/// the next replay finds it ended), and each is put in the quote book as finished and
/// expired, so a post of it is answered `expired` as it would have been before the stop
/// (it was `404 unknown ping_id`). Their holds were never re-reserved. Returns how many
/// with a hold, and how many test leads' quotes (no hold, no record).
fn close_expired_while_down(
    state: &AppState,
    sellers: &HashMap<&str, crate::config::SellerKey>,
    scan: &Scan,
    now: UnixMs,
) -> (u64, u64) {
    use crate::core::record::LedgerSink as _;
    use crate::core::record::{Head, QuoteHoldRecord, Record};
    let mut ended: Vec<(UnixMs, &str, &Value)> = scan
        .opened
        .iter()
        .filter(|(ping_id, _)| !scan.closed_pings.contains(*ping_id))
        .filter_map(|(ping_id, v)| {
            let at = v.get("expires_at_ms")?.as_i64()?;
            (at <= now).then_some((at, ping_id.as_str(), v))
        })
        .collect();
    ended.sort_by_key(|e| e.0);
    let generation = state.generation();
    let (mut closed, mut test) = (0, 0);
    for (at, ping_id, v) in ended {
        let test_lead =
            v.get("hold").is_none() && v.get("test").and_then(Value::as_bool) == Some(true);
        if let Some(h) = v.get("hold") {
            let hold = (
                h.get("buyer").and_then(Value::as_str),
                h.get("price_micros").and_then(Value::as_i64),
            );
            if let (Some(buyer), Some(price_micros)) = hold {
                let record = Record::QuoteExpired(QuoteHoldRecord {
                    head: Head::new(generation, now),
                    ping_id: Some(ping_id),
                    buyer,
                    price_micros,
                    reason: None,
                    changed_fields: &[],
                    test: false,
                });
                // Not durable (as the sweeper's): lost in a crash, the next start writes
                // it again.
                if let crate::ledger::Receipt::Failed(e) = state.ledger.append(&record) {
                    tracing::warn!(error = %e, "ledger: a quote_expired for a quote that expired while the exchange was down was not written");
                }
            }
        }
        let Some(seller) = seller_key_of(state, sellers, text(v, "seller").as_str()) else {
            continue;
        };
        if state.quotes.restore_done(ping_id, seller, None, at, now) {
            if test_lead {
                test += 1;
            } else {
                closed += 1;
            }
        }
    }
    (closed, test)
}

/// An open quote, not expired, that [`restore_quote`] could not put back (its seller or
/// vertical is gone, or it no longer fits the configuration): its hold is not
/// re-reserved, so it is closed in the ledger with a `quote_released` (reason
/// `seller_removed`, `vertical_removed` or `not_restored`) and logged. Before, nothing
/// closed it, and a later start whose configuration had its seller and vertical again
/// brought it back with its hold, on a buyer whose cap others had filled meanwhile
/// (found beside black-box round 19's open quotes). `Some` when it was closed (not
/// expired: expired quotes are [`close_expired_while_down`]'s), with the reason.
fn close_not_restored(
    state: &AppState,
    cfg: &crate::config::Config,
    ping_id: &str,
    v: &Value,
    now: UnixMs,
) -> Option<&'static str> {
    use crate::core::record::LedgerSink as _;
    use crate::core::record::{Head, QuoteHoldRecord, Record};
    if v.get("expires_at_ms")
        .and_then(Value::as_i64)
        .is_none_or(|at| at <= now)
    {
        return None;
    }
    let reason = if !cfg.sellers.iter().any(|s| s.id == text(v, "seller")) {
        "seller_removed"
    } else if cfg.vertical(&text(v, "vertical")).is_none() {
        release_reason::VERTICAL_REMOVED
    } else {
        "not_restored"
    };
    // A quote without a hold (a test lead's) is closed too, with no buyer and no money:
    // without a record a later start brought it back open (black-box round 33: it sold).
    let hold = v
        .get("hold")
        .and_then(|h| Some((h.get("buyer")?.as_str()?, h.get("price_micros")?.as_i64()?)));
    {
        let (buyer, price_micros) = hold.unwrap_or(("", 0));
        let record = Record::QuoteReleased(QuoteHoldRecord {
            head: Head::new(state.generation(), now),
            ping_id: Some(ping_id),
            buyer,
            price_micros,
            reason: Some(reason),
            changed_fields: &[],
            // A test quote (it holds nothing) says so, as its post's refusal would.
            test: hold.is_none() && v.get("test").and_then(Value::as_bool) == Some(true),
        });
        // Not durable: lost in a crash, the next start writes it again.
        if let crate::ledger::Receipt::Failed(e) = state.ledger.append(&record) {
            tracing::warn!(error = %e, "ledger: a quote_released for an open quote not restored was not written");
        }
    }
    tracing::warn!(
        ping_id = %ping_id,
        reason,
        "ledger: an open quote was not restored (it no longer fits the configuration): closed with quote_released; its post answers unsold vertical_removed if its vertical is gone, 404 otherwise"
    );
    Some(reason)
}

/// Puts the quote of a `quote_opened` record back in the book, re-reserving its hold;
/// `None` (nothing changed) when it has expired or no longer fits the configuration.
fn restore_quote(
    state: &AppState,
    cfg: &crate::config::Config,
    v: &Value,
    now: UnixMs,
) -> Option<()> {
    use crate::core::award::{Bid, Ranked};
    use crate::core::quotes::Quote;
    let expires_at = v.get("expires_at_ms")?.as_i64()?;
    if expires_at <= now {
        return None;
    }
    let seller = cfg.sellers.iter().find(|s| s.id == text(v, "seller"))?;
    let vertical_name = text(v, "vertical");
    let (vertical, vert) = cfg.vertical(&vertical_name)?;
    let mut bytes = serde_json::to_vec(v.get("lead")?).ok()?;
    let value = proto::json::parse_value(&mut bytes).ok()?;
    let lead = vert
        .schema
        .validate(&value, proto::LeadMode::Ping, "lead")
        .ok()?;
    let mut ranked = Vec::new();
    for line in v.get("ranked")?.as_array()? {
        // A bidder no longer configured keeps its place under its id's key, as a reload
        // leaves it: the post finds it removed (`buyer_removed`) and falls back, and a
        // bidder that is not the winner changes nothing. One that cannot be keyed (past
        // the registry's bound) is left out; the quote stays.
        let Some(buyer) = line
            .get("buyer")
            .and_then(Value::as_str)
            .and_then(|id| key_of(state, id))
        else {
            continue;
        };
        ranked.push(Ranked {
            bid: Bid {
                buyer,
                price: Micros(line.get("price_micros")?.as_i64()?),
                bid_id: line.get("bid_id").and_then(Value::as_str).map(String::from),
                expires_in_ms: line.get("expires_in_ms").and_then(Value::as_u64),
                fixed: line.get("fixed").and_then(Value::as_bool).unwrap_or(false),
            },
            seller_price: Micros(line.get("seller_price_micros")?.as_i64()?),
            value: line.get("value").and_then(Value::as_i64).unwrap_or(0),
            p_ppm: line
                .get("p_ppm")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            p_model_ppm: None,
        });
    }
    if ranked.is_empty() {
        return None;
    }
    let reservation = match v.get("hold") {
        None => None,
        Some(h) => {
            let buyer = h.get("buyer")?.as_str()?;
            let key = key_of(state, buyer)?;
            let mut w = windows_of(h)?;
            let price = Micros(h.get("price_micros")?.as_i64()?);
            let until = expires_at.saturating_add(crate::core::auction::DELIVERY_SLACK_MS);
            let zone = cfg
                .buyers
                .iter()
                .find(|b| b.id == buyer)
                .map(|b| b.timezone);
            // Held in windows of a zone the buyer no longer has (its `timezone` changed
            // across the restart): the old windows stay limits until they may end, and
            // the hold is made again in the zone now's windows, from now to the quote's
            // end, where its lead will be delivered (black-box round 36: held only in the
            // old hour, it let the new zone's hour take a second lead past `hourly = 1`).
            let mut former_ends = None;
            if let Some(tz) = zone.filter(|tz| Windows::at(*tz, w.hour_start_ms) != Some(w)) {
                former_ends = w.ends_after(now);
                w = Windows::at(tz, now)?;
            }
            // Held in the windows of the quote's end too, when it runs into the next
            // hour (as `CapBook::reserve_until` held it): its buyer's zone now.
            let later = zone
                .and_then(|tz| Windows::later_until(tz, &w, until))
                .unwrap_or_default();
            let r = state
                .caps
                .restore_reservation(key, zone, &w, &later, price)?;
            // After the hold, so the old windows count it once.
            if let Some(ends) = former_ends {
                state.caps.restore_former_zone(key, ends, price, now);
            }
            Some(r)
        }
    };
    let quote = Quote {
        ping_id: text(v, "ping_id"),
        auction_id: text(v, "auction_id"),
        seller: seller.key,
        vertical,
        vertical_name,
        lead,
        test: v.get("test").and_then(Value::as_bool).unwrap_or(false),
        price: Micros(v.get("price_micros")?.as_i64()?),
        currency: text(v, "currency"),
        expires_at,
        auctioned_at: v
            .get("auctioned_at_ms")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        ranked,
        reservation: reservation.clone(),
        score: v
            .get("score")
            .and_then(Value::as_u64)
            .and_then(|s| u8::try_from(s).ok()),
        dedup: dedup_of(v),
        // Its bids carry no estimate (`p_model_ppm` is not recorded): the guard, which
        // starts empty at every start, counts nothing of it whatever the epoch.
        guard_epoch: 0,
    };
    // Whatever the open-quote limits are now: a firm quote stays firm (`restore`).
    if state.quotes.restore(quote).is_err() {
        if let Some(r) = reservation {
            state.caps.release(&r);
        }
        return None;
    }
    Some(())
}

/// The stable key of buyer `id`: the one it has (configured, or keyed already), or one
/// interned now for a buyer the configuration no longer has.
fn key_of(state: &AppState, id: &str) -> Option<crate::config::BuyerKey> {
    state
        .ids
        .buyer_key(id)
        .or_else(|| key_of_unconfigured(state, id))
}

fn digest(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// Reads the ledger in `state`'s directory and replays it ([`apply`]), logging what was
/// rebuilt and every delivery whose outcome is unknown.
/// Whether the fingerprint key may serve this ledger (black-box rounds 62c and 63a):
/// another valid key (restored from the wrong backup, made by hand), or a missing one
/// beside a ledger whose runs recorded theirs, would leave every consumer sold within the
/// dedup window unknown to de-duplication, and sold again. Refused unless the start says
/// `--new-fingerprint-key`. A key an earlier run used (not the last one: say, the old key
/// put back after a start made a new one) is taken, with a warning naming what it does
/// not know. A ledger whose starts recorded no key id (from before key ids) is taken as
/// it is.
fn check_fingerprint_key(state: &AppState, scan: &Scan) -> std::io::Result<()> {
    let Some(last) = &scan.key_id else {
        // A ledger from before key ids: a missing key is made anew, and said once.
        if state.fingerprint.made() && scan.records > 0 {
            tracing::warn!(
                key = %state.ledger.dir().join(crate::fingerprint::KEY_FILE).display(),
                "lead fingerprint key missing beside a ledger that has records (from before key ids): a new key was made, so de-duplication does not know the consumers sold before and lead fingerprints from now on cannot be compared with the earlier ones; restore the old key from a backup (and restart) at once, before anything is sold under the new one"
            );
        }
        return Ok(());
    };
    let new_allowed = state.runtime.load().config.server.new_fingerprint_key;
    let fp = &state.fingerprint;
    let dir = state.ledger.dir().display();
    let key = crate::fingerprint::KEY_FILE;
    if fp.made() {
        if new_allowed {
            tracing::warn!(
                last_key_id = %last,
                new_key_id = %fp.key_id(),
                "{key} was missing and a new key is begun (--new-fingerprint-key): de-duplication does not know the consumers sold before, and lead fingerprints do not compare with earlier ones; keep this key from now on (putting the old one back later would forget, in turn, the consumers sold under this one)"
            );
            return Ok(());
        }
        return Err(std::io::Error::other(format!(
            "{key} is missing in {dir}, beside a ledger whose runs used one (the last start recorded id {last}): de-duplication would not know the consumers sold before, and lead fingerprints would not compare; restore the key from a backup, or, to begin a new key on purpose, start once with --new-fingerprint-key"
        )));
    }
    let now = fp.key_id();
    if now == *last {
        return Ok(());
    }
    if scan.key_ids.contains(&now) {
        let others: Vec<&str> = scan
            .key_ids
            .iter()
            .filter(|id| **id != now)
            .map(String::as_str)
            .collect();
        tracing::warn!(
            key_id = %now,
            last_key_id = %last,
            other_key_ids = %others.join(","),
            "{key} is the key of an earlier run, not the last one's: the consumers sold in runs under the other keys are not known to de-duplication, and can be sold again within their window"
        );
        return Ok(());
    }
    if new_allowed {
        tracing::warn!(
            key_id = %now,
            last_key_id = %last,
            "{key} is not a key this ledger's runs used, and is taken (--new-fingerprint-key): de-duplication does not know the consumers sold before"
        );
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{key} in {dir} is not a key this ledger's runs used (its id is {now}; the last start recorded {last}): de-duplication would not know the consumers sold before, and lead fingerprints would not compare; restore the key from a backup, or, to begin with this key on purpose, start once with --new-fingerprint-key"
    )))
}

pub fn recover(state: &AppState) -> std::io::Result<Recovered> {
    let text = crate::ledger::segments::read_all(state.ledger.dir())?;
    let scan = Scan::of_text(&text);
    drop(text);
    check_fingerprint_key(state, &scan)?;
    for (line, why) in scan.unreadable.iter().take(10) {
        tracing::warn!(
            line,
            why = %why,
            dir = %state.ledger.dir().display(),
            "ledger: a line that is not a readable record was skipped at start (line number counted across the segments in order; `pingpost ledger verify` names its segment and refuses the ledger's money)"
        );
    }
    if scan.unreadable.len() > 10 {
        tracing::warn!(
            more = scan.unreadable.len() - 10,
            "ledger: more lines that are not readable records were skipped at start"
        );
    }
    if scan.newer > 0 {
        tracing::warn!(
            records = scan.newer,
            reads_up_to = crate::core::record::RECORD_VERSION,
            dir = %state.ledger.dir().display(),
            "ledger: records of a format version newer than this pingpost writes were read as their type says (a newer pingpost wrote them: run that one)"
        );
    }
    let r = apply(state, &scan);
    // The cold-start rates: what each buyer did, replayed in order.
    let configured: HashSet<crate::config::BuyerKey> = state
        .runtime
        .load()
        .config
        .buyers
        .iter()
        .map(|b| b.key)
        .collect();
    for (buyer, event) in &scan.buyer_events {
        // Buyers configured now only (one keyed for its counts alone learns nothing).
        let Some(key) = state
            .ids
            .buyer_key(buyer)
            .filter(|k| configured.contains(k))
        else {
            continue;
        };
        match event {
            BuyerEvent::Accepted(at) => state.stats.on_post(key, true, None, *at, 0),
            BuyerEvent::Rejected(at) => state.stats.on_post(key, false, None, *at, 0),
            BuyerEvent::Returned => state.stats.on_return(key, None),
        }
    }
    for s in scan.unknown().take(UNKNOWN_LOGGED_MAX) {
        tracing::warn!(
            lead_id = %s.lead_id,
            auction_id = %s.auction_id,
            buyer = %s.buyer,
            attempt = s.attempt,
            price_micros = s.price_micros,
            "ledger: delivered, outcome unknown (counted against the buyer's caps)"
        );
    }
    tracing::info!(
        records = r.records,
        sales_counted = r.sales_counted,
        unknown_outcomes = r.unknown,
        unknown_counted = r.unknown_counted,
        late_accepts_counted = r.late_counted,
        late_unknown_counted = r.late_unknown_counted,
        idempotency_keys = r.keys,
        open_quotes = r.quotes,
        finished_posts = r.finished_posts,
        quotes_expired_while_down = r.expired_while_down,
        test_quotes_expired = r.test_quotes_expired,
        quotes_not_restored = r.quotes_not_restored,
        sold_leads = r.sold_leads,
        dispositions = r.dispositions,
        "ledger replayed: caps, budgets, open quotes, idempotency keys and sold leads rebuilt"
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    /// Black-box round 44: a whole line that is not a readable record was skipped at start
    /// without a word. The scan keeps each one's line number and why, for the log.
    #[test]
    fn lines_that_are_not_records_are_counted_with_why() {
        let text = "{\"type\":\"flush\",\"v\":5}\n[1,2]\n{\"type\":\"sale\",\"bid_micros\":1e400}\n{\"type\":\"flush\",\"v\":5}\n";
        let scan = super::Scan::of_text(text);
        assert_eq!(scan.records, 2);
        assert_eq!(scan.unreadable.len(), 2, "{:?}", scan.unreadable);
        assert_eq!(scan.unreadable[0], (2, "not a JSON object".to_string()));
        assert_eq!(scan.unreadable[1].0, 3);
        assert!(
            scan.unreadable[1].1.contains("number out of range"),
            "{:?}",
            scan.unreadable
        );
        // Round 57a: a version that is not a whole number is no record (the finance
        // tools refuse it too); a newer one is read, and counted for the warning.
        let text = "{\"type\":\"flush\",\"v\":\"5\"}\n{\"type\":\"flush\",\"v\":6}\n{\"type\":\"flush\",\"v\":5}\n";
        let scan = super::Scan::of_text(text);
        assert_eq!(scan.records, 2);
        assert_eq!(
            scan.unreadable,
            [(
                1,
                "its format version `v` is not a whole number".to_string()
            )]
        );
        assert_eq!(scan.newer, 1);
    }

    use super::*;

    /// Black-box round 55a: a sale whose `bid_micros` was removed (the chain recomputed)
    /// was replayed at start as a sale of 0, so its buyer's budget had room it had spent.
    /// A record with a money field missing or malformed is skipped as an unreadable line
    /// (named in the start's warning), and its delivery counts as outcome unknown at its
    /// `post_sent`'s price.
    #[test]
    fn a_record_whose_money_is_missing_or_malformed_is_skipped_and_its_delivery_unknown() {
        let w = r#""windows":{"hour_start_ms":0,"day":1,"week":1,"month":2}"#;
        let sent = format!(
            r#"{{"type":"post_sent","lead_id":"l1","attempt":0,"buyer":"a","price_micros":5,"test":false,{w}}}"#
        );
        for sale in [
            r#"{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","seller_price_micros":3,"margin_micros":2}"#,
            r#"{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","bid_micros":1e22,"seller_price_micros":3,"margin_micros":2}"#,
        ] {
            let scan = Scan::of_text(&format!("{sent}\n{sale}\n"));
            assert_eq!(scan.records, 1, "{sale}");
            assert!(scan.sales.is_empty(), "{sale}");
            assert_eq!(scan.unreadable.len(), 1, "{sale}");
            assert_eq!(scan.unreadable[0].0, 2);
            assert!(
                scan.unreadable[0]
                    .1
                    .starts_with("sale record: bid_micros is "),
                "{:?}",
                scan.unreadable
            );
            let unknown: Vec<_> = scan
                .unknown()
                .map(|s| (s.lead_id.as_str(), s.price_micros))
                .collect();
            assert_eq!(unknown, [("l1", 5)], "{sale}");
        }
        // Whole, it is a sale.
        let sale = r#"{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","bid_micros":5,"seller_price_micros":3,"margin_micros":2}"#;
        let scan = Scan::of_text(&format!("{sent}\n{sale}\n"));
        assert_eq!(
            (scan.records, scan.sales.len(), scan.unknown().count()),
            (2, 1, 0)
        );
    }

    /// Black-box round 57a: a sale flipped to `test`, moved to yesterday's windows,
    /// charged to another buyer, or with a buyer that is not a string (each with the
    /// chain rewritten) freed its buyer's budget at the next start. The start holds a
    /// sale to its delivery's `post_sent`.
    #[test]
    fn a_sale_that_differs_from_its_delivery_is_counted_as_the_delivery_says() {
        let w =
            |day: u32| format!(r#""windows":{{"hour_start_ms":0,"day":{day},"week":1,"month":2}}"#);
        let sent = format!(
            r#"{{"type":"post_sent","lead_id":"l1","attempt":0,"buyer":"a","price_micros":5,"test":false,{}}}"#,
            w(9)
        );
        let sale = |extra: &str| {
            format!(
                r#"{{"type":"sale","lead_id":"l1","attempt":0,"bid_micros":5,"seller_price_micros":4,"margin_micros":1,{extra}}}"#
            )
        };
        // As written: one real sale of `a`'s, in the delivery's windows, settled.
        let honest = Scan::of_text(&format!(
            "{sent}\n{}\n",
            sale(&format!(r#""buyer":"a","test":false,{}"#, w(9)))
        ));
        assert_eq!(honest.unknown().count(), 0);
        assert!(!honest.sales[0].test);
        // Flipped to a test lead: still counted as the real delivery it was.
        let flipped = Scan::of_text(&format!(
            "{sent}\n{}\n",
            sale(&format!(r#""buyer":"a","test":true,{}"#, w(9)))
        ));
        assert!(!flipped.sales[0].test);
        // Moved to yesterday: counted in the delivery's windows.
        let moved = Scan::of_text(&format!(
            "{sent}\n{}\n",
            sale(&format!(r#""buyer":"a","test":false,{}"#, w(8)))
        ));
        assert_eq!(moved.sales[0].windows, honest.sales[0].windows);
        // Charged to `b`: counted for `b`, and `a`'s delivery stays outcome unknown.
        let other = Scan::of_text(&format!(
            "{sent}\n{}\n",
            sale(&format!(r#""buyer":"b","test":false,{}"#, w(9)))
        ));
        assert_eq!(other.sales[0].buyer, "b");
        let unknown: Vec<_> = other.unknown().map(|s| s.buyer.as_str()).collect();
        assert_eq!(unknown, ["a"]);
        // A buyer that is not a string: the sale is unreadable, the delivery unknown.
        let numeric = Scan::of_text(&format!(
            "{sent}\n{}\n",
            sale(&format!(r#""buyer":7,"test":false,{}"#, w(9)))
        ));
        assert!(numeric.sales.is_empty());
        assert_eq!(numeric.unreadable.len(), 1);
        assert!(
            numeric.unreadable[0].1.contains("buyer is not a string"),
            "{:?}",
            numeric.unreadable
        );
        assert_eq!(numeric.unknown().count(), 1);
    }

    #[test]
    fn deliveries_without_an_outcome_and_late_accepts_are_found() {
        let w = r#""windows":{"hour_start_ms":0,"day":1,"week":1,"month":2}"#;
        let text = [
            format!(r#"{{"type":"post_sent","at":"2026-11-29T12:00:00.000Z","lead_id":"l1","attempt":0,"buyer":"a","price_micros":5,"test":false,{w},"seq":1}}"#),
            r#"{"type":"post_attempt","lead_id":"l1","attempt":0,"outcome":"timeout"}"#.to_string(),
            format!(r#"{{"type":"post_sent","lead_id":"l1","attempt":1,"buyer":"b","price_micros":4,"test":false,{w}}}"#),
            r#"{"type":"sale","lead_id":"l1","attempt":1,"buyer":"b","bid_micros":4,"seller_price_micros":3,"margin_micros":1}"#.to_string(),
            r#"{"type":"post_attempt","lead_id":"l1","attempt":0,"outcome":"late_accept"}"#.to_string(),
            format!(r#"{{"type":"post_sent","lead_id":"l2","attempt":0,"buyer":"a","price_micros":5,"test":false,{w}}}"#),
            "not a record".to_string(),
        ]
        .join("\n");
        let scan = Scan::of_text(&text);
        assert_eq!(scan.records, 6);
        let unknown: Vec<_> = scan.unknown().map(|s| s.lead_id.as_str()).collect();
        assert_eq!(unknown, ["l2"]);
        let late: Vec<_> = scan
            .late_accepts()
            .map(|s| (s.lead_id.as_str(), s.attempt))
            .collect();
        assert_eq!(late, [("l1", 0)]);
        assert_eq!(scan.sent[0].at, 1_795_953_600_000);
        assert_eq!(scan.sent[0].windows.map(|w| w.month), Some(2));
        assert_eq!(scan.sales.len(), 1);
    }

    #[test]
    fn only_the_buyer_s_own_unaccepted_posts_teach_the_rates_at_a_restart() {
        let attempt = |lead: &str, outcome: &str, reason: &str| {
            at(
                "post_attempt",
                1,
                &format!(
                    r#","lead_id":"{lead}","attempt":0,"buyer":"a","outcome":"{outcome}","reason":"{reason}""#
                ),
            )
        };
        let text = [
            // The post deadline cut this timeout short: the exchange's doing.
            attempt("l1", "timeout", "post_deadline"),
            // A buyer cannot hide a rejection behind the same word.
            attempt("l2", "rejected", "post_deadline"),
            attempt("l3", "timeout", ""),
        ]
        .join("\n");
        let scan = Scan::of_text(&text);
        let events: Vec<_> = scan
            .buyer_events
            .iter()
            .map(|(b, e)| (b.as_str(), *e))
            .collect();
        let t = at_of(&serde_json::from_str(&attempt("x", "timeout", "")).unwrap());
        assert_eq!(
            events,
            [
                ("a", BuyerEvent::Rejected(t)),
                ("a", BuyerEvent::Rejected(t))
            ]
        );
    }

    /// A ledger line of `kind` at `s` seconds past 12:00, with `extra` fields.
    fn at(kind: &str, s: u32, extra: &str) -> String {
        format!(
            r#"{{"type":"{kind}","at":"2026-11-29T12:{:02}:{:02}.000Z"{extra}}}"#,
            s / 60,
            s % 60
        )
    }

    fn timed_out(lead: &str, s: u32) -> [String; 2] {
        [
            at(
                "post_sent",
                s,
                &format!(r#","lead_id":"{lead}","attempt":0,"buyer":"a","price_micros":5"#),
            ),
            at(
                "post_attempt",
                s,
                &format!(r#","lead_id":"{lead}","attempt":0,"outcome":"timeout""#),
            ),
        ]
    }

    fn cut_short(lines: &[String]) -> Vec<String> {
        let scan = Scan::of_text(&lines.join("\n"));
        scan.cut_short().map(|s| s.lead_id.clone()).collect()
    }

    /// A buyer that timed out is heard out for `LATE_POST_WAIT_MS` (10 s) and may accept
    /// late; its answer, accept or not, is recorded (`late_accept`, `late_no_accept`).
    /// When its run ended in a crash before that record, the buyer may have the lead.
    /// Before round 10 the rule looked at the time of the run's last record instead: a
    /// late refusal before the crash still counted, and so did a timeout long before a
    /// crash on a quiet exchange.
    #[test]
    fn a_timed_out_delivery_still_heard_out_when_its_run_crashed_may_have_been_accepted() {
        let start = at("flush", 0, r#","start":true"#);
        let shutdown = at("flush", 30, "");
        let [sent1, timeout1] = timed_out("l1", 1);
        let [sent2, timeout2] = timed_out("l2", 40);
        let later = |s| at("auction", s, "");
        let answer = |outcome: &str| {
            at(
                "post_attempt",
                2,
                &format!(r#","lead_id":"l1","attempt":0,"outcome":"{outcome}""#),
            )
        };
        let cases: [(&str, Vec<String>, &[&str]); 9] = [
            (
                "the ledger ends while the buyer is heard out",
                vec![start.clone(), sent1.clone(), timeout1.clone(), later(2)],
                &["l1"],
            ),
            (
                "a quiet exchange: the crash came long after, the answer never recorded",
                vec![start.clone(), sent1.clone(), timeout1.clone(), later(100)],
                &["l1"],
            ),
            (
                "a late refusal recorded before the crash",
                vec![
                    start.clone(),
                    sent1.clone(),
                    timeout1.clone(),
                    answer("late_no_accept"),
                ],
                &[],
            ),
            (
                "the late accept is in the ledger (counted as one)",
                vec![
                    start.clone(),
                    sent1.clone(),
                    timeout1.clone(),
                    answer("late_accept"),
                ],
                &[],
            ),
            (
                "a shutdown heard every late answer out",
                vec![
                    start.clone(),
                    sent1.clone(),
                    timeout1.clone(),
                    shutdown.clone(),
                ],
                &[],
            ),
            (
                "a crash, then a later run: the next start ends the run",
                vec![
                    start.clone(),
                    sent1.clone(),
                    timeout1.clone(),
                    later(3),
                    at("flush", 100, r#","start":true"#),
                    later(200),
                ],
                &["l1"],
            ),
            (
                "every run of the ledger is judged on its own",
                vec![
                    start.clone(),
                    sent1.clone(),
                    timeout1.clone(),
                    shutdown.clone(),
                    start.clone(),
                    sent2.clone(),
                    timeout2.clone(),
                    at("flush", 45, r#","start":true"#),
                ],
                &["l2"],
            ),
            (
                "an answer of another attempt settles nothing",
                vec![
                    start.clone(),
                    sent1.clone(),
                    timeout1.clone(),
                    at(
                        "post_attempt",
                        2,
                        r#","lead_id":"l1","attempt":1,"outcome":"late_no_accept""#,
                    ),
                ],
                &["l1"],
            ),
            (
                "a ledger written before start marks: its one run ends at its end",
                vec![
                    sent1.clone(),
                    timeout1.clone(),
                    answer("late_no_accept"),
                    sent2,
                    timeout2,
                ],
                &["l2"],
            ),
        ];
        for (name, lines, want) in cases {
            assert_eq!(cut_short(&lines), want, "{name}");
        }
    }
}
