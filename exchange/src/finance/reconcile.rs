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

/// Whether generations must be named by the start they came after: when the sales
/// decided before the latest run, and the latest run itself (`current_start`), came after
/// more than one start (generations start again at 1 at every start).
fn name_starts(earlier: &BTreeMap<(usize, u64), (u64, u64)>, current_start: usize) -> bool {
    earlier
        .keys()
        .map(|(start, _)| *start)
        .chain(std::iter::once(current_start))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        > 1
}

/// The summary's count of sales decided before the latest run: the first
/// [`EARLIER_GENERATIONS_NAMED_MAX`] generations named, then the rest counted.
/// `several`: name each generation by its start ([`name_starts`]).
fn earlier_sales_named(earlier: &BTreeMap<(usize, u64), (u64, u64)>, several: bool) -> String {
    // Generations start again at 1 at every start (round 80a: one count per number mixed
    // the runs; round 110c: "generation 4" named the latest run on one line and an
    // earlier run's on the next): named by their start when there were several.
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
        // With several starts each item is a generation of one start (round 111a: "2 more
        // generations" counted generation 1 of two more starts).
        let generations = match (several, rest == 1) {
            (false, true) => "generation",
            (false, false) => "generations",
            (true, true) => "generation (counted per start)",
            (true, false) => "generations (counted per start: a number after two starts is two)",
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
    /// The start the latest run ([`current`](Self::current)) came after, as the keys of
    /// `earlier_sales` count starts.
    pub current_start: usize,
    pub stats: ReadStats,
}

/// The records of one generation within an [`Epoch`], and the serving models its
/// auctions name, per vertical: the first and the last seen.
struct GenSeen {
    /// Where its first record is (ordinal and place).
    first: (usize, String),
    first_models: HashMap<String, String>,
    last_models: HashMap<String, String>,
}

impl GenSeen {
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

    /// Whether a model swap, not a reload, made this generation out of `before` (the one
    /// numbered just before it, of the same epoch): a vertical whose auctions in both
    /// name other models (a reload never changes the models of a vertical it keeps; a
    /// swap changes nothing else). When the ledger cannot tell (no such vertical had
    /// auctions under both, a swap to the same models), it counts as a reload.
    fn continues(&self, before: &GenSeen) -> bool {
        self.first_models
            .iter()
            .any(|(v, m)| before.last_models.get(v).is_some_and(|b| b != m))
    }
}

/// Generations an [`Epoch`] keeps apart at most: past it, those before its latest run
/// are let go, and then the oldest (their sales are then counted as earlier, never
/// failed).
const EPOCH_GENERATIONS_MAX: usize = 4096;

/// The ledger's records between two `flush`es (a start's mark begins one at once; a
/// shutdown's, at the next record): one process's generations, numbered upward. A
/// generation changes at every reload and model swap; under load, records of
/// neighbouring generations interleave (an auction decided under one is written after a
/// post under the next: black-box round 119a), so records are grouped by generation,
/// not by where the number changes in the ledger.
struct Epoch {
    /// Its first record (ordinal and place; past the start's mark for a start).
    start: (usize, String),
    /// The generation of the flush that began it, for an epoch with no record yet.
    hint: u64,
    gens: BTreeMap<u64, GenSeen>,
    /// Generations below it were let go ([`EPOCH_GENERATIONS_MAX`]).
    floor: u64,
}

impl Epoch {
    fn new(start: (usize, String), hint: u64) -> Epoch {
        Epoch {
            start,
            hint,
            gens: BTreeMap::new(),
            floor: 0,
        }
    }

    /// A record of `generation` at `ordinal`: its generation's entry (made at its first
    /// record), or `None` for one let go.
    fn record(
        &mut self,
        generation: u64,
        ordinal: usize,
        place: impl FnOnce() -> String,
    ) -> Option<&mut GenSeen> {
        if generation < self.floor {
            return None;
        }
        if !self.gens.contains_key(&generation) && self.gens.len() >= EPOCH_GENERATIONS_MAX {
            let (_, first) = self.latest_run();
            let mut keep = self.gens.split_off(&first);
            while keep.len() >= EPOCH_GENERATIONS_MAX / 2 {
                keep.pop_first();
            }
            self.gens = keep;
            self.floor = self.gens.first_key_value().map_or(generation, |(g, _)| *g);
            if generation < self.floor {
                return None;
            }
        }
        Some(self.gens.entry(generation).or_insert_with(|| GenSeen {
            first: (ordinal, place()),
            first_models: HashMap::new(),
            last_models: HashMap::new(),
        }))
    }

    /// The newest generation it holds (its flush's for an epoch with no record).
    fn newest(&self) -> u64 {
        self.gens.last_key_value().map_or(self.hint, |(g, _)| *g)
    }

    /// Where its latest run begins (its first generation's first record) and that
    /// generation: the newest generation, joined to the ones numbered just before it
    /// while model swaps made them.
    fn latest_run(&self) -> ((usize, String), u64) {
        let Some((&top, _)) = self.gens.last_key_value() else {
            return (self.start.clone(), self.hint);
        };
        let mut g = top;
        while let (Some(before), Some(after)) = (
            g.checked_sub(1).and_then(|b| self.gens.get(&b)),
            self.gens.get(&g),
        ) {
            if !after.continues(before) {
                break;
            }
            g -= 1;
        }
        (self.gens[&g].first.clone(), g)
    }
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
    /// Position in the ledger (0-based, records read): a sale comes after it.
    ordinal: usize,
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

/// Most characters of one listed problem shown (the rest is cut, with `…`).
const LINE_SHOWN_MAX: usize = 1_024;

/// What `report` and `export` add to their notes when the ledger's own records disagree
/// (`verify`'s mismatches, without a configuration's payout checks): the figures count
/// the records as written, which a re-chained edit can make wrong while every checksum
/// holds (black-box round 171b: a sale's amount raised, a refund line duplicated, a sale
/// made a test lead, each with its chain recomputed, were counted with exit 0 and no word).
/// `None` when they agree, or when the reconciliation itself could not be read (the
/// figures' own read reports that).
pub fn unreconciled_note(dir: &Path, upto: Option<u64>) -> Option<String> {
    let r = reconcile_upto(dir, None, upto).ok()?;
    if !r.failed() {
        return None;
    }
    let problems =
        r.mismatches.len() + r.stats.malformed_money.len() + r.stats.malformed_lines.len();
    let first = r
        .mismatches
        .first()
        .or(r.stats.malformed_money.first())
        .or(r.stats.malformed_lines.first())
        .map(|m| proto::error::shown_text(m, LINE_SHOWN_MAX))
        .unwrap_or_default();
    Some(format!(
        "the money does NOT reconcile: {problems} problem(s) between the ledger's records (the first: {first}); these figures count the records as written: run `pingpost ledger verify` for every one"
    ))
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
    reconcile_between(dir, cfg, upto, || {})
}

/// [`reconcile_upto`], calling `between` after its first reading of the records and
/// before the report's (a test appends records there, as a running exchange does).
/// With no `upto`, the report reads up to the last record the first reading saw: a
/// running exchange's appends in between are not taken for a mismatch (black-box round
/// 222b: `pingpost train` and every background retraining refused a ledger under
/// traffic as not reconciling; round 19 was `ledger verify`'s, which gives `upto`).
fn reconcile_between(
    dir: &Path,
    cfg: Option<&Config>,
    upto: Option<u64>,
    between: impl FnOnce(),
) -> Result<Reconciliation, String> {
    let mut read_upto = 0u64;
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
    // ping_id -> place of a hold on a buyer's caps (`quote_reserved`): never a test
    // lead's.
    let mut held: HashMap<String, String> = HashMap::new();
    // Each delivery's buyer and the price it was sent at (`post_sent`, by lead and
    // attempt): the buyer's bid, which its sale must charge.
    let mut sent_to: HashMap<(String, u64), SentTo> = HashMap::new();
    // The ledger's runs: a run is one generation's auctions within one epoch (between
    // flushes: a start, or a shutdown; generations start again at 1 at a start), joined
    // to the generations numbered just before it while model swaps made them (a swap
    // makes a generation too, but changes no payout rule: see `GenSeen::continues`).
    let mut ordinal = 0usize;
    let mut after_flush = false;
    let mut epoch = Epoch::new((0, String::new()), 0);
    // Where each start's mark is (ordinals, in order).
    let mut starts: Vec<usize> = Vec::new();
    let stats = for_each_unverified_upto(dir, upto, |e: Entry| {
        read_upto = read_upto.max(e.seq);
        let generation = e
            .value
            .get("generation")
            .and_then(|g| g.as_u64())
            .unwrap_or(0);
        if after_flush {
            epoch = Epoch::new((ordinal, e.place()), generation);
        }
        after_flush = e.kind == "flush";
        if after_flush && e.value.get("start").and_then(|s| s.as_bool()) == Some(true) {
            // A start (its flush marks it, after a shutdown or a crash) begins a run: a
            // ledger that ends with one has an empty latest run, not the one before it.
            epoch = Epoch::new((ordinal + 1, e.place()), generation);
            starts.push(ordinal);
        } else if let Some(seen) = epoch.record(generation, ordinal, || e.place()) {
            if e.kind == "auction" {
                seen.saw(e.str("vertical"), e.value.get("models"));
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
            "quote_reserved" => {
                held.entry(e.str("ping_id").to_string())
                    .or_insert_with(|| e.place());
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
                        ordinal: here,
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
    let (run_start, first_gen) = epoch.latest_run();
    let last_gen = epoch.newest();
    let epoch_start = epoch.start.0;
    // How many starts came before the record at `ordinal`.
    let start_of = |ordinal: usize| starts.partition_point(|&s| s < ordinal);
    let mut out = Reconciliation {
        payouts_checked: cfg.is_some(),
        current: (ordinal > 0).then(|| (first_gen.min(last_gen), last_gen, run_start.1.clone())),
        current_start: start_of(run_start.0),
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
            // A test lead holds and counts in no cap: a sale made a test lead, its chain
            // recomputed, still has its real lead's hold and windows (black-box round
            // 227c: it passed, and the report left its amount out without a word).
            if let Some(at) = held.get(&s.ping).filter(|_| !s.ping.is_empty()) {
                m.push(format!(
                    "{}: test is true, but its quote held a buyer's caps ({at}: quote_reserved), which a test lead's never does ({})",
                    s.place, s.ids
                ));
            }
            if s.windows.is_some() {
                m.push(format!(
                    "{}: test is true, but it counts in cap windows, which a test lead's sale never does ({})",
                    s.place, s.ids
                ));
            }
        } else {
            // By the currency as the report names it (shown as its text allows), so the
            // two compare alike and the lines below print no raw control character
            // (black-box round 178a: a currency with a line break forged verify's lines,
            // and one shown otherwise by the report failed the reconciliation).
            let t = out.totals.entry(report::shown(&s.currency)).or_default();
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
        // Prices the exchange never writes: a bid of 0 or less (a bid of 0 is a pass), a
        // negative seller price, or a bid above the largest amount it takes (black-box
        // round 203b: a sale at -5.00, at 0.00, or at 9,223,372,036,854.775807, each
        // edited alike in every record with the chain recomputed, reconciled).
        if s.bid <= 0 || s.bid > proto::money::AMOUNT_MAX_MICROS {
            m.push(format!(
                "{}: bid_micros {} is a price the exchange never sells at (more than 0, at most {}) ({})",
                s.place,
                s.bid,
                proto::money::AMOUNT_MAX_MICROS,
                s.ids
            ));
        }
        if s.price < 0 {
            m.push(format!(
                "{}: seller_price_micros {} is negative: the exchange never pays a seller less than nothing ({})",
                s.place, s.price, s.ids
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
                // Written before the lead leaves, so before its sale (black-box round
                // 208a: a sale moved ahead of its auction and its delivery, the chain
                // recomputed, reconciled).
                if sent.ordinal > s.ordinal {
                    m.push(format!(
                        "{}: the sale comes before its delivery's record (post_sent, attempt {}), which is written before the lead leaves ({})",
                        s.place, s.attempt, s.ids
                    ));
                }
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
                if a.ordinal > s.ordinal {
                    m.push(format!(
                        "{}: the sale comes before its auction's record ({})",
                        s.place, s.ids
                    ));
                }
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
            // Of the latest run: decided in the last epoch, under one of the run's
            // generations (records of the generation before it may come later in the
            // ledger).
            let current = decided_at >= epoch_start && decided_gen >= first_gen;
            match cfg.sellers.iter().find(|x| x.id == s.seller) {
                // A seller of an earlier run may have been removed since (black-box round
                // 18): like a payout rule that changed, listed, not failed.
                None if !current => {
                    count_earlier(&mut out.earlier_sales, start_of(decided_at), decided_gen, s.test);
                    out.payout_not_rechecked.push(format!(
                        "{}: seller {:?} is not in the configuration given; the auction ran under generation {decided_gen}, before a reload or restart (the ledger's latest run is generation {} from {}): not a mismatch, the seller may have been removed since ({})",
                        s.place,
                        s.seller,
                        last_gen,
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
                                    last_gen,
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
        let t = out.totals.entry(report::shown(&r.currency)).or_default();
        t.1 -= i128::from(r.refund);
        t.2 -= i128::from(r.clawback);
        t.3 -= i128::from(r.reversed);
        let f = out.refunds.entry(report::shown(&r.currency)).or_default();
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
    between();
    let report_upto = upto.or(Some(read_upto));
    let reports =
        report::build_unverified(dir, DateRange::default(), &HashMap::new(), report_upto)?;
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
            let several = name_starts(&self.earlier_sales, self.current_start);
            let after = if several {
                format!(" after start {}", self.current_start)
            } else {
                String::new()
            };
            let gens = if first < g {
                format!("generations {first} to {g}{after} (model swaps only between them)")
            } else {
                format!("generation {g}{after}")
            };
            let _ = writeln!(
                out,
                "  payouts re-checked against the configuration given (today's payout models, not the ones of earlier generations): a mismatch fails for auctions of the ledger's latest run, {gens} from {from}"
            );
            if !self.earlier_sales.is_empty() {
                let _ = writeln!(
                    out,
                    "  sales decided before it ({}; a reload or restart came between): a payout that differs from today's rule is listed as PAYOUT NOT RE-CHECKED, not failed",
                    earlier_sales_named(&self.earlier_sales, several)
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
                // Each on its line, as its text allows: a record's ids may hold anything in
                // an edited ledger (black-box round 172a: escapes and line breaks reached
                // the terminal and forged lines).
                let m = proto::error::shown_text(m, LINE_SHOWN_MAX);
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
mod tests;
