use super::scan::{at_of, BuyerEvent, Scan};

/// Black-box round 44: a whole line that is not a readable record was skipped at start
/// without a word. The scan keeps each one's line number and why, for the log.
#[test]
fn lines_that_are_not_records_are_counted_with_why() {
    let text = "{\"type\":\"flush\",\"v\":5}\n[1,2]\n{\"type\":\"sale\",\"bid_micros\":1e400}\n{\"type\":\"flush\",\"v\":5}\n";
    let scan = Scan::of_text(text);
    assert_eq!(scan.records, 2);
    assert_eq!(scan.unreadable.len(), 2, "{:?}", scan.unreadable);
    assert_eq!(scan.unreadable[0], (2, "not a JSON object".to_string()));
    assert_eq!(scan.unreadable[1].0, 3);
    assert!(
        scan.unreadable[1].1.contains("number out of range"),
        "{:?}",
        scan.unreadable
    );
    // Round 57a: a version that is not a whole number is no record (the finance
    // tools refuse it too); a newer one is read, and counted for the warning.
    let text = "{\"type\":\"flush\",\"v\":\"5\"}\n{\"type\":\"flush\",\"v\":6}\n{\"type\":\"flush\",\"v\":5}\n";
    let scan = Scan::of_text(text);
    assert_eq!(scan.records, 2);
    assert_eq!(
        scan.unreadable,
        [(
            1,
            "its format version `v` is not a version number (a whole number from 1 to 2^64 - 1)"
                .to_string()
        )]
    );
    assert_eq!(scan.newer, 1);
    assert!(scan.unknown_types.is_empty(), "{:?}", scan.unknown_types);
    // Round 203b: a record without a type that is a string, or of version 0, is no
    // record either (a `"type":123` was warned of as a type of a newer pingpost, named
    // ""; `"v":0` was read as the current version).
    let text = "{\"type\":123,\"v\":5}\n{\"v\":5}\n{\"type\":\"flush\",\"v\":0}\n{\"type\":\"flush\",\"v\":5}\n";
    let scan = Scan::of_text(text);
    assert_eq!(scan.records, 1);
    assert_eq!(
        scan.unreadable,
        [
            (
                1,
                "it has no \"type\" (a string): not a ledger record".to_string()
            ),
            (
                2,
                "it has no \"type\" (a string): not a ledger record".to_string()
            ),
            (
                3,
                "its format version `v` is 0: versions begin at 1".to_string()
            ),
        ]
    );
    assert!(scan.unknown_types.is_empty(), "{:?}", scan.unknown_types);
    // Round 112b: a type this pingpost does not know is counted for the start's warning
    // (it said nothing); every type the exchange writes is known.
    let text = "{\"type\":\"payout_batch\",\"v\":5}\n{\"type\":\"payout_batch\",\"v\":5}\n{\"type\":\"post_sent\",\"v\":5,\"buyer\":\"b\",\"lead_id\":\"l\"}\n{\"type\":\"quote_expired\",\"v\":5}\n";
    let scan = Scan::of_text(text);
    assert_eq!(
        scan.unknown_types.into_iter().collect::<Vec<_>>(),
        [("payout_batch".to_string(), 2)]
    );
}

/// Black-box round 93b: a byte that is not UTF-8 in a segment stopped the start
/// ("stream did not contain valid UTF-8", naming no line). The line is read as one that is
/// not a record, by its number across the segments; the lines around it are read.
#[test]
fn a_line_that_is_not_utf8_is_skipped_by_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let seg = |n| dir.path().join(crate::ledger::segments::segment_name(n));
    std::fs::write(seg(1), b"{\"type\":\"flush\",\"v\":5}\n").unwrap();
    std::fs::write(
        seg(2),
        b"{\"type\":\"flush\",\"v\":5}\n{\"type\":\"auction\",\"vertical\":\"auto_\xffins\"}\n{\"type\":\"flush\",\"v\":5}\n",
    )
    .unwrap();
    let text = crate::ledger::segments::read_all(dir.path()).unwrap();
    // Read whole or line by line (as the start and `ledger verify` read it): the same.
    for scan in [
        Scan::of_text(&text),
        Scan::of_dir(dir.path(), None).unwrap(),
    ] {
        assert_eq!(scan.records, 3);
        assert_eq!(
            scan.unreadable,
            [(3, "bytes that are not UTF-8".to_string())]
        );
    }
}

