use super::*;
use crate::ledger::segments;

/// An epoch of the records `(generation, vertical, models)` in ledger order (an empty
/// vertical: a record that is not an auction); ordinals count from 0.
fn epoch(records: &[(u64, &str, &str)]) -> Epoch {
    let mut e = Epoch::new((0, "seq 0".into()), 0);
    for (at, (g, v, m)) in records.iter().enumerate() {
        let seen = e.record(*g, at, || format!("seq {at}")).unwrap();
        if !v.is_empty() {
            let models: serde_json::Value = serde_json::from_str(m).unwrap();
            seen.saw(v, Some(&models).filter(|m| !m.is_null()));
        }
    }
    e
}

/// Round 86b: after thousands of reloads the summary named every generation.
#[test]
fn the_earlier_sales_name_a_bounded_number_of_generations_and_count_the_rest() {
    let mut earlier = BTreeMap::new();
    for g in 1..=400u64 {
        earlier.insert((1, g), (2, u64::from(g % 2 == 0)));
    }
    let line = earlier_sales_named(&earlier, name_starts(&earlier, 1));
    assert!(
        line.starts_with("2 of generation 1, 2 of generation 2, 1 of them test, "),
        "{line}"
    );
    assert_eq!(
        line.matches(" of generation ").count(),
        EARLIER_GENERATIONS_NAMED_MAX
    );
    // 392 generations more, 784 sales, half of the generations with a test sale.
    assert!(
        line.ends_with(", and 784 of 392 more generations, 196 of them test"),
        "{line}"
    );
    assert!(line.len() < 300, "{} bytes: {line}", line.len());

    // At the bound, every generation is named and nothing is counted together.
    let few: BTreeMap<_, _> = earlier
        .into_iter()
        .take(EARLIER_GENERATIONS_NAMED_MAX)
        .collect();
    let line = earlier_sales_named(&few, name_starts(&few, 1));
    assert_eq!(
        line.matches(" of generation ").count(),
        EARLIER_GENERATIONS_NAMED_MAX
    );
    assert!(!line.contains("more"), "{line}");

    // One past it, named by start when there were several.
    let mut two_starts = few;
    two_starts.insert((2, 1), (5, 0));
    let line = earlier_sales_named(&two_starts, name_starts(&two_starts, 2));
    assert!(
        line.starts_with("2 of generation 1 after start 1, "),
        "{line}"
    );
    assert!(
        line.ends_with(", and 5 of 1 more generation (counted per start)"),
        "{line}"
    );
    // Round 111a: generation 1 of many starts, the rest counted per start.
    let starts: BTreeMap<_, _> = (1..=11).map(|s| ((s, 1), (3, 0))).collect();
    let line = earlier_sales_named(&starts, name_starts(&starts, 12));
    assert!(
        line.ends_with(
            ", and 9 of 3 more generations (counted per start: a number after two starts is two)"
        ),
        "{line}"
    );

    // Round 110c: earlier sales all after one start, the latest run after another: each
    // is named by its start, so one generation number never names two runs unsaid.
    let one_start: BTreeMap<_, _> = [((1, 4), (80, 0)), ((1, 5), (400, 0))].into();
    assert!(!name_starts(&one_start, 1));
    assert!(name_starts(&one_start, 2));
    assert_eq!(
        earlier_sales_named(&one_start, name_starts(&one_start, 2)),
        "80 of generation 4 after start 1, 400 of generation 5 after start 1"
    );
}

/// Round 79a: a run goes back over model swaps, and stops at anything the ledger
/// cannot tell from a reload.
#[test]
fn the_latest_run_goes_back_over_model_swaps_only() {
    let m1 = r#"{"realization":"m1"}"#;
    let m2 = r#"{"realization":"m2"}"#;
    let at = |records: &[(u64, &str, &str)]| epoch(records).latest_run().0 .0;
    // No model, then m1, then m2 (a vertical with auctions on both sides): one run.
    let swaps = [(1, "v", "null"), (2, "v", m1), (2, "v", m1), (3, "v", m2)];
    assert_eq!(epoch(&swaps).latest_run(), ((0, "seq 0".into()), 1));
    // The same models on both sides: a reload.
    assert_eq!(at(&[(1, "v", m1), (2, "v", m1)]), 1);
    // A generation skipped (a reload or swap with no auction between): not joined.
    assert_eq!(at(&[(1, "v", m1), (3, "v", m2)]), 1);
    // Other models only for a vertical without auctions before: cannot tell.
    assert_eq!(at(&[(1, "u", m1), (2, "v", m2), (2, "u", m1)]), 1);
    // The swap is judged by the last auction before and the first after it.
    assert_eq!(
        at(&[(1, "v", m2), (1, "v", m1), (2, "v", m1), (2, "v", m2)]),
        2
    );
    // A run of swaps stops at the reload before it.
    let chain = [(1, "v", m1), (2, "v", m1), (3, "v", m2), (4, "v", m1)];
    assert_eq!(epoch(&chain).latest_run(), ((1, "seq 1".into()), 2));
    assert_eq!(epoch(&chain).newest(), 4);
}

/// Black-box round 119a: under load, records of neighbouring generations interleave (an
/// auction decided under generation 24 written after a post under 25), and each change
/// of number in the ledger was taken for a reload: after 24 swaps, only the last two
/// generations' sales had their payouts re-checked. Records are grouped by generation.
#[test]
fn records_of_neighbouring_generations_interleaved_are_one_run_of_swaps() {
    let m1 = r#"{"realization":"m1"}"#;
    let m2 = r#"{"realization":"m2"}"#;
    let mut records = vec![(1, "v", m1)];
    for g in 2..=25u64 {
        let (before, now) = if g % 2 == 0 { (m1, m2) } else { (m2, m1) };
        // A post of the new generation (no auction), then a late auction of the one
        // before, then the new generation's auctions.
        records.push((g, "", "null"));
        records.push((g - 1, "v", before));
        records.push((g, "v", now));
    }
    let e = epoch(&records);
    assert_eq!(e.latest_run(), ((0, "seq 0".into()), 1));
    assert_eq!(e.newest(), 25);
    // A generation whose first record comes after the next one's (its auctions all late).
    let late = epoch(&[(1, "v", m1), (3, "", "null"), (2, "v", m2), (3, "v", m1)]);
    assert_eq!(late.latest_run(), ((0, "seq 0".into()), 1));
    // A reload among them still begins a run: the same models on both sides.
    let reload = epoch(&[(1, "v", m1), (2, "", "null"), (1, "v", m1), (2, "v", m1)]);
    assert_eq!(reload.latest_run(), ((1, "seq 1".into()), 2));
}

