//! P9, "parse and redact": parsing and validating a 2 KB lead and building N PII-free
//! pings (target: at most 10 µs plus 1 µs per buyer). One iteration is what the exchange
//! does per auction before any byte leaves: parse and validate the seller's body against
//! the vertical's schema, take the PII-free projection, serialize the buyer ping once,
//! then per buyer set its `tmax_ms`, make its message id and sign it (HMAC-SHA256,
//! Standard Webhooks).
//!
//! Two leads of about 2 KB: `full`, a direct post (`/v1/leads`) whose lead carries
//! personal data and post-only fields beside 16 ping fields, redacted to a ping of about
//! 500 bytes (the case P9 names); and `wide`, a ping whose 58 fields are all ping fields,
//! so each signed ping is itself 2 KB (the worst case, nothing to redact).
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

const HEAD: &str = "[server]\nledger_path = \"/dev/null\"\n[verticals.v]\ncurrency = \"USD\"\n[verticals.v.fields]\nstate = { type = \"state\", required = true, ping = true }\nzip = { type = \"zip\", required = true, ping = true }\n";
const TAIL: &str = "[sellers.s]\nkey_sha256 = \"19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176\"\nverticals = [\"v\"]\npayout = { model = \"revenue_share\", share_pct = 80 }\n[buyers.b]\nping_url = \"http://127.0.0.1:9/ping\"\npost_url = \"http://127.0.0.1:9/post\"\nsecret_env = \"S\"\nverticals = [\"v\"]\n";

/// One measured lead: its configuration, the seller's body and how it is read.
struct Case {
    name: &'static str,
    cfg: Config,
    body: Vec<u8>,
    mode: LeadMode,
}

