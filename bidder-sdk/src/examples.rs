//! Two example bidders, as library code so the exchange's demo, its tests and the load
//! test can run real buyers: [`FlatBidder`] (one price, a list of states) and
//! [`ScorecardBidder`] (a small rate card, duplicate rejection on post).
//!
//! Both count what they received so tests can assert on it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use proto::buyer::{BidReply, PingMessage, PostMessage, PostReply};
use proto::Micros;
use serde_json::Value;

use crate::Bidder;

/// The pass reason both examples give for a lead they do not want.
pub const OUTSIDE_CRITERIA: &str = "outside_criteria";
/// The reject reason for a phone number already bought.
pub const DUPLICATE: &str = "duplicate";
/// The reject reason for a post whose lead has no phone number.
pub const MISSING_PHONE: &str = "missing_phone";
/// How long a [`ScorecardBidder`] bid stays valid, in ms.
pub const SCORECARD_BID_EXPIRES_IN_MS: u64 = 60_000;
/// Phone numbers a [`ScorecardBidder`] remembers by default; the oldest is forgotten first.
pub const SCORECARD_PHONES_MAX_DEFAULT: usize = 100_000;

type LeadMap = BTreeMap<String, Value>;

fn lead_str<'a>(lead: &'a LeadMap, key: &str) -> Option<&'a str> {
    lead.get(key).and_then(Value::as_str)
}

fn lead_bool(lead: &LeadMap, key: &str) -> Option<bool> {
    match lead.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn lead_u64(lead: &LeadMap, key: &str) -> Option<u64> {
    match lead.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn pass() -> BidReply {
    BidReply::NoBid {
        no_bid: OUTSIDE_CRITERIA.to_string(),
    }
}

/// Bids one flat price for leads in its states, passes on the rest, accepts every post.
#[derive(Debug)]
pub struct FlatBidder {
    /// The bid for every lead in `states`.
    pub price: Micros,
    /// Two-letter state codes this bidder buys in (compared ignoring case).
    pub states: Vec<String>,
    pings: AtomicU64,
    posts: AtomicU64,
}

impl FlatBidder {
    /// A bidder paying `price` for leads in `states`.
    pub fn new<S: Into<String>>(price: Micros, states: impl IntoIterator<Item = S>) -> FlatBidder {
        FlatBidder {
            price,
            states: states.into_iter().map(Into::into).collect(),
            pings: AtomicU64::new(0),
            posts: AtomicU64::new(0),
        }
    }

    /// Pings received so far.
    pub fn pings_received(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }

    /// Posts received so far.
    pub fn posts_received(&self) -> u64 {
        self.posts.load(Ordering::Relaxed)
    }
}

impl Bidder for FlatBidder {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        self.pings.fetch_add(1, Ordering::Relaxed);
        let in_states = lead_str(&ping.lead, "state")
            .is_some_and(|state| self.states.iter().any(|s| s.eq_ignore_ascii_case(state)));
        if in_states {
            BidReply::Bid {
                bid: self.price,
                bid_id: None,
                expires_in_ms: None,
            }
        } else {
            pass()
        }
    }

    async fn post(&self, _post: PostMessage) -> PostReply {
        let n = self.posts.fetch_add(1, Ordering::Relaxed) + 1;
        PostReply {
            accepted: true,
            buyer_lead_id: Some(format!("flat-{n}")),
            reason: None,
        }
    }
}

/// The prices a [`ScorecardBidder`] adds up. The bid is the base for the lead's credit
/// tier, plus the homeowner and insured premiums, minus the young-driver discount, and
/// never below `floor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCard {
    /// Base for `credit: "excellent"`.
    pub excellent: Micros,
    /// Base for `credit: "good"`.
    pub good: Micros,
    /// Base for `credit: "fair"`.
    pub fair: Micros,
    /// Base for `credit: "poor"`.
    pub poor: Micros,
    /// Added when `homeowner` is true.
    pub homeowner_premium: Micros,
    /// Added when `insured` is true (currently insured drivers convert better).
    pub insured_premium: Micros,
    /// Subtracted when `age` is under 25.
    pub under_25_discount: Micros,
    /// The least the card ever bids.
    pub floor: Micros,
}

impl Default for RateCard {
    fn default() -> RateCard {
        RateCard {
            excellent: Micros(22_000_000),
            good: Micros(18_000_000),
            fair: Micros(12_000_000),
            poor: Micros(7_000_000),
            homeowner_premium: Micros(4_000_000),
            insured_premium: Micros(2_500_000),
            under_25_discount: Micros(3_000_000),
            floor: Micros(1_000_000),
        }
    }
}

impl RateCard {
    /// The price for a lead, or `None` when its credit tier is missing or unknown.
    pub fn price(&self, lead: &BTreeMap<String, Value>) -> Option<Micros> {
        let base = match lead_str(lead, "credit")? {
            "excellent" => self.excellent,
            "good" => self.good,
            "fair" => self.fair,
            "poor" => self.poor,
            _ => return None,
        };
        let mut price = base;
        if lead_bool(lead, "homeowner") == Some(true) {
            price = price.saturating_add(self.homeowner_premium);
        }
        if lead_bool(lead, "insured") == Some(true) {
            price = price.saturating_add(self.insured_premium);
        }
        if lead_u64(lead, "age").is_some_and(|age| age < 25) {
            price = price.saturating_sub(self.under_25_discount);
        }
        Some(price.max(self.floor))
    }
}

/// A bounded set of phone numbers: first in, first forgotten.
#[derive(Debug)]
struct SeenPhones {
    set: HashSet<String>,
    order: VecDeque<String>,
    len_max: usize,
}