/// An epoch keeps a bounded number of generations: past the bound, those before its
/// latest run go, then the oldest, and their late records are let go.
#[test]
fn an_epoch_keeps_a_bounded_number_of_generations() {
    let m1 = r#"{"realization":"m1"}"#;
    let mut e = Epoch::new((0, "seq 0".into()), 0);
    // Reloads only (the same models): each generation is a run of its own.
    for g in 0..(3 * EPOCH_GENERATIONS_MAX as u64) {
        let models: serde_json::Value = serde_json::from_str(m1).unwrap();
        e.record(g, g as usize, String::new)
            .unwrap()
            .saw("v", Some(&models));
        assert!(e.gens.len() <= EPOCH_GENERATIONS_MAX);
    }
    let newest = 3 * EPOCH_GENERATIONS_MAX as u64 - 1;
    assert_eq!(e.latest_run().1, newest);
    assert!(e.floor > 0);
    assert!(e.record(0, 0, String::new).is_none(), "let go");
}

/// Writes `records` as a framed segment in a fresh directory.
fn ledger(records: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = segments::frame_all(records);
    std::fs::write(dir.path().join(segments::segment_name(1)), out).unwrap();
    dir
}

const AUCTION: &str = r#"{"type":"auction","v":3,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","test":false,"direct":false,"reserve_micros":1000000,"skipped":{"total":0,"by_reason":{}},"buyers":[{"buyer":"b","outcome":"bid","bid_micros":10000000}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}"#;
const SALE: &str = r#"{"type":"sale","v":3,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_b","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0}"#;

/// Black-box round 222b: `pingpost train` (and every background retraining) checks the
/// reconciliation with no `upto`; a sale appended by the running exchange between the
/// reconciliation's reading and its report's made the report count one sale more, and
/// a sound ledger "does not reconcile" under any traffic. The report stops where the
/// first reading stopped.
#[test]
fn a_sale_appended_between_the_readings_is_not_a_mismatch() {
    let auction_2 = AUCTION.replace("au_1", "au_2").replace("pg_1", "pg_2");
    let sale_2 = SALE
        .replace("au_1", "au_2")
        .replace("pg_1", "pg_2")
        .replace("ld_b", "ld_c");
    let dir = ledger(&[AUCTION, SALE]);
    let seg = dir.path().join(segments::segment_name(1));
    let appended = || {
        // The same two records as a longer ledger frames them: its lines 3 and 4.
        let all = segments::frame_all([AUCTION, SALE, &auction_2, &sale_2]);
        std::fs::write(&seg, all).unwrap();
    };
    let r = reconcile_between(dir.path(), None, None, appended).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    assert_eq!(r.totals["USD"].0, 1, "what the first reading saw");
    // The next reading sees both.
    let all = reconcile(dir.path(), None).unwrap();
    assert!(all.mismatches.is_empty(), "{:?}", all.mismatches);
    assert_eq!(all.totals["USD"].0, 2);
    assert!(crate::models::train::check_reconciles(dir.path()).is_ok());
}

/// `ledger verify` reads a running exchange's ledger several times: the chain check,
/// the reconciliation, the report it checks the sales against. A sale appended between
/// two readings made it fail a ledger that reconciles (black-box round 19); every
/// reading now stops at the last record the chain check saw.
#[test]
fn every_reading_stops_at_the_record_the_chain_check_saw_last() {
    let auction_2 = AUCTION.replace("au_1", "au_2").replace("pg_1", "pg_2");
    let sale_2 = SALE
        .replace("au_1", "au_2")
        .replace("pg_1", "pg_2")
        .replace("ld_b", "ld_c");
    let dir = ledger(&[AUCTION, SALE, &auction_2, &sale_2]);
    let r = reconcile_upto(dir.path(), None, Some(2)).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    assert_eq!(r.totals["USD"].0, 1, "the sale after seq 2 is not read");
    let all = reconcile(dir.path(), None).unwrap();
    assert!(all.mismatches.is_empty(), "{:?}", all.mismatches);
    assert_eq!(all.totals["USD"].0, 2);
    // The scan of deliveries stops there too.
    let records = |upto| {
        crate::recovery::Scan::of_dir(dir.path(), upto)
            .unwrap()
            .records
    };
    assert_eq!(records(Some(2)), 2);
    assert_eq!(records(Some(9)), 4);
    assert_eq!(records(None), 4);
    assert_eq!(records(Some(0)), 0);
}

