//! Shared kit for the exchange's end-to-end tests: real sockets on 127.0.0.1:0, real
//! bidders from the bidder SDK, misbehaving raw buyers, a test configuration written as
//! TOML and loaded by the real loader, and a seller-side HTTP client.
//!
//! Nothing here sleeps to wait for something to happen: waits are on events (a bidder
//! saw a ping, a counter reached a value) with a generous upper bound, so a slow machine
//! makes a test slower, never wrong.

// Each test binary uses part of this kit. A helper failing is the test failing, so the
// kit panics with a message (clippy's test allowance only covers `#[test]` bodies).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bidder_sdk::Micros;

mod bidder;
mod client;
mod config;
mod exchange;
mod leads;
mod raw_buyer;

// Everything public in the files above is part of the kit, under `common::`. Each test
// binary uses part of it, so a re-export it does not use is no warning.
#[allow(unused_imports)]
pub use bidder::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use config::*;
#[allow(unused_imports)]
pub use exchange::*;
#[allow(unused_imports)]
pub use leads::*;
#[allow(unused_imports)]
pub use raw_buyer::*;

/// The main seller's bearer key (the config holds only its SHA-256).
pub const SELLER_KEY: &str = "seller-main-key";
/// A seller that may sell only in the `solar` vertical (403 for auto_insurance).
pub const SOLAR_ONLY_KEY: &str = "seller-solar-only-key";
/// A seller limited to one request per second.
pub const THROTTLED_KEY: &str = "seller-throttled-key";
/// The admin bearer token of every test exchange (read from [`ADMIN_TOKEN_ENV`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The variable the test configuration names in `admin.token_env`.
pub const ADMIN_TOKEN_ENV: &str = "PINGPOST_TEST_ADMIN_TOKEN";
/// The vertical every test sells in.
pub const VERTICAL: &str = "auto_insurance";
/// Fields of `auto_insurance` that are PII: never in a ping, only in a post.
pub const PII_FIELDS: [&str; 4] = ["first_name", "last_name", "phone", "email"];
/// The seller gets this share of the winning bid (revenue share, percent).
pub const SHARE_PCT: i64 = 80;
/// Upper bound on any wait for an event in these tests. Events normally come in
/// milliseconds; this only turns a hang into a failure.
pub const EVENT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Whole currency units as micros.
pub fn usd(units: f64) -> Micros {
    Micros::from_decimal_f64(units).expect("a valid amount")
}

/// The seller's price for a bid under the test payout (80 % revenue share).
pub fn seller_price(bid: Micros) -> Micros {
    Micros(bid.0 * SHARE_PCT / 100)
}

/// What the exchange logs while a closure runs on this thread ([`CapturedLog::during`]):
/// the `tracing` lines, as text without colours.
#[derive(Clone, Default)]
pub struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    /// A dispatcher that writes here (for threads of a test's own: each enters it).
    pub fn dispatch(&self) -> tracing::Dispatch {
        // tracing-core computes a callsite's interest from the *calling thread's*
        // dispatcher while only one dispatcher is registered: a log line first reached on
        // another thread (the exchange's, or another test's) is then marked "never" and
        // dropped here too. A second dispatcher kept for the whole process makes it ask
        // every registered one, this one included.
        static KEEPER: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
        KEEPER.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
        let writer = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        )
    }

    /// Runs `f` with this thread's log written here.
    pub fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        tracing::dispatcher::with_default(&self.dispatch(), f)
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
