//! What the quote book holds per open quote and per remembered finished ping (P10): heap
//! bytes and allocations, counted by a wrapper around the system allocator in this test
//! binary only, and the resident memory of the finished entries' ring before and after
//! `QuoteBook::prefault`. The quotes are shaped like the soak's (`loadtest run soak`): a
//! 7-field auto-insurance ping lead, `pg_` / `au_` ids of 35 bytes, five ranked bids, and,
//! for a sale, the answer a post returns.
//!
//! The bytes are what the program asked for plus about 16 per allocation (glibc's header
//! and rounding), so they are close to what the heap really uses; the map's and queues'
//! own growth (power-of-two tables) is averaged over many entries. A finished ping's cost
//! is its share of the ring the book reserves when it is made (a slot and its index
//! cells), measured as a book that remembers N finished pings against one that remembers
//! none after the same traffic; past the bound a finished ping takes the oldest's slot
//! and must add nothing.
//!
//! Before the compact book (commit 29f200c): an open quote 1,684 B in 11 allocations, a
//! finished ping 231 B in 1 (expired) or 605 B in 6 (sold). The compact book (commit
//! cd04a86): 870 B in 3, and 199 B in 0 (expired) or 351 B in 1 (sold), in a map that
//! grew by powers of two. The ring: 64 + 8.4 B at the default bound (250,000), reserved
//! once; nothing allocated per finished ping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::sync::Arc;

use pingpost_core::award::{Bid, Ranked};
use pingpost_core::config::{BuyerKey, SellerKey};
use pingpost_core::quotes::{
    BeginPost, Quote, QuoteBook, DONE_ENTRIES_MAX_DEFAULT, DONE_SLOT_BYTES,
};
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

