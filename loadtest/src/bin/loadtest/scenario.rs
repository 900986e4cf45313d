//! `loadtest run <scenario>`: sets up each scenario's rig, measures it, writes the report
//! and decides the run's exit status; `market` has its own driver in `loadtest::market`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use loadtest::gen::Mix;
use loadtest::report;
use loadtest::sim::{Latency, SimBuyerSpec};
use loadtest::swap;

use crate::{
    args::{check_args, default_duration_s, RunArgs, Scenario},
    measure::{compare_targets, measure, new_report, plan, summary, sweep, PINGS_ONLY},
    post_runs::p8_runs,
    rig::{healthy_specs, start_rig, AdminLeg, RigOpts},
    swap_legs::{p6_legs, prepare_models},
};

pub(crate) async fn run_scenario(mut args: RunArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    crate::measure::TIME_WAIT_WAIT_S
        .store(args.time_wait_wait_s, std::sync::atomic::Ordering::Relaxed);
    if args.scenario == Scenario::ManyBuyers {
        // Compared with the direct baseline only: the relay has no configuration to size.
        args.targets.retain(|t| t != "relay");
    }
    let name = match args.scenario {
        Scenario::P1Latency => "p1-latency",
        Scenario::P2Knee => "p2-knee",
        Scenario::P3Hang => "p3-hang",
        Scenario::P4FailingBuyer => "p4-failing-buyer",
        Scenario::P6Swap => "p6-swap",
        Scenario::P8Post => "p8-post",
        Scenario::Soak => "soak",
        Scenario::ManyBuyers => "many-buyers",
        Scenario::Market => "market",
    }
    .to_string();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/loadtest").join(&name));
    // Before anything is written there (black-box round 236a: a refused run had already
    // written its sims.json; 238a: an --out inside a ledger was made).
    if args.scenario != Scenario::Market {
        crate::rig::refuse_what_is_not_ours(&out)?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let exchange_bin = match &args.exchange_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pingpost"),
    };
    if !exchange_bin.exists() {
        bail!("no exchange binary at {} (build it with `cargo build --release -p pingpost`, or pass --exchange-bin)", exchange_bin.display());
    }
    if args.scenario == Scenario::Market {
        return run_market(&args, out, exchange_bin).await;
    }
    for t in &args.targets {
        if !matches!(t.as_str(), "relay" | "exchange" | "direct") {
            bail!("unknown target {t:?}: use relay, exchange or direct");
        }
    }
    let wrap: Vec<String> = args
        .wrap
        .as_deref()
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let want_exchange = args.targets.iter().any(|t| t == "exchange");
    let want_relay = args.targets.iter().any(|t| t == "relay");
    let mut report = new_report(&name);
    let sizes: Vec<usize> = match (&args.configured, args.scenario) {
        (Some(v), _) if !v.is_empty() => v.clone(),
        (_, Scenario::ManyBuyers) => vec![1, 1_000, 10_000],
        _ => Vec::new(),
    };
    let n = match args.scenario {
        Scenario::ManyBuyers => args
            .buyers
            .min(sizes.iter().copied().min().unwrap_or(1))
            .max(1),
        _ => args.buyers.max(1),
    };
    let filler = sizes.first().map_or(0, |s| s.saturating_sub(n));
    let deadline_ms = args.timeout_ms + 20;
    let rig_opts = |specs: Vec<SimBuyerSpec>,
                    want_exchange: bool,
                    want_relay: bool,
                    breaker_enabled: bool| RigOpts {
        specs,
        out: &out,
        exchange_bin: &exchange_bin,
        wrap: &wrap,
        want_exchange,
        want_relay,
        deadline_ms,
        timeout_ms: args.timeout_ms,
        breaker_enabled,
        http2: args.buyer_http2,
        seed: args.seed,
        filler_buyers: filler,
        extra_toml: String::new(),
        extra_env: Vec::new(),
        before_exchange: None,
        admin_toml: None,
    };
    // p6-swap: admin calls that were not answered 200 (the run measured, but not what
    // it was meant to); an error once the report is written.
    let mut refused: Option<String> = None;
    // What ran is reported even when a later step fails: a partial run still shows what
    // it measured.
    let outcome: anyhow::Result<()> = async {
    match args.scenario {
        Scenario::P1Latency => {
            let rate = args.rate.unwrap_or(2000.0);
            let rig = start_rig(rig_opts(healthy_specs(n, args.buyer_latency_ms), want_exchange, want_relay, true))
            .await?;
            let p = plan(&args, rate, args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario)), PINGS_ONLY);
            let r = compare_targets(&rig, &args, &p, n, &mut report).await;
            rig.stop();
            r?;
            report.notes.push(format!(
                "{n} buyers, each answering in {} ms; per-buyer timeout {} ms; {rate}/s",
                args.buyer_latency_ms, args.timeout_ms
            ));
        }
        Scenario::P2Knee => {
            let rates = args
                .rates
                .clone()
                .unwrap_or_else(|| vec![1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0]);
            let rig = start_rig(rig_opts(healthy_specs(n, args.buyer_latency_ms), want_exchange, want_relay, true))
            .await?;
            let result = sweep(&rig, &args, &rates, n, &mut report).await;
            rig.stop();
            result?;
        }
        Scenario::P3Hang => {
            let rate = args.rate.unwrap_or(2000.0);
            let mut specs = healthy_specs(n, args.buyer_latency_ms);
            for s in specs.iter_mut().take(args.hanging().min(n)) {
                s.hang_fraction = 1.0;
                s.name = format!("{}-hang", s.name);
            }
            let rig = start_rig(rig_opts(specs, want_exchange, want_relay, false))
            .await?;
            let p = plan(&args, rate, args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario)), PINGS_ONLY);
            let r = compare_targets(&rig, &args, &p, n, &mut report).await;
            rig.stop();
            r?;
            let t = args.timeout_ms;
            report.notes.push(format!("{} of {n} buyers never answer; per-buyer timeout T = {t} ms; breaker off so every auction meets the hang; targets p99 <= {} ms, p99.9 <= {} ms", args.hanging(), t + 2, t + 4));
        }
        Scenario::P4FailingBuyer => {
            let rate = args.rate.unwrap_or(2000.0);
            // First the healthy buyers alone, then with one that always times out.
            let healthy = healthy_specs(n.saturating_sub(1).max(1), args.buyer_latency_ms);
            let rig = start_rig(rig_opts(healthy.clone(), true, false, true))
            .await?;
            let p = plan(&args, rate, args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario)), PINGS_ONLY);
            let before = measure(&rig, "exchange", &p, &mut report.notes).await;
            rig.stop();
            let (before, cpu_b) = before?;
            let mut with_failing = healthy;
            let mut bad = SimBuyerSpec::healthy(
                "failing",
                Latency::Fixed {
                    ms: args.buyer_latency_ms,
                },
            );
            bad.hang_fraction = 1.0;
            with_failing.push(bad);
            let rig = start_rig(rig_opts(with_failing, true, false, true))
            .await?;
            let failing_port = rig.buyers.last().map(|b| b.addr.port()).unwrap_or(0);
            let after = measure(&rig, "exchange", &p, &mut report.notes).await;
            let tw = report::time_wait_sockets(Some(failing_port)).unwrap_or(0);
            let stats = rig.stop();
            let (after, cpu_a) = after?;
            let mut s_before = summary(&before, cpu_b, n - 1);
            s_before.label = "exchange, healthy buyers only".into();
            let mut s_after = summary(&after, cpu_a, n);
            s_after.label = "exchange, with a 100%-failing buyer".into();
            let moved = s_after.latency.p99_us as i64 - s_before.latency.p99_us as i64;
            let failing = stats
                .iter()
                .find(|s| s.name == "failing")
                .cloned()
                .unwrap_or_default();
            let secs = args.warmup_s + p.measure_s;
            let conns_per_s = failing.connections_accepted as f64 / secs;
            report.extra.insert(
                "failing_buyer_pings".into(),
                serde_json::json!(failing.pings),
            );
            report.extra.insert(
                "failing_buyer_connections_per_s".into(),
                serde_json::json!(conns_per_s),
            );
            report.extra.insert(
                "failing_buyer_time_wait_sockets".into(),
                serde_json::json!(tw),
            );
            report
                .extra
                .insert("healthy_p99_moved_us".into(), serde_json::json!(moved));
            let isolation = loadtest::p4::Isolation {
                pings: failing.pings,
                secs,
                connections_per_s: conns_per_s,
                time_wait: tw,
                p99_moved_us: moved,
            };
            report
                .extra
                .insert("p4_met".into(), serde_json::json!(isolation.met()));
            report.notes.push(isolation.note());
            report.targets.push(s_before);
            report.targets.push(s_after);
        }
        Scenario::P6Swap => {
            let rate = args.rate.unwrap_or(2000.0);
            let secs = args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario));
            let models_dir = std::path::absolute(out.join("models"))?;
            let token = format!("p6-{:032x}", rand::random::<u128>());
            let prepare = |cfg: &Path| prepare_models(&exchange_bin, cfg, &models_dir, &out);
            // The admin port is picked with the seller port, by the rig (again if taken).
            let admin_toml = |admin: SocketAddr| swap::exchange_config_extra(&models_dir, admin);
            let mut o = rig_opts(healthy_specs(n, args.buyer_latency_ms), true, false, true);
            o.admin_toml = Some(&admin_toml);
            o.extra_env = vec![(swap::ADMIN_TOKEN_ENV.to_string(), token.clone())];
            o.before_exchange = Some(&prepare);
            let rig = start_rig(o).await?;
            let admin = rig.admin.ok_or_else(|| anyhow::anyhow!("p6-swap: the exchange has no admin listener"))?;
            let r = p6_legs(
                AdminLeg { rig: &rig, args: &args, rate, secs, admin, token: &token, n },
                &mut report,
            ).await;
            rig.stop();
            if let Some(problem) = r? {
                refused = Some(problem);
            }
        }
        Scenario::P8Post => {
            let rate = args.rate.unwrap_or(1000.0);
            let secs = args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario));
            let token = format!("p8-{:032x}", rand::random::<u128>());
            // The admin port is picked with the seller port, by the rig (again if taken).
            let admin_toml = loadtest::p8::exchange_config_extra;
            let mut o = rig_opts(healthy_specs(n, args.buyer_latency_ms), true, false, true);
            o.admin_toml = Some(&admin_toml);
            o.extra_env = vec![(loadtest::p8::ADMIN_TOKEN_ENV.to_string(), token.clone())];
            let rig = start_rig(o).await?;
            let admin = rig.admin.ok_or_else(|| anyhow::anyhow!("p8-post: the exchange has no admin listener"))?;
            let r = p8_runs(
                AdminLeg { rig: &rig, args: &args, rate, secs, admin, token: &token, n },
                &mut report,
            ).await;
            rig.stop();
            r?;
        }
        Scenario::ManyBuyers => {
            let rate = args.rate.unwrap_or(1000.0);
            let p = plan(&args, rate, args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario)), PINGS_ONLY);
            let mut rows = Vec::new();
            for &size in &sizes {
                let size = size.max(n);
                let mut o = rig_opts(healthy_specs(n, args.buyer_latency_ms), true, false, true);
                o.filler_buyers = size - n;
                let rig = start_rig(o).await?;
                let pid = rig.exchange.as_ref().and_then(|(g, _)| g.pid()).unwrap_or(0);
                let idle = report::live_sample(pid, 0.0);
                let mut part = new_report(&name);
                let r = compare_targets(&rig, &args, &p, n, &mut part).await;
                let after = report::live_sample(pid, 0.0);
                rig.stop();
                // Its own notes (an exchange that exited) beside the rows taken from it.
                for note in part.notes {
                    if !report.notes.contains(&note) {
                        report.notes.push(note);
                    }
                }
                // The rows measured before a stop are reported with it (black-box: a
                // run stopped partway reported nothing of the sizes it had measured).
                for mut rep in part.repetitions {
                    rep.label = format!("{}, {size} configured", rep.label);
                    report.repetitions.push(rep);
                }
                for mut t in part.targets {
                    t.label = format!("{}, {size} configured", t.label);
                    report.targets.push(t);
                }
                r?;
                // None when the exchange was not among `--targets` (black-box: it was
                // said to add 0.000 ms).
                let added = part.added_latency_us;
                let ms = |f: fn(&report::Percentiles) -> u64| {
                    added.as_ref().map_or_else(
                        || "-".to_string(),
                        |a| format!("{:.3}", f(a) as f64 / 1000.0),
                    )
                };
                // `-` for an exchange that had exited (black-box round 82b).
                let rss = |s: &Option<report::ProcSample>| {
                    s.as_ref()
                        .map_or_else(|| "-".to_string(), |s| format!("{:.1}", s.rss_bytes as f64 / 1e6))
                };
                let cost = if added.is_some() {
                    format!(
                        "exchange adds p50 {} ms, p99 {} ms over direct",
                        ms(|a| a.p50_us),
                        ms(|a| a.p99_us)
                    )
                } else {
                    "the exchange was not measured (it is not among --targets)".to_string()
                };
                report.notes.push(format!(
                    "{size} configured ({n} eligible): {cost}; RSS {} MB idle, {} MB after the runs",
                    rss(&idle),
                    rss(&after)
                ));
                rows.push(serde_json::json!({
                    "configured": size,
                    "eligible": n,
                    "added_p50_us": added.map(|a| a.p50_us),
                    "added_p99_us": added.map(|a| a.p99_us),
                    "added_p999_us": added.map(|a| a.p999_us),
                    "rss_idle_bytes": idle.as_ref().map(|s| s.rss_bytes),
                    "rss_after_bytes": after.as_ref().map(|s| s.rss_bytes),
                }));
                // Kept after each size, so a later size's stop leaves the sizes before.
                report.extra.insert("many_buyers".into(), serde_json::json!(rows));
            }
            report.notes.push(format!(
                "{rate}/s pings, each buyer answering in {} ms; filler buyers take only states the generator never picks (goal: 10,000 configured adds < 0.1 ms over 1)",
                args.buyer_latency_ms
            ));
        }
        // Handled by `run_market` before the rig is set up.
        Scenario::Market => {}
        Scenario::Soak => {
            let rate = args.rate.unwrap_or(2000.0);
            let secs = args.duration_s.unwrap_or_else(|| default_duration_s(args.scenario));
            let rig = start_rig(rig_opts(healthy_specs(n, args.buyer_latency_ms), true, false, true))
            .await?;
            let pid = rig.exchange.as_ref().and_then(|(g, _)| g.pid()).unwrap_or(0);
            let p = plan(
                &args,
                rate,
                secs,
                Mix {
                    ping: 0.5,
                    ping_post: 0.4,
                    direct_post: 0.1,
                },
            );
            // Sampled once a second until the measured run ends, or the exchange does
            // (black-box round 82b: a killed one was sampled as 0 MB to the end).
            let (stop_sampling, stopped) = tokio::sync::oneshot::channel();
            let sampler =
                tokio::spawn(report::sample_until(pid, Duration::from_secs(1), stopped));
            let r = measure(&rig, "exchange", &p, &mut report.notes).await;
            let _ = stop_sampling.send(());
            let sampled = sampler.await.unwrap_or_default();
            rig.stop();
            let (r, cpu) = r?;
            report.targets.push(summary(&r, cpu, n));
            report.notes.extend(report::memory_note(&sampled));
            report.proc_samples = sampled.samples;
        }
    }
    Ok(())
    }
    .await;
    if let Err(e) = &outcome {
        report.notes.push(format!("the run stopped early: {e:#}"));
    }
    let json = out.join("report.json");
    let svg = out.join("report.svg");
    // A run that stopped before it measured anything (an exchange that never became
    // healthy, a refused plan) leaves the last report in `--out` as it was (black-box
    // round 125b: it was replaced by one with no targets).
    if outcome.is_err() && report.targets.is_empty() {
        eprintln!(
            "loadtest: nothing was measured; {} is left as it was",
            json.display()
        );
        return outcome;
    }
    let mut stdout = std::io::stdout();
    report::print_table(&report, &mut stdout)?;
    report::write_json(&report, &json)?;
    report::write_svg(&report, &svg)?;
    println!("\nwrote {} and {}", json.display(), svg.display());
    outcome?;
    if let Some(problem) = refused {
        bail!("{problem}");
    }
    // A target that answers errors, or collapses, is a failed measurement, whatever the
    // latency: every row and every repetition is judged (`report::run_failures`).
    let failing = report::run_failures(&report);
    if !failing.is_empty() {
        bail!(
            "targets answered errors on more than 1% of requests: {}",
            failing.join("; ")
        );
    }
    Ok(())
}