impl SeenPhones {
    fn new(len_max: usize) -> SeenPhones {
        SeenPhones {
            set: HashSet::new(),
            order: VecDeque::new(),
            len_max: len_max.max(1),
        }
    }

    /// Records `phone`; false when it was already there.
    fn insert(&mut self, phone: String) -> bool {
        if self.set.contains(&phone) {
            return false;
        }
        if self.order.len() >= self.len_max {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(phone.clone());
        self.order.push_back(phone);
        true
    }
}

/// Prices leads from a [`RateCard`], bids with a random `bid_id` valid for 60 s, and on
/// post rejects a phone number it already bought (`"duplicate"`), remembering the last
/// [`SCORECARD_PHONES_MAX_DEFAULT`] numbers by default.
#[derive(Debug)]
pub struct ScorecardBidder {
    card: RateCard,
    phones: Mutex<SeenPhones>,
    pings: AtomicU64,
    posts: AtomicU64,
    accepted: AtomicU64,
}

impl Default for ScorecardBidder {
    fn default() -> ScorecardBidder {
        ScorecardBidder::new(RateCard::default())
    }
}

impl ScorecardBidder {
    /// A bidder pricing with `card` and remembering the default number of phones.
    pub fn new(card: RateCard) -> ScorecardBidder {
        ScorecardBidder::with_phones_max(card, SCORECARD_PHONES_MAX_DEFAULT)
    }

    /// A bidder remembering at most `phones_max` phone numbers (at least one).
    pub fn with_phones_max(card: RateCard, phones_max: usize) -> ScorecardBidder {
        ScorecardBidder {
            card,
            phones: Mutex::new(SeenPhones::new(phones_max)),
            pings: AtomicU64::new(0),
            posts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    /// The rate card in use.
    pub fn card(&self) -> &RateCard {
        &self.card
    }

    /// Pings received so far.
    pub fn pings_received(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }

    /// Posts received so far, accepted or not.
    pub fn posts_received(&self) -> u64 {
        self.posts.load(Ordering::Relaxed)
    }

    /// Posts accepted so far.
    pub fn posts_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// The phone's digits, so `+1 (817) 555-0123` and `+18175550123` are one number.
fn phone_key(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

impl Bidder for ScorecardBidder {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        self.pings.fetch_add(1, Ordering::Relaxed);
        match self.card.price(&ping.lead) {
            Some(bid) => BidReply::Bid {
                bid,
                bid_id: Some(format!("sc-{}", letters_id(rand::random::<u64>()))),
                expires_in_ms: Some(SCORECARD_BID_EXPIRES_IN_MS),
            },
            None => pass(),
        }
    }

    async fn post(&self, post: PostMessage) -> PostReply {
        self.posts.fetch_add(1, Ordering::Relaxed);
        let reject = |reason: &str| PostReply {
            accepted: false,
            buyer_lead_id: None,
            reason: Some(reason.to_string()),
        };
        let phone = lead_str(&post.lead, "phone")
            .map(phone_key)
            .unwrap_or_default();
        if phone.is_empty() {
            return reject(MISSING_PHONE);
        }
        // A panic elsewhere while holding the lock leaves the set intact: keep using it.
        let first_time = self
            .phones
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(phone);
        if !first_time {
            return reject(DUPLICATE);
        }
        let n = self.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        PostReply {
            accepted: true,
            buyer_lead_id: Some(format!("sc-lead-{n}")),
            reason: None,
        }
    }
}

/// 16 letters from `n`: a bid id with no digits, which the exchange always keeps (16
/// random hex digits may hold a run of 7 digits, dropped as a possible phone number).
fn letters_id(mut n: u64) -> String {
    (0..16)
        .map(|_| {
            let c = char::from(b'a' + (n % 16) as u8);
            n /= 16;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(json: &str) -> LeadMap {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn rate_card() {
        let card = RateCard::default();
        assert_eq!(
            card.price(&lead(r#"{"credit":"good"}"#)),
            Some(Micros(18_000_000))
        );
        assert_eq!(
            card.price(&lead(
                r#"{"credit":"excellent","homeowner":true,"insured":true,"age":42}"#
            )),
            Some(Micros(28_500_000))
        );
        assert_eq!(
            card.price(&lead(r#"{"credit":"poor","age":19}"#)),
            Some(Micros(4_000_000))
        );
        assert_eq!(
            card.price(&lead(r#"{"credit":"fair","age":"24","homeowner":"true"}"#)),
            Some(Micros(13_000_000))
        );
        let stingy = RateCard {
            poor: Micros(2_000_000),
            ..RateCard::default()
        };
        assert_eq!(
            stingy.price(&lead(r#"{"credit":"poor","age":18}"#)),
            Some(stingy.floor)
        );
        assert_eq!(card.price(&lead(r#"{"credit":"meh"}"#)), None);
        assert_eq!(card.price(&lead(r#"{"state":"TX"}"#)), None);
    }

    #[test]
    fn seen_phones_are_bounded() {
        let mut seen = SeenPhones::new(2);
        assert!(seen.insert("1".into()));
        assert!(!seen.insert("1".into()));
        assert!(seen.insert("2".into()));
        assert!(seen.insert("3".into()));
        assert_eq!(seen.set.len(), 2);
        // "1" was forgotten first.
        assert!(seen.insert("1".into()));
        assert!(!seen.insert("3".into()));
        assert_eq!(phone_key("+1 (817) 555-0123"), "18175550123");
    }
}
