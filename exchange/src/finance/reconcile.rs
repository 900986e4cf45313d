//! The reconciliation half of `pingpost ledger verify`: the money and the outcomes.
//!
//! - Per currency, revenue minus refunds (from the report's figures, grouped by buyer)
//!   equals the sum of the non-test sales' `bid_micros`; payouts and margin likewise;
//!   and revenue = payouts + margin.
//! - Every record's money fields are integers that fit `i64` (a `*_micros` field that is
//!   a float, a string or out of range is a `PROBLEM` naming the record and the field,
//!   and the record is left out of every figure, as an unreadable line is).
//! - Every sale: `margin_micros = bid_micros - seller_price_micros`, never negative; at
//!   most one sale per `lead_id` and per `ping_id`; its auction record is there and
//!   quoted the same seller price; it charges the bid its delivery was sent at
//!   (`post_sent`'s, to the same buyer; from format 4 on a sale needs one), which is the
//!   buyer's bid in the auction (a `bid` or `fixed_price` line), and attempt 0 is the
//!   auction's winner's, at the winning bid; no `post_attempt` says the sold attempt
//!   failed; it is in the currency its auction ran in and its quote
//!   (`quote_opened`) was made in; with a configuration, the seller price is the seller's
//!   payout model applied to the winning bid (`pingpost_core::award`'s rule: the model's
//!   price, capped at the bid). A fallback's sale (`attempt > 0`) pays the seller the price
//!   quoted for the winner's bid.
//! - Every refund (`refund` record): its lead has a non-test sale to the same buyer and
//!   seller, a `returned` disposition, amounts equal to the sale's (`buyer_refund_micros`
//!   = `bid_micros`, `seller_clawback_micros` = `seller_price_micros`,
//!   `margin_reversed_micros` = `margin_micros`), comes after the sale in the ledger and
//!   lies within its `return_window_days` of it by the exchange's own rule
//!   ([`crate::dispositions::inside_return_window`]: a sale dated after its refund, a
//!   clock stepped back, counts as 0 ms before it), and is the lead's only refund. A
//!   refund with no `returned` disposition at all is listed, not failed: the refund is
//!   written first, and a crash between the two lines leaves it alone. Every
//!   `disposition`: its lead has a sale to the same buyer, and no other disposition of
//!   the same outcome. The totals are net of refunds (revenue, payouts and margin), as
//!   the report's are. Every sum is an exact `i128`.
//! - The payout re-check (with a configuration) uses the configuration given, i.e.
//!   today's rules. Records carry the `generation` that decided them, and a generation
//!   changes on every reload (and starts again at a restart), so the re-check knows which
//!   sales were decided by the configuration serving now: those whose auction is in the
//!   ledger's last run of one generation (no generation change and no `flush`, a
//!   shutdown, after it). A sale decided earlier whose payout differs from today's rule is
//!   listed (`PAYOUT NOT RE-CHECKED`, with its generation), not failed: a reload may have
//!   changed the seller's payout since, and the sale was paid what it was quoted then
//!   (the quote check above still holds for it).
//! - Records of a newer format version than this pingpost knows are skipped and the
//!   reconciliation is then incomplete: it says so and never claims the money reconciles
//!   (`verify` exits 1).
//! - Every delivery has an outcome: a sale with `attempt` k has the `post_attempt`
//!   records of attempts 0..k; an `unsold` post's `attempts` deliveries each have one; a
//!   pre-send record (see [`super::PRE_SEND_TYPES`]) without a `post_attempt`, `sale` or
//!   `unsold` for its lead is listed as "delivered, outcome unknown".

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use proto::Micros;

use super::{for_each_unverified_upto, money, report, DateRange, Entry, ReadStats, PRE_SEND_TYPES};
use crate::config::Config;

/// Mismatches printed at most (the count is always complete).
pub const SHOWN_MAX: usize = 200;

/// Generations named one by one in the summary's count of sales decided before the
/// latest run; the rest are counted together (black-box round 86b: after thousands of
/// reloads the line named hundreds).
pub const EARLIER_GENERATIONS_NAMED_MAX: usize = 8;

/// The summary's count of sales decided before the latest run: the first
/// [`EARLIER_GENERATIONS_NAMED_MAX`] generations named, then the rest counted.
fn earlier_sales_named(earlier: &BTreeMap<(usize, u64), (u64, u64)>) -> String {
    // Generations start again at 1 at every start (round 80a: one count per number mixed
    // the runs): named by their start when there were several.
    let several = earlier
        .keys()
        .map(|(start, _)| start)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1;
    let mut parts: Vec<String> = earlier
        .iter()
        .take(EARLIER_GENERATIONS_NAMED_MAX)
        .map(|((start, g), (n, test))| {
            let of = if several {
                format!("generation {g} after start {start}")
            } else {
                format!("generation {g}")
            };
            match test {
                0 => format!("{n} of {of}"),
                t => format!("{n} of {of}, {t} of them test"),
            }
        })
        .collect();
    let rest = earlier.len().saturating_sub(EARLIER_GENERATIONS_NAMED_MAX);
    if rest > 0 {
        let (n, test) = earlier
            .values()
            .skip(EARLIER_GENERATIONS_NAMED_MAX)
            .fold((0u64, 0u64), |(n, t), (a, b)| (n + a, t + b));
        let generations = if rest == 1 {
            "generation"
        } else {
            "generations"
        };
        parts.push(match test {
            0 => format!("and {n} of {rest} more {generations}"),
            t => format!("and {n} of {rest} more {generations}, {t} of them test"),
        });
    }
    parts.join(", ")
}

/// What reconciliation found.
#[derive(Debug, Clone, Default)]
pub struct Reconciliation {
    pub sales: u64,
    pub test_sales: u64,
    /// Per currency: (sales, revenue, payouts, margin) of non-test sales (exact sums).
    pub totals: BTreeMap<String, (u64, i128, i128, i128)>,
    /// Each mismatch: where (segment, seq) and what, with the record's ids.
    pub mismatches: Vec<String>,
    /// Deliveries with no outcome ("delivered, outcome unknown").
    pub outcome_unknown: Vec<String>,
    /// Of those, the ones recent enough to be still in flight on a running exchange.
    pub possibly_in_flight: usize,
    /// Refunds whose `returned` disposition line is missing (a crash between the refund
    /// and its disposition, which follows it in the same batch): listed, not a failure.
    pub return_line_missing: Vec<String>,
    /// Per currency: (refunds, Σ `buyer_refund_micros`) of the refund records (the
    /// totals above are net of them).
    pub refunds: BTreeMap<String, (u64, i128)>,
    /// Disposition records read.
    pub dispositions: u64,
    /// Whether payouts were checked against a configuration.
    pub payouts_checked: bool,
    /// Sales decided before the ledger's last run of one generation whose payout differs
    /// from the configuration given (a reload may have changed it): listed, not failed.
    pub payout_not_rechecked: Vec<String>,
    /// The ledger's last run of one generation: its generation and where it begins
    /// (segment and seq). Payouts are re-checked against the configuration for the
    /// auctions from there on.
    /// With the first generation of that run when model swaps joined earlier
    /// generations to it (`(first, last, from)`).
    pub current: Option<(u64, u64, String)>,
    /// Sales decided under an earlier generation (or before a restart), by generation:
    /// how many, and how many of them are test sales.
    /// Keyed by the ledger's start they were decided after (0 before the first start
    /// mark, 1 after it, ...) and generation: generations start again at 1 at every start.
    pub earlier_sales: BTreeMap<(usize, u64), (u64, u64)>,
    pub stats: ReadStats,
}

/// A stretch of the ledger written under one generation (from a change of generation, a
/// `flush` or a start to the next), and the serving models its auctions name, per
/// vertical: the first and the last seen.
struct Stretch {
    start: (usize, String),
    generation: u64,
    /// It follows the stretch before directly (no flush or start between) with the next
    /// generation: a reload or a model swap made it.
    next: bool,
    first_models: HashMap<String, String>,
    last_models: HashMap<String, String>,
}

impl Stretch {
    fn new(start: (usize, String), generation: u64, next: bool) -> Stretch {
        Stretch {
            start,
            generation,
            next,
            first_models: HashMap::new(),
            last_models: HashMap::new(),
        }
    }

    /// An auction of `vertical` served by `models` (its record's `models`, if any).
    fn saw(&mut self, vertical: &str, models: Option<&serde_json::Value>) {
        let m = models.map_or_else(String::new, serde_json::Value::to_string);
        match self.last_models.get_mut(vertical) {
            Some(last) => *last = m,
            None => {
                self.first_models.insert(vertical.to_string(), m.clone());
                self.last_models.insert(vertical.to_string(), m);
            }
        }
    }

    /// Whether a model swap, not a reload, made this stretch out of `before` (the one
    /// just before it): the next generation, directly after it (`next`), and a vertical
    /// whose auctions in both name other models (a reload never changes the models of a
    /// vertical it keeps; a swap changes nothing else). When the ledger cannot tell (no
    /// such vertical had auctions on both sides, a swap to the same models), it counts
    /// as a reload: a new run.
    fn continues(&self, before: &Stretch) -> bool {
        self.next
            && self
                .first_models
                .iter()
                .any(|(v, m)| before.last_models.get(v).is_some_and(|b| b != m))
    }
}

/// Adds `next` after the ledger's stretches, keeping only those the latest run can still
/// reach back to: once a stretch is complete (another follows it), one that does not
/// continue the stretch before it ends any run through it, and the ones before are
/// dropped (so a ledger of many reloads and swaps keeps a few).
fn push_stretch(stretches: &mut Vec<Stretch>, next: Stretch) {
    if let [.., before, last] = stretches.as_slice() {
        if !last.continues(before) {
            stretches.drain(..stretches.len() - 1);
        }
    }
    stretches.push(next);
}

/// Where the ledger's latest run begins (ordinal and place) and its first generation:
/// the last stretch, joined to those before it while model swaps made them.
fn latest_run(stretches: &[Stretch]) -> ((usize, String), u64) {
    let mut i = stretches.len().saturating_sub(1);
    while i > 0 && stretches[i].continues(&stretches[i - 1]) {
        i -= 1;
    }
    stretches
        .get(i)
        .map_or(((0, String::new()), 0), |s| (s.start.clone(), s.generation))
}

/// Counts a sale decided under generation `g` before the ledger's latest run (`test`:
/// a test sale, counted apart too: the money lines leave them out).
fn count_earlier(
    earlier: &mut BTreeMap<(usize, u64), (u64, u64)>,
    start: usize,
    g: u64,
    test: bool,
) {
    let e = earlier.entry((start, g)).or_default();
    e.0 += 1;
    e.1 += u64::from(test);
}

