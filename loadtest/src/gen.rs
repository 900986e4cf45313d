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
//!   when idle. A request that finds every permit taken waits for one; that wait is inside
//!   its latency and shows in [`RunResult::send_lag_us`]. Size `connections` above
//!   rate x latency. The direct target uses [`Fanout`]'s own pools instead.
//! - **Timer granularity.** tokio's timer has 1 ms resolution and rounds a sleep up, so
//!   waking *at* the planned time would put 1-2 ms of the generator's own lag into every
//!   latency (measured here: p50 1.1 ms), enough to fail a `T + 2 ms` target on its own.
//!   The scheduler instead wakes up to [`SEND_EARLY_MAX`] (1 ms) before a request's planned
//!   time and starts every request due within that millisecond. Its latency counts from
//!   `max(planned, actual start)`: a request that went out late is measured from its
//!   planned time (the coordinated-omission correction), one that went out early from
//!   when it actually went (never flattering it). The rate is unchanged, the pattern
//!   shifts by under 1 ms.
//! - **Which latencies are recorded.** Successful answers (any 2xx, including `no_bid`),
//!   timeouts and in-flight refusals. Error answers (4xx, 5xx, connection refused) are
//!   counted by class but not put in the histogram, so a target that sheds load fast does
//!   not look fast; every figure must be read with its error counts.
//! - **Leads.** A pool of [`LEAD_POOL`] seeded leads is generated before the clock starts,
//!   so the per-request cost is picking one and copying a `Bytes`.
//!
//! It never targets anything but loopback, and every run is bounded in time and count.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Normal};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::relay::{Fanout, FanoutTarget, PreparedTarget};

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

/// What a run loads.
#[derive(Debug, Clone)]
pub enum Target {
    /// The exchange's seller API.
    Exchange {
        addr: SocketAddr,
        seller_key: String,
        vertical: String,
    },
    /// The speed-of-light relay: POST a buyer-ping-shaped JSON, it fans out.
    Relay { addr: SocketAddr },
    /// The direct-to-buyer baseline: the generator itself fans out to the buyers with
    /// [`Fanout`].
    Direct {
        targets: Vec<FanoutTarget>,
        deadline_ms: u64,
    },
}

/// Which seller calls an exchange run makes, as fractions (normalized by their sum; all
/// zero means pings only). Relay and direct targets always do pings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Mix {
    /// `/v1/ping` alone.
    pub ping: f64,
    /// `/v1/ping`, then `/v1/post` of the full lead when the ping answered `bid`.
    pub ping_post: f64,
    /// `/v1/leads`: the full lead in one call.
    pub direct_post: f64,
}

impl Mix {
    /// Pings only.
    pub const PING: Mix = Mix {
        ping: 1.0,
        ping_post: 0.0,
        direct_post: 0.0,
    };
}

/// How the planned rate moves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RateSchedule {
    /// The same rate throughout, warm-up included.
    Constant { rate_per_s: f64 },
    /// `from_per_s` during warm-up, then linear from `from_per_s` to `to_per_s` over the
    /// measured phase.
    Ramp { from_per_s: f64, to_per_s: f64 },
}

/// One run's plan.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub schedule: RateSchedule,
    /// Sent but not recorded: lets connections, caches and the target settle.
    pub warmup_s: f64,
    /// Recorded phase.
    pub measure_s: f64,
    /// Stop after this many requests (warm-up included) even if time remains; 0 = no
    /// count bound (the time bound always holds).
    pub count_max: u64,
    /// Requests outstanding at once; one more is refused, not queued (module docs).
    pub in_flight_max: usize,
    /// Per call (a ping and its post are separate calls); also the longest wait for
    /// stragglers after the last planned request.
    pub request_timeout_ms: u64,
    pub mix: Mix,
    /// Seeds the leads and the mix: the same seed sends the same requests.
    pub seed: u64,
    /// HTTP/1.1 keep-alive connections to the target (not used by the direct target).
    pub connections: usize,
}

/// A live view of a run, given to the progress callback once a second.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed_s: f64,
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    pub in_flight: u64,
    /// p99 of the last one-second window.
    pub current_p99_us: u64,
}

/// One second of the measured phase, by completion time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Start of the window, seconds since the start of the measured phase.
    pub t_s: f64,
    /// Latencies recorded in the window (first call of each request).
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub errors: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub label: String,
    /// Requests the schedule issued, warm-up included (sent or refused).
    pub planned: u64,
    /// Requests put in flight (planned minus in-flight refusals).
    pub sent: u64,
    /// Requests the target answered, with any status, or fan-outs that returned.
    pub completed: u64,
    /// Requests planned in the measured phase.
    pub measured: u64,
    /// Measured requests answered successfully, per second of the measured phase.
    pub achieved_rate_per_s: f64,
    /// Length of the measured phase actually scheduled (shorter than planned when
    /// `count_max` stopped the run).
    pub measure_s: f64,
    /// Auctions (pings, relay, direct) of the measured phase, from the PLANNED send time
    /// (or the actual one for a request sent early, module docs).
    pub latency_us: Histogram<u64>,
    /// Posts: `/v1/post` after a bid (from the post's start, which follows the ping's
    /// answer at once) and `/v1/leads` (from the planned send time).
    pub post_latency_us: Histogram<u64>,
    /// Measured requests: planned time to the moment the request had a connection and
    /// went on the wire (scheduler lag plus waiting for a free connection; 0 if it went
    /// early). The generator's own delay: if it is large, the generator or its connection
    /// pool was the bottleneck, not the target.
    pub send_lag_us: Histogram<u64>,
    /// Measured requests by error class: `connect`, `io`, `timeout`, `http_4xx`,
    /// `rate_limited_429`, `http_5xx`, `overloaded_503`, `http_other`, `bad_body`,
    /// `in_flight_limit`; a post's errors carry a `post_` prefix.
    pub errors: BTreeMap<String, u64>,
    /// Measured answers: `bid`, `no_bid:<reason>`; `/v1/post` status (`sold`, `unsold`,
    /// ...); `direct_<status>` for `/v1/leads`; `relayed` / `fanned_out` plus
    /// `buyer_answered`, `buyer_timeout`, `buyer_error` summed over buyers.
    pub outcomes: BTreeMap<String, u64>,
    /// One window per second of the measured phase (and of the straggler wait).
    pub timeline: Vec<Window>,
}

/// Which histogram a [`Sample`] went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// [`RunResult::latency_us`]
    Auction,
    /// [`RunResult::post_latency_us`]
    Post,
}

/// One finished call, as given to the sample hook of [`run_with`]: lets a caller check
/// the histograms against its own view, or keep raw latencies.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Request index in planned order.
    pub index: u64,
    pub kind: SampleKind,
    /// Planned in the measured phase (only these reach the histograms).
    pub measured: bool,
    /// The latency recorded, if one was (see the module docs for which are).
    pub latency_us: Option<u64>,
    /// The error class, if the call failed.
    pub error: Option<&'static str>,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error(
        "refusing to load {0}: the load generator only targets loopback \
         (127.0.0.0/8, ::1 or localhost), never another machine"
    )]
    NotLoopback(String),
    #[error("invalid load plan: {0}")]
    InvalidPlan(String),
    #[error("could not create a histogram: {0}")]
    Histogram(String),
}

