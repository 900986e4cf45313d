//! The text table a run prints, with its notes under it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use super::*;

pub(super) fn ms(us: u64) -> String {
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
        "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}  errors",
        "target",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "rate/s",
        "cpu/auc µs",
        "cpu/ping µs"
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
            "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11}  {}",
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
