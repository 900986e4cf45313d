//! The book of firm quotes and the state machine of their post.
//!
//! Owns: every quote from the ping that made it until it is posted, expires, or is
//! forgotten, and the rule that a quote is posted at most once. Each ping id moves
//! `Open -> Posting -> Done` (or `Open -> Done(expired)`); `Posting -> Open` only when the
//! shell gives a quote back before anything was delivered ([`QuoteBook::abandon`]). A
//! `Done` entry answers every later post of the same ping with the first outcome, so a
//! retried post never sells twice.
//!
//! Limits: at most `open_max` quotes open or posting (then pings are shed); at most
//! `done_max` finished entries, each kept `done_ttl_ms` (forgetting one is safe: a late
//! repeat gets `not_found` and still delivers nothing).
//!
//! Memory (P10): the book keeps each entry compact and gives the same values back. A
//! ping id of the exchange's shape is a [`CompactId`] with no allocation of its own; an
//! open quote keeps its lead packed ([`PackedLead`]), its bids in an exact-size slice
//! and its currency and vertical name shared ([`Interner`]); a finished entry keeps its
//! answer without the ping id (the key) and with its strings shared, and an expired one
//! no answer at all. `tests/quote_memory.rs` measures the bytes per entry.
//!
//! Never: reads a clock, releases or commits caps itself (it hands reservations back to
//! the caller), tells one seller anything about another seller's ping, or holds a map
//! shard lock and one of its own mutexes at once (no lock-order deadlocks).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use parking_lot::Mutex;
use proto::seller::{PostAnswer, PostStatus};
use proto::{Lead, Micros, PackedLead};

use super::award::Ranked;
use super::caps::Reservation;
use super::compact::{CompactId, Interner};
use super::UnixMs;
use crate::config::{SellerKey, VerticalIdx};
use crate::slots::Slots;

/// Finished entries remembered at most, unless [`QuoteBook::with_done_max`] says otherwise
/// (bounds memory whatever `done_ttl_ms` is: at 2,000 finished pings a second that is two
/// minutes of them; a post of a forgotten ping gets `404`, and is never delivered).
pub const DONE_ENTRIES_MAX_DEFAULT: usize = 250_000;
/// Expiries taken from the heap per lock hold in [`QuoteBook::sweep`], so a large backlog
/// never blocks `insert` for long.
pub const SWEEP_CHUNK_MAX: usize = 4_096;
/// The `reason` of the answer to a post after the quote expired.
pub const EXPIRED_REASON: &str = "quote_expired";
/// Strings the book shares at most (currencies, vertical and buyer names, reasons,
/// changed field names); past it they are copied.
pub const SHARED_STRINGS_MAX: usize = 16_384;
/// Longest string the book shares; a longer one is copied.
pub const SHARED_STRING_LEN_MAX: usize = 128;

/// A firm quote: what the seller was promised, and what is needed to deliver it.
#[derive(Debug, Clone)]
pub struct Quote {
    /// The id the seller posts with.
    pub ping_id: String,
    /// The auction that made the quote (ledger key, sent to buyers).
    pub auction_id: String,
    /// The seller that pinged (stable key); only it may post.
    pub seller: SellerKey,
    /// The vertical, whose schema validates the posted lead: its index in the
    /// configuration the quote was made under, valid while `vertical_name` names it.
    pub vertical: VerticalIdx,
    /// The vertical's name: a post after a reload finds the vertical by it.
    pub vertical_name: String,
    /// The ping-time lead, to detect changed ping fields at post (`mismatch`).
    pub lead: Lead,
    /// The seller's `test` flag from the ping, carried into the post to buyers.
    pub test: bool,
    /// The seller price quoted (what the seller is paid on a sale).
    pub price: Micros,
    /// The vertical's currency, echoed in the post answer.
    pub currency: String,
    /// The quote is firm while `now < expires_at`.
    pub expires_at: UnixMs,
    /// When the auction started: buyers' `expires_in_ms` count from here.
    pub auctioned_at: UnixMs,
    /// The winner first, then every other bid in rank order (fallbacks come from here).
    pub ranked: Vec<Ranked>,
    /// The winner's cap and budget hold; `None` only for a quote that reserves nothing.
    pub reservation: Option<Reservation>,
    /// The lead's score at ping (for the ledger and the ranker's view of fallbacks).
    pub score: Option<u8>,
}