/// Black-box round 139b: a scan kept every quote's whole `quote_opened`, its lead too,
/// and `ledger verify` held them all. An ended quote keeps only what its answers need,
/// whichever record comes first; an open one is whole (the start restores it).
#[test]
fn an_ended_quote_keeps_only_what_its_answers_need() {
    let opened = |ping: &str| {
        format!(
            r#"{{"type":"quote_opened","v":5,"at":"2026-12-05T10:00:00.000Z","ping_id":"{ping}","auction_id":"au_{ping}","seller":"s","buyer":"b","vertical":"v","currency":"USD","price_micros":8000000,"expires_at_ms":1796479260000,"lead":{{"state":"TX","zip":"76001"}}}}"#
        )
    };
    let expired = |ping: &str| {
        format!(
            r#"{{"type":"quote_expired","v":5,"at":"2026-12-05T10:01:00.000Z","ping_id":"{ping}","buyer":"b","price_micros":8000000}}"#
        )
    };
    let text = [
        opened("pg_open"),
        opened("pg_ended"),
        expired("pg_ended"),
        expired("pg_first"),
        opened("pg_first"),
    ]
    .join("\n");
    let scan = Scan::of_text(&text);
    assert!(scan.unreadable.is_empty(), "{:?}", scan.unreadable);
    assert!(scan.opened["pg_open"].get("lead").is_some());
    for ping in ["pg_ended", "pg_first"] {
        let v = &scan.opened[ping];
        assert!(v.get("lead").is_none() && v.get("buyer").is_none(), "{v}");
        for k in ["seller", "at", "price_micros", "currency", "expires_at_ms"] {
            assert!(v.get(k).is_some(), "{ping}: {k} in {v}");
        }
    }
}

/// Black-box round 93b: a record with a name twice (`"bid_micros"` inserted before the
/// real one, the chain recomputed) was read by its last value, and an export reader
/// taking the first saw another sale. It is no record at start, as for the tools.
#[test]
fn a_record_with_a_name_twice_is_not_read() {
    let text = "{\"type\":\"flush\",\"v\":5}\n{\"type\":\"sale\",\"bid_micros\":999,\"bid_micros\":1}\n{\"type\":\"flush\",\"v\":5,\"x\":{\"a\":1,\"a\":2}}\n{\"type\":\"flush\",\"v\":5,\"x\":[{\"a\":1},{\"a\":2}]}\n";
    let scan = Scan::of_text(text);
    assert_eq!(scan.records, 2);
    assert_eq!(
        scan.unreadable,
        [
            (
                2,
                "the name \"bid_micros\" appears more than once in one object".to_string()
            ),
            (
                3,
                "the name \"a\" appears more than once in one object".to_string()
            )
        ]
    );
}

/// Black-box round 55a: a sale whose `bid_micros` was removed (the chain recomputed)
/// was replayed at start as a sale of 0, so its buyer's budget had room it had spent.
/// A record with a money field missing or malformed is skipped as an unreadable line
/// (named in the start's warning), and its delivery counts as outcome unknown at its
/// `post_sent`'s price.
#[test]
fn a_record_whose_money_is_missing_or_malformed_is_skipped_and_its_delivery_unknown() {
    let w = r#""windows":{"hour_start_ms":0,"day":1,"week":1,"month":2}"#;
    let sent = format!(
        r#"{{"type":"post_sent","lead_id":"l1","attempt":0,"buyer":"a","price_micros":5,"test":false,{w}}}"#
    );
    for sale in [
        r#"{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","seller_price_micros":3,"margin_micros":2}"#,
        r#"{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","bid_micros":1e22,"seller_price_micros":3,"margin_micros":2}"#,
    ] {
        let scan = Scan::of_text(&format!("{sent}\n{sale}\n"));
        assert_eq!(scan.records, 1, "{sale}");
        assert!(scan.sales.is_empty(), "{sale}");
        assert_eq!(scan.unreadable.len(), 1, "{sale}");
        assert_eq!(scan.unreadable[0].0, 2);
        assert!(
            scan.unreadable[0]
                .1
                .starts_with("sale record: bid_micros is "),
            "{:?}",
            scan.unreadable
        );
        let unknown: Vec<_> = scan
            .unknown()
            .map(|s| (s.lead_id.as_str(), s.price_micros))
            .collect();
        assert_eq!(unknown, [("l1", 5)], "{sale}");
    }
    // Whole, it is a sale.
    let sale = r#"{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","bid_micros":5,"seller_price_micros":3,"margin_micros":2}"#;
    let scan = Scan::of_text(&format!("{sent}\n{sale}\n"));
    assert_eq!(
        (scan.records, scan.sales.len(), scan.unknown().count()),
        (2, 1, 0)
    );
}

