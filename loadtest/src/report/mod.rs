//! What a run looks like to a reader: percentile tables, JSON, an SVG picture, process
//! samples (CPU, memory, sockets) and the machine the figures were taken on.
//!
//! It only formats and reads `/proc`; it never sends load and never decides a target's
//! pass or fail (the scenario does, and writes the verdicts into the report).

mod proc;
mod svg;
mod table;
#[cfg(test)]
mod tests;

pub use proc::{
    exited_note, live_sample, memory_note, proc_sample, sample_until, time_wait_sockets,
    ProcSample, Sampled, PROC_ENTRIES_MAX, PROC_NET_LINES_MAX, PROC_SAMPLES_MAX,
};
pub use svg::write_svg;
use table::ms;
pub use table::print_table;

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::gen::{Progress, RunResult, Window};

/// The knee criterion: p99 within this much of the baseline's p99, in µs.
pub const KNEE_MARGIN_US: u64 = 2_500;
/// Sweep label of the baseline the knee margin is measured against, unless the report's
/// `extra["baseline_label"]` names another.
pub const BASELINE_LABEL: &str = "direct";
/// A target's generator lag (planned time to on the wire) whose p99 is above this, in µs,
/// gets a note under the table: the generator itself queued (every connection busy, or
/// its scheduler behind), and the target's latencies include that wait. 10 ms: well above
/// the scheduler's own 1-2 ms on a busy two-core machine, and a wait a reader would
/// otherwise take for the target's.
pub const GENERATOR_LAG_NOTE_US: u64 = 10_000;

/// A histogram's percentiles, in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub count: u64,
}

impl Percentiles {
    /// All zero for an empty histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            count: h.len(),
        }
    }

    /// `self - base` per percentile (what a target adds over a baseline), saturating at
    /// 0 where the target was faster; `count` is `self`'s.
    pub fn minus(&self, base: &Percentiles) -> Percentiles {
        Percentiles {
            p50_us: self.p50_us.saturating_sub(base.p50_us),
            p90_us: self.p90_us.saturating_sub(base.p90_us),
            p99_us: self.p99_us.saturating_sub(base.p99_us),
            p999_us: self.p999_us.saturating_sub(base.p999_us),
            max_us: self.max_us.saturating_sub(base.max_us),
            // Nothing to compare when either side measured nothing (black-box round
            // 143a: an "added" row of 0.000 ms for a target that completed nothing).
            count: if base.count == 0 { 0 } else { self.count },
        }
    }
}

/// One target of a scenario, ready to print.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetSummary {
    pub label: String,
    pub latency: Percentiles,
    pub post_latency: Option<Percentiles>,
    pub achieved_rate_per_s: f64,
    pub errors: BTreeMap<String, u64>,
    pub outcomes: BTreeMap<String, u64>,
    /// Filled by the scenario from process samples.
    pub cpu_us_per_auction: Option<f64>,
    pub cpu_us_per_buyer_ping: Option<f64>,
    pub timeline: Vec<Window>,
    /// The generator's own delay (planned time to on the wire); large values mean the
    /// generator, not the target, was the bottleneck.
    #[serde(default)]
    pub send_lag: Option<Percentiles>,
    /// Requests planned in the measured phase, whatever became of them (0 in a report
    /// written before this field).
    #[serde(default)]
    pub measured: u64,
}

impl TargetSummary {
    pub fn from_run(r: &RunResult) -> Self {
        TargetSummary {
            label: r.label.clone(),
            latency: Percentiles::of(&r.latency_us),
            post_latency: (!r.post_latency_us.is_empty())
                .then(|| Percentiles::of(&r.post_latency_us)),
            achieved_rate_per_s: r.achieved_rate_per_s,
            errors: r.errors.clone(),
            outcomes: r.outcomes.clone(),
            cpu_us_per_auction: None,
            cpu_us_per_buyer_ping: None,
            timeline: r.timeline.clone(),
            send_lag: (!r.send_lag_us.is_empty()).then(|| Percentiles::of(&r.send_lag_us)),
            measured: r.measured,
        }
    }

