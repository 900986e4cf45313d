//! Dispositions: what became of a sold lead, reported by the buyer that bought it
//! (`POST /v1/dispositions`), and the refunds and clawbacks of returned leads.
//!
//! Owns: the sold-lead index ([`SoldLeads`]: every sale of this process and of the ledger
//! it recovered, bounded by `server.sold_leads_max`, oldest forgotten first), the
//! disposition body's parsing ([`parse`]), the refund decision ([`refund_decision`]) and
//! the per-buyer request bound ([`BuyerRate`]).
//!
//! Rules (docs/API.md, Dispositions): one disposition per (lead, outcome), so at most one
//! `returned` and at most one refund per lead; a `returned` is accepted only inside the
//! buyer's `return_window_days`, counted from the sale (outside it, or with a window of
//! 0, it is `409 conflict` and nothing is written), and refunds the sale's bid to the
//! buyer and claws the seller's price back, except for a test lead (recorded, nothing
//! refunded: nothing was paid). A repeat, or a second request for the same (lead, outcome) while the first is
//! still being written, is `409 conflict` and changes nothing.
//!
//! Memory (P10): the index's memory is reserved once, when it is made, and never grows
//! with sales: a ring of `server.sold_leads_max` 64-byte slots (a sale's ids as their 16
//! raw bytes, its prices, time, outcomes and buyer key packed, its names as the number of
//! a shared set) and an open-addressing index of `u32` slot numbers (a power of two at
//! least twice the bound, 4 bytes a slot: 8.4 more bytes a sale at 1,000,000), and a fixed
//! 1.2 MB for the shared name sets: 73.6 MB at 1,000,000, 37.4 MB at the default 500,000
//! (measured by `exchange/tests/sold_memory.rs`). All of it is zeroed memory, so a
//! page is resident once written or [`SoldLeads::prefault`]ed. What does not fit a slot
//! (ids of another shape, names past the shared sets' bound, a margin that is not
//! `bid - seller_price`) is kept by slot in a side table, freed with the slot, so the
//! answers never depend on it.
//!
//! Architecture invariant: the index names a lead's buyer by its stable [`BuyerKey`]
//! (and id), never by a position in one configuration, so a reload that reorders buyers
//! cannot hand a lead to another buyer.
//!
//! Never: stores or logs free text from a buyer: `reason` is a short code of letters,
//! digits (at most [`REASON_DIGITS_MAX`]), `_`, `-` and `.`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use parking_lot::Mutex;
use proto::json::{parse_value, ObjectReader};
use proto::{ApiError, ErrorCode, FieldProblem};

use crate::config::BuyerKey;
use crate::core::UnixMs;

/// The outcomes a buyer may report, in the order of their bit in [`SoldLead`].
pub const OUTCOMES: [&str; 6] = [
    "contacted",
    "no_contact",
    "quoted",
    "sold",
    "disqualified",
    "returned",
];
/// The outcome that may refund.
pub const RETURNED: &str = "returned";
/// [`RETURNED`]'s place in [`OUTCOMES`].
const RETURNED_INDEX: usize = 5;
const _: () = assert!(matches!(OUTCOMES[RETURNED_INDEX].as_bytes(), b"returned"));
/// Longest `lead_id` accepted (the exchange's own are 35 characters).
pub const LEAD_ID_LEN_MAX: usize = 64;
/// Longest `reason` (a code such as `disconnected_number`).
pub const REASON_LEN_MAX: usize = 64;
/// Most digits in a `reason` (the one rule of [`proto::buyer::reason_problem`]).
pub use proto::buyer::REASON_DIGITS_MAX;
/// Disposition requests one buyer may make per second (token bucket, a burst of one
/// second); past it, `429 rate_limited` with `Retry-After`.
pub const DISPOSITIONS_PER_BUYER_PER_S: u32 = 100;

/// Most dispositions one buyer may have in flight at once: past it `429 rate_limited`.
/// The rate bounds new requests, not ones held open: HTTP/2 requests whose bodies never
/// come each hold a place of `server.requests_in_flight_max` for the body budget, and one
/// buyer's key held about 500 of them (all 400 of a smaller limit), so sellers got `503`
/// (black-box round 155b). A buyer reporting outcomes needs a few at a time.
pub const DISPOSITIONS_IN_FLIGHT_PER_BUYER_MAX: usize = 32;

/// A buyer's dispositions in flight at most: [`DISPOSITIONS_IN_FLIGHT_PER_BUYER_MAX`], or
/// a quarter of `server.requests_in_flight_max` (rounded up) when that is smaller, so that
/// one buyer never takes every place of a small limit (black-box round 156a: 32 filled a
/// limit of 24); never more than the buyers' share ([`in_flight_all_buyers_max`]).
pub fn in_flight_per_buyer_max(server_max: usize) -> usize {
    DISPOSITIONS_IN_FLIGHT_PER_BUYER_MAX
        .min(server_max.div_ceil(4))
        .min(in_flight_all_buyers_max(server_max))
}

/// The most connections one buyer's requests (its dispositions, on the seller port) may
/// hold open: as many as its dispositions in flight may need over HTTP/1.1,
/// [`DISPOSITIONS_IN_FLIGHT_PER_BUYER_MAX`], or a quarter of `server.connections_max`
/// (rounded up) when that is smaller (black-box round 216a: a buyer's key kept 296 of 300
/// slots with connections each sending a disposition every 3.7-4.0 s, and new
/// connections waited 5-10 s).
pub fn connections_per_buyer_max(connections_max: usize) -> usize {
    DISPOSITIONS_IN_FLIGHT_PER_BUYER_MAX.min(connections_max.div_ceil(4))
}

/// Every buyer's dispositions in flight together at most: half of
/// `server.requests_in_flight_max`, rounded down, so that sellers keep at least the other
/// half (black-box round 159a: rounded up, buyers held 2 places of 3, and the one place
/// of a limit of 1). The bound of each buyer does not bound them all (128 buyers of 32
/// each fill 4,096). 0 at a limit of 1: every disposition is then refused.
pub fn in_flight_all_buyers_max(server_max: usize) -> usize {
    server_max / 2
}
/// One day in milliseconds (the return window is in whole days).
pub const DAY_MS: i64 = 86_400_000;
/// Most sales a [`SoldLeads`] keeps (the bound of `server.sold_leads_max`).
pub const SOLD_LEADS_MAX_LIMIT: usize = 10_000_000;

/// A parsed disposition body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    pub lead_id: String,
    /// Index into [`OUTCOMES`].
    pub outcome: usize,
    pub reason: Option<String>,
}

impl Disposition {
    pub fn outcome_str(&self) -> &'static str {
        OUTCOMES.get(self.outcome).copied().unwrap_or("")
    }
}