/// A quote was refused: `open_max` quotes are open (shed the ping with 503), or the
/// `ping_id` is already in the book (ids are unique; an entry is never overwritten).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the quote book is full or already holds this ping_id")]
pub struct BookFull;

/// Why [`QuoteBook::insert_limited`] refused a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuoteRefused {
    /// `open_max` quotes are open, or the ping id is already in the book (shed: 503).
    #[error("the quote book is full or already holds this ping_id")]
    BookFull,
    /// The seller holds its `quotes_open_max` open quotes (429 `rate_limited`).
    #[error("the seller holds its most open quotes")]
    SellerLimit,
}

/// What a post of a ping id may do.
#[derive(Debug)]
pub enum BeginPost {
    /// Deliver it: the entry is now `Posting` and the caller owns the quote until it calls
    /// [`QuoteBook::finish`] (or [`QuoteBook::abandon`]).
    Post(Quote),
    /// Unknown id, forgotten id, or another seller's ping: never reveal which.
    NotFound,
    /// The first post after expiry: the caller releases the reservation (if any); the
    /// entry is now `Done` with the expired answer, which later posts get again.
    Expired(Option<Reservation>),
    /// A post of the same ping is running right now (the seller gets `409 conflict`).
    InFlight,
    /// Posted before: the first outcome again, nothing delivered.
    Done(PostAnswer),
}

/// An open quote as the book keeps it: a [`Quote`] without its ping id (the entry's
/// key), with its lead packed, its bids in an exact-size slice and its strings shared.
#[derive(Debug)]
struct KeptQuote {
    auction_id: CompactId,
    vertical_name: Arc<str>,
    currency: Arc<str>,
    lead: PackedLead,
    ranked: Box<[Ranked]>,
    reservation: Option<Reservation>,
    vertical: VerticalIdx,
    price: Micros,
    expires_at: UnixMs,
    auctioned_at: UnixMs,
    score: Option<u8>,
    test: bool,
}

impl KeptQuote {
    fn new(q: Quote, strings: &Strings) -> KeptQuote {
        KeptQuote {
            auction_id: CompactId::new(&q.auction_id),
            vertical_name: strings.share(&q.vertical_name),
            currency: strings.share(&q.currency),
            lead: q.lead.pack(),
            ranked: q.ranked.into_boxed_slice(),
            reservation: q.reservation,
            vertical: q.vertical,
            price: q.price,
            expires_at: q.expires_at,
            auctioned_at: q.auctioned_at,
            score: q.score,
            test: q.test,
        }
    }

    /// The quote that was put in, for the seller `seller` under the ping id `key`.
    fn into_quote(self, key: &CompactId, seller: SellerKey) -> Quote {
        Quote {
            ping_id: key.to_string_exact(),
            auction_id: self.auction_id.to_string_exact(),
            seller,
            vertical: self.vertical,
            vertical_name: self.vertical_name.to_string(),
            lead: self.lead.unpack(),
            test: self.test,
            price: self.price,
            currency: self.currency.to_string(),
            expires_at: self.expires_at,
            auctioned_at: self.auctioned_at,
            ranked: self.ranked.into_vec(),
            reservation: self.reservation,
            score: self.score,
        }
    }
}

/// The `ping_id` of a kept answer.
#[derive(Debug)]
enum AnswerPingId {
    None,
    /// The entry's own key (every answer the exchange makes).
    Key,
    Other(CompactId),
}

/// A finished post's answer as the book keeps it: [`PostAnswer`] without a copy of the
/// ping id and with its strings shared; [`DoneAnswer::answer`] gives it back.
#[derive(Debug)]
struct DoneAnswer {
    status: PostStatus,
    ping_id: AnswerPingId,
    lead_id: Option<CompactId>,
    price: Option<Micros>,
    currency: Option<Arc<str>>,
    buyer: Option<Arc<str>>,
    reason: Option<Arc<str>>,
    changed_fields: Box<[Arc<str>]>,
}