    /// The errors whose latency is not in the percentiles (error answers, refused
    /// connections, I/O errors: [`crate::gen::error_in_percentiles`]), by class: the
    /// requests' own, then the posts' after a bid (`post_` classes).
    pub fn errors_not_in_percentiles(&self) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let mut firsts = BTreeMap::new();
        let mut posts = BTreeMap::new();
        for (class, n) in &self.errors {
            if *n == 0 || crate::gen::error_in_percentiles(class) {
                continue;
            }
            let to = if class.starts_with("post_") {
                &mut posts
            } else {
                &mut firsts
            };
            to.insert(class.clone(), *n);
        }
        (firsts, posts)
    }

    /// The summary of a run whose every request is a direct post (P8): the posts'
    /// percentiles are its latency, with no post row of their own. Its auction
    /// histogram is empty, and its row printed 0.000 ms for every percentile above a
    /// `post` row with the figures (black-box round 82b).
    pub fn posts_only(mut self) -> Self {
        self.latency = self.post_latency.take().unwrap_or_default();
        self
    }

    /// Errors of every class.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Whether this run fell behind its load, in a scenario where every buyer answers in
    /// time: more than 1 % of the buyer calls of the direct baseline or the relay timed
    /// out (`buyer_timeout` against all its buyer calls), or more than 1 % of the exchange's
    /// auctions ended without a bid. Such a run measured a backlog, not the target: say
    /// so beside its figures. Returns what to say.
    pub fn fell_behind(&self) -> Option<String> {
        let get = |k: &str| self.outcomes.get(k).copied().unwrap_or(0);
        let timeouts = get("buyer_timeout");
        let calls = timeouts + get("buyer_answered") + get("buyer_error");
        if calls > 0 {
            return (timeouts * 100 > calls).then(|| {
                format!(
                    "{timeouts} of {calls} buyer calls ({:.1} %) timed out though every buyer answers in time",
                    timeouts as f64 * 100.0 / calls as f64
                )
            });
        }
        let auctions: u64 = self.outcomes.values().sum();
        let unsold = auctions - get("bid");
        (unsold * 100 > auctions).then(|| {
            format!(
                "{unsold} of {auctions} auctions ({:.1} %) ended without a bid though every buyer bids in time",
                unsold as f64 * 100.0 / auctions as f64
            )
        })
    }
}

/// One point of a rate sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepPoint {
    pub label: String,
    pub rate_per_s: f64,
    pub p99_us: u64,
    pub errors: u64,
    /// p99 within [`KNEE_MARGIN_US`] of the baseline at this rate, with zero errors.
    pub within_target: bool,
}

/// The highest rate of `label`'s sweep at which it, and every lower rate, was within
/// target: the knee. `None` if even the lowest rate was not.
pub fn knee(sweep: &[SweepPoint], label: &str) -> Option<f64> {
    let mut points: Vec<&SweepPoint> = sweep.iter().filter(|p| p.label == label).collect();
    points.sort_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s));
    points
        .iter()
        .take_while(|p| p.within_target)
        .last()
        .map(|p| p.rate_per_s)
}

/// Everything a scenario measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub date: String,
    pub commit: String,
    pub machine: String,
    pub notes: Vec<String>,
    pub targets: Vec<TargetSummary>,
    /// Exchange minus direct, per percentile.
    pub added_latency_us: Option<Percentiles>,
    /// Relay minus direct, per percentile.
    pub relay_added_latency_us: Option<Percentiles>,
    pub sweep: Vec<SweepPoint>,
    /// Knee rate by label, requests per second.
    pub knees: BTreeMap<String, f64>,
    pub proc_samples: Vec<ProcSample>,
    pub extra: BTreeMap<String, serde_json::Value>,
    /// Each repetition of each target under `--repeat N` (N > 1), in the order run: the
    /// summary rows are medians, so a repetition that stalled shows here.
    #[serde(default)]
    pub repetitions: Vec<Repetition>,
}

/// One repetition of one target: its own figures, beside the medians.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repetition {
    pub label: String,
    /// 1-based.
    pub repetition: usize,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Errors of every class.
    pub errors: u64,
    pub cpu_us_per_buyer_ping: Option<f64>,
    /// Why the repetition measured a backlog rather than the target, if it did.
    pub fell_behind: Option<String>,
    /// The repetition's own outcomes (the target rows' are the median repetition's):
    /// black-box round 96b found 6 auctions without a bid in a P3 repetition that no line
    /// of the report showed.
    #[serde(default)]
    pub outcomes: BTreeMap<String, u64>,
    /// Requests planned in this repetition's measured phase, whatever became of them (0
    /// in a report written before this field): what its errors are judged against.
    #[serde(default)]
    pub measured: u64,
    /// Latencies in its percentiles (`None` in a report written before this field): 0
    /// when it measured nothing, and then its line shows no percentile (black-box round
    /// 197b: `0.000 / 0.000`, as if it answered at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<u64>,
}

/// Whether a scenario's buyers all answer in time, so that a run whose buyer calls time
/// out, or whose auctions end without a bid, fell behind its load
/// ([`TargetSummary::fell_behind`]): P1 and P2. (P2's sweep rates are judged by the knee,
/// saturated ones fail by design; P3's buyers hang by design.)
pub fn every_buyer_answers(scenario: &str) -> bool {
    matches!(scenario, "p1-latency" | "p2-knee")
}

/// The run's 1 % rule: errors of every class on more than 1 % of the measured requests.
fn past_error_rule(errors: u64, measured: u64) -> bool {
    errors * 100 > measured.max(1)
}

