//! What a run looks like to a reader: percentile tables, JSON, an SVG picture, process
//! samples (CPU, memory, sockets) and the machine the figures were taken on.
//!
//! It only formats and reads `/proc`; it never sends load and never decides a target's
//! pass or fail (the scenario does, and writes the verdicts into the report).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
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
/// Most entries read from one `/proc/<pid>/task` or `/proc/<pid>/fd` directory.
pub const PROC_ENTRIES_MAX: usize = 1_000_000;
/// Most lines read from one `/proc/net/tcp*` file.
pub const PROC_NET_LINES_MAX: usize = 10_000_000;
/// Picture size, pixels.
const SVG_WIDTH: u32 = 1200;
const SVG_PANEL_HEIGHT: u32 = 420;

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

/// A process at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcSample {
    /// Seconds since the scenario started.
    pub t_s: f64,
    /// CPU time used so far by all its threads, ns.
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    pub open_sockets: u64,
}

/// Samples process `pid`: CPU is the sum over its threads of the first field of
/// `/proc/<pid>/task/*/schedstat` (ns on CPU), memory is `VmRSS` from
/// `/proc/<pid>/status`, sockets are the `/proc/<pid>/fd` entries linking to `socket:`.
/// A thread that exits while being read is skipped.
pub fn proc_sample(pid: u32, t_s: f64) -> std::io::Result<ProcSample> {
    let base = Path::new("/proc").join(pid.to_string());
    let mut cpu_ns = 0u64;
    for entry in std::fs::read_dir(base.join("task"))?.take(PROC_ENTRIES_MAX) {
        let Ok(entry) = entry else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        cpu_ns = cpu_ns.saturating_add(ns);
    }
    let status = std::fs::read_to_string(base.join("status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let mut open_sockets = 0u64;
    for entry in std::fs::read_dir(base.join("fd"))?.take(PROC_ENTRIES_MAX) {
        let Ok(entry) = entry else { continue };
        if let Ok(link) = std::fs::read_link(entry.path()) {
            if link.to_string_lossy().starts_with("socket:") {
                open_sockets += 1;
            }
        }
    }
    Ok(ProcSample {
        t_s,
        cpu_ns,
        rss_bytes: rss_kb.saturating_mul(1024),
        open_sockets,
    })
}

/// [`proc_sample`] of a process that still runs once it has been read: `None` if it has
/// ended ([`crate::children::ended`]). A zombie (a killed exchange not yet reaped) still
/// reads, as 0 bytes, 0 sockets and only its main thread's CPU, and those figures were
/// reported as the target's (black-box round 82b). A process read while it exits, its
/// memory already released but not yet a zombie (no `VmRSS`), has ended too: its 0 bytes
/// were taken as a sample (a test of this failed once under a loaded machine).
pub fn live_sample(pid: u32, t_s: f64) -> Option<ProcSample> {
    let sample = proc_sample(pid, t_s).ok()?;
    if sample.rss_bytes == 0 || crate::children::ended(pid) {
        None
    } else {
        Some(sample)
    }
}

/// Most samples [`sample_until`] keeps.
pub const PROC_SAMPLES_MAX: usize = 100_000;

/// A process sampled over a run ([`sample_until`]).
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Taken while it ran.
    pub samples: Vec<ProcSample>,
    /// When it was first seen ended, seconds since sampling started: it exited before
    /// the sampling was stopped.
    pub exited_at_s: Option<f64>,
}

/// Samples `pid` every `every` (the first at once) until `stop` fires (or its sender is
/// dropped) or the process ends; keeps the samples taken before it ended and stops
/// there, where sampling a zombie went on reading 0 MB and 0 sockets to the end of the
/// run (black-box round 82b).
pub async fn sample_until(
    pid: u32,
    every: std::time::Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Sampled {
    let t0 = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut out = Sampled::default();
    while out.samples.len() < PROC_SAMPLES_MAX {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let t_s = t0.elapsed().as_secs_f64();
        match live_sample(pid, t_s) {
            Some(sample) => out.samples.push(sample),
            None => {
                out.exited_at_s = Some(t_s);
                break;
            }
        }
    }
    out
}

/// The soak's memory and sockets note: from the sample after warm-up (the 10th, or the
/// last if fewer) to the last; if the process exited during the run, the last is its last
/// sample alive, said so with when it was taken. `None` without samples.
pub fn memory_note(sampled: &Sampled) -> Option<String> {
    let samples = &sampled.samples;
    let first = samples.get(samples.len().min(10).saturating_sub(1))?;
    let last = samples.last()?;
    let end = match sampled.exited_at_s {
        None => "at the end".to_string(),
        Some(_) => format!("at its last sample ({:.0} s), before it exited", last.t_s),
    };
    Some(format!(
        "RSS {:.1} MB after warm-up -> {:.1} MB {end}; open sockets {} -> {}",
        first.rss_bytes as f64 / 1e6,
        last.rss_bytes as f64 / 1e6,
        first.open_sockets,
        last.open_sockets
    ))
}

/// The note for a target process that exited during its run (`at_s`: when it was first
/// seen ended, seconds into the run, if known; 0 or less: already ended when its run
/// began, as a relay killed during the direct leg is; black-box: that was "about 1 s into
/// it", the first check of its run).
pub fn exited_note(which: &str, pid: u32, at_s: Option<f64>) -> String {
    let when = at_s.map_or_else(
        || "before its end".to_string(),
        |t| {
            if t <= 0.0 {
                "before it began: during an earlier leg".to_string()
            } else {
                format!("about {t:.0} s into it (warm-up included)")
            }
        },
    );
    format!(
        "the {which} (pid {pid}) exited during its run, {when}: it was read no further, so its CPU is not given and its memory and sockets stop at its last sample; its requests from then on are its errors"
    )
}

/// Sockets in TIME_WAIT (state `06`) whose remote port is `port` (`None`: any), from
/// `/proc/net/tcp` and `/proc/net/tcp6` (a missing `tcp6` counts as none): the
/// connections this machine closed towards a server on `port`.
pub fn time_wait_sockets(port: Option<u16>) -> std::io::Result<u64> {
    let mut n = count_time_wait(&std::fs::read_to_string("/proc/net/tcp")?, port);
    match std::fs::read_to_string("/proc/net/tcp6") {
        Ok(text) => n += count_time_wait(&text, port),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(n)
}

/// Counts TIME_WAIT lines of a `/proc/net/tcp*` table with remote port `port` (`None`:
/// any).
fn count_time_wait(table: &str, port: Option<u16>) -> u64 {
    table
        .lines()
        .skip(1)
        .take(PROC_NET_LINES_MAX)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (_sl, _local, remote, state) = (f.next(), f.next(), f.next(), f.next());
            let remote_port = remote
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == Some("06") && (port.is_none() || remote_port == port)
        })
        .count() as u64
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

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"))
}

fn classes(m: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        "0".to_string()
    } else {
        parts.join(" ")
    }
}