/// A progress callback: called once a second from the scheduler task, keep it cheap.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);
/// A sample hook: called for every finished call from the scheduler task, keep it cheap.
pub type SampleFn<'a> = &'a (dyn Fn(&Sample) + Sync);

/// Runs `plan` against `target`. See [`run_with`].
pub async fn run(
    plan: &LoadPlan,
    target: &Target,
    label: &str,
    progress: Option<ProgressFn<'_>>,
) -> Result<RunResult, GenError> {
    run_with(plan, target, label, progress, None).await
}

/// Runs `plan` against `target`, calling `progress` once a second and `on_sample` for
/// every finished call. Refuses non-loopback targets and plans out of bounds before
/// sending anything.
pub async fn run_with(
    plan: &LoadPlan,
    target: &Target,
    label: &str,
    progress: Option<ProgressFn<'_>>,
    on_sample: Option<SampleFn<'_>>,
) -> Result<RunResult, GenError> {
    let schedule = Schedule::new(plan)?;
    check_loopback(target)?;
    let mix = MixSampler::new(&plan.mix)?;
    let ctx = Ctx::new(plan, target)?;
    let mut rec = Recorder::new(label, progress, on_sample)?;
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let timeout = Duration::from_millis(plan.request_timeout_ms);
    let count_max = if plan.count_max == 0 {
        u64::MAX
    } else {
        plan.count_max
    };

    let start = Instant::now();
    rec.start(start, plan.warmup_s);
    let mut inflight = FuturesUnordered::new();
    let mut index = 0u64;
    let mut next_offset_s = schedule.offset_s(0);
    // When scheduling ended (the last planned time, or the end of the plan).
    let mut schedule_end: Option<Instant> = None;
    let mut stop_s = schedule.end_s;
    let sleep = tokio::time::sleep_until(start);
    tokio::pin!(sleep);

    loop {
        let now = Instant::now();
        rec.advance_ticks(now, inflight.len());
        while schedule_end.is_none() {
            match next_offset_s {
                Some(offset_s) if index < count_max && offset_s < schedule.end_s => {
                    let planned = start + Duration::from_secs_f64(offset_s);
                    if planned > now + SEND_EARLY_MAX {
                        break;
                    }
                    // Latency counts from the planned time, or from the actual start if
                    // the request went out early (module docs).
                    let origin = planned.max(now);
                    let measured = offset_s >= schedule.warmup_s;
                    let op = ctx.op(&mix, &mut rng);
                    if inflight.len() >= plan.in_flight_max {
                        rec.refused(index, origin, now, measured, op);
                    } else {
                        let lead = rng.gen_range(0..ctx.leads.len());
                        rec.issued(index, origin, measured, op);
                        inflight.push(ctx.call(Job::First {
                            index,
                            planned,
                            origin,
                            measured,
                            op,
                            lead,
                        }));
                    }
                    index += 1;
                    next_offset_s = schedule.offset_s(index);
                }
                _ => {
                    // Time-bound: scheduling ends with the plan. Count-bound (or the ramp
                    // ran dry): it ends now, where the next request would have gone.
                    stop_s = next_offset_s.map_or(schedule.end_s, |o| o.min(schedule.end_s));
                    let time_bound = index < count_max && next_offset_s.is_some();
                    schedule_end = Some(if time_bound {
                        start + Duration::from_secs_f64(schedule.end_s)
                    } else {
                        now
                    });
                }
            }
        }
        let wake = match schedule_end {
            None => match next_offset_s {
                Some(o) => {
                    let planned = start + Duration::from_secs_f64(o);
                    let early = planned.checked_sub(SEND_EARLY_MAX).unwrap_or(planned);
                    early.min(rec.next_tick)
                }
                None => rec.next_tick,
            },
            Some(end) => {
                let cut = end + timeout;
                if inflight.is_empty() {
                    break;
                }
                if now >= cut {
                    rec.cut_stragglers(now);
                    break;
                }
                cut.min(rec.next_tick)
            }
        };
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        tokio::select! {
            biased;
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                // Close the windows that ended before this completion first.
                rec.advance_ticks(done.at, inflight.len());
                if let Some(job) = rec.finish(done) {
                    inflight.push(ctx.call(job));
                }
            }
            () = &mut sleep => {}
        }
    }
    drop(inflight);
    let measure_s = (stop_s - schedule.warmup_s).max(0.0);
    Ok(rec.into_result(measure_s))
}

/// Builds a realistic auto-insurance lead: `(ping lead, full lead)`. The ping lead has
/// state, a ZIP whose prefix belongs to that state, age, credit tier, homeowner, insured
/// and vehicle year, never any PII; the full lead adds first and last name, a `+1` E.164
/// phone (area code of the state, fictional 555 exchange) and an `example.com` e-mail.
pub fn auto_insurance_lead(rng: &mut impl Rng) -> (Value, Value) {
    let total: f64 = STATES.iter().map(|s| s.weight).sum();
    let mut pick = rng.gen_range(0.0..total);
    let mut state = &STATES[0];
    for s in STATES {
        if pick < s.weight {
            state = s;
            break;
        }
        pick -= s.weight;
    }
    let prefix = rng.gen_range(state.zip3.0..=state.zip3.1);
    let zip = format!("{prefix:03}{:02}", rng.gen_range(0..100));
    let age: f64 = Normal::new(42.0, 15.0).map_or(42.0, |d| d.sample(rng));
    let age = (age.round() as i64).clamp(16, 85);
    let credit = {
        let x: f64 = rng.gen();
        match x {
            x if x < 0.15 => "poor",
            x if x < 0.40 => "fair",
            x if x < 0.80 => "good",
            _ => "excellent",
        }
    };
    let homeowner_p = match age {
        ..=24 => 0.15,
        25..=34 => 0.45,
        _ => 0.70,
    };
    let vehicle_age = Exp::new(1.0 / 8.0).map_or(8.0, |d| d.sample(rng));
    let vehicle_year = 2026 - (vehicle_age as i64).clamp(0, 30);
    let ping = json!({
        "state": state.code,
        "zip": zip,
        "age": age,
        "homeowner": rng.gen_bool(homeowner_p),
        "credit": credit,
        "insured": rng.gen_bool(0.78),
        "vehicle_year": vehicle_year,
    });
    let first = FIRST_NAMES[rng.gen_range(0..FIRST_NAMES.len())];
    let last = LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())];
    let area = state.area_codes[rng.gen_range(0..state.area_codes.len())];
    let mut full = ping.clone();
    if let Value::Object(m) = &mut full {
        m.insert("first_name".into(), json!(first));
        m.insert("last_name".into(), json!(last));
        m.insert(
            "phone".into(),
            json!(format!("+1{area}555{:04}", rng.gen_range(0..10_000))),
        );
        m.insert(
            "email".into(),
            json!(format!(
                "{}.{}{}@example.com",
                first.to_ascii_lowercase(),
                last.to_ascii_lowercase(),
                rng.gen_range(1..1000)
            )),
        );
    }
    (ping, full)
}

