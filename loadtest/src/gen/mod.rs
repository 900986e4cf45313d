//! The open-loop load generator: requests go out at planned times, whatever the target
//! does, and every latency is measured from the request's *planned* send time.
//!
//! # What it owns
//! - The rate schedule: request `i` is planned at `start + t(i)` where `t` integrates the
//!   rate (constant, or a linear ramp over the measured phase, [`RateSchedule`]).
//! - One scheduler task that sleeps until the next planned time and starts every request
//!   that is due without waiting for earlier ones (open loop). Requests are futures in a
//!   `FuturesUnordered` driven by that same task: no task spawn, no cross-thread wake-up
//!   per request, which keeps the generator's own CPU lowest on a 2-core machine shared
//!   with the target. hyper's connection tasks do the socket I/O.
//! - Latency = completion - planned time (wrk2 style; see *Timer granularity* for the
//!   requests that go out early). A stalled target cannot hide its stall: the requests
//!   planned during the stall carry it (coordinated omission corrected). Timeouts are
//!   recorded too, at the time they gave up.
//! - HdrHistograms (1 µs .. 10 min, 3 significant figures) for the measured phase, and a
//!   one-second timeline.
//!
//! # Choices worth knowing
//! - **In-flight limit.** A request that comes due while `in_flight_max` requests are
//!   outstanding is not queued and not sent. It counts as an `in_flight_limit` error and
//!   its latency is recorded as the *stall so far*: the age of the oldest request still in
//!   flight (measured from its planned time), which is never less than the refused
//!   request's own age. A request sent at that moment would have queued behind that one,
//!   so this is a lower bound of what it would have seen; dropping it would hide exactly
//!   the backlog the method exists to show.
//! - **Connections.** HTTP/1.1 keep-alive through hyper-util's pooling client (TCP_NODELAY,
//!   up to `connections` idle connections kept), and at most `connections` requests on
//!   the wire at once (a semaphore), so the pool does not grow and churn in bursts. hyper
//!   returns a finished connection to the pool from a task of its own, so a request may
//!   now and then open a new one while another is on its way back; the surplus is closed
//!   when idle. A request that finds every permit taken waits for one: the generator
//!   then queues, and the target never sees that burst. The wait is inside its latency
//!   (measured from its planned time, so nothing is omitted) and shows in
//!   [`RunResult::send_lag_us`] (the report's generator lag line, with a note past
//!   [`crate::report::GENERATOR_LAG_NOTE_US`]). Size `connections` above
//!   rate x latency. The direct target uses [`Fanout`](crate::relay::Fanout)'s own pools
//!   instead.
//! - **Timer granularity.** tokio's timer has 1 ms resolution and rounds a sleep up, so
//!   waking *at* the planned time would put 1-2 ms of the generator's own lag into every
//!   latency (measured here: p50 1.1 ms), enough to fail a `T + 2 ms` target on its own.
//!   The scheduler instead wakes up to [`SEND_EARLY_MAX`] (1 ms) before a request's planned
//!   time and starts every request due within that millisecond. Its latency counts from
//!   `min(planned, actual start)` ([`run::latency_origin`]): a request that went out late is measured from its
//!   planned time (the coordinated-omission correction), one that went out early from
//!   when it actually went (never flattering it). The rate is unchanged, the pattern
//!   shifts by under 1 ms.
//! - **Which latencies are recorded.** Successful answers (any 2xx, including `no_bid`),
//!   timeouts (at the time they gave up) and in-flight refusals (at the stall so far). A
//!   connect that gave up on the connect timeout (which is the request timeout) is a
//!   timeout too: a stopped target's full listen backlog makes every new connect hang, and
//!   those requests are its backlog as much as the ones that did connect
//!   ([`target::connect_error_class`]). Error answers (4xx, 5xx), refused connections (a
//!   dead target) and I/O errors are counted by class but not put in the histogram
//!   ([`error_in_percentiles`]), so a target that sheds load fast does not look fast; the
//!   report says so under its table for every target that had them
//!   ([`crate::report::print_table`]), and every figure must be read with its error
//!   counts.
//! - **Achieved rate** ([`RunResult::achieved_rate_per_s`], the report's `rate/s`): the
//!   measured phase's requests answered without error, divided by the measured phase's
//!   length. Answers that arrive after the phase (while the run drains what is in flight)
//!   count, so it is the planned rate whenever everything was answered in the end, however
//!   late: it is not the target's throughput. A target that fell behind shows in the
//!   percentiles, the errors and the generator lag, not here.
//! - **Leads.** A pool of [`LEAD_POOL`] seeded leads is generated before the clock starts,
//!   so the per-request cost is picking one and copying a `Bytes`.
//!
//! It never targets anything but loopback, and every run is bounded in time and count.
//!
//! # Layout
//! - `plan`: what a run is asked to do ([`LoadPlan`], [`Target`], [`Mix`], [`GenError`]).
//! - `schedule`: planned send times and the call mix.
//! - `run`: the open-loop scheduler loop ([`run()`], [`run_with`]).
//! - `target`: the loopback check, the HTTP client and the calls to each kind of target.
//! - `leads`: the seeded leads and the request bodies built from them.
//! - `record`: histograms, counts, timeline and the [`RunResult`].

