//! P6's measured legs: the same load with and without model swaps (and reloads), on one
//! exchange, and the synthetic model sets they swap between.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use loadtest::report::{Repetition, ScenarioReport, TargetSummary};
use loadtest::sim;
use loadtest::swap::{self, AdminClient, SwapAction, SwapAnswer, SwapSchedule, SwapTally};

use crate::{
    measure::{measure, median_summary, note_left_out, plan, summary, PINGS_ONLY},
    rig::{wait_healthy, AdminLeg},
};

/// p6-swap: writes the two synthetic model sets (versions A and B, each a realization and
/// a lead-score model) with `pingpost models import` against the run's configuration
/// `cfg`, and names A the champion, so the exchange serves A from its start.
pub(crate) fn prepare_models(
    exchange_bin: &Path,
    cfg: &Path,
    models_dir: &Path,
    out: &Path,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(models_dir);
    std::fs::create_dir_all(models_dir)
        .with_context(|| format!("creating {}", models_dir.display()))?;
    let src = out.join("model-files");
    std::fs::create_dir_all(&src)?;
    for (version, seed) in [(swap::VERSION_A, 1), (swap::VERSION_B, 2)] {
        let (realization, lead_score) = swap::model_pair(seed)?;
        let r = src.join(format!("{version}-realization.json"));
        let l = src.join(format!("{version}-lead_score.json"));
        std::fs::write(&r, realization)?;
        std::fs::write(&l, lead_score)?;
        let made = Command::new(exchange_bin)
            .arg("--config")
            .arg(cfg)
            .args([
                "models",
                "import",
                "--vertical",
                sim::VERTICAL,
                "--version",
                version,
            ])
            .arg("--realization")
            .arg(&r)
            .arg("--lead-score")
            .arg(&l)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} models import", exchange_bin.display()))?;
        if !made.status.success() {
            bail!(
                "pingpost models import --version {version} failed ({}): {}",
                made.status,
                String::from_utf8_lossy(&made.stderr).trim()
            );
        }
    }
    // What `POST /admin/models` would leave: CHAMPION names A, HISTORY lists it.
    let vertical_dir = models_dir.join(sim::VERTICAL);
    for (file, text) in [
        ("CHAMPION", swap::VERSION_A.to_string()),
        ("HISTORY", format!("{}\n", swap::VERSION_A)),
    ] {
        let path = vertical_dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The most P6 allows swapping to add to p99, in µs.
pub(crate) const P6_P99_MARGIN_US: i64 = 500;

/// p6-swap's measured legs, on one exchange: per repetition, the load without swaps and
/// the same load while a task swaps models every `--swap-every-ms` through the measured
/// window (and reloads the configuration after every second swap, unless `--no-reload`),
/// in alternating order. Fills the report; returns a problem if an admin call was not
/// answered 200 (the run then did not measure what it was meant to).
pub(crate) async fn p6_legs(
    leg: AdminLeg<'_>,
    report: &mut ScenarioReport,
) -> anyhow::Result<Option<String>> {
    let AdminLeg {
        rig,
        args,
        rate,
        secs,
        admin,
        token,
        n,
    } = leg;
    wait_healthy(admin, 200, None).await?;
    let client = AdminClient::new(admin, token)?;
    let p = plan(args, rate, secs, PINGS_ONLY);
    let every = Duration::from_millis(args.swap_every_ms().max(1));
    let reps = args.repeat.max(1);
    let mut serving = swap::VERSION_A.to_string();
    let (mut base_runs, mut swap_runs) = (Vec::new(), Vec::new());
    let mut answers_per_run: Vec<Vec<SwapAnswer>> = Vec::new();
    let mut per_run = Vec::new();
    let base_label = "exchange, no swaps".to_string();
    let swap_label = format!("exchange, swapping every {} ms", every.as_millis());
    // Every leg, judged on its own errors like any repetition (black-box: the exchange
    // stopped 6 s in repetition 1's leg without swaps, 482 failed, exited 0 with P6 MET).
    let mut legs: Vec<Repetition> = Vec::new();
    // A leg that stops the rest (the exchange or the buyers gone) still reports the legs
    // measured before it (black-box: a p6-swap stopped partway reported nothing).
    let mut stopped = None;
    'reps: for rep in 0..reps {
        // Alternating order, so neither leg always runs on a warmer (or fuller) exchange.
        let order = if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for swapping in order {
            let leg = if swapping { "swapping" } else { "no swaps" };
            eprintln!("run {}/{reps}: exchange, {leg}, at {rate}/s", rep + 1);
            if !swapping {
                let (r, cpu) = match measure(rig, "exchange", &p, &mut report.notes).await {
                    Ok(m) => m,
                    Err(e) => {
                        stopped = Some(e);
                        break 'reps;
                    }
                };
                let mut s = summary(&r, cpu, n);
                s.label = base_label.clone();
                legs.push(Repetition::of(&s, rep + 1, false));
                base_runs.push(s);
                continue;
            }
            let other = if serving == swap::VERSION_A {
                swap::VERSION_B
            } else {
                swap::VERSION_A
            };
            let schedule = SwapSchedule::alternating(
                Duration::from_secs_f64(args.warmup_s),
                Duration::from_secs_f64(p.measure_s),
                every,
                [other, serving.as_str()],
                !args.no_reload,
            );
            let task = {
                let client = client.clone();
                let schedule = schedule.clone();
                tokio::spawn(async move { client.run_schedule(&schedule).await })
            };
            let measured = measure(rig, "exchange", &p, &mut report.notes).await;
            let (answers, (r, cpu)) = match (task.await, measured) {
                (Ok(a), Ok(m)) => (a, m),
                (Err(e), _) => {
                    stopped = Some(anyhow!("the swap task failed: {e}"));
                    break 'reps;
                }
                (_, Err(e)) => {
                    stopped = Some(e);
                    break 'reps;
                }
            };
            if let Some(v) = answers.iter().rev().find_map(|a| match &a.action {
                SwapAction::Models(v) if a.applied() => Some(v.clone()),
                _ => None,
            }) {
                serving = v;
            }
            let mut s = summary(&r, cpu, n);
            s.label = swap_label.clone();
            legs.push(Repetition::of(&s, rep + 1, false));
            swap_runs.push(s);
            answers_per_run.push(answers);
        }
        if let (Some(b), Some(s)) = (base_runs.last(), swap_runs.last()) {
            let tally = answers_per_run
                .last()
                .map(|a| SwapTally::of(a))
                .unwrap_or_default();
            per_run.push(serde_json::json!({
                "run": rep + 1,
                "p99_no_swaps_us": b.latency.p99_us,
                "p99_swapping_us": s.latency.p99_us,
                "p999_no_swaps_us": b.latency.p999_us,
                "p999_swapping_us": s.latency.p999_us,
                "failed_no_swaps": b.errors_total(),
                "failed_swapping": s.errors_total(),
                "measured_no_swaps": b.measured,
                "measured_swapping": s.measured,
                "swaps": tally.swaps,
                "swaps_applied": tally.swaps_applied,
                "reloads": tally.reloads,
                "reloads_applied": tally.reloads_applied,
            }));
        }
    }
    if let Some(e) = stopped {
        let measured = legs.len();
        for (runs, label) in [(&base_runs, &base_label), (&swap_runs, &swap_label)] {
            if let Some(m) = median_summary(runs, label) {
                note_left_out(runs, label, &mut report.notes);
                report.targets.push(m);
            }
        }
        if reps > 1 {
            report.repetitions.extend(legs);
        }
        report
            .notes
            .push("P6 NOT JUDGED: the run stopped before every leg was measured".into());
        return Err(crate::measure::stopped_early(e, measured));
    }
    let (Some(base), Some(swapping)) = (
        median_summary(&base_runs, &base_label),
        median_summary(&swap_runs, &swap_label),
    ) else {
        bail!("p6-swap: no runs");
    };
    note_left_out(&base_runs, &base_label, &mut report.notes);
    note_left_out(&swap_runs, &swap_label, &mut report.notes);
    let all: Vec<SwapAnswer> = answers_per_run.iter().flatten().cloned().collect();
    let tally = SwapTally::of(&all);
    let failed_swapping: u64 = swap_runs.iter().map(TargetSummary::errors_total).sum();
    let failed_base: u64 = base_runs.iter().map(TargetSummary::errors_total).sum();
    let d99 = swapping.latency.p99_us as i64 - base.latency.p99_us as i64;
    let d999 = swapping.latency.p999_us as i64 - base.latency.p999_us as i64;
    // The verdict's figure: each repetition's two legs ran back to back, so their
    // difference is measured in the same run (docs/PERFORMANCE.md's method), and drift of
    // the shared machine between repetitions cancels out; the median over repetitions.
    let pair = |f: fn(&TargetSummary) -> u64| {
        loadtest::report::paired_median(base_runs.iter().zip(&swap_runs).map(|(b, s)| (f(b), f(s))))
    };
    let paired99 = pair(|s| s.latency.p99_us);
    let paired999 = pair(|s| s.latency.p999_us);
    let (met, verdict) = p6_verdict(&legs, failed_swapping, paired99, &tally);
    let ms = |us: i64| us as f64 / 1000.0;
    report.notes.push(format!(
        "{n} buyers, each answering in {} ms; per-buyer timeout {} ms; {rate}/s pings, {secs} s measured per leg, {reps} run(s) of each leg (medians); swaps from the start of the measured window, every {} ms, alternating {} and {} (100 trees of depth 6 each for the realization and lead-score models){}",
        args.buyer_latency_ms,
        args.timeout_ms,
        every.as_millis(),
        swap::VERSION_A,
        swap::VERSION_B,
        if args.no_reload { "" } else { "; a configuration reload after every second swap" },
    ));
    report.notes.push(format!(
        "admin calls: model swaps {}/{} answered 200, reloads {}/{}; generations always increased: {}; slowest admin answer {:.1} ms",
        tally.swaps_applied, tally.swaps, tally.reloads_applied, tally.reloads, tally.generations_increase, tally.slowest_ms
    ));
    let pairs: Vec<String> = base_runs
        .iter()
        .zip(&swap_runs)
        .map(|(b, s)| {
            format!(
                "{:+.3}",
                ms(s.latency.p99_us as i64 - b.latency.p99_us as i64)
            )
        })
        .collect();
    report.notes.push(format!(
        "P6: p99 moved {:+.3} ms (target <= +0.5: the median over the {} repetitions of swapping leg minus the leg without swaps next to it: {}), p99.9 {:+.3} ms; failed requests while swapping {failed_swapping} (without: {failed_base}; target 0): {}",
        ms(paired99),
        pairs.len(),
        pairs.join(", "),
        ms(paired999),
        verdict
    ));
    report.notes.push(format!(
        "medians of the legs: p99 {:.3} -> {:.3} ms ({:+.3} ms), p99.9 {:.3} -> {:.3} ms ({:+.3} ms)",
        ms(base.latency.p99_us as i64),
        ms(swapping.latency.p99_us as i64),
        ms(d99),
        ms(base.latency.p999_us as i64),
        ms(swapping.latency.p999_us as i64),
        ms(d999),
    ));
    report.extra.insert(
        "p6".into(),
        serde_json::json!({
            "rate_per_s": rate,
            "measure_s": secs,
            "runs": reps,
            "swap_every_ms": every.as_millis() as u64,
            "reload": !args.no_reload,
            "p99_no_swaps_us": base.latency.p99_us,
            "p99_swapping_us": swapping.latency.p99_us,
            "p99_difference_us": d99,
            "p99_paired_difference_us": paired99,
            "p999_paired_difference_us": paired999,
            "p999_no_swaps_us": base.latency.p999_us,
            "p999_swapping_us": swapping.latency.p999_us,
            "p999_difference_us": d999,
            "failed_requests_swapping": failed_swapping,
            "failed_requests_no_swaps": failed_base,
            "swaps": tally.swaps,
            "swaps_applied": tally.swaps_applied,
            "reloads": tally.reloads,
            "reloads_applied": tally.reloads_applied,
            "slowest_admin_ms": tally.slowest_ms,
            "generations_increase": tally.generations_increase,
            "target": "p99 within +0.5 ms of the leg without swaps (the median over repetitions of each pair's difference), 0 failed requests, every swap answered 200",
            "met": met,
            "verdict": verdict,
            "per_run": per_run,
            "answers": answers_per_run,
        }),
    );
    report.targets.push(base);
    report.targets.push(swapping);
    // Under `--repeat`, each leg beside the medians, judged by `report::run_failures`
    // (a single run's legs are the rows, judged as such).
    if reps > 1 {
        report.repetitions.extend(legs);
    }
    Ok((!tally.all_applied()).then(|| {
        let bad: Vec<String> = all
            .iter()
            .filter(|a| !a.applied())
            .take(5)
            .map(|a| {
                format!(
                    "{:?} at {:.1} s: {:?} {}",
                    a.action,
                    a.at_s,
                    a.status,
                    a.error.as_deref().unwrap_or("")
                )
            })
            .collect();
        format!(
            "p6-swap: {} of {} admin calls were not answered 200, e.g. {}",
            (tally.swaps + tally.reloads) - (tally.swaps_applied + tally.reloads_applied),
            tally.swaps + tally.reloads,
            bad.join("; ")
        )
    }))
}