struct Sale {
    place: String,
    ids: String,
    lead: String,
    ping: String,
    auction: String,
    seller: String,
    currency: String,
    test: bool,
    bid: i64,
    price: i64,
    margin: i64,
    attempt: u64,
    buyer: String,
    /// The cap windows it counts in (absent for a test lead, and before format 4).
    windows: Option<serde_json::Value>,
    /// The record's format version (`v`): from 4 on, every delivery has its `post_sent`.
    version: u64,
    /// Position in the ledger (0-based, records read) and `generation`.
    ordinal: usize,
    generation: u64,
}

struct Refund {
    place: String,
    ids: String,
    lead: String,
    buyer: String,
    seller: String,
    currency: String,
    refund: i64,
    clawback: i64,
    reversed: i64,
    at_ms: i64,
    window_days: i64,
    /// Position in the ledger (0-based, records read).
    ordinal: usize,
}

fn at_ms(e: &Entry) -> i64 {
    chrono::DateTime::parse_from_rfc3339(e.str("at")).map_or(0, |t| t.timestamp_millis())
}

/// What a delivery's `post_sent` says, which its sale must say too.
struct SentTo {
    buyer: String,
    price: Option<i64>,
    seller: String,
    test: Option<bool>,
    windows: Option<serde_json::Value>,
}

struct Auction {
    /// The seller and whether it was a test lead, as the auction recorded them.
    seller: String,
    test: Option<bool>,
    winner_bid: Option<i64>,
    /// The winner's buyer id (empty when none is recorded).
    winner: String,
    /// Each buyer's bid as the auction recorded it (its `buyers` lines with an amount).
    bids: HashMap<String, i64>,
    seller_price: Option<i64>,
    /// The currency it ran in (empty in a record written before auctions carried one).
    currency: String,
    /// Position in the ledger (0-based, records read) and `generation`.
    ordinal: usize,
    generation: u64,
}

/// Reconciles the ledger in `dir`; `cfg` enables the payout checks.
pub fn reconcile(dir: &Path, cfg: Option<&Config>) -> Result<Reconciliation, String> {
    reconcile_upto(dir, cfg, None)
}