/// A sale or delivery at an amount the exchange never writes (a bid of 0 or less, or
/// above the largest amount it takes; a negative seller price), edited in with the chain
/// recomputed, was replayed at start as it stood: a sale at -5.00 gave its buyer's budget
/// 5.00 of room. Such a record is skipped as an unreadable line is, named in the start's
/// warning; a sale's delivery then counts as outcome unknown at its own price, as
/// `ledger verify` calls the sale a mismatch.
#[test]
fn a_sale_or_delivery_at_an_amount_the_exchange_never_writes_is_skipped() {
    let w = r#""windows":{"hour_start_ms":0,"day":1,"week":1,"month":2}"#;
    let sent = |price: &str| {
        format!(
            r#"{{"type":"post_sent","lead_id":"l1","attempt":0,"buyer":"a","price_micros":{price},"test":false,{w}}}"#
        )
    };
    let sale = |bid: &str, seller: &str| {
        format!(
            r#"{{"type":"sale","lead_id":"l1","attempt":0,"buyer":"a","bid_micros":{bid},"seller_price_micros":{seller},"margin_micros":2}}"#
        )
    };
    let max = proto::money::AMOUNT_MAX_MICROS;
    for (bid, seller, says) in [
        (
            "-5000000".to_string(),
            "3",
            "bid_micros -5000000 is a bid the exchange never takes",
        ),
        ("0".to_string(), "3", "bid_micros 0 is a bid"),
        (
            (max + 1).to_string(),
            "3",
            "is a bid the exchange never takes",
        ),
        ("5".to_string(), "-3", "seller_price_micros -3 is negative"),
    ] {
        let scan = Scan::of_text(&format!("{}\n{}\n", sent("5"), sale(&bid, seller)));
        assert_eq!((scan.records, scan.sales.len()), (1, 0), "{bid} {seller}");
        assert_eq!(scan.unreadable.len(), 1, "{bid} {seller}");
        assert!(
            scan.unreadable[0].1.starts_with("sale record: ")
                && scan.unreadable[0].1.contains(says),
            "{:?}",
            scan.unreadable
        );
        let unknown: Vec<_> = scan
            .unknown()
            .map(|s| (s.lead_id.as_str(), s.price_micros))
            .collect();
        assert_eq!(unknown, [("l1", 5)], "{bid} {seller}");
    }
    for price in ["-5000000", "0"] {
        let scan = Scan::of_text(&format!("{}\n", sent(price)));
        assert_eq!((scan.records, scan.sent.len()), (0, 0), "{price}");
        assert!(
            scan.unreadable[0]
                .1
                .starts_with("post_sent record: price_micros"),
            "{:?}",
            scan.unreadable
        );
    }
    // The largest amount is one the exchange takes.
    let scan = Scan::of_text(&format!(
        "{}\n{}\n",
        sent(&max.to_string()),
        sale(&max.to_string(), "0")
    ));
    assert_eq!(
        (scan.records, scan.sales.len(), scan.unreadable.len()),
        (2, 1, 0)
    );
}

