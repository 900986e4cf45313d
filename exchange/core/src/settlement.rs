//! The one place a reservation is made and settled.
//!
//! Owns: the interface to the cap store ([`CapStore`], the in-memory
//! [`CapBook`](super::caps::CapBook) today, a shared store later) and the breaker book
//! ([`BuyerHealth`]), and the four things that can happen to a hold on a buyer's caps:
//! reserve it, commit it (sold), release it (not sold), expire it (the quote ran out);
//! and the count of a sale that had no hold (a late accept, [`CapOp::CountSold`]).
//! The state machines ([`auction`](super::auction), [`post`](super::post)) emit
//! [`CapOp`]s and the shell carries each out through [`Settlement::settle`]; the only
//! reservation made inline is the award's (it must know at once whether a cap held, to
//! walk down the ranking) and it goes through [`Settlement::reserve`] too.
//!
//! Architecture invariant: no code outside this module calls a cap store's or a breaker
//! book's methods. Both are keyed by the buyer's stable key (`Buyer::key`), never its
//! position in one configuration.

use proto::Micros;

use super::breaker::{Admit, BreakerBook};
use super::caps::{CapBook, Capped, Headroom, Reservation, Windows};
use super::effect::Effect;
use super::record::{Head, QuoteHoldRecord, Record};
use super::UnixMs;
use crate::config::{Buyer, BuyerKey, Config};

/// Where buyers' caps and budgets are counted. Synchronous: a lookup or a tiny lock; an
/// implementation over the network would answer from a local lease.
pub trait CapStore: Send + Sync {
    /// Could the buyer take one more lead at `now`, costing it at least `least`? Every
    /// count cap needs room for one, and a budget needs `least` left (something left when
    /// `least` is zero). Eligibility asks with the vertical's floor, below which no bid
    /// is quoted; no hold is taken.
    fn has_headroom(&self, buyer: &Buyer, now: UnixMs, least: Micros) -> bool;
    /// [`CapStore::has_headroom`] given `at`, the windows of `now` in the buyer's zone
    /// (eligibility computes them once per zone per auction); when full, the store's
    /// version of the buyer then, if it keeps one ([`CapStore::version`]).
    fn headroom_at(
        &self,
        buyer: &Buyer,
        now: UnixMs,
        at: Option<&Windows>,
        least: Micros,
    ) -> Headroom {
        let _ = at;
        if self.has_headroom(buyer, now, least) {
            Headroom::Yes
        } else {
            Headroom::Full { version: None }
        }
    }
    /// A number that changes whenever the buyer's counts or current windows change, read
    /// without a lock; `None` if the store keeps none. Eligibility remembers "full at
    /// version v in hour h" and skips the buyer without asking again while both hold.
    fn version(&self, key: BuyerKey) -> Option<u32> {
        let _ = key;
        None
    }
    /// Holds one lead and `price` of the buyer's caps and budget from `now` until `until`
    /// (in the windows of both moments: [`CapBook::reserve_until`]), or says which cap
    /// is full.
    fn reserve(
        &self,
        buyer: &Buyer,
        price: Micros,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Reservation, Capped>;
    /// Sold: the hold becomes a sale. False if it was already settled.
    fn commit(&self, r: &Reservation) -> bool;
    /// Not sold: the hold is dropped. False if it was already settled.
    fn release(&self, r: &Reservation) -> bool;
    /// A lead sold with no hold behind it: one lead and `price` counted in `windows`
    /// whatever the headroom (the buyer has the lead already). False for an unknown key.
    fn count_sold(&self, key: BuyerKey, windows: &Windows, price: Micros) -> bool;
}

impl CapStore for CapBook {
    fn has_headroom(&self, buyer: &Buyer, now: UnixMs, least: Micros) -> bool {
        CapBook::headroom_at(self, buyer.key, buyer, now, None, least) == Headroom::Yes
    }
    fn headroom_at(
        &self,
        buyer: &Buyer,
        now: UnixMs,
        at: Option<&Windows>,
        least: Micros,
    ) -> Headroom {
        CapBook::headroom_at(self, buyer.key, buyer, now, at, least)
    }
    fn version(&self, key: BuyerKey) -> Option<u32> {
        CapBook::version(self, key)
    }
    fn reserve(
        &self,
        buyer: &Buyer,
        price: Micros,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Reservation, Capped> {
        CapBook::reserve_until(self, buyer.key, buyer, price, now, until)
    }
    fn commit(&self, r: &Reservation) -> bool {
        CapBook::commit(self, r)
    }
    fn release(&self, r: &Reservation) -> bool {
        CapBook::release(self, r)
    }
    fn count_sold(&self, key: BuyerKey, windows: &Windows, price: Micros) -> bool {
        CapBook::restore_sold(self, key, None, windows, price)
    }
}

/// Which buyers are healthy enough to ping (the circuit breakers).
pub trait BuyerHealth: Send + Sync {
    /// May the buyer be pinged at `now`?
    fn admit(&self, key: BuyerKey, now: UnixMs) -> Admit;
    /// The outcome of a ping: `ok` when it answered in time, bid or not.
    fn record(&self, key: BuyerKey, ok: bool, now: UnixMs);
    /// Takes one of the buyer's places for a ping in flight, of at most `max` (`None`:
    /// no limit, nothing counted); false, and nothing taken, when it has none left. The
    /// shell gives the place back when the call ends (or is never made).
    fn take_ping_place(&self, key: BuyerKey, max: Option<u32>) -> bool {
        let _ = (key, max);
        true
    }
    /// Gives back a place [`BuyerHealth::take_ping_place`] took.
    fn give_back_ping_place(&self, key: BuyerKey) {
        let _ = key;
    }
}

impl BuyerHealth for BreakerBook {
    fn admit(&self, key: BuyerKey, now: UnixMs) -> Admit {
        BreakerBook::admit(self, key, now)
    }
    fn record(&self, key: BuyerKey, ok: bool, now: UnixMs) {
        BreakerBook::record(self, key, ok, now)
    }
}

/// What to do with a hold on a buyer's caps (or, for [`CapOp::CountSold`], with a sale
/// that had none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapOp {
    /// The lead was sold to the holder: reserved becomes sold.
    Commit(Reservation),
    /// The lead was not sold to the holder (rejected, timed out, fell back, mismatch,
    /// the quote could not be kept, the post ran out of time): the hold is dropped.
    Release(Reservation),
    /// The quote expired unposted (the sweeper, or a post after expiry): dropped.
    Expire(Reservation),
    /// A lead sold with no hold to settle (a buyer that accepted after its post timeout
    /// on an attempt that held none): one lead and `price` counted in `windows`,
    /// whatever the headroom, since the buyer has the lead already.
    CountSold {
        buyer: BuyerKey,
        windows: Windows,
        price: Micros,
    },
}

impl CapOp {
    /// The reservation the operation settles (`None` for [`CapOp::CountSold`]).
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            CapOp::Commit(r) | CapOp::Release(r) | CapOp::Expire(r) => Some(r),
            CapOp::CountSold { .. } => None,
        }
    }
}

