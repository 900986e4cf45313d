//! The market report from a synthetic run: ratios, targets met or missed, the drift
//! recovery, per-day figures, and the three files (JSON, markdown, SVG).

use std::path::PathBuf;

use loadtest::market::accounting::{replay_lead, Rank};
use loadtest::market::config::Leg;
use loadtest::market::report::{build, per_day, write_all};
use loadtest::market::run::MarketRun;
use loadtest::market::world::{default_buyers, lead, World};
use loadtest::market::{MarketOpts, Pieces};

#[test]
fn a_synthetic_run_reports_ratios_targets_and_recovery() {
    let opts = MarketOpts {
        seed: 4,
        learn_days: 1,
        test_days: 4,
        leads_per_day: 100,
        drift_at_lead: Some(200),
        drift_buyer: 1,
        retrain_after: 300,
        window: 50,
        explore_share: 0.05,
        ping_timeout_ms: 500,
        pieces: Pieces::ALL,
        exchange_bin: PathBuf::from("pingpost"),
        out: std::env::temp_dir().join(format!("market-report-{:016x}", rand::random::<u64>())),
    };
    std::fs::create_dir_all(&opts.out).unwrap();
    let world = World::new(opts.seed, default_buyers(), opts.drift_global(), 1);
    let test = opts.learn_leads()..opts.learn_leads() + opts.test_leads();
    let replay = |rank| -> Vec<_> {
        test.clone()
            .map(|i| replay_lead(&world, i, &lead(world.seed, i).features, rank))
            .collect()
    };
    let price = replay(Rank::Price);
    let oracle = replay(Rank::TrueEv);
    // "EV": the oracle's outcomes, except that it sells nothing for 60 leads after the
    // drift.
    let ev: Vec<_> = oracle
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if (200..260).contains(&i) {
                loadtest::market::accounting::LeadOutcome {
                    lead: o.lead,
                    ..Default::default()
                }
            } else {
                *o
            }
        })
        .collect();
    let run = MarketRun {
        learning: replay(Rank::Price)[..100].to_vec(),
        held_out: vec![(Leg::Price, price), (Leg::Ev, ev), (Leg::Oracle, oracle)],
        trained_version: Some("v1".into()),
        ..MarketRun::default()
    };
    let r = build(&opts, &world, &run);
    let evp = r.ev_over_price.unwrap();
    let evo = r.ev_over_oracle.unwrap();
    assert!(evp > 1.0, "{evp}");
    assert!(evo < 1.0 && evo > 0.8, "{evo}");
    assert_eq!(r.targets[0].met, Some(evp >= 1.25));
    assert_eq!(r.targets[1].met, Some(evo >= 0.95));
    let rec = r.recovery.as_ref().unwrap();
    assert!(rec.dipped);
    assert_eq!(rec.min_ratio_after_drift.map(|m| m < 0.2), Some(true));
    // The 60 empty leads leave every window after 260 + ~5 leads above 0.9.
    let back = rec.recovered_after_leads.unwrap();
    assert!((60..=120).contains(&back), "{back}");
    assert_eq!(r.targets[2].met, Some(true));
    assert_eq!(r.versus_replay["price / replay price"], 1.0);
    assert_eq!(r.versus_replay["oracle / replay true_ev"], 1.0);
    assert!(r.versus_replay["ev / replay true_ev"] < 1.0);
    assert_eq!(r.by_day["ev"].len(), 4);
    assert_eq!(r.by_day["learning"].len(), 1);
    assert!(r.rolling.contains_key("replay_true_ev"));
    write_all(&r, &opts.out).unwrap();
    let md = std::fs::read_to_string(opts.out.join("report.md")).unwrap();
    assert!(
        md.contains("| oracle |") && md.contains("EV / oracle"),
        "{md}"
    );
    let svg = std::fs::read_to_string(opts.out.join("report.svg")).unwrap();
    for label in ["price", "ev", "oracle", "drift"] {
        assert!(
            svg.contains(&format!(">\n{label}\n<")),
            "{label} in the legend"
        );
    }
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(opts.out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["recovery"]["recovered_after_leads"], back);
    let _ = std::fs::remove_dir_all(&opts.out);
}

#[test]
fn per_day_averages_each_day() {
    let o = |dollars: i64| loadtest::market::accounting::LeadOutcome {
        sold: true,
        kept: true,
        price_micros: dollars * 1_000_000,
        ..Default::default()
    };
    let outs = [o(10), o(20), o(30), o(0), o(6)];
    assert_eq!(per_day(&outs, 2), vec![15.0, 15.0, 6.0]);
}
