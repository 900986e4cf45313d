//! P9: parsing and validating a 2 KB lead and building N PII-free pings (target: at
//! most 10 µs plus 1 µs per buyer). One iteration is what the exchange does per auction
//! before any byte leaves: parse and validate the seller's body against the vertical's
//! schema, project the ping lead, serialize the buyer ping once, then per buyer set its
//! `tmax_ms`, make its message id and sign it (HMAC-SHA256, Standard Webhooks).
//! Run: `cargo bench -p pingpost --bench pings`.

// A benchmark: it times single calls on the real clock, and a broken setup should stop it.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, BenchmarkId, Criterion};
use pingpost::auction::{message_id, PingTemplate};
use pingpost::config::{load_str_with_env, Config};
use proto::buyer::BuyerPing;
use proto::signing::Secret;
use proto::LeadMode;

/// A vertical with 56 ping fields (strings, integers, enums, booleans) besides state and
/// ZIP, and one buyer: enough schema for a 2 KB lead.
fn config() -> Config {
    let mut t = String::from(
        "[server]\nledger_path = \"/dev/null\"\n[verticals.wide]\ncurrency = \"USD\"\n[verticals.wide.fields]\nstate = { type = \"state\", required = true, ping = true }\nzip = { type = \"zip\", required = true, ping = true }\n",
    );
    for i in 0..56 {
        let _ = match i % 4 {
            0 => writeln!(t, "s{i} = {{ type = \"string\", len_max = 128, ping = true }}"),
            1 => writeln!(t, "n{i} = {{ type = \"integer\", min = 0, max = 1000000, ping = true }}"),
            2 => writeln!(t, "e{i} = {{ type = \"enum\", values = [\"alpha\", \"beta\", \"gamma\"], ping = true }}"),
            _ => writeln!(t, "b{i} = {{ type = \"boolean\", ping = true }}"),
        };
    }
    t.push_str("first_name = { type = \"string\", len_max = 64, pii = true }\n");
    t.push_str("[sellers.s]\nkey_sha256 = \"19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176\"\nverticals = [\"wide\"]\npayout = { model = \"revenue_share\", share_pct = 80 }\n[buyers.b]\nping_url = \"http://127.0.0.1:9/ping\"\npost_url = \"http://127.0.0.1:9/post\"\nsecret_env = \"S\"\nverticals = [\"wide\"]\n");
    load_str_with_env(&t, &|_| {
        Some("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0".into())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The seller's ping body: about 2 KB.
fn body() -> Vec<u8> {
    let mut lead = String::from(r#"{"state":"TX","zip":"76180""#);
    for i in 0..56 {
        let _ = match i % 4 {
            0 => write!(
                lead,
                r#","s{i}":"value of string field {i} with padding text so that the whole lead body comes to about two kilobytes""#
            ),
            1 => write!(lead, r#","n{i}":{}"#, 1000 + i * 37),
            2 => write!(lead, r#","e{i}":"beta""#),
            _ => write!(lead, r#","b{i}":true"#),
        };
    }
    lead.push('}');
    format!(
        r#"{{"vertical":"wide","lead":{lead},"source":{{"sub_id":"affiliate-42"}},"test":false}}"#
    )
    .into_bytes()
}

/// One auction's pre-send work for `n` buyers; returns the bytes signed (kept alive).
fn work(cfg: &Config, body: &[u8], secret: &Secret, n: usize) -> usize {
    let mut buf = body.to_vec();
    let req = proto::seller::parse_ping(&mut buf, LeadMode::Ping, |v| {
        cfg.vertical(v).map(|(_, v)| &v.schema)
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    let schema = &cfg.verticals[0].schema;
    let auction_id = "au_0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4";
    let template = PingTemplate::new(&BuyerPing {
        auction_id,
        vertical: "wide",
        lead: req.lead.json(schema),
        score: None,
        tmax_ms: 0,
        test: false,
    });
    let mut signed = 0;
    for i in 0..n {
        let Some(body) = template.body(100 + i as u64) else {
            continue;
        };
        let id = message_id(auction_id, i);
        let sig = secret.sign(&id, 1_796_050_800, &body);
        signed += body.len() + sig.len();
    }
    signed
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let body = body();
    assert!(body.len() >= 2_000, "the lead body is {} bytes", body.len());
    let secret = &cfg.buyers[0].secret;
    let mut g = c.benchmark_group("parse 2 KB lead + build N pings");
    for n in [0usize, 1, 8, 64] {
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| work(&cfg, black_box(&body), secret, n))
        });
    }
    g.finish();
}

/// Single-call p99 for N = 0, 1, 8, 64 and the fitted fixed and per-buyer costs.
fn percentiles() {
    let cfg = config();
    let body = body();
    let secret = &cfg.buyers[0].secret;
    let mut p99 = Vec::new();
    for n in [0usize, 1, 8, 64] {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let calls = if n >= 64 { 30_000 } else { 100_000 };
        for i in 0..calls + 5_000 {
            let t0 = Instant::now();
            black_box(work(&cfg, black_box(&body), secret, n));
            if i >= 5_000 {
                let _ = h.record(t0.elapsed().as_nanos() as u64);
            }
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "P9 {} B body, N = {n}: p50 {:.2} µs, p99 {:.2} µs (target {} µs)",
            body.len(),
            us(0.5),
            us(0.99),
            10 + n
        );
        p99.push((n, us(0.99)));
    }
    if let (Some(&(_, zero)), Some(&(n, top))) = (p99.first(), p99.last()) {
        println!(
            "P9 fit on p99: {zero:.2} µs fixed + {:.3} µs per buyer (targets 10 and 1)",
            (top - zero) / n as f64
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