/// Parses `{"lead_id", "outcome", "reason"?}`; every problem is listed at once
/// (`400 invalid_request` with `fields`). Unknown keys are problems too.
pub fn parse(buf: &mut [u8]) -> Result<Disposition, ApiError> {
    let value = parse_value(buf)?;
    let mut r = ObjectReader::new(&value);
    let lead_id = r.string("lead_id", LEAD_ID_LEN_MAX);
    let outcome = r.string("outcome", 32);
    let reason = r.string_opt("reason", REASON_LEN_MAX);
    r.finish_unknown();
    let mut problems = r.problems;
    // `null` is not a reason (as for the seller API's optional envelope fields).
    if let simd_json::OwnedValue::Object(obj) = &value {
        if matches!(
            obj.get("reason"),
            Some(simd_json::OwnedValue::Static(simd_json::StaticNode::Null))
        ) {
            problems.push(FieldProblem::new(
                "reason",
                "must not be null; leave it out",
            ));
        }
    }
    if let Some(id) = &lead_id {
        let well_formed = id.starts_with("ld_")
            && id.len() > 3
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !well_formed {
            problems.push(FieldProblem::new(
                "lead_id",
                "must be a lead id as /v1/post answered it (ld_ then letters, digits, _ and -)",
            ));
        }
    }
    let outcome_idx = outcome
        .as_deref()
        .and_then(|o| OUTCOMES.iter().position(|x| *x == o));
    if outcome.is_some() && outcome_idx.is_none() {
        problems.push(FieldProblem::new(
            "outcome",
            format!("must be one of {}", OUTCOMES.join(", ")),
        ));
    }
    if let Some(why) = reason.as_deref().and_then(proto::buyer::reason_problem) {
        problems.push(FieldProblem::new("reason", why));
    }
    problems.sort_by(|a, b| a.field.cmp(&b.field));
    match (lead_id, outcome_idx) {
        (Some(lead_id), Some(outcome)) if problems.is_empty() => Ok(Disposition {
            lead_id,
            outcome,
            reason,
        }),
        _ => Err(ApiError::from_fields(ErrorCode::InvalidRequest, problems)),
    }
}

/// One sold lead, as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoldLead {
    /// The buyer's stable key, when a configuration of this process had the buyer.
    pub buyer_key: Option<BuyerKey>,
    /// The buyer's id (what the stable key is interned from).
    pub buyer: String,
    pub seller: String,
    pub vertical: String,
    pub auction_id: String,
    pub currency: String,
    pub bid_micros: i64,
    pub seller_price_micros: i64,
    pub margin_micros: i64,
    pub sold_at: UnixMs,
    pub test: bool,
    /// Outcomes recorded (bit `i` is `OUTCOMES[i]`).
    pub seen: u8,
    /// Outcomes being written now.
    pub pending: u8,
    /// A refund was recorded.
    pub refunded: bool,
}

impl SoldLead {
    /// Was the lead sold to this buyer?
    pub fn sold_to(&self, key: BuyerKey, id: &str) -> bool {
        match self.buyer_key {
            Some(k) => k == key,
            None => self.buyer == id,
        }
    }
}

/// Why a `returned` refunds nothing: a test lead (recorded; the answer's `no_refund`), or
/// no window / outside it (refused with `409`, nothing recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRefund {
    /// A test lead: nothing was paid.
    TestLead,
    /// The buyer's `return_window_days` is 0.
    NoReturnWindow,
    /// Reported after the window closed.
    OutsideReturnWindow,
}

impl NoRefund {
    pub fn as_str(self) -> &'static str {
        match self {
            NoRefund::TestLead => "test_lead",
            NoRefund::NoReturnWindow => "no_return_window",
            NoRefund::OutsideReturnWindow => "outside_return_window",
        }
    }
}

/// Does a `returned` reported at `now` refund `lead` under a window of `window_days`?
/// Inside the window: see [`inside_return_window`].
pub fn refund_decision(lead: &SoldLead, window_days: u16, now: UnixMs) -> Result<(), NoRefund> {
    if lead.test {
        return Err(NoRefund::TestLead);
    }
    if window_days == 0 {
        return Err(NoRefund::NoReturnWindow);
    }
    if !inside_return_window(lead.sold_at, i64::from(window_days), now) {
        return Err(NoRefund::OutsideReturnWindow);
    }
    Ok(())
}

/// Is a return at `now` inside a return window of `window_days` whole days from a sale
/// at `sold_at`? The one rule of the live refund ([`refund_decision`]) and of `ledger
/// verify`'s check of a `refund` record: the time elapsed since the sale is at most
/// `window_days` x 24 h (a return at exactly the end still counts), and is clamped at 0:
/// a sale dated after the return (the clock was stepped back between them) is inside,
/// since the sale came first (the exchange only refunds a sale it has; in the ledger the
/// sale's `seq` is lower) and refusing a return for a clock step would wrong the buyer.
/// A window of 0 days or less has no inside. Exact for any times (`i128`).
pub fn inside_return_window(sold_at: UnixMs, window_days: i64, now: UnixMs) -> bool {
    let elapsed = (i128::from(now) - i128::from(sold_at)).max(0);
    window_days > 0 && elapsed <= i128::from(window_days) * i128::from(DAY_MS)
}

/// A refund as a disposition's answer names it (the `refund` record's figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundLine<'a> {
    pub currency: &'a str,
    pub buyer_refund_micros: i64,
    pub seller_clawback_micros: i64,
}

/// The `200` answer of a recorded disposition, as JSON. The live answer and the answer
/// recovery restores with a buyer's `Idempotency-Key` (from the `disposition` record and
/// its lead's `refund`) are both built here, so a retry after a restart gets the same
/// bytes. `refund` is the refund a `returned` made; a `returned` that refunded nothing
/// was of a test lead (a return outside the window is refused, never answered 200), and
/// says so in `no_refund`.
pub fn answer_json(
    lead_id: &str,
    outcome: &str,
    test: bool,
    refund: Option<RefundLine>,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        lead_id: &'a str,
        outcome: &'a str,
        recorded: bool,
        /// The refund a `returned` made, else `null`.
        refund: Option<RefundAnswer<'a>>,
        /// Why a `returned` refunded nothing.
        #[serde(skip_serializing_if = "Option::is_none")]
        no_refund: Option<&'static str>,
    }
    #[derive(serde::Serialize)]
    struct RefundAnswer<'a> {
        currency: &'a str,
        buyer_refund: proto::Micros,
        seller_clawback: proto::Micros,
    }
    let returned = outcome == RETURNED;
    let refund = refund.filter(|_| returned);
    let answer = Answer {
        lead_id,
        outcome,
        recorded: true,
        no_refund: (returned && refund.is_none() && test).then_some(NoRefund::TestLead.as_str()),
        refund: refund.map(|r| RefundAnswer {
            currency: r.currency,
            buyer_refund: proto::Micros(r.buyer_refund_micros),
            seller_clawback: proto::Micros(r.seller_clawback_micros),
        }),
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// What [`SoldLeads::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The lead (a copy), with the outcome now pending for this request.
    Claimed(SoldLead),
    /// Unknown lead (never sold, not sold by this exchange's ledger, or forgotten past
    /// `server.sold_leads_max`).
    NotFound,
    /// Sold to another buyer.
    Forbidden,
    /// This outcome was recorded already.
    Repeat,
    /// The same outcome is being written by another request.
    InFlight,
    /// The lead was returned (or its return is being recorded): no outcome follows it.
    Returned,
}