/// [`reconcile`] of the records up to sequence number `upto` (every reading of the
/// ledger stops there: see [`super::for_each_unverified_upto`]).
pub fn reconcile_upto(
    dir: &Path,
    cfg: Option<&Config>,
    upto: Option<u64>,
) -> Result<Reconciliation, String> {
    let mut sales: Vec<Sale> = Vec::new();
    let mut auctions: HashMap<String, Auction> = HashMap::new();
    // lead_id -> attempts recorded (attempt, outcome).
    let mut attempts: HashMap<String, Vec<(u64, String)>> = HashMap::new();
    let mut unsold: Vec<(String, String, u64, String)> = Vec::new();
    let mut unsold_leads: HashMap<String, ()> = HashMap::new();
    // (place, lead_id, buyer, attempt, at ms, ordinal).
    let mut pre_sends: Vec<(String, String, String, u64, i64, usize, bool)> = Vec::new();
    // The newest `at` read, and the ordinal of the last `flush` (a stop, or a start after
    // one): a delivery before it is not in flight.
    let mut last_at = 0i64;
    let mut last_flush: Option<usize> = None;
    let mut refunds: Vec<Refund> = Vec::new();
    // (place, lead_id, buyer, outcome) of every disposition.
    let mut dispositions: Vec<(String, String, String, String)> = Vec::new();
    // lead_id -> the sale's `at` (ms).
    let mut sold_at: HashMap<String, i64> = HashMap::new();
    // auction_id -> (currency, place) of its quote (`quote_opened`).
    let mut quoted_in: HashMap<String, (String, String)> = HashMap::new();
    // Each delivery's buyer and the price it was sent at (`post_sent`, by lead and
    // attempt): the buyer's bid, which its sale must charge.
    let mut sent_to: HashMap<(String, u64), SentTo> = HashMap::new();
    // The ledger's runs of one generation: a new run begins where the generation
    // changes (a reload, or a restart: generations start again at 1) or after a `flush`
    // (a shutdown; a restart follows).
    // A model swap makes a generation too, but changes no payout rule: stretches of one
    // generation joined by swaps only are one run (see `Stretch::continues`).
    let mut ordinal = 0usize;
    let mut last_gen: Option<u64> = None;
    let mut after_flush = false;
    let mut stretches: Vec<Stretch> = vec![Stretch::new((0, String::new()), 0, false)];
    // Where each start's mark is (ordinals, in order).
    let mut starts: Vec<usize> = Vec::new();
    let stats = for_each_unverified_upto(dir, upto, |e: Entry| {
        let generation = e
            .value
            .get("generation")
            .and_then(|g| g.as_u64())
            .unwrap_or(0);
        if last_gen != Some(generation) || after_flush {
            let next = !after_flush && last_gen.map(|g| g.saturating_add(1)) == Some(generation);
            push_stretch(
                &mut stretches,
                Stretch::new((ordinal, e.place()), generation, next),
            );
        }
        last_gen = Some(generation);
        after_flush = e.kind == "flush";
        if after_flush && e.value.get("start").and_then(|s| s.as_bool()) == Some(true) {
            // A start (its flush marks it, after a shutdown or a crash) begins a run: a
            // ledger that ends with one has an empty latest run, not the one before it.
            push_stretch(
                &mut stretches,
                Stretch::new((ordinal + 1, e.place()), generation, false),
            );
            starts.push(ordinal);
        }
        if e.kind == "auction" {
            if let Some(last) = stretches.last_mut() {
                last.saw(e.str("vertical"), e.value.get("models"));
            }
        }
        let here = ordinal;
        ordinal += 1;
        last_at = last_at.max(at_ms(&e));
        if e.kind == "flush" {
            last_flush = Some(here);
        }
        match e.kind.as_str() {
            "refund" => refunds.push(Refund {
                place: e.place(),
                ids: format!(
                    "lead_id {} buyer {} seller {}",
                    e.str("lead_id"),
                    e.str("buyer"),
                    e.str("seller")
                ),
                lead: e.str("lead_id").to_string(),
                buyer: e.str("buyer").to_string(),
                seller: e.str("seller").to_string(),
                currency: e.str("currency").to_string(),
                refund: e.i64("buyer_refund_micros").unwrap_or(0),
                clawback: e.i64("seller_clawback_micros").unwrap_or(0),
                reversed: e.i64("margin_reversed_micros").unwrap_or(0),
                at_ms: at_ms(&e),
                window_days: e.i64("return_window_days").unwrap_or(0),
                ordinal: here,
            }),
            "disposition" => dispositions.push((
                e.place(),
                e.str("lead_id").to_string(),
                e.str("buyer").to_string(),
                e.str("outcome").to_string(),
            )),
            "auction" => {
                auctions.insert(
                    e.str("auction_id").to_string(),
                    Auction {
                        seller: e.str("seller").to_string(),
                        test: e.value.get("test").and_then(|t| t.as_bool()),
                        winner_bid: e.i64("bid_micros"),
                        winner: e.str("winner").to_string(),
                        bids: e
                            .value
                            .get("buyers")
                            .and_then(serde_json::Value::as_array)
                            .map(|lines| {
                                lines
                                    .iter()
                                    // Lines that are bids a lead may be sold on:
                                    // a valid bid, a fixed price (round 52: a
                                    // `timeout` line's amount was taken).
                                    .filter(|l| {
                                        l.get("outcome")
                                            .and_then(|o| o.as_str())
                                            .is_none_or(|o| matches!(o, "bid" | "fixed_price"))
                                    })
                                    .filter_map(|l| {
                                        Some((
                                            l.get("buyer")?.as_str()?.to_string(),
                                            l.get("bid_micros")?.as_i64()?,
                                        ))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        seller_price: e.i64("seller_price_micros"),
                        currency: e.str("currency").to_string(),
                        ordinal: here,
                        generation,
                    },
                );
            }
            "quote_opened" => {
                quoted_in
                    .entry(e.str("auction_id").to_string())
                    .or_insert_with(|| (e.str("currency").to_string(), e.place()));
            }
            "sale" => {
                sold_at.insert(e.str("lead_id").to_string(), at_ms(&e));
                sales.push(Sale {
                    place: e.place(),
                    ids: format!(
                        "lead_id {} auction_id {} buyer {} seller {}",
                        e.str("lead_id"),
                        e.str("auction_id"),
                        e.str("buyer"),
                        e.str("seller")
                    ),
                    lead: e.str("lead_id").to_string(),
                    ping: e.str("ping_id").to_string(),
                    auction: e.str("auction_id").to_string(),
                    seller: e.str("seller").to_string(),
                    currency: e.str("currency").to_string(),
                    test: e.bool("test"),
                    bid: e.i64("bid_micros").unwrap_or(0),
                    price: e.i64("seller_price_micros").unwrap_or(0),
                    margin: e.i64("margin_micros").unwrap_or(0),
                    attempt: e.value.get("attempt").and_then(|a| a.as_u64()).unwrap_or(0),
                    buyer: e.str("buyer").to_string(),
                    windows: e.value.get("windows").cloned(),
                    // A sale with `windows` is of format 4 or later whatever its `v`
                    // says (round 57a: a sale's `v` set to 3 with its `post_sent` removed
                    // passed, as a sale from before `post_sent`).
                    version: e
                        .value
                        .get("v")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(1)
                        .max(if e.value.get("windows").is_some() {
                            4
                        } else {
                            0
                        }),
                    ordinal: here,
                    generation,
                })
            }
            "post_attempt" => attempts
                .entry(e.str("lead_id").to_string())
                .or_default()
                .push((
                    e.value.get("attempt").and_then(|a| a.as_u64()).unwrap_or(0),
                    e.str("outcome").to_string(),
                )),
            "unsold" => {
                unsold_leads.insert(e.str("lead_id").to_string(), ());
                unsold.push((
                    e.place(),
                    e.str("lead_id").to_string(),
                    e.value
                        .get("attempts")
                        .and_then(|a| a.as_u64())
                        .unwrap_or(0),
                    e.str("auction_id").to_string(),
                ));
            }
            k if PRE_SEND_TYPES.contains(&k) => {
                let attempt = e.value.get("attempt").and_then(|a| a.as_u64()).unwrap_or(0);
                sent_to.insert(
                    (e.str("lead_id").to_string(), attempt),
                    SentTo {
                        buyer: e.str("buyer").to_string(),
                        price: e.i64("price_micros"),
                        seller: e.str("seller").to_string(),
                        test: e.value.get("test").and_then(|t| t.as_bool()),
                        windows: e.value.get("windows").cloned(),
                    },
                );
                pre_sends.push((
                    e.place(),
                    e.str("lead_id").to_string(),
                    e.str("buyer").to_string(),
                    attempt,
                    at_ms(&e),
                    here,
                    e.bool("test"),
                ));
            }
            _ => {}
        }
        true
    })?;
    let (run_start, first_gen) = latest_run(&stretches);
    // How many starts came before the record at `ordinal`.
    let start_of = |ordinal: usize| starts.partition_point(|&s| s < ordinal);
    let mut out = Reconciliation {
        payouts_checked: cfg.is_some(),
        current: last_gen.map(|g| (first_gen.min(g), g, run_start.1.clone())),
        stats,
        ..Reconciliation::default()
    };
    let mut by_lead: HashMap<&str, &str> = HashMap::new();
    let mut by_ping: HashMap<&str, &str> = HashMap::new();
    let mut sold_attempt: HashMap<&str, u64> = HashMap::new();
    for s in &sales {
        let m = &mut out.mismatches;
        if s.test {
            out.test_sales += 1;
        } else {
            let t = out.totals.entry(s.currency.clone()).or_default();
            t.0 += 1;
            t.1 += i128::from(s.bid);
            t.2 += i128::from(s.price);
            t.3 += i128::from(s.margin);
        }
        out.sales += 1;
        if i128::from(s.bid) - i128::from(s.price) != i128::from(s.margin) {
            m.push(format!(
                "{}: margin_micros {} is not bid_micros {} - seller_price_micros {} ({})",
                s.place, s.margin, s.bid, s.price, s.ids
            ));
        }
        if s.margin < 0 {
            m.push(format!(
                "{}: negative margin {} (the seller is paid more than the buyer pays) ({})",
                s.place, s.margin, s.ids
            ));
        }
        if let Some(first) = by_lead.insert(&s.lead, &s.place) {
            m.push(format!(
                "{}: lead sold twice (first sale at {first}) ({})",
                s.place, s.ids
            ));
        }
        if !s.ping.is_empty() {
            if let Some(first) = by_ping.insert(&s.ping, &s.place) {
                m.push(format!(
                    "{}: ping_id {} sold twice (first sale at {first}) ({})",
                    s.place, s.ping, s.ids
                ));
            }
        }
        sold_attempt.insert(&s.lead, s.attempt);
        // The delivery it was sold on (black-box rounds 50-51: a sale's bid changed, or a
        // fallback's sale relabelled the winner's attempt at the winner's bid, or its
        // `post_sent` removed, each with the chain rewritten, passed).
        match sent_to.get(&(s.lead.clone(), s.attempt)) {
            Some(sent) if sent.buyer != s.buyer => m.push(format!(
                "{}: attempt {} was sent to buyer {} (post_sent), not to the buyer the sale charges ({})",
                s.place, s.attempt, sent.buyer, s.ids
            )),
            Some(SentTo {
                price: Some(price), ..
            }) if *price != s.bid => m.push(format!(
                "{}: bid_micros {} differs from the price its delivery was sent at (post_sent, attempt {}: {price}) ({})",
                s.place, s.bid, s.attempt, s.ids
            )),
            // Black-box round 57a: a sale's `test`, `seller` or `windows` changed, the
            // chain rewritten, passed (a test sale leaves the money and the caps; a sale
            // in yesterday's windows frees today's budget).
            Some(sent) => {
                if sent.test.is_some_and(|t| t != s.test) {
                    m.push(format!(
                        "{}: test is {}, but its delivery (post_sent, attempt {}) was {}a test lead's ({})",
                        s.place,
                        s.test,
                        s.attempt,
                        if s.test { "not " } else { "" },
                        s.ids
                    ));
                }
                if !sent.seller.is_empty() && sent.seller != s.seller {
                    m.push(format!(
                        "{}: its delivery (post_sent, attempt {}) was of seller {}'s lead, not of the seller the sale pays ({})",
                        s.place, s.attempt, sent.seller, s.ids
                    ));
                }
                if sent.windows.is_some() && s.windows.is_some() && sent.windows != s.windows {
                    m.push(format!(
                        "{}: its cap windows differ from those its delivery was sent in (post_sent, attempt {}) ({})",
                        s.place, s.attempt, s.ids
                    ));
                }
            }
            // Every delivery is written before it leaves, since format version 4 (round
            // 52: a sale with its `post_sent` removed passed).
            None if s.version >= 4 => m.push(format!(
                "{}: no post_sent for attempt {}: every delivery is recorded before it leaves ({})",
                s.place, s.attempt, s.ids
            )),
            None => {}
        }
        // A failed attempt has a `post_attempt`; a sold one has none (round 52: an
        // `unsold` replaced by a sale on an attempt recorded `rejected` passed).
        if let Some((_, outcome)) = attempts
            .get(&s.lead)
            .and_then(|v| v.iter().find(|(a, _)| *a == s.attempt))
        {
            m.push(format!(
                "{}: sold at attempt {}, which the ledger records as {outcome} (post_attempt) ({})",
                s.place, s.attempt, s.ids
            ));
        }
        let auction = auctions.get(&s.auction);
        match auction {
            None => m.push(format!(
                "{}: the sale's auction record is missing ({})",
                s.place, s.ids
            )),
            Some(a) => {
                if !a.seller.is_empty() && a.seller != s.seller {
                    m.push(format!(
                        "{}: its auction was seller {}'s, not the seller the sale pays ({})",
                        s.place, a.seller, s.ids
                    ));
                }
                if a.test.is_some_and(|t| t != s.test) {
                    m.push(format!(
                        "{}: test is {}, but its auction was {}a test lead's ({})",
                        s.place,
                        s.test,
                        if s.test { "not " } else { "" },
                        s.ids
                    ));
                }
                // The buyer is charged its bid: the winner's, as the auction recorded it
                // (black-box round 50: a sale's bid changed, its chain rewritten, passed
                // while the auction and post_sent still held the true price).
                if s.attempt == 0 && !a.winner.is_empty() && a.winner != s.buyer {
                    m.push(format!(
                        "{}: attempt 0 is the winner's, and the auction's winner is buyer {}, not the buyer the sale charges ({})",
                        s.place, a.winner, s.ids
                    ));
                } else if let Some(wb) = a.winner_bid.filter(|wb| s.attempt == 0 && *wb != s.bid) {
                    m.push(format!(
                        "{}: bid_micros {} differs from the winning bid the auction recorded ({wb}) ({})",
                        s.place, s.bid, s.ids
                    ));
                }
                match a.bids.get(&s.buyer) {
                    Some(&b) if b != s.bid => m.push(format!(
                        "{}: bid_micros {} differs from the buyer's bid in its auction ({b}) ({})",
                        s.place, s.bid, s.ids
                    )),
                    None if !a.bids.is_empty() => m.push(format!(
                        "{}: its auction recorded no bid from buyer {} ({})",
                        s.place, s.buyer, s.ids
                    )),
                    _ => {}
                }
                if a.seller_price != Some(s.price) {
                    m.push(format!(
                        "{}: seller_price_micros {} differs from the price the auction quoted ({}) ({})",
                        s.place,
                        s.price,
                        a.seller_price.map_or("none".to_string(), |p| p.to_string()),
                        s.ids
                    ));
                }
            }
        }
        // The sale is recorded in the currency it was quoted in (its auction's, its
        // quote's), whatever a reload made the vertical's since: another one counts the
        // money in the wrong currency (black-box round 41).
        let mut other_currency: Vec<String> = Vec::new();
        if let Some(a) = auction.filter(|a| !a.currency.is_empty() && a.currency != s.currency) {
            other_currency.push(format!("its auction ran in {}", a.currency));
        }
        if let Some((c, at)) = quoted_in
            .get(&s.auction)
            .filter(|(c, _)| !c.is_empty() && *c != s.currency)
        {
            other_currency.push(format!("its quote (quote_opened at {at}) was in {c}"));
        }
        if !other_currency.is_empty() {
            m.push(format!(
                "{}: the sale is in currency {} but {} ({})",
                s.place,
                s.currency,
                other_currency.join(" and "),
                s.ids
            ));
        }
        if let Some(cfg) = cfg {
            // The payout was decided by the auction (a quote's post may come after a
            // reload): its generation and place say which configuration decided it.
            let (decided_at, decided_gen) =
                auction.map_or((s.ordinal, s.generation), |a| (a.ordinal, a.generation));
            let current = decided_at >= run_start.0;
            match cfg.sellers.iter().find(|x| x.id == s.seller) {
                // A seller of an earlier run may have been removed since (black-box round
                // 18): like a payout rule that changed, listed, not failed.
                None if !current => {
                    count_earlier(&mut out.earlier_sales, start_of(decided_at), decided_gen, s.test);
                    out.payout_not_rechecked.push(format!(
                        "{}: seller {:?} is not in the configuration given; the auction ran under generation {decided_gen}, before a reload or restart (the ledger's latest run is generation {} from {}): not a mismatch, the seller may have been removed since ({})",
                        s.place,
                        s.seller,
                        last_gen.unwrap_or(0),
                        run_start.1,
                        s.ids
                    ));
                }
                None => m.push(format!(
                    "{}: seller {:?} is not in the configuration, and the auction ran under generation {decided_gen}, the ledger's latest: its payout cannot be checked ({})",
                    s.place, s.seller, s.ids
                )),
                Some(seller) => {
                    // The quoted price comes from the winner's bid: the sale's own for
                    // attempt 0, the auction's for a fallback.
                    let winner_bid = if s.attempt == 0 {
                        Some(s.bid)
                    } else {
                        auction.and_then(|a| a.winner_bid)
                    };
                    if !current {
                        count_earlier(&mut out.earlier_sales, start_of(decided_at), decided_gen, s.test);
                    }
                    if let Some(wb) = winner_bid {
                        let expected = seller.payout.seller_price(Micros(wb)).min(Micros(wb)).0;
                        if expected != s.price {
                            let what = format!(
                                "{}: seller_price_micros {} but seller {}'s payout model in the configuration given ({}) on the winning bid {} gives {}; the auction ran under generation {decided_gen}",
                                s.place,
                                s.price,
                                s.seller,
                                payout_text(seller.payout),
                                wb,
                                expected,
                            );
                            if current {
                                m.push(format!(
                                    "{what}, the ledger's latest (if the configuration was reloaded since, the rule checked may not be the one that decided it) ({})",
                                    s.ids
                                ));
                            } else {
                                out.payout_not_rechecked.push(format!(
                                    "{what}, before a reload or restart (the ledger's latest run is generation {} from {}): not a mismatch, the rule may have changed since ({})",
                                    last_gen.unwrap_or(0),
                                    run_start.1,
                                    s.ids
                                ));
                            }
                        }
                    }
                }
            }
        }
        for k in 0..s.attempt {
            let has = attempts
                .get(&s.lead)
                .is_some_and(|v| v.iter().any(|(a, _)| *a == k));
            if !has {
                m.push(format!(
                    "{}: sold at attempt {} but attempt {k} has no post_attempt record ({})",
                    s.place, s.attempt, s.ids
                ));
            }
        }
    }
    for (place, lead, n, auction) in &unsold {
        let sent = attempts.get(lead).map_or(0, |v| {
            v.iter()
                .filter(|(_, o)| {
                    matches!(
                        o.as_str(),
                        "rejected" | "timeout" | "error" | "invalid" | "not_sent"
                    )
                })
                .count() as u64
        });
        if sent != *n {
            out.mismatches.push(format!(
                "{place}: unsold after {n} delivery(ies) but {sent} have a post_attempt outcome (lead_id {lead} auction_id {auction})"
            ));
        }
    }
    // A delivery of the ledger's running stretch (no flush after it) sent within a post's
    // whole life of the last record may still be waiting for its buyer on a running
    // exchange (black-box round 21: verify on a live ledger told finance to settle one).
    let in_flight_ms = i64::try_from(
        cfg.map_or(crate::config::defaults::POST_DEADLINE_MS, |c| {
            c.server.post_deadline_ms
        })
        .saturating_add(crate::auction::LATE_POST_WAIT_MS)
        .saturating_add(1_000),
    )
    .unwrap_or(i64::MAX);
    // A test lead's delivery is in no cap and never billed: nothing to settle.
    for (place, lead, buyer, attempt, at, ordinal, _) in pre_sends.iter().filter(|p| !p.6) {
        let running = last_flush.is_none_or(|f| *ordinal > f);
        let done = attempts
            .get(lead)
            .is_some_and(|v| v.iter().any(|(a, _)| a == attempt))
            || sold_attempt.get(lead.as_str()) == Some(attempt)
            || unsold_leads.contains_key(lead);
        if !done {
            let age = last_at.saturating_sub(*at);
            let note = if running && age <= in_flight_ms {
                out.possibly_in_flight += 1;
                format!(
                    " (sent {:.1} s before the ledger's last record: on a running exchange it may still be in flight; run verify again later)",
                    age as f64 / 1000.0
                )
            } else {
                String::new()
            };
            out.outcome_unknown.push(format!(
                "{place}: lead_id {lead} attempt {attempt} to buyer {buyer}: delivered, outcome unknown{note}"
            ));
        }
    }
    // Dispositions and refunds against the sales they name.
    let sale_of: HashMap<&str, &Sale> = sales.iter().map(|s| (s.lead.as_str(), s)).collect();
    let mut seen_dispositions: HashMap<(&str, &str), &str> = HashMap::new();
    let mut returned: HashMap<&str, &str> = HashMap::new();
    for (place, lead, buyer, outcome) in &dispositions {
        out.dispositions += 1;
        let ids = format!("lead_id {lead} buyer {buyer} outcome {outcome}");
        match sale_of.get(lead.as_str()) {
            None => out.mismatches.push(format!(
                "{place}: a disposition of a lead with no sale ({ids})"
            )),
            Some(s) if s.buyer != *buyer => out.mismatches.push(format!(
                "{place}: a disposition by buyer {buyer} of a lead sold to {} ({ids})",
                s.buyer
            )),
            Some(_) => {}
        }
        if let Some(first) = seen_dispositions.insert((lead, outcome), place) {
            out.mismatches.push(format!(
                "{place}: the same disposition twice (first at {first}) ({ids})"
            ));
        }
        if outcome == "returned" {
            returned.insert(lead, buyer);
        }
    }
    let mut refunded: HashMap<&str, &str> = HashMap::new();
    for r in &refunds {
        let m = &mut out.mismatches;
        if let Some(first) = refunded.insert(&r.lead, &r.place) {
            m.push(format!(
                "{}: lead refunded twice (first refund at {first}) ({})",
                r.place, r.ids
            ));
        }
        match returned.get(r.lead.as_str()) {
            Some(b) if *b == r.buyer.as_str() => {}
            // The refund is written just before its disposition, in the same batch: a
            // crash between the two lines leaves the refund alone. The money is whole;
            // the line missing is the disposition's (listed, not a failure).
            None => out.return_line_missing.push(format!(
                "{}: a refund whose returned disposition line is missing (the exchange stopped between the two; the refund stands) ({})",
                r.place, r.ids
            )),
            Some(_) => m.push(format!(
                "{}: a refund without a returned disposition by its buyer ({})",
                r.place, r.ids
            )),
        }
        let Some(s) = sale_of.get(r.lead.as_str()) else {
            m.push(format!(
                "{}: a refund of a lead with no sale ({})",
                r.place, r.ids
            ));
            continue;
        };
        if s.test {
            m.push(format!(
                "{}: a refund of a test lead (nothing was paid) ({})",
                r.place, r.ids
            ));
            continue;
        }
        if s.buyer != r.buyer || s.seller != r.seller || s.currency != r.currency {
            m.push(format!(
                "{}: the refund names buyer {} seller {} currency {} but the sale was buyer {} seller {} currency {} ({})",
                r.place, r.buyer, r.seller, r.currency, s.buyer, s.seller, s.currency, r.ids
            ));
        }
        if (r.refund, r.clawback, r.reversed) != (s.bid, s.price, s.margin) {
            m.push(format!(
                "{}: refund {} / clawback {} / margin reversed {} differ from the sale's bid {} / seller price {} / margin {} ({})",
                r.place, r.refund, r.clawback, r.reversed, s.bid, s.price, s.margin, r.ids
            ));
        }
        // The ledger's order says the refund followed the sale; its time is then checked
        // by the exchange's own rule, so a clock stepped back between the two (the sale
        // dated after its refund) does not fail a refund the exchange made (black-box
        // round 41).
        if r.ordinal < s.ordinal {
            m.push(format!(
                "{}: a refund written before its sale (at {}) ({})",
                r.place, s.place, r.ids
            ));
        }
        let sold = sold_at.get(r.lead.as_str()).copied().unwrap_or(0);
        if !crate::dispositions::inside_return_window(sold, r.window_days, r.at_ms) {
            m.push(format!(
                "{}: refunded {} ms after the sale, outside its return window of {} day(s) ({})",
                r.place,
                i128::from(r.at_ms) - i128::from(sold),
                r.window_days,
                r.ids
            ));
        }
        let t = out.totals.entry(r.currency.clone()).or_default();
        t.1 -= i128::from(r.refund);
        t.2 -= i128::from(r.clawback);
        t.3 -= i128::from(r.reversed);
        let f = out.refunds.entry(r.currency.clone()).or_default();
        f.0 += 1;
        f.1 += i128::from(r.refund);
    }
    // A paid lead's `returned` always refunded it (its refund is written just before it,
    // in the same batch): one without its refund is an edit (black-box round 93b: a
    // refund removed, the chain recomputed, verified and the report lost the return).
    for (place, lead, buyer, outcome) in &dispositions {
        if outcome == "returned"
            && !refunded.contains_key(lead.as_str())
            && sale_of
                .get(lead.as_str())
                .is_some_and(|s| !s.test && s.buyer == *buyer)
        {
            out.mismatches.push(format!(
                "{place}: a returned disposition of a paid lead with no refund (the exchange writes a return's refund just before it) (lead_id {lead} buyer {buyer})"
            ));
        }
    }
    // The report's figures (grouped by buyer) against the sales themselves.
    let reports = report::build_unverified(dir, DateRange::default(), &HashMap::new(), upto)?;
    if let Some(r) = reports.by.get(&report::By::Buyer) {
        for t in &r.totals {
            let (n, rev, pay, mar) = out.totals.get(&t.currency).copied().unwrap_or_default();
            let (returns, refunded) = out.refunds.get(&t.currency).copied().unwrap_or_default();
            if t.sales != n
                || t.revenue_micros != rev
                || t.returns != returns
                || t.refunds_micros != refunded
                || t.payouts_micros != pay
                || t.margin_micros != mar
            {
                out.mismatches.push(format!(
                    "{}: the report by buyer has net revenue {} (refunds {} over {} return(s)), payouts {}, margin {} over {} sale(s); the sales and refunds add up to {rev} ({refunded} over {returns}), {pay}, {mar} over {n}",
                    if t.currency.is_empty() { "-" } else { &t.currency },
                    t.revenue_micros,
                    t.refunds_micros,
                    t.returns,
                    t.payouts_micros,
                    t.margin_micros,
                    t.sales
                ));
            }
        }
    }
    for (cur, (_, rev, pay, mar)) in &out.totals {
        if pay + mar != *rev {
            out.mismatches.push(format!(
                "{cur}: revenue {rev} is not payouts {pay} + margin {mar}"
            ));
        }
    }
    Ok(out)
}

/// A payout model in words.
pub fn payout_text(p: crate::config::PayoutModel) -> String {
    match p {
        crate::config::PayoutModel::RevenueShare { share_bp } => {
            format!("revenue_share {}%", f64::from(share_bp) / 100.0)
        }
        crate::config::PayoutModel::FixedMargin { margin } => {
            format!("fixed_margin {}", money(margin.0))
        }
    }
}

impl Reconciliation {
    /// Any mismatch? Deliveries without an outcome are listed but are not a failure: they
    /// are what a crash mid-delivery leaves (the ledger is consistent; the buyer's answer
    /// was never heard), counted against the buyers' caps at the next start, and settled
    /// with the buyers by finance.
    pub fn failed(&self) -> bool {
        !self.mismatches.is_empty()
            || !self.stats.malformed_money.is_empty()
            || !self.stats.malformed_lines.is_empty()
    }

    /// Were records skipped (a newer format version, or a type this pingpost does not
    /// know: every type it writes is known, so another one comes from a newer pingpost
    /// and may carry money) whose money the figures leave out? Then nothing is claimed to
    /// reconcile and `verify` exits 1.
    pub fn incomplete(&self) -> bool {
        !self.stats.newer.is_empty() || !self.stats.unknown_types.is_empty()
    }

    /// The reconciliation part of `verify`'s output.
    pub fn render(&self) -> String {
        self.render_with(true, None)
    }

    /// [`render`](Self::render), for a ledger whose chain does (`ledger_verifies`) or does
    /// not verify: if it does not, the last line never says `OK`. Nor does it for a ledger
    /// that verifies up to a torn tail (`torn_tail`: what the exchange's next start does
    /// with it, as "truncates the torn tail"; `verify`'s exit status is 1 then).
    pub fn render_with(&self, ledger_verifies: bool, torn_tail: Option<&str>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reconciliation: {} sale(s) ({} test, left out of the money)",
            self.sales, self.test_sales
        );
        for (cur, (n, rev, pay, mar)) in &self.totals {
            let (returns, refunded) = self.refunds.get(cur).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {cur}: {n} sale(s), revenue {} - refunds {} = sales {}; payouts {}, margin {}{}",
                money(rev + refunded),
                money(refunded),
                money(*rev),
                money(*pay),
                money(*mar),
                if returns > 0 {
                    format!(" ({returns} refund(s); payouts and margin net of the clawbacks)")
                } else {
                    String::new()
                }
            );
        }
        if !self.payouts_checked {
            let _ = writeln!(
                out,
                "  payouts not checked against the payout models: that needs --config (the sellers' payout models)"
            );
        } else {
            let (first, g, from) = self.current.clone().unwrap_or((0, 0, "-".into()));
            let gens = if first < g {
                format!("generations {first} to {g} (model swaps only between them)")
            } else {
                format!("generation {g}")
            };
            let _ = writeln!(
                out,
                "  payouts re-checked against the configuration given (today's payout models, not the ones of earlier generations): a mismatch fails for auctions of the ledger's latest run, {gens} from {from}"
            );
            if !self.earlier_sales.is_empty() {
                let _ = writeln!(
                    out,
                    "  sales decided before it ({}; a reload or restart came between): a payout that differs from today's rule is listed as PAYOUT NOT RE-CHECKED, not failed",
                    earlier_sales_named(&self.earlier_sales)
                );
            }
        }
        for n in self.stats.notes() {
            let _ = writeln!(out, "  note: {n}");
        }
        // A ledger that does not verify has no list of deliveries with no outcome (its
        // records cannot be trusted to say which ones are open).
        let unknown_listed: &[String] = if ledger_verifies {
            &self.outcome_unknown
        } else {
            &[]
        };
        for (title, list) in [
            ("PROBLEM", &self.stats.malformed_lines[..]),
            ("PROBLEM", &self.stats.malformed_money[..]),
            ("MISMATCH", &self.mismatches[..]),
            ("OUTCOME UNKNOWN", unknown_listed),
            ("DISPOSITION LINE MISSING", &self.return_line_missing[..]),
            ("PAYOUT NOT RE-CHECKED", &self.payout_not_rechecked[..]),
        ] {
            for m in list.iter().take(SHOWN_MAX) {
                let _ = writeln!(out, "{title}: {m}");
            }
            if list.len() > SHOWN_MAX {
                let _ = writeln!(out, "{title}: ... and {} more", list.len() - SHOWN_MAX);
            }
        }
        let skipped_n =
            self.stats.newer.values().sum::<u64>() + self.stats.unknown_types.values().sum::<u64>();
        if self.incomplete() {
            let skipped: Vec<String> = self
                .stats
                .newer
                .iter()
                .map(|(v, n)| format!("{n} of format version {v}"))
                .chain(
                    self.stats
                        .unknown_types
                        .iter()
                        .map(|(t, n)| format!("{n} of type {t:?}, which it does not know")),
                )
                .collect();
            let _ = writeln!(
                out,
                "NOT RECONCILED: {skipped_n} record(s) skipped ({}; this pingpost reads versions up to {}): their sales and refunds are not in the figures above, so the money cannot be said to reconcile; verify with a pingpost that reads them",
                skipped.join(", "),
                crate::core::record::RECORD_VERSION
            );
        }
        let unreadable = self.stats.unreadable.len();
        let malformed = self.stats.malformed_money.len();
        if self.failed() {
            let mut cause = String::new();
            if malformed > 0 && !self.mismatches.is_empty() {
                let _ = write!(
                    cause,
                    "; some may come from the {malformed} record(s) with a malformed money field or time, left out (above)"
                );
            }
            if skipped_n > 0 {
                let _ = write!(
                    cause,
                    "; some may come from the {skipped_n} record(s) skipped (above)"
                );
            }
            let lines = self.stats.malformed_lines.len() + unreadable;
            if lines > 0 {
                let _ = write!(
                    cause,
                    "; some may come from the {lines} line(s) that could not be read (above)"
                );
            }
            let unknown = if ledger_verifies {
                format!(
                    "{} delivery(ies) with outcome unknown",
                    self.outcome_unknown.len()
                )
            } else {
                "deliveries with no outcome not listed (the ledger does not verify)".to_string()
            };
            let mut problems = String::new();
            let lines = self.stats.malformed_lines.len();
            if lines > 0 {
                let _ = write!(
                    problems,
                    "{lines} line(s) that are not readable records (PROBLEM), "
                );
            }
            if malformed > 0 {
                let _ = write!(
                    problems,
                    "{malformed} record(s) with a malformed money field or time (PROBLEM), "
                );
            }
            let _ = writeln!(
                out,
                "RECONCILIATION FAILED: {problems}{} mismatch(es), {unknown}{cause}",
                self.mismatches.len(),
            );
        } else if self.incomplete() {
            // Said above.
        } else if !ledger_verifies {
            let read = if unreadable > 0 {
                format!(
                    "read line by line, {unreadable} line(s) could not be read (their money is not in the figures) and the rest reconciles"
                )
            } else {
                "read line by line, its money reconciles".to_string()
            };
            let _ = writeln!(
                out,
                "NOT OK: the ledger does not verify (above); {read}, but its records cannot be trusted and deliveries with no outcome are not listed"
            );
        } else {
            let mut outcomes = if self.outcome_unknown.is_empty() {
                " and every delivery has an outcome".to_string()
            } else {
                format!(
                    "; {} delivery(ies) with outcome unknown (listed above; counted against the buyers' caps, to settle with the buyers{})",
                    self.outcome_unknown.len(),
                    if self.possibly_in_flight > 0 {
                        format!(
                            "; {} of them sent so recently that on a running exchange they may still be in flight: run verify again later",
                            self.possibly_in_flight
                        )
                    } else {
                        String::new()
                    }
                )
            };
            if !self.return_line_missing.is_empty() {
                let _ = write!(
                    outcomes,
                    "; {} refund(s) without their disposition line (listed above; the refunds stand)",
                    self.return_line_missing.len()
                );
            }
            // A torn tail is a problem until the next start mends it (exit status 1), so the
            // last line does not say plain `OK` (left in session 39's note: `OK` with exit
            // status 1).
            let verdict = match torn_tail {
                Some(start_does) => format!(
                    "NOT OK until the exchange's next start {start_does} (above): up to it, the money reconciles"
                ),
                None => "OK: the money reconciles".to_string(),
            };
            let _ = writeln!(
                out,
                "{verdict}{outcomes}{}",
                if self.payouts_checked {
                    " (payouts checked against the configuration)"
                } else {
                    ""
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::segments;

    /// A stretch of `generation` whose auctions of each `(vertical, models)` came in order.
    fn stretch(at: usize, generation: u64, next: bool, seen: &[(&str, &str)]) -> Stretch {
        let mut s = Stretch::new((at, format!("seq {at}")), generation, next);
        for (v, m) in seen {
            let models: serde_json::Value = serde_json::from_str(m).unwrap();
            s.saw(v, Some(&models).filter(|m| !m.is_null()));
        }
        s
    }

    /// Round 86b: after thousands of reloads the summary named every generation.
    #[test]
    fn the_earlier_sales_name_a_bounded_number_of_generations_and_count_the_rest() {
        let mut earlier = BTreeMap::new();
        for g in 1..=400u64 {
            earlier.insert((1, g), (2, u64::from(g % 2 == 0)));
        }
        let line = earlier_sales_named(&earlier);
        assert!(
            line.starts_with("2 of generation 1, 2 of generation 2, 1 of them test, "),
            "{line}"
        );
        assert_eq!(
            line.matches(" of generation ").count(),
            EARLIER_GENERATIONS_NAMED_MAX
        );
        // 392 generations more, 784 sales, half of the generations with a test sale.
        assert!(
            line.ends_with(", and 784 of 392 more generations, 196 of them test"),
            "{line}"
        );
        assert!(line.len() < 300, "{} bytes: {line}", line.len());

        // At the bound, every generation is named and nothing is counted together.
        let few: BTreeMap<_, _> = earlier
            .into_iter()
            .take(EARLIER_GENERATIONS_NAMED_MAX)
            .collect();
        let line = earlier_sales_named(&few);
        assert_eq!(
            line.matches(" of generation ").count(),
            EARLIER_GENERATIONS_NAMED_MAX
        );
        assert!(!line.contains("more"), "{line}");

        // One past it, named by start when there were several.
        let mut two_starts = few;
        two_starts.insert((2, 1), (5, 0));
        let line = earlier_sales_named(&two_starts);
        assert!(
            line.starts_with("2 of generation 1 after start 1, "),
            "{line}"
        );
        assert!(line.ends_with(", and 5 of 1 more generation"), "{line}");
    }

    /// Round 79a: a run goes back over model swaps, and stops at anything the ledger
    /// cannot tell from a reload.
    #[test]
    fn the_latest_run_goes_back_over_model_swaps_only() {
        let m1 = r#"{"realization":"m1"}"#;
        let m2 = r#"{"realization":"m2"}"#;
        let at = |stretches: &[Stretch]| latest_run(stretches).0 .0;
        // No model, then m1, then m2 (a vertical with auctions on both sides): one run.
        let swaps = [
            stretch(0, 1, false, &[("v", "null")]),
            stretch(5, 2, true, &[("v", m1), ("v", m1)]),
            stretch(9, 3, true, &[("v", m2)]),
        ];
        assert_eq!(latest_run(&swaps), ((0, "seq 0".into()), 1));
        // The same models on both sides: a reload.
        let reload = [
            stretch(0, 1, false, &[("v", m1)]),
            stretch(5, 2, true, &[("v", m1)]),
        ];
        assert_eq!(at(&reload), 5);
        // A generation skipped (a reload or swap with no auction between): not joined.
        let gap = [
            stretch(0, 1, false, &[("v", m1)]),
            stretch(5, 3, false, &[("v", m2)]),
        ];
        assert_eq!(at(&gap), 5);
        // After a flush or a start (`next` false), or generations starting again.
        let restart = [
            stretch(0, 1, false, &[("v", m1)]),
            stretch(5, 2, false, &[("v", m2)]),
        ];
        assert_eq!(at(&restart), 5);
        // Other models only for a vertical without auctions before: cannot tell.
        let other = [
            stretch(0, 1, false, &[("u", m1)]),
            stretch(5, 2, true, &[("v", m2), ("u", m1)]),
        ];
        assert_eq!(at(&other), 5);
        // The swap is judged by the last auction before and the first after it.
        let last_first = [
            stretch(0, 1, false, &[("v", m2), ("v", m1)]),
            stretch(5, 2, true, &[("v", m1), ("v", m2)]),
        ];
        assert_eq!(at(&last_first), 5);
        // A run of swaps stops at the reload before it.
        let chain = [
            stretch(0, 1, false, &[("v", m1)]),
            stretch(3, 2, true, &[("v", m1)]),
            stretch(5, 3, true, &[("v", m2)]),
            stretch(9, 4, true, &[("v", m1)]),
        ];
        assert_eq!(latest_run(&chain), ((3, "seq 3".into()), 2));
        // Kept as the pass keeps them: what the run cannot reach back to is dropped.
        let mut kept = Vec::new();
        for s in chain {
            push_stretch(&mut kept, s);
        }
        assert_eq!(kept.len(), 3);
        assert_eq!(latest_run(&kept), ((3, "seq 3".into()), 2));
    }

    /// Writes `records` as a framed segment in a fresh directory.
    fn ledger(records: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let out = segments::frame_all(records);
        std::fs::write(dir.path().join(segments::segment_name(1)), out).unwrap();
        dir
    }

    const AUCTION: &str = r#"{"type":"auction","v":3,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","test":false,"direct":false,"reserve_micros":1000000,"skipped":{"total":0,"by_reason":{}},"buyers":[{"buyer":"b","outcome":"bid","bid_micros":10000000}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}"#;
    const SALE: &str = r#"{"type":"sale","v":3,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_b","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0}"#;

    /// `ledger verify` reads a running exchange's ledger several times: the chain check,
    /// the reconciliation, the report it checks the sales against. A sale appended between
    /// two readings made it fail a ledger that reconciles (black-box round 19); every
    /// reading now stops at the last record the chain check saw.
    #[test]
    fn every_reading_stops_at_the_record_the_chain_check_saw_last() {
        let auction_2 = AUCTION.replace("au_1", "au_2").replace("pg_1", "pg_2");
        let sale_2 = SALE
            .replace("au_1", "au_2")
            .replace("pg_1", "pg_2")
            .replace("ld_b", "ld_c");
        let dir = ledger(&[AUCTION, SALE, &auction_2, &sale_2]);
        let r = reconcile_upto(dir.path(), None, Some(2)).unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert_eq!(r.totals["USD"].0, 1, "the sale after seq 2 is not read");
        let all = reconcile(dir.path(), None).unwrap();
        assert!(all.mismatches.is_empty(), "{:?}", all.mismatches);
        assert_eq!(all.totals["USD"].0, 2);
        // The text reading stops there too.
        let text = segments::read_all(dir.path()).unwrap();
        let upto = segments::upto_seq(&text, 2);
        assert_eq!(upto.lines().count(), 2);
        assert_eq!(upto.lines().last().and_then(segments::line_seq), Some(2));
        assert_eq!(segments::upto_seq(&text, 9), text);
        assert_eq!(segments::upto_seq(&text, 0), "");
    }

    /// Black-box round 50: a sale's `bid_micros` (and its margin) changed and the chain
    /// rewritten passed, though its auction and its `post_sent` held the true price.
    #[test]
    fn a_sale_charging_other_than_the_bid_it_was_sent_at_is_a_mismatch() {
        let sent = r#"{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_b","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":10000000,"test":false}"#;
        let r = reconcile(ledger(&[AUCTION, sent, SALE]).path(), None).unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        let more = SALE
            .replace(r#""bid_micros":10000000"#, r#""bid_micros":11000000"#)
            .replace(r#""margin_micros":2000000"#, r#""margin_micros":3000000"#);
        let r = reconcile(ledger(&[AUCTION, sent, &more]).path(), None).unwrap();
        assert_eq!(r.mismatches.len(), 3, "{:?}", r.mismatches);
        assert!(r.mismatches[0].contains(
            "bid_micros 11000000 differs from the price its delivery was sent at (post_sent, attempt 0: 10000000)"
        ), "{:?}", r.mismatches);
        assert!(
            r.mismatches[1].contains(
                "bid_micros 11000000 differs from the winning bid the auction recorded (10000000)"
            ),
            "{:?}",
            r.mismatches
        );
        assert!(
            r.mismatches[2].contains(
                "bid_micros 11000000 differs from the buyer's bid in its auction (10000000)"
            ),
            "{:?}",
            r.mismatches
        );
        assert!(r.failed());
    }

    /// Black-box round 51: a fallback's sale relabelled as the winner's attempt at the
    /// winner's bid, and a fallback's sale with its bid forged and its `post_sent`
    /// removed (each with the chain rewritten), passed. A sale is checked against the
    /// delivery's buyer, the auction's winner (attempt 0), and the buyer's own bid in
    /// the auction, whatever its attempt.
    /// Black-box round 57a: a sale's `test` flipped (its money left the report, and the
    /// start left it out of the caps), its `seller` changed to another seller, or its
    /// `windows` moved to yesterday (freeing today's budget), each with the chain
    /// rewritten, passed `verify`. The sale must say what its delivery and its auction
    /// say.
    #[test]
    fn a_sale_whose_test_seller_or_windows_differ_from_its_delivery_is_a_mismatch() {
        let w =
            r#""windows":{"hour_start_ms":1796288400000,"day":739953,"week":105707,"month":24291}"#;
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"b","outcome":"bid","bid_micros":10000000}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}"#;
        let sent = format!(
            r#"{{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_1","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":10000000,"test":false,{w}}}"#
        );
        let sale = format!(
            r#"{{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0,{w}}}"#
        );
        let r = reconcile(ledger(&[auction, &sent, &sale]).path(), None).unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        for (forged, said) in [
            (
                sale.replace(r#""test":false"#, r#""test":true"#),
                vec![
                    "test is true, but its delivery (post_sent, attempt 0) was not a test lead's",
                    "test is true, but its auction was not a test lead's",
                ],
            ),
            (
                sale.replace(r#""seller":"s""#, r#""seller":"s2""#),
                vec![
                    "its delivery (post_sent, attempt 0) was of seller s's lead, not of the seller the sale pays",
                    "its auction was seller s's, not the seller the sale pays",
                ],
            ),
            (
                sale.replace(r#""day":739953"#, r#""day":739952"#),
                vec!["its cap windows differ from those its delivery was sent in (post_sent, attempt 0)"],
            ),
        ] {
            let r = reconcile(ledger(&[auction, &sent, &forged]).path(), None).unwrap();
            let all = r.mismatches.join("\n");
            for s in said {
                assert!(all.contains(s), "{s}: {all}");
            }
        }
    }

    #[test]
    fn a_fallback_sale_forged_as_the_winner_or_without_its_delivery_is_a_mismatch() {
        let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"w","outcome":"bid","bid_micros":6000000},{"buyer":"f","outcome":"bid","bid_micros":5800000}],"winner":"w","bid_micros":6000000,"seller_price_micros":4800000,"took_us":5}"#;
        let sent = |buyer: &str, attempt: u32, price: i64| {
            format!(
                r#"{{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"{buyer}","attempt":{attempt},"price_micros":{price},"test":false}}"#
            )
        };
        let rejected = r#"{"type":"post_attempt","v":5,"generation":1,"at":"2026-11-29T10:00:01.100Z","lead_id":"ld_1","auction_id":"au_1","buyer":"w","attempt":0,"outcome":"rejected"}"#;
        let sale = |attempt: u32, bid: i64| {
            format!(
                r#"{{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"f","vertical":"v","currency":"USD","test":false,"bid_micros":{bid},"seller_price_micros":4800000,"margin_micros":{},"attempt":{attempt}}}"#,
                bid - 4_800_000
            )
        };
        let (w0, f1) = (sent("w", 0, 6_000_000), sent("f", 1, 5_800_000));
        // The honest fallback sale reconciles.
        let honest = sale(1, 5_800_000);
        let r = reconcile(ledger(&[auction, &w0, rejected, &f1, &honest]).path(), None).unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        // Relabelled as attempt 0 at the winner's bid.
        let relabelled = sale(0, 6_000_000);
        let r = reconcile(
            ledger(&[auction, &w0, rejected, &f1, &relabelled]).path(),
            None,
        )
        .unwrap();
        let all = r.mismatches.join("\n");
        assert!(
            all.contains(
                "attempt 0 was sent to buyer w (post_sent), not to the buyer the sale charges"
            ),
            "{all}"
        );
        assert!(all.contains("the auction's winner is buyer w"), "{all}");
        assert!(
            all.contains(
                "bid_micros 6000000 differs from the buyer's bid in its auction (5800000)"
            ),
            "{all}"
        );
        // Its bid forged and its delivery's record removed.
        let forged = sale(1, 7_000_000);
        let r = reconcile(ledger(&[auction, &w0, rejected, &forged]).path(), None).unwrap();
        let all = r.mismatches.join("\n");
        // Round 52: the missing record is named too, and so is a sale on an attempt the
        // ledger records as failed, and one to a buyer whose line is no bid.
        assert!(
            all.contains("no post_sent for attempt 1: every delivery is recorded before it leaves"),
            "{all}"
        );
        // Round 57a: the same sale relabelled format 3 (before `post_sent`) still
        // carries a field of format 4 (`windows`), and is held to it.
        let v3 = sale(1, 5_800_000).replace(r#""v":5"#, r#""v":3"#).replace(
            r#""attempt":1}"#,
            r#""attempt":1,"windows":{"hour_start_ms":0,"day":1,"week":1,"month":1}}"#,
        );
        assert!(v3.contains(r#""v":3"#) && v3.contains("windows"), "{v3}");
        let r = reconcile(ledger(&[auction, &w0, rejected, &v3]).path(), None).unwrap();
        assert!(
            r.mismatches.join("\n").contains(
                "no post_sent for attempt 1: every delivery is recorded before it leaves"
            ),
            "{:?}",
            r.mismatches
        );
        let winner = sale(0, 6_000_000).replace(r#""buyer":"f""#, r#""buyer":"w""#);
        let r = reconcile(ledger(&[auction, &w0, rejected, &winner]).path(), None).unwrap();
        let said = r.mismatches.join("\n");
        assert!(
            said.contains("sold at attempt 0, which the ledger records as rejected (post_attempt)"),
            "{said}"
        );
        let timed_out = auction.replace(
            r#"{"buyer":"f","outcome":"bid""#,
            r#"{"buyer":"f","outcome":"timeout""#,
        );
        assert_ne!(timed_out, auction);
        let r = reconcile(
            ledger(&[&timed_out, &w0, rejected, &f1, &honest]).path(),
            None,
        )
        .unwrap();
        let said = r.mismatches.join("\n");
        assert!(
            said.contains("its auction recorded no bid from buyer f"),
            "{said}"
        );
        assert!(
            all.contains(
                "bid_micros 7000000 differs from the buyer's bid in its auction (5800000)"
            ),
            "{all}"
        );
    }

    #[test]
    fn a_pre_send_without_an_outcome_is_delivered_outcome_unknown() {
        let dir = ledger(&[
            AUCTION,
            r#"{"type":"post_sending","v":3,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_b","auction_id":"au_1","buyer":"b","attempt":0}"#,
            SALE,
            r#"{"type":"pre_send","v":3,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_a","auction_id":"au_2","buyer":"b","attempt":0}"#,
        ]);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert_eq!(r.outcome_unknown.len(), 1, "{:?}", r.outcome_unknown);
        assert!(r.outcome_unknown[0].contains("seg-00000001.jsonl seq 4: lead_id ld_a attempt 0 to buyer b: delivered, outcome unknown"));
        // Listed, not a failure: what a crash mid-delivery leaves.
        assert!(!r.failed());
        assert!(r.render().contains("OUTCOME UNKNOWN: "));
        assert!(r.render().contains("1 delivery(ies) with outcome unknown"));
        // The last record: on a running exchange it may be waiting for its buyer.
        assert!(
            r.outcome_unknown[0].contains("sent 0.0 s before the ledger's last record"),
            "{:?}",
            r.outcome_unknown
        );
        assert_eq!(r.possibly_in_flight, 1);
        assert!(r.render().contains("1 of them sent so recently"));
    }

    /// Black-box round 21: `verify` on a running exchange's ledger told finance to settle a
    /// delivery that was only in flight. One sent within a post's life of the ledger's
    /// last record, with no stop (`flush`) after it, is said to be possibly in flight; an
    /// older one, or one a stop or start followed, is not.
    #[test]
    fn a_recent_delivery_without_an_outcome_may_be_in_flight() {
        let send = |lead: &str, at: &str| {
            format!(
                r#"{{"type":"post_sent","v":5,"generation":1,"at":"{at}","lead_id":"{lead}","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":1,"test":false}}"#
            )
        };
        let old = send("ld_old", "2026-11-29T10:00:00.000Z");
        let recent = send("ld_new", "2026-11-29T10:05:00.000Z");
        let last = AUCTION.replace("10:00:00.000Z", "10:05:03.000Z");
        let dir = ledger(&[&old, &recent, &last]);
        let r = reconcile(dir.path(), None).unwrap();
        assert_eq!(r.outcome_unknown.len(), 2, "{:?}", r.outcome_unknown);
        assert_eq!(r.possibly_in_flight, 1);
        assert!(r.outcome_unknown[0].ends_with("delivered, outcome unknown"));
        assert!(r.outcome_unknown[1].contains("sent 3.0 s before the ledger's last record"));
        // A stop after it: not in flight, whatever its age.
        let flush = r#"{"type":"flush","v":5,"generation":1,"at":"2026-11-29T10:05:04.000Z","start":false}"#;
        let dir = ledger(&[&old, &recent, &last, flush]);
        let r = reconcile(dir.path(), None).unwrap();
        assert_eq!(r.outcome_unknown.len(), 2);
        assert_eq!(r.possibly_in_flight, 0, "{:?}", r.outcome_unknown);
        // A test lead's delivery is in no cap and never billed: not one to settle
        // (black-box round 31).
        let test = old
            .replace(r#""test":false"#, r#""test":true"#)
            .replace("ld_old", "ld_test");
        let dir = ledger(&[&test, &old, &last, flush]);
        let r = reconcile(dir.path(), None).unwrap();
        assert_eq!(r.outcome_unknown.len(), 1, "{:?}", r.outcome_unknown);
        assert!(r.outcome_unknown[0].contains("ld_old"));
    }

    /// Black-box round 12: a skipped sale (a newer version) that a refund depends on made
    /// the refund a mismatch, and the output said RECONCILIATION FAILED without the
    /// NOT RECONCILED line that names the skipped record.
    #[test]
    fn a_failure_with_skipped_records_names_them_too() {
        let newer_sale = SALE.replace(r#""v":3"#, r#""v":99"#);
        let refund = r#"{"type":"refund","v":4,"generation":1,"at":"2026-11-29T11:00:00.000Z","lead_id":"ld_b","auction_id":"au_1","buyer":"b","seller":"s","vertical":"v","currency":"USD","buyer_refund_micros":10000000,"seller_clawback_micros":8000000,"margin_reversed_micros":2000000,"sold_at_ms":0,"return_window_days":7}"#;
        let dir = ledger(&[AUCTION, &newer_sale, refund]);
        let r = reconcile(dir.path(), None).unwrap();
        let text = r.render();
        assert!(r.incomplete(), "{text}");
        assert!(
            text.contains("NOT RECONCILED: 1 record(s) skipped"),
            "{text}"
        );
        assert!(r.failed(), "a refund of a sale not read: {text}");
        assert!(
            text.contains("some may come from the 1 record(s) skipped"),
            "{text}"
        );
    }

    /// Black-box round 12: with a line that cannot be read, verify said deliveries with no
    /// outcome were "not listed" and then listed one, and that the money reconciled
    /// though the unreadable line's sale was missing from it.
    #[test]
    fn a_ledger_that_does_not_verify_lists_no_open_delivery_and_names_unread_lines() {
        let dir = ledger(&[
            AUCTION,
            r#"{"type":"pre_send","v":3,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_a","auction_id":"au_2","buyer":"b","attempt":0}"#,
            r#"{"type":"sale","v":3, not json"#,
        ]);
        let r = reconcile(dir.path(), None).unwrap();
        let text = r.render_with(false, None);
        assert!(!text.contains("OUTCOME UNKNOWN: "), "{text}");
        // A whole line that is not a record is a problem in its own right (black-box
        // round 43), named with why.
        assert!(
            text.contains("PROBLEM: seg-00000001.jsonl:3: not a readable record: "),
            "{text}"
        );
        assert!(
            text.contains("RECONCILIATION FAILED: 1 line(s) that are not readable records (PROBLEM), 0 mismatch(es), deliveries with no outcome not listed (the ledger does not verify)"),
            "{text}"
        );
        assert!(!text.contains("its money reconciles"), "{text}");
        // The same ledger read as verified lists the open delivery.
        assert!(r.render().contains("OUTCOME UNKNOWN: "));
    }

    #[test]
    fn newer_versions_are_skipped_and_reported_unknown_types_ignored() {
        let dir = ledger(&[
            AUCTION,
            SALE,
            r#"{"type":"sale","v":99,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_x","bid_micros":1,"seller_price_micros":5,"margin_micros":0}"#,
            r#"{"type":"model_swapped","v":3,"generation":1,"at":"2026-11-29T10:00:03.000Z","lead_id":"ld_b"}"#,
        ]);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(!r.failed(), "{}", r.render());
        assert!(r.incomplete(), "skipped money is never called reconciled");
        assert!(
            r.render()
                .contains("NOT RECONCILED: 2 record(s) skipped (1 of format version 99, 1 of type \"model_swapped\""),
            "{}",
            r.render()
        );
        assert_eq!(r.sales, 1);
        let notes = r.stats.notes().join("\n");
        assert!(
            notes.contains("1 record(s) of format version 99 skipped"),
            "{notes}"
        );
        assert!(
            notes.contains("1 record(s) of type \"model_swapped\" ignored"),
            "{notes}"
        );
    }

    /// An auction (with its currency) and its sale, of `lead` (`au_<lead>`, `pg_<lead>`),
    /// sold to `b` at `bid` with the seller paid `price`, `sold_at` the sale's `at`. The
    /// sale is of format 3, before `post_sent`: these ledgers are about the money, and a
    /// sale of format 4 or later needs its delivery's record too.
    fn sold(lead: &str, currency: &str, bid: i64, price: i64, sold_at: &str) -> [String; 2] {
        let margin = i128::from(bid) - i128::from(price);
        [
            format!(
                r#"{{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_{lead}","ping_id":"pg_{lead}","seller":"s","vertical":"v","currency":"{currency}","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{{"buyer":"b","outcome":"bid","bid_micros":{bid}}}],"winner":"b","bid_micros":{bid},"seller_price_micros":{price},"took_us":5}}"#
            ),
            format!(
                r#"{{"type":"sale","v":3,"generation":1,"at":"{sold_at}","lead_id":"ld_{lead}","ping_id":"pg_{lead}","auction_id":"au_{lead}","seller":"s","buyer":"b","vertical":"v","currency":"{currency}","test":false,"bid_micros":{bid},"seller_price_micros":{price},"margin_micros":{margin},"attempt":0}}"#
            ),
        ]
    }

    /// The `returned` disposition and `refund` of a sale made by [`sold`], at `at`.
    fn refunded(lead: &str, bid: i64, price: i64, at: &str) -> [String; 2] {
        [
            format!(
                r#"{{"type":"refund","v":5,"generation":1,"at":"{at}","lead_id":"ld_{lead}","auction_id":"au_{lead}","buyer":"b","seller":"s","vertical":"v","currency":"USD","buyer_refund_micros":{bid},"seller_clawback_micros":{price},"margin_reversed_micros":{},"sold_at_ms":0,"return_window_days":7}}"#,
                bid - price
            ),
            format!(
                r#"{{"type":"disposition","v":5,"generation":1,"at":"{at}","lead_id":"ld_{lead}","auction_id":"au_{lead}","buyer":"b","seller":"s","vertical":"v","outcome":"returned","test":false}}"#
            ),
        ]
    }

    /// Black-box round 93b: a `returned` disposition whose refund was removed (the chain
    /// recomputed) verified, and the report counted one return fewer.
    #[test]
    fn a_return_of_a_paid_lead_without_its_refund_is_a_mismatch() {
        let mut records = Vec::new();
        records.extend(sold(
            "1",
            "USD",
            10_000_000,
            8_000_000,
            "2026-11-29T10:00:01.000Z",
        ));
        let [refund, returned] = refunded("1", 10_000_000, 8_000_000, "2026-11-29T11:00:00.000Z");
        records.push(refund.clone());
        records.push(returned.clone());
        let whole = ledger_of(&records);
        let r = reconcile(whole.path(), None).unwrap();
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        records.retain(|l| *l != refund);
        let edited = ledger_of(&records);
        let r = reconcile(edited.path(), None).unwrap();
        assert_eq!(r.mismatches.len(), 1, "{:?}", r.mismatches);
        assert!(
            r.mismatches[0].contains("a returned disposition of a paid lead with no refund"),
            "{:?}",
            r.mismatches
        );
    }

    fn ledger_of(records: &[String]) -> tempfile::TempDir {
        let refs: Vec<&str> = records.iter().map(String::as_str).collect();
        ledger(&refs)
    }

    /// Black-box round 41: two sales whose revenue passes `i64::MAX` (no field does) made
    /// the report saturate at `i64::MAX`, and verify then called the untouched ledger a
    /// MISMATCH (revenue is not payouts + margin). Every sum is exact now.
    #[test]
    fn sums_past_i64_max_are_exact_and_an_untouched_ledger_reconciles() {
        let big = 5_000_000_000_000_000_000i64;
        let mut records = Vec::new();
        records.extend(sold(
            "1",
            "USD",
            big,
            big - 1_000_000,
            "2026-11-29T10:00:01.000Z",
        ));
        records.extend(sold(
            "2",
            "USD",
            big,
            big - 2_000_000,
            "2026-11-29T10:00:02.000Z",
        ));
        // A sale at i64::MAX, refunded: the refunds' sum and the net figures stay exact.
        records.extend(sold(
            "3",
            "USD",
            i64::MAX,
            i64::MAX - 3,
            "2026-11-29T10:00:03.000Z",
        ));
        records.extend(refunded(
            "3",
            i64::MAX,
            i64::MAX - 3,
            "2026-11-29T11:00:00.000Z",
        ));
        let dir = ledger_of(&records);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(!r.failed(), "{}", r.render());
        let revenue = 2 * i128::from(big);
        assert_eq!(
            r.totals["USD"],
            (3, revenue, revenue - 3_000_000, 3_000_000),
            "{}",
            r.render()
        );
        assert_eq!(r.refunds["USD"], (1, i128::from(i64::MAX)));
        let text = r.render();
        assert!(
            text.contains("USD: 3 sale(s), revenue 19223372036854.775807 - refunds 9223372036854.775807 = sales 10000000000000.00; payouts 9999999999997.00, margin 3.00"),
            "{text}"
        );
        assert!(text.contains("OK: the money reconciles"), "{text}");
    }

    /// Black-box round 41: a money field that is not an integer fitting `i64` was read as
    /// 0 (a sale of `1e22` dropped out of the money, and verify's message quoted 0). It is
    /// a PROBLEM naming the record's seq, type and field, and verify fails.
    #[test]
    fn a_malformed_money_field_is_a_problem_naming_the_record_and_the_field() {
        for (bad, shown) in [
            ("1e22", "1e+22"),
            ("10000000000000000000000", "1e+22"),
            ("20000000.5", "20000000.5"),
            (r#""20000000""#, r#""20000000""#),
            ("9223372036854775808", "9223372036854775808"),
            ("null", "null"),
        ] {
            let [auction, sale] = sold(
                "1",
                "USD",
                20_000_000,
                16_000_000,
                "2026-11-29T10:00:01.000Z",
            );
            let sale = sale.replace(
                r#""bid_micros":20000000"#,
                &format!(r#""bid_micros":{bad}"#),
            );
            let dir = ledger_of(&[auction, sale]);
            let r = reconcile(dir.path(), None).unwrap();
            let text = r.render();
            assert!(r.failed(), "{bad}: {text}");
            assert!(
                text.contains(&format!("PROBLEM: seg-00000001.jsonl seq 2: sale record: bid_micros is {shown}: a money field must be a whole number of micros")),
                "{bad}: {text}"
            );
            assert!(
                text.contains("RECONCILIATION FAILED: 1 record(s) with a malformed money field or time (PROBLEM), 0 mismatch(es)"),
                "{bad}: {text}"
            );
            // Left out of the money, never counted as 0.
            assert!(!text.contains("bid_micros 0"), "{bad}: {text}");
            assert!(r.totals.is_empty(), "{bad}: {text}");
        }
        // In a refund and in an auction's buyer line too; a missing optional field (an
        // auction without a winner has no bid_micros) is no problem.
        let [auction, sale] = sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T10:00:01.000Z",
        );
        let [refund, returned] = refunded("1", 20_000_000, 16_000_000, "2026-11-29T11:00:00.000Z");
        let refund = refund.replace(
            r#""seller_clawback_micros":16000000"#,
            r#""seller_clawback_micros":1.6e7"#,
        );
        let unsold = AUCTION
            .replace("au_1", "au_9")
            .replace(r#""bid_micros":10000000}]"#, r#""bid_micros":"10"}]"#)
            .replace(
                r#","winner":"b","bid_micros":10000000,"seller_price_micros":8000000"#,
                "",
            );
        let dir = ledger_of(&[auction, sale, refund, returned, unsold]);
        let r = reconcile(dir.path(), None).unwrap();
        let text = r.render();
        assert!(text.contains("PROBLEM: seg-00000001.jsonl seq 3: refund record: seller_clawback_micros is 16000000.0"), "{text}");
        assert!(
            text.contains(
                r#"PROBLEM: seg-00000001.jsonl seq 5: auction record: buyers[0].bid_micros is "10""#
            ),
            "{text}"
        );
        assert_eq!(r.stats.malformed_money.len(), 2, "{text}");
    }

    /// Black-box round 43: a sale's line made unparseable by one field (`1e400`, past a
    /// double), its chain recomputed, was skipped as "not readable" and verify passed.
    /// Such a whole line is a `PROBLEM` and fails; only a last line cut short (no
    /// newline) is skipped.
    #[test]
    fn a_whole_line_that_is_not_a_readable_record_fails_verify() {
        for (bad, why) in [
            (r#""bid_micros":1e400"#, "number out of range"),
            (r#""bid_micros":20000000,"x":1e999"#, "number out of range"),
            (
                r#""bid_micros":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#,
                "recursion limit",
            ),
        ] {
            let [auction, sale] = sold(
                "1",
                "USD",
                20_000_000,
                16_000_000,
                "2026-11-29T10:00:01.000Z",
            );
            let sale = sale.replace(r#""bid_micros":20000000"#, bad);
            let dir = ledger_of(&[auction, sale]);
            let r = reconcile(dir.path(), None).unwrap();
            let text = r.render();
            assert!(r.failed(), "{bad}: {text}");
            assert!(
                text.contains("PROBLEM: seg-00000001.jsonl:2: not a readable record: ")
                    && text.contains(why),
                "{bad}: {text}"
            );
            assert!(
                text.contains(
                    "RECONCILIATION FAILED: 1 line(s) that are not readable records (PROBLEM)"
                ),
                "{bad}: {text}"
            );
        }
        // A last line cut short is a torn write: skipped, not a problem.
        let [auction, sale] = sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T10:00:01.000Z",
        );
        let dir = ledger_of(&[auction]);
        let seg = dir.path().join(segments::segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&sale.as_bytes()[..40]);
        std::fs::write(&seg, bytes).unwrap();
        let r = reconcile(dir.path(), None).unwrap();
        assert!(r.stats.malformed_lines.is_empty(), "{}", r.render());
        assert_eq!(r.stats.unreadable.len(), 1, "{}", r.render());
    }

    /// Black-box round 41: a sale in another currency than its auction ran in and its
    /// quote was made in reconciled, its money counted in the wrong currency.
    #[test]
    fn a_sale_in_another_currency_than_its_auction_and_quote_is_a_mismatch() {
        let [auction, sale] = sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T10:00:01.000Z",
        );
        let quote = r#"{"type":"quote_opened","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","ping_id":"pg_1","auction_id":"au_1","seller":"s","vertical":"v","test":false,"price_micros":16000000,"currency":"USD","expires_at_ms":1,"auctioned_at_ms":0,"lead":{"state":"TX","income_micros":"high"},"ranked":[]}"#.to_string();
        let dir = ledger_of(&[auction.clone(), quote.clone(), sale.clone()]);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(!r.failed(), "{}", r.render());
        let eur = sale.replace(r#""currency":"USD""#, r#""currency":"EUR""#);
        let dir = ledger_of(&[auction.clone(), quote, eur.clone()]);
        let r = reconcile(dir.path(), None).unwrap();
        assert_eq!(r.mismatches.len(), 1, "{}", r.render());
        assert!(
            r.mismatches[0].contains("seg-00000001.jsonl seq 3: the sale is in currency EUR but its auction ran in USD and its quote (quote_opened at seg-00000001.jsonl seq 2) was in USD (lead_id ld_1"),
            "{}",
            r.render()
        );
        // An auction written before auctions carried their currency, and no quote:
        // nothing to compare with.
        let old = auction.replace(r#""currency":"USD","#, "");
        let dir = ledger_of(&[old, eur]);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(!r.failed(), "{}", r.render());
    }

    /// Black-box round 41: the exchange refunded a return whose sale was dated after it
    /// (the clock was stepped back) and verify failed the refund, "refunded -3595210 ms
    /// after the sale". The ledger's order proves the sale came first: the time since it
    /// is clamped at 0, as the live rule does. A refund before its sale in the ledger is a
    /// mismatch.
    #[test]
    fn a_refund_dated_before_its_sale_is_inside_the_window_if_the_sale_comes_first() {
        let mut records = Vec::new();
        records.extend(sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T11:00:00.000Z",
        ));
        records.extend(refunded(
            "1",
            20_000_000,
            16_000_000,
            "2026-11-29T10:00:04.790Z",
        ));
        let dir = ledger_of(&records);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(!r.failed(), "{}", r.render());
        assert_eq!(r.refunds["USD"], (1, 20_000_000));
        // Past the window it still fails, and a refund written before its sale fails.
        let mut records = Vec::new();
        records.extend(sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T11:00:00.000Z",
        ));
        records.extend(refunded(
            "1",
            20_000_000,
            16_000_000,
            "2026-12-06T11:00:00.001Z",
        ));
        let dir = ledger_of(&records);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(
            r.mismatches.iter().any(|m| m.contains(
                "refunded 604800001 ms after the sale, outside its return window of 7 day(s)"
            )),
            "{}",
            r.render()
        );
        let [auction, sale] = sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T11:00:00.000Z",
        );
        let [refund, returned] = refunded("1", 20_000_000, 16_000_000, "2026-11-29T12:00:00.000Z");
        let dir = ledger_of(&[auction, refund, returned, sale]);
        let r = reconcile(dir.path(), None).unwrap();
        assert!(
            r.mismatches.iter().any(|m| m.contains("seg-00000001.jsonl seq 2: a refund written before its sale (at seg-00000001.jsonl seq 4)")),
            "{}",
            r.render()
        );
    }

    #[test]
    fn a_fallback_without_its_earlier_attempt_and_a_duplicate_sale_are_mismatches() {
        let fallback = SALE.replace("\"attempt\":0", "\"attempt\":1");
        let dir = ledger(&[AUCTION, &fallback, SALE]);
        let r = reconcile(dir.path(), None).unwrap();
        let all = r.mismatches.join("\n");
        assert!(
            all.contains("sold at attempt 1 but attempt 0 has no post_attempt record"),
            "{all}"
        );
        assert!(
            all.contains("lead sold twice (first sale at seg-00000001.jsonl seq 2)"),
            "{all}"
        );
        assert!(all.contains("ping_id pg_1 sold twice"), "{all}");
    }
}