/// The ping a buyer receives (contract: buyer protocol), for the relay and direct
/// targets: `{"auction_id", "vertical", "lead", "tmax_ms", "test": false}`.
pub fn buyer_ping_body(lead: &Value, auction_id: &str, tmax_ms: u64) -> Bytes {
    let body = json!({
        "auction_id": auction_id,
        "vertical": BUYER_PING_VERTICAL,
        "lead": lead,
        "tmax_ms": tmax_ms,
        "test": false,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// [`buyer_ping_body`] from a lead already serialized; `auction_id` must need no JSON
/// escaping (the generator's ids are `au_lt<digits>`).
fn buyer_ping_bytes(lead_json: &[u8], auction_id: &str, tmax_ms: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(lead_json.len() + 96);
    b.put_slice(b"{\"auction_id\":\"");
    b.put_slice(auction_id.as_bytes());
    b.put_slice(b"\",\"vertical\":\"");
    b.put_slice(BUYER_PING_VERTICAL.as_bytes());
    b.put_slice(b"\",\"lead\":");
    b.put_slice(lead_json);
    b.put_slice(b",\"tmax_ms\":");
    b.put_slice(tmax_ms.to_string().as_bytes());
    b.put_slice(b",\"test\":false}");
    b.freeze()
}

// ---------------------------------------------------------------------------------------
// Schedule

/// Planned offsets: `offset_s(i)` is when request `i` goes out, seconds after the start.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    warmup_s: f64,
    measure_s: f64,
    end_s: f64,
    /// Rate during warm-up and at the start of the measured phase.
    from_per_s: f64,
    /// Rate change per second of the measured phase.
    slope_per_s2: f64,
    /// Requests planned in the warm-up (fractional: the cumulative count).
    warmup_count: f64,
}

impl Schedule {
    fn new(plan: &LoadPlan) -> Result<Schedule, GenError> {
        let bad = |m: String| Err(GenError::InvalidPlan(m));
        let (from, to) = match plan.schedule {
            RateSchedule::Constant { rate_per_s } => (rate_per_s, rate_per_s),
            RateSchedule::Ramp {
                from_per_s,
                to_per_s,
            } => (from_per_s, to_per_s),
        };
        for (name, r) in [("rate", from), ("ramp end rate", to)] {
            if !(0.0..=RATE_PER_S_MAX).contains(&r) {
                return bad(format!("{name} {r}/s is outside 0..={RATE_PER_S_MAX}/s"));
            }
        }
        if from <= 0.0 && to <= 0.0 {
            return bad("the rate must be above 0/s".into());
        }
        for (name, s) in [("warmup_s", plan.warmup_s), ("measure_s", plan.measure_s)] {
            if !(0.0..=RUN_S_MAX).contains(&s) {
                return bad(format!("{name} {s} is outside 0..={RUN_S_MAX} s"));
            }
        }
        let end_s = plan.warmup_s + plan.measure_s;
        if end_s > RUN_S_MAX || end_s <= 0.0 {
            return bad(format!(
                "warm-up plus measured phase must be above 0 and at most {RUN_S_MAX} s"
            ));
        }
        if plan.in_flight_max == 0 || plan.in_flight_max > IN_FLIGHT_MAX_MAX {
            return bad(format!(
                "in_flight_max {} is outside 1..={IN_FLIGHT_MAX_MAX}",
                plan.in_flight_max
            ));
        }
        if plan.connections == 0 || plan.connections > CONNECTIONS_MAX {
            return bad(format!(
                "connections {} is outside 1..={CONNECTIONS_MAX}",
                plan.connections
            ));
        }
        if plan.request_timeout_ms == 0 || plan.request_timeout_ms > REQUEST_TIMEOUT_MS_MAX {
            return bad(format!(
                "request_timeout_ms {} is outside 1..={REQUEST_TIMEOUT_MS_MAX}",
                plan.request_timeout_ms
            ));
        }
        let slope = if plan.measure_s > 0.0 {
            (to - from) / plan.measure_s
        } else {
            0.0
        };
        Ok(Schedule {
            warmup_s: plan.warmup_s,
            measure_s: plan.measure_s,
            end_s,
            from_per_s: from,
            slope_per_s2: slope,
            warmup_count: from * plan.warmup_s,
        })
    }

    /// When request `i` is planned, or `None` if the schedule never reaches it.
    fn offset_s(&self, i: u64) -> Option<f64> {
        let n = i as f64;
        if n < self.warmup_count {
            return Some(n / self.from_per_s);
        }
        // Cumulative count in the measured phase: N(t) = a t + k t^2 / 2; solve for t in
        // the form that stays exact when k is 0 and stable when a is 0.
        let left = n - self.warmup_count;
        let (a, k) = (self.from_per_s, self.slope_per_s2);
        if left <= 0.0 {
            return Some(self.warmup_s);
        }
        let disc = a * a + 2.0 * k * left;
        if disc < 0.0 {
            return None;
        }
        let denom = a + disc.sqrt();
        if denom <= 0.0 {
            return None;
        }
        let t = 2.0 * left / denom;
        if !t.is_finite() || t > self.measure_s {
            return None;
        }
        Some(self.warmup_s + t)
    }
}

// ---------------------------------------------------------------------------------------
// Targets, leads and calls

/// What one request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ping,
    PingPost,
    DirectPost,
    Relay,
    Direct,
}

impl Op {
    /// Which histogram the first call of this op goes to.
    fn kind(self) -> SampleKind {
        if self == Op::DirectPost {
            SampleKind::Post
        } else {
            SampleKind::Auction
        }
    }
}

/// Cumulative thresholds of the mix.
#[derive(Debug, Clone, Copy)]
struct MixSampler {
    ping_upto: f64,
    ping_post_upto: f64,
}

impl MixSampler {
    fn new(mix: &Mix) -> Result<MixSampler, GenError> {
        let parts = [mix.ping, mix.ping_post, mix.direct_post];
        if parts.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(GenError::InvalidPlan(format!(
                "mix fractions must be finite and >= 0, got {mix:?}"
            )));
        }
        let total: f64 = parts.iter().sum();
        if total <= 0.0 {
            return Ok(MixSampler {
                ping_upto: 1.0,
                ping_post_upto: 1.0,
            });
        }
        Ok(MixSampler {
            ping_upto: mix.ping / total,
            ping_post_upto: (mix.ping + mix.ping_post) / total,
        })
    }

    fn pick(&self, rng: &mut impl Rng) -> Op {
        let x: f64 = rng.gen();
        if x < self.ping_upto {
            Op::Ping
        } else if x < self.ping_post_upto {
            Op::PingPost
        } else {
            Op::DirectPost
        }
    }
}