/// A sale's names: buyer, seller, vertical, currency.
type SaleNames = [Box<str>; 4];

/// One remembered sale in the ring (P10: `server.sold_leads_max` of them, reserved at
/// start): eight words, 64 bytes, no pointer.
///
/// | word | holds |
/// |---|---|
/// | 0, 1 | the lead id's 16 bytes (`ld_` and 32 lower-case hex digits), else 0 and [`LEAD_OTHER`] |
/// | 2, 3 | the auction id's 16 bytes (`au_` and 32 hex digits), else 0 and [`Side::auction_id`] |
/// | 4 | `bid_micros` |
/// | 5 | `seller_price_micros` (`margin_micros` is `bid - seller_price`, saturating, unless [`Side::margin_micros`]) |
/// | 6 | `sold_at` (48 bits, two's complement, else [`Side::sold_at`]), `seen` (bits 48-55), `pending` (56-63) |
/// | 7 | the buyer key (bits 0-31, [`NO_BUYER_KEY`] for none), the name set (32-55, [`NO_NAME_SET`]: in the side table), flags (56-63) |
type Slot = [u64; 8];
const _: () = assert!(std::mem::size_of::<Slot>() <= 64);

const W_LEAD: usize = 0;
const W_AUCTION: usize = 2;
const W_BID: usize = 4;
const W_SELLER_PRICE: usize = 5;
const W_TIME: usize = 6;
const W_KEYS: usize = 7;

/// Bits of `sold_at` in [`W_TIME`].
const TIME_BITS: u32 = 48;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const SEEN_SHIFT: u32 = 48;
const PENDING_SHIFT: u32 = 56;
/// The buyer key word's "no key" (a key of this value goes to the side table).
const NO_BUYER_KEY: u32 = u32::MAX;
const NAME_SET_SHIFT: u32 = 32;
/// The name set field's "in the side table".
const NO_NAME_SET: u32 = (1 << 24) - 1;
const FLAG_REFUNDED: u64 = 1 << 56;
const FLAG_TEST: u64 = 1 << 57;
/// The lead id is not of the exchange's shape: it is [`Side::lead_id`].
const LEAD_OTHER: u64 = 1 << 58;
/// The slot has an entry in the side table.
const FLAG_SIDE: u64 = 1 << 59;

/// What does not fit a [`Slot`] (rare: ids of another shape, names past the name-set
/// table's bound, a margin that is not `bid - seller_price`, a time past 48 bits, a buyer
/// key of [`NO_BUYER_KEY`]), by slot; freed when the slot is reused, so at most one per
/// slot.
#[derive(Debug, Default)]
struct Side {
    lead_id: Option<Box<str>>,
    auction_id: Option<Box<str>>,
    names: Option<Box<SaleNames>>,
    margin_micros: Option<i64>,
    sold_at: Option<UnixMs>,
    buyer_key: Option<BuyerKey>,
}

/// Name sets (buyer, seller, vertical, currency) the index shares at most (past it a
/// sale keeps its own copy in the side table).
const NAME_SETS_MAX: usize = 16_384;
/// Longest name the index shares.
const SHARED_NAME_LEN_MAX: usize = 128;

/// Bytes of a memory page (what [`SoldLeads::prefault`] steps by).
const PAGE_BYTES: usize = 4096;

/// `s` as the 16 bytes its hex digits spell, when it is `prefix` and 32 lower-case hex
/// digits (the exchange's own shape, as [`crate::core::compact::CompactId`] reads it).
fn raw_id(s: &str, prefix: &str) -> Option<[u64; 2]> {
    let digits = s.strip_prefix(prefix)?.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(u64::from(c - b'0')),
        b'a'..=b'f' => Some(u64::from(c - b'a' + 10)),
        _ => None,
    };
    let mut words = [0u64; 2];
    for (w, half) in words.iter_mut().zip(digits.chunks_exact(16)) {
        for &c in half {
            *w = (*w << 4) | nibble(c)?;
        }
    }
    Some(words)
}

/// The id `prefix` and the hex digits of `raw` spell (the inverse of [`raw_id`]).
fn id_of(prefix: &str, raw: [u64; 2]) -> String {
    format!("{prefix}{:016x}{:016x}", raw[0], raw[1])
}

/// A lead id as the index looks it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'a> {
    Hex([u64; 2]),
    Other(&'a str),
}

impl Key<'_> {
    fn of(lead_id: &str) -> Key<'_> {
        raw_id(lead_id, "ld_").map_or(Key::Other(lead_id), Key::Hex)
    }
}

/// `2 x n` rounded up to a power of two: an open-addressing table for `n` entries that is
/// at most half full.
fn table_len(n: usize) -> usize {
    n.saturating_mul(2).next_power_of_two()
}

/// Name sets, each kept once and numbered (bounded by [`NAME_SETS_MAX`]; never
/// forgotten).
struct NameSets {
    sets: Vec<SaleNames>,
    /// By hash, linear probing: 0 is empty, else the set's number + 1.
    index: Box<[u32]>,
    hasher: RandomState,
}

impl NameSets {
    fn new() -> NameSets {
        NameSets {
            sets: Vec::with_capacity(NAME_SETS_MAX),
            index: vec![0u32; table_len(NAME_SETS_MAX)].into_boxed_slice(),
            hasher: RandomState::new(),
        }
    }

    /// The number of the set `names`, numbering it if it is new and the bound allows.
    fn share(&mut self, names: [&str; 4]) -> Option<u32> {
        if names.iter().any(|n| n.len() > SHARED_NAME_LEN_MAX) {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut i = (self.hasher.hash_one(names) as usize) & mask;
        loop {
            match self.index[i] {
                0 => break,
                e => {
                    let set = &self.sets[e as usize - 1];
                    if set.iter().zip(names).all(|(a, b)| &**a == b) {
                        return Some(e - 1);
                    }
                }
            }
            i = (i + 1) & mask;
        }
        if self.sets.len() >= NAME_SETS_MAX {
            return None;
        }
        self.sets.push(names.map(Box::from));
        let n = self.sets.len() as u32;
        self.index[i] = n;
        Some(n - 1)
    }
}

/// The ring of sales and its index, all reserved when the index is made.
struct Inner {
    /// `max` slots; sales are written in turn, the oldest overwritten first.
    slots: Box<[Slot]>,
    /// By lead id, linear probing, at most half full: 0 is empty, else slot + 1.
    index: Box<[u32]>,
    hasher: RandomState,
    /// The slot the next sale is written to (the oldest sale's once the ring is full).
    next: usize,
    len: usize,
    names: NameSets,
    side: HashMap<u32, Side>,
}

impl Inner {
    fn new(max: usize) -> Inner {
        // Zeroed memory (`calloc`): pages nobody touched cost nothing until used.
        Inner {
            slots: vec![[0u64; 8]; max].into_boxed_slice(),
            index: vec![0u32; table_len(max)].into_boxed_slice(),
            hasher: RandomState::new(),
            next: 0,
            len: 0,
            names: NameSets::new(),
            side: HashMap::new(),
        }
    }