/// `loadtest run market`: see `loadtest::market`.
pub(crate) async fn run_market(
    args: &RunArgs,
    out: PathBuf,
    exchange_bin: PathBuf,
) -> anyhow::Result<()> {
    use loadtest::market::{self, report as mreport, run::run_market, world};
    let test_leads = args.test_days * args.leads_per_day;
    let opts = market::MarketOpts {
        seed: args.seed,
        learn_days: args.learn_days,
        test_days: args.test_days,
        leads_per_day: args.leads_per_day,
        drift_at_lead: if args.no_drift {
            None
        } else {
            Some(args.drift_at_lead.unwrap_or(test_leads / 2))
        },
        drift_buyer: args.drift_buyer,
        retrain_after: args.retrain_after,
        window: args.window,
        explore_share: args.explore_share,
        ping_timeout_ms: MARKET_PING_TIMEOUT_MS,
        pieces: if args.legacy {
            market::Pieces::NONE
        } else {
            market::Pieces::parse(&args.pieces).map_err(|e| anyhow!(e))?
        },
        exchange_bin,
        out: out.clone(),
    };
    let buyers = world::default_buyers();
    opts.validate(buyers.len()).map_err(|e| anyhow!(e))?;
    let world = std::sync::Arc::new(world::World::new(
        opts.seed,
        buyers,
        opts.drift_global(),
        opts.drift_buyer,
    ));
    let (run, outcome) = run_market(&opts, std::sync::Arc::clone(&world)).await;
    let mut report = mreport::build(&opts, &world, &run);
    if let Err(e) = &outcome {
        report.notes.push(format!("the run stopped early: {e:#}"));
    }
    mreport::write_all(&report, &out)?;
    println!("{}", mreport::markdown(&report));
    println!(
        "wrote {}, {} and {}",
        out.join("report.json").display(),
        out.join("report.md").display(),
        out.join("report.svg").display()
    );
    outcome
}

/// The market's buyers' `ping_timeout_ms`: generous, so that a slow moment of a shared
/// machine does not turn a bid into a timeout on one leg and not on another.
pub(crate) const MARKET_PING_TIMEOUT_MS: u64 = 500;
