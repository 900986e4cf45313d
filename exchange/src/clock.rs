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