impl DoneAnswer {
    fn new(a: PostAnswer, key: &CompactId, strings: &Strings) -> DoneAnswer {
        let share = |s: Option<String>| s.map(|s| strings.share(&s));
        DoneAnswer {
            status: a.status,
            ping_id: match a.ping_id {
                None => AnswerPingId::None,
                Some(p) if key.is(&p) => AnswerPingId::Key,
                Some(p) => AnswerPingId::Other(CompactId::new(&p)),
            },
            lead_id: a.lead_id.as_deref().map(CompactId::new),
            price: a.price,
            currency: share(a.currency),
            buyer: share(a.buyer),
            reason: share(a.reason),
            changed_fields: a.changed_fields.iter().map(|f| strings.share(f)).collect(),
        }
    }

    /// The answer that was put in, for the ping id `key`.
    fn answer(&self, key: &CompactId) -> PostAnswer {
        let text = |s: &Option<Arc<str>>| s.as_deref().map(str::to_string);
        PostAnswer {
            status: self.status,
            lead_id: self.lead_id.as_ref().map(CompactId::to_string_exact),
            ping_id: match &self.ping_id {
                AnswerPingId::None => None,
                AnswerPingId::Key => Some(key.to_string_exact()),
                AnswerPingId::Other(p) => Some(p.to_string_exact()),
            },
            price: self.price,
            currency: text(&self.currency),
            buyer: text(&self.buyer),
            reason: text(&self.reason),
            changed_fields: self.changed_fields.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// The strings the book shares (bounded; short strings only).
#[derive(Debug)]
struct Strings(Interner);

impl Strings {
    fn share(&self, s: &str) -> Arc<str> {
        if s.len() <= SHARED_STRING_LEN_MAX {
            self.0.intern(s)
        } else {
            Arc::from(s)
        }
    }
}

/// Where one ping id is in its life.
#[derive(Debug)]
enum State {
    Open(Box<KeptQuote>),
    /// The quote is with the caller.
    Posting,
    /// Finished at `at` with this answer; `None` is the expired answer, built when asked
    /// (most finished entries are quotes that expired unposted: keep them small).
    Done {
        answer: Option<Box<DoneAnswer>>,
        at: UnixMs,
    },
}

#[derive(Debug)]
struct Entry {
    /// The owner, checked on every post (kept here because a posting quote is away).
    seller: SellerKey,
    state: State,
}

/// A time and a ping id (an expiry, or when an entry finished).
type Timed = (UnixMs, CompactId);

/// All quotes, shared by every request task.
#[derive(Debug)]
pub struct QuoteBook {
    /// By ping id (inline for the exchange's own ids, so the copies in the expiry heap
    /// and the finished order cost no allocation).
    entries: DashMap<CompactId, Entry>,
    /// Entries `Open` or `Posting`; checked against `open_max` on insert.
    open: AtomicUsize,
    open_max: usize,
    /// Entries `Open` or `Posting` per seller (by stable key), for
    /// `sellers.ID.quotes_open_max`; a seller without a slot is not counted (no limit).
    open_by_seller: Slots<AtomicUsize>,
    done_ttl_ms: u64,
    done_max: usize,
    /// `(expires_at, ping_id)` of quotes put in `Open`, soonest first. An entry can be
    /// stale (the quote was posted); sweep checks the state. Holds at most one entry per
    /// insert or abandon within the quote TTL.
    expiries: Mutex<BinaryHeap<Reverse<Timed>>>,
    /// `(done_at, ping_id)` in the order entries finished, for TTL and `done_max`.
    done_order: Mutex<VecDeque<Timed>>,
    /// Strings shared by the kept quotes and answers.
    strings: Strings,
}

fn expired_answer(ping_id: &str) -> PostAnswer {
    let mut a = PostAnswer::status_only(PostStatus::Expired, Some(EXPIRED_REASON));
    a.ping_id = Some(ping_id.to_string());
    a
}

impl QuoteBook {
    /// A book holding at most `open_max` open quotes, remembering finished posts for
    /// `done_ttl_ms` (at most [`DONE_ENTRIES_MAX_DEFAULT`] of them).
    pub fn new(open_max: usize, done_ttl_ms: u64) -> QuoteBook {
        QuoteBook {
            entries: DashMap::new(),
            open: AtomicUsize::new(0),
            open_max,
            open_by_seller: Slots::with_len(0),
            done_ttl_ms,
            done_max: DONE_ENTRIES_MAX_DEFAULT,
            expiries: Mutex::new(BinaryHeap::new()),
            done_order: Mutex::new(VecDeque::new()),
            strings: Strings(Interner::new(SHARED_STRINGS_MAX)),
        }
    }

    /// Sets the most finished entries remembered (oldest are forgotten first).
    pub fn with_done_max(mut self, done_max: usize) -> QuoteBook {
        self.done_max = done_max;
        self
    }

    /// Counts open quotes per seller for seller keys `0..seller_count` (see
    /// [`QuoteBook::insert_limited`]).
    pub fn with_sellers(self, seller_count: usize) -> QuoteBook {
        self.grow_sellers(seller_count);
        self
    }

    /// Makes room for seller keys `0..seller_count` (a reload added sellers); never shrinks.
    pub fn grow_sellers(&self, seller_count: usize) {
        self.open_by_seller.grow(seller_count);
    }

    /// Quotes of `seller` open or posting now.
    pub fn seller_open_count(&self, seller: SellerKey) -> usize {
        self.open_by_seller
            .get(seller.slot())
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    fn seller_done(&self, seller: SellerKey) {
        if let Some(c) = self.open_by_seller.get(seller.slot()) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Adds an open quote. Refused when `open_max` quotes are open or posting, or when the
    /// ping id is already in the book; the caller then releases the quote's reservation.
    pub fn insert(&self, q: Quote) -> Result<(), BookFull> {
        self.insert_limited(q, usize::MAX).map_err(|_| BookFull)
    }

    /// [`insert`](QuoteBook::insert), also refused when the quote's seller already has
    /// `seller_open_max` quotes open or posting.
    pub fn insert_limited(&self, q: Quote, seller_open_max: usize) -> Result<(), QuoteRefused> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.open_max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(QuoteRefused::BookFull);
        }
        let seller = q.seller;
        if let Some(c) = self.open_by_seller.get(seller.slot()) {
            if c.fetch_add(1, Ordering::AcqRel) >= seller_open_max {
                c.fetch_sub(1, Ordering::AcqRel);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(QuoteRefused::SellerLimit);
            }
        }
        let key = CompactId::new(&q.ping_id);
        let expiry = (q.expires_at, key.clone());
        match self.entries.entry(key) {
            MapEntry::Occupied(_) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.seller_done(seller);
                return Err(QuoteRefused::BookFull);
            }
            MapEntry::Vacant(v) => {
                v.insert(Entry {
                    seller: q.seller,
                    state: State::Open(Box::new(KeptQuote::new(q, &self.strings))),
                });
            }
        }
        self.expiries.lock().push(Reverse(expiry));
        Ok(())
    }

    /// Starts the post of `ping_id` by `seller` at `now`. A quote is expired when `now >=
    /// expires_at`. Exactly one of any number of concurrent callers gets `Post`.
    pub fn begin_post(&self, ping_id: &str, seller: SellerKey, now: UnixMs) -> BeginPost {
        let (out, finished) = {
            let Some(mut e) = self.entries.get_mut(&CompactId::new(ping_id)) else {
                return BeginPost::NotFound;
            };
            if e.seller != seller {
                return BeginPost::NotFound;
            }
            let key = e.key().clone();
            match std::mem::replace(&mut e.state, State::Posting) {
                State::Posting => (BeginPost::InFlight, None),
                State::Done { answer, at } => {
                    let again = answer
                        .as_deref()
                        .map_or_else(|| expired_answer(ping_id), |a| a.answer(&key));
                    e.state = State::Done { answer, at };
                    (BeginPost::Done(again), None)
                }
                State::Open(mut q) if now >= q.expires_at => {
                    let reservation = q.reservation.take();
                    e.state = State::Done {
                        answer: None,
                        at: now,
                    };
                    (BeginPost::Expired(reservation), Some(key))
                }
                State::Open(q) => (BeginPost::Post(q.into_quote(&key, seller)), None),
            }
        };
        if let Some(key) = finished {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.seller_done(seller);
            self.remember_done(vec![(now, key)]);
        }
        out
    }

    /// Ends a post with its outcome (`Posting -> Done`); later posts get `answer` again.
    /// Returns false, changing nothing, if the ping was not posting (a first outcome is
    /// never replaced).
    pub fn finish(&self, ping_id: &str, answer: PostAnswer, now: UnixMs) -> bool {
        let finished = match self.entries.get_mut(&CompactId::new(ping_id)) {
            Some(mut e) if matches!(e.state, State::Posting) => {
                let key = e.key().clone();
                e.state = State::Done {
                    answer: Some(Box::new(DoneAnswer::new(answer, &key, &self.strings))),
                    at: now,
                };
                Some((e.seller, key))
            }
            _ => None,
        };
        let Some((seller, key)) = finished else {
            return false;
        };
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.seller_done(seller);
        self.remember_done(vec![(now, key)]);
        true
    }

    /// Puts back a post that finished before a restart (recovery): `ping_id` of `seller`
    /// is `Done` at `at` with `answer` (`None`: the expired answer), so a repeat of the
    /// post gets its first outcome again and delivers nothing. Returns false, changing
    /// nothing, when the ping is already in the book or the entry is older than the
    /// finished entries' TTL at `now`. Counts no open quote.
    pub fn restore_done(
        &self,
        ping_id: &str,
        seller: SellerKey,
        answer: Option<PostAnswer>,
        at: UnixMs,
        now: UnixMs,
    ) -> bool {
        if now.saturating_sub(at) >= i64::try_from(self.done_ttl_ms).unwrap_or(i64::MAX) {
            return false;
        }
        let key = CompactId::new(ping_id);
        match self.entries.entry(key.clone()) {
            MapEntry::Occupied(_) => return false,
            MapEntry::Vacant(v) => {
                let answer = answer.map(|a| Box::new(DoneAnswer::new(a, &key, &self.strings)));
                v.insert(Entry {
                    seller,
                    state: State::Done { answer, at },
                });
            }
        }
        self.remember_done(vec![(at, key)]);
        true
    }

    /// Gives a quote back (`Posting -> Open`) after an internal failure before anything
    /// was delivered, so the seller may post again while it is firm. (A `mismatch` is an
    /// outcome: [`finish`](QuoteBook::finish) it.) Returns the quote back if the ping was
    /// not posting; the caller then still owns its reservation.
    pub fn abandon(&self, ping_id: &str, q: Quote) -> Option<Quote> {
        let expiry = match self.entries.get_mut(&CompactId::new(ping_id)) {
            Some(mut e) if matches!(e.state, State::Posting) => {
                let expiry = (q.expires_at, e.key().clone());
                e.state = State::Open(Box::new(KeptQuote::new(q, &self.strings)));
                expiry
            }
            _ => return Some(q),
        };
        // Sweep may have passed this quote's expiry while it was posting.
        self.expiries.lock().push(Reverse(expiry));
        None
    }

    /// Expires open quotes with `now >= expires_at` (they become `Done(expired)`) and
    /// returns their reservations for the caller to release; forgets finished entries
    /// `done_ttl_ms` old. A posting quote is left to its post.
    pub fn sweep(&self, now: UnixMs) -> Vec<Reservation> {
        let mut reservations = Vec::new();
        loop {
            let due: Vec<CompactId> = {
                let mut heap = self.expiries.lock();
                let mut due = Vec::new();
                while due.len() < SWEEP_CHUNK_MAX {
                    match heap.peek() {
                        Some(Reverse((t, _))) if *t <= now => {}
                        _ => break,
                    }
                    if let Some(Reverse((_, id))) = heap.pop() {
                        due.push(id);
                    }
                }
                due
            };
            if due.is_empty() {
                break;
            }
            let mut expired = Vec::new();
            for id in due {
                let Some(mut e) = self.entries.get_mut(&id) else {
                    continue;
                };
                let State::Open(q) = &mut e.state else {
                    continue;
                };
                if now < q.expires_at {
                    continue;
                }
                reservations.extend(q.reservation.take());
                e.state = State::Done {
                    answer: None,
                    at: now,
                };
                let seller = e.seller;
                drop(e);
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.seller_done(seller);
                expired.push((now, id));
            }
            self.remember_done(expired);
        }
        let ttl_ms = i64::try_from(self.done_ttl_ms).unwrap_or(i64::MAX);
        let old: Vec<Timed> = {
            let mut order = self.done_order.lock();
            let mut old = Vec::new();
            while order
                .front()
                .is_some_and(|(at, _)| now.saturating_sub(*at) >= ttl_ms)
            {
                old.extend(order.pop_front());
            }
            old
        };
        self.forget(old);
        reservations
    }

    /// Records finished entries in order and forgets the oldest past `done_max`.
    fn remember_done(&self, finished: Vec<Timed>) {
        if finished.is_empty() {
            return;
        }
        let over: Vec<Timed> = {
            let mut order = self.done_order.lock();
            order.extend(finished);
            let excess = order.len().saturating_sub(self.done_max);
            order.drain(..excess).collect()
        };
        self.forget(over);
    }

    /// Drops finished entries, each only if it is still the `Done` recorded at that time.
    fn forget(&self, done: Vec<Timed>) {
        for (at, id) in done {
            self.entries.remove_if(
                &id,
                |_, e| matches!(e.state, State::Done { at: a, .. } if a == at),
            );
        }
    }

    /// Quotes open or posting (the `open_max` gauge).
    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Every entry, finished ones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the book holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::CapBook;
    use crate::testutil::{buyer, lead};

    const T0: UnixMs = 1_700_000_000_000;
    const TTL: UnixMs = 60_000;

    fn quote(id: &str, seller: u32, reservation: Option<Reservation>) -> Quote {
        Quote {
            ping_id: id.into(),
            auction_id: format!("au_{id}"),
            seller: SellerKey(seller),
            vertical: 0,
            vertical_name: "auto".into(),
            lead: lead(r#"{"state":"TX","zip":"76180"}"#),
            test: false,
            price: Micros(12_500_000),
            currency: "USD".into(),
            expires_at: T0 + TTL,
            auctioned_at: T0,
            ranked: Vec::new(),
            reservation,
            score: Some(70),
        }
    }

    fn reservation(caps: &CapBook) -> Reservation {
        caps.reserve(
            crate::config::BuyerKey(0),
            &buyer(0),
            Micros(15_000_000),
            T0,
        )
        .unwrap()
    }

    fn sold(id: &str) -> PostAnswer {
        let mut a = PostAnswer::status_only(PostStatus::Sold, None);
        a.ping_id = Some(id.into());
        a.buyer = Some("Buyer 0".into());
        a
    }

    #[test]
    fn a_restored_finished_post_answers_again_for_its_seller_only() {
        let book = QuoteBook::new(10, 1_000).with_done_max(2);
        assert!(book.restore_done("p1", SellerKey(0), Some(sold("p1")), T0, T0 + 10));
        assert!(book.restore_done("p2", SellerKey(0), None, T0 + 1, T0 + 10));
        // Already there, or past the TTL: nothing changes.
        assert!(!book.restore_done("p1", SellerKey(0), None, T0, T0 + 10));
        assert!(!book.restore_done("p3", SellerKey(0), None, T0, T0 + 1_000));
        assert_eq!((book.open_count(), book.len()), (0, 2));
        match book.begin_post("p1", SellerKey(0), T0 + 20) {
            BeginPost::Done(a) => assert_eq!(a, sold("p1")),
            other => panic!("{other:?}"),
        }
        match book.begin_post("p2", SellerKey(0), T0 + 20) {
            BeginPost::Done(a) => assert_eq!(a.status, PostStatus::Expired),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            book.begin_post("p1", SellerKey(1), T0 + 20),
            BeginPost::NotFound
        ));
        // Bounded like any finished entry: a third pushes the oldest out.
        assert!(book.restore_done("p4", SellerKey(0), None, T0 + 2, T0 + 10));
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0 + 20),
            BeginPost::NotFound
        ));
        assert_eq!(book.open_count(), 0);
    }

    #[test]
    fn open_posting_done_and_the_first_answer_again() {
        let book = QuoteBook::new(10, 1_000);
        book.insert(quote("p1", 0, None)).unwrap();
        assert_eq!((book.open_count(), book.len()), (1, 1));
        let BeginPost::Post(q) = book.begin_post("p1", SellerKey(0), T0) else {
            panic!()
        };
        assert_eq!(q.ping_id, "p1");
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0),
            BeginPost::InFlight
        ));
        assert_eq!(book.open_count(), 1);
        assert!(book.finish("p1", sold("p1"), T0 + 5));
        assert_eq!(book.open_count(), 0);
        // A second finish never replaces the first outcome.
        assert!(!book.finish(
            "p1",
            PostAnswer::status_only(PostStatus::Unsold, None),
            T0 + 6
        ));
        for _ in 0..2 {
            let BeginPost::Done(a) = book.begin_post("p1", SellerKey(0), T0 + 10) else {
                panic!()
            };
            assert_eq!(a, sold("p1"));
        }
        // Even after the quote's own expiry, the outcome stands.
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0 + TTL + 1),
            BeginPost::Done(_)
        ));
    }

    #[test]
    fn unknown_and_other_sellers_look_the_same() {
        let book = QuoteBook::new(10, 1_000);
        book.insert(quote("p1", 0, None)).unwrap();
        assert!(matches!(
            book.begin_post("nope", SellerKey(0), T0),
            BeginPost::NotFound
        ));
        assert!(matches!(
            book.begin_post("p1", SellerKey(1), T0),
            BeginPost::NotFound
        ));
        // The other seller's attempt changed nothing.
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0),
            BeginPost::Post(_)
        ));
        assert!(matches!(
            book.begin_post("p1", SellerKey(1), T0),
            BeginPost::NotFound
        ));
        assert!(book.finish("p1", sold("p1"), T0));
        assert!(matches!(
            book.begin_post("p1", SellerKey(1), T0),
            BeginPost::NotFound
        ));
    }

    #[test]
    fn expired_exactly_at_expires_at() {
        let caps = CapBook::new(1);
        let book = QuoteBook::new(10, 1_000);
        book.insert(quote("early", 0, Some(reservation(&caps))))
            .unwrap();
        book.insert(quote("edge", 0, Some(reservation(&caps))))
            .unwrap();
        assert!(matches!(
            book.begin_post("early", SellerKey(0), T0 + TTL - 1),
            BeginPost::Post(_)
        ));
        let BeginPost::Expired(Some(r)) = book.begin_post("edge", SellerKey(0), T0 + TTL) else {
            panic!()
        };
        assert!(caps.release(&r));
        assert_eq!(book.open_count(), 1);
        let BeginPost::Done(a) = book.begin_post("edge", SellerKey(0), T0 + TTL + 1) else {
            panic!()
        };
        assert_eq!(a.status, PostStatus::Expired);
        assert_eq!(a.reason.as_deref(), Some(EXPIRED_REASON));
        assert_eq!(a.ping_id.as_deref(), Some("edge"));
    }

    #[test]
    fn abandon_reopens_the_quote() {
        let book = QuoteBook::new(10, 1_000);
        book.insert(quote("p1", 0, None)).unwrap();
        let BeginPost::Post(q) = book.begin_post("p1", SellerKey(0), T0) else {
            panic!()
        };
        assert!(book.abandon("p1", q).is_none());
        assert_eq!(book.open_count(), 1);
        let BeginPost::Post(q) = book.begin_post("p1", SellerKey(0), T0 + 1) else {
            panic!()
        };
        assert!(book.finish("p1", sold("p1"), T0 + 2));
        // Not posting any more: the quote comes back to the caller.
        assert!(book.abandon("p1", q).is_some());
        assert!(book.abandon("nope", quote("nope", 0, None)).is_some());
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0 + 3),
            BeginPost::Done(_)
        ));
    }

    #[test]
    fn full_and_duplicate_ids_are_refused() {
        let book = QuoteBook::new(2, 1_000);
        book.insert(quote("a", 0, None)).unwrap();
        assert_eq!(book.insert(quote("a", 0, None)), Err(BookFull));
        assert_eq!(book.open_count(), 1);
        book.insert(quote("b", 0, None)).unwrap();
        assert_eq!(book.insert(quote("c", 0, None)), Err(BookFull));
        // Finishing one makes room; posting does not.
        let BeginPost::Post(_) = book.begin_post("a", SellerKey(0), T0) else {
            panic!()
        };
        assert_eq!(book.insert(quote("c", 0, None)), Err(BookFull));
        assert!(book.finish("a", sold("a"), T0));
        book.insert(quote("c", 0, None)).unwrap();
    }

    #[test]
    fn sweep_expires_open_quotes_and_returns_reservations() {
        let caps = CapBook::new(1);
        let book = QuoteBook::new(10, 1_000);
        let mut late = quote("late", 0, Some(reservation(&caps)));
        late.expires_at = T0 + 2 * TTL;
        book.insert(quote("open", 0, Some(reservation(&caps))))
            .unwrap();
        book.insert(quote("posting", 0, Some(reservation(&caps))))
            .unwrap();
        book.insert(late).unwrap();
        let BeginPost::Post(posting) = book.begin_post("posting", SellerKey(0), T0) else {
            panic!()
        };
        assert!(book.sweep(T0 + TTL - 1).is_empty());
        let released = book.sweep(T0 + TTL);
        assert_eq!(released.len(), 1);
        for r in &released {
            assert!(caps.release(r));
        }
        assert_eq!(book.open_count(), 2);
        let BeginPost::Done(a) = book.begin_post("open", SellerKey(0), T0 + TTL) else {
            panic!()
        };
        assert_eq!(a.status, PostStatus::Expired);
        // The posting quote was not swept: its post decides. Given back, it is swept.
        assert!(book.abandon("posting", posting).is_none());
        assert_eq!(book.sweep(T0 + TTL + 1).len(), 1);
        assert!(matches!(
            book.begin_post("posting", SellerKey(0), T0 + TTL + 1),
            BeginPost::Done(_)
        ));
        assert_eq!(book.sweep(T0 + 2 * TTL).len(), 1);
        assert_eq!(book.open_count(), 0);
    }

    #[test]
    fn done_entries_are_forgotten_after_the_ttl() {
        let book = QuoteBook::new(10, 1_000);
        book.insert(quote("p1", 0, None)).unwrap();
        let BeginPost::Post(_) = book.begin_post("p1", SellerKey(0), T0) else {
            panic!()
        };
        assert!(book.finish("p1", sold("p1"), T0));
        book.sweep(T0 + 999);
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0 + 999),
            BeginPost::Done(_)
        ));
        book.sweep(T0 + 1_000);
        assert!(book.is_empty());
        assert!(matches!(
            book.begin_post("p1", SellerKey(0), T0 + 1_000),
            BeginPost::NotFound
        ));
        // Expired entries are forgotten the same way.
        book.insert(quote("p2", 0, None)).unwrap();
        assert!(book.sweep(T0 + TTL).is_empty());
        assert_eq!(book.len(), 1);
        book.sweep(T0 + TTL + 1_000);
        assert!(book.is_empty());
    }

    #[test]
    fn done_entries_are_bounded() {
        let book = QuoteBook::new(100, 1_000_000).with_done_max(3);
        for i in 0..10 {
            let id = format!("p{i}");
            book.insert(quote(&id, 0, None)).unwrap();
            let BeginPost::Post(_) = book.begin_post(&id, SellerKey(0), T0) else {
                panic!()
            };
            assert!(book.finish(&id, sold(&id), T0 + i));
        }
        assert_eq!(book.len(), 3);
        assert!(matches!(
            book.begin_post("p9", SellerKey(0), T0),
            BeginPost::Done(_)
        ));
        assert!(matches!(
            book.begin_post("p0", SellerKey(0), T0),
            BeginPost::NotFound
        ));
    }

    #[test]
    fn concurrent_posts_exactly_one_wins() {
        for round in 0..20 {
            let book = QuoteBook::new(10, 1_000);
            let id = format!("p{round}");
            book.insert(quote(&id, 0, None)).unwrap();
            let posts = AtomicUsize::new(0);
            let in_flight = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..16 {
                    s.spawn(|| match book.begin_post(&id, SellerKey(0), T0) {
                        BeginPost::Post(_) => {
                            posts.fetch_add(1, Ordering::Relaxed);
                        }
                        BeginPost::InFlight => {
                            in_flight.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("{other:?}"),
                    });
                }
            });
            assert_eq!(posts.load(Ordering::Relaxed), 1);
            assert_eq!(in_flight.load(Ordering::Relaxed), 15);
        }
    }
}
