//! Per-buyer circuit breakers: stop pinging a buyer that keeps failing, probe it now and
//! then, and take it back on the first success.
//!
//! Owns: each buyer's consecutive-failure count and breaker state. Closed: every ping is
//! admitted. `failures` consecutive timeouts or errors open it: for `open_ms` the buyer is
//! skipped entirely, then it is half-open and one probe ping is admitted at most every
//! `probe_interval_ms` (so a buyer that always fails gets at most one ping per
//! `max(open_ms, probe_interval_ms)`). A success closes it; a failure while open re-opens
//! it from that moment.
//!
//! Never: reads a clock, or takes a lock on the hot path of a closed breaker (the slot
//! lookup and the state are atomic loads); an open breaker takes its buyer's own tiny
//! mutex. Buyers are addressed by their stable
//! [`BuyerKey`], so a reload never hands one buyer's failures to another.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::UnixMs;
use crate::config::{BreakerConfig, BuyerKey};
use crate::slots::Slots;

/// Whether to ping a buyer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: ping as usual.
    Yes,
    /// Open, and this is the probe: ping it (its outcome closes or re-opens the breaker).
    Probe,
    /// Open: skip the buyer (recorded as a breaker skip).
    No,
}

/// The part of a buyer's breaker that changes only around failures.
#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    /// When the breaker last opened (or re-opened); `None` when closed.
    opened_at: Option<UnixMs>,
    /// When the last probe was admitted since it opened.
    probed_at: Option<UnixMs>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Mirrors `state.opened_at.is_some()` so a closed breaker admits without locking.
    open: AtomicBool,
    /// Mirrors `state.consecutive_failures > 0`, so a success on a clean, closed breaker
    /// (the hot path: most pings succeed) records without locking.
    failing: AtomicBool,
    state: Mutex<State>,
}

/// Every buyer's breaker, by stable buyer key.
#[derive(Debug)]
pub struct BreakerBook {
    slots: Slots<Slot>,
    cfg: BreakerConfig,
}

/// A duration in ms as a `UnixMs` difference (saturating: a huge duration never wraps).
fn ms(d: u64) -> i64 {
    i64::try_from(d).unwrap_or(i64::MAX)
}

impl BreakerBook {
    /// Closed breakers for buyer keys `0..buyer_count`. A `failures` of 0 is taken as 1.
    pub fn new(buyer_count: usize, cfg: BreakerConfig) -> BreakerBook {
        BreakerBook {
            slots: Slots::with_len(buyer_count),
            cfg,
        }
    }

    /// Makes room for buyer keys `0..buyer_count` (closed); never shrinks.
    pub fn grow(&self, buyer_count: usize) {
        self.slots.grow(buyer_count);
    }

    /// May buyer `key` be pinged at `now`? An unknown key is admitted: the breaker only
    /// ever holds back buyers it has seen fail.
    pub fn admit(&self, key: BuyerKey, now: UnixMs) -> Admit {
        if !self.cfg.enabled {
            return Admit::Yes;
        }
        let Some(slot) = self.slots.get(key.slot()) else {
            return Admit::Yes;
        };
        if !slot.open.load(Ordering::Acquire) {
            return Admit::Yes;
        }
        let mut s = slot.state.lock();
        let Some(opened_at) = s.opened_at else {
            return Admit::Yes;
        };
        if now.saturating_sub(opened_at) < ms(self.cfg.open_ms) {
            return Admit::No;
        }
        let probe_due = s
            .probed_at
            .is_none_or(|at| now.saturating_sub(at) >= ms(self.cfg.probe_interval_ms));
        if probe_due {
            s.probed_at = Some(now);
            Admit::Probe
        } else {
            Admit::No
        }
    }

