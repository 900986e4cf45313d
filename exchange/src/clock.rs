//! The shell's clock. Wall-clock milliseconds are derived from tokio's clock, so a test
//! that pauses and advances tokio time moves quote expiry, caps windows and schedules too.
//!
//! The binary's clock also follows the system clock when it steps forward (an NTP step, a
//! virtual machine resumed after a pause): [`Clock::follow_system`], run every second,
//! moves it forward by the step, so webhook timestamps, quote expiries and cap windows
//! keep to the wall (black-box round 58a: stepped 10 minutes forward, the exchange kept
//! signing with the old time and every buyer that checks the 300 s tolerance refused its
//! pings until a restart). It never goes back: a step back is reported, and the exchange
//! keeps its own time (caps windows, ledger times and quote expiries never run backwards)
//! until a restart.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::core::UnixMs;

/// How far the system clock may be from the exchange's before [`Clock::follow`] counts it
/// as a step (less is the jitter of two readings, not a step).
pub const STEP_TOLERANCE_MS: i64 = 1_000;

/// Wall-clock time anchored once, advanced by tokio's monotonic clock (and, for the
/// binary's clock, moved forward by the system clock's forward steps).
#[derive(Debug, Clone)]
pub struct Clock {
    anchor_unix_ms: UnixMs,
    anchor: Instant,
    /// Added to every reading: the forward steps followed so far (it only grows).
    offset_ms: Arc<AtomicI64>,
    follows_system: bool,
}

/// What [`Clock::follow`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The two clocks agree (within [`STEP_TOLERANCE_MS`]).
    None,
    /// The system clock was this many ms ahead: the clock moved forward by as much.
    Forward(i64),
    /// The system clock is this many ms behind: the clock kept its time.
    Behind(i64),
}

/// The system's time, Unix ms.
fn system_ms() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Clock {
    /// Anchors at the system's current time (and does not follow it afterwards).
    pub fn system() -> Clock {
        Clock::at(system_ms())
    }

    /// [`Clock::system`], following the system clock's forward steps when
    /// [`Clock::follow_system`] is called (the binary calls it every second).
    pub fn following_system() -> Clock {
        Clock {
            follows_system: true,
            ..Clock::system()
        }
    }

    /// Anchors at a given wall-clock time (tests use this to start at a chosen instant).
    pub fn at(unix_ms: UnixMs) -> Clock {
        Clock {
            anchor_unix_ms: unix_ms,
            anchor: Instant::now(),
            offset_ms: Arc::new(AtomicI64::new(0)),
            follows_system: false,
        }
    }

    /// Whether this clock is meant to follow the system clock.
    pub fn follows_system(&self) -> bool {
        self.follows_system
    }

    pub fn now_ms(&self) -> UnixMs {
        self.anchor_unix_ms
            + self.offset_ms.load(Ordering::Relaxed)
            + self.anchor.elapsed().as_millis() as i64
    }

    /// The wall-clock time of a tokio instant.
    pub fn unix_ms_of(&self, t: Instant) -> UnixMs {
        let base = self.anchor_unix_ms + self.offset_ms.load(Ordering::Relaxed);
        if t >= self.anchor {
            base + (t - self.anchor).as_millis() as i64
        } else {
            base - (self.anchor - t).as_millis() as i64
        }
    }

    /// Compares the clock with `wall_ms`, a reading of the system clock: ahead by more
    /// than [`STEP_TOLERANCE_MS`], the clock moves forward to it; behind, it stays (time
    /// never goes back).
    pub fn follow(&self, wall_ms: UnixMs) -> Step {
        let gap = wall_ms.saturating_sub(self.now_ms());
        if gap > STEP_TOLERANCE_MS {
            self.offset_ms.fetch_add(gap, Ordering::Relaxed);
            Step::Forward(gap)
        } else if gap < -STEP_TOLERANCE_MS {
            Step::Behind(gap.saturating_neg())
        } else {
            Step::None
        }
    }

    /// [`Clock::follow`] with the system clock's reading now; `Step::None` for a clock
    /// that does not follow it.
    pub fn follow_system(&self) -> Step {
        if !self.follows_system {
            return Step::None;
        }
        self.follow(system_ms())
    }
}

/// RFC 3339 UTC with milliseconds, as the contract and the ledger write times.
pub use crate::core::record::rfc3339;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_follows_a_forward_step_and_never_goes_back() {
        let clock = Clock::at(1_000_000);
        let copy = clock.clone();
        assert_eq!(clock.follow(1_000_500), Step::None, "within the tolerance");
        assert_eq!(clock.now_ms(), 1_000_000);
        // Stepped 10 minutes forward: the clock (and every copy of it) is there now.
        assert_eq!(clock.follow(1_600_000), Step::Forward(600_000));
        assert_eq!(copy.now_ms(), 1_600_000);
        assert_eq!(copy.unix_ms_of(Instant::now()), 1_600_000);
        tokio::time::advance(std::time::Duration::from_millis(250)).await;
        assert_eq!(clock.now_ms(), 1_600_250);
        // Stepped back an hour: reported, and the clock keeps its time.
        assert_eq!(clock.follow(1_600_250 - 3_600_000), Step::Behind(3_600_000));
        assert_eq!(clock.now_ms(), 1_600_250);
        // A clock that does not follow the system's is never moved by it.
        let fixed = Clock::at(0);
        assert_eq!(fixed.follow_system(), Step::None);
        assert_eq!(fixed.now_ms(), 0);
        assert!(Clock::following_system().follows_system());
    }
}
