//! What the sold-lead index (`POST /v1/dispositions`, P10) holds per remembered sale:
//! heap bytes, counted by a wrapper around the system allocator in this test binary only,
//! and resident memory (Linux). The sales are shaped like the soak's: `ld_` / `au_` ids
//! of 35 bytes, a handful of buyers, one seller, vertical and currency.
//!
//! The index reserves its ring of 64-byte slots and its index of `u32` slot numbers when
//! it is made (zeroed, so untouched pages are not resident); a sale of the exchange's
//! shape allocates nothing, so the heap is flat past the bound. Run with `--nocapture` to
//! see the figures.
//!
//! Before the ring (a map and an order queue, commit 80d69c5): 104 bytes of map slot and
//! 24 of queue slot per sale, with power-of-two growth (about 128-256 B per sale, in
//! steps).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;

use pingpost::config::BuyerKey;
use pingpost::dispositions::{SoldLead, SoldLeads};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Live heap: `(bytes, allocations)`, the bytes asked for.
fn live() -> (i64, i64) {
    let s = GLOBAL.stats();
    let blocks = s.allocations as i64 - s.deallocations as i64;
    let bytes = s.bytes_allocated as i64 - s.bytes_deallocated as i64;
    (bytes, blocks)
}

/// Resident memory of this process in bytes (Linux), if known.
#[cfg(target_os = "linux")]
fn resident() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

const MAX: usize = 100_000;

fn id(prefix: &str, i: usize) -> String {
    format!("{prefix}0192f3a4b5c6d7e8{i:016x}")
}

fn sale(i: usize) -> SoldLead {
    let buyer = i % 8;
    SoldLead {
        buyer_key: Some(BuyerKey(buyer as u32)),
        buyer: format!("buyer-{buyer}"),
        seller: "seller-1".into(),
        vertical: "auto_insurance".into(),
        auction_id: id("au_", i),
        currency: "USD".into(),
        bid_micros: 18_000_000,
        seller_price_micros: 14_400_000,
        margin_micros: 3_600_000,
        sold_at: 1_700_000_000_000 + i as i64,
        test: false,
        seen: 0,
        pending: 0,
        refunded: false,
    }
}

#[test]
fn bytes_per_sale_reserved_once_and_flat_past_the_bound() {
    // Resident memory: a 1,000,000-sale index costs nothing until used or prefaulted. First,
    // while the allocator's memory is fresh: glibc's `calloc` clears (so touches) memory it
    // reuses, which the 8 MB index can be once freed memory of that size is about; the
    // 64 MB ring is always mapped fresh.
    #[cfg(target_os = "linux")]
    if let Some(before) = resident() {
        let big = SoldLeads::new(1_000_000);
        let made = resident().unwrap_or(before);
        big.prefault();
        let faulted = resident().unwrap_or(before);
        println!(
            "SoldLeads::new(1,000,000): {:+.1} MB resident when made, {:+.1} MB after prefault",
            (made - before) as f64 / 1e6,
            (faulted - before) as f64 / 1e6
        );
        assert!(made - before < 8_000_000, "{}", made - before);
        assert!(faulted - before > 64_000_000, "{}", faulted - before);
    }

    // Nothing is printed until every figure is taken (printing allocates).
    let empty = live();
    let idx = SoldLeads::new(MAX);
    let made = live();

    for i in 0..MAX {
        idx.insert(&id("ld_", i), sale(i));
    }
    let full = live();
    for i in MAX..4 * MAX {
        idx.insert(&id("ld_", i), sale(i));
    }
    let cycled = live();
    // Answers as booleans: a kept copy would count as heap.
    let forgotten = idx.get(&id("ld_", 3 * MAX - 1)).is_none();
    let newest = idx.get(&id("ld_", 4 * MAX - 1)) == Some(sale(4 * MAX - 1));

    // Ids of another shape go to the side table, bounded by the ring: one entry per slot.
    for i in 0..3 * MAX {
        idx.insert(&format!("ld_{i}"), sale(i));
    }
    let side = live();
    for i in 3 * MAX..6 * MAX {
        idx.insert(&format!("ld_{i}"), sale(i));
    }
    let side_again = live();
    // Sales of the exchange's shape free them again.
    for i in 0..MAX {
        idx.insert(&id("ld_", 10 * MAX + i), sale(i));
    }
    let back = live();
    let len = idx.len();
    drop(idx);
    let dropped = live();
    // A bound of 1,000,000 (the default until 2026-11-30), made and dropped: what it reserves.
    let default = SoldLeads::new(1_000_000);
    let default_made = live();
    drop(default);

    let per_sale = |bytes: i64| bytes as f64 / MAX as f64;
    let reserved = made.0 - empty.0;
    println!(
        "sold-lead index for {MAX} sales: {reserved} B reserved at construction in {} allocations = {:.1} B per sale",
        made.1 - empty.1,
        per_sale(reserved)
    );
    let default_reserved = default_made.0 - dropped.0;
    println!(
        "sold-lead index for 1,000,000 sales: {default_reserved} B reserved = {:.1} B per sale",
        default_reserved as f64 / 1e6
    );
    println!(
        "after {MAX} sales: {:+} B in {:+} allocations (the 8 shared name sets)",
        full.0 - made.0,
        full.1 - made.1
    );
    println!(
        "after {} more sales past the bound: {:+} B, {:+} allocations",
        3 * MAX,
        cycled.0 - full.0,
        cycled.1 - full.1
    );
    println!(
        "the ring cycled with ids of another shape: {:+} B ({:.1} B per sale) in the side table; {} more: {:+} B, {:+} allocations",
        side.0 - cycled.0,
        per_sale(side.0 - cycled.0),
        3 * MAX,
        side_again.0 - side.0,
        side_again.1 - side.1
    );
    println!(
        "the ring refilled with the exchange's ids: {:+} B, {:+} allocations against the full ring (the side table's buckets stay)",
        back.0 - full.0,
        back.1 - full.1
    );

    // 64 B a slot, 4 B an index entry (twice `max`, rounded up to a power of two), and the
    // name-set table (fixed, about 1.1 MB: its index and room for its 16,384 sets, a lot
    // per sale at 100,000, little at 1,000,000).
    assert!(per_sale(reserved) < 90.0, "{reserved}");
    assert!((default_reserved as f64) / 1e6 < 75.0, "{default_reserved}");
    assert!(full.0 - made.0 < 4_096, "{}", full.0 - made.0);
    assert_eq!(cycled, full, "past the bound a sale allocates nothing");
    assert_eq!(len, MAX);
    assert!(forgotten);
    assert!(newest);
    assert!(per_sale(side_again.0 - cycled.0) < 400.0);
    assert_eq!(side_again.1, side.1, "one side entry per slot, no more");
    assert_eq!(back.1, full.1 + 1, "only the side table's buckets stay");
    assert_eq!(dropped, empty);
}