fn load(fields: &str) -> Config {
    let text = format!("{HEAD}{fields}{TAIL}");
    load_str_with_env(&text, &|_| {
        Some("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0".into())
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `n` ping fields (strings, integers, enums, booleans) and a lead's values for them.
fn ping_fields(n: usize, fields: &mut String, lead: &mut String) {
    for i in 0..n {
        let _ = match i % 4 {
            0 => writeln!(fields, "s{i} = {{ type = \"string\", len_max = 128, ping = true }}"),
            1 => writeln!(fields, "n{i} = {{ type = \"integer\", min = 0, max = 1000000, ping = true }}"),
            2 => writeln!(fields, "e{i} = {{ type = \"enum\", values = [\"alpha\", \"beta\", \"gamma\"], ping = true }}"),
            _ => writeln!(fields, "b{i} = {{ type = \"boolean\", ping = true }}"),
        };
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
}

fn wrap(lead: &str) -> Vec<u8> {
    format!(r#"{{"vertical":"v","lead":{lead},"source":{{"sub_id":"affiliate-42"}},"test":false}}"#)
        .into_bytes()
}

/// The direct post: personal data and post-only text beside 16 ping fields.
fn full_case() -> Case {
    let (mut fields, mut lead) = (
        String::new(),
        String::from(r#"{"state":"TX","zip":"76180""#),
    );
    ping_fields(14, &mut fields, &mut lead);
    fields.push_str(concat!(
        "first_name = { type = \"string\", len_max = 64, required = true, pii = true }\n",
        "last_name = { type = \"string\", len_max = 64, required = true, pii = true }\n",
        "email = { type = \"email\", pii = true }\n",
        "phone = { type = \"phone\", required = true, pii = true }\n",
        "street_address = { type = \"string\", len_max = 128, pii = true }\n",
        "birth_date = { type = \"date\", pii = true }\n",
        "city = { type = \"string\", len_max = 64 }\n",
        "comments = { type = \"string\", len_max = 1024 }\n",
        "notes = { type = \"string\", len_max = 1024 }\n",
    ));
    lead.push_str(r#","first_name":"Maria","last_name":"Gonzalez-Whitfield","email":"maria.gonzalez-whitfield@example.com","phone":"+12145550123","street_address":"4821 Meadowbrook Lane, Apartment 12B","birth_date":"1984-06-02","city":"Fort Worth""#);
    let comments = "Prefers a call in the evening after six; currently insured with a six month policy that renews next month; two vehicles in the household and one teen driver with a permit. ".repeat(5);
    let notes = "Asked about bundling home and auto insurance; call back next week. ".repeat(5);
    let _ = write!(
        lead,
        r#","comments":"{}","notes":"{}"}}"#,
        comments.trim_end(),
        notes.trim_end()
    );
    Case {
        name: "full",
        cfg: load(&fields),
        body: wrap(&lead),
        mode: LeadMode::Full,
    }
}

/// The ping whose 58 fields all travel to buyers.
fn wide_case() -> Case {
    let (mut fields, mut lead) = (
        String::new(),
        String::from(r#"{"state":"TX","zip":"76180""#),
    );
    ping_fields(56, &mut fields, &mut lead);
    lead.push('}');
    Case {
        name: "wide",
        cfg: load(&fields),
        body: wrap(&lead),
        mode: LeadMode::Ping,
    }
}

/// One auction's pre-send work for `n` buyers; returns the bytes signed (kept alive) and
/// the size of one ping.
fn work(c: &Case, secret: &Secret, n: usize) -> (usize, usize) {
    let mut buf = c.body.to_vec();
    let req = proto::seller::parse_ping(&mut buf, c.mode, |v| {
        c.cfg.vertical(v).map(|(_, v)| &*v.schema)
    })
    .unwrap_or_else(|e| panic!("{e:?}"));
    let schema = &c.cfg.verticals[0].schema;
    let projection = req.lead.ping_projection(schema);
    let auction_id = "au_0193a1b2c3d4e5f6a7b8c9d0e1f2a3b4";
    let template = PingTemplate::new(&BuyerPing {
        auction_id,
        vertical: "v",
        lead: projection.json(schema),
        score: None,
        tmax_ms: 0,
        test: false,
    });
    let (mut signed, mut size) = (0, 0);
    for i in 0..n {
        let Some(body) = template.body(100 + i as u64) else {
            continue;
        };
        let id = message_id(auction_id, i);
        let sig = secret.sign(&id, 1_796_050_800, &body);
        size = body.len();
        signed += body.len() + sig.len();
    }
    (signed, size)
}

fn bench(c: &mut Criterion) {
    for case in [full_case(), wide_case()] {
        assert!(
            case.body.len() >= 2_000,
            "{}: {} bytes",
            case.name,
            case.body.len()
        );
        let secret = &case.cfg.buyers[0].secret;
        let mut g = c.benchmark_group(format!("{}: parse 2 KB lead + build N pings", case.name));
        for n in [0usize, 1, 8, 64] {
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
                b.iter(|| work(&case, secret, black_box(n)))
            });
        }
        g.finish();
    }
}

/// Median of single calls of `f`, in µs.
fn median_us(calls: usize, mut f: impl FnMut()) -> f64 {
    let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..calls {
        let t0 = Instant::now();
        f();
        let _ = h.record(t0.elapsed().as_nanos() as u64);
    }
    h.value_at_quantile(0.5) as f64 / 1000.0
}

/// Where the fixed cost goes: the depth pre-scan, JSON parse, parse and validation.
fn stages(c: &Case) {
    let depth = median_us(50_000, || {
        black_box(proto::json::check_depth(black_box(&c.body), 64)).unwrap();
    });
    let parse = median_us(50_000, || {
        let mut buf = c.body.to_vec();
        black_box(proto::json::parse_value(&mut buf).unwrap());
    });
    let validate = median_us(50_000, || {
        let mut buf = c.body.to_vec();
        let r = proto::seller::parse_ping(&mut buf, c.mode, |v| {
            c.cfg.vertical(v).map(|(_, v)| &*v.schema)
        });
        black_box(r.is_ok());
    });
    println!(
        "P9 {} stages (median): depth pre-scan {depth:.2} µs; pre-scan + JSON parse {parse:.2} µs; parse + envelope + schema validation {validate:.2} µs",
        c.name
    );
}

/// Single-call p99 for N = 0, 1, 8, 64 and the fitted fixed and per-buyer costs.
fn percentiles() {
    for case in [full_case(), wide_case()] {
        stages(&case);
        let secret = &case.cfg.buyers[0].secret;
        let mut p99 = Vec::new();
        for n in [0usize, 1, 8, 64] {
            let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
            let calls = if n >= 64 { 30_000 } else { 100_000 };
            let mut ping_bytes = 0;
            for i in 0..calls + 5_000 {
                let t0 = Instant::now();
                let (_, size) = black_box(work(&case, secret, black_box(n)));
                if i >= 5_000 {
                    let _ = h.record(t0.elapsed().as_nanos() as u64);
                }
                ping_bytes = size;
            }
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "P9 {}: {} B body, {ping_bytes} B ping, N = {n}: p50 {:.2} µs, p99 {:.2} µs (target {} µs)",
                case.name,
                case.body.len(),
                us(0.5),
                us(0.99),
                10 + n
            );
            p99.push((n, us(0.99)));
        }
        if let (Some(&(_, zero)), Some(&(n, top))) = (p99.first(), p99.last()) {
            println!(
                "P9 {} fit on p99: {zero:.2} µs fixed + {:.3} µs per buyer (targets 10 and 1)",
                case.name,
                (top - zero) / n as f64
            );
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