/// Black-box round 57a: a sale flipped to `test`, moved to yesterday's windows,
/// charged to another buyer, or with a buyer that is not a string (each with the
/// chain rewritten) freed its buyer's budget at the next start. The start holds a
/// sale to its delivery's `post_sent`.
#[test]
fn a_sale_that_differs_from_its_delivery_is_counted_as_the_delivery_says() {
    let w = |day: u32| format!(r#""windows":{{"hour_start_ms":0,"day":{day},"week":1,"month":2}}"#);
    let sent = format!(
        r#"{{"type":"post_sent","lead_id":"l1","attempt":0,"buyer":"a","price_micros":5,"test":false,{}}}"#,
        w(9)
    );
    let sale = |extra: &str| {
        format!(
            r#"{{"type":"sale","lead_id":"l1","attempt":0,"bid_micros":5,"seller_price_micros":4,"margin_micros":1,{extra}}}"#
        )
    };
    // As written: one real sale of `a`'s, in the delivery's windows, settled.
    let honest = Scan::of_text(&format!(
        "{sent}\n{}\n",
        sale(&format!(r#""buyer":"a","test":false,{}"#, w(9)))
    ));
    assert_eq!(honest.unknown().count(), 0);
    assert!(!honest.sales[0].test);
    // Flipped to a test lead: still counted as the real delivery it was.
    let flipped = Scan::of_text(&format!(
        "{sent}\n{}\n",
        sale(&format!(r#""buyer":"a","test":true,{}"#, w(9)))
    ));
    assert!(!flipped.sales[0].test);
    // Moved to yesterday: counted in the delivery's windows.
    let moved = Scan::of_text(&format!(
        "{sent}\n{}\n",
        sale(&format!(r#""buyer":"a","test":false,{}"#, w(8)))
    ));
    assert_eq!(moved.sales[0].windows, honest.sales[0].windows);
    // Charged to `b`: counted for `b`, and `a`'s delivery stays outcome unknown.
    let other = Scan::of_text(&format!(
        "{sent}\n{}\n",
        sale(&format!(r#""buyer":"b","test":false,{}"#, w(9)))
    ));
    assert_eq!(other.sales[0].buyer, "b");
    let unknown: Vec<_> = other.unknown().map(|s| s.buyer.as_str()).collect();
    assert_eq!(unknown, ["a"]);
    // A buyer that is not a string: the sale is unreadable, the delivery unknown.
    let numeric = Scan::of_text(&format!(
        "{sent}\n{}\n",
        sale(&format!(r#""buyer":7,"test":false,{}"#, w(9)))
    ));
    assert!(numeric.sales.is_empty());
    assert_eq!(numeric.unreadable.len(), 1);
    assert!(
        numeric.unreadable[0].1.contains("buyer is not a string"),
        "{:?}",
        numeric.unreadable
    );
    assert_eq!(numeric.unknown().count(), 1);
}

#[test]
fn deliveries_without_an_outcome_and_late_accepts_are_found() {
    let w = r#""windows":{"hour_start_ms":0,"day":1,"week":1,"month":2}"#;
    let text = [
        format!(r#"{{"type":"post_sent","at":"2026-11-29T12:00:00.000Z","lead_id":"l1","attempt":0,"buyer":"a","price_micros":5,"test":false,{w},"seq":1}}"#),
        r#"{"type":"post_attempt","lead_id":"l1","attempt":0,"outcome":"timeout"}"#.to_string(),
        format!(r#"{{"type":"post_sent","lead_id":"l1","attempt":1,"buyer":"b","price_micros":4,"test":false,{w}}}"#),
        r#"{"type":"sale","lead_id":"l1","attempt":1,"buyer":"b","bid_micros":4,"seller_price_micros":3,"margin_micros":1}"#.to_string(),
        r#"{"type":"post_attempt","lead_id":"l1","attempt":0,"outcome":"late_accept"}"#.to_string(),
        format!(r#"{{"type":"post_sent","lead_id":"l2","attempt":0,"buyer":"a","price_micros":5,"test":false,{w}}}"#),
        "not a record".to_string(),
    ]
    .join("\n");
    let scan = Scan::of_text(&text);
    assert_eq!(scan.records, 6);
    let unknown: Vec<_> = scan.unknown().map(|s| s.lead_id.as_str()).collect();
    assert_eq!(unknown, ["l2"]);
    let late: Vec<_> = scan
        .late_accepts()
        .map(|s| (s.lead_id.as_str(), s.attempt))
        .collect();
    assert_eq!(late, [("l1", 0)]);
    assert_eq!(scan.sent[0].at, 1_795_953_600_000);
    assert_eq!(scan.sent[0].windows.map(|w| w.month), Some(2));
    assert_eq!(scan.sales.len(), 1);
}

#[test]
fn only_the_buyer_s_own_unaccepted_posts_teach_the_rates_at_a_restart() {
    let attempt = |lead: &str, outcome: &str, reason: &str| {
        at(
            "post_attempt",
            1,
            &format!(
                r#","lead_id":"{lead}","attempt":0,"buyer":"a","outcome":"{outcome}","reason":"{reason}""#
            ),
        )
    };
    let text = [
        // The post deadline cut this timeout short: the exchange's doing.
        attempt("l1", "timeout", "post_deadline"),
        // A buyer cannot hide a rejection behind the same word.
        attempt("l2", "rejected", "post_deadline"),
        attempt("l3", "timeout", ""),
    ]
    .join("\n");
    let scan = Scan::of_text(&text);
    let events: Vec<_> = scan
        .buyer_events
        .iter()
        .map(|(b, e)| (b.as_str(), *e))
        .collect();
    let t = at_of(&serde_json::from_str(&attempt("x", "timeout", "")).unwrap());
    assert_eq!(
        events,
        [
            ("a", BuyerEvent::Rejected(t)),
            ("a", BuyerEvent::Rejected(t))
        ]
    );
}

/// A ledger line of `kind` at `s` seconds past 12:00, with `extra` fields.
fn at(kind: &str, s: u32, extra: &str) -> String {
    format!(
        r#"{{"type":"{kind}","at":"2026-11-29T12:{:02}:{:02}.000Z"{extra}}}"#,
        s / 60,
        s % 60
    )
}

fn timed_out(lead: &str, s: u32) -> [String; 2] {
    [
        at(
            "post_sent",
            s,
            &format!(r#","lead_id":"{lead}","attempt":0,"buyer":"a","price_micros":5"#),
        ),
        at(
            "post_attempt",
            s,
            &format!(r#","lead_id":"{lead}","attempt":0,"outcome":"timeout""#),
        ),
    ]
}

fn cut_short(lines: &[String]) -> Vec<String> {
    let scan = Scan::of_text(&lines.join("\n"));
    scan.cut_short().map(|s| s.lead_id.clone()).collect()
}

/// A buyer that timed out is heard out for `LATE_POST_WAIT_MS` (10 s) and may accept
/// late; its answer, accept or not, is recorded (`late_accept`, `late_no_accept`).
/// When its run ended in a crash before that record, the buyer may have the lead.
/// Before round 10 the rule looked at the time of the run's last record instead: a
/// late refusal before the crash still counted, and so did a timeout long before a
/// crash on a quiet exchange.
#[test]
fn a_timed_out_delivery_still_heard_out_when_its_run_crashed_may_have_been_accepted() {
    let start = at("flush", 0, r#","start":true"#);
    let shutdown = at("flush", 30, "");
    let [sent1, timeout1] = timed_out("l1", 1);
    let [sent2, timeout2] = timed_out("l2", 40);
    let later = |s| at("auction", s, "");
    let answer = |outcome: &str| {
        at(
            "post_attempt",
            2,
            &format!(r#","lead_id":"l1","attempt":0,"outcome":"{outcome}""#),
        )
    };
    let cases: [(&str, Vec<String>, &[&str]); 9] = [
        (
            "the ledger ends while the buyer is heard out",
            vec![start.clone(), sent1.clone(), timeout1.clone(), later(2)],
            &["l1"],
        ),
        (
            "a quiet exchange: the crash came long after, the answer never recorded",
            vec![start.clone(), sent1.clone(), timeout1.clone(), later(100)],
            &["l1"],
        ),
        (
            "a late refusal recorded before the crash",
            vec![
                start.clone(),
                sent1.clone(),
                timeout1.clone(),
                answer("late_no_accept"),
            ],
            &[],
        ),
        (
            "the late accept is in the ledger (counted as one)",
            vec![
                start.clone(),
                sent1.clone(),
                timeout1.clone(),
                answer("late_accept"),
            ],
            &[],
        ),
        (
            "a shutdown heard every late answer out",
            vec![
                start.clone(),
                sent1.clone(),
                timeout1.clone(),
                shutdown.clone(),
            ],
            &[],
        ),
        (
            "a crash, then a later run: the next start ends the run",
            vec![
                start.clone(),
                sent1.clone(),
                timeout1.clone(),
                later(3),
                at("flush", 100, r#","start":true"#),
                later(200),
            ],
            &["l1"],
        ),
        (
            "every run of the ledger is judged on its own",
            vec![
                start.clone(),
                sent1.clone(),
                timeout1.clone(),
                shutdown.clone(),
                start.clone(),
                sent2.clone(),
                timeout2.clone(),
                at("flush", 45, r#","start":true"#),
            ],
            &["l2"],
        ),
        (
            "an answer of another attempt settles nothing",
            vec![
                start.clone(),
                sent1.clone(),
                timeout1.clone(),
                at(
                    "post_attempt",
                    2,
                    r#","lead_id":"l1","attempt":1,"outcome":"late_no_accept""#,
                ),
            ],
            &["l1"],
        ),
        (
            "a ledger written before start marks: its one run ends at its end",
            vec![
                sent1.clone(),
                timeout1.clone(),
                answer("late_no_accept"),
                sent2,
                timeout2,
            ],
            &["l2"],
        ),
    ];
    for (name, lines, want) in cases {
        assert_eq!(cut_short(&lines), want, "{name}");
    }
}

/// Black-box round 220b: after a fail-stop a `quote_reserved` was on disk without its
/// `quote_opened`, and nothing ever ended it. The scan finds exactly such holds: not
/// one whose quote was opened (before or after it in the ledger), nor one a record
/// ended (a refused quote's `quote_released`, an expiry, a post).
#[test]
fn holds_whose_quote_was_never_recorded_are_found() {
    let hold = |kind: &str, ping: &str, s: u32| {
        at(
            kind,
            s,
            &format!(r#","ping_id":"{ping}","buyer":"b_{ping}","price_micros":7000000"#),
        )
    };
    let opened = |ping: &str, s: u32| {
        at(
            "quote_opened",
            s,
            &format!(r#","ping_id":"{ping}","price_micros":8000000"#),
        )
    };
    let text = [
        hold("quote_reserved", "pg_lost", 1),
        hold("quote_reserved", "pg_opened", 2),
        opened("pg_opened", 2),
        hold("quote_reserved", "pg_refused", 3),
        hold("quote_released", "pg_refused", 3),
        hold("quote_reserved", "pg_posted", 4),
        at("unsold", 5, r#","ping_id":"pg_posted","lead_id":"ld_1""#),
        hold("quote_reserved", "pg_late_open", 6),
        hold("quote_reserved", "pg_lost_too", 7),
        opened("pg_late_open", 8),
    ]
    .join("\n");
    let scan = Scan::of_text(&text);
    assert!(scan.unreadable.is_empty(), "{:?}", scan.unreadable);
    let mut lost: Vec<_> = scan
        .unopened_holds
        .iter()
        .map(|(p, (b, m))| (p.as_str(), b.as_str(), *m))
        .collect();
    lost.sort_unstable();
    assert_eq!(
        lost,
        [
            ("pg_lost", "b_pg_lost", 7_000_000),
            ("pg_lost_too", "b_pg_lost_too", 7_000_000)
        ]
    );
}

/// Black-box round 246b: a start with the clock set back behind its ledger said nothing
/// (only a step back while running was warned of). The scan keeps the last readable
/// record's time (round 247a: not the latest of all, which told every start with a right
/// clock after a run set ahead that it was behind), and a start more than a second
/// behind it is told by how much.
#[test]
fn a_start_behind_the_ledger_s_last_record_is_told_by_how_much() {
    let at = |t: &str| at_of(&serde_json::json!({ "at": t }));
    // A run set an hour ahead, then one with a right clock: the last record is the
    // right clock's (an unreadable line after it does not count).
    let text = "{\"type\":\"flush\",\"v\":5,\"at\":\"2027-03-14T08:00:05.250Z\"}\n\
        {\"type\":\"flush\",\"v\":5,\"at\":\"2027-03-14T07:01:00.000Z\"}\n\
        {\"type\":\"flush\",\"v\":0,\"at\":\"2030-01-01T00:00:00.000Z\"}\n";
    let scan = Scan::of_text(text);
    assert_eq!(scan.last_at, at("2027-03-14T07:01:00.000Z"));
    assert_eq!(Scan::of_text("").last_at, 0);
    use super::clock_behind_ledger as behind;
    let last = scan.last_at;
    assert_eq!(behind(last, last - 3_600_000), Some(3_600_000));
    assert_eq!(behind(last, last - 1_001), Some(1_001));
    // Within the tolerance, level, or ahead: nothing said; an empty ledger: nothing.
    assert_eq!(behind(last, last - 1_000), None);
    assert_eq!(behind(last, last), None);
    assert_eq!(behind(last, last + 60_000), None);
    assert_eq!(behind(0, last), None);
}
