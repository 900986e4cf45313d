//! What the quote book holds per open quote and per remembered finished ping (P10): heap
//! bytes and allocations, counted by a wrapper around the system allocator in this test
//! binary only. The quotes are shaped like the soak's (`loadtest run soak`): a 7-field
//! auto-insurance ping lead, `pg_` / `au_` ids of 35 bytes, five ranked bids, and, for a
//! sale, the answer a post returns.
//!
//! The bytes are what the program asked for plus about 16 per allocation (glibc's header
//! and rounding), so they are close to what the heap really uses; the map's and queues'
//! own growth (power-of-two tables) is averaged over many entries.
//!
//! Before the compact book (commit 29f200c): an open quote 1,684 B in 11 allocations, a
//! finished ping 231 B in 1 (expired) or 605 B in 6 (sold).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use pingpost_core::award::{Bid, Ranked};
use pingpost_core::config::{BuyerKey, SellerKey};
use pingpost_core::quotes::{BeginPost, Quote, QuoteBook};
use proto::seller::{PostAnswer, PostStatus};
use proto::{FieldKind, FieldSpec, Lead, LeadMode, Micros, VerticalSchema};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap: `(bytes, allocations)`, bytes as glibc holds them (each allocation costs 8
/// bytes of header and is rounded up to 16: about 16 bytes more than asked, on average).
fn live() -> (i64, i64) {
    let s = GLOBAL.stats();
    let blocks = s.allocations as i64 - s.deallocations as i64;
    let bytes = s.bytes_allocated as i64 - s.bytes_deallocated as i64;
    (bytes + 16 * blocks, blocks)
}

const T0: i64 = 1_700_000_000_000;
const TTL: i64 = 60_000;
const N: usize = 20_000;

fn schema() -> VerticalSchema {
    let f = |name: &str, kind: FieldKind, ping: bool, pii: bool| FieldSpec {
        name: name.into(),
        kind,
        required: false,
        ping,
        pii,
    };
    let text = || FieldKind::String {
        len_max: 64,
        pattern: None,
    };
    VerticalSchema {
        fields: vec![
            f("state", FieldKind::State, true, false),
            f("zip", FieldKind::Zip, true, false),
            f("age", FieldKind::Integer { min: 16, max: 120 }, true, false),
            f("homeowner", FieldKind::Boolean, true, false),
            f(
                "credit",
                FieldKind::Enum(vec![
                    "poor".into(),
                    "fair".into(),
                    "good".into(),
                    "excellent".into(),
                ]),
                true,
                false,
            ),
            f("insured", FieldKind::Boolean, true, false),
            f(
                "vehicle_year",
                FieldKind::Integer {
                    min: 1980,
                    max: 2030,
                },
                true,
                false,
            ),
            f("first_name", text(), false, true),
        ],
    }
}

fn lead(schema: &VerticalSchema, i: usize) -> Lead {
    let json = format!(
        r#"{{"state":"TX","zip":"76{:03}","age":{},"homeowner":true,"credit":"good","insured":false,"vehicle_year":2019}}"#,
        i % 1000,
        20 + i % 60
    );
    let mut b = json.into_bytes();
    let v = proto::json::parse_value(&mut b).unwrap();
    schema.validate(&v, LeadMode::Ping, "lead").unwrap()
}

/// A `pg_` id as the exchange makes them (prefix and 32 hex digits).
fn id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:032x}")
}

fn ranked(n: u32) -> Vec<Ranked> {
    // As the award leaves it: room for every bidder of 8, the kept ones first.
    let mut v = Vec::with_capacity(8);
    for b in 0..n {
        v.push(Ranked {
            bid: Bid {
                buyer: BuyerKey(b),
                price: Micros(20_000_000 - i64::from(b) * 1_000_000),
                bid_id: None,
                expires_in_ms: Some(60_000),
                fixed: false,
            },
            seller_price: Micros(16_000_000 - i64::from(b) * 800_000),
            value: 20_000_000 - i64::from(b) * 1_000_000,
            p_ppm: None,
            p_model_ppm: None,
        });
    }
    v
}

fn quote(schema: &VerticalSchema, i: usize) -> Quote {
    Quote {
        ping_id: id("pg_", i),
        auction_id: id("au_", i),
        seller: SellerKey(0),
        vertical: 0,
        vertical_name: "auto_insurance".into(),
        lead: lead(schema, i),
        test: false,
        price: Micros(16_000_000),
        currency: "USD".into(),
        expires_at: T0 + TTL,
        auctioned_at: T0,
        ranked: ranked(5),
        reservation: None,
        score: Some(70),
    }
}

fn sold(ping_id: &str, i: usize) -> PostAnswer {
    let mut a = PostAnswer::status_only(PostStatus::Sold, None);
    a.ping_id = Some(ping_id.to_string());
    a.lead_id = Some(id("ld_", i));
    a.price = Some(Micros(16_000_000));
    a.currency = Some("USD".into());
    a.buyer = Some("Lone Star Auto Insurance".into());
    a
}

/// Bytes and allocations per entry between two counts.
fn per(before: (i64, i64), after: (i64, i64)) -> (f64, f64) {
    (
        (after.0 - before.0) as f64 / N as f64,
        (after.1 - before.1) as f64 / N as f64,
    )
}

/// What the book holds per entry: `(open, expired, sold)` as `(bytes, allocations)`.
fn measure() -> [(f64, f64); 3] {
    let schema = schema();
    // Open quotes, then all expired unposted (most finished entries are these).
    let base = live();
    let book = QuoteBook::new(N * 2, 86_400_000).with_done_max(N * 2);
    for i in 0..N {
        book.insert(quote(&schema, i)).unwrap();
    }
    let open = per(base, live());
    assert!(book.sweep(T0 + TTL).is_empty());
    let expired = per(base, live());
    drop(book);
    // Every quote posted and sold.
    let base = live();
    let book = QuoteBook::new(N * 2, 86_400_000).with_done_max(N * 2);
    for i in 0..N {
        let ping_id = id("pg_", i);
        book.insert(quote(&schema, i)).unwrap();
        let BeginPost::Post(q) = book.begin_post(&ping_id, SellerKey(0), T0 + 1) else {
            panic!("not open: {ping_id}");
        };
        drop(q);
        assert!(book.finish(&ping_id, sold(&ping_id, i), T0 + 2));
    }
    let sold = per(base, live());
    drop(book);
    [open, expired, sold]
}

/// One test (the counters are process-wide: tests in parallel would disturb them).
#[test]
fn bytes_per_open_quote_and_per_finished_ping() {
    let [open, expired, sold] = measure();
    println!(
        "per open quote {:.0} B in {:.1} allocations; per finished ping: expired {:.0} B in {:.1}, sold {:.0} B in {:.1}",
        open.0, open.1, expired.0, expired.1, sold.0, sold.1
    );
    // (The fractions are the tables' own allocations, shared by all entries.)
    // An open quote: the kept quote, its packed lead and its bids (no string of its own).
    assert!(open.1 < 3.1, "{open:?}");
    assert!(open.0 < 1_000.0, "{open:?}");
    // A finished ping: nothing of its own when it expired, its answer when it was posted
    // (the rest is its share of the map and the finished order).
    assert!(expired.1 < 0.1, "{expired:?}");
    assert!(expired.0 < 220.0, "{expired:?}");
    assert!(sold.1 < 1.1, "{sold:?}");
    assert!(sold.0 < 400.0, "{sold:?}");
}
