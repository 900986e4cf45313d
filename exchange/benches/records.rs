//! The ledger's hot records: serializing one auction record (8 buyers answered, the shape
//! of a `p1-latency` auction, about 1.2 KB) and one quote hold, as `Ledger::append` does
//! (serde_json into a buffer sized up front). See BENCHMARKS.md, "Ledger records".
//! Run: `cargo bench -p pingpost --bench records`.

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use pingpost::core::auction::ModelVersions;
use pingpost::core::record::{
    AuctionRecord, BuyerLine, BuyerOutcome, Head, QuoteHoldRecord, ReasonCounts, Record,
    SkippedRecord,
};

const BUYERS: [&str; 8] = [
    "sim0_sim0",
    "sim1_sim1",
    "sim2_sim2",
    "sim3_sim3",
    "sim4_sim4",
    "sim5_sim5",
    "sim6_sim6",
    "sim7_sim7",
];

fn auction() -> Record<'static> {
    let buyers = BUYERS
        .iter()
        .enumerate()
        .map(|(i, &buyer)| BuyerLine {
            idx: i,
            buyer,
            outcome: if i == 3 {
                BuyerOutcome::NoBid
            } else {
                BuyerOutcome::Bid
            },
            bid_micros: (i != 3).then_some(8_910_000 + i as i64 * 1_000_000),
            detail: None,
            reason: None,
            took_us: Some(429_186 - i as u64 * 1_000),
            p_ppm: (i != 3).then_some(450_000),
            p_est_ppm: None,
            bx: None,
        })
        .collect();
    Record::Auction(AuctionRecord {
        head: Head::new(1, 1_796_122_979_416),
        auction_id: "au_01a23145aa627736888059d379e4b9d2",
        ping_id: "pg_01a23145aa6c71a883a23ef862f55129",
        seller: "loadtest",
        vertical: "auto_insurance",
        currency: "USD",
        test: false,
        direct: false,
        score: None,
        reserve_micros: 0,
        skipped: SkippedRecord {
            total: 0,
            by_reason: ReasonCounts([0; 5]),
            first: Vec::new(),
        },
        fanout_limited: None,
        breaker_open: None,
        pings_in_flight_full: None,
        buyers,
        winner: Some("sim2_sim2"),
        bid_micros: Some(21_620_000),
        seller_price_micros: Some(17_296_000),
        no_bid: None,
        took_us: 631_982,
        features_version: None,
        x: &[],
        models: ModelVersions::default(),
        explore: false,
        lead_fingerprint: Some("ad0fd293181662fcf78bfd0a03660757"),
        idempotency_key_sha256: None,
        body_sha256: None,
    })
}

fn hold() -> Record<'static> {
    Record::QuoteReserved(QuoteHoldRecord {
        head: Head::new(1, 1_796_122_979_484),
        ping_id: Some("pg_01a23145aa6c71a883a23ef862f55129"),
        buyer: "sim2_sim2",
        price_micros: 21_620_000,
        reason: None,
        changed_fields: &[],
        test: false,
    })
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    for (name, record) in [("auction", auction()), ("quote_reserved", hold())] {
        let mut line = Vec::with_capacity(2 * serde_json::to_vec(&record).unwrap().len());
        g.bench_function(name, |b| {
            b.iter(|| {
                line.clear();
                serde_json::to_writer(&mut line, black_box(&record)).unwrap();
                black_box(line.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, records);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
