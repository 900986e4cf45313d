//! Buyer calls still running when their auction's collection ended ("late calls"): each
//! is heard out in the background so that its answer is counted
//! (`pingpost_buyer_late_answers_total`) and its keep-alive connection survives, but only
//! within limits, since every one holds a connection (a file descriptor) to its buyer:
//!
//! - for at most [`LATE_DRAIN_TIMEOUTS`] times its own buyer's `ping_timeout_ms` after
//!   the auction's collection ended (never another buyer's: a buyer with a long timeout
//!   does not keep a hanging buyer's connections open);
//! - at most [`LATE_CALLS_PER_BUYER_MAX`] per buyer and [`LATE_CALLS_MAX`] in all: past
//!   either, the call is dropped when its auction ends (its connection closed at once,
//!   counted in `pingpost_buyer_late_calls_dropped_total`), so a buyer that hangs on most
//!   pings while answering enough of them to keep its breaker closed cannot pile up
//!   connections.
//!
//! Nothing here decides anything about an auction: the answers are never used. The same
//! counter, without its limits ([`LateCalls::counting`]), counts each buyer's pings in
//! flight for `buyers.ID.pings_in_flight_max`.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::BuyerKey;
use crate::core::slots::Slots;

/// How long a late call is still heard out, as a multiple of its buyer's ping timeout.
pub const LATE_DRAIN_TIMEOUTS: u32 = 2;
/// Late calls heard out at once for one buyer; more are dropped when their auction ends.
pub const LATE_CALLS_PER_BUYER_MAX: u32 = 64;
/// Late calls heard out at once across every buyer.
pub const LATE_CALLS_MAX: usize = 1_024;

/// The late calls being heard out, per buyer (by stable key) and in all.
#[derive(Debug)]
pub struct LateCalls {
    per_buyer: Slots<AtomicU32>,
    total: AtomicUsize,
    per_buyer_max: u32,
    total_max: usize,
}

impl LateCalls {
    /// Room for buyer keys `0..buyer_count`, with the default limits.
    pub fn new(buyer_count: usize) -> Arc<LateCalls> {
        LateCalls::with_limits(buyer_count, LATE_CALLS_PER_BUYER_MAX, LATE_CALLS_MAX)
    }

    /// As [`LateCalls::new`], with other limits (tests).
    pub fn with_limits(buyer_count: usize, per_buyer_max: u32, total_max: usize) -> Arc<LateCalls> {
        Arc::new(LateCalls {
            per_buyer: Slots::with_len(buyer_count),
            total: AtomicUsize::new(0),
            per_buyer_max,
            total_max,
        })
    }

    /// Counts without refusing but by the bound a caller gives [`LateCalls::take`]: the
    /// late posts, and each buyer's pings in flight (`buyers.ID.pings_in_flight_max`,
    /// `AppState::pings_in_flight`). A delivery is not dropped once sent (the
    /// buyer has the lead and may accept it), so `server.late_posts_per_buyer_max` is
    /// checked with [`LateCalls::of`] before a lead leaves, never when its answer is late:
    /// at the bound the buyer is skipped as `busy` and the post falls back to the next
    /// bid. The count may pass the bound by the deliveries in flight when it is reached.
    pub fn counting(buyer_count: usize) -> Arc<LateCalls> {
        LateCalls::with_limits(buyer_count, u32::MAX, usize::MAX)
    }

    /// Makes room for buyer keys `0..buyer_count`; never shrinks.
    pub fn grow(&self, buyer_count: usize) {
        self.per_buyer.grow(buyer_count);
    }

    /// A place for one more late call of buyer `key`, or `None` when the buyer or the
    /// exchange is at its limit (the call is then dropped). The place is given back when
    /// the permit is dropped, with the call.
    pub fn admit(self: &Arc<Self>, key: BuyerKey) -> Option<LatePermit> {
        self.take(key, self.per_buyer_max).then(|| self.adopt(key))
    }

    /// Takes one of buyer `key`'s places, of at most `max` for it (and the exchange's
    /// bound in all), with no permit yet: false, nothing taken, when either is full or
    /// the key has no slot. [`LateCalls::adopt`] makes the permit that gives it back, or
    /// [`LateCalls::give_back`] returns it at once. (The auction core takes a buyer's
    /// place among its pings in flight this way, and the shell adopts it for the call.)
    pub fn take(&self, key: BuyerKey, max: u32) -> bool {
        let Some(slot) = self.per_buyer.get(key.slot()) else {
            return false;
        };
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if slot.fetch_add(1, Ordering::AcqRel) >= max {
            slot.fetch_sub(1, Ordering::AcqRel);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The permit of a place [`LateCalls::take`] took for `key`: it gives it back when
    /// dropped.
    pub fn adopt(self: &Arc<Self>, key: BuyerKey) -> LatePermit {
        LatePermit {
            calls: Arc::clone(self),
            key,
        }
    }

    /// Gives back a place [`LateCalls::take`] took for `key`.
    pub fn give_back(&self, key: BuyerKey) {
        if let Some(slot) = self.per_buyer.get(key.slot()) {
            slot.fetch_sub(1, Ordering::AcqRel);
        }
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Late calls of buyer `key` being heard out now.
    pub fn of(&self, key: BuyerKey) -> u32 {
        self.per_buyer
            .get(key.slot())
            .map_or(0, |s| s.load(Ordering::Acquire))
    }

    /// Late calls being heard out now, in all.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One late call's place (see [`LateCalls::admit`]); given back on drop.
#[derive(Debug)]
pub struct LatePermit {
    calls: Arc<LateCalls>,
    key: BuyerKey,
}

impl Drop for LatePermit {
    fn drop(&mut self) {
        self.calls.give_back(self.key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(i: usize) -> BuyerKey {
        BuyerKey(u32::try_from(i).unwrap())
    }

    #[test]
    fn a_buyer_at_its_limit_is_refused_and_its_places_come_back_on_drop() {
        let calls = LateCalls::with_limits(2, 2, 10);
        let a1 = calls.admit(key(0)).unwrap();
        let _a2 = calls.admit(key(0)).unwrap();
        assert!(
            calls.admit(key(0)).is_none(),
            "a third late call of buyer 0"
        );
        assert_eq!(calls.of(key(0)), 2);
        // Another buyer is not held back by buyer 0's limit.
        let _b1 = calls.admit(key(1)).unwrap();
        assert_eq!(calls.total(), 3);
        drop(a1);
        assert_eq!(calls.of(key(0)), 1);
        assert_eq!(calls.total(), 2);
        assert!(calls.admit(key(0)).is_some(), "room again once one ended");
    }

    #[test]
    fn the_limit_in_all_holds_across_buyers_and_a_refusal_takes_nothing() {
        let calls = LateCalls::with_limits(4, 10, 3);
        let held: Vec<_> = (0..3).map(|i| calls.admit(key(i)).unwrap()).collect();
        assert!(calls.admit(key(3)).is_none());
        assert_eq!(
            calls.total(),
            3,
            "a refused call leaves the count as it was"
        );
        assert_eq!(calls.of(key(3)), 0);
        drop(held);
        assert_eq!(calls.total(), 0);
        assert!(calls.admit(key(3)).is_some());
    }

    #[test]
    fn a_key_without_a_slot_is_refused_until_the_table_grows() {
        let calls = LateCalls::with_limits(1, 10, 10);
        assert!(calls.admit(key(5)).is_none());
        assert_eq!(calls.total(), 0);
        calls.grow(6);
        assert!(calls.admit(key(5)).is_some());
    }
}