/// Refuses anything but loopback, before a single packet goes out.
fn check_loopback(target: &Target) -> Result<(), GenError> {
    match target {
        Target::Exchange { addr, .. } | Target::Relay { addr } => {
            if addr.ip().is_loopback() {
                Ok(())
            } else {
                Err(GenError::NotLoopback(addr.to_string()))
            }
        }
        Target::Direct { targets, .. } => {
            for t in targets {
                let loopback = t.url.parse::<Uri>().ok().and_then(|u| {
                    let host = u.host()?.trim_start_matches('[').trim_end_matches(']');
                    Some(
                        host.eq_ignore_ascii_case("localhost")
                            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
                    )
                });
                if loopback != Some(true) {
                    return Err(GenError::NotLoopback(t.url.clone()));
                }
            }
            Ok(())
        }
    }
}

/// A lead, serialized once before the run.
#[derive(Debug)]
struct PooledLead {
    /// The PII-free lead object.
    ping_lead: Bytes,
    /// The full lead object.
    full_lead: Bytes,
    /// `/v1/ping` body.
    exchange_ping: Bytes,
    /// `/v1/leads` body.
    direct_post: Bytes,
}

fn lead_pool(seed: u64, vertical: &str) -> Vec<PooledLead> {
    // Its own stream, so the mix and lead choices do not shift when the pool changes.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1ead_5eed_0000_0001);
    (0..LEAD_POOL)
        .map(|_| {
            let (ping, full) = auto_insurance_lead(&mut rng);
            let to_bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
            PooledLead {
                ping_lead: to_bytes(&ping),
                full_lead: to_bytes(&full),
                exchange_ping: to_bytes(&json!({"vertical": vertical, "lead": ping})),
                direct_post: to_bytes(&json!({"vertical": vertical, "lead": full})),
            }
        })
        .collect()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How requests reach the target.
// One per run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Wire {
    Exchange {
        ping: Uri,
        post: Uri,
        leads: Uri,
        auth: HeaderValue,
    },
    Relay {
        uri: Uri,
    },
    Direct {
        fanout: Fanout,
        /// Parsed once, as the relay does, so the baseline costs what the relay costs.
        targets: Vec<PreparedTarget>,
        deadline_ms: u64,
    },
}

/// Everything the request futures share (borrowed, same task).
struct Ctx {
    wire: Wire,
    client: HttpClient,
    /// One permit per connection: at most `connections` requests on the wire.
    connections: Semaphore,
    timeout: Duration,
    leads: Vec<PooledLead>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("wire", &self.wire)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A call to make.
#[derive(Debug)]
enum Job {
    /// The request as planned.
    First {
        index: u64,
        planned: Instant,
        /// Where its latency counts from: `max(planned, started)`.
        origin: Instant,
        measured: bool,
        op: Op,
        lead: usize,
    },
    /// The `/v1/post` after a ping that answered `bid`.
    Post {
        index: u64,
        start: Instant,
        measured: bool,
        lead: usize,
        ping_id: String,
    },
}

/// A finished call.
#[derive(Debug)]
struct Done {
    index: u64,
    /// First call: the planned time (for the send lag). Post: when it started.
    planned: Instant,
    /// Where the latency counts from: first call, `max(planned, started)`; post, its start.
    from: Instant,
    measured: bool,
    op: Op,
    is_post: bool,
    lead: usize,
    /// When it had a connection and went out.
    wire_at: Instant,
    at: Instant,
    result: Result<Answer, ErrorClass>,
}

/// A successful answer, as an outcome.
#[derive(Debug)]
enum Answer {
    Bid { ping_id: String },
    NoBid { reason: String },
    Post { status: String },
    Leads { status: String },
    Relayed { buyers: Option<BuyerCounts> },
    FannedOut { buyers: BuyerCounts },
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
struct BuyerCounts {
    #[serde(default)]
    answered: u64,
    #[serde(default)]
    timeouts: u64,
    #[serde(default)]
    errors: u64,
}

/// Error classes; see [`RunResult::errors`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    Connect,
    Io,
    Timeout,
    Http4xx,
    RateLimited429,
    Http5xx,
    Overloaded503,
    HttpOther,
    BadBody,
    InFlightLimit,
}

impl ErrorClass {
    fn name(self, post: bool) -> &'static str {
        use ErrorClass::*;
        match (self, post) {
            (Connect, false) => "connect",
            (Connect, true) => "post_connect",
            (Io, false) => "io",
            (Io, true) => "post_io",
            (Timeout, false) => "timeout",
            (Timeout, true) => "post_timeout",
            (Http4xx, false) => "http_4xx",
            (Http4xx, true) => "post_http_4xx",
            (RateLimited429, false) => "rate_limited_429",
            (RateLimited429, true) => "post_rate_limited_429",
            (Http5xx, false) => "http_5xx",
            (Http5xx, true) => "post_http_5xx",
            (Overloaded503, false) => "overloaded_503",
            (Overloaded503, true) => "post_overloaded_503",
            (HttpOther, false) => "http_other",
            (HttpOther, true) => "post_http_other",
            (BadBody, false) => "bad_body",
            (BadBody, true) => "post_bad_body",
            (InFlightLimit, false) => "in_flight_limit",
            (InFlightLimit, true) => "post_in_flight_limit",
        }
    }

    /// The target did answer (the request completed, badly).
    fn answered(self) -> bool {
        use ErrorClass::*;
        matches!(
            self,
            Http4xx | RateLimited429 | Http5xx | Overloaded503 | HttpOther | BadBody
        )
    }

    /// Its latency goes into the histogram (module docs).
    fn recorded(self) -> bool {
        matches!(self, ErrorClass::Timeout | ErrorClass::InFlightLimit)
    }

    fn of_status(status: StatusCode) -> ErrorClass {
        match status.as_u16() {
            503 => ErrorClass::Overloaded503,
            429 => ErrorClass::RateLimited429,
            500..=599 => ErrorClass::Http5xx,
            400..=499 => ErrorClass::Http4xx,
            _ => ErrorClass::HttpOther,
        }
    }
}

