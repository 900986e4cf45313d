//! Recording a run: the histograms, outcome and error counts, the one-second timeline,
//! the progress and sample hooks, and the [`RunResult`] they add up to.
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::plan::GenError;
use super::schedule::Op;
use super::target::{Answer, BuyerCounts, Done, ErrorClass, Job};
use super::{HISTOGRAM_SIGFIGS, LATENCY_US_MAX, OUTCOME_KEYS_MAX, OUTCOME_REASON_LEN_MAX};
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
    /// Measured requests answered without error, divided by the measured phase's length
    /// (`measure_s`); answers that arrived after the phase, while the run drained, count
    /// too, so this is not the target's throughput (module docs, *Achieved rate*).
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
    /// Measured requests by error class: `connect` (refused, or failed fast), `io`,
    /// `timeout` (the request timeout, or a connect that ran out its timeout), `http_4xx`,
    /// `rate_limited_429`, `http_5xx`, `overloaded_503`, `http_other`, `bad_body`,
    /// `in_flight_limit`; a post's errors carry a `post_` prefix. Only `timeout` and
    /// `in_flight_limit` are in the histograms ([`super::error_in_percentiles`]).
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

/// One finished call, as given to the sample hook of [`run_with`](super::run_with): lets a
/// caller check the histograms against its own view, or keep raw latencies.
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

/// A progress callback: called once a second from the scheduler task, keep it cheap.
pub type ProgressFn<'a> = &'a (dyn Fn(&Progress) + Sync);
/// A sample hook: called for every finished call from the scheduler task, keep it cheap.
pub type SampleFn<'a> = &'a (dyn Fn(&Sample) + Sync);

/// A request in flight, for the stall bound and the straggler cut.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    from: Instant,
    measured: bool,
    kind: SampleKind,
}

pub(super) struct Recorder<'a> {
    label: String,
    progress: Option<ProgressFn<'a>>,
    on_sample: Option<SampleFn<'a>>,
    start: Instant,
    measure_start: Instant,
    /// Next one-second tick (progress, and a window closes if it is measured).
    pub(super) next_tick: Instant,
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
    pub(super) fn new(
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

    pub(super) fn start(&mut self, start: Instant, warmup_s: f64) {
        self.start = start;
        self.measure_start = start + Duration::from_secs_f64(warmup_s);
        // Ticks fall on whole seconds before and after the measured phase's start, so
        // measured windows line up with it, and one falls on that start itself when
        // there is a warm-up, a fractional one included (`p8-post` reads the exchange's
        // histogram then).
        let whole = Duration::from_secs(warmup_s.ceil() as u64);
        self.next_tick = self.measure_start - whole + Duration::from_secs(1);
    }

    /// Closes every window whose end has passed, calling the progress callback for each.
    pub(super) fn advance_ticks(&mut self, now: Instant, in_flight: usize) {
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

    pub(super) fn issued(&mut self, index: u64, origin: Instant, measured: bool, op: Op) {
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
    pub(super) fn refused(
        &mut self,
        index: u64,
        origin: Instant,
        now: Instant,
        measured: bool,
        op: Op,
    ) {
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
    pub(super) fn finish(&mut self, done: Done) -> Option<Job> {
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
    pub(super) fn cut_stragglers(&mut self, now: Instant) {
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

    pub(super) fn into_result(mut self, measure_s: f64) -> RunResult {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A progress tick falls on the measured phase's start whenever there is a warm-up,
    /// a fractional one too (`p8-post` reads the exchange's histogram on it: black-box
    /// round 232b), and the first tick comes within a second of the start.
    #[test]
    fn a_tick_falls_on_the_start_of_the_measured_phase() {
        for (warmup_s, want) in [
            (2.0, vec![1.0, 2.0, 3.0, 4.0]),
            (2.5, vec![0.5, 1.5, 2.5, 3.5]),
            (0.5, vec![0.5, 1.5, 2.5, 3.5]),
            (0.0, vec![1.0, 2.0, 3.0, 4.0]),
        ] {
            let seen = std::sync::Mutex::new(Vec::new());
            let progress = |p: &Progress| seen.lock().unwrap().push(p.elapsed_s);
            let mut rec = Recorder::new("t", Some(&progress), None).unwrap();
            let start = Instant::now();
            rec.start(start, warmup_s);
            rec.advance_ticks(start + Duration::from_millis(4_100), 0);
            drop(rec);
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen, want, "warm-up {warmup_s} s");
            if warmup_s > 0.0 {
                assert!(
                    seen.iter().any(|t| (t - warmup_s).abs() < 1e-9),
                    "{warmup_s}"
                );
            }
        }
    }
}
