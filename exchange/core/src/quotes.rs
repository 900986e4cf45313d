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
//! Memory (P10): open and posting quotes are in a map by ping id; a finished entry leaves
//! the map for a ring of `done_max` slots of [`DONE_SLOT_BYTES`] with a fixed index
//! (`finished.rs`), reserved when the book is made (untouched until used or
//! [`QuoteBook::prefault`]) and never grown: remembering a finished ping of the
//! exchange's shape allocates nothing, and forgetting one frees nothing. The book keeps each entry compact and gives
//! the same values back. A ping id of the exchange's shape is a [`CompactId`] with no
//! allocation of its own; an open quote keeps its lead packed ([`PackedLead`]), its bids
//! in an exact-size slice and its currency and vertical name shared ([`Interner`]); a
//! finished entry keeps its answer in its slot (ids as raw bytes, strings as indexes into
//! a bounded table; what does not fit is kept whole beside it), and an expired one no
//! answer at all. `tests/quote_memory.rs` measures the bytes per entry.
//!
//! Locks: a ping moves from the map to the ring while its map shard is locked (the ring
//! takes it before the map lets it go), so a post always finds it in one or the other
//! and a ping id is never in both. So the book takes locks in one order only: a map
//! shard, then the ring's mutex (then the interner's, which takes nothing); the ring and
//! the expiry heap never take a shard, and the expiry heap is never held with another
//! lock. No lock-order deadlock is possible.
//!
//! Never: reads a clock, releases or commits caps itself (it hands reservations back to
//! the caller), or tells one seller anything about another seller's ping.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use parking_lot::Mutex;
use proto::seller::{PostAnswer, PostStatus};
use proto::{Lead, Micros, PackedLead, VerticalSchema};

use super::award::Ranked;
use super::caps::Reservation;
use super::compact::{CompactId, Interner};
use super::UnixMs;
use crate::config::{SellerKey, VerticalIdx};
use crate::slots::Slots;

mod finished;

use finished::{Finished, Kept};

/// Finished entries remembered at most, unless [`QuoteBook::with_done_max`] says otherwise
/// (bounds memory whatever `done_ttl_ms` is: at 2,000 finished pings a second that is two
/// minutes of them; a post of a forgotten ping gets `404`, and is never delivered).
pub const DONE_ENTRIES_MAX_DEFAULT: usize = 250_000;
/// Expiries taken from the heap per lock hold in [`QuoteBook::sweep`], so a large backlog
/// never blocks `insert` for long.
pub const SWEEP_CHUNK_MAX: usize = 4_096;
/// The `reason` of the answer to a post after the quote expired.
pub const EXPIRED_REASON: &str = "quote_expired";
/// Strings the book shares at most, in each of its two tables: the open quotes'
/// (currencies, vertical names; past it they are copied) and the finished answers'
/// (currencies, buyer names, reasons; past it the answer is kept whole beside its slot).
pub const SHARED_STRINGS_MAX: usize = 16_384;
/// Longest string the book shares; a longer one is copied.
pub const SHARED_STRING_LEN_MAX: usize = 128;
/// Bytes of one finished entry's slot, reserved for each of the `done_max` entries when
/// the book is made (plus 4 to 8 bytes of index: a power of two of at least two `u32`
/// cells per slot).
pub const DONE_SLOT_BYTES: usize = 64;

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
    /// The vertical's schema when the quote was made: `lead`'s field indices are its, and
    /// its ping fields are the ones a post must repeat, whatever a reload changed since
    /// (black-box round 141a: a reload that made `age` no ping field let a post change
    /// it).
    pub schema: Arc<VerticalSchema>,
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
    /// The ping's dedup keys (the seller's hashes; empty unless its vertical
    /// de-duplicates): its post claims them with the posted lead's own.
    pub dedup: Vec<crate::dedup::DedupKey>,
    /// The guard epoch of the models that scored the auction (the shell's, opaque here):
    /// its post counts their estimates in the drift guard only while they still serve
    /// ([`crate::post::PostParams::guard_epoch`]).
    pub guard_epoch: u64,
}

/// A quote was refused: `open_max` quotes are open (shed the ping with 503), or the
/// `ping_id` is already in the book (ids are unique; an entry is never overwritten).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the quote book is full or already holds this ping_id")]
pub struct BookFull;

/// Why [`QuoteBook::claim`] (or [`QuoteBook::insert_limited`]) refused a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuoteRefused {
    /// `open_max` quotes are open, or the ping id is already in the book (shed: 503).
    #[error("the quote book is full or already holds this ping_id")]
    BookFull,
    /// The seller holds its `quotes_open_max` open quotes (429 `rate_limited`).
    #[error("the seller holds its most open quotes")]
    SellerLimit,
}

/// One place among the open quotes (the book's, `server.quotes_open_max`, and the
/// seller's, `sellers.ID.quotes_open_max`), taken by [`QuoteBook::claim`] before a ping's
/// auction: a ping past either limit is refused before any buyer is pinged or anything
/// is reserved, however many pings race (black-box round 18: pings sent together by a
/// seller at its limit all passed a look at the count, ran their auctions and held caps,
/// and only then were refused). [`QuoteBook::insert_claimed`] turns it into the quote;
/// dropped unused (no winner, or the request gone), it gives the place back.
#[derive(Debug)]
#[must_use = "a claim gives its place back when dropped"]
pub struct QuoteClaim<'a> {
    book: &'a QuoteBook,
    seller: SellerKey,
    /// The seller's count was raised (the seller has a slot).
    seller_counted: bool,
    /// Still holding its place (not yet turned into a quote).
    live: bool,
}