#[derive(Deserialize)]
struct PingAnswer {
    status: String,
    #[serde(default)]
    ping_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct PostAnswer {
    status: String,
}

impl Ctx {
    fn new(plan: &LoadPlan, target: &Target) -> Result<Ctx, GenError> {
        let uri = |addr: &SocketAddr, path: &str| {
            format!("http://{addr}{path}")
                .parse::<Uri>()
                .map_err(|e| GenError::InvalidPlan(format!("target address {addr}: {e}")))
        };
        let (wire, vertical) = match target {
            Target::Exchange {
                addr,
                seller_key,
                vertical,
            } => {
                let auth =
                    HeaderValue::from_str(&format!("Bearer {seller_key}")).map_err(|_| {
                        GenError::InvalidPlan("the seller key is not a valid header value".into())
                    })?;
                let wire = Wire::Exchange {
                    ping: uri(addr, "/v1/ping")?,
                    post: uri(addr, "/v1/post")?,
                    leads: uri(addr, "/v1/leads")?,
                    auth,
                };
                (wire, vertical.as_str())
            }
            Target::Relay { addr } => (
                Wire::Relay {
                    uri: uri(addr, RELAY_PATH)?,
                },
                BUYER_PING_VERTICAL,
            ),
            Target::Direct {
                targets,
                deadline_ms,
            } => {
                if targets.is_empty() || targets.len() > DIRECT_TARGETS_MAX {
                    return Err(GenError::InvalidPlan(format!(
                        "a direct target needs 1..={DIRECT_TARGETS_MAX} buyers, got {}",
                        targets.len()
                    )));
                }
                if *deadline_ms == 0 || *deadline_ms > REQUEST_TIMEOUT_MS_MAX {
                    return Err(GenError::InvalidPlan(format!(
                        "direct deadline_ms {deadline_ms} is outside 1..={REQUEST_TIMEOUT_MS_MAX}"
                    )));
                }
                let prepared = targets
                    .iter()
                    .map(FanoutTarget::prepare)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| GenError::InvalidPlan(format!("direct target: {e}")))?;
                let wire = Wire::Direct {
                    fanout: Fanout::new(),
                    targets: prepared,
                    deadline_ms: *deadline_ms,
                };
                (wire, BUYER_PING_VERTICAL)
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(plan.request_timeout_ms)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(plan.connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Ctx {
            wire,
            client,
            connections: Semaphore::new(plan.connections),
            timeout: Duration::from_millis(plan.request_timeout_ms),
            leads: lead_pool(plan.seed, vertical),
        })
    }

    fn op(&self, mix: &MixSampler, rng: &mut impl Rng) -> Op {
        match self.wire {
            Wire::Exchange { .. } => mix.pick(rng),
            Wire::Relay { .. } => Op::Relay,
            Wire::Direct { .. } => Op::Direct,
        }
    }

    /// Makes one call; never fails, the outcome is in [`Done::result`].
    async fn call(&self, job: Job) -> Done {
        let (index, planned, from, measured, op, is_post, lead) = match &job {
            Job::First {
                index,
                planned,
                origin,
                measured,
                op,
                lead,
            } => (*index, *planned, *origin, *measured, *op, false, *lead),
            Job::Post {
                index,
                start,
                measured,
                lead,
                ..
            } => (*index, *start, *start, *measured, Op::PingPost, true, *lead),
        };
        let mut wire_at = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.exchange(job, &mut wire_at)).await {
                Ok(r) => r,
                Err(_) => Err(ErrorClass::Timeout),
            };
        Done {
            index,
            planned,
            from,
            measured,
            op,
            is_post,
            lead,
            wire_at,
            at: Instant::now(),
            result,
        }
    }

    async fn exchange(&self, job: Job, wire_at: &mut Instant) -> Result<Answer, ErrorClass> {
        let Some(lead) = self.leads.get(match &job {
            Job::First { lead, .. } | Job::Post { lead, .. } => *lead,
        }) else {
            return Err(ErrorClass::Io);
        };
        match (&self.wire, job) {
            (Wire::Exchange { post, auth, .. }, Job::Post { ping_id, .. }) => {
                let body = post_body(&ping_id, &lead.full_lead);
                let bytes = self.http(post, Some(auth), body, wire_at).await?;
                let a: PostAnswer =
                    serde_json::from_slice(&bytes).map_err(|_| ErrorClass::BadBody)?;
                Ok(Answer::Post { status: a.status })
            }
            (
                Wire::Exchange { ping, auth, .. },
                Job::First {
                    op: Op::Ping | Op::PingPost,
                    ..
                },
            ) => {
                let bytes = self
                    .http(ping, Some(auth), lead.exchange_ping.clone(), wire_at)
                    .await?;
                let a: PingAnswer =
                    serde_json::from_slice(&bytes).map_err(|_| ErrorClass::BadBody)?;
                match a.status.as_str() {
                    "bid" => match a.ping_id {
                        Some(ping_id) => Ok(Answer::Bid { ping_id }),
                        None => Err(ErrorClass::BadBody),
                    },
                    "no_bid" => Ok(Answer::NoBid {
                        reason: a.reason.unwrap_or_default(),
                    }),
                    _ => Err(ErrorClass::BadBody),
                }
            }
            (Wire::Exchange { leads, auth, .. }, Job::First { .. }) => {
                let bytes = self
                    .http(leads, Some(auth), lead.direct_post.clone(), wire_at)
                    .await?;
                let a: PostAnswer =
                    serde_json::from_slice(&bytes).map_err(|_| ErrorClass::BadBody)?;
                Ok(Answer::Leads { status: a.status })
            }
            (Wire::Relay { uri }, Job::First { index, .. }) => {
                let body =
                    buyer_ping_bytes(&lead.ping_lead, &format!("au_lt{index}"), RELAY_TMAX_MS);
                let bytes = self.http(uri, None, body, wire_at).await?;
                Ok(Answer::Relayed {
                    buyers: serde_json::from_slice::<BuyerCounts>(&bytes).ok(),
                })
            }
            (
                Wire::Direct {
                    fanout,
                    targets,
                    deadline_ms,
                },
                Job::First { index, .. },
            ) => {
                let id = format!("au_lt{index}");
                let body = buyer_ping_bytes(&lead.ping_lead, &id, *deadline_ms);
                *wire_at = Instant::now();
                let deadline = *wire_at + Duration::from_millis(*deadline_ms);
                let r = fanout.ping_prepared(targets, body, &id, deadline).await;
                Ok(Answer::FannedOut {
                    buyers: BuyerCounts {
                        answered: u64::from(r.answered),
                        timeouts: u64::from(r.timeouts),
                        errors: u64::from(r.errors),
                    },
                })
            }
            // Posts only follow exchange pings.
            (Wire::Relay { .. } | Wire::Direct { .. }, Job::Post { .. }) => Err(ErrorClass::Io),
        }
    }

    /// POSTs `body` as JSON and returns a 2xx answer's body; anything else is its class.
    async fn http(
        &self,
        uri: &Uri,
        auth: Option<&HeaderValue>,
        body: Bytes,
        wire_at: &mut Instant,
    ) -> Result<Bytes, ErrorClass> {
        let _permit = self
            .connections
            .acquire()
            .await
            .map_err(|_| ErrorClass::Io)?;
        *wire_at = Instant::now();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req.body(Full::new(body)).map_err(|_| ErrorClass::Io)?;
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                ErrorClass::Connect
            } else {
                ErrorClass::Io
            }
        })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), RESPONSE_BODY_MAX)
            .collect()
            .await
            .map_err(|_| ErrorClass::BadBody)?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(ErrorClass::of_status(status))
        }
    }
}