    /// Records the outcome of a ping to buyer `key` (`ok`: it answered in time, bid or
    /// not). A success closes the breaker; `failures` consecutive failures open it; any
    /// failure while open (a failed probe) re-opens it from `now`.
    pub fn record(&self, key: BuyerKey, ok: bool, now: UnixMs) {
        let Some(slot) = self.slots.get(key.slot()) else {
            return;
        };
        if ok && !slot.failing.load(Ordering::Acquire) && !slot.open.load(Ordering::Acquire) {
            return;
        }
        let mut s = slot.state.lock();
        if ok {
            *s = State::default();
            slot.open.store(false, Ordering::Release);
            slot.failing.store(false, Ordering::Release);
            return;
        }
        slot.failing.store(true, Ordering::Release);
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if s.opened_at.is_some() || s.consecutive_failures >= self.cfg.failures.max(1) {
            s.opened_at = Some(now);
            s.probed_at = None;
            slot.open.store(true, Ordering::Release);
        }
    }

    /// Is the breaker of buyer `key` open (for metrics and the auction log)?
    pub fn is_open(&self, key: BuyerKey) -> bool {
        self.slots
            .get(key.slot())
            .is_some_and(|s| s.open.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        enabled: true,
        failures: 3,
        open_ms: 5_000,
        probe_interval_ms: 1_000,
    };

    fn fail(b: &BreakerBook, n: u32, now: UnixMs) {
        for _ in 0..n {
            b.record(BuyerKey(0), false, now);
        }
    }

    #[test]
    fn opens_after_n_consecutive_failures() {
        let b = BreakerBook::new(2, CFG);
        fail(&b, 2, 0);
        assert_eq!(b.admit(BuyerKey(0), 0), Admit::Yes);
        // A success in between resets the count.
        b.record(BuyerKey(0), true, 0);
        fail(&b, 2, 0);
        assert!(!b.is_open(BuyerKey(0)));
        fail(&b, 1, 10);
        assert!(b.is_open(BuyerKey(0)));
        assert_eq!(b.admit(BuyerKey(0), 10), Admit::No);
        assert_eq!(b.admit(BuyerKey(0), 10 + 4_999), Admit::No);
        // Other buyers are untouched.
        assert_eq!(b.admit(BuyerKey(1), 10), Admit::Yes);
    }

    #[test]
    fn half_open_probes_once_per_interval() {
        let b = BreakerBook::new(1, CFG);
        fail(&b, 3, 0);
        assert_eq!(b.admit(BuyerKey(0), 5_000), Admit::Probe);
        assert_eq!(b.admit(BuyerKey(0), 5_000), Admit::No);
        assert_eq!(b.admit(BuyerKey(0), 5_999), Admit::No);
        // The probe has not reported (it is slow): one more per interval.
        assert_eq!(b.admit(BuyerKey(0), 6_000), Admit::Probe);
        assert_eq!(b.admit(BuyerKey(0), 6_001), Admit::No);
    }

    #[test]
    fn an_always_failing_buyer_is_pinged_at_most_once_per_interval() {
        let b = BreakerBook::new(1, CFG);
        let mut pinged = Vec::new();
        // Ten seconds of a 10,000-pings-per-second load; every admitted ping fails 100 ms later.
        let mut pending: Vec<UnixMs> = Vec::new();
        for now in (0..10_000).map(|i| i as UnixMs) {
            pending.retain(|&t| {
                if t + 100 <= now {
                    b.record(BuyerKey(0), false, now);
                    false
                } else {
                    true
                }
            });
            for _ in 0..10 {
                if b.admit(BuyerKey(0), now) != Admit::No {
                    pinged.push(now);
                    pending.push(now);
                }
            }
        }
        // Three pings open it at once; afterwards no two pings are closer than the interval.
        let after_open: Vec<_> = pinged.iter().copied().filter(|&t| t > 100).collect();
        assert!(
            after_open.windows(2).all(|w| w[1] - w[0] >= 1_000),
            "{after_open:?}"
        );
        assert!(after_open.len() <= 10, "{after_open:?}");
    }

    #[test]
    fn a_failed_probe_reopens_from_now() {
        let b = BreakerBook::new(1, CFG);
        fail(&b, 3, 0);
        assert_eq!(b.admit(BuyerKey(0), 5_000), Admit::Probe);
        b.record(BuyerKey(0), false, 5_100);
        assert!(b.is_open(BuyerKey(0)));
        assert_eq!(b.admit(BuyerKey(0), 6_100), Admit::No);
        assert_eq!(b.admit(BuyerKey(0), 10_099), Admit::No);
        assert_eq!(b.admit(BuyerKey(0), 10_100), Admit::Probe);
    }

    #[test]
    fn a_successful_probe_closes() {
        let b = BreakerBook::new(1, CFG);
        fail(&b, 3, 0);
        assert_eq!(b.admit(BuyerKey(0), 5_000), Admit::Probe);
        b.record(BuyerKey(0), true, 5_050);
        assert!(!b.is_open(BuyerKey(0)));
        assert_eq!(b.admit(BuyerKey(0), 5_051), Admit::Yes);
        // Closed and reset: it takes `failures` failures again to open.
        fail(&b, 2, 5_100);
        assert_eq!(b.admit(BuyerKey(0), 5_100), Admit::Yes);
    }

    #[test]
    fn a_success_after_failures_resets_the_count_even_on_the_lock_free_path() {
        let b = BreakerBook::new(1, CFG);
        // Clean and closed: successes take the lock-free path and change nothing.
        b.record(BuyerKey(0), true, 0);
        fail(&b, 2, 10);
        // A success must still reset the two failures (it may not take the fast path).
        b.record(BuyerKey(0), true, 20);
        fail(&b, 2, 30);
        assert_eq!(
            b.admit(BuyerKey(0), 40),
            Admit::Yes,
            "2 + 2 failures with a success between"
        );
        fail(&b, 1, 50);
        assert_eq!(
            b.admit(BuyerKey(0), 60),
            Admit::No,
            "three in a row open it"
        );
        // Open: a success closes it (not the fast path either).
        b.record(BuyerKey(0), true, 70);
        assert_eq!(b.admit(BuyerKey(0), 80), Admit::Yes);
    }

    #[test]
    fn a_late_probe_success_closes_and_a_second_probe_waits_its_interval() {
        let b = BreakerBook::new(1, CFG);
        fail(&b, 3, 0);
        assert_eq!(b.admit(BuyerKey(0), 5_000), Admit::Probe);
        // The probe is still out: nobody else gets through until the next interval.
        assert_eq!(b.admit(BuyerKey(0), 5_999), Admit::No);
        assert_eq!(b.admit(BuyerKey(0), 6_000), Admit::Probe);
        // The first probe answers late but successfully: the buyer is healthy again.
        b.record(BuyerKey(0), true, 6_010);
        assert_eq!(b.admit(BuyerKey(0), 6_011), Admit::Yes);
    }

    #[test]
    fn unknown_buyer_and_zero_failures() {
        let b = BreakerBook::new(1, BreakerConfig { failures: 0, ..CFG });
        assert_eq!(b.admit(BuyerKey(9), 0), Admit::Yes);
        b.record(BuyerKey(9), false, 0);
        assert!(!b.is_open(BuyerKey(9)));
        b.record(BuyerKey(0), false, 0);
        assert!(b.is_open(BuyerKey(0)));
    }
}

#[cfg(test)]
mod disabled_tests {
    use super::*;
    use crate::testutil::breaker_cfg;

    #[test]
    fn a_disabled_breaker_admits_every_ping() {
        let b = BreakerBook::new(
            1,
            BreakerConfig {
                enabled: false,
                ..breaker_cfg()
            },
        );
        for t in 0..100 {
            b.record(BuyerKey(0), false, t);
        }
        assert_eq!(b.admit(BuyerKey(0), 100), Admit::Yes);
    }
}