/// Prints the scenario as one table: a row per target (p50, p90, p99, p99.9, max in ms,
/// `rate/s`, errors by class, CPU per auction and per buyer ping in µs), post rows,
/// added-latency rows; under them a line per target whose failed requests are not in its
/// percentiles (its "added" rows marked ` *`); then the knees, the outcomes and the
/// generator lag (with a note past [`GENERATOR_LAG_NOTE_US`]). `rate/s` is
/// [`RunResult::achieved_rate_per_s`]: the measured requests answered without error over
/// the measured phase's length, late answers included, so not the target's throughput.
pub fn print_table(r: &ScenarioReport, out: &mut impl Write) -> std::io::Result<()> {
    let mut s = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        s,
        "scenario {}  ({}, commit {})",
        r.scenario, r.date, r.commit
    );
    let _ = writeln!(
        s,
        "machine  {} (generator, buyers and target share it)",
        r.machine
    );
    for note in &r.notes {
        let _ = writeln!(s, "note     {note}");
    }
    // Targets whose failed requests are not in their percentiles (black-box: an exchange
    // shedding half its load with fast 503s showed its p99 and an added p99 of 0.000 ms
    // as if it had served it all). Their "added" rows, and both rows against a baseline
    // with such errors, are marked ` *`, with a line under the table.
    let baseline = baseline_label(r);
    let unrecorded = |label: &str| {
        r.targets.iter().any(|t| {
            t.label == label && {
                let (firsts, posts) = t.errors_not_in_percentiles();
                !firsts.is_empty() || !posts.is_empty()
            }
        })
    };
    // A target that collapsed (fell behind the load, where every buyer answers in time)
    // measured a backlog: the "added" rows read against it are marked too (black-box: a
    // collapsed baseline gave `exchange added` 0.000 ms with no mark).
    let collapsed = |label: &str| -> Option<String> {
        if !every_buyer_answers(&r.scenario) {
            return None;
        }
        r.targets
            .iter()
            .find(|t| t.label == label)
            .and_then(TargetSummary::fell_behind)
    };
    let added_label = |name: &str| {
        let marked = unrecorded(name)
            || unrecorded(baseline)
            || collapsed(name).is_some()
            || collapsed(baseline).is_some();
        let mark = if marked { " *" } else { "" };
        format!("{name} added (vs {baseline}){mark}")
    };
    let added_rows: Vec<(String, &Percentiles)> = [
        ("exchange", &r.added_latency_us),
        ("relay", &r.relay_added_latency_us),
    ]
    .into_iter()
    .filter_map(|(name, p)| p.as_ref().map(|p| (added_label(name), p)))
    .collect();
    let width = r
        .targets
        .iter()
        .map(|t| t.label.len() + 7)
        .chain(added_rows.iter().map(|(label, _)| label.len()))
        .chain([26, 6])
        .max()
        .unwrap_or(26);
    let _ = writeln!(
        s,
        "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}  errors",
        "target",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "rate/s",
        "cpu/auc",
        "cpu/ping"
    );
    let row = |s: &mut String,
               label: &str,
               p: &Percentiles,
               rate: &str,
               cpu: (String, String),
               errors: &str| {
        // No sample, no percentile (black-box round 143a: a target that completed
        // nothing showed 0.000 ms).
        let pct = |us: u64| {
            if p.count == 0 {
                "-".to_string()
            } else {
                ms(us)
            }
        };
        let _ = writeln!(
            s,
            "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9}  {}",
            label,
            pct(p.p50_us),
            pct(p.p90_us),
            pct(p.p99_us),
            pct(p.p999_us),
            pct(p.max_us),
            rate,
            cpu.0,
            cpu.1,
            errors
        );
    };
    for t in &r.targets {
        row(
            &mut s,
            &t.label,
            &t.latency,
            &format!("{:.1}", t.achieved_rate_per_s),
            (
                opt_us(t.cpu_us_per_auction),
                opt_us(t.cpu_us_per_buyer_ping),
            ),
            &classes(&t.errors),
        );
        if let Some(p) = &t.post_latency {
            let none = ("-".to_string(), "-".to_string());
            row(&mut s, &format!("{} post", t.label), p, "-", none, "");
        }
    }
    let none = || ("-".to_string(), "-".to_string());
    for (label, p) in &added_rows {
        row(&mut s, label, p, "-", none(), "");
    }
    for t in &r.targets {
        if let Some(line) = unrecorded_errors_line(t, baseline, &added_rows) {
            let _ = writeln!(s, "{line}");
        }
        if let Some(why) = collapsed(&t.label) {
            let rows = if t.label == baseline {
                "the added rows against it (marked *) read"
            } else {
                "its added row (marked *) reads"
            };
            let _ = writeln!(
                s,
                "* {}: fell behind the load and collapsed ({why}): it measured a backlog, not the target, and {rows} that backlog",
                t.label
            );
        }
    }
    if !r.repetitions.is_empty() {
        let _ = writeln!(
            s,
            "each repetition (the rows above are their medians): p99 / p99.9 ms, errors, cpu/ping µs, outcomes"
        );
    }
    for rep in &r.repetitions {
        let pct = |us: u64| {
            if rep.samples == Some(0) {
                "-".to_string()
            } else {
                ms(us)
            }
        };
        let _ = writeln!(
            s,
            "  {} #{}: {} / {}, {} errors, {}, {}{}",
            rep.label,
            rep.repetition,
            pct(rep.p99_us),
            pct(rep.p999_us),
            rep.errors,
            opt_us(rep.cpu_us_per_buyer_ping),
            classes(&rep.outcomes),
            rep.fell_behind
                .as_deref()
                .map_or_else(String::new, |why| format!("  COLLAPSED: {why}"))
        );
    }
    for why in r.repetitions.iter().filter_map(Repetition::failure) {
        let _ = writeln!(
            s,
            "! {why}: the run fails (exit status 1), whatever the median rows above show"
        );
    }
    for (label, rate) in &r.knees {
        let _ = writeln!(
            s,
            "knee {label}: {rate:.0} /s (highest rate with p99 within {} ms of {} and zero errors)",
            ms(KNEE_MARGIN_US),
            baseline_label(r)
        );
    }
    for t in &r.targets {
        if !t.outcomes.is_empty() {
            let _ = writeln!(s, "outcomes {}: {}", t.label, classes(&t.outcomes));
        }
        if let Some(lag) = &t.send_lag {
            let _ = writeln!(
                s,
                "generator lag {}: p50 {} ms, p99 {} ms, max {} ms",
                t.label,
                ms(lag.p50_us),
                ms(lag.p99_us),
                ms(lag.max_us)
            );
            if lag.p99_us > GENERATOR_LAG_NOTE_US {
                let why = if t.label == baseline {
                    "its scheduler was behind: the direct baseline has its own pools, so the machine was too busy to send on time"
                } else {
                    "every connection was busy, so due requests waited for one (or its scheduler was behind); size --connections above rate x latency"
                };
                let _ = writeln!(
                    s,
                    "  the generator itself queued: {}'s requests waited up to {} ms (p99) to go out, and its latencies include that wait, which its target never saw: {why}",
                    t.label,
                    ms(lag.p99_us),
                );
            }
        }
    }
    out.write_all(s.as_bytes())
}

