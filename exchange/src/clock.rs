//! The shell's clock. Wall-clock milliseconds are derived from tokio's clock, so a test
//! that pauses and advances tokio time moves quote expiry, caps windows and schedules too.

use tokio::time::Instant;

use crate::core::UnixMs;

/// Wall-clock time anchored once, advanced by tokio's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor_unix_ms: UnixMs,
    anchor: Instant,
}

impl Clock {
    /// Anchors at the system's current time.
    pub fn system() -> Clock {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Clock::at(unix_ms)
    }

    /// Anchors at a given wall-clock time (tests use this to start at a chosen instant).
    pub fn at(unix_ms: UnixMs) -> Clock {
        Clock {
            anchor_unix_ms: unix_ms,
            anchor: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> UnixMs {
        self.anchor_unix_ms + self.anchor.elapsed().as_millis() as i64
    }

    /// The tokio instant of a wall-clock time (what a core bound means to a timer):
    /// [`now_ms`](Clock::now_ms) reads `unix_ms` at that instant.
    pub fn instant_of(&self, unix_ms: UnixMs) -> Instant {
        let d = unix_ms.saturating_sub(self.anchor_unix_ms);
        if d >= 0 {
            // A bound years away is as good as never (and must not overflow).
            let far = std::time::Duration::from_secs(365 * 24 * 3600);
            self.anchor
                .checked_add(std::time::Duration::from_millis(d as u64).min(far))
                .unwrap_or(self.anchor + far)
        } else {
            self.anchor
                .checked_sub(std::time::Duration::from_millis(d.unsigned_abs()))
                .unwrap_or(self.anchor)
        }
    }

    /// The instant `ms` milliseconds after `t` (none before it; a bound years away is as
    /// good as never, and must not overflow).
    pub fn after_ms(t: Instant, ms: i64) -> Instant {
        let far = std::time::Duration::from_secs(365 * 24 * 3600);
        let d = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(far);
        t.checked_add(d).unwrap_or(t + far)
    }

    /// The wall-clock time of a tokio instant.
    pub fn unix_ms_of(&self, t: Instant) -> UnixMs {
        if t >= self.anchor {
            self.anchor_unix_ms + (t - self.anchor).as_millis() as i64
        } else {
            self.anchor_unix_ms - (self.anchor - t).as_millis() as i64
        }
    }
}

/// RFC 3339 UTC with milliseconds, as the contract and the ledger write times.
pub use crate::core::record::rfc3339;