/// `{"ping_id": ..., "lead": <full lead>}`
fn post_body(ping_id: &str, full_lead: &[u8]) -> Bytes {
    let id = serde_json::to_string(ping_id).unwrap_or_else(|_| "\"\"".into());
    let mut b = BytesMut::with_capacity(full_lead.len() + id.len() + 24);
    b.put_slice(b"{\"ping_id\":");
    b.put_slice(id.as_bytes());
    b.put_slice(b",\"lead\":");
    b.put_slice(full_lead);
    b.put_slice(b"}");
    b.freeze()
}

// ---------------------------------------------------------------------------------------
// Recording

/// A request in flight, for the stall bound and the straggler cut.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    from: Instant,
    measured: bool,
    kind: SampleKind,
}

struct Recorder<'a> {
    label: String,
    progress: Option<ProgressFn<'a>>,
    on_sample: Option<SampleFn<'a>>,
    start: Instant,
    measure_start: Instant,
    /// Next one-second tick (progress, and a window closes if it is measured).
    next_tick: Instant,
    planned: u64,
    sent: u64,
    completed: u64,
    measured: u64,
    measured_ok: u64,
    errors_total: u64,
    latency_us: Histogram<u64>,
    post_latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    window: Histogram<u64>,
    window_errors: u64,
    last_window_p99_us: u64,
    errors: BTreeMap<String, u64>,
    outcomes: BTreeMap<String, u64>,
    timeline: Vec<Window>,
    /// First calls in flight, by index (ordered: the first is the oldest).
    firsts: BTreeMap<u64, InFlight>,
    /// Posts in flight, by index.
    posts: BTreeMap<u64, InFlight>,
}

impl std::fmt::Debug for Recorder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("label", &self.label)
            .field("planned", &self.planned)
            .finish_non_exhaustive()
    }
}

fn histogram() -> Result<Histogram<u64>, GenError> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, HISTOGRAM_SIGFIGS)
        .map_err(|e| GenError::Histogram(e.to_string()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str, by: u64) {
    if let Some(v) = map.get_mut(key) {
        *v += by;
    } else if map.len() < OUTCOME_KEYS_MAX {
        map.insert(key.to_string(), by);
    } else {
        *map.entry("other".to_string()).or_insert(0) += by;
    }
}

/// A reason or status from an answer, made safe and short for an outcome key.
fn clean(s: &str) -> &str {
    let ok = !s.is_empty()
        && s.len() <= OUTCOME_REASON_LEN_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        s
    } else if s.is_empty() {
        "unspecified"
    } else {
        "other"
    }
}