/// The line under the table for a target whose failed requests are not in its
/// percentiles (error answers, refused connections, I/O errors), `None` if it had none.
/// `added_rows`: the "added" rows' labels, marked ` *` where they are read against it.
fn unrecorded_errors_line(
    t: &TargetSummary,
    baseline: &str,
    added_rows: &[(String, &Percentiles)],
) -> Option<String> {
    let (firsts, posts) = t.errors_not_in_percentiles();
    if firsts.is_empty() && posts.is_empty() {
        return None;
    }
    let mut parts = Vec::new();
    if !firsts.is_empty() {
        let failed: u64 = firsts.values().sum();
        let of = if t.measured > 0 {
            format!(" of {}", t.measured)
        } else {
            String::new()
        };
        parts.push(format!(
            "{failed}{of} measured requests failed ({}) and are not in its percentiles",
            classes(&firsts)
        ));
    }
    if !posts.is_empty() {
        let failed: u64 = posts.values().sum();
        parts.push(format!(
            "{failed} of its posts after a bid failed ({}) and are not in its post row",
            classes(&posts)
        ));
    }
    let marked = |label: &str| {
        added_rows
            .iter()
            .any(|(l, _)| l.ends_with(" *") && l.starts_with(&format!("{label} added ")))
    };
    let read = if t.label == baseline && added_rows.iter().any(|(l, _)| l.ends_with(" *")) {
        "read its figures, and the added rows against it (marked *), with them"
    } else if marked(&t.label) {
        "read its figures, and its added row (marked *), with them"
    } else {
        "read its figures with them"
    };
    Some(format!("* {}: {}: {read}", t.label, parts.join("; ")))
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

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// Lowest latency drawn on the log axis, ms.
const PLOT_MS_MIN: f64 = 0.01;

/// A log-axis range around `values` (ms): from half the smallest to twice the largest.
fn log_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return PLOT_MS_MIN..1.0;
    }
    let lo = (lo / 2.0).max(PLOT_MS_MIN);
    lo..(hi * 2.0).max(lo * 10.0)
}