impl Drop for QuoteClaim<'_> {
    fn drop(&mut self) {
        if self.live {
            self.book.claimed.fetch_sub(1, Ordering::AcqRel);
            self.book.open.fetch_sub(1, Ordering::AcqRel);
            if self.seller_counted {
                self.book.seller_done(self.seller);
            }
        }
    }
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
    schema: Arc<VerticalSchema>,
    ranked: Box<[Ranked]>,
    reservation: Option<Reservation>,
    vertical: VerticalIdx,
    price: Micros,
    expires_at: UnixMs,
    auctioned_at: UnixMs,
    score: Option<u8>,
    test: bool,
    dedup: Box<[crate::dedup::DedupKey]>,
    guard_epoch: u64,
}

impl KeptQuote {
    fn new(q: Quote, strings: &Strings) -> KeptQuote {
        KeptQuote {
            auction_id: CompactId::new(&q.auction_id),
            vertical_name: strings.share(&q.vertical_name),
            currency: strings.share(&q.currency),
            lead: q.lead.pack(),
            schema: q.schema,
            ranked: q.ranked.into_boxed_slice(),
            reservation: q.reservation,
            vertical: q.vertical,
            price: q.price,
            expires_at: q.expires_at,
            auctioned_at: q.auctioned_at,
            score: q.score,
            test: q.test,
            dedup: q.dedup.into_boxed_slice(),
            guard_epoch: q.guard_epoch,
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
            schema: self.schema,
            test: self.test,
            price: self.price,
            currency: self.currency.to_string(),
            expires_at: self.expires_at,
            auctioned_at: self.auctioned_at,
            ranked: self.ranked.into_vec(),
            reservation: self.reservation,
            score: self.score,
            dedup: self.dedup.into_vec(),
            guard_epoch: self.guard_epoch,
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

/// Where an open or posting ping id is in its life (a finished one is in the ring).
#[derive(Debug)]
enum State {
    Open(Box<KeptQuote>),
    /// The quote is with the caller.
    Posting,
}

#[derive(Debug)]
struct Entry {
    /// The owner, checked on every post (kept here because a posting quote is away).
    seller: SellerKey,
    state: State,
}

/// A time and a ping id (an expiry).
type Timed = (UnixMs, CompactId);

/// All quotes, shared by every request task.
#[derive(Debug)]
pub struct QuoteBook {
    /// Open and posting quotes by ping id (inline for the exchange's own ids, so the
    /// copies in the expiry heap cost no allocation).
    entries: DashMap<CompactId, Entry>,
    /// Entries `Open` or `Posting`, and live [`QuoteClaim`]s; checked against `open_max`
    /// when a place is claimed.
    open: AtomicUsize,
    /// Live [`QuoteClaim`]s (counted in `open` and in their seller's count, but not
    /// quotes yet).
    claimed: AtomicUsize,
    open_max: usize,
    /// Entries `Open` or `Posting`, and live claims, per seller (by stable key), for
    /// `sellers.ID.quotes_open_max`; a seller without a slot is not counted (no limit).
    open_by_seller: Slots<AtomicUsize>,
    done_ttl_ms: u64,
    /// `(expires_at, ping_id)` of quotes put in `Open`, soonest first. An entry can be
    /// stale (the quote was posted); sweep checks the state. Holds at most one entry per
    /// insert or abandon within the quote TTL.
    expiries: Mutex<BinaryHeap<Reverse<Timed>>>,
    /// Finished entries, oldest first (`done_max` slots reserved; TTL and bound).
    done: Mutex<Finished>,
    /// Strings shared by the kept quotes.
    strings: Strings,
}

fn expired_answer(ping_id: &str) -> PostAnswer {
    let mut a = PostAnswer::status_only(PostStatus::Expired, Some(EXPIRED_REASON));
    a.ping_id = Some(ping_id.to_string());
    a
}

impl QuoteBook {
    /// A book holding at most `open_max` open quotes, remembering finished posts for
    /// `done_ttl_ms` (at most [`DONE_ENTRIES_MAX_DEFAULT`] of them). Reserves the finished
    /// entries' ring ([`DONE_SLOT_BYTES`] and an index of 4 to 8 bytes per entry: 18 MB at
    /// the default bound) without touching it: it takes no resident page until it is used
    /// or [`prefault`](QuoteBook::prefault)ed.
    pub fn new(open_max: usize, done_ttl_ms: u64) -> QuoteBook {
        QuoteBook {
            entries: DashMap::new(),
            open: AtomicUsize::new(0),
            claimed: AtomicUsize::new(0),
            open_max,
            open_by_seller: Slots::with_len(0),
            done_ttl_ms,
            expiries: Mutex::new(BinaryHeap::new()),
            done: Mutex::new(Finished::new(DONE_ENTRIES_MAX_DEFAULT)),
            strings: Strings(Interner::new(SHARED_STRINGS_MAX)),
        }
    }

    /// Sets the most finished entries remembered (oldest are forgotten first; at most
    /// 2^30): the ring is reserved again at that size, keeping the newest entries.
    pub fn with_done_max(mut self, done_max: usize) -> QuoteBook {
        let done = self.done.get_mut();
        *done = std::mem::replace(done, Finished::new(0)).resized(done_max);
        self
    }

    /// Makes the finished entries' reserved memory resident now (writes every page of the
    /// ring and its index, keeping what they hold), so the process's memory does not grow
    /// as pings finish. For the binary at start; tests need not call it.
    pub fn prefault(&self) {
        self.done.lock().prefault();
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

    /// Quotes of `seller` open or posting now, and its live claims.
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
    /// `seller_open_max` quotes open or posting: [`claim`](QuoteBook::claim) then
    /// [`insert_claimed`](QuoteBook::insert_claimed).
    pub fn insert_limited(&self, q: Quote, seller_open_max: usize) -> Result<(), QuoteRefused> {
        let claim = self.claim(q.seller, seller_open_max)?;
        self.insert_claimed(claim, q)
    }

    /// Puts back a quote rebuilt from the ledger at a start: counted like any quote, but
    /// never refused for `open_max` or its seller's limit, which may be lower now than
    /// when it was made (black-box round 19: a start with a lower
    /// `server.quotes_open_max` dropped the quotes past it, firm quotes, without a
    /// record, so a later start brought them back past their buyer's cap). New pings are
    /// refused until the count falls under the limits. Refused only when the ping id is
    /// already in the book.
    pub fn restore(&self, q: Quote) -> Result<(), BookFull> {
        self.open.fetch_add(1, Ordering::AcqRel);
        let seller_counted = match self.open_by_seller.get(q.seller.slot()) {
            Some(c) => {
                c.fetch_add(1, Ordering::AcqRel);
                true
            }
            None => false,
        };
        self.claimed.fetch_add(1, Ordering::AcqRel);
        let claim = QuoteClaim {
            book: self,
            seller: q.seller,
            seller_counted,
            live: true,
        };
        self.insert_claimed(claim, q).map_err(|_| BookFull)
    }

    /// Takes a place for a quote of `seller` ([`QuoteClaim`]): refused when `open_max`
    /// quotes are open, posting or claimed ([`QuoteRefused::BookFull`]), or when the
    /// seller already has `seller_open_max` of them ([`QuoteRefused::SellerLimit`]).
    pub fn claim(
        &self,
        seller: SellerKey,
        seller_open_max: usize,
    ) -> Result<QuoteClaim<'_>, QuoteRefused> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.open_max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(QuoteRefused::BookFull);
        }
        let mut seller_counted = false;
        if let Some(c) = self.open_by_seller.get(seller.slot()) {
            if c.fetch_add(1, Ordering::AcqRel) >= seller_open_max {
                c.fetch_sub(1, Ordering::AcqRel);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(QuoteRefused::SellerLimit);
            }
            seller_counted = true;
        }
        self.claimed.fetch_add(1, Ordering::AcqRel);
        Ok(QuoteClaim {
            book: self,
            seller,
            seller_counted,
            live: true,
        })
    }

    /// Puts quote `q` in the place `claim` took (the claim must be this book's and the
    /// quote's seller's). Refused ([`QuoteRefused::BookFull`]) only when the ping id is
    /// already in the book; the place is then given back.
    pub fn insert_claimed(&self, mut claim: QuoteClaim<'_>, q: Quote) -> Result<(), QuoteRefused> {
        debug_assert!(std::ptr::eq(claim.book, self) && claim.seller == q.seller);
        let key = CompactId::new(&q.ping_id);
        let expiry = (q.expires_at, key.clone());
        let inserted = match self.entries.entry(key) {
            MapEntry::Occupied(_) => false,
            MapEntry::Vacant(v) => {
                // Not open or posting; finished (in the ring) is as taken. The shard stays
                // locked, so the ping cannot finish in between.
                let finished = self.done.lock().contains(v.key());
                if !finished {
                    v.insert(Entry {
                        seller: q.seller,
                        state: State::Open(Box::new(KeptQuote::new(q, &self.strings))),
                    });
                }
                !finished
            }
        };
        if !inserted {
            // Dropped live: the claim gives its place back.
            return Err(QuoteRefused::BookFull);
        }
        claim.live = false;
        self.claimed.fetch_sub(1, Ordering::AcqRel);
        self.expiries.lock().push(Reverse(expiry));
        Ok(())
    }

    /// Starts the post of `ping_id` by `seller` at `now`. A quote is expired when `now >=
    /// expires_at`. Exactly one of any number of concurrent callers gets `Post`.
    pub fn begin_post(&self, ping_id: &str, seller: SellerKey, now: UnixMs) -> BeginPost {
        let mut o = match self.entries.entry(CompactId::new(ping_id)) {
            MapEntry::Occupied(o) => o,
            MapEntry::Vacant(v) => {
                // Not open or posting (the shard is let go first): finished, or unknown.
                let key = v.into_key();
                let kept = self.done.lock().get(&key, seller);
                return match kept {
                    None => BeginPost::NotFound,
                    Some(Kept::Expired) => BeginPost::Done(expired_answer(ping_id)),
                    Some(Kept::Answer(a)) => BeginPost::Done(a),
                };
            }
        };
        if o.get().seller != seller {
            return BeginPost::NotFound;
        }
        match std::mem::replace(&mut o.get_mut().state, State::Posting) {
            State::Posting => BeginPost::InFlight,
            State::Open(mut q) if now >= q.expires_at => {
                let reservation = q.reservation.take();
                // Into the ring before out of the map: a post in between waits for the shard.
                self.done.lock().push(o.key(), seller, now, None);
                o.remove();
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.seller_done(seller);
                BeginPost::Expired(reservation)
            }
            State::Open(q) => BeginPost::Post(q.into_quote(o.key(), seller)),
        }
    }

    /// The vertical name of `seller`'s quote `ping_id` while it is open (not posting,
    /// finished or another seller's: `None`, as for an unknown id). Changes nothing, so
    /// the shell can check a refused post's lead against the quote's vertical.
    pub fn open_vertical(&self, ping_id: &str, seller: SellerKey) -> Option<Arc<str>> {
        let e = self.entries.get(&CompactId::new(ping_id))?;
        match &e.state {
            State::Open(q) if e.seller == seller => Some(Arc::clone(&q.vertical_name)),
            _ => None,
        }
    }

    /// Ends a post with its outcome (`Posting -> Done`); later posts get `answer` again.
    /// Returns false, changing nothing, if the ping was not posting (a first outcome is
    /// never replaced).
    pub fn finish(&self, ping_id: &str, answer: PostAnswer, now: UnixMs) -> bool {
        let MapEntry::Occupied(o) = self.entries.entry(CompactId::new(ping_id)) else {
            return false;
        };
        if !matches!(o.get().state, State::Posting) {
            return false;
        }
        let seller = o.get().seller;
        // Into the ring before out of the map: a post in between waits for the shard.
        self.done.lock().push(o.key(), seller, now, Some(answer));
        o.remove();
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.seller_done(seller);
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
        let MapEntry::Vacant(v) = self.entries.entry(CompactId::new(ping_id)) else {
            return false;
        };
        // The shard stays locked: nobody inserts this ping in between.
        let mut done = self.done.lock();
        if done.contains(v.key()) {
            return false;
        }
        done.push(v.key(), seller, at, answer);
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
        self.sweep_named(now).into_iter().map(|(r, _)| r).collect()
    }

    /// [`sweep`](QuoteBook::sweep), with each reservation's ping id, for its
    /// `quote_expired` record: recovery reads it to answer a post of that ping
    /// `expired` after a restart, as before it.
    pub fn sweep_named(&self, now: UnixMs) -> Vec<(Reservation, String)> {
        let mut reservations = Vec::new();
        loop {
            let due: Vec<(UnixMs, CompactId)> = {
                let mut heap = self.expiries.lock();
                let mut due = Vec::new();
                while due.len() < SWEEP_CHUNK_MAX {
                    match heap.peek() {
                        Some(Reverse((t, _))) if *t <= now => {}
                        _ => break,
                    }
                    if let Some(Reverse(entry)) = heap.pop() {
                        due.push(entry);
                    }
                }
                due
            };
            if due.is_empty() {
                break;
            }
            for (at, id) in due {
                let MapEntry::Occupied(mut o) = self.entries.entry(id) else {
                    continue;
                };
                let e = o.get_mut();
                let State::Open(q) = &mut e.state else {
                    continue;
                };
                // A heap entry left from an earlier life of the same ping id (expired or
                // posted, forgotten, then quoted again) is not this quote's: its own
                // entry expires it, in its place in the expiry order.
                if now < q.expires_at || at != q.expires_at {
                    continue;
                }
                let held = q.reservation.take();
                let seller = e.seller;
                if let Some(r) = held {
                    reservations.push((r, o.key().to_string_exact()));
                }
                self.done.lock().push(o.key(), seller, now, None);
                o.remove();
                self.open.fetch_sub(1, Ordering::AcqRel);
                self.seller_done(seller);
            }
        }
        let ttl_ms = i64::try_from(self.done_ttl_ms).unwrap_or(i64::MAX);
        loop {
            // In chunks, so a large backlog never blocks a post for long.
            let more = self.done.lock().forget_older(now, ttl_ms, SWEEP_CHUNK_MAX);
            if !more {
                break;
            }
        }
        reservations
    }

    /// Quotes open or posting (the `open_max` gauge).
    pub fn open_count(&self) -> usize {
        // Claims are counted in `open` too: leave them out (a gauge; a claim taken or
        // given back while this reads can make it off by that one).
        let open = self.open.load(Ordering::Acquire);
        open.saturating_sub(self.claimed.load(Ordering::Acquire))
    }

    /// Every entry, finished ones included.
    pub fn len(&self) -> usize {
        self.entries.len() + self.done.lock().len()
    }

    /// True when the book holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.done.lock().len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::CapBook;
    use crate::testutil::{buyer, lead};

    const T0: UnixMs = 1_700_000_000_000;
    const TTL: UnixMs = 60_000;

    pub(super) fn quote(id: &str, seller: u32, reservation: Option<Reservation>) -> Quote {
        Quote {
            ping_id: id.into(),
            auction_id: format!("au_{id}"),
            seller: SellerKey(seller),
            vertical: 0,
            vertical_name: "auto".into(),
            lead: lead(r#"{"state":"TX","zip":"76180"}"#),
            schema: Arc::new(crate::testutil::schema()),
            test: false,
            price: Micros(12_500_000),
            currency: "USD".into(),
            expires_at: T0 + TTL,
            auctioned_at: T0,
            ranked: Vec::new(),
            reservation,
            score: Some(70),
            dedup: Vec::new(),
            guard_epoch: 3,
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

    /// A place is taken before the auction (black-box round 18): claims count against
    /// both limits like quotes, a dropped claim gives its place back, and the gauge
    /// counts quotes only.
    #[test]
    fn claims_take_places_before_the_auction_and_give_them_back_unused() {
        let book = QuoteBook::new(3, 1_000).with_sellers(2);
        // Seller 0 may hold 2: two claims in flight leave no place for a third.
        let c1 = book.claim(SellerKey(0), 2).unwrap();
        let c2 = book.claim(SellerKey(0), 2).unwrap();
        assert_eq!(
            book.claim(SellerKey(0), 2).map(|_| ()),
            Err(QuoteRefused::SellerLimit)
        );
        assert_eq!(book.seller_open_count(SellerKey(0)), 2);
        assert_eq!(book.open_count(), 0, "claims are not quotes");
        // The book's own limit (3) counts claims too.
        let c3 = book.claim(SellerKey(1), 5).unwrap();
        assert_eq!(
            book.claim(SellerKey(1), 5).map(|_| ()),
            Err(QuoteRefused::BookFull)
        );
        // One claim becomes a quote; one ends without a bid and gives its place back.
        book.insert_claimed(c1, quote("p1", 0, None)).unwrap();
        assert_eq!(book.open_count(), 1);
        drop(c2);
        assert_eq!(book.seller_open_count(SellerKey(0)), 1);
        let c4 = book.claim(SellerKey(0), 2).unwrap();
        // A ping id already in the book: refused, and the place is given back.
        assert_eq!(
            book.insert_claimed(c4, quote("p1", 0, None)),
            Err(QuoteRefused::BookFull)
        );
        assert_eq!(book.seller_open_count(SellerKey(0)), 1);
        drop(c3);
        assert_eq!(
            (book.open_count(), book.seller_open_count(SellerKey(1))),
            (1, 0)
        );
        // insert_limited is a claim and an insert.
        book.insert_limited(quote("p2", 0, None), 2).unwrap();
        assert_eq!(
            book.insert_limited(quote("p3", 0, None), 2),
            Err(QuoteRefused::SellerLimit)
        );
        assert_eq!(book.open_count(), 2);
        // A restored quote is kept past both limits, and is counted: claims wait.
        book.restore(quote("p4", 0, None)).unwrap();
        book.restore(quote("p5", 1, None)).unwrap();
        assert_eq!(
            (book.open_count(), book.seller_open_count(SellerKey(0))),
            (4, 3)
        );
        assert_eq!(
            book.claim(SellerKey(1), 5).map(|_| ()),
            Err(QuoteRefused::BookFull)
        );
        assert_eq!(book.restore(quote("p4", 0, None)), Err(BookFull));
        assert_eq!(book.open_count(), 4);
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
    fn the_open_vertical_is_told_only_to_its_seller_while_open() {
        let book = QuoteBook::new(10, 1_000);
        book.insert(quote("p1", 0, None)).unwrap();
        assert_eq!(
            book.open_vertical("p1", SellerKey(0)).as_deref(),
            Some("auto")
        );
        assert_eq!(book.open_vertical("p1", SellerKey(1)), None);
        assert_eq!(book.open_vertical("p2", SellerKey(0)), None);
        let BeginPost::Post(_) = book.begin_post("p1", SellerKey(0), T0) else {
            panic!()
        };
        assert_eq!(book.open_vertical("p1", SellerKey(0)), None, "posting");
        assert!(book.finish("p1", sold("p1"), T0));
        assert_eq!(book.open_vertical("p1", SellerKey(0)), None, "finished");
        assert_eq!((book.open_count(), book.len()), (0, 1));
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

/// The finished entries' ring seen through the book: the bound, the TTL, answers of every
/// shape, races of a finish with posts, and a model of the whole state machine.
#[cfg(test)]
mod ring_tests {
    use std::collections::{HashMap, VecDeque};

    use proptest::prelude::*;

    use super::*;

    const T0: UnixMs = 1_700_000_000_000;

    fn hex(prefix: &str, i: usize) -> String {
        format!("{prefix}{i:032x}")
    }

    /// The other tests' quote, firm until `expires_at`, reserving nothing.
    fn quote(id: &str, seller: u32, expires_at: UnixMs) -> Quote {
        Quote {
            expires_at,
            ..super::tests::quote(id, seller, None)
        }
    }

    /// A sale as the exchange answers it (fits a slot when `ping_id` is of its shape).
    fn sold(ping_id: &str, i: usize) -> PostAnswer {
        let mut a = PostAnswer::status_only(PostStatus::Sold, None);
        a.ping_id = Some(ping_id.into());
        a.lead_id = Some(hex("ld_", i));
        a.price = Some(Micros(16_000_000 + i as i64));
        a.currency = Some("USD".into());
        a.buyer = Some(format!("Buyer {}", i % 3));
        a
    }

    /// Answers of every shape: some fit a slot, some go whole to the side table.
    fn answers(ping_id: &str) -> Vec<PostAnswer> {
        let mut v = vec![
            sold(ping_id, 7),
            PostAnswer::status_only(PostStatus::Unsold, Some("all_buyers_rejected")),
            PostAnswer::status_only(PostStatus::Suppressed, None),
            PostAnswer::status_only(PostStatus::Duplicate, Some("")),
        ];
        let mut a = PostAnswer::status_only(PostStatus::Mismatch, Some("changed"));
        a.ping_id = Some(ping_id.into());
        a.changed_fields = vec!["zip".into(), "state".into()];
        v.push(a);
        let mut a = sold(ping_id, 8);
        a.lead_id = Some("lead-42".into()); // not the exchange's shape
        v.push(a);
        let mut a = sold(ping_id, 9);
        a.lead_id = Some(hex("xx_", 9)); // the shape, another prefix
        v.push(a);
        let mut a = sold(ping_id, 10);
        a.ping_id = Some("another ping".into()); // not the key
        v.push(a);
        let mut a = sold(ping_id, 11);
        a.buyer = Some("B".repeat(SHARED_STRING_LEN_MAX + 1)); // too long to share
        a.price = Some(Micros(i64::MIN));
        v.push(a);
        let mut a = sold(ping_id, 12);
        a.ping_id = None;
        a.price = Some(Micros(-1));
        a.reason = Some("ünïcode reason".into());
        v.push(a);
        v
    }

    fn post_and_finish(book: &QuoteBook, id: &str, seller: u32, answer: PostAnswer, now: UnixMs) {
        book.insert(quote(id, seller, now + 60_000)).unwrap();
        let BeginPost::Post(_) = book.begin_post(id, SellerKey(seller), now) else {
            panic!("{id} not open")
        };
        assert!(book.finish(id, answer, now));
    }

    fn done(book: &QuoteBook, id: &str, seller: u32, now: UnixMs) -> Option<PostAnswer> {
        match book.begin_post(id, SellerKey(seller), now) {
            BeginPost::Done(a) => Some(a),
            BeginPost::NotFound => None,
            other => panic!("{id}: {other:?}"),
        }
    }

    #[test]
    fn the_ring_wraps_at_the_bound() {
        let book = QuoteBook::new(100, 1_000_000).with_done_max(5);
        for i in 0..23 {
            let id = hex("pg_", i);
            post_and_finish(&book, &id, 0, sold(&id, i), T0 + i as i64);
            assert_eq!(book.len(), (i + 1).min(5));
        }
        for i in 0..23 {
            let id = hex("pg_", i);
            let got = done(&book, &id, 0, T0 + 100);
            if i < 18 {
                assert_eq!(got, None, "{i} forgotten");
            } else {
                assert_eq!(got, Some(sold(&id, i)), "{i} kept");
            }
        }
        // A forgotten id is free again (ids are unique only while remembered).
        book.insert(quote(&hex("pg_", 0), 0, T0 + 60_000)).unwrap();
        // A remembered one is not.
        assert_eq!(
            book.insert(quote(&hex("pg_", 22), 0, T0 + 60_000)),
            Err(BookFull)
        );
        assert_eq!((book.open_count(), book.len()), (1, 6));
    }

    #[test]
    fn the_ttl_forgets_the_oldest_first() {
        let book = QuoteBook::new(100, 1_000);
        for i in 0..6 {
            let id = hex("pg_", i);
            post_and_finish(&book, &id, 0, sold(&id, i), T0 + 100 * i as i64);
        }
        // Expired ones too (with a quote that expires at T0 + 250).
        book.insert(quote("p-expired", 1, T0 + 250)).unwrap();
        assert!(book.sweep(T0 + 250).is_empty());
        assert_eq!((book.open_count(), book.len()), (0, 7));
        book.sweep(T0 + 1_299); // 0, 100 and 200 are 1,000 old
        for i in 0..6 {
            let id = hex("pg_", i);
            assert_eq!(done(&book, &id, 0, T0 + 1_299).is_some(), i >= 3, "{i}");
        }
        assert_eq!(
            done(&book, "p-expired", 1, T0 + 1_299).map(|a| a.status),
            Some(PostStatus::Expired)
        );
        book.sweep(T0 + 1_300);
        assert_eq!(book.len(), 3);
        book.sweep(T0 + 10_000);
        assert!(book.is_empty());
    }

    #[test]
    fn answers_of_every_shape_come_back_exactly() {
        for id in [
            hex("pg_", 1),
            "seller-made id".to_string(),
            hex("PG_", 2),
            String::new(),
        ] {
            let all = answers(&id);
            let book = QuoteBook::new(100, 1_000_000).with_done_max(all.len() * 2);
            for (i, a) in all.iter().enumerate() {
                let id = format!("{id}{i}");
                post_and_finish(&book, &id, 3, a.clone(), T0);
                // And restored, under another id.
                assert!(book.restore_done(
                    &format!("r{id}"),
                    SellerKey(3),
                    Some(a.clone()),
                    T0,
                    T0
                ));
            }
            for (i, a) in all.iter().enumerate() {
                let id = format!("{id}{i}");
                assert_eq!(done(&book, &id, 3, T0).as_ref(), Some(a), "{id}");
                assert_eq!(done(&book, &format!("r{id}"), 3, T0).as_ref(), Some(a));
                assert_eq!(done(&book, &id, 4, T0), None);
            }
        }
    }

    #[test]
    fn past_the_string_tables_bound_answers_stay_exact() {
        let book = QuoteBook::new(SHARED_STRINGS_MAX + 200, 1_000_000)
            .with_done_max(SHARED_STRINGS_MAX + 100);
        let n = SHARED_STRINGS_MAX + 50;
        for i in 0..n {
            let id = hex("pg_", i);
            let mut a = sold(&id, i);
            a.buyer = Some(format!("buyer {i}"));
            assert!(book.restore_done(&id, SellerKey(0), Some(a), T0, T0));
        }
        for i in (0..n).step_by(97).chain(n - 60..n) {
            let id = hex("pg_", i);
            let got = done(&book, &id, 0, T0).unwrap();
            assert_eq!(got.buyer, Some(format!("buyer {i}")));
            assert_eq!(got.lead_id, Some(hex("ld_", i)));
        }
    }

    #[test]
    fn prefault_keeps_every_entry() {
        let book = QuoteBook::new(100, 1_000_000).with_done_max(20_000);
        let all = answers(&hex("pg_", 0));
        for (i, a) in all.iter().enumerate() {
            assert!(book.restore_done(&hex("pg_", i), SellerKey(0), Some(a.clone()), T0, T0));
        }
        assert!(book.restore_done("odd id", SellerKey(1), None, T0, T0));
        book.prefault();
        book.prefault();
        for (i, a) in all.iter().enumerate() {
            assert_eq!(done(&book, &hex("pg_", i), 0, T0).as_ref(), Some(a));
        }
        assert_eq!(
            done(&book, "odd id", 1, T0).map(|a| a.status),
            Some(PostStatus::Expired)
        );
        assert_eq!(book.len(), all.len() + 1);
        // A book with no room for finished entries prefaults nothing and remembers none.
        let none = QuoteBook::new(10, 1_000).with_done_max(0);
        none.prefault();
        post_and_finish(&none, "p", 0, sold("p", 0), T0);
        assert_eq!(done(&none, "p", 0, T0), None);
        assert!(none.is_empty());
    }

    #[test]
    fn a_post_racing_the_finish_finds_the_entry_open_or_finished() {
        for round in 0..20 {
            let book = QuoteBook::new(10, 1_000);
            let id = hex("pg_", round);
            book.insert(quote(&id, 0, T0 + 60_000)).unwrap();
            let BeginPost::Post(_) = book.begin_post(&id, SellerKey(0), T0) else {
                panic!()
            };
            let finished = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| loop {
                        let seen_finished = finished.load(Ordering::Acquire);
                        match book.begin_post(&id, SellerKey(0), T0) {
                            BeginPost::InFlight => assert!(!seen_finished),
                            BeginPost::Done(a) => {
                                assert_eq!(a, sold(&id, round));
                                break;
                            }
                            other => panic!("{other:?}"),
                        }
                    });
                }
                assert!(book.finish(&id, sold(&id, round), T0 + 1));
                finished.store(true, Ordering::Release);
            });
            // Expiry races the same way: one caller expires it, the others see it done.
            let id = hex("pg_", 1_000 + round);
            book.insert(quote(&id, 0, T0)).unwrap();
            let expired = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| match book.begin_post(&id, SellerKey(0), T0) {
                        BeginPost::Expired(None) => {
                            expired.fetch_add(1, Ordering::Relaxed);
                        }
                        BeginPost::Done(a) => assert_eq!(a.status, PostStatus::Expired),
                        other => panic!("{other:?}"),
                    });
                }
            });
            assert_eq!(expired.load(Ordering::Relaxed), 1);
            assert_eq!((book.open_count(), book.len()), (0, 2));
        }
    }

