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
//! Architecture invariant: the index names a lead's buyer by its stable [`BuyerKey`]
//! (and id), never by a position in one configuration, so a reload that reorders buyers
//! cannot hand a lead to another buyer.
//!
//! Never: stores or logs free text from a buyer: `reason` is a short code of letters,
//! digits (at most [`REASON_DIGITS_MAX`]), `_`, `-` and `.`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use proto::json::{parse_value, ObjectReader};
use proto::{ApiError, ErrorCode, FieldProblem};

use crate::config::BuyerKey;
use crate::core::compact::{CompactId, Interner};
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
/// Longest `lead_id` accepted (the exchange's own are 35 characters).
pub const LEAD_ID_LEN_MAX: usize = 64;
/// Longest `reason` (a code such as `disconnected_number`).
pub const REASON_LEN_MAX: usize = 64;
/// Most digits in a `reason`: enough for a code (`dup_30d`), too few for a phone number,
/// a ZIP+4 or a birth date.
pub const REASON_DIGITS_MAX: usize = 4;
/// Disposition requests one buyer may make per second (token bucket, a burst of one
/// second); past it, `429 rate_limited` with `Retry-After`.
pub const DISPOSITIONS_PER_BUYER_PER_S: u32 = 100;
/// One day in milliseconds (the return window is in whole days).
pub const DAY_MS: i64 = 86_400_000;

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
                "must be a lead id as /v1/post answered it (ld_ then letters and digits)",
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
    if let Some(why) = reason.as_deref().and_then(reason_problem) {
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

/// Why `reason` is not a reason code, if it is not.
fn reason_problem(reason: &str) -> Option<&'static str> {
    let allowed = reason
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !allowed {
        return Some("must be a reason code: letters, digits, _, - and . only (no free text)");
    }
    if reason.bytes().filter(u8::is_ascii_digit).count() > REASON_DIGITS_MAX {
        return Some(
            "must be a reason code with at most 4 digits (never a phone number or a date)",
        );
    }
    None
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
/// Inside the window means `now - sold_at <= window_days` whole days (a return at exactly
/// the end still counts).
pub fn refund_decision(lead: &SoldLead, window_days: u16, now: UnixMs) -> Result<(), NoRefund> {
    if lead.test {
        return Err(NoRefund::TestLead);
    }
    if window_days == 0 {
        return Err(NoRefund::NoReturnWindow);
    }
    if now.saturating_sub(lead.sold_at) > i64::from(window_days) * DAY_MS {
        return Err(NoRefund::OutsideReturnWindow);
    }
    Ok(())
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
}

/// A sale's names: buyer, seller, vertical, currency.
type SaleNames = [Arc<str>; 4];

/// A sold lead as the index keeps it (P10: up to `server.sold_leads_max` of them): its
/// names shared with every sale of the same buyer, seller, vertical and currency (one
/// pointer), the auction id inline. [`KeptSale::lead`] gives the [`SoldLead`] back.
#[derive(Debug)]
struct KeptSale {
    buyer_key: Option<BuyerKey>,
    names: Arc<SaleNames>,
    auction_id: CompactId,
    bid_micros: i64,
    seller_price_micros: i64,
    margin_micros: i64,
    sold_at: UnixMs,
    test: bool,
    seen: u8,
    pending: u8,
    refunded: bool,
}

/// Names, and combinations of them, the index shares at most (past it they are copied).
const SHARED_NAMES_MAX: usize = 16_384;
/// Longest name the index shares.
const SHARED_NAME_LEN_MAX: usize = 128;

/// The shared names of the index (bounded: past the bound a sale gets its own copy).
#[derive(Debug)]
struct Names {
    strings: Interner,
    sets: HashSet<Arc<SaleNames>>,
}

impl Names {
    fn share(&mut self, l: &SoldLead) -> Arc<SaleNames> {
        let one = |s: &str| {
            if s.len() <= SHARED_NAME_LEN_MAX {
                self.strings.intern(s)
            } else {
                Arc::from(s)
            }
        };
        let set = [
            one(&l.buyer),
            one(&l.seller),
            one(&l.vertical),
            one(&l.currency),
        ];
        if let Some(shared) = self.sets.get(&set) {
            return Arc::clone(shared);
        }
        let set = Arc::new(set);
        if self.sets.len() < SHARED_NAMES_MAX {
            self.sets.insert(Arc::clone(&set));
        }
        set
    }
}

impl KeptSale {
    fn new(l: SoldLead, names: &mut Names) -> KeptSale {
        KeptSale {
            buyer_key: l.buyer_key,
            names: names.share(&l),
            auction_id: CompactId::new(&l.auction_id),
            bid_micros: l.bid_micros,
            seller_price_micros: l.seller_price_micros,
            margin_micros: l.margin_micros,
            sold_at: l.sold_at,
            test: l.test,
            seen: l.seen,
            pending: l.pending,
            refunded: l.refunded,
        }
    }

    fn lead(&self) -> SoldLead {
        let [buyer, seller, vertical, currency] = &*self.names;
        SoldLead {
            buyer_key: self.buyer_key,
            buyer: buyer.to_string(),
            seller: seller.to_string(),
            vertical: vertical.to_string(),
            auction_id: self.auction_id.to_string_exact(),
            currency: currency.to_string(),
            bid_micros: self.bid_micros,
            seller_price_micros: self.seller_price_micros,
            margin_micros: self.margin_micros,
            sold_at: self.sold_at,
            test: self.test,
            seen: self.seen,
            pending: self.pending,
            refunded: self.refunded,
        }
    }

    /// Was the lead sold to this buyer? (As [`SoldLead::sold_to`].)
    fn sold_to(&self, key: BuyerKey, id: &str) -> bool {
        match self.buyer_key {
            Some(k) => k == key,
            None => &*self.names[0] == id,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// By lead id (inline for the exchange's own `ld_` ids).
    leads: HashMap<CompactId, KeptSale>,
    /// Lead ids in the order they were sold (the oldest is forgotten first).
    order: VecDeque<CompactId>,
    names: Names,
}

/// The sold-lead index: by `lead_id`, bounded (oldest sale forgotten first).
#[derive(Debug)]
pub struct SoldLeads {
    inner: Mutex<Inner>,
    max: usize,
}

impl SoldLeads {
    pub fn new(max: usize) -> SoldLeads {
        SoldLeads {
            inner: Mutex::new(Inner {
                leads: HashMap::new(),
                order: VecDeque::new(),
                names: Names {
                    strings: Interner::new(SHARED_NAMES_MAX),
                    sets: HashSet::new(),
                },
            }),
            max: max.max(1),
        }
    }

    /// How many leads are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().leads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lead's entry (a copy), if remembered.
    pub fn get(&self, lead_id: &str) -> Option<SoldLead> {
        self.inner
            .lock()
            .leads
            .get(&CompactId::new(lead_id))
            .map(KeptSale::lead)
    }

    /// Remembers a sale, forgetting the oldest past the bound. A lead sold twice (never
    /// in a consistent ledger) keeps its first sale.
    pub fn insert(&self, lead_id: &str, lead: SoldLead) {
        let id = CompactId::new(lead_id);
        let mut g = self.inner.lock();
        if g.leads.contains_key(&id) {
            return;
        }
        while g.leads.len() >= self.max {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            g.leads.remove(&old);
        }
        let kept = KeptSale::new(lead, &mut g.names);
        g.order.push_back(id.clone());
        g.leads.insert(id, kept);
    }

    /// Claims (lead, outcome) for `buyer`: on success the outcome is pending until
    /// [`SoldLeads::settle`]. Nothing changes on any other answer.
    pub fn claim(&self, lead_id: &str, buyer: BuyerKey, buyer_id: &str, outcome: usize) -> Claim {
        let bit = 1u8 << outcome;
        let mut g = self.inner.lock();
        let Some(lead) = g.leads.get_mut(&CompactId::new(lead_id)) else {
            return Claim::NotFound;
        };
        if !lead.sold_to(buyer, buyer_id) {
            return Claim::Forbidden;
        }
        if lead.seen & bit != 0 {
            return Claim::Repeat;
        }
        if lead.pending & bit != 0 {
            return Claim::InFlight;
        }
        lead.pending |= bit;
        Claim::Claimed(lead.lead())
    }

    /// Ends a claim: `recorded` marks the outcome seen (and `refunded` the refund);
    /// otherwise the claim is dropped and the outcome may be reported again.
    pub fn settle(&self, lead_id: &str, outcome: usize, recorded: bool, refunded: bool) {
        let bit = 1u8 << outcome;
        let mut g = self.inner.lock();
        if let Some(lead) = g.leads.get_mut(&CompactId::new(lead_id)) {
            lead.pending &= !bit;
            if recorded {
                lead.seen |= bit;
                lead.refunded |= refunded;
            }
        }
    }

    /// Marks a recorded outcome (recovery, from a `disposition` record).
    pub fn mark_seen(&self, lead_id: &str, outcome: &str) -> bool {
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) else {
            return false;
        };
        let mut g = self.inner.lock();
        match g.leads.get_mut(&CompactId::new(lead_id)) {
            Some(lead) => {
                lead.seen |= 1 << i;
                true
            }
            None => false,
        }
    }

    /// Marks a recorded refund (recovery, from a `refund` record): the lead's `returned`
    /// is taken too.
    pub fn mark_refunded(&self, lead_id: &str) -> bool {
        let mut g = self.inner.lock();
        match g.leads.get_mut(&CompactId::new(lead_id)) {
            Some(lead) => {
                lead.refunded = true;
                lead.seen |= 1 << 5;
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
    fn a_kept_sale_is_small_and_shares_its_names() {
        // The index holds up to `server.sold_leads_max` (1,000,000) of these.
        assert!(std::mem::size_of::<KeptSale>() <= 80);
        let idx = SoldLeads::new(10);
        idx.insert("ld_a", lead(false, 0));
        idx.insert("ld_b", lead(false, 1));
        let mut other = lead(false, 2);
        other.buyer = "zenith".into();
        idx.insert("ld_c", other.clone());
        let g = idx.inner.lock();
        let names = |id: &str| Arc::clone(&g.leads[&CompactId::new(id)].names);
        assert!(Arc::ptr_eq(&names("ld_a"), &names("ld_b")));
        assert!(!Arc::ptr_eq(&names("ld_a"), &names("ld_c")));
        // The seller, vertical and currency strings are shared across the two sets too.
        assert!(Arc::ptr_eq(&names("ld_a")[1], &names("ld_c")[1]));
        drop(g);
        assert_eq!(idx.get("ld_c"), Some(other));
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