/// The settlement of reservations over one cap store.
#[derive(Clone, Copy)]
pub struct Settlement<'c> {
    caps: &'c dyn CapStore,
}

impl std::fmt::Debug for Settlement<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settlement")
    }
}

impl<'c> Settlement<'c> {
    /// Settles reservations of `caps`.
    pub fn new(caps: &'c dyn CapStore) -> Settlement<'c> {
        Settlement { caps }
    }

    /// The cap store, for eligibility's headroom checks (reads only).
    pub fn store(&self) -> &'c dyn CapStore {
        self.caps
    }

    /// Holds one lead and `price` of `buyer`'s caps from `now` until `until` (when the
    /// lead may be delivered last), or says which cap is full.
    pub fn reserve(
        &self,
        buyer: &Buyer,
        price: Micros,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Reservation, Capped> {
        self.caps.reserve(buyer, price, now, until)
    }

    /// Carries out `op`; false when the reservation had already been settled (a second
    /// settle changes nothing), or a [`CapOp::CountSold`]'s buyer is unknown to the store.
    pub fn settle(&self, op: &CapOp) -> bool {
        match op {
            CapOp::Commit(r) => self.caps.commit(r),
            CapOp::Release(r) | CapOp::Expire(r) => self.caps.release(r),
            CapOp::CountSold {
                buyer,
                windows,
                price,
            } => self.caps.count_sold(*buyer, windows, *price),
        }
    }
}

/// Why a quote's hold was released without a sale (the `reason` of `quote_released`).
pub mod release_reason {
    /// The seller posted changed ping fields (`mismatch`).
    pub const MISMATCH: &str = "mismatch";
    /// The quote could not be kept (the book or the seller's open-quote limit was full).
    pub const QUOTE_REFUSED: &str = "quote_refused";
    /// The winner did not take the post; the post went on to fallbacks or ended.
    pub const POST_FAILED: &str = "post_failed";
    /// The post ran out of time (`server.post_deadline_ms`) while holding the quote.
    pub const POST_DEADLINE: &str = "post_deadline";
    /// A reload removed the quote's buyer before the post.
    pub const BUYER_REMOVED: &str = "buyer_removed";
    /// The quote's buyer had too many deliveries still unanswered after their timeout
    /// to be sent another; the post went on to the fallbacks.
    pub const BUYER_BUSY: &str = "buyer_busy";
    /// A reload removed the quote's vertical before the post.
    pub const VERTICAL_REMOVED: &str = "vertical_removed";
    /// A lead with one of the post's dedup keys was sold within the window (`duplicate`).
    pub const DUPLICATE: &str = "duplicate";
    /// The posted lead's consumer is on the suppression list (`suppressed`).
    pub const SUPPRESSED: &str = "suppressed";
    /// Written by a start for a hold (`quote_reserved`) whose `quote_opened` never
    /// reached the disk (a crash or fail-stop just after the auction): its quote was
    /// never restored, so the hold ends (`quote_lost`).
    pub const QUOTE_LOST: &str = "quote_lost";
}

/// The effects of dropping a quote's hold `r` without a sale: the cap operation and its
/// record (`quote_expired` when `reason` is `None`, else `quote_released` with it). The
/// record names the buyer by its id in `config`, or by `former_id` when a reload removed
/// it.
pub fn drop_hold<'c>(
    config: &'c Config,
    generation: u64,
    r: Reservation,
    ping_id: Option<&'c str>,
    reason: Option<&'static str>,
    former_id: Option<&'c str>,
    now: UnixMs,
) -> [Effect<'c>; 2] {
    let expired = reason.is_none();
    let hold = QuoteHoldRecord {
        head: Head::new(generation, now),
        ping_id,
        // A buyer a reload removed is no longer in `config`: its former id names it.
        buyer: config
            .buyer_by_key(r.buyer)
            .map(|(_, b)| b.id.as_str())
            .or(former_id)
            .unwrap_or(""),
        price_micros: r.price.0,
        reason,
        changed_fields: &[],
        test: false,
    };
    if expired {
        [
            Effect::Cap(CapOp::Expire(r)),
            Effect::Record(Record::QuoteExpired(hold)),
        ]
    } else {
        [
            Effect::Cap(CapOp::Release(r)),
            Effect::Record(Record::QuoteReleased(hold)),
        ]
    }
}