/// P6's verdict over its `legs` (each repetition's leg without swaps and its swapping
/// leg): whether it is met, and the word(s) the note ends with. A leg that failed past the
/// run's 1 % rule ([`Repetition::failure`]) measured a stall or a dead exchange, not the
/// swaps, so the paired difference against it is no measurement: the verdict says it could
/// not be judged, and why (black-box: a leg stopped 6 s, 482 failed, a paired difference of
/// -4995.992 ms, and P6 said MET).
pub(crate) fn p6_verdict(
    legs: &[Repetition],
    failed_swapping: u64,
    paired99: i64,
    tally: &SwapTally,
) -> (bool, String) {
    let failed: Vec<String> = legs.iter().filter_map(Repetition::failure).collect();
    if !failed.is_empty() {
        return (
            false,
            format!(
                "NOT JUDGED: {}: a leg it compares failed more than 1 % of its requests, so its difference is not a measurement of the swaps",
                failed.join("; ")
            ),
        );
    }
    let met = failed_swapping == 0
        && paired99 <= P6_P99_MARGIN_US
        && tally.all_applied()
        && tally.swaps > 0;
    (met, if met { "MET" } else { "MISSED" }.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn leg(label: &str, repetition: usize, measured: u64, errors: u64) -> Repetition {
        Repetition {
            label: label.into(),
            repetition,
            p99_us: 14_000,
            p999_us: 20_000,
            errors,
            cpu_us_per_buyer_ping: None,
            fell_behind: None,
            outcomes: Default::default(),
            measured,
            samples: None,
        }
    }

    /// Black-box: the exchange stopped 6 s in repetition 1's leg without swaps (482 of
    /// 600 failed): P6 said MET, on a paired difference that included -4995.992 ms.
    #[test]
    fn a_failed_leg_leaves_p6_not_judged() {
        let tally = SwapTally {
            swaps: 4,
            swaps_applied: 4,
            reloads: 2,
            reloads_applied: 2,
            slowest_ms: 1.0,
            generations_increase: true,
        };
        let swapping = "exchange, swapping every 250 ms";
        let ok = vec![
            leg("exchange, no swaps", 1, 600, 0),
            leg(swapping, 1, 600, 0),
            leg(swapping, 2, 600, 0),
            leg("exchange, no swaps", 2, 600, 0),
        ];
        assert_eq!(p6_verdict(&ok, 0, 100, &tally), (true, "MET".into()));
        assert_eq!(p6_verdict(&ok, 0, 600, &tally), (false, "MISSED".into()));
        let mut stalled = ok.clone();
        stalled[0].errors = 482;
        let (met, verdict) = p6_verdict(&stalled, 0, -4_995_992, &tally);
        assert!(!met);
        assert!(
            verdict.starts_with("NOT JUDGED: exchange, no swaps #1: 482 of 600 measured requests failed (80.3 %, more than 1 %)"),
            "{verdict}"
        );
        // The swapping leg's too; 1 % exactly is within the rule.
        let mut killed = ok.clone();
        killed[2].errors = 502;
        assert!(p6_verdict(&killed, 502, 0, &tally)
            .1
            .contains("exchange, swapping every 250 ms #2: 502 of 600"));
        let mut at = ok;
        at[1].errors = 6;
        assert_eq!(p6_verdict(&at, 6, 0, &tally), (false, "MISSED".into()));

        // The legs under `--repeat`, as repetitions, fail the run.
        let r = ScenarioReport {
            scenario: "p6-swap".into(),
            date: String::new(),
            commit: String::new(),
            machine: String::new(),
            notes: Vec::new(),
            targets: Vec::new(),
            added_latency_us: None,
            relay_added_latency_us: None,
            sweep: Vec::new(),
            knees: Default::default(),
            proc_samples: Vec::new(),
            extra: Default::default(),
            repetitions: stalled,
        };
        assert_eq!(loadtest::report::run_failures(&r).len(), 1);
    }
}