/// An axis label: no decimals on whole numbers, at most 3 significant digits otherwise.
fn axis_label(v: &f64) -> String {
    let v = *v;
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        let text = format!("{v:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn ms_of(us: u64) -> f64 {
    (us as f64 / 1000.0).max(PLOT_MS_MIN)
}

/// Draws the run: latency p50 / p99 / p99.9 over time per target (log scale, ms) and, if
/// the report has a sweep, p99 against rate per label with the baseline + 2.5 ms line.
pub fn write_svg(r: &ScenarioReport, path: &Path) -> anyhow::Result<()> {
    let panels = if r.sweep.is_empty() { 1 } else { 2 };
    let root = SVGBackend::new(path, (SVG_WIDTH, SVG_PANEL_HEIGHT * panels)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((panels as usize, 1));
    if let Some(area) = areas.first() {
        draw_timeline(r, area)?;
    }
    if let Some(area) = areas.get(1) {
        draw_sweep(r, area)?;
    }
    root.present()?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A timeline line: name, the window field it draws, stroke width, dashed.
type TimelineLine = (&'static str, fn(&Window) -> u64, u32, bool);

/// Which percentile lines the timeline draws.
const TIMELINE_LINES: [TimelineLine; 3] = [
    ("p50", |w| w.p50_us, 1, false),
    ("p99", |w| w.p99_us, 3, false),
    ("p99.9", |w| w.p999_us, 2, true),
];

fn draw_timeline(r: &ScenarioReport, area: &Area<'_>) -> anyhow::Result<()> {
    let windows = || {
        r.targets
            .iter()
            .flat_map(|t| t.timeline.iter())
            .filter(|w| w.count > 0)
    };
    let t_max = windows().map(|w| w.t_s + 1.0).fold(1.0f64, f64::max);
    let y = log_range(windows().flat_map(|w| [ms_of(w.p50_us), ms_of(w.p999_us)]));
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "{}: latency over time, per second (p50 thin, p99 thick, p99.9 dashed)",
                r.scenario
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..t_max, y.log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("seconds into the measured phase")
        .y_desc("latency, ms (log)")
        .y_labels(8)
        .x_label_formatter(&axis_label)
        .y_label_formatter(&axis_label)
        .draw()?;
    for (i, t) in r.targets.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for (name, field, width, dashed) in TIMELINE_LINES {
            let points: Vec<(f64, f64)> = t
                .timeline
                .iter()
                .filter(|w| w.count > 0)
                .map(|w| (w.t_s + 0.5, ms_of(field(w))))
                .collect();
            let style = color.stroke_width(width);
            if dashed {
                chart.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))?;
            } else {
                let series = chart.draw_series(LineSeries::new(points.clone(), style))?;
                if name == "p99" {
                    series
                        .label(format!("{} p50 / p99 / p99.9", t.label))
                        .legend(move |(x, y)| {
                            PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3))
                        });
                }
            }
            // Markers, so that a run of a single second still shows.
            chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, width + 1, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

fn draw_sweep(r: &ScenarioReport, area: &Area<'_>) -> anyhow::Result<()> {
    let baseline = baseline_label(r);
    let margin_ms = KNEE_MARGIN_US as f64 / 1000.0;
    let mut by_label: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in &r.sweep {
        by_label
            .entry(p.label.as_str())
            .or_default()
            .push((p.rate_per_s, ms_of(p.p99_us)));
    }
    for points in by_label.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let limit: Vec<(f64, f64)> = by_label
        .get(baseline)
        .map(|points| points.iter().map(|&(x, y)| (x, y + margin_ms)).collect())
        .unwrap_or_default();
    let x_max = r.sweep.iter().map(|p| p.rate_per_s).fold(1.0f64, f64::max) * 1.05;
    let y = log_range(
        by_label
            .values()
            .chain([&limit])
            .flat_map(|points| points.iter().map(|p| p.1)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "p99 against rate (dashed: {baseline} p99 + {margin_ms} ms, the knee criterion)"
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, y.log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("planned rate, requests/s")
        .y_desc("p99, ms (log)")
        .y_labels(8)
        .x_label_formatter(&axis_label)
        .y_label_formatter(&axis_label)
        .draw()?;
    for (i, (label, points)) in by_label.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(label.to_string())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(3)));
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
        )?;
    }
    if !limit.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(limit, 6, 4, BLACK.stroke_width(1)))?
            .label(format!("{baseline} + {margin_ms} ms"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLACK.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of `targets` with the given "added" rows, and its text table.
    fn table_of(
        targets: Vec<TargetSummary>,
        added: Option<Percentiles>,
        relay_added: Option<Percentiles>,
    ) -> String {
        let report = ScenarioReport {
            scenario: "p1-latency".into(),
            date: "2026-12-07".into(),
            commit: "test".into(),
            machine: "test".into(),
            notes: Vec::new(),
            added_latency_us: added,
            relay_added_latency_us: relay_added,
            knees: BTreeMap::new(),
            sweep: Vec::new(),
            targets,
            proc_samples: Vec::new(),
            extra: BTreeMap::new(),
            repetitions: Vec::new(),
        };
        let mut out = Vec::new();
        print_table(&report, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A target that completed nothing shows no percentile, and no "added" row against
    /// it (black-box round 143a: 0.000 ms, as if it answered at once).
    #[test]
    fn a_target_with_no_sample_shows_no_percentile() {
        let empty = Percentiles::default();
        let direct = Percentiles {
            p50_us: 11_000,
            p90_us: 12_000,
            p99_us: 13_000,
            p999_us: 14_000,
            max_us: 15_000,
            count: 1_000,
        };
        let row = |label: &str, latency: Percentiles| TargetSummary {
            label: label.into(),
            latency,
            post_latency: None,
            achieved_rate_per_s: 100.0,
            errors: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            cpu_us_per_auction: None,
            cpu_us_per_buyer_ping: None,
            timeline: Vec::new(),
            send_lag: None,
            measured: 0,
        };
        let table = table_of(
            vec![row("direct", direct), row("exchange", empty)],
            Some(empty.minus(&direct)),
            Some(direct.minus(&empty)),
        );
        let line = |start: &str| {
            table
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("direct ").contains(" 13.000 "), "{table}");
        // Five percentiles and the two CPU columns; the "added" rows have no rate either.
        for (l, dashes) in [("exchange ", 7), ("exchange added", 8), ("relay added", 8)] {
            let l = line(l);
            assert!(!l.is_empty() && !l.contains("0.000"), "{l}\n{table}");
            assert_eq!(
                l.split_whitespace().filter(|w| *w == "-").count(),
                dashes,
                "{l}"
            );
        }
    }

    /// Black-box: failed requests left out of the percentiles were shown only in the
    /// errors column; the "added" rows read against them were not marked.
    #[test]
    fn errors_outside_the_percentiles_are_said_under_the_table() {
        let p = Percentiles {
            p50_us: 11_000,
            p90_us: 12_000,
            p99_us: 13_000,
            p999_us: 14_000,
            max_us: 15_000,
            count: 1_000,
        };
        let row = |label: &str, errors: &[(&str, u64)], measured: u64| TargetSummary {
            label: label.into(),
            latency: p,
            post_latency: None,
            achieved_rate_per_s: 100.0,
            errors: errors.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            outcomes: BTreeMap::new(),
            cpu_us_per_auction: None,
            cpu_us_per_buyer_ping: None,
            timeline: Vec::new(),
            send_lag: None,
            measured,
        };
        let table =
            |targets: Vec<TargetSummary>| table_of(targets, Some(p.minus(&p)), Some(p.minus(&p)));
        // Timeouts and refusals are in the percentiles: nothing to say, nothing marked.
        let t = table(vec![
            row("direct", &[], 1_000),
            row("relay", &[], 1_000),
            row("exchange", &[("timeout", 5), ("in_flight_limit", 2)], 1_000),
        ]);
        assert!(!t.contains(" * ") && !t.contains("\n* "), "{t}");
        // A baseline with refused connections: both rows against it are marked.
        let t = table(vec![
            row("direct", &[("connect", 3)], 1_000),
            row("relay", &[], 1_000),
            row("exchange", &[("timeout", 5)], 1_000),
        ]);
        assert!(t.contains("\nexchange added (vs direct) * "), "{t}");
        assert!(t.contains("\nrelay added (vs direct) *  "), "{t}");
        assert!(
            t.contains(
                "\n* direct: 3 of 1000 measured requests failed (connect=3) and are not in its percentiles: read its figures, and the added rows against it (marked *), with them\n"
            ),
            "{t}"
        );
        assert!(!t.contains("* exchange:") && !t.contains("* relay:"), "{t}");
        // A target's own error answers, and its posts': only its row is marked; a
        // report from before `measured` gives no total.
        let t = table(vec![
            row("direct", &[], 1_000),
            row("relay", &[("http_5xx", 4), ("timeout", 1)], 0),
            row("exchange", &[("post_io", 2), ("post_timeout", 1)], 1_000),
        ]);
        assert!(t.contains("\nexchange added (vs direct) * "), "{t}");
        assert!(t.contains("\nrelay added (vs direct) * "), "{t}");
        assert!(
            t.contains(
                "\n* relay: 4 measured requests failed (http_5xx=4) and are not in its percentiles: read its figures, and its added row (marked *), with them\n"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "\n* exchange: 2 of its posts after a bid failed (post_io=2) and are not in its post row: read its figures, and its added row (marked *), with them\n"
            ),
            "{t}"
        );
        // The marked label fits its column: every row's p50 lines up.
        let p50_at: Vec<usize> = t
            .lines()
            .filter_map(|l| {
                let end = |n: &str| l.find(&format!(" {n} ")).map(|i| i + 1 + n.len());
                end("11.000").or_else(|| end("0.000"))
            })
            .collect();
        assert!(
            p50_at.len() == 5 && p50_at.windows(2).all(|w| w[0] == w[1]),
            "{t}"
        );

        // `report.json` written before `measured` still reads.
        let mut json = serde_json::to_value(row("exchange", &[], 7)).unwrap();
        assert_eq!(json["measured"], 7);
        json.as_object_mut().unwrap().remove("measured");
        let back: TargetSummary = serde_json::from_value(json).unwrap();
        assert_eq!(back.measured, 0);
    }

    /// Black-box: with `--connections 2` at 300/s the generator queued for seconds, its
    /// latencies included that wait, and only the lag line's figures showed it.
    #[test]
    fn a_generator_lag_past_the_threshold_gets_a_note() {
        let lag = |p99_us: u64| Percentiles {
            p50_us: 100,
            p90_us: 200,
            p99_us,
            p999_us: p99_us,
            max_us: p99_us,
            count: 100,
        };
        let table = |label: &str, p99_us: u64| {
            let mut t = with_outcomes(&[("bid", 100)]);
            t.label = label.into();
            t.send_lag = Some(lag(p99_us));
            table_of(vec![t], None, None)
        };
        let t = table("exchange", GENERATOR_LAG_NOTE_US);
        assert!(
            t.contains("generator lag exchange: ") && !t.contains("queued"),
            "{t}"
        );
        let t = table("exchange", 4_012_000);
        assert!(
            t.contains(
                "generator lag exchange: p50 0.100 ms, p99 4012.000 ms, max 4012.000 ms\n  the generator itself queued: exchange's requests waited up to 4012.000 ms (p99) to go out, and its latencies include that wait, which its target never saw: every connection was busy, so due requests waited for one (or its scheduler was behind); size --connections above rate x latency\n"
            ),
            "{t}"
        );
        // The direct baseline has no generator connections: its lag is the machine's.
        let t = table("direct", GENERATOR_LAG_NOTE_US + 1);
        assert!(
            t.contains("the generator itself queued: direct's") && !t.contains("--connections"),
            "{t}"
        );
    }

    #[test]
    fn time_wait_lines_are_counted_by_remote_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:9C40 0100007F:1F90 06 00000000:00000000\n\
            1: 0100007F:9C41 0100007F:1F90 01 00000000:00000000\n\
            2: 0100007F:9C42 0100007F:1F91 06 00000000:00000000\n\
            3: 00000000000000000000000001000000:9C43 00000000000000000000000001000000:1F90 06 0\n";
        assert_eq!(count_time_wait(table, Some(8080)), 2);
        assert_eq!(count_time_wait(table, Some(8081)), 1);
        assert_eq!(count_time_wait(table, None), 3);
    }

    fn with_outcomes(pairs: &[(&str, u64)]) -> TargetSummary {
        TargetSummary {
            label: "t".into(),
            latency: Percentiles::default(),
            post_latency: None,
            achieved_rate_per_s: 0.0,
            errors: BTreeMap::new(),
            outcomes: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            cpu_us_per_auction: None,
            cpu_us_per_buyer_ping: None,
            timeline: Vec::new(),
            send_lag: None,
            measured: 0,
        }
    }

    #[test]
    fn a_run_that_fell_behind_is_told_apart_from_one_that_kept_up() {
        // A relay or baseline: buyer calls timed out past 1 %.
        let kept_up = with_outcomes(&[("buyer_answered", 99_000), ("buyer_timeout", 990)]);
        assert_eq!(kept_up.fell_behind(), None);
        let collapsed = with_outcomes(&[
            ("buyer_answered", 36_510),
            ("buyer_timeout", 59_490),
            ("relayed", 12_000),
        ]);
        let why = collapsed.fell_behind().unwrap();
        assert!(
            why.starts_with("59490 of 96000 buyer calls (62.0 %)"),
            "{why}"
        );
        // The exchange: auctions that ended without a bid, however they are named.
        assert_eq!(with_outcomes(&[("bid", 20_000)]).fell_behind(), None);
        let unsold = with_outcomes(&[("bid", 19_000), ("no_bid", 1_000)]);
        assert!(unsold
            .fell_behind()
            .unwrap()
            .starts_with("1000 of 20000 auctions"));
        assert!(with_outcomes(&[("no_bid", 5)]).fell_behind().is_some());
        // Nothing recorded: nothing to say.
        assert_eq!(with_outcomes(&[]).fell_behind(), None);
        // A repetition is marked only where every buyer answers in time: in P3 two of
        // eight buyers hang by design, and their 25 % of timeouts is no collapse.
        let p3 = with_outcomes(&[("buyer_answered", 60_000), ("buyer_timeout", 20_000)]);
        assert!(Repetition::of(&p3, 1, true).fell_behind.is_some());
        assert_eq!(Repetition::of(&p3, 1, false).fell_behind, None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = proc_sample(std::process::id(), 1.5).unwrap();
        assert!(s.cpu_ns > 0 && s.rss_bytes > 0);
        assert_eq!(s.t_s, 1.5);
        assert!(time_wait_sockets(Some(1)).is_ok());
        assert!(time_wait_sockets(None).is_ok());
        assert!(machine_description().contains(" x "));
    }

    /// Black-box round 82b: a target that dies mid-run is sampled no further; the
    /// samples taken while it ran are kept (a zombie read as 0 MB and 0 sockets).
    #[tokio::test]
    async fn sampling_stops_when_the_process_ends_and_keeps_what_it_read() {
        // Runs about 1 s (its RSS is read while it sleeps: long enough that a loaded
        // machine still takes a sample before it ends; 0.3 s failed once under a full
        // parallel test run), then stays a zombie until waited for, as a killed exchange
        // does under its guard.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 1"])
            .spawn()
            .unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let sampled = sample_until(child.id(), std::time::Duration::from_millis(20), stopped).await;
        assert!(crate::children::ended(child.id()), "read until it ended");
        let at = sampled.exited_at_s.unwrap();
        assert!(!sampled.samples.is_empty());
        assert!(
            sampled
                .samples
                .iter()
                .all(|s| s.rss_bytes > 0 && s.t_s < at),
            "{sampled:?}"
        );
        assert!(live_sample(child.id(), 0.0).is_none());
        let note = memory_note(&sampled).unwrap();
        assert!(note.contains("MB at its last sample ("), "{note}");
        assert!(!note.contains(" 0.0 MB"), "{note}");
        child.wait().unwrap();
        // Stopped before the first tick: nothing read, nothing ended.
        let (stop, stopped) = tokio::sync::oneshot::channel();
        stop.send(()).unwrap();
        let none = sample_until(
            std::process::id(),
            std::time::Duration::from_secs(1),
            stopped,
        )
        .await;
        assert!(none.samples.is_empty() && none.exited_at_s.is_none());
        assert_eq!(memory_note(&none), None);
    }

    #[test]
    fn the_memory_note_says_whether_the_process_lived_to_the_end() {
        let at = |t_s: f64, mb: u64, sockets: u64| ProcSample {
            t_s,
            cpu_ns: 1,
            rss_bytes: mb * 1_000_000,
            open_sockets: sockets,
        };
        let mut sampled = Sampled {
            samples: (0..12).map(|i| at(i as f64, 10 + i, 5 + i)).collect(),
            exited_at_s: None,
        };
        assert_eq!(
            memory_note(&sampled).unwrap(),
            "RSS 19.0 MB after warm-up -> 21.0 MB at the end; open sockets 14 -> 16"
        );
        sampled.exited_at_s = Some(12.0);
        assert_eq!(
            memory_note(&sampled).unwrap(),
            "RSS 19.0 MB after warm-up -> 21.0 MB at its last sample (11 s), before it exited; open sockets 14 -> 16"
        );
        let note = exited_note("exchange", 42, Some(12.4));
        assert!(
            note.starts_with("the exchange (pid 42) exited during its run, about 12 s into it"),
            "{note}"
        );
        let note = exited_note("relay", 7, Some(0.0));
        assert!(
            note.starts_with(
                "the relay (pid 7) exited during its run, before it began: during an earlier leg"
            ),
            "{note}"
        );
        assert!(exited_note("relay", 7, None).contains("exited during its run, before its end"));
    }

    #[test]
    fn minus_saturates_and_knee_needs_every_lower_rate() {
        let a = Percentiles {
            p50_us: 10,
            p90_us: 20,
            p99_us: 30,
            p999_us: 40,
            max_us: 50,
            count: 5,
        };
        let b = Percentiles { p50_us: 12, ..a };
        assert_eq!(a.minus(&b).p50_us, 0);
        assert_eq!(b.minus(&a).p50_us, 2);
        let p = |rate: f64, ok: bool| SweepPoint {
            label: "exchange".into(),
            rate_per_s: rate,
            p99_us: 1,
            errors: 0,
            within_target: ok,
        };
        let sweep = vec![
            p(3000.0, false),
            p(1000.0, true),
            p(2000.0, true),
            p(4000.0, true),
        ];
        assert_eq!(knee(&sweep, "exchange"), Some(2000.0));
        assert_eq!(knee(&sweep, "relay"), None);
    }

    #[test]
    fn paired_median_takes_each_pairs_difference_then_the_median() {
        // Drift: the machine slows by 1 ms per repetition; each pair adds 0.2 ms.
        let pairs = [(10_000, 10_200), (11_000, 11_200), (12_000, 12_200)];
        assert_eq!(paired_median(pairs), 200);
        // One slow leg without swaps stays in its own pair's difference (-19.7 ms), which
        // the median sets aside: +0.1 ms (the legs' medians would differ by +0.3 ms).
        assert_eq!(
            paired_median([(10_000, 10_100), (30_000, 10_300), (10_000, 10_400)]),
            100
        );
        // Even count: the upper middle value; negatives kept.
        assert_eq!(paired_median([(5, 1), (5, 2), (5, 9), (5, 10)]), 4);
        assert_eq!(paired_median([(9, 1)]), -8);
        assert_eq!(paired_median(std::iter::empty()), 0);
    }

    /// A report of `scenario` with `targets` and `repetitions`, for the judging tests.
    fn judged(
        scenario: &str,
        targets: Vec<TargetSummary>,
        repetitions: Vec<Repetition>,
    ) -> ScenarioReport {
        ScenarioReport {
            scenario: scenario.into(),
            date: String::new(),
            commit: String::new(),
            machine: String::new(),
            notes: Vec::new(),
            added_latency_us: None,
            relay_added_latency_us: None,
            knees: BTreeMap::new(),
            sweep: Vec::new(),
            targets,
            proc_samples: Vec::new(),
            extra: BTreeMap::new(),
            repetitions,
        }
    }

    fn run_of(
        label: &str,
        measured: u64,
        errors: &[(&str, u64)],
        outcomes: &[(&str, u64)],
    ) -> TargetSummary {
        let mut t = with_outcomes(outcomes);
        t.label = label.into();
        t.measured = measured;
        t.errors = errors.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        t
    }

    /// Black-box: under `--repeat 3` only the median repetition's errors were judged: an
    /// exchange killed in repetition 3 (318 of 600 failed) exited 0.
    #[test]
    fn every_repetition_is_judged_not_only_the_median() {
        let mut ok = run_of("exchange", 600, &[], &[("bid", 600)]);
        ok.latency.count = 600;
        ok.latency.p99_us = 14_263;
        let killed = run_of("exchange", 600, &[("connect", 318)], &[("bid", 282)]);
        let stalled = run_of("exchange", 600, &[], &[("bid", 300), ("no_bid", 300)]);
        let reps = vec![
            Repetition::of(&ok, 1, true),
            Repetition::of(&ok, 2, true),
            Repetition::of(&killed, 3, true),
        ];
        assert_eq!(reps[2].measured, 600);
        // The row is the median repetition's: no error.
        let r = judged("p1-latency", vec![ok.clone()], reps);
        let failing = run_failures(&r);
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert!(
            failing[0].starts_with("exchange #3: 318 of 600 measured requests failed (53.0 %"),
            "{failing:?}"
        );
        let mut table = Vec::new();
        print_table(&r, &mut table).unwrap();
        let table = String::from_utf8(table).unwrap();
        assert!(
            table.contains("! exchange #3: 318 of 600 measured requests failed (53.0 %, more than 1 %): the run fails"),
            "{table}"
        );
        // A repetition with no latency shows no percentile (it read `0.000 / 0.000`).
        assert!(
            table.contains("\n  exchange #3: - / -, 318 errors"),
            "{table}"
        );
        assert!(table.contains("\n  exchange #1: 14.263 / "), "{table}");
        // A collapsed repetition is said (its line's COLLAPSED, the marks under the
        // table) but fails the run only by its errors: with one buyer that bids 90 % of
        // the time, a tenth of P1's auctions end without a bid and read as a collapse.
        let r = judged(
            "p1-latency",
            vec![ok.clone()],
            vec![
                Repetition::of(&ok, 1, true),
                Repetition::of(&stalled, 2, true),
            ],
        );
        assert!(r.repetitions[1].fell_behind.is_some());
        assert!(run_failures(&r).is_empty());
        // 1 % exactly passes; one more fails. Each repetition against its own count.
        let at = run_of("exchange", 600, &[("timeout", 6)], &[]);
        let past = run_of("exchange", 600, &[("timeout", 7)], &[]);
        let r = judged(
            "p8-post",
            vec![ok.clone()],
            vec![Repetition::of(&at, 1, false)],
        );
        assert!(run_failures(&r).is_empty());
        let r = judged(
            "p8-post",
            vec![ok.clone()],
            vec![Repetition::of(&past, 1, false)],
        );
        assert_eq!(run_failures(&r).len(), 1);
        // A single run: the row is judged by its errors; the sweep's rates are not.
        assert_eq!(
            run_failures(&judged("p1-latency", vec![past.clone()], Vec::new())).len(),
            1
        );
        assert!(run_failures(&judged("p1-latency", vec![stalled.clone()], Vec::new())).is_empty());
        let mut swept = past.clone();
        swept.label = "exchange @ 5000/s".into();
        assert!(run_failures(&judged("p2-knee", vec![swept], Vec::new())).is_empty());
        // A report written before `measured` was in a repetition still reads.
        let old: Repetition = serde_json::from_str(
            r#"{"label":"exchange","repetition":1,"p99_us":1,"p999_us":2,"errors":0,"cpu_us_per_buyer_ping":null,"fell_behind":null}"#,
        )
        .unwrap();
        assert_eq!(old.measured, 0);
        assert_eq!(old.failure(), None);
    }

    /// Black-box: a collapsed direct baseline gave `exchange added` 0.000 ms with no mark.
    #[test]
    fn added_rows_against_a_collapsed_target_are_marked() {
        let p = Percentiles {
            p50_us: 11_000,
            p90_us: 12_000,
            p99_us: 13_000,
            p999_us: 14_000,
            max_us: 15_000,
            count: 1_000,
        };
        let mut direct = run_of(
            "direct",
            1_000,
            &[],
            &[("buyer_answered", 4_000), ("buyer_timeout", 2_000)],
        );
        direct.latency = p;
        let mut exchange = run_of("exchange", 1_000, &[], &[("bid", 1_000)]);
        exchange.latency = p;
        let mut r = judged("p1-latency", vec![direct, exchange], Vec::new());
        r.added_latency_us = Some(p.minus(&p));
        let mut out = Vec::new();
        print_table(&r, &mut out).unwrap();
        let table = String::from_utf8(out).unwrap();
        assert!(table.contains("exchange added (vs direct) *"), "{table}");
        assert!(
            table
                .contains("* direct: fell behind the load and collapsed (2000 of 6000 buyer calls"),
            "{table}"
        );
        assert!(
            table.contains("the added rows against it (marked *)"),
            "{table}"
        );
        // Where buyers hang by design, their timeouts are no collapse: no mark.
        r.scenario = "p3-hang".into();
        let mut out = Vec::new();
        print_table(&r, &mut out).unwrap();
        let table = String::from_utf8(out).unwrap();
        assert!(!table.contains(" *"), "{table}");
    }
}