fn quote(schema: &Arc<VerticalSchema>, i: usize) -> Quote {
    Quote {
        ping_id: id("pg_", i),
        auction_id: id("au_", i),
        seller: SellerKey(0),
        vertical: 0,
        vertical_name: "auto_insurance".into(),
        lead: lead(schema, i),
        // Every quote of a vertical shares its schema, as in the exchange.
        schema: Arc::clone(schema),
        test: false,
        price: Micros(16_000_000),
        currency: "USD".into(),
        expires_at: T0 + TTL,
        auctioned_at: T0,
        ranked: ranked(5),
        reservation: None,
        score: Some(70),
        dedup: Vec::new(),
        guard_epoch: 1,
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

/// Allocations made so far (never decreases).
fn allocations() -> usize {
    GLOBAL.stats().allocations
}

/// Quotes `round * N ..` put in and left to expire.
fn expire_round(schema: &Arc<VerticalSchema>, book: &QuoteBook, round: usize) {
    for i in round * N..(round + 1) * N {
        book.insert(quote(schema, i)).unwrap();
    }
    assert!(book.sweep(T0 + TTL).is_empty());
}

/// Quotes `round * N ..` put in, posted and sold; returns the allocations the `finish`
/// calls made (remembering the answers).
fn sell_round(schema: &Arc<VerticalSchema>, book: &QuoteBook, round: usize) -> usize {
    let mut made = 0;
    for i in round * N..(round + 1) * N {
        let ping_id = id("pg_", i);
        book.insert(quote(schema, i)).unwrap();
        let BeginPost::Post(q) = book.begin_post(&ping_id, SellerKey(0), T0 + 1) else {
            panic!("not open: {ping_id}");
        };
        drop(q);
        let answer = sold(&ping_id, i);
        let before = allocations();
        assert!(book.finish(&ping_id, answer, T0 + 2));
        made += allocations() - before;
    }
    // As the exchange does every second: drops the posted quotes' expiries from the heap.
    assert!(book.sweep(T0 + TTL).is_empty());
    made
}

/// What one kind of finished ping costs: `(bytes per entry, allocations per entry made
/// remembering it, bytes per entry a book that is full adds for the next rounds)`.
/// A book that remembers N of them against one that remembers none, after the same
/// traffic (so the map's and the expiry heap's own tables cancel out).
fn finished(schema: &Arc<VerticalSchema>, sell: bool) -> ((f64, f64), f64, f64) {
    let run = |done_max: usize| {
        let base = live();
        let book = QuoteBook::new(N * 2, 86_400_000).with_done_max(done_max);
        let made = if sell {
            sell_round(schema, &book, 0)
        } else {
            let before = allocations();
            expire_round(schema, &book, 0);
            allocations() - before
        };
        let held = live();
        // Past the bound: every later finished ping takes the slot of the oldest.
        for round in 1..3 {
            if sell {
                sell_round(schema, &book, round);
            } else {
                expire_round(schema, &book, round);
            }
        }
        let after = live();
        assert_eq!(book.len(), done_max);
        drop(book);
        (
            (held.0 - base.0, held.1 - base.1),
            made,
            (after.0 - held.0) as f64 / (2 * N) as f64,
        )
    };
    let (none, _, _) = run(0);
    let (all, made, past) = run(N);
    (
        per(none, all),
        if sell { made as f64 / N as f64 } else { 0.0 },
        past,
    )
}

/// Resident memory of this process (`VmRSS`), in bytes.
fn resident() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One test (the counters are process-wide: tests in parallel would disturb them).
#[test]
fn bytes_per_open_quote_and_per_finished_ping() {
    // The ring of finished entries at the default bound: reserved, not resident, until
    // `prefault` (first, before other tests' memory can be reused for it).
    let (r0, base) = (resident(), live());
    let book = QuoteBook::new(10, 86_400_000);
    let (r1, reserved) = (resident(), live());
    book.prefault();
    let r2 = resident();
    let reserved = (reserved.0 - base.0, reserved.1 - base.1);
    drop(book);
    let per_slot = reserved.0 as f64 / DONE_ENTRIES_MAX_DEFAULT as f64;
    println!(
        "a book reserves {} B in {} allocations for {DONE_ENTRIES_MAX_DEFAULT} finished pings \
         ({per_slot:.1} B each: a {DONE_SLOT_BYTES}-byte slot and its index cells)",
        reserved.0, reserved.1
    );
    const { assert!(DONE_SLOT_BYTES <= 64) };
    assert!(per_slot < 74.0, "{per_slot}");
    if let (Some(r0), Some(r1), Some(r2)) = (r0, r1, r2) {
        println!(
            "resident: +{} KB when made, +{} KB after prefault",
            (r1 - r0) / 1024,
            (r2 - r1) / 1024
        );
        assert!(r1 - r0 < 2 << 20, "made: +{} B resident", r1 - r0);
        assert!(r2 - r1 > reserved.0 * 9 / 10, "prefault: +{} B", r2 - r1);
    }

    let schema = Arc::new(schema());
    let base = live();
    let book = QuoteBook::new(N * 2, 86_400_000).with_done_max(N * 2);
    let made = live();
    for i in 0..N {
        book.insert(quote(&schema, i)).unwrap();
    }
    let open = per(made, live());
    drop(book);
    assert!(made.0 - base.0 > 0);

    let (expired, _, expired_past) = finished(&schema, false);
    let (sold, sold_allocs, sold_past) = finished(&schema, true);
    println!(
        "per open quote {:.0} B in {:.1} allocations; per finished ping (index for {N}): \
         expired {:.0} B in {:.1}, sold {:.0} B in {:.1} ({sold_allocs:.2} allocations per finish); \
         past the bound: +{expired_past:.2} B expired, +{sold_past:.2} B sold",
        open.0, open.1, expired.0, expired.1, sold.0, sold.1
    );
    // An open quote: the kept quote, its packed lead and its bids (no string of its own).
    assert!(open.1 < 3.1, "{open:?}");
    assert!(open.0 < 1_000.0, "{open:?}");
    // A finished ping: its slot and index cells (64 + 4 x 65,536 / 20,000 at this
    // bound), reserved with the book in 2 allocations; nothing of its own, expired or sold.
    assert!(expired.1 < 0.01, "{expired:?}");
    assert!(expired.0 < 80.0, "{expired:?}");
    assert!(sold.1 < 0.01, "{sold:?}");
    assert!(sold.0 < 80.0, "{sold:?}");
    assert!(sold_allocs < 0.01, "{sold_allocs}");
    // Past the bound a finished ping takes the oldest's slot: no byte more.
    assert!(expired_past.abs() < 0.5, "{expired_past}");
    assert!(sold_past.abs() < 0.5, "{sold_past}");
}