/// Black-box round 50: a sale's `bid_micros` (and its margin) changed and the chain
/// rewritten passed, though its auction and its `post_sent` held the true price.
#[test]
fn a_sale_charging_other_than_the_bid_it_was_sent_at_is_a_mismatch() {
    let sent = r#"{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_b","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":10000000,"test":false}"#;
    let r = reconcile(ledger(&[AUCTION, sent, SALE]).path(), None).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    let more = SALE
        .replace(r#""bid_micros":10000000"#, r#""bid_micros":11000000"#)
        .replace(r#""margin_micros":2000000"#, r#""margin_micros":3000000"#);
    let r = reconcile(ledger(&[AUCTION, sent, &more]).path(), None).unwrap();
    assert_eq!(r.mismatches.len(), 3, "{:?}", r.mismatches);
    assert!(r.mismatches[0].contains(
            "bid_micros 11000000 differs from the price its delivery was sent at (post_sent, attempt 0: 10000000)"
        ), "{:?}", r.mismatches);
    assert!(
        r.mismatches[1].contains(
            "bid_micros 11000000 differs from the winning bid the auction recorded (10000000)"
        ),
        "{:?}",
        r.mismatches
    );
    assert!(
        r.mismatches[2]
            .contains("bid_micros 11000000 differs from the buyer's bid in its auction (10000000)"),
        "{:?}",
        r.mismatches
    );
    assert!(r.failed());
}

/// Black-box round 208a: a sale moved ahead of its auction and its delivery's
/// `post_sent` (the chain recomputed) reconciled; each is written before the sale.
#[test]
fn a_sale_before_its_auction_or_its_delivery_is_a_mismatch() {
    let sent = r#"{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_b","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":10000000,"test":false}"#;
    let r = reconcile(ledger(&[AUCTION, sent, SALE]).path(), None).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    let r = reconcile(ledger(&[AUCTION, SALE, sent]).path(), None).unwrap();
    assert_eq!(r.mismatches.len(), 1, "{:?}", r.mismatches);
    assert!(
        r.mismatches[0]
            .contains("the sale comes before its delivery's record (post_sent, attempt 0)"),
        "{:?}",
        r.mismatches
    );
    let r = reconcile(ledger(&[SALE, AUCTION, sent]).path(), None).unwrap();
    assert_eq!(r.mismatches.len(), 2, "{:?}", r.mismatches);
    assert!(
        r.mismatches[1].contains("the sale comes before its auction's record"),
        "{:?}",
        r.mismatches
    );
    assert!(r.failed());
}

/// Black-box round 51: a fallback's sale relabelled as the winner's attempt at the
/// winner's bid, and a fallback's sale with its bid forged and its `post_sent`
/// removed (each with the chain rewritten), passed. A sale is checked against the
/// delivery's buyer, the auction's winner (attempt 0), and the buyer's own bid in
/// the auction, whatever its attempt.
/// Black-box round 57a: a sale's `test` flipped (its money left the report, and the
/// start left it out of the caps), its `seller` changed to another seller, or its
/// `windows` moved to yesterday (freeing today's budget), each with the chain
/// rewritten, passed `verify`. The sale must say what its delivery and its auction
/// say.
#[test]
fn a_sale_whose_test_seller_or_windows_differ_from_its_delivery_is_a_mismatch() {
    let w = r#""windows":{"hour_start_ms":1796288400000,"day":739953,"week":105707,"month":24291}"#;
    let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"b","outcome":"bid","bid_micros":10000000}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}"#;
    let sent = format!(
        r#"{{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_1","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":10000000,"test":false,{w}}}"#
    );
    let sale = format!(
        r#"{{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0,{w}}}"#
    );
    let r = reconcile(ledger(&[auction, &sent, &sale]).path(), None).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    for (forged, said) in [
            (
                sale.replace(r#""test":false"#, r#""test":true"#),
                vec![
                    "test is true, but its delivery (post_sent, attempt 0) was not a test lead's",
                    "test is true, but its auction was not a test lead's",
                ],
            ),
            (
                sale.replace(r#""seller":"s""#, r#""seller":"s2""#),
                vec![
                    "its delivery (post_sent, attempt 0) was of seller s's lead, not of the seller the sale pays",
                    "its auction was seller s's, not the seller the sale pays",
                ],
            ),
            (
                sale.replace(r#""day":739953"#, r#""day":739952"#),
                vec!["its cap windows differ from those its delivery was sent in (post_sent, attempt 0)"],
            ),
        ] {
            let r = reconcile(ledger(&[auction, &sent, &forged]).path(), None).unwrap();
            let all = r.mismatches.join("\n");
            for s in said {
                assert!(all.contains(s), "{s}: {all}");
            }
        }
}

/// Black-box round 227c: a real sale made a test lead on every record of it (its
/// auction, delivery and sale), the chain recomputed, passed `verify` and left the report
/// without a word: its quote's hold on the buyer's caps (`quote_reserved`) and its sale's
/// cap windows, which a test lead never has, say otherwise.
#[test]
fn a_real_sale_made_a_test_lead_on_every_record_is_a_mismatch() {
    let w =
        r#","windows":{"hour_start_ms":1796288400000,"day":739953,"week":105707,"month":24291}"#;
    let records = |test: bool, hold: bool, windows: &str| {
        let mut r = vec![
            format!(
                r#"{{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":{test},"direct":false,"reserve_micros":1000000,"buyers":[{{"buyer":"b","outcome":"bid","bid_micros":10000000}}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}}"#
            ),
            format!(
                r#"{{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_1","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":10000000,"test":{test}{windows}}}"#
            ),
            format!(
                r#"{{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":{test},"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0{windows}}}"#
            ),
        ];
        if hold {
            r.insert(
                1,
                r#"{"type":"quote_reserved","v":5,"generation":1,"at":"2026-11-29T10:00:00.001Z","ping_id":"pg_1","buyer":"b","price_micros":10000000}"#.to_string(),
            );
        }
        r
    };
    let check = |lines: Vec<String>| {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        reconcile(ledger(&refs).path(), None)
            .unwrap()
            .mismatches
            .join("\n")
    };
    // As written: a real sale with its hold and windows; a test sale with neither.
    assert_eq!(check(records(false, true, w)), "");
    assert_eq!(check(records(true, false, "")), "");
    let forged = check(records(true, true, w));
    assert!(
        forged.contains("test is true, but its quote held a buyer's caps")
            && forged.contains("quote_reserved), which a test lead's never does")
            && forged.contains("test is true, but it counts in cap windows"),
        "{forged}"
    );
    let hold_only = check(records(true, true, ""));
    assert!(
        hold_only.contains("but its quote held a buyer's caps"),
        "{hold_only}"
    );
    assert!(!hold_only.contains("cap windows"), "{hold_only}");
}

#[test]
fn a_fallback_sale_forged_as_the_winner_or_without_its_delivery_is_a_mismatch() {
    let auction = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"w","outcome":"bid","bid_micros":6000000},{"buyer":"f","outcome":"bid","bid_micros":5800000}],"winner":"w","bid_micros":6000000,"seller_price_micros":4800000,"took_us":5}"#;
    let sent = |buyer: &str, attempt: u32, price: i64| {
        format!(
            r#"{{"type":"post_sent","v":5,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"{buyer}","attempt":{attempt},"price_micros":{price},"test":false}}"#
        )
    };
    let rejected = r#"{"type":"post_attempt","v":5,"generation":1,"at":"2026-11-29T10:00:01.100Z","lead_id":"ld_1","auction_id":"au_1","buyer":"w","attempt":0,"outcome":"rejected"}"#;
    let sale = |attempt: u32, bid: i64| {
        format!(
            r#"{{"type":"sale","v":5,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"f","vertical":"v","currency":"USD","test":false,"bid_micros":{bid},"seller_price_micros":4800000,"margin_micros":{},"attempt":{attempt}}}"#,
            bid - 4_800_000
        )
    };
    let (w0, f1) = (sent("w", 0, 6_000_000), sent("f", 1, 5_800_000));
    // The honest fallback sale reconciles.
    let honest = sale(1, 5_800_000);
    let r = reconcile(ledger(&[auction, &w0, rejected, &f1, &honest]).path(), None).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    // Relabelled as attempt 0 at the winner's bid.
    let relabelled = sale(0, 6_000_000);
    let r = reconcile(
        ledger(&[auction, &w0, rejected, &f1, &relabelled]).path(),
        None,
    )
    .unwrap();
    let all = r.mismatches.join("\n");
    assert!(
        all.contains(
            "attempt 0 was sent to buyer w (post_sent), not to the buyer the sale charges"
        ),
        "{all}"
    );
    assert!(all.contains("the auction's winner is buyer w"), "{all}");
    assert!(
        all.contains("bid_micros 6000000 differs from the buyer's bid in its auction (5800000)"),
        "{all}"
    );
    // Its bid forged and its delivery's record removed.
    let forged = sale(1, 7_000_000);
    let r = reconcile(ledger(&[auction, &w0, rejected, &forged]).path(), None).unwrap();
    let all = r.mismatches.join("\n");
    // Round 52: the missing record is named too, and so is a sale on an attempt the
    // ledger records as failed, and one to a buyer whose line is no bid.
    assert!(
        all.contains("no post_sent for attempt 1: every delivery is recorded before it leaves"),
        "{all}"
    );
    // Round 57a: the same sale relabelled format 3 (before `post_sent`) still
    // carries a field of format 4 (`windows`), and is held to it.
    let v3 = sale(1, 5_800_000).replace(r#""v":5"#, r#""v":3"#).replace(
        r#""attempt":1}"#,
        r#""attempt":1,"windows":{"hour_start_ms":0,"day":1,"week":1,"month":1}}"#,
    );
    assert!(v3.contains(r#""v":3"#) && v3.contains("windows"), "{v3}");
    let r = reconcile(ledger(&[auction, &w0, rejected, &v3]).path(), None).unwrap();
    assert!(
        r.mismatches
            .join("\n")
            .contains("no post_sent for attempt 1: every delivery is recorded before it leaves"),
        "{:?}",
        r.mismatches
    );
    let winner = sale(0, 6_000_000).replace(r#""buyer":"f""#, r#""buyer":"w""#);
    let r = reconcile(ledger(&[auction, &w0, rejected, &winner]).path(), None).unwrap();
    let said = r.mismatches.join("\n");
    assert!(
        said.contains("sold at attempt 0, which the ledger records as rejected (post_attempt)"),
        "{said}"
    );
    let timed_out = auction.replace(
        r#"{"buyer":"f","outcome":"bid""#,
        r#"{"buyer":"f","outcome":"timeout""#,
    );
    assert_ne!(timed_out, auction);
    let r = reconcile(
        ledger(&[&timed_out, &w0, rejected, &f1, &honest]).path(),
        None,
    )
    .unwrap();
    let said = r.mismatches.join("\n");
    assert!(
        said.contains("its auction recorded no bid from buyer f"),
        "{said}"
    );
    assert!(
        all.contains("bid_micros 7000000 differs from the buyer's bid in its auction (5800000)"),
        "{all}"
    );
}

#[test]
fn a_pre_send_without_an_outcome_is_delivered_outcome_unknown() {
    let dir = ledger(&[
        AUCTION,
        r#"{"type":"post_sending","v":3,"generation":1,"at":"2026-11-29T10:00:00.500Z","lead_id":"ld_b","auction_id":"au_1","buyer":"b","attempt":0}"#,
        SALE,
        r#"{"type":"pre_send","v":3,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_a","auction_id":"au_2","buyer":"b","attempt":0}"#,
    ]);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    assert_eq!(r.outcome_unknown.len(), 1, "{:?}", r.outcome_unknown);
    assert!(r.outcome_unknown[0].contains(
        "seg-00000001.jsonl seq 4: lead_id ld_a attempt 0 to buyer b: delivered, outcome unknown"
    ));
    // Listed, not a failure: what a crash mid-delivery leaves.
    assert!(!r.failed());
    assert!(r.render().contains("OUTCOME UNKNOWN: "));
    assert!(r.render().contains("1 delivery(ies) with outcome unknown"));
    // The last record: on a running exchange it may be waiting for its buyer.
    assert!(
        r.outcome_unknown[0].contains("sent 0.0 s before the ledger's last record"),
        "{:?}",
        r.outcome_unknown
    );
    assert_eq!(r.possibly_in_flight, 1);
    assert!(r.render().contains("1 of them sent so recently"));
}

/// Black-box round 21: `verify` on a running exchange's ledger told finance to settle a
/// delivery that was only in flight. One sent within a post's life of the ledger's
/// last record, with no stop (`flush`) after it, is said to be possibly in flight; an
/// older one, or one a stop or start followed, is not.
#[test]
fn a_recent_delivery_without_an_outcome_may_be_in_flight() {
    let send = |lead: &str, at: &str| {
        format!(
            r#"{{"type":"post_sent","v":5,"generation":1,"at":"{at}","lead_id":"{lead}","auction_id":"au_1","ping_id":"pg_1","seller":"s","buyer":"b","attempt":0,"price_micros":1,"test":false}}"#
        )
    };
    let old = send("ld_old", "2026-11-29T10:00:00.000Z");
    let recent = send("ld_new", "2026-11-29T10:05:00.000Z");
    let last = AUCTION.replace("10:00:00.000Z", "10:05:03.000Z");
    let dir = ledger(&[&old, &recent, &last]);
    let r = reconcile(dir.path(), None).unwrap();
    assert_eq!(r.outcome_unknown.len(), 2, "{:?}", r.outcome_unknown);
    assert_eq!(r.possibly_in_flight, 1);
    assert!(r.outcome_unknown[0].ends_with("delivered, outcome unknown"));
    assert!(r.outcome_unknown[1].contains("sent 3.0 s before the ledger's last record"));
    // A stop after it: not in flight, whatever its age.
    let flush =
        r#"{"type":"flush","v":5,"generation":1,"at":"2026-11-29T10:05:04.000Z","start":false}"#;
    let dir = ledger(&[&old, &recent, &last, flush]);
    let r = reconcile(dir.path(), None).unwrap();
    assert_eq!(r.outcome_unknown.len(), 2);
    assert_eq!(r.possibly_in_flight, 0, "{:?}", r.outcome_unknown);
    // A test lead's delivery is in no cap and never billed: not one to settle
    // (black-box round 31).
    let test = old
        .replace(r#""test":false"#, r#""test":true"#)
        .replace("ld_old", "ld_test");
    let dir = ledger(&[&test, &old, &last, flush]);
    let r = reconcile(dir.path(), None).unwrap();
    assert_eq!(r.outcome_unknown.len(), 1, "{:?}", r.outcome_unknown);
    assert!(r.outcome_unknown[0].contains("ld_old"));
}

/// Black-box round 12: a skipped sale (a newer version) that a refund depends on made
/// the refund a mismatch, and the output said RECONCILIATION FAILED without the
/// NOT RECONCILED line that names the skipped record.
#[test]
fn a_failure_with_skipped_records_names_them_too() {
    let newer_sale = SALE.replace(r#""v":3"#, r#""v":99"#);
    let refund = r#"{"type":"refund","v":4,"generation":1,"at":"2026-11-29T11:00:00.000Z","lead_id":"ld_b","auction_id":"au_1","buyer":"b","seller":"s","vertical":"v","currency":"USD","buyer_refund_micros":10000000,"seller_clawback_micros":8000000,"margin_reversed_micros":2000000,"sold_at_ms":0,"return_window_days":7}"#;
    let dir = ledger(&[AUCTION, &newer_sale, refund]);
    let r = reconcile(dir.path(), None).unwrap();
    let text = r.render();
    assert!(r.incomplete(), "{text}");
    assert!(
        text.contains("NOT RECONCILED: 1 record(s) skipped"),
        "{text}"
    );
    assert!(r.failed(), "a refund of a sale not read: {text}");
    assert!(
        text.contains("some may come from the 1 record(s) skipped"),
        "{text}"
    );
}

/// Black-box round 12: with a line that cannot be read, verify said deliveries with no
/// outcome were "not listed" and then listed one, and that the money reconciled
/// though the unreadable line's sale was missing from it.
#[test]
fn a_ledger_that_does_not_verify_lists_no_open_delivery_and_names_unread_lines() {
    let dir = ledger(&[
        AUCTION,
        r#"{"type":"pre_send","v":3,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_a","auction_id":"au_2","buyer":"b","attempt":0}"#,
        r#"{"type":"sale","v":3, not json"#,
    ]);
    let r = reconcile(dir.path(), None).unwrap();
    let text = r.render_with(false, None);
    assert!(!text.contains("OUTCOME UNKNOWN: "), "{text}");
    // A whole line that is not a record is a problem in its own right (black-box
    // round 43), named with why.
    assert!(
        text.contains("PROBLEM: seg-00000001.jsonl:3: not a readable record: "),
        "{text}"
    );
    assert!(
            text.contains("RECONCILIATION FAILED: 1 line(s) that are not readable records (PROBLEM), 0 mismatch(es), deliveries with no outcome not listed (the ledger does not verify)"),
            "{text}"
        );
    assert!(!text.contains("its money reconciles"), "{text}");
    // The same ledger read as verified lists the open delivery.
    assert!(r.render().contains("OUTCOME UNKNOWN: "));
}

#[test]
fn newer_versions_are_skipped_and_reported_unknown_types_ignored() {
    let dir = ledger(&[
        AUCTION,
        SALE,
        r#"{"type":"sale","v":99,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_x","bid_micros":1,"seller_price_micros":5,"margin_micros":0}"#,
        r#"{"type":"model_swapped","v":3,"generation":1,"at":"2026-11-29T10:00:03.000Z","lead_id":"ld_b"}"#,
    ]);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(!r.failed(), "{}", r.render());
    assert!(r.incomplete(), "skipped money is never called reconciled");
    assert!(
            r.render()
                .contains("NOT RECONCILED: 2 record(s) skipped (1 of format version 99, 1 of type \"model_swapped\""),
            "{}",
            r.render()
        );
    assert_eq!(r.sales, 1);
    let notes = r.stats.notes().join("\n");
    assert!(
        notes.contains("1 record(s) of format version 99 skipped"),
        "{notes}"
    );
    assert!(
        notes.contains("1 record(s) of type \"model_swapped\" ignored"),
        "{notes}"
    );
}

/// An auction (with its currency) and its sale, of `lead` (`au_<lead>`, `pg_<lead>`),
/// sold to `b` at `bid` with the seller paid `price`, `sold_at` the sale's `at`. The
/// sale is of format 3, before `post_sent`: these ledgers are about the money, and a
/// sale of format 4 or later needs its delivery's record too.
fn sold(lead: &str, currency: &str, bid: i64, price: i64, sold_at: &str) -> [String; 2] {
    let margin = i128::from(bid) - i128::from(price);
    [
        format!(
            r#"{{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_{lead}","ping_id":"pg_{lead}","seller":"s","vertical":"v","currency":"{currency}","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{{"buyer":"b","outcome":"bid","bid_micros":{bid}}}],"winner":"b","bid_micros":{bid},"seller_price_micros":{price},"took_us":5}}"#
        ),
        format!(
            r#"{{"type":"sale","v":3,"generation":1,"at":"{sold_at}","lead_id":"ld_{lead}","ping_id":"pg_{lead}","auction_id":"au_{lead}","seller":"s","buyer":"b","vertical":"v","currency":"{currency}","test":false,"bid_micros":{bid},"seller_price_micros":{price},"margin_micros":{margin},"attempt":0}}"#
        ),
    ]
}

/// The `returned` disposition and `refund` of a sale made by [`sold`], at `at`.
fn refunded(lead: &str, bid: i64, price: i64, at: &str) -> [String; 2] {
    [
        format!(
            r#"{{"type":"refund","v":5,"generation":1,"at":"{at}","lead_id":"ld_{lead}","auction_id":"au_{lead}","buyer":"b","seller":"s","vertical":"v","currency":"USD","buyer_refund_micros":{bid},"seller_clawback_micros":{price},"margin_reversed_micros":{},"sold_at_ms":0,"return_window_days":7}}"#,
            bid - price
        ),
        format!(
            r#"{{"type":"disposition","v":5,"generation":1,"at":"{at}","lead_id":"ld_{lead}","auction_id":"au_{lead}","buyer":"b","seller":"s","vertical":"v","outcome":"returned","test":false}}"#
        ),
    ]
}

/// Black-box round 93b: a `returned` disposition whose refund was removed (the chain
/// recomputed) verified, and the report counted one return fewer.
#[test]
fn a_return_of_a_paid_lead_without_its_refund_is_a_mismatch() {
    let mut records = Vec::new();
    records.extend(sold(
        "1",
        "USD",
        10_000_000,
        8_000_000,
        "2026-11-29T10:00:01.000Z",
    ));
    let [refund, returned] = refunded("1", 10_000_000, 8_000_000, "2026-11-29T11:00:00.000Z");
    records.push(refund.clone());
    records.push(returned.clone());
    let whole = ledger_of(&records);
    let r = reconcile(whole.path(), None).unwrap();
    assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
    records.retain(|l| *l != refund);
    let edited = ledger_of(&records);
    let r = reconcile(edited.path(), None).unwrap();
    assert_eq!(r.mismatches.len(), 1, "{:?}", r.mismatches);
    assert!(
        r.mismatches[0].contains("a returned disposition of a paid lead with no refund"),
        "{:?}",
        r.mismatches
    );
}

fn ledger_of(records: &[String]) -> tempfile::TempDir {
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    ledger(&refs)
}

/// Black-box round 41: two sales whose revenue passes `i64::MAX` (no field does) made
/// the report saturate at `i64::MAX`, and verify then called the untouched ledger a
/// MISMATCH (revenue is not payouts + margin). Every sum is exact now. (Such bids are
/// past the largest amount the exchange takes, which verify says of each since round
/// 203b, and of nothing else: the sums agree.)
#[test]
fn sums_past_i64_max_are_exact_and_an_untouched_ledger_reconciles() {
    let big = 5_000_000_000_000_000_000i64;
    let mut records = Vec::new();
    records.extend(sold(
        "1",
        "USD",
        big,
        big - 1_000_000,
        "2026-11-29T10:00:01.000Z",
    ));
    records.extend(sold(
        "2",
        "USD",
        big,
        big - 2_000_000,
        "2026-11-29T10:00:02.000Z",
    ));
    // A sale at i64::MAX, refunded: the refunds' sum and the net figures stay exact.
    records.extend(sold(
        "3",
        "USD",
        i64::MAX,
        i64::MAX - 3,
        "2026-11-29T10:00:03.000Z",
    ));
    records.extend(refunded(
        "3",
        i64::MAX,
        i64::MAX - 3,
        "2026-11-29T11:00:00.000Z",
    ));
    let dir = ledger_of(&records);
    let r = reconcile(dir.path(), None).unwrap();
    assert_eq!(r.mismatches.len(), 3, "{}", r.render());
    assert!(
        r.mismatches
            .iter()
            .all(|m| m.contains("is a price the exchange never sells at")),
        "{}",
        r.render()
    );
    let revenue = 2 * i128::from(big);
    assert_eq!(
        r.totals["USD"],
        (3, revenue, revenue - 3_000_000, 3_000_000),
        "{}",
        r.render()
    );
    assert_eq!(r.refunds["USD"], (1, i128::from(i64::MAX)));
    let text = r.render();
    assert!(
            text.contains("USD: 3 sale(s), revenue 19223372036854.775807 - refunds 9223372036854.775807 = sales 10000000000000.00; payouts 9999999999997.00, margin 3.00"),
            "{text}"
        );
}

/// Black-box round 203b: a sale at -5.00, at 0.00, or at `i64::MAX` micros, edited alike
/// in its auction and its sale with the chain recomputed, reconciled ("OK"). A bid of 0
/// or less, or above the largest amount the exchange takes, and a negative seller price
/// are mismatches; a sale at the largest amount is not.
#[test]
fn a_sale_at_a_price_the_exchange_never_writes_is_a_mismatch() {
    let check = |bid: i64, price: i64| {
        let records = sold("1", "USD", bid, price, "2026-11-29T10:00:01.000Z");
        reconcile(ledger_of(&records).path(), None)
            .unwrap()
            .mismatches
    };
    let max = proto::money::AMOUNT_MAX_MICROS;
    assert!(check(10_000_000, 8_000_000).is_empty());
    assert!(check(max, max - 1).is_empty(), "the largest amount");
    for (bid, price) in [
        (-5_000_000, -5_000_000),
        (0, 0),
        (i64::MAX, i64::MAX - 1),
        (max + 1, max),
    ] {
        let m = check(bid, price);
        assert!(
            m.iter().any(|m| m.contains(&format!(
                "bid_micros {bid} is a price the exchange never sells at"
            ))),
            "{bid}: {m:?}"
        );
    }
    let m = check(-5_000_000, -5_000_000);
    assert!(
        m.iter()
            .any(|m| m.contains("seller_price_micros -5000000 is negative")),
        "{m:?}"
    );
}

/// Black-box round 41: a money field that is not an integer fitting `i64` was read as
/// 0 (a sale of `1e22` dropped out of the money, and verify's message quoted 0). It is
/// a PROBLEM naming the record's seq, type and field, and verify fails.
#[test]
fn a_malformed_money_field_is_a_problem_naming_the_record_and_the_field() {
    for (bad, shown) in [
        ("1e22", "1e+22"),
        ("10000000000000000000000", "1e+22"),
        ("20000000.5", "20000000.5"),
        (r#""20000000""#, r#""20000000""#),
        ("9223372036854775808", "9223372036854775808"),
        ("null", "null"),
    ] {
        let [auction, sale] = sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T10:00:01.000Z",
        );
        let sale = sale.replace(
            r#""bid_micros":20000000"#,
            &format!(r#""bid_micros":{bad}"#),
        );
        let dir = ledger_of(&[auction, sale]);
        let r = reconcile(dir.path(), None).unwrap();
        let text = r.render();
        assert!(r.failed(), "{bad}: {text}");
        assert!(
                text.contains(&format!("PROBLEM: seg-00000001.jsonl seq 2: sale record: bid_micros is {shown}: a money field must be a whole number of micros")),
                "{bad}: {text}"
            );
        assert!(
                text.contains("RECONCILIATION FAILED: 1 record(s) with a malformed money field or time (PROBLEM), 0 mismatch(es)"),
                "{bad}: {text}"
            );
        // Left out of the money, never counted as 0.
        assert!(!text.contains("bid_micros 0"), "{bad}: {text}");
        assert!(r.totals.is_empty(), "{bad}: {text}");
    }
    // In a refund and in an auction's buyer line too; a missing optional field (an
    // auction without a winner has no bid_micros) is no problem.
    let [auction, sale] = sold(
        "1",
        "USD",
        20_000_000,
        16_000_000,
        "2026-11-29T10:00:01.000Z",
    );
    let [refund, returned] = refunded("1", 20_000_000, 16_000_000, "2026-11-29T11:00:00.000Z");
    let refund = refund.replace(
        r#""seller_clawback_micros":16000000"#,
        r#""seller_clawback_micros":1.6e7"#,
    );
    let unsold = AUCTION
        .replace("au_1", "au_9")
        .replace(r#""bid_micros":10000000}]"#, r#""bid_micros":"10"}]"#)
        .replace(
            r#","winner":"b","bid_micros":10000000,"seller_price_micros":8000000"#,
            "",
        );
    let dir = ledger_of(&[auction, sale, refund, returned, unsold]);
    let r = reconcile(dir.path(), None).unwrap();
    let text = r.render();
    assert!(text.contains("PROBLEM: seg-00000001.jsonl seq 3: refund record: seller_clawback_micros is 16000000.0"), "{text}");
    assert!(
        text.contains(
            r#"PROBLEM: seg-00000001.jsonl seq 5: auction record: buyers[0].bid_micros is "10""#
        ),
        "{text}"
    );
    assert_eq!(r.stats.malformed_money.len(), 2, "{text}");
}

/// Black-box round 43: a sale's line made unparseable by one field (`1e400`, past a
/// double), its chain recomputed, was skipped as "not readable" and verify passed.
/// Such a whole line is a `PROBLEM` and fails; only a last line cut short (no
/// newline) is skipped.
#[test]
fn a_whole_line_that_is_not_a_readable_record_fails_verify() {
    for (bad, why) in [
        (r#""bid_micros":1e400"#, "number out of range"),
        (r#""bid_micros":20000000,"x":1e999"#, "number out of range"),
        (
            r#""bid_micros":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#,
            "recursion limit",
        ),
    ] {
        let [auction, sale] = sold(
            "1",
            "USD",
            20_000_000,
            16_000_000,
            "2026-11-29T10:00:01.000Z",
        );
        let sale = sale.replace(r#""bid_micros":20000000"#, bad);
        let dir = ledger_of(&[auction, sale]);
        let r = reconcile(dir.path(), None).unwrap();
        let text = r.render();
        assert!(r.failed(), "{bad}: {text}");
        assert!(
            text.contains("PROBLEM: seg-00000001.jsonl:2: not a readable record: ")
                && text.contains(why),
            "{bad}: {text}"
        );
        assert!(
            text.contains(
                "RECONCILIATION FAILED: 1 line(s) that are not readable records (PROBLEM)"
            ),
            "{bad}: {text}"
        );
    }
    // A last line cut short is a torn write: skipped, not a problem.
    let [auction, sale] = sold(
        "1",
        "USD",
        20_000_000,
        16_000_000,
        "2026-11-29T10:00:01.000Z",
    );
    let dir = ledger_of(&[auction]);
    let seg = dir.path().join(segments::segment_name(1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&sale.as_bytes()[..40]);
    std::fs::write(&seg, bytes).unwrap();
    let r = reconcile(dir.path(), None).unwrap();
    assert!(r.stats.malformed_lines.is_empty(), "{}", r.render());
    assert_eq!(r.stats.unreadable.len(), 1, "{}", r.render());
}

/// Black-box round 41: a sale in another currency than its auction ran in and its
/// quote was made in reconciled, its money counted in the wrong currency.
#[test]
fn a_sale_in_another_currency_than_its_auction_and_quote_is_a_mismatch() {
    let [auction, sale] = sold(
        "1",
        "USD",
        20_000_000,
        16_000_000,
        "2026-11-29T10:00:01.000Z",
    );
    let quote = r#"{"type":"quote_opened","v":5,"generation":1,"at":"2026-11-29T10:00:00.500Z","ping_id":"pg_1","auction_id":"au_1","seller":"s","vertical":"v","test":false,"price_micros":16000000,"currency":"USD","expires_at_ms":1,"auctioned_at_ms":0,"lead":{"state":"TX","income_micros":"high"},"ranked":[]}"#.to_string();
    let dir = ledger_of(&[auction.clone(), quote.clone(), sale.clone()]);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(!r.failed(), "{}", r.render());
    let eur = sale.replace(r#""currency":"USD""#, r#""currency":"EUR""#);
    let dir = ledger_of(&[auction.clone(), quote, eur.clone()]);
    let r = reconcile(dir.path(), None).unwrap();
    assert_eq!(r.mismatches.len(), 1, "{}", r.render());
    assert!(
            r.mismatches[0].contains("seg-00000001.jsonl seq 3: the sale is in currency EUR but its auction ran in USD and its quote (quote_opened at seg-00000001.jsonl seq 2) was in USD (lead_id ld_1"),
            "{}",
            r.render()
        );
    // An auction written before auctions carried their currency, and no quote:
    // nothing to compare with.
    let old = auction.replace(r#""currency":"USD","#, "");
    let dir = ledger_of(&[old, eur]);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(!r.failed(), "{}", r.render());
}

/// Black-box round 41: the exchange refunded a return whose sale was dated after it
/// (the clock was stepped back) and verify failed the refund, "refunded -3595210 ms
/// after the sale". The ledger's order proves the sale came first: the time since it
/// is clamped at 0, as the live rule does. A refund before its sale in the ledger is a
/// mismatch.
#[test]
fn a_refund_dated_before_its_sale_is_inside_the_window_if_the_sale_comes_first() {
    let mut records = Vec::new();
    records.extend(sold(
        "1",
        "USD",
        20_000_000,
        16_000_000,
        "2026-11-29T11:00:00.000Z",
    ));
    records.extend(refunded(
        "1",
        20_000_000,
        16_000_000,
        "2026-11-29T10:00:04.790Z",
    ));
    let dir = ledger_of(&records);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(!r.failed(), "{}", r.render());
    assert_eq!(r.refunds["USD"], (1, 20_000_000));
    // Past the window it still fails, and a refund written before its sale fails.
    let mut records = Vec::new();
    records.extend(sold(
        "1",
        "USD",
        20_000_000,
        16_000_000,
        "2026-11-29T11:00:00.000Z",
    ));
    records.extend(refunded(
        "1",
        20_000_000,
        16_000_000,
        "2026-12-06T11:00:00.001Z",
    ));
    let dir = ledger_of(&records);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(
        r.mismatches.iter().any(|m| m.contains(
            "refunded 604800001 ms after the sale, outside its return window of 7 day(s)"
        )),
        "{}",
        r.render()
    );
    let [auction, sale] = sold(
        "1",
        "USD",
        20_000_000,
        16_000_000,
        "2026-11-29T11:00:00.000Z",
    );
    let [refund, returned] = refunded("1", 20_000_000, 16_000_000, "2026-11-29T12:00:00.000Z");
    let dir = ledger_of(&[auction, refund, returned, sale]);
    let r = reconcile(dir.path(), None).unwrap();
    assert!(
            r.mismatches.iter().any(|m| m.contains("seg-00000001.jsonl seq 2: a refund written before its sale (at seg-00000001.jsonl seq 4)")),
            "{}",
            r.render()
        );
}

#[test]
fn a_fallback_without_its_earlier_attempt_and_a_duplicate_sale_are_mismatches() {
    let fallback = SALE.replace("\"attempt\":0", "\"attempt\":1");
    let dir = ledger(&[AUCTION, &fallback, SALE]);
    let r = reconcile(dir.path(), None).unwrap();
    let all = r.mismatches.join("\n");
    assert!(
        all.contains("sold at attempt 1 but attempt 0 has no post_attempt record"),
        "{all}"
    );
    assert!(
        all.contains("lead sold twice (first sale at seg-00000001.jsonl seq 2)"),
        "{all}"
    );
    assert!(all.contains("ping_id pg_1 sold twice"), "{all}");
}

/// Round 119a, read from a ledger: auctions of generations 1 to 4, each swap's
/// generation interleaved with late records of the one before it, are one run.
#[test]
fn a_ledger_of_swaps_with_interleaved_generations_has_one_latest_run() {
    let auction = |n: u64, g: u64, m: &str| {
        AUCTION
            .replace("au_1", &format!("au_{n}"))
            .replace("pg_1", &format!("pg_{n}"))
            .replace(r#""generation":1"#, &format!(r#""generation":{g}"#))
            .replace(
                r#""took_us""#,
                &format!(r#""models":{{"v":"{m}"}},"took_us""#),
            )
    };
    let flush = |g: u64| {
        format!(r#"{{"type":"flush","v":3,"generation":{g},"at":"2026-11-29T10:00:00.000Z"}}"#)
    };
    let records = [
        auction(1, 1, "m1"),
        auction(2, 2, "m2"),
        auction(3, 1, "m1"),
        auction(4, 3, "m1"),
        auction(5, 2, "m2"),
        auction(6, 4, "m2"),
        auction(7, 3, "m1"),
        auction(8, 4, "m2"),
    ];
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let dir = ledger(&refs);
    let r = reconcile(dir.path(), None).unwrap();
    let (first, last, from) = r.current.clone().unwrap();
    assert_eq!((first, last), (1, 4), "{from}");
    // A shutdown's flush at the end leaves the run as it is; a start begins an empty one.
    let mut with_stop = refs.clone();
    let stop = flush(4);
    with_stop.push(&stop);
    let r = reconcile(ledger(&with_stop).path(), None).unwrap();
    assert_eq!(r.current.map(|c| (c.0, c.1)), Some((1, 4)));
}