use std::time::Duration;

mod leads;
mod plan;
mod record;
mod run;
mod schedule;
mod target;

pub use leads::{auto_insurance_lead, buyer_ping_body};
pub use plan::{GenError, LoadPlan, Mix, RateSchedule, Target};
pub use record::{Progress, ProgressFn, RunResult, Sample, SampleFn, SampleKind, Window};
pub use run::{run, run_with};

/// Whether an error class of [`RunResult::errors`] (`timeout`, `post_connect`, ...) has its
/// latency in the percentiles (module docs, *Which latencies are recorded*): only timeouts
/// (stalled connects included) and in-flight refusals do. An unknown name does not.
pub fn error_in_percentiles(class: &str) -> bool {
    target::ErrorClass::ALL
        .iter()
        .any(|c| c.recorded() && (c.name(false) == class || c.name(true) == class))
}

/// Highest latency a histogram tracks, in µs (10 minutes); larger values are clamped.
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Significant figures kept by every histogram.
pub const HISTOGRAM_SIGFIGS: u8 = 3;
/// Distinct leads generated per run (cycled through by the requests).
pub const LEAD_POOL: usize = 4096;
/// Longest run, warm-up plus measured phase, in seconds.
pub const RUN_S_MAX: f64 = 86_400.0;
/// Highest planned rate, requests per second.
pub const RATE_PER_S_MAX: f64 = 1_000_000.0;
/// Most requests in flight a plan may allow.
pub const IN_FLIGHT_MAX_MAX: usize = 1_000_000;
/// Most connections a plan may ask for.
pub const CONNECTIONS_MAX: usize = 10_000;
/// Longest request timeout a plan may set, in ms.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 300_000;
/// Largest response body read, in bytes; a longer one is a `bad_body` error.
pub const RESPONSE_BODY_MAX: usize = 64 * 1024;
/// Most distinct outcome keys kept; later new keys are counted under `other`.
pub const OUTCOME_KEYS_MAX: usize = 256;
/// Longest reason or status copied from an answer into an outcome key.
pub const OUTCOME_REASON_LEN_MAX: usize = 48;
/// Most buyers a direct target may fan out to.
pub const DIRECT_TARGETS_MAX: usize = 10_000;
/// `tmax_ms` written into the buyer pings sent to the relay (the exchange's default
/// auction deadline, so the relay and the exchange give buyers the same budget).
pub const RELAY_TMAX_MS: u64 = 150;
/// How early a request may go out: the timer's resolution (module docs).
pub const SEND_EARLY_MAX: Duration = Duration::from_millis(1);
/// Path the relay target is sent to (the relay takes any path).
pub const RELAY_PATH: &str = "/ping";
/// Vertical written into buyer pings (relay and direct targets).
pub const BUYER_PING_VERTICAL: &str = "auto_insurance";
