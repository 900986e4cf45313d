//! P7: selecting the eligible buyers for a lead among 10,000 configured (target <= 20 µs
//! p99). Criterion gives the mean; a plain loop after it gives p50/p99/p99.9 from an HDR
//! histogram of single calls (run: `cargo bench -p pingpost --bench eligibility`).
//!
//! The configurations are `pingpost::synthetic`'s: 10,000 buyers in one vertical over 50
//! states, `texas` of them taking Texas, the others with ZIP prefixes, schedules and caps
//! in four US zones. The reference scan is measured beside the index.

// A benchmark: it times single calls on the real clock, and a broken setup should stop it.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use pingpost::config::{load_str_with_env, Config};
use pingpost::core::caps::CapBook;
use pingpost::core::eligibility::{select, select_scan};
use pingpost::synthetic::{many_buyers_toml, ManyBuyers};
use proto::{Lead, LeadMode};

/// 2026-11-30 15:00 UTC, a Monday: scheduled buyers are open.
const NOW: i64 = 1_796_050_800_000;

fn setup(total: usize, texas: usize) -> (Config, CapBook, Lead) {
    let toml = many_buyers_toml(&ManyBuyers {
        total,
        texas,
        secret_env: "SYNTH_SECRET".into(),
    });
    let cfg = load_str_with_env(&toml, &|name: &str| {
        Some(format!("synthetic-secret-{name}"))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let caps = CapBook::new(cfg.buyers.len());
    let mut json = br#"{"state":"TX","zip":"76180","age":42,"homeowner":true,"credit":"good","vehicle_year":2019}"#.to_vec();
    let value = proto::json::parse_value(&mut json).unwrap();
    let lead = cfg.verticals[0]
        .schema
        .validate(&value, LeadMode::Ping, "lead")
        .unwrap_or_else(|e| panic!("{:?}", e.problems));
    (cfg, caps, lead)
}

fn bench(c: &mut Criterion) {
    for (total, texas) in [(10_000, 1), (10_000, 50), (1, 1)] {
        let (cfg, caps, lead) = setup(total, texas);
        let name = format!("{total} configured, {texas} eligible");
        c.bench_function(&format!("select (index): {name}"), |b| {
            b.iter(|| select(&cfg, 0, black_box(&lead), None, NOW, &caps))
        });
        if total > 1 {
            c.bench_function(&format!("select_scan (reference): {name}"), |b| {
                b.iter(|| select_scan(&cfg, 0, black_box(&lead), None, NOW, &caps))
            });
        }
    }
}

/// Single-call percentiles (the target is a p99), 200,000 calls after 20,000 warm-up.
fn percentiles() {
    for (total, texas) in [(10_000, 1), (10_000, 50), (1, 1)] {
        let (cfg, caps, lead) = setup(total, texas);
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for i in 0..220_000 {
            let t0 = Instant::now();
            let e = select(&cfg, 0, black_box(&lead), None, NOW, &caps);
            let ns = t0.elapsed().as_nanos() as u64;
            assert_eq!(e.ping.len(), texas);
            if i >= 20_000 {
                let _ = h.record(ns);
            }
        }
        println!(
            "P7 select, {total} configured, {texas} eligible: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs ({} calls)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