impl Repetition {
    /// Why this repetition fails the run, if it does: its errors, of every class, are more
    /// than 1 % of its own measured requests, or it collapsed (fell behind the load).
    /// Black-box: under `--repeat` only the median repetition's errors were judged, and a
    /// repetition whose exchange was killed (53 % failed) or stopped (COLLAPSED) exited 0.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if past_error_rule(self.errors, self.measured) {
            why.push(if self.measured > 0 {
                format!(
                    "{} of {} measured requests failed ({:.1} %, more than 1 %)",
                    self.errors,
                    self.measured,
                    self.errors as f64 * 100.0 / self.measured as f64
                )
            } else {
                format!("{} errors", self.errors)
            });
        }
        (!why.is_empty())
            .then(|| format!("{} #{}: {}", self.label, self.repetition, why.join("; ")))
    }

    /// `every_buyer_answers`: whether the scenario's buyers all answer in time, so a run
    /// whose calls time out fell behind ([`TargetSummary::fell_behind`]); with buyers that
    /// hang by design (P3) their timeouts are the scenario, not a collapse.
    pub fn of(s: &TargetSummary, repetition: usize, every_buyer_answers: bool) -> Repetition {
        Repetition {
            label: s.label.clone(),
            repetition,
            p99_us: s.latency.p99_us,
            p999_us: s.latency.p999_us,
            errors: s.errors.values().sum(),
            cpu_us_per_buyer_ping: s.cpu_us_per_buyer_ping,
            fell_behind: every_buyer_answers.then(|| s.fell_behind()).flatten(),
            outcomes: s.outcomes.clone(),
            measured: if s.measured > 0 {
                s.measured
            } else {
                s.latency.count
            },
            samples: Some(s.latency.count),
        }
    }
}

/// Why the run fails, one entry per target row or repetition: a row (not a p2-knee sweep
/// rate, `label @ rate`, whose saturated rates fail by design) or a repetition whose
/// errors, of every class, are more than 1 % of its own measured requests
/// ([`Repetition::failure`]). A collapse (a row or repetition that fell behind) is said in
/// the report, not judged here: with one buyer bidding 90 % of the time a tenth of P1's
/// auctions end without a bid and read as one. Empty: the run passes.
pub fn run_failures(r: &ScenarioReport) -> Vec<String> {
    let mut failing = Vec::new();
    for t in r.targets.iter().filter(|t| !t.label.contains(" @ ")) {
        let errors = t.errors_total();
        let done = if t.measured > 0 {
            t.measured
        } else {
            t.latency.count
        };
        if past_error_rule(errors, done) {
            failing.push(format!("{} ({errors} errors: {:?})", t.label, t.errors));
        }
    }
    failing.extend(r.repetitions.iter().filter_map(Repetition::failure));
    failing
}

/// Writes the report as pretty JSON.
pub fn write_json(r: &ScenarioReport, path: &Path) -> std::io::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut w, r).map_err(std::io::Error::other)?;
    w.write_all(b"\n")?;
    w.flush()
}

fn baseline_label(r: &ScenarioReport) -> &str {
    r.extra
        .get("baseline_label")
        .and_then(|v| v.as_str())
        .unwrap_or(BASELINE_LABEL)
}

/// `"2 x Intel(R) Xeon(R) ... , 23.4 GiB RAM"`, from `/proc/cpuinfo` and `/proc/meminfo`
/// (parts it cannot read are described as unknown).
pub fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let model = cpu
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k.trim(), "model name" | "Model" | "cpu model").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    let mem = mem_kb.map_or_else(
        || "unknown RAM".to_string(),
        |kb| format!("{:.1} GiB RAM", kb as f64 / (1024.0 * 1024.0)),
    );
    format!("{cores} x {model}, {mem}")
}

/// One progress line (no `\r` or newline; the caller adds them), padded so a shorter
/// line overwrites a longer one.
pub fn progress_line(label: &str, p: &Progress) -> String {
    format!(
        "{label}: {:>6.1} s  sent {:>9}  done {:>9}  errors {:>7}  in flight {:>6}  p99 {:>9} ms   ",
        p.elapsed_s,
        p.sent,
        p.completed,
        p.errors,
        p.in_flight,
        ms(p.current_p99_us)
    )
}

/// The median of `after - before` over `(before, after)` pairs, each pair measured back
/// to back, so drift of a shared machine between pairs cancels out. With an even count,
/// the upper of the two middle values (the larger: the conservative side for a limit);
/// 0 with no pair.
pub fn paired_median(pairs: impl IntoIterator<Item = (u64, u64)>) -> i64 {
    let mut d: Vec<i64> = pairs
        .into_iter()
        .map(|(before, after)| after as i64 - before as i64)
        .collect();
    d.sort_unstable();
    d.get(d.len() / 2).copied().unwrap_or(0)
}