    fn side(&self, slot: usize) -> Option<&Side> {
        if self.slots[slot][W_KEYS] & FLAG_SIDE == 0 {
            return None;
        }
        self.side.get(&(slot as u32))
    }

    /// The lead id of a slot in use.
    fn key(&self, slot: usize) -> Key<'_> {
        let s = &self.slots[slot];
        if s[W_KEYS] & LEAD_OTHER == 0 {
            return Key::Hex([s[W_LEAD], s[W_LEAD + 1]]);
        }
        Key::Other(
            self.side(slot)
                .and_then(|x| x.lead_id.as_deref())
                .unwrap_or(""),
        )
    }

    fn home(&self, key: Key<'_>) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.index.len() - 1)
    }

    /// The slot of `key`, if remembered.
    fn find(&self, key: Key<'_>) -> Option<usize> {
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.index[i] {
                0 => return None,
                e if self.key(e as usize - 1) == key => return Some(e as usize - 1),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Takes `slot` out of the index (backward-shift deletion: the entries after it in
    /// its run move back, so every entry stays reachable from its home without markers).
    fn unindex(&mut self, slot: usize) {
        let mask = self.index.len() - 1;
        let mut hole = self.home(self.key(slot));
        while self.index[hole] as usize != slot + 1 {
            if self.index[hole] == 0 {
                return; // not indexed (never: every slot in use is)
            }
            hole = (hole + 1) & mask;
        }
        let mut j = hole;
        loop {
            self.index[hole] = 0;
            loop {
                j = (j + 1) & mask;
                let e = self.index[j];
                if e == 0 {
                    return;
                }
                let home = self.home(self.key(e as usize - 1));
                // The entry at `j` stays when its home is cyclically in (hole, j].
                let stays = if hole <= j {
                    hole < home && home <= j
                } else {
                    hole < home || home <= j
                };
                if !stays {
                    self.index[hole] = e;
                    hole = j;
                    break;
                }
            }
        }
    }

    fn index_at(&mut self, key: Key<'_>, slot: usize) {
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        while self.index[i] != 0 {
            i = (i + 1) & mask;
        }
        self.index[i] = slot as u32 + 1;
    }

    /// Writes `l` (lead `lead_id`) into `slot`, which holds nothing.
    fn write(&mut self, slot: usize, lead_id: &str, l: &SoldLead) {
        let mut side = Side::default();
        let mut keys = 0u64;
        let lead = raw_id(lead_id, "ld_").unwrap_or_else(|| {
            side.lead_id = Some(lead_id.into());
            keys |= LEAD_OTHER;
            [0; 2]
        });
        let auction = raw_id(&l.auction_id, "au_").unwrap_or_else(|| {
            side.auction_id = Some(l.auction_id.as_str().into());
            [0; 2]
        });
        if l.margin_micros != l.bid_micros.saturating_sub(l.seller_price_micros) {
            side.margin_micros = Some(l.margin_micros);
        }
        let time = if (l.sold_at << (64 - TIME_BITS)) >> (64 - TIME_BITS) == l.sold_at {
            l.sold_at as u64 & TIME_MASK
        } else {
            side.sold_at = Some(l.sold_at);
            0
        };
        let buyer_key = match l.buyer_key {
            Some(BuyerKey(k)) if k != NO_BUYER_KEY => k,
            Some(k) => {
                side.buyer_key = Some(k);
                NO_BUYER_KEY
            }
            None => NO_BUYER_KEY,
        };
        let names = [&*l.buyer, &*l.seller, &*l.vertical, &*l.currency];
        let set = self.names.share(names).unwrap_or_else(|| {
            side.names = Some(Box::new(names.map(Box::from)));
            NO_NAME_SET
        });
        keys |= u64::from(buyer_key) | (u64::from(set) << NAME_SET_SHIFT);
        if l.refunded {
            keys |= FLAG_REFUNDED;
        }
        if l.test {
            keys |= FLAG_TEST;
        }
        let has_side = side.lead_id.is_some()
            || side.auction_id.is_some()
            || side.names.is_some()
            || side.margin_micros.is_some()
            || side.sold_at.is_some()
            || side.buyer_key.is_some();
        if has_side {
            keys |= FLAG_SIDE;
            self.side.insert(slot as u32, side);
        }
        self.slots[slot] = [
            lead[0],
            lead[1],
            auction[0],
            auction[1],
            l.bid_micros as u64,
            l.seller_price_micros as u64,
            time | (u64::from(l.seen) << SEEN_SHIFT) | (u64::from(l.pending) << PENDING_SHIFT),
            keys,
        ];
    }

    fn buyer_key(&self, slot: usize) -> Option<BuyerKey> {
        match self.slots[slot][W_KEYS] as u32 {
            NO_BUYER_KEY => self.side(slot).and_then(|x| x.buyer_key),
            k => Some(BuyerKey(k)),
        }
    }

    fn names(&self, slot: usize) -> &SaleNames {
        let set = (self.slots[slot][W_KEYS] >> NAME_SET_SHIFT) as u32 & NO_NAME_SET;
        match self.side(slot).and_then(|x| x.names.as_deref()) {
            Some(own) if set == NO_NAME_SET => own,
            _ => &self.names.sets[set as usize],
        }
    }

    /// Was the lead in `slot` sold to this buyer? (As [`SoldLead::sold_to`].)
    fn sold_to(&self, slot: usize, key: BuyerKey, id: &str) -> bool {
        match self.buyer_key(slot) {
            Some(k) => k == key,
            None => &*self.names(slot)[0] == id,
        }
    }

    /// The sale in `slot`, as it was put in (with its outcomes since).
    fn lead(&self, slot: usize) -> SoldLead {
        let s = &self.slots[slot];
        let side = self.side(slot);
        let [buyer, seller, vertical, currency] = self.names(slot);
        let bid_micros = s[W_BID] as i64;
        let seller_price_micros = s[W_SELLER_PRICE] as i64;
        SoldLead {
            buyer_key: self.buyer_key(slot),
            buyer: buyer.to_string(),
            seller: seller.to_string(),
            vertical: vertical.to_string(),
            auction_id: match side.and_then(|x| x.auction_id.as_deref()) {
                Some(other) => other.to_string(),
                None => id_of("au_", [s[W_AUCTION], s[W_AUCTION + 1]]),
            },
            currency: currency.to_string(),
            bid_micros,
            seller_price_micros,
            margin_micros: side
                .and_then(|x| x.margin_micros)
                .unwrap_or(bid_micros.saturating_sub(seller_price_micros)),
            sold_at: side
                .and_then(|x| x.sold_at)
                .unwrap_or(((s[W_TIME] << (64 - TIME_BITS)) as i64) >> (64 - TIME_BITS)),
            test: s[W_KEYS] & FLAG_TEST != 0,
            seen: (s[W_TIME] >> SEEN_SHIFT) as u8,
            pending: (s[W_TIME] >> PENDING_SHIFT) as u8,
            refunded: s[W_KEYS] & FLAG_REFUNDED != 0,
        }
    }

    fn seen(&self, slot: usize) -> u8 {
        (self.slots[slot][W_TIME] >> SEEN_SHIFT) as u8
    }

    fn pending(&self, slot: usize) -> u8 {
        (self.slots[slot][W_TIME] >> PENDING_SHIFT) as u8
    }

    fn set_seen(&mut self, slot: usize, seen: u8) {
        let w = &mut self.slots[slot][W_TIME];
        *w = (*w & !(0xff << SEEN_SHIFT)) | (u64::from(seen) << SEEN_SHIFT);
    }

    fn set_pending(&mut self, slot: usize, pending: u8) {
        let w = &mut self.slots[slot][W_TIME];
        *w = (*w & !(0xff << PENDING_SHIFT)) | (u64::from(pending) << PENDING_SHIFT);
    }

    fn set_refunded(&mut self, slot: usize) {
        self.slots[slot][W_KEYS] |= FLAG_REFUNDED;
    }
}

/// The sold-lead index: by `lead_id`, bounded (oldest sale forgotten first). Its ring of
/// `max` 64-byte slots and its index (`u32` slot numbers, a power of two at least twice
/// `max`) are reserved when it is made, zeroed, so pages cost memory only once written
/// (or [`SoldLeads::prefault`]ed); a sale allocates nothing, except in the rare cases
/// [`Side`] lists.
pub struct SoldLeads {
    inner: Mutex<Inner>,
    max: usize,
}

impl std::fmt::Debug for SoldLeads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoldLeads")
            .field("len", &self.len())
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl SoldLeads {
    /// An index for at most `max` sales (at least 1, at most [`SOLD_LEADS_MAX_LIMIT`]):
    /// about `64 x max + 4 x table_len` bytes of address space, resident as they are used.
    pub fn new(max: usize) -> SoldLeads {
        let max = max.clamp(1, SOLD_LEADS_MAX_LIMIT);
        SoldLeads {
            inner: Mutex::new(Inner::new(max)),
            max,
        }
    }

    /// Makes every page of the ring and of the indexes resident now (written once), so
    /// the index's memory is taken at start rather than as sales come in. Keeps every
    /// sale.
    pub fn prefault(&self) {
        fn touch<T: Copy>(table: &mut [T]) {
            let step = (PAGE_BYTES / std::mem::size_of::<T>().max(1)).max(1);
            let last = table.len().checked_sub(1);
            for i in (0..table.len()).step_by(step).chain(last) {
                // The same value, written through an opaque copy: the write happens.
                table[i] = std::hint::black_box(table[i]);
            }
        }
        let mut g = self.inner.lock();
        let g = &mut *g;
        touch(&mut g.slots);
        touch(&mut g.index);
        touch(&mut g.names.index);
    }

    /// How many leads are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lead's entry (a copy), if remembered.
    pub fn get(&self, lead_id: &str) -> Option<SoldLead> {
        let g = self.inner.lock();
        g.find(Key::of(lead_id)).map(|slot| g.lead(slot))
    }

    /// Remembers a sale, forgetting the oldest past the bound. A lead sold twice (never
    /// in a consistent ledger) keeps its first sale.
    pub fn insert(&self, lead_id: &str, lead: SoldLead) {
        let key = Key::of(lead_id);
        let mut g = self.inner.lock();
        if g.find(key).is_some() {
            return;
        }
        let slot = g.next;
        if g.len >= self.max {
            g.unindex(slot);
            g.side.remove(&(slot as u32));
        } else {
            g.len += 1;
        }
        g.write(slot, lead_id, &lead);
        g.index_at(key, slot);
        g.next = (slot + 1) % self.max;
    }

    /// Claims (lead, outcome) for `buyer`: on success the outcome is pending until
    /// [`SoldLeads::settle`]. Nothing changes on any other answer.
    pub fn claim(&self, lead_id: &str, buyer: BuyerKey, buyer_id: &str, outcome: usize) -> Claim {
        let bit = 1u8 << outcome;
        let mut g = self.inner.lock();
        let Some(slot) = g.find(Key::of(lead_id)) else {
            return Claim::NotFound;
        };
        if !g.sold_to(slot, buyer, buyer_id) {
            return Claim::Forbidden;
        }
        if g.seen(slot) & bit != 0 {
            return Claim::Repeat;
        }
        let pending = g.pending(slot);
        if pending & bit != 0 {
            return Claim::InFlight;
        }
        // The lead went back to the exchange: nothing the buyer does with it follows.
        let returned = 1u8 << RETURNED_INDEX;
        if bit != returned && (g.seen(slot) | pending) & returned != 0 {
            return Claim::Returned;
        }
        g.set_pending(slot, pending | bit);
        Claim::Claimed(g.lead(slot))
    }

    /// Ends a claim: `recorded` marks the outcome seen (and `refunded` the refund);
    /// otherwise the claim is dropped and the outcome may be reported again.
    pub fn settle(&self, lead_id: &str, outcome: usize, recorded: bool, refunded: bool) {
        let bit = 1u8 << outcome;
        let mut g = self.inner.lock();
        if let Some(slot) = g.find(Key::of(lead_id)) {
            let pending = g.pending(slot);
            g.set_pending(slot, pending & !bit);
            if recorded {
                let seen = g.seen(slot);
                g.set_seen(slot, seen | bit);
                if refunded {
                    g.set_refunded(slot);
                }
            }
        }
    }

    /// Marks a recorded outcome (recovery, from a `disposition` record).
    pub fn mark_seen(&self, lead_id: &str, outcome: &str) -> bool {
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return false;
        };
        let mut g = self.inner.lock();
        match g.find(Key::of(lead_id)) {
            Some(slot) => {
                let seen = g.seen(slot);
                g.set_seen(slot, seen | 1 << i);
                true
            }
            None => false,
        }
    }

    /// Marks a recorded refund (recovery, from a `refund` record): the lead's `returned`
    /// is taken too.
    pub fn mark_refunded(&self, lead_id: &str) -> bool {
        let mut g = self.inner.lock();
        match g.find(Key::of(lead_id)) {
            Some(slot) => {
                g.set_refunded(slot);
                let seen = g.seen(slot);
                g.set_seen(slot, seen | 1 << 5);
                true
            }
            None => false,
        }
    }
}

/// A per-buyer token bucket for dispositions ([`DISPOSITIONS_PER_BUYER_PER_S`]), by
/// stable buyer key; bounded by the number of buyer keys (at most
/// [`crate::core::ids::KEYS_MAX`]).
#[derive(Debug, Default)]
pub struct BuyerRate {
    buckets: Mutex<HashMap<BuyerKey, (f64, UnixMs)>>,
}

impl BuyerRate {
    /// Takes one token from `buyer`'s bucket; false when empty.
    pub fn allow(&self, buyer: BuyerKey, now: UnixMs) -> bool {
        let rate = f64::from(DISPOSITIONS_PER_BUYER_PER_S);
        let mut g = self.buckets.lock();
        let b = g.entry(buyer).or_insert((rate, now));
        let elapsed_s = (now - b.1).max(0) as f64 / 1000.0;
        b.0 = (b.0 + elapsed_s * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lead(test: bool, sold_at: UnixMs) -> SoldLead {
        SoldLead {
            buyer_key: Some(BuyerKey(1)),
            buyer: "acme".into(),
            seller: "s".into(),
            vertical: "v".into(),
            auction_id: "au_1".into(),
            currency: "USD".into(),
            bid_micros: 18_000_000,
            seller_price_micros: 14_400_000,
            margin_micros: 3_600_000,
            sold_at,
            test,
            seen: 0,
            pending: 0,
            refunded: false,
        }
    }

    fn parse_text(s: &str) -> Result<Disposition, ApiError> {
        parse(&mut s.as_bytes().to_vec())
    }

    #[test]
    fn bodies_parse_and_every_problem_is_listed() {
        let d = parse_text(r#"{"lead_id":"ld_01ab","outcome":"returned","reason":"bad_number"}"#)
            .unwrap();
        assert_eq!(d.outcome_str(), "returned");
        assert_eq!(d.reason.as_deref(), Some("bad_number"));
        let e =
            parse_text(r#"{"lead_id":"x","outcome":"lost","reason":"call 8175550123","extra":1}"#)
                .unwrap_err();
        let fields: Vec<&str> = e.fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["extra", "lead_id", "outcome", "reason"]);
        assert!(parse_text(r#"{"lead_id":"ld_1","outcome":"sold","reason":"dup 2024"}"#).is_err());
        assert!(parse_text(r#"{"lead_id":"ld_1","outcome":"sold","reason":"a12345"}"#).is_err());
        assert!(parse_text(r#"{"lead_id":"ld_1","outcome":"sold","reason":"dup_30d"}"#).is_ok());
        assert!(parse_text(r#"{"lead_id":"ld_1"}"#).is_err());
        assert!(parse_text(r#"{"lead_id":"ld_1","outcome":"sold","reason":null}"#).is_err());
        assert!(parse_text("[]").is_err());
        assert!(parse_text(&"[".repeat(100_000)).is_err());
    }

    #[test]
    fn refunds_only_inside_the_window_and_never_for_tests() {
        let sold = 1_000 * DAY_MS;
        assert_eq!(
            refund_decision(&lead(false, sold), 7, sold + 7 * DAY_MS),
            Ok(())
        );
        assert_eq!(
            refund_decision(&lead(false, sold), 7, sold + 7 * DAY_MS + 1),
            Err(NoRefund::OutsideReturnWindow)
        );
        assert_eq!(
            refund_decision(&lead(false, sold), 0, sold),
            Err(NoRefund::NoReturnWindow)
        );
        assert_eq!(
            refund_decision(&lead(true, sold), 7, sold),
            Err(NoRefund::TestLead)
        );
    }

    /// Black-box round 41: the exchange refunded a return whose sale was dated after it
    /// (the clock was stepped back), and `ledger verify` then failed that refund. One rule
    /// decides both: the time since the sale is clamped at 0.
    #[test]
    fn a_sale_dated_after_its_return_is_inside_the_window_live_and_in_verify() {
        let sold = 1_000 * DAY_MS;
        let stepped_back = sold - 3_595_210;
        assert_eq!(refund_decision(&lead(false, sold), 7, stepped_back), Ok(()));
        assert!(inside_return_window(sold, 7, stepped_back));
        assert!(inside_return_window(sold, 1, i64::MIN));
        assert!(inside_return_window(sold, 7, sold + 7 * DAY_MS));
        assert!(!inside_return_window(sold, 7, sold + 7 * DAY_MS + 1));
        assert!(!inside_return_window(i64::MIN, 7, i64::MAX));
        assert!(inside_return_window(0, i64::MAX, i64::MAX));
        for window in [0, -1, i64::MIN] {
            assert!(!inside_return_window(sold, window, sold), "{window}");
            assert!(
                !inside_return_window(sold, window, stepped_back),
                "{window}"
            );
        }
        // The same answers as the live rule for every window it takes.
        for window in [1u16, 7, u16::MAX] {
            for now in [
                i64::MIN,
                stepped_back,
                sold,
                sold + i64::from(window) * DAY_MS,
                sold + i64::from(window) * DAY_MS + 1,
                i64::MAX,
            ] {
                assert_eq!(
                    refund_decision(&lead(false, sold), window, now).is_ok(),
                    inside_return_window(sold, i64::from(window), now),
                    "window {window} now {now}"
                );
            }
        }
    }

    #[test]
    fn one_claim_per_outcome_owner_only_oldest_forgotten() {
        let idx = SoldLeads::new(2);
        idx.insert("ld_a", lead(false, 0));
        assert_eq!(idx.claim("ld_a", BuyerKey(2), "other", 0), Claim::Forbidden);
        assert!(matches!(
            idx.claim("ld_a", BuyerKey(1), "acme", 0),
            Claim::Claimed(_)
        ));
        assert_eq!(idx.claim("ld_a", BuyerKey(1), "acme", 0), Claim::InFlight);
        idx.settle("ld_a", 0, false, false);
        assert!(matches!(
            idx.claim("ld_a", BuyerKey(1), "acme", 0),
            Claim::Claimed(_)
        ));
        idx.settle("ld_a", 0, true, false);
        assert_eq!(idx.claim("ld_a", BuyerKey(1), "acme", 0), Claim::Repeat);
        assert!(matches!(
            idx.claim("ld_a", BuyerKey(1), "acme", 5),
            Claim::Claimed(_)
        ));
        idx.insert("ld_b", lead(false, 0));
        idx.insert("ld_c", lead(false, 0));
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.claim("ld_a", BuyerKey(1), "acme", 1), Claim::NotFound);
        assert!(idx.mark_refunded("ld_b"));
        assert_eq!(idx.claim("ld_b", BuyerKey(1), "acme", 5), Claim::Repeat);
    }

    #[test]
    fn the_index_gives_each_sale_back_as_it_was_put_in() {
        let idx = SoldLeads::new(10);
        let mut a = lead(false, 7);
        a.auction_id = "au_0192f3a4b5c6d7e8f90123456789abcd".into();
        a.buyer_key = None;
        a.seen = 3;
        a.refunded = true;
        let b = lead(true, 8);
        idx.insert("ld_0192f3a4b5c6d7e8f90123456789abce", a.clone());
        idx.insert("ld_b", b.clone());
        assert_eq!(idx.get("ld_0192f3a4b5c6d7e8f90123456789abce"), Some(a));
        assert_eq!(idx.get("ld_b"), Some(b));
        assert_eq!(idx.get("ld_0192f3a4b5c6d7e8f90123456789abcf"), None);
        // Without a stable key the buyer is matched by id.
        assert_eq!(
            idx.claim(
                "ld_0192f3a4b5c6d7e8f90123456789abce",
                BuyerKey(1),
                "other",
                0
            ),
            Claim::Forbidden
        );
        assert!(matches!(
            idx.claim("ld_0192f3a4b5c6d7e8f90123456789abce", BuyerKey(9), "acme", 4),
            Claim::Claimed(l) if l.pending == 1 << 4 && l.seen == 3
        ));
    }

    #[test]
    fn a_slot_is_64_bytes_and_sales_share_their_names() {
        // The index holds up to `server.sold_leads_max` (500,000 by default) of these, reserved.
        assert!(std::mem::size_of::<Slot>() <= 64);
        let idx = SoldLeads::new(10);
        idx.insert("ld_a", lead(false, 0));
        idx.insert("ld_b", lead(false, 1));
        let mut other = lead(false, 2);
        other.buyer = "zenith".into();
        idx.insert("ld_c", other.clone());
        let g = idx.inner.lock();
        let set = |id: &str| {
            let slot = g.find(Key::of(id)).unwrap();
            (g.slots[slot][W_KEYS] >> NAME_SET_SHIFT) as u32 & NO_NAME_SET
        };
        assert_eq!(set("ld_a"), set("ld_b"));
        assert_ne!(set("ld_a"), set("ld_c"));
        assert_eq!(g.names.sets.len(), 2);
        drop(g);
        assert_eq!(idx.get("ld_c"), Some(other));
    }

    /// A lead id of the exchange's shape, numbered.
    fn hex_id(prefix: &str, i: u64) -> String {
        format!("{prefix}0192f3a4b5c6d7e8{i:016x}")
    }

    #[test]
    fn past_the_bound_the_oldest_is_forgotten_and_the_newest_stay() {
        let idx = SoldLeads::new(3);
        for i in 0..5 {
            let mut l = lead(false, i64::try_from(i).unwrap());
            l.auction_id = hex_id("au_", i);
            idx.insert(&hex_id("ld_", i), l);
        }
        assert_eq!(idx.len(), 3);
        for i in 0..2 {
            assert_eq!(idx.get(&hex_id("ld_", i)), None);
            assert_eq!(
                idx.claim(&hex_id("ld_", i), BuyerKey(1), "acme", 0),
                Claim::NotFound
            );
            assert!(!idx.mark_refunded(&hex_id("ld_", i)));
        }
        for i in 2..5 {
            let l = idx.get(&hex_id("ld_", i)).unwrap();
            assert_eq!(l.sold_at, i64::try_from(i).unwrap());
            assert_eq!(l.auction_id, hex_id("au_", i));
        }
        // A repeat sale of a remembered lead changes nothing and forgets nothing.
        idx.insert(&hex_id("ld_", 2), lead(true, 99));
        assert_eq!(idx.len(), 3);
        assert_eq!(idx.get(&hex_id("ld_", 2)).unwrap().sold_at, 2);
        // The next sale forgets the oldest, 2.
        idx.insert(&hex_id("ld_", 5), lead(false, 5));
        assert_eq!(idx.get(&hex_id("ld_", 2)), None);
        assert!(idx.get(&hex_id("ld_", 3)).is_some());
        assert!(idx.get(&hex_id("ld_", 5)).is_some());
    }

    #[test]
    fn what_does_not_fit_a_slot_comes_back_exactly_and_is_freed_with_it() {
        let long = "b".repeat(SHARED_NAME_LEN_MAX + 1);
        let mut odd = lead(false, i64::MIN);
        odd.buyer_key = Some(BuyerKey(u32::MAX));
        odd.buyer = long.clone();
        odd.auction_id = "au_0192F3A4B5C6D7E8F90123456789ABCD".into(); // upper case
        odd.margin_micros = 0; // an older ledger without it
        odd.seen = 0xff;
        odd.pending = 0xc0;
        let mut big = lead(true, i64::MAX);
        big.auction_id = String::new();
        big.bid_micros = i64::MIN;
        big.seller_price_micros = i64::MAX;
        big.margin_micros = i64::MIN; // saturated: derived
        let ids = [
            "ld_x",
            "pg_0192f3a4b5c6d7e8f90123456789abcd", // the shape, another prefix
            "ld_0192f3a4b5c6d7e8f90123456789abcD",
            "ld_0192f3a4b5c6d7e8f90123456789abc",
            "",
        ];
        let idx = SoldLeads::new(ids.len());
        for (i, id) in ids.iter().enumerate() {
            idx.insert(id, if i % 2 == 0 { odd.clone() } else { big.clone() });
        }
        for (i, id) in ids.iter().enumerate() {
            let want = if i % 2 == 0 { &odd } else { &big };
            assert_eq!(idx.get(id).as_ref(), Some(want), "{id:?}");
        }
        assert_eq!(idx.get("ld_y"), None);
        assert_eq!(idx.get("ld_0192f3a4b5c6d7e8f90123456789abcd"), None);
        assert!(matches!(
            idx.claim("ld_x", BuyerKey(u32::MAX), "", 0),
            Claim::Repeat
        ));
        assert!(matches!(
            idx.claim(
                "pg_0192f3a4b5c6d7e8f90123456789abcd",
                BuyerKey(1),
                "acme",
                0
            ),
            Claim::Claimed(_)
        ));
        assert_eq!(idx.inner.lock().side.len(), ids.len());
        // Sales of the exchange's shape take their slots back, and the side entries go.
        for i in 0..ids.len() as u64 {
            let mut l = lead(false, 0);
            l.auction_id = hex_id("au_", i);
            idx.insert(&hex_id("ld_", i), l);
        }
        assert_eq!(idx.inner.lock().side.len(), 0);
        assert!(ids.iter().all(|id| idx.get(id).is_none()));
    }

    #[test]
    fn names_past_the_tables_bound_are_kept_by_the_sale() {
        let n = NAME_SETS_MAX + 10;
        let idx = SoldLeads::new(n);
        let sale = |i: usize| {
            let mut l = lead(false, 0);
            l.buyer = format!("buyer{i}");
            l
        };
        for i in 0..n {
            idx.insert(&format!("ld_{i}"), sale(i));
        }
        for i in (0..n).step_by(97).chain(n - 10..n) {
            assert_eq!(idx.get(&format!("ld_{i}")), Some(sale(i)));
        }
        let g = idx.inner.lock();
        assert_eq!(g.names.sets.len(), NAME_SETS_MAX);
        assert_eq!(g.names.sets.capacity(), NAME_SETS_MAX);
    }

    #[test]
    fn prefault_keeps_every_sale() {
        let idx = SoldLeads::new(1_000);
        // Every fifth id of another shape.
        let id = |i: u64| {
            if i.is_multiple_of(5) {
                format!("ld_{i}")
            } else {
                hex_id("ld_", i)
            }
        };
        for i in 0..1_500u64 {
            let mut l = lead(i.is_multiple_of(3), i64::try_from(i).unwrap());
            l.auction_id = hex_id("au_", i);
            idx.insert(&id(i), l);
        }
        let before: Vec<_> = (0..1_500).map(|i| idx.get(&id(i))).collect();
        idx.prefault();
        let after: Vec<_> = (0..1_500).map(|i| idx.get(&id(i))).collect();
        assert_eq!(before, after);
        assert_eq!(before.iter().filter(|l| l.is_some()).count(), 1_000);
        // A fresh index prefaults too (every page zero, still empty).
        let fresh = SoldLeads::new(100_000);
        fresh.prefault();
        assert!(fresh.is_empty());
        assert_eq!(fresh.get(&hex_id("ld_", 0)), None);
    }

    /// The index as it was (a map and an order queue): the model the ring must match.
    #[derive(Default)]
    struct Model {
        leads: HashMap<String, SoldLead>,
        order: std::collections::VecDeque<String>,
        max: usize,
    }

    impl Model {
        fn insert(&mut self, id: &str, l: SoldLead) {
            if self.leads.contains_key(id) {
                return;
            }
            while self.leads.len() >= self.max {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                self.leads.remove(&old);
            }
            self.order.push_back(id.to_string());
            self.leads.insert(id.to_string(), l);
        }

        fn claim(&mut self, id: &str, key: BuyerKey, buyer: &str, outcome: usize) -> Claim {
            let bit = 1u8 << outcome;
            let Some(l) = self.leads.get_mut(id) else {
                return Claim::NotFound;
            };
            if !l.sold_to(key, buyer) {
                return Claim::Forbidden;
            }
            if l.seen & bit != 0 {
                return Claim::Repeat;
            }
            if l.pending & bit != 0 {
                return Claim::InFlight;
            }
            // Nothing follows a return (recorded or being recorded).
            if outcome != 5 && (l.seen | l.pending) & (1 << 5) != 0 {
                return Claim::Returned;
            }
            l.pending |= bit;
            Claim::Claimed(l.clone())
        }

        fn settle(&mut self, id: &str, outcome: usize, recorded: bool, refunded: bool) {
            if let Some(l) = self.leads.get_mut(id) {
                l.pending &= !(1 << outcome);
                if recorded {
                    l.seen |= 1 << outcome;
                    l.refunded |= refunded;
                }
            }
        }

        fn mark_seen(&mut self, id: &str, outcome: &str) -> bool {
            let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else {
                return false;
            };
            self.leads.get_mut(id).map(|l| l.seen |= 1 << i).is_some()
        }

        fn mark_refunded(&mut self, id: &str) -> bool {
            self.leads
                .get_mut(id)
                .map(|l| {
                    l.refunded = true;
                    l.seen |= 1 << 5;
                })
                .is_some()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, SoldLead),
        Get(usize),
        Claim(usize, u32, usize),
        Settle(usize, usize, bool, bool),
        MarkSeen(usize, usize),
        MarkRefunded(usize),
    }

    /// Lead ids: mostly the exchange's shape, some not (a few share a hash run).
    fn model_id(i: usize) -> String {
        match i % 4 {
            0 => format!("ld_{i}"),
            _ => hex_id("ld_", i as u64),
        }
    }

    fn arb_lead() -> impl Strategy<Value = SoldLead> {
        (
            prop_oneof![
                Just(None),
                Just(Some(BuyerKey(1))),
                Just(Some(BuyerKey(2))),
                Just(Some(BuyerKey(u32::MAX)))
            ],
            prop_oneof![Just("acme"), Just("zen")],
            prop_oneof![
                Just("au_1".to_string()),
                (0u64..4).prop_map(|i| hex_id("au_", i))
            ],
            -3i64..3,
            prop_oneof![Just(0i64), Just(7), Just(-5), Just(i64::MAX), Just(1 << 47)],
            any::<bool>(),
            0u8..4,
        )
            .prop_map(|(key, buyer, auction, margin_off, sold_at, test, seen)| {
                let mut l = lead(test, sold_at);
                l.buyer_key = key;
                l.buyer = buyer.into();
                l.auction_id = auction;
                l.margin_micros += margin_off;
                l.seen = seen;
                l
            })
    }

    fn arb_op(ids: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..ids, arb_lead()).prop_map(|(i, l)| Op::Insert(i, l)),
            1 => (0..ids).prop_map(Op::Get),
            3 => (0..ids, 0u32..3, 0usize..6).prop_map(|(i, k, o)| Op::Claim(i, k, o)),
            2 => (0..ids, 0usize..6, any::<bool>(), any::<bool>())
                .prop_map(|(i, o, r, f)| Op::Settle(i, o, r, f)),
            1 => (0..ids, 0usize..7).prop_map(|(i, o)| Op::MarkSeen(i, o)),
            1 => (0..ids).prop_map(Op::MarkRefunded),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Many sales through a small ring: every answer is the map-and-queue model's.
        #[test]
        fn the_ring_answers_as_the_map_and_queue_did(
            max in 1usize..8,
            ops in proptest::collection::vec(arb_op(24), 1..300),
        ) {
            let idx = SoldLeads::new(max);
            let mut model = Model { max, ..Model::default() };
            let buyers = [(BuyerKey(1), "acme"), (BuyerKey(2), "zen"), (BuyerKey(u32::MAX), "acme")];
            for op in ops {
                match op {
                    Op::Insert(i, l) => {
                        idx.insert(&model_id(i), l.clone());
                        model.insert(&model_id(i), l);
                    }
                    Op::Get(i) => {
                        prop_assert_eq!(idx.get(&model_id(i)), model.leads.get(&model_id(i)).cloned());
                    }
                    Op::Claim(i, b, o) => {
                        let (key, name) = buyers[b as usize];
                        prop_assert_eq!(
                            idx.claim(&model_id(i), key, name, o),
                            model.claim(&model_id(i), key, name, o)
                        );
                    }
                    Op::Settle(i, o, r, f) => {
                        idx.settle(&model_id(i), o, r, f);
                        model.settle(&model_id(i), o, r, f);
                    }
                    Op::MarkSeen(i, o) => {
                        let outcome = OUTCOMES.get(o).copied().unwrap_or("lost");
                        prop_assert_eq!(
                            idx.mark_seen(&model_id(i), outcome),
                            model.mark_seen(&model_id(i), outcome)
                        );
                    }
                    Op::MarkRefunded(i) => {
                        prop_assert_eq!(
                            idx.mark_refunded(&model_id(i)),
                            model.mark_refunded(&model_id(i))
                        );
                    }
                }
                prop_assert_eq!(idx.len(), model.leads.len());
            }
            for i in 0..24 {
                prop_assert_eq!(idx.get(&model_id(i)), model.leads.get(&model_id(i)).cloned());
            }
            // Every side entry belongs to a remembered sale.
            let side = idx.inner.lock().side.len();
            prop_assert!(side <= idx.len());
        }
    }

    #[test]
    fn the_buyer_bucket_refuses_past_its_rate() {
        let r = BuyerRate::default();
        let ok = (0..200).filter(|_| r.allow(BuyerKey(0), 0)).count();
        assert_eq!(ok, DISPOSITIONS_PER_BUYER_PER_S as usize);
        assert!(r.allow(BuyerKey(0), 1_000));
        assert!(r.allow(BuyerKey(1), 0));
    }
}