impl<'a> Recorder<'a> {
    fn new(
        label: &str,
        progress: Option<ProgressFn<'a>>,
        on_sample: Option<SampleFn<'a>>,
    ) -> Result<Recorder<'a>, GenError> {
        let now = Instant::now();
        Ok(Recorder {
            label: label.to_string(),
            progress,
            on_sample,
            start: now,
            measure_start: now,
            next_tick: now,
            planned: 0,
            sent: 0,
            completed: 0,
            measured: 0,
            measured_ok: 0,
            errors_total: 0,
            latency_us: histogram()?,
            post_latency_us: histogram()?,
            send_lag_us: histogram()?,
            window: histogram()?,
            window_errors: 0,
            last_window_p99_us: 0,
            errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            timeline: Vec::new(),
            firsts: BTreeMap::new(),
            posts: BTreeMap::new(),
        })
    }

    fn start(&mut self, start: Instant, warmup_s: f64) {
        self.start = start;
        self.measure_start = start + Duration::from_secs_f64(warmup_s);
        // Ticks fall on whole seconds before and after the measured phase's start, so
        // measured windows line up with it.
        let whole = Duration::from_secs(warmup_s.floor() as u64);
        self.next_tick = self.measure_start - whole + Duration::from_secs(1);
    }

    /// Closes every window whose end has passed, calling the progress callback for each.
    fn advance_ticks(&mut self, now: Instant, in_flight: usize) {
        while now >= self.next_tick {
            let window_start = self.next_tick - Duration::from_secs(1);
            if window_start >= self.measure_start {
                self.close_window(window_start);
            } else {
                self.last_window_p99_us = self.window.value_at_quantile(0.99);
                self.window.reset();
                self.window_errors = 0;
            }
            if let Some(progress) = self.progress {
                progress(&Progress {
                    elapsed_s: (self.next_tick - self.start).as_secs_f64(),
                    sent: self.sent,
                    completed: self.completed,
                    errors: self.errors_total,
                    in_flight: in_flight as u64,
                    current_p99_us: self.last_window_p99_us,
                });
            }
            self.next_tick += Duration::from_secs(1);
        }
    }

    fn close_window(&mut self, window_start: Instant) {
        let w = &self.window;
        self.last_window_p99_us = w.value_at_quantile(0.99);
        self.timeline.push(Window {
            t_s: (window_start - self.measure_start).as_secs_f64(),
            count: w.len(),
            p50_us: w.value_at_quantile(0.50),
            p90_us: w.value_at_quantile(0.90),
            p99_us: w.value_at_quantile(0.99),
            p999_us: w.value_at_quantile(0.999),
            max_us: w.max(),
            errors: self.window_errors,
        });
        self.window.reset();
        self.window_errors = 0;
    }

    fn issued(&mut self, index: u64, origin: Instant, measured: bool, op: Op) {
        self.planned += 1;
        self.sent += 1;
        self.measured += u64::from(measured);
        self.firsts.insert(
            index,
            InFlight {
                from: origin,
                measured,
                kind: op.kind(),
            },
        );
    }

    /// A request refused by the in-flight limit: recorded at the stall so far.
    fn refused(&mut self, index: u64, origin: Instant, now: Instant, measured: bool, op: Op) {
        self.planned += 1;
        self.measured += u64::from(measured);
        let oldest = self
            .firsts
            .values()
            .next()
            .map_or(origin, |f| f.from)
            .min(origin);
        let latency_us = micros(now.saturating_duration_since(oldest));
        self.record(
            index,
            op.kind(),
            measured,
            now,
            Some(latency_us),
            Some(ErrorClass::InFlightLimit),
            false,
        );
    }

    /// Records one latency and/or error in the histograms, the window and the hook.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        index: u64,
        kind: SampleKind,
        measured: bool,
        at: Instant,
        latency_us: Option<u64>,
        error: Option<ErrorClass>,
        is_post: bool,
    ) {
        let error_name = error.map(|e| e.name(is_post));
        if error.is_some() {
            self.errors_total += 1;
        }
        if let Some(hook) = self.on_sample {
            hook(&Sample {
                index,
                kind,
                measured,
                latency_us,
                error: error_name,
            });
        }
        // The window tracks each request's first call: measured ones, and warm-up ones
        // while the warm-up lasts (for the progress line).
        let in_window = !is_post && (measured || at < self.measure_start);
        if in_window {
            if let Some(l) = latency_us {
                self.window.saturating_record(l);
            }
            self.window_errors += u64::from(error.is_some());
        }
        if !measured {
            return;
        }
        if let Some(l) = latency_us {
            match kind {
                SampleKind::Auction => self.latency_us.saturating_record(l),
                SampleKind::Post => self.post_latency_us.saturating_record(l),
            }
        }
        if let Some(name) = error_name {
            bump(&mut self.errors, name, 1);
        }
    }

    /// Records a finished call; returns the post to make after a bid, if any.
    fn finish(&mut self, done: Done) -> Option<Job> {
        if done.is_post {
            self.posts.remove(&done.index);
        } else {
            self.firsts.remove(&done.index);
        }
        let kind = if done.is_post {
            SampleKind::Post
        } else {
            done.op.kind()
        };
        let latency_us = micros(done.at.saturating_duration_since(done.from));
        match done.result {
            Err(class) => {
                self.completed += u64::from(class.answered() && !done.is_post);
                let latency = class.recorded().then_some(latency_us);
                self.record(
                    done.index,
                    kind,
                    done.measured,
                    done.at,
                    latency,
                    Some(class),
                    done.is_post,
                );
                None
            }
            Ok(answer) => {
                if !done.is_post {
                    self.completed += 1;
                    if done.measured {
                        self.measured_ok += 1;
                        self.send_lag_us.saturating_record(micros(
                            done.wire_at.saturating_duration_since(done.planned),
                        ));
                    }
                }
                self.record(
                    done.index,
                    kind,
                    done.measured,
                    done.at,
                    Some(latency_us),
                    None,
                    done.is_post,
                );
                let next = match &answer {
                    Answer::Bid { ping_id } if done.op == Op::PingPost && !done.is_post => {
                        Some(ping_id.clone())
                    }
                    _ => None,
                };
                if done.measured {
                    self.outcome(&answer);
                }
                next.map(|ping_id| {
                    self.posts.insert(
                        done.index,
                        InFlight {
                            from: done.at,
                            measured: done.measured,
                            kind: SampleKind::Post,
                        },
                    );
                    Job::Post {
                        index: done.index,
                        start: done.at,
                        measured: done.measured,
                        lead: done.lead,
                        ping_id,
                    }
                })
            }
        }
    }

    fn outcome(&mut self, answer: &Answer) {
        let o = &mut self.outcomes;
        match answer {
            Answer::Bid { .. } => bump(o, "bid", 1),
            Answer::NoBid { reason } => bump(o, &format!("no_bid:{}", clean(reason)), 1),
            Answer::Post { status } => bump(o, clean(status), 1),
            Answer::Leads { status } => bump(o, &format!("direct_{}", clean(status)), 1),
            Answer::Relayed { buyers } => {
                bump(o, "relayed", 1);
                if let Some(b) = buyers {
                    Self::buyers(o, b);
                }
            }
            Answer::FannedOut { buyers } => {
                bump(o, "fanned_out", 1);
                Self::buyers(o, buyers);
            }
        }
    }

    fn buyers(o: &mut BTreeMap<String, u64>, b: &BuyerCounts) {
        bump(o, "buyer_answered", b.answered);
        bump(o, "buyer_timeout", b.timeouts);
        bump(o, "buyer_error", b.errors);
    }

    /// The straggler wait is over: whatever is still in flight timed out, now.
    fn cut_stragglers(&mut self, now: Instant) {
        let firsts = std::mem::take(&mut self.firsts);
        let posts = std::mem::take(&mut self.posts);
        for (index, f, is_post) in firsts
            .into_iter()
            .map(|(i, f)| (i, f, false))
            .chain(posts.into_iter().map(|(i, f)| (i, f, true)))
        {
            let latency_us = micros(now.saturating_duration_since(f.from));
            self.record(
                index,
                f.kind,
                f.measured,
                now,
                Some(latency_us),
                Some(ErrorClass::Timeout),
                is_post,
            );
        }
    }

    fn into_result(mut self, measure_s: f64) -> RunResult {
        // The window in progress, if the measured phase reached it and it saw anything.
        let window_start = self.next_tick - Duration::from_secs(1);
        if window_start >= self.measure_start && (!self.window.is_empty() || self.window_errors > 0)
        {
            self.close_window(window_start);
        }
        let achieved_rate_per_s = if measure_s > 0.0 {
            self.measured_ok as f64 / measure_s
        } else {
            0.0
        };
        RunResult {
            label: self.label,
            planned: self.planned,
            sent: self.sent,
            completed: self.completed,
            measured: self.measured,
            achieved_rate_per_s,
            measure_s,
            latency_us: self.latency_us,
            post_latency_us: self.post_latency_us,
            send_lag_us: self.send_lag_us,
            errors: self.errors,
            outcomes: self.outcomes,
            timeline: self.timeline,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lead data

/// A state: population weight, its 3-digit ZIP prefix range and some area codes.
#[derive(Debug)]
struct StateData {
    code: &'static str,
    weight: f64,
    zip3: (u16, u16),
    area_codes: &'static [u16],
}

const fn st(
    code: &'static str,
    weight: f64,
    zip3: (u16, u16),
    area_codes: &'static [u16],
) -> StateData {
    StateData {
        code,
        weight,
        zip3,
        area_codes,
    }
}

/// The 31 most populous states with their real ZIP prefix ranges (USPS) and area codes.
const STATES: &[StateData] = &[
    st("CA", 11.7, (900, 961), &[213, 310, 415, 619, 714, 916]),
    st("TX", 9.0, (750, 799), &[214, 512, 713, 817, 210]),
    st("FL", 6.7, (320, 349), &[305, 407, 813, 904]),
    st("NY", 5.9, (100, 149), &[212, 315, 516, 716, 718]),
    st("PA", 3.9, (150, 196), &[215, 412, 717]),
    st("IL", 3.8, (600, 629), &[312, 630, 773]),
    st("OH", 3.5, (430, 458), &[216, 513, 614]),
    st("GA", 3.3, (300, 319), &[404, 678, 912]),
    st("NC", 3.2, (270, 289), &[704, 919, 336]),
    st("MI", 3.0, (480, 499), &[313, 616, 248]),
    st("NJ", 2.8, (70, 89), &[201, 732, 973]),
    st("VA", 2.6, (220, 246), &[703, 757, 804]),
    st("WA", 2.3, (980, 994), &[206, 253, 509]),
    st("AZ", 2.2, (850, 865), &[480, 520, 602]),
    st("MA", 2.1, (10, 27), &[617, 508, 413]),
    st("TN", 2.1, (370, 385), &[615, 901, 865]),
    st("IN", 2.0, (460, 479), &[317, 219, 812]),
    st("MO", 1.8, (630, 658), &[314, 816, 417]),
    st("MD", 1.8, (206, 219), &[410, 301, 443]),
    st("WI", 1.8, (530, 549), &[414, 608, 920]),
    st("CO", 1.8, (800, 816), &[303, 719, 970]),
    st("MN", 1.7, (550, 567), &[612, 651, 218]),
    st("SC", 1.6, (290, 299), &[803, 843, 864]),
    st("AL", 1.5, (350, 369), &[205, 251, 334]),
    st("LA", 1.4, (700, 714), &[504, 225, 318]),
    st("KY", 1.4, (400, 427), &[502, 859, 270]),
    st("OR", 1.3, (970, 979), &[503, 541, 971]),
    st("OK", 1.2, (730, 749), &[405, 918, 580]),
    st("CT", 1.1, (60, 69), &[203, 860, 475]),
    st("UT", 1.0, (840, 847), &[801, 385, 435]),
    st("NV", 1.0, (889, 898), &[702, 775, 725]),
];

const FIRST_NAMES: &[&str] = &[
    "Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hector", "Imani", "James", "Keiko",
    "Luis", "Maria", "Noah", "Olivia", "Priya", "Quinn", "Rosa", "Samuel", "Tran", "Uma", "Victor",
    "Wendy", "Xavier", "Yusuf", "Zoe",
];

const LAST_NAMES: &[&str] = &[
    "Diaz", "Nguyen", "Okafor", "Smith", "Kowalski", "Ito", "Johnson", "Garcia", "Brown", "Miller",
    "Davis", "Martinez", "Lopez", "Wilson", "Anderson", "Thomas", "Patel", "Kim", "Jackson",
    "White", "Harris", "Clark", "Lewis", "Walker",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(schedule: RateSchedule, warmup_s: f64, measure_s: f64) -> LoadPlan {
        LoadPlan {
            schedule,
            warmup_s,
            measure_s,
            count_max: 0,
            in_flight_max: 100,
            request_timeout_ms: 1000,
            mix: Mix::PING,
            seed: 1,
            connections: 4,
        }
    }

    fn count_until(s: &Schedule, end_s: f64) -> u64 {
        let mut i = 0;
        while let Some(o) = s.offset_s(i) {
            if o >= end_s {
                break;
            }
            i += 1;
        }
        i
    }

    #[test]
    fn constant_schedule_is_evenly_spaced() {
        let s = Schedule::new(&plan(
            RateSchedule::Constant { rate_per_s: 1000.0 },
            1.0,
            2.0,
        ))
        .unwrap();
        assert_eq!(s.offset_s(0), Some(0.0));
        assert!((s.offset_s(500).unwrap() - 0.5).abs() < 1e-12);
        assert!((s.offset_s(1500).unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(count_until(&s, s.warmup_s), 1000);
        assert_eq!(count_until(&s, s.end_s), 3000);
    }

    #[test]
    fn ramp_integrates_the_rate() {
        // 100/s during 1 s of warm-up, then 100 -> 300/s over 2 s: 100 + (100+300)/2*2.
        let s = Schedule::new(&plan(
            RateSchedule::Ramp {
                from_per_s: 100.0,
                to_per_s: 300.0,
            },
            1.0,
            2.0,
        ))
        .unwrap();
        assert_eq!(count_until(&s, s.warmup_s), 100);
        let total = count_until(&s, s.end_s);
        assert!((total as i64 - 500).abs() <= 1, "{total}");
        // Halfway through the ramp: 100 of warm-up + 100/s * 1 s + (100/s^2) * 1 s^2 / 2.
        let mid = count_until(&s, 2.0);
        assert!((mid as i64 - 250).abs() <= 1, "{mid}");
        // Ramps down and from zero work too.
        let down = Schedule::new(&plan(
            RateSchedule::Ramp {
                from_per_s: 300.0,
                to_per_s: 0.0,
            },
            0.0,
            2.0,
        ))
        .unwrap();
        let n = count_until(&down, down.end_s);
        assert!((n as i64 - 300).abs() <= 1, "{n}");
        let up = Schedule::new(&plan(
            RateSchedule::Ramp {
                from_per_s: 0.0,
                to_per_s: 300.0,
            },
            1.0,
            2.0,
        ))
        .unwrap();
        let n = count_until(&up, up.end_s);
        assert!((n as i64 - 300).abs() <= 1, "{n}");
    }

    #[test]
    fn bad_plans_are_refused() {
        for p in [
            plan(RateSchedule::Constant { rate_per_s: 0.0 }, 1.0, 1.0),
            plan(
                RateSchedule::Constant {
                    rate_per_s: f64::NAN,
                },
                1.0,
                1.0,
            ),
            plan(RateSchedule::Constant { rate_per_s: 10.0 }, -1.0, 1.0),
            plan(RateSchedule::Constant { rate_per_s: 10.0 }, 0.0, 1e9),
            LoadPlan {
                connections: 0,
                ..plan(RateSchedule::Constant { rate_per_s: 10.0 }, 0.0, 1.0)
            },
        ] {
            assert!(
                matches!(Schedule::new(&p), Err(GenError::InvalidPlan(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn leads_are_realistic_and_ping_leads_carry_no_pii() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let (ping, full) = auto_insurance_lead(&mut rng);
            for pii in ["first_name", "last_name", "phone", "email"] {
                assert!(ping.get(pii).is_none());
                assert!(full.get(pii).is_some());
            }
            let state = ping["state"].as_str().unwrap();
            let zip = ping["zip"].as_str().unwrap();
            assert_eq!(zip.len(), 5);
            let prefix: u16 = zip[..3].parse().unwrap();
            let s = STATES.iter().find(|s| s.code == state).unwrap();
            assert!((s.zip3.0..=s.zip3.1).contains(&prefix), "{state} {zip}");
            let age = ping["age"].as_i64().unwrap();
            assert!((16..=85).contains(&age));
            let year = ping["vehicle_year"].as_i64().unwrap();
            assert!((1996..=2026).contains(&year));
            let phone = full["phone"].as_str().unwrap();
            assert!(phone.starts_with("+1") && phone.len() == 12, "{phone}");
            assert!(full["email"].as_str().unwrap().ends_with("@example.com"));
        }
    }

    #[test]
    fn buyer_ping_bytes_match_the_json_builder() {
        let lead = json!({"state": "TX", "zip": "76180", "age": 42});
        let fast = buyer_ping_bytes(&serde_json::to_vec(&lead).unwrap(), "au_lt7", 150);
        let slow = buyer_ping_body(&lead, "au_lt7", 150);
        let a: Value = serde_json::from_slice(&fast).unwrap();
        let b: Value = serde_json::from_slice(&slow).unwrap();
        assert_eq!(a, b);
        assert_eq!(a["tmax_ms"], 150);
        let post: Value = serde_json::from_slice(&post_body("pg_\"x", b"{\"a\":1}")).unwrap();
        assert_eq!(post["ping_id"], "pg_\"x");
    }

    #[test]
    fn outcome_keys_are_bounded_and_clean() {
        assert_eq!(clean("no_bids"), "no_bids");
        assert_eq!(clean("<script>"), "other");
        assert_eq!(clean(""), "unspecified");
        let mut m = BTreeMap::new();
        for i in 0..(OUTCOME_KEYS_MAX + 10) {
            bump(&mut m, &format!("k{i}"), 1);
        }
        assert_eq!(m.len(), OUTCOME_KEYS_MAX + 1);
        assert_eq!(m["other"], 10);
    }
}
