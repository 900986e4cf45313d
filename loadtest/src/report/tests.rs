//! The report's tests: its table, judging, samples and sums.

use super::proc::count_time_wait;
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
        table.contains("* direct: fell behind the load and collapsed (2000 of 6000 buyer calls"),
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