    /// The model: what the book should answer, kept the plain way.
    #[derive(Debug, Clone)]
    enum M {
        Open(u32, UnixMs),
        Posting(u32, UnixMs),
        Done(u32, Option<PostAnswer>, UnixMs),
    }

    #[derive(Debug, Default)]
    struct Model {
        by_id: HashMap<String, M>,
        /// Finished ids, oldest first.
        order: VecDeque<String>,
    }

    impl Model {
        fn finish(
            &mut self,
            id: &str,
            seller: u32,
            answer: Option<PostAnswer>,
            at: UnixMs,
            max: usize,
        ) {
            self.by_id
                .insert(id.to_string(), M::Done(seller, answer, at));
            self.order.push_back(id.to_string());
            while self.order.len() > max {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }

        fn open(&self) -> usize {
            self.by_id
                .values()
                .filter(|m| !matches!(m, M::Done(..)))
                .count()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, u32, i64),
        Post(usize, u32),
        Finish(usize, usize),
        Abandon(usize),
        Restore(usize, u32, Option<usize>, i64),
        Sweep,
        Wait(i64),
    }

    const IDS: usize = 10;

    fn ping(i: usize) -> String {
        if i.is_multiple_of(3) {
            format!("p{i}")
        } else {
            hex("pg_", i * 1_000_003)
        }
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..IDS, 0..2u32, 0..30i64).prop_map(|(i, s, e)| Op::Insert(i, s, e)),
            4 => (0..IDS, 0..2u32).prop_map(|(i, s)| Op::Post(i, s)),
            3 => (0..IDS, 0..12usize).prop_map(|(i, a)| Op::Finish(i, a)),
            1 => (0..IDS).prop_map(Op::Abandon),
            1 => (0..IDS, 0..2u32, proptest::option::of(0..12usize), 0..60i64)
                .prop_map(|(i, s, a, age)| Op::Restore(i, s, a, age)),
            2 => Just(Op::Sweep),
            2 => (1..25i64).prop_map(Op::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Over random sequences the book answers as the model does, and counts as it does.
        #[test]
        fn the_book_follows_the_model(
            done_max in 0..6usize,
            ttl in 1..50u64,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let book = QuoteBook::new(6, ttl).with_done_max(done_max);
            let ttl = ttl as i64;
            let mut model = Model::default();
            let mut held: HashMap<String, Quote> = HashMap::new();
            let mut now = T0;
            for op in ops {
                match op {
                    Op::Insert(i, seller, expires_in) => {
                        let id = ping(i);
                        let ok = !model.by_id.contains_key(&id) && model.open() < 6;
                        let got = book.insert(quote(&id, seller, now + expires_in));
                        prop_assert_eq!(got.is_ok(), ok, "insert {}", id);
                        if ok {
                            model.by_id.insert(id, M::Open(seller, now + expires_in));
                        }
                    }
                    Op::Post(i, seller) => {
                        let id = ping(i);
                        let got = book.begin_post(&id, SellerKey(seller), now);
                        match model.by_id.get(&id).cloned() {
                            Some(M::Open(s, exp)) if s == seller && now >= exp => {
                                prop_assert!(matches!(got, BeginPost::Expired(None)), "{:?}", got);
                                model.finish(&id, s, None, now, done_max);
                            }
                            Some(M::Open(s, exp)) if s == seller => {
                                let BeginPost::Post(q) = got else {
                                    return Err(TestCaseError::fail(format!("{got:?}")));
                                };
                                prop_assert_eq!(&q.ping_id, &id);
                                prop_assert_eq!(q.expires_at, exp);
                                held.insert(id.clone(), q);
                                model.by_id.insert(id, M::Posting(s, exp));
                            }
                            Some(M::Posting(s, _)) if s == seller => {
                                prop_assert!(matches!(got, BeginPost::InFlight), "{:?}", got);
                            }
                            Some(M::Done(s, a, _)) if s == seller => {
                                let want = a.unwrap_or_else(|| expired_answer(&id));
                                let BeginPost::Done(a) = got else {
                                    return Err(TestCaseError::fail(format!("{got:?}")));
                                };
                                prop_assert_eq!(a, want);
                            }
                            _ => prop_assert!(matches!(got, BeginPost::NotFound), "{:?}", got),
                        }
                    }
                    Op::Finish(i, a) => {
                        let id = ping(i);
                        let answer = answers(&id)[a % 10].clone();
                        let posting = match model.by_id.get(&id) {
                            Some(M::Posting(s, _)) => Some(*s),
                            _ => None,
                        };
                        prop_assert_eq!(book.finish(&id, answer.clone(), now), posting.is_some());
                        if let Some(s) = posting {
                            held.remove(&id);
                            model.finish(&id, s, Some(answer), now, done_max);
                        }
                    }
                    Op::Abandon(i) => {
                        let id = ping(i);
                        match held.remove(&id) {
                            Some(q) => {
                                prop_assert!(book.abandon(&id, q).is_none());
                                if let Some(M::Posting(s, exp)) = model.by_id.get(&id).cloned() {
                                    model.by_id.insert(id, M::Open(s, exp));
                                }
                            }
                            None => {
                                prop_assert!(book.abandon(&id, quote(&id, 0, now)).is_some());
                            }
                        }
                    }
                    Op::Restore(i, seller, a, age) => {
                        let id = ping(i);
                        let answer = a.map(|a| answers(&id)[a % 10].clone());
                        let ok = age < ttl && !model.by_id.contains_key(&id);
                        prop_assert_eq!(
                            book.restore_done(&id, SellerKey(seller), answer.clone(), now - age, now),
                            ok
                        );
                        if ok {
                            model.finish(&id, seller, answer, now - age, done_max);
                        }
                    }
                    Op::Sweep => {
                        prop_assert!(book.sweep(now).is_empty());
                        // Due quotes expire in the order of the expiry heap.
                        let mut due: Vec<(UnixMs, CompactId, String, u32)> = model
                            .by_id
                            .iter()
                            .filter_map(|(id, m)| match m {
                                M::Open(s, exp) if *exp <= now => {
                                    Some((*exp, CompactId::new(id), id.clone(), *s))
                                }
                                _ => None,
                            })
                            .collect();
                        due.sort();
                        for (_, _, id, s) in due {
                            model.finish(&id, s, None, now, done_max);
                        }
                        while let Some(old) = model.order.front() {
                            match model.by_id.get(old) {
                                Some(M::Done(_, _, at)) if now - at >= ttl => {
                                    model.by_id.remove(old);
                                    model.order.pop_front();
                                }
                                _ => break,
                            }
                        }
                    }
                    Op::Wait(ms) => now += ms,
                }
                prop_assert_eq!(book.open_count(), model.open());
                prop_assert_eq!(book.len(), model.by_id.len());
            }
        }
    }
}
