//! The finance tools (issue 9, finance half): `pingpost ledger report | verify | replay |
//! export`, run through the built binary on a ledger written by a real exchange selling
//! to SDK bidders, and the HTML report rendered in headless Chromium.
//!
//! The ledger: buyers `acme` (bids 20.00), `bravo` (bids 18.00) and `nobid` (passes);
//! the main seller's payout is an 80 % revenue share. Three leads sell to acme (seller
//! paid 16.00 each), one test lead sells to acme (left out of finance), then acme rejects
//! and a fourth lead falls back to bravo at attempt 1 (bravo pays 18.00, the seller is
//! paid the 16.00 quoted for acme's bid, margin 2.00).

// The helpers below panic with a message: a helper failing is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use proto::seller::{PingStatus, PostStatus};
use serde_json::{json, Value};

const ACME_BID: i64 = 20_000_000;
const BRAVO_BID: i64 = 18_000_000;
const QUOTED: i64 = 16_000_000;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args(args)
        .output()
        .expect("the pingpost binary runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A ledger written by a real exchange (see the module doc), and its configuration file.
struct Sold {
    ex: Exchange,
    _bidders: Vec<bidder_sdk::ServerHandle>,
    /// The auction of the fallback sale.
    fallback_auction: String,
    /// The auction of the first sale.
    first_auction: String,
}

impl Sold {
    fn dir(&self) -> &str {
        self.ex.ledger_path.to_str().unwrap()
    }
    fn config(&self) -> &str {
        self.ex.config_path.to_str().unwrap()
    }
}

async fn sell() -> Sold {
    let acme = ScriptedBidder::bidding(20.0);
    let bravo = ScriptedBidder::bidding(18.0);
    let nobid = ScriptedBidder::passing();
    let (a, ha) = serve("acme", &acme).await;
    let (b, hb) = serve("bravo", &bravo).await;
    let (n, hn) = serve("nobid", &nobid).await;
    let mut ex = TestConfig::new().buyer(a).buyer(b).buyer(n).start().await;
    let mut first_auction = String::new();
    for _ in 0..3 {
        let p = ex.client.ping("TX").await;
        assert_eq!(p.status, PingStatus::Bid);
        assert_eq!(p.price.unwrap().0, QUOTED);
        let s = ex.client.post(&p.ping_id, "TX").await;
        assert_eq!(s.status, PostStatus::Sold, "{s:?}");
    }
    // A test lead: sold, but never billed.
    let p = ex
        .client
        .post_json(
            "/v1/ping",
            &json!({"vertical": VERTICAL, "lead": ping_lead("TX"), "test": true}),
        )
        .await
        .ping_answer();
    assert_eq!(p.status, PingStatus::Bid);
    let s = ex.client.post(&p.ping_id, "TX").await;
    assert_eq!(s.status, PostStatus::Sold);
    // acme rejects: the post falls back to bravo.
    acme.set(|s| s.accept = false);
    let p = ex.client.ping("TX").await;
    assert_eq!(p.price.unwrap().0, QUOTED);
    let s = ex.client.post(&p.ping_id, "TX").await;
    assert_eq!(s.status, PostStatus::Sold, "{s:?}");
    ex.shutdown().await;
    let sales = ex.ledger_of("sale");
    assert_eq!(sales.len(), 5, "{sales:?}");
    let fallback = sales.iter().find(|s| s["buyer"] == "bravo").unwrap();
    assert_eq!(fallback["attempt"], 1);
    assert_eq!(fallback["seller_price_micros"], QUOTED);
    if let Some(first) = sales.first() {
        first_auction = first["auction_id"].as_str().unwrap().to_string();
    }
    Sold {
        fallback_auction: fallback["auction_id"].as_str().unwrap().to_string(),
        first_auction,
        ex,
        _bidders: vec![ha, hb, hn],
    }
}

fn report_json(s: &Sold, by: &str) -> Value {
    let o = run(&[
        "ledger",
        "report",
        "--config",
        s.config(),
        "--by",
        by,
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key)
        .unwrap_or_else(|| panic!("no row {key}: {report}"))
}

#[tokio::test]
async fn report_figures_match_what_was_sold_and_leave_test_leads_out() {
    let s = sell().await;
    let by_buyer = report_json(&s, "buyer");
    let acme = row(&by_buyer, "acme");
    assert_eq!(acme["currency"], "USD");
    assert_eq!(acme["sales"], 3, "the test lead is left out: {acme}");
    assert_eq!(acme["revenue_micros"], 3 * ACME_BID);
    assert_eq!(acme["payouts_micros"], 3 * QUOTED);
    assert_eq!(acme["margin_micros"], 3 * (ACME_BID - QUOTED));
    assert_eq!(acme["pings"], 4);
    assert_eq!(acme["bids"], 4);
    assert_eq!(acme["quotes"], 4);
    assert_eq!(
        (acme["returns"].clone(), acme["refunds_micros"].clone()),
        (json!(0), json!(0))
    );
    let bravo = row(&by_buyer, "bravo");
    assert_eq!(bravo["sales"], 1);
    assert_eq!(bravo["revenue_micros"], BRAVO_BID);
    assert_eq!(bravo["payouts_micros"], QUOTED);
    assert_eq!(bravo["margin_micros"], BRAVO_BID - QUOTED);
    let nobid = row(&by_buyer, "nobid");
    assert_eq!(
        (nobid["pings"].clone(), nobid["bids"].clone()),
        (json!(4), json!(0))
    );
    assert_eq!(by_buyer["excluded"]["test_sales"], 1);
    assert_eq!(by_buyer["excluded"]["test_auctions"], 1);

    let revenue = 3 * ACME_BID + BRAVO_BID;
    for by in ["day", "seller", "vertical"] {
        let r = report_json(&s, by);
        let t = &r["totals"][0];
        assert_eq!(t["sales"], 4, "{by}: {r}");
        assert_eq!(t["pings"], 4, "{by}: {r}");
        assert_eq!(t["revenue_micros"], revenue, "{by}");
        assert_eq!(t["payouts_micros"], 4 * QUOTED, "{by}");
        assert_eq!(t["margin_micros"], revenue - 4 * QUOTED, "{by}");
    }
    assert_eq!(row(&report_json(&s, "seller"), "main")["sales"], 4);
    assert_eq!(row(&report_json(&s, "vertical"), VERTICAL)["sales"], 4);

    // The table and the CSV carry the same figures.
    let o = run(&["ledger", "report", "--dir", s.dir(), "--by", "buyer"]);
    assert!(o.status.success(), "{}", text(&o));
    let table = text(&o);
    assert!(table.contains("test leads left out"), "{table}");
    assert!(
        table.lines().any(|l| l.starts_with("acme")
            && l.contains("60.00")
            && l.contains("48.00")
            && l.contains("12.00")),
        "{table}"
    );
    let o = run(&[
        "ledger",
        "report",
        "--dir",
        s.dir(),
        "--by",
        "buyer",
        "--format",
        "csv",
    ]);
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(csv.starts_with("buyer,currency,pings,bids,quotes,sales,revenue_micros,payouts_micros,margin_micros,returns,refunds_micros\n"), "{csv}");
    assert!(
        csv.contains("\nacme,USD,4,4,4,3,60000000,48000000,12000000,0,0\n"),
        "{csv}"
    );

    // A range that holds nothing.
    let o = run(&[
        "ledger",
        "report",
        "--dir",
        s.dir(),
        "--from",
        "2000-01-01",
        "--to",
        "2000-01-31",
        "--format",
        "json",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["rows"], json!([]), "{r}");
    assert_eq!(r["zone"], "UTC", "{r}");

    // Days of another zone (`--tz`): the same sales, on that zone's days, and said so.
    let o = run(&[
        "ledger",
        "report",
        "--dir",
        s.dir(),
        "--tz",
        "Pacific/Kiritimati",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["zone"], "Pacific/Kiritimati", "{r}");
    assert_eq!(r["totals"][0]["sales"], 4, "{r}");
    assert_eq!(r["totals"][0]["revenue_micros"], revenue, "{r}");
    // The sales were made within the last minute: their day is Kiritimati's now, or a
    // minute ago (should its midnight fall in between). (The unit test
    // `days_are_those_of_the_zone_given` checks days that differ from UTC's.)
    let kiritimati = |ago: i64| {
        (chrono::Utc::now() - chrono::Duration::seconds(ago))
            .with_timezone(&chrono_tz::Pacific::Kiritimati)
            .date_naive()
            .to_string()
    };
    let allowed = [kiritimati(60), kiritimati(0)];
    let days: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["key"].as_str().unwrap())
        .collect();
    assert!(
        !days.is_empty() && days.iter().all(|d| allowed.iter().any(|a| a == d)),
        "{days:?}, {allowed:?}"
    );
}

#[tokio::test]
async fn bad_arguments_are_clear_errors_with_exit_2() {
    let s = sell().await;
    for (args, says) in [
        (
            vec!["report", "--from", "2026-13-01"],
            "--from \"2026-13-01\": no such day",
        ),
        (
            vec!["report", "--to", "29/11/2026"],
            "--to \"29/11/2026\": not a date",
        ),
        (
            vec!["report", "--from", "2026-11-30", "--to", "2026-11-01"],
            "--from 2026-11-30 is after --to 2026-11-01",
        ),
        (
            vec!["report", "--by", "week"],
            "--by \"week\": unknown grouping",
        ),
        (
            vec!["report", "--format", "xml"],
            "--format \"xml\": unknown format",
        ),
        (
            vec!["export", "--from", "2026-02-30", "--to", "2026-03-01"],
            "--from \"2026-02-30\": no such day",
        ),
        (
            vec![
                "export",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-02",
                "--type",
                "sales",
            ],
            "--type \"sales\": unknown record type",
        ),
        (
            vec![
                "export",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-02",
                "--format",
                "csv",
                "--type",
                "sale,auction",
            ],
            "--format csv takes one --type",
        ),
        (vec!["replay", "au_nope"], "no auction \"au_nope\""),
        (
            vec!["report", "--tz", "Mars/Olympus_Mons"],
            "--tz \"Mars/Olympus_Mons\": not an IANA time zone",
        ),
        (
            vec![
                "export",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-02",
                "--tz",
                "+03:00",
            ],
            "--tz \"+03:00\": not an IANA time zone",
        ),
    ] {
        let mut full = vec!["ledger"];
        full.extend(args.iter().copied());
        full.extend(["--dir", s.dir()]);
        let o = run(&full);
        assert_eq!(o.status.code(), Some(2), "{full:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{full:?}: {}", text(&o));
        assert!(
            o.stdout.is_empty(),
            "{full:?} printed a result: {}",
            text(&o)
        );
    }
    // A directory that does not exist, or a file: said as it is, with the way to name
    // the ledger (black-box round 68d), by every tool.
    let file = tempfile::NamedTempFile::new().unwrap();
    let file = file.path().to_str().unwrap();
    for (tool, dir, says) in [
        (
            "report",
            "/nonexistent/ledger",
            "/nonexistent/ledger does not exist",
        ),
        (
            "verify",
            "/nonexistent/ledger",
            "/nonexistent/ledger does not exist",
        ),
        (
            "replay",
            "/nonexistent/ledger",
            "/nonexistent/ledger does not exist",
        ),
        ("report", file, "is not a directory"),
        ("verify", file, "is not a directory"),
    ] {
        let mut args = vec!["ledger", tool, "--dir", dir];
        if tool == "replay" {
            args.push("au_1");
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{tool}: {}", text(&o));
        assert!(
            text(&o).contains(says)
                && text(&o).contains("--dir DIR")
                && text(&o).contains("--config FILE"),
            "{tool}: {}",
            text(&o)
        );
    }
    // Black-box round 148a: a path with terminal escapes and a line break reached the
    // terminal raw (a cleared screen, a forged line), and a 100,000-character one was
    // printed whole; `--ledger "dir "` made a directory named with the space.
    let hostile = "/nonexistent/a\u{1b}[2J\u{1b}]8;;http://x\u{7}\r\n2026 FAKE\u{202e}";
    let long = format!("/nonexistent/{}", "p".repeat(100_000));
    for dir in [hostile, long.as_str()] {
        for tool in ["verify", "report"] {
            let o = run(&["ledger", tool, "--dir", dir]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{tool}: {err}");
            // (A name over the system's limit cannot be looked up: "cannot be read"; one
            // with a control character is refused before the arguments are read.)
            assert!(
                err.contains("does not exist")
                    || err.contains("cannot be read")
                    || err.contains("an argument holds a control or text-direction character"),
                "{tool}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{tool}: {err}");
            assert!(err.len() < 1_000, "{tool}: {} bytes", err.len());
            assert!(
                !err.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
                "{tool}: {err:?}"
            );
        }
    }
    // Nor may an argument's line break forge a line, where the argument parser, a
    // refusal to start or a tool quotes it (black-box round 149a).
    for args in [
        &["--listen", "127.0.0.1:1\nFORGED \u{1b}[2J"][..],
        &["--ledger", "/nonexistent/x\nFORGED", "--check-config"][..],
        &["train", "--ledger", "/nonexistent/x\nFORGED"][..],
        &[
            "models",
            "import",
            "--lead-score",
            "/nonexistent/m\nFORGED.json",
        ][..],
        &["ledger", "bogus\nFORGED"][..],
    ] {
        let o = run(args);
        let all = text(&o);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {all}");
        assert!(
            !all.lines().any(|l| l.starts_with("FORGED")) && !all.contains('\u{1b}'),
            "{args:?}: {all:?}"
        );
    }
    for args in [
        &["--ledger", "ledger ", "--check-config"][..],
        &["train", "--ledger", " ledger"][..],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            text(&o).contains("starts or ends with white space"),
            "{args:?}: {}",
            text(&o)
        );
    }
}

#[tokio::test]
async fn verify_reconciles_and_names_a_changed_seller_price() {
    let s = sell().await;
    let o = run(&["ledger", "verify", "--config", s.config()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("OK: every checksum and the chain verify"),
        "{out}"
    );
    assert!(out.contains("USD: 4 sale(s), revenue 78.00 - refunds 0.00 = sales 78.00; payouts 64.00, margin 14.00"), "{out}");
    assert!(
        out.contains("payouts checked against the configuration"),
        "{out}"
    );
    let o = run(&["ledger", "verify", "--dir", s.dir()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("needs --config"), "{}", text(&o));
    // Black-box round 85a: the global `--ledger` and `--config` serve the ledger commands
    // too (`--ledger DIR ledger verify` read `pingpost-ledger`, which does not exist
    // here); the same output as with the command's own flags.
    let by_dir = text(&run(&["ledger", "verify", "--dir", s.dir()]));
    let o = run(&["--ledger", s.dir(), "ledger", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(text(&o), by_dir);
    let o = run(&["--config", s.config(), "ledger", "report"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        text(&o),
        text(&run(&["ledger", "report", "--config", s.config()]))
    );

    // A copy whose first sale pays the seller 17.00 instead of the 16.00 of its payout.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("ledger");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&s.ex.ledger_path).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let seg = copy.join("seg-00000001.jsonl");
    let text0 = std::fs::read_to_string(&seg).unwrap();
    let (n, line) = text0
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("\"type\":\"sale\""))
        .unwrap();
    let sale: Value = serde_json::from_str(line).unwrap();
    let changed = line.replacen(
        &format!("\"seller_price_micros\":{QUOTED}"),
        "\"seller_price_micros\":17000000",
        1,
    );
    assert_ne!(changed, line);
    std::fs::write(&seg, text0.replacen(line, &changed, 1)).unwrap();
    let o = run(&[
        "ledger",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
        "--config",
        s.config(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    // The chain catches the edit ...
    assert!(
        out.contains("PROBLEM: ") && out.contains("checksum does not match"),
        "{out}"
    );
    // ... and the last record read before it is not given as the ledger's end, to be
    // kept as an anchor (black-box round 250b).
    assert!(
        out.contains(&format!(
            "\nlast record before the problem (not the ledger's end: no anchor): seq {}, sum ",
            n
        )) && !out.contains("\nlast record: seq"),
        "{out}"
    );
    // ... and reconciliation names the record and what is wrong with its money.
    let place = format!("seg-00000001.jsonl seq {}", sale["seq"]);
    assert_eq!(sale["seq"].as_u64().unwrap(), n as u64 + 1);
    let lead = sale["lead_id"].as_str().unwrap();
    let mismatch = |needle: &str| {
        out.lines().any(|l| {
            l.starts_with("MISMATCH: ")
                && l.contains(&place)
                && l.contains(lead)
                && l.contains(needle)
        })
    };
    assert!(
        mismatch("margin_micros 4000000 is not bid_micros 20000000 - seller_price_micros 17000000"),
        "{out}"
    );
    assert!(mismatch("seller_price_micros 17000000 but seller main's payout model in the configuration given (revenue_share 80%) on the winning bid 20000000 gives 16000000; the auction ran under generation 1, the ledger's latest"), "{out}");
    assert!(
        mismatch("differs from the price the auction quoted (16000000)"),
        "{out}"
    );
    assert!(out.contains("RECONCILIATION FAILED"), "{out}");
}

#[tokio::test]
async fn replay_rederives_the_award_and_explains_it() {
    let s = sell().await;
    let o = run(&[
        "ledger",
        "replay",
        &s.fallback_auction,
        "--config",
        s.config(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("— MATCHES the record"), "{out}");
    assert!(out.contains("acme: WON: bid 20.00 USD"), "{out}");
    assert!(
        out.contains("the seller is paid 16.00 USD under revenue_share 80%"),
        "{out}"
    );
    assert!(out.contains("bravo: lost: bid 18.00 USD"), "{out}");
    // The default award is expected value: the loser is explained by its expected value
    // (bid x the recorded p), never by a seller-price ranking the award did not use.
    assert!(out.contains("ranking by expected value"), "{out}");
    assert!(out.contains("ranked #2: its expected value "), "{out}");
    assert!(out.contains("is lower than acme's "), "{out}");
    assert!(!out.contains("ranking by seller price"), "{out}");
    assert!(
        out.contains("nobid: passed (no bid: outside_criteria)"),
        "{out}"
    );
    assert!(out.contains("post attempt 0 to acme: rejected"), "{out}");
    assert!(out.contains("SOLD to bravo at attempt 1"), "{out}");
    assert!(
        out.contains("the buyer pays 18.00 USD, the seller gets 16.00 USD, margin 2.00 USD"),
        "{out}"
    );
    // By the ping id the seller was answered: the same auction, the same replay
    // (black-box round 144b: `no auction "pg_…"`, and no log line names an auction).
    let auctions = s.ex.ledger_of("auction");
    let ping_id = auctions
        .iter()
        .find(|a| a["auction_id"] == s.fallback_auction.as_str())
        .and_then(|a| a["ping_id"].as_str())
        .expect("the fallback auction's ping id")
        .to_string();
    assert!(ping_id.starts_with("pg_"), "{ping_id}");
    let o = run(&["ledger", "replay", &ping_id, "--config", s.config()]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o), out);

    // Without a configuration: explained, not re-derived.
    let o = run(&["ledger", "replay", &s.first_auction, "--dir", s.dir()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("not re-derived: replaying the award needs --config"),
        "{out}"
    );
    // Two bids were ranked (acme 20.00, bravo 18.00): never "the only bid".
    assert!(
        out.contains("the highest expected value of 2 ranked bids"),
        "{out}"
    );
    assert!(!out.contains("the only bid"), "{out}");

    // A configuration whose payout differs: the replay does not match.
    let cfg = std::fs::read_to_string(&s.ex.config_path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other.toml");
    std::fs::write(&other, cfg.replacen("share_pct = 80", "share_pct = 70", 1)).unwrap();
    let o = run(&[
        "ledger",
        "replay",
        &s.first_auction,
        "--dir",
        s.dir(),
        "--config",
        other.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("MISMATCH: re-derived under the configuration (revenue_share 70%, ranking by expected value (bid x the recorded p), ties by the higher bid then configuration order): acme (bid 20.00 USD, seller price 14.00 USD), but the record says acme (bid 20.00 USD, seller price 16.00 USD)"), "{out}");

    // Every bid under the seller's min_price: nothing was ranked, and the replay says so
    // rather than naming a ranking the auction did not use; the reserve is in the
    // auction's recorded currency, not the configuration's (black-box round 23).
    let below = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_below","ping_id":"pg_below","seller":"main","vertical":"auto_insurance","currency":"EUR","test":false,"direct":false,"reserve_micros":1000000000,"buyers":[{"buyer":"acme","outcome":"bid","bid_micros":20000000},{"buyer":"bravo","outcome":"bid","bid_micros":18000000}],"no_bid":"below_reserve","took_us":5}"#;
    let tmp = framed_ledger(&[below]);
    for with_config in [true, false] {
        let mut args = vec![
            "ledger",
            "replay",
            "au_below",
            "--dir",
            tmp.path().to_str().unwrap(),
        ];
        if with_config {
            args.extend(["--config", s.config()]);
        }
        let o = run(&args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(
            out.contains("recorded award: none (below_reserve); reserve 1000.00 EUR"),
            "{out}"
        );
        assert!(!out.contains("ranking by seller price"), "{out}");
        if with_config {
            assert!(
                out.contains("no bid reached the reserve, so none was ranked"),
                "{out}"
            );
        }
    }
}

#[tokio::test]
async fn export_writes_a_date_range_as_csv_or_json_lines() {
    let s = sell().await;
    let sales = s.ex.ledger_of("sale");
    let day = &sales[0]["at"].as_str().unwrap()[..10];
    let last = &sales[sales.len() - 1]["at"].as_str().unwrap()[..10];
    let o = run(&[
        "ledger",
        "export",
        "--dir",
        s.dir(),
        "--from",
        day,
        "--to",
        last,
        "--format",
        "csv",
        "--type",
        "sale",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let csv = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "seq,at,generation,lead_id,ping_id,auction_id,seller,buyer,vertical,currency,test,bid_micros,seller_price_micros,margin_micros,attempt,buyer_lead_id,buyer_name");
    assert_eq!(lines.len(), 6, "{csv}");
    assert!(
        lines.iter().any(
            |l| l.contains(",main,bravo,auto_insurance,USD,false,18000000,16000000,2000000,1,")
        ),
        "{csv}"
    );

    let o = run(&[
        "ledger",
        "export",
        "--dir",
        s.dir(),
        "--from",
        day,
        "--to",
        last,
        "--type",
        "sale,auction",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stored = std::fs::read_to_string(s.ex.ledger_path.join("seg-00000001.jsonl")).unwrap();
    let jsonl = String::from_utf8(o.stdout).unwrap();
    assert_eq!(jsonl.lines().count(), 10, "{jsonl}");
    for l in jsonl.lines() {
        assert!(
            stored.contains(l),
            "exported lines are the stored lines: {l}"
        );
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["type"] == "sale" || v["type"] == "auction", "{v}");
    }
    // A range before the ledger: nothing (the header only for CSV).
    let o = run(&[
        "ledger",
        "export",
        "--dir",
        s.dir(),
        "--from",
        "2000-01-01",
        "--to",
        "2000-01-01",
    ]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
}

/// The Chromium the browser check runs (Debian's `chromium`; `exchange/tests/chromium.sh`
/// installs it, and the README's test command runs that first).
/// An export past the file size limit (`ulimit -f`) says "File too large" and exits 2
/// (black-box round 100a: SIGXFSZ killed it, exit 153, the file cut and nothing said).
#[tokio::test]
async fn an_export_past_the_file_size_limit_says_so() {
    let s = sell().await;
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("export.jsonl");
    // 1 block (512 bytes for dash, 1 KiB for bash): less than the export.
    let o = Command::new("sh")
        .args(["-c", "ulimit -f 1 && exec \"$0\" ledger export --dir \"$1\" --from 2000-01-01 --to 2099-12-31 > \"$2\""])
        .arg(env!("CARGO_BIN_EXE_pingpost"))
        .arg(s.dir())
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("File too large"), "{}", text(&o));
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PINGPOST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

/// `data-value` of every `<td data-col=COL>` per row key of table `id` in `dom`.
fn table_values(dom: &str, id: &str, col: &str) -> Vec<(String, i64)> {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id}"));
    let end = start + dom[start..].find("</table>").unwrap();
    let table = &dom[start..end];
    let row_re = regex::Regex::new(r#"<tr[^>]*data-key="([^"]*)"[^>]*>(.*?)</tr>"#).unwrap();
    let cell_re = regex::Regex::new(&format!(r#"data-col="{col}" data-value="(-?\d+)""#)).unwrap();
    row_re
        .captures_iter(table)
        .map(|c| {
            let v = cell_re
                .captures(&c[2])
                .unwrap_or_else(|| panic!("no {col} in {}", &c[2]))[1]
                .parse()
                .unwrap();
            (c[1].to_string(), v)
        })
        .collect()
}

#[tokio::test]
async fn html_report_renders_in_chromium_with_the_json_figures() {
    let Some(chromium) = chromium() else {
        let allowed = std::env::var("PINGPOST_SKIP_BROWSER_CHECK").is_ok_and(|v| v == "1");
        assert!(
            allowed,
            "Chromium is not installed (/usr/bin/chromium or $PINGPOST_CHROMIUM): run exchange/tests/chromium.sh \
             (apt-get install -y --no-install-recommends chromium), or set PINGPOST_SKIP_BROWSER_CHECK=1 to skip this check"
        );
        eprintln!("\n!!!!!!!! SKIPPED: the HTML report's browser check (no Chromium, PINGPOST_SKIP_BROWSER_CHECK=1) !!!!!!!!\n");
        return;
    };
    let s = sell().await;
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("report.html");
    let o = run(&[
        "ledger",
        "report",
        "--config",
        s.config(),
        "--html",
        page.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no script, no stylesheet or image to fetch, no address but the
    // SVG namespace (a name, never fetched).
    let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for forbidden in [
        "<script", "http://", "https://", "<link", "<img", "@import", "url(",
    ] {
        assert!(
            !without_ns.contains(forbidden),
            "the page is not self-contained: {forbidden}"
        );
    }

    let profile = tmp.path().join("profile");
    let url = format!("file://{}", page.display());
    let out = Command::new("timeout")
        .arg("120")
        .arg(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    for (by, id) in [
        ("day", "by-day"),
        ("buyer", "by-buyer"),
        ("seller", "by-seller"),
        ("vertical", "by-vertical"),
    ] {
        let json = report_json(&s, by);
        let mut rows: Vec<&Value> = json["rows"].as_array().unwrap().iter().collect();
        rows.extend(json["totals"].as_array().unwrap());
        for col in [
            "pings",
            "bids",
            "quotes",
            "sales",
            "revenue_micros",
            "payouts_micros",
            "margin_micros",
            "returns",
            "refunds_micros",
        ] {
            let rendered = table_values(&dom, id, col);
            let expected: Vec<(String, i64)> = rows
                .iter()
                .map(|r| {
                    (
                        r["key"].as_str().unwrap().to_string(),
                        r[col].as_i64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(rendered, expected, "table {id}, column {col}");
        }
    }
    // The charts: one revenue and one margin bar per day and per buyer, with the JSON's
    // figures, inside rendered SVG elements.
    let bar_re = regex::Regex::new(r#"<rect data-chart="(\w+)" data-series="(\w+)" data-key="([^"]*)" data-currency="USD" data-value="(-?\d+)""#).unwrap();
    let bars: Vec<(String, String, String, i64)> = bar_re
        .captures_iter(&dom)
        .map(|c| {
            (
                c[1].to_string(),
                c[2].to_string(),
                c[3].to_string(),
                c[4].parse().unwrap(),
            )
        })
        .collect();
    for by in ["day", "buyer"] {
        let json = report_json(&s, by);
        for r in json["rows"].as_array().unwrap() {
            for (series, col) in [("revenue", "revenue_micros"), ("margin", "margin_micros")] {
                let want = (
                    by.to_string(),
                    series.to_string(),
                    r["key"].as_str().unwrap().to_string(),
                    r[col].as_i64().unwrap(),
                );
                assert!(bars.contains(&want), "no bar {want:?} in {bars:?}");
            }
        }
    }
    assert!(
        dom.contains("id=\"chart-day-USD\"") && dom.contains("id=\"chart-buyer-USD\""),
        "charts missing"
    );
    let total = report_json(&s, "day");
    let revenue = total["totals"][0]["revenue_micros"].as_i64().unwrap();
    assert!(
        dom.contains(&format!(
            "id=\"total-revenue-USD\" data-value=\"{revenue}\">78.00<"
        )),
        "total revenue"
    );
}

/// Runs `pingpost ledger report` in every grouping and format and checks that no row
/// adds money of two currencies: `expected` is each currency's (sales, revenue).
fn assert_report_per_currency(dir: &str, expected: &[(&str, u64, i64)]) {
    for by in ["day", "seller", "buyer", "vertical"] {
        let o = run(&[
            "ledger", "report", "--dir", dir, "--by", by, "--format", "json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        let totals: Vec<(String, u64, i64)> = r["totals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["currency"].as_str().unwrap().to_string(),
                    t["sales"].as_u64().unwrap(),
                    t["revenue_micros"].as_i64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, u64, i64)> = expected
            .iter()
            .map(|(c, n, rev)| (c.to_string(), *n, *rev))
            .collect();
        assert_eq!(totals, want, "by {by}: {r}");
        let o = run(&[
            "ledger", "report", "--dir", dir, "--by", by, "--format", "csv",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let csv = String::from_utf8(o.stdout).unwrap();
        for (c, n, rev) in expected {
            assert!(
                csv.lines().any(|l| l.starts_with(&format!("total,{c},"))
                    && l.contains(&format!(",{n},{rev},"))),
                "by {by}: {csv}"
            );
        }
        let o = run(&["ledger", "report", "--dir", dir, "--by", by]);
        let table = String::from_utf8(o.stdout).unwrap();
        for (c, _, _) in expected {
            assert!(
                table
                    .lines()
                    .any(|l| l.starts_with("total") && l.contains(c)),
                "by {by}: {table}"
            );
        }
    }
}

/// Issue: a reload changed a vertical's currency while a quote was open; the post sold
/// in the new currency, and the report added JPY into USD.
#[tokio::test]
async fn a_quote_keeps_its_currency_across_a_reload_and_currencies_are_never_added() {
    let acme = ScriptedBidder::bidding(20.0);
    let (a, _ha) = serve("acme", &acme).await;
    let mut ex = TestConfig::new().buyer(a).start().await;
    let quoted = ex.client.ping("TX").await;
    assert_eq!(quoted.currency.as_deref(), Some("USD"));
    let cfg = std::fs::read_to_string(&ex.config_path).unwrap();
    let jpy = cfg.replacen(
        "[verticals.auto_insurance]\n",
        "[verticals.auto_insurance]\ncurrency = \"JPY\"\n",
        1,
    );
    assert_ne!(jpy, cfg);
    ex.write_config_text(&jpy);
    let r = ex.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The quote made in USD sells in USD: the buyer bid and the seller was quoted in it.
    let sold = ex.client.post(&quoted.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.currency.as_deref(), Some("USD"), "{sold:?}");
    assert_eq!(sold.price.unwrap().0, QUOTED);
    // A quote made after the reload is in JPY.
    let p = ex.client.ping("TX").await;
    assert_eq!(p.currency.as_deref(), Some("JPY"));
    let s = ex.client.post(&p.ping_id, "TX").await;
    assert_eq!(s.currency.as_deref(), Some("JPY"), "{s:?}");
    ex.shutdown().await;
    let currencies: Vec<String> = ex
        .ledger_of("sale")
        .iter()
        .map(|s| s["currency"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(currencies, ["USD", "JPY"]);

    let dir = ex.ledger_path.to_str().unwrap();
    assert_report_per_currency(dir, &[("JPY", 1, ACME_BID), ("USD", 1, ACME_BID)]);
    // The auction after the reload counts its ping, bid and quote in JPY, the currency
    // it ran in (its record says so), not in the vertical's currency before it.
    let o = run(&[
        "ledger", "report", "--dir", dir, "--by", "vertical", "--format", "json",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let counts: Vec<(String, u64, u64, u64)> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["currency"].as_str().unwrap().to_string(),
                row["pings"].as_u64().unwrap(),
                row["bids"].as_u64().unwrap(),
                row["quotes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [("JPY".to_string(), 1, 1, 1), ("USD".to_string(), 1, 1, 1)],
        "{r}"
    );
    assert!(ex
        .ledger_of("auction")
        .iter()
        .map(|a| a["currency"].as_str().unwrap())
        .eq(["USD", "JPY"]));
    let o = run(&["ledger", "verify", "--dir", dir]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("JPY: 1 sale(s), revenue 20.00"), "{out}");
    assert!(out.contains("USD: 1 sale(s), revenue 20.00"), "{out}");
}

/// Black-box round 93b: a sale with `"bid_micros"` twice (a forged first value inserted,
/// the chain recomputed) verified, read by its last value, while an export reader taking
/// the first saw a sale of 999,000. A record with a name twice is no readable record.
#[test]
fn a_record_with_a_name_twice_is_refused_by_the_tools() {
    let forged = SALE_1.replace(
        r#""bid_micros":10000000"#,
        r#""bid_micros":999000000000,"bid_micros":10000000"#,
    );
    let dir = framed_ledger(&[AUCTION_1, &forged]);
    let d = dir.path().to_str().unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "not a readable record: the name \"bid_micros\" appears more than once in one object"
        ),
        "{out}"
    );
    for args in [
        &["ledger", "report", "--dir", d][..],
        &[
            "ledger",
            "export",
            "--dir",
            d,
            "--from",
            "2026-11-29",
            "--to",
            "2026-11-29",
        ],
    ] {
        let o = run(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains("appears more than once"), "{args:?}: {out}");
    }
}

/// Black-box round 72a: a last record whole but without its newline is completed by the
/// next start, and counted; verify's last line said the start would truncate it.
#[test]
fn verify_says_a_last_record_without_its_newline_is_completed_not_cut() {
    let dir = framed_ledger(&[AUCTION_1, SALE_1]);
    let d = dir.path().to_str().unwrap();
    let seg = dir.path().join(pingpost::ledger::segments::segment_name(1));
    let bytes = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &bytes[..bytes.len() - 1]).unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "NOT OK until the exchange's next start adds the last record's missing newline"
        ),
        "{out}"
    );
    assert!(!out.contains("truncates the torn tail"), "{out}");
    assert!(out.contains("1 sale(s)"), "{out}");
}

/// A directory holding a fingerprint key and no record, with no segment file or only
/// empty ones: every tool says its records were removed and refuses it (black-box round
/// 72a: report said it held no ledger; round 93b: with an empty segment in place, report,
/// export and `--html` gave an all-zero P&L with exit 0 and replay said "no auction").
#[test]
fn the_finance_tools_say_a_key_without_segments_lost_its_records() {
    for empty_segments in [0, 1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("FINGERPRINT_KEY"), b"k").unwrap();
        for n in 1..=empty_segments {
            std::fs::write(
                dir.path().join(pingpost::ledger::segments::segment_name(n)),
                b"",
            )
            .unwrap();
        }
        let html = dir.path().join("report.html");
        let html = html.to_str().unwrap();
        for args in [
            &["ledger", "report", "--dir", d][..],
            &["ledger", "report", "--dir", d, "--format", "json"],
            &["ledger", "report", "--dir", d, "--html", html],
            &[
                "ledger",
                "export",
                "--dir",
                d,
                "--from",
                "2026-11-29",
                "--to",
                "2026-11-29",
            ],
            &[
                "ledger",
                "export",
                "--dir",
                d,
                "--from",
                "2026-11-29",
                "--to",
                "2026-11-29",
                "--format",
                "csv",
            ],
            &["ledger", "replay", "--dir", d, "au_1"],
        ] {
            let o = run(args);
            let out = text(&o);
            assert_eq!(o.status.code(), Some(2), "{empty_segments} {args:?}: {out}");
            assert!(
                out.contains("has no record but holds FINGERPRINT_KEY"),
                "{empty_segments} {args:?}: {out}"
            );
        }
        assert!(!dir.path().join("report.html").exists());
    }
}

/// Black-box round 60b: a ledger directory whose segments were removed (its fingerprint
/// key is still there) is a problem for `verify`, not an empty ledger that verifies.
#[test]
fn verify_fails_a_ledger_whose_segments_were_removed() {
    let dir = framed_ledger(&[AUCTION_1]);
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("FINGERPRINT_KEY"), b"k").unwrap();
    assert_eq!(
        run(&["ledger", "verify", "--dir", d]).status.code(),
        Some(0)
    );
    std::fs::remove_file(dir.path().join(pingpost::ledger::segments::segment_name(1))).unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("PROBLEM: ledger directory"), "{out}");
    assert!(
        out.contains("has no record but holds FINGERPRINT_KEY"),
        "{out}"
    );
}

/// Black-box round 61b: with the newest segment of a ledger removed, `verify` said OK.
/// The head names the last record synced; a ledger that ends before it is a problem.
#[test]
fn verify_fails_a_ledger_whose_last_segment_was_removed() {
    use pingpost::ledger::{head, segments};
    let dir = framed_ledger(&[AUCTION_1]);
    let d = dir.path().to_str().unwrap();
    // A second segment, chained to the first, holding record 2.
    let both = segments::frame_all([AUCTION_1, AUCTION_1]);
    let first = segments::frame_all([AUCTION_1]);
    let second = dir.path().join(segments::segment_name(2));
    std::fs::write(&second, &both[first.len()..]).unwrap();
    std::fs::write(dir.path().join(head::HEAD_FILE), head::line(2)).unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("no HEAD file"), "{}", text(&o));
    std::fs::remove_file(&second).unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("PROBLEM: ledger directory"), "{out}");
    assert!(out.contains("records 2..=2 were removed"), "{out}");
    assert!(!out.contains("OK: the money reconciles"), "{out}");
    assert!(out.contains("NOT OK"), "{out}");
    // Nor do report, export and replay count what is left (black-box round 71a: exit 0,
    // a refund among the removed records left out of the figures).
    for args in [
        &["ledger", "report", "--dir", d][..],
        &[
            "ledger",
            "export",
            "--dir",
            d,
            "--from",
            "2026-11-29",
            "--to",
            "2026-11-29",
        ],
        &["ledger", "replay", "--dir", d, "au_1"],
    ] {
        let o = run(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(
            out.contains("records 2..=2 were removed"),
            "{args:?}: {out}"
        );
        assert!(o.stdout.is_empty(), "{args:?}: {out}");
    }
    // Segment 2 back, and a byte of record 1 changed: the chain stops there, which is not
    // the ledger's end, so nothing is said to be removed (black-box round 64c).
    std::fs::write(&second, &both[first.len()..]).unwrap();
    let seg1 = dir.path().join(segments::segment_name(1));
    let mut bytes = std::fs::read(&seg1).unwrap();
    bytes[20] ^= 0x01;
    std::fs::write(&seg1, &bytes).unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("checksum does not match"), "{out}");
    assert!(!out.contains("were removed"), "{out}");
    bytes[20] ^= 0x01;
    std::fs::write(&seg1, &bytes).unwrap();
    std::fs::remove_file(&second).unwrap();
    // Without a head, verify says the check could not be made (black-box round 62c).
    std::fs::remove_file(dir.path().join(head::HEAD_FILE)).unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("note: no HEAD file"), "{}", text(&o));
    assert_eq!(
        run(&["ledger", "report", "--dir", d]).status.code(),
        Some(0)
    );
    // A head that is not one the exchange writes is a problem too, never ignored.
    std::fs::write(dir.path().join(head::HEAD_FILE), b"seq 1\n").unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("is not a ledger head"), "{out}");
}

/// A framed ledger of `records` in a fresh directory.
fn framed_ledger(records: &[&str]) -> tempfile::TempDir {
    use pingpost::ledger::segments;
    let dir = tempfile::tempdir().unwrap();
    let out = segments::frame_all(records);
    std::fs::write(dir.path().join(segments::segment_name(1)), out).unwrap();
    dir
}

const AUCTION_1: &str = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{"buyer":"b","outcome":"bid","bid_micros":10000000}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}"#;
/// A sale of format 3, before `post_sent` (a sale of format 4 or later needs its
/// delivery's record): these ledgers are about reading and the money.
const SALE_1: &str = r#"{"type":"sale","v":3,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_1","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0}"#;
const SALE_V99: &str = r#"{"type":"sale","v":99,"generation":1,"at":"2026-11-29T10:00:02.000Z","lead_id":"ld_2","ping_id":"pg_2","auction_id":"au_2","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":50000000,"seller_price_micros":40000000,"margin_micros":10000000,"attempt":0}"#;
const DECISION: &str = r#"{"type":"model_decision","v":5,"generation":1,"at":"2026-11-29T10:00:03.000Z","vertical":"v","challenger":"v20261129T100000000Z","promoted":false,"reason":"realization log loss: challenger 0.5, champion 0.4"}"#;

/// Issues: report --format csv said nothing of the records it skipped; verify said
/// "OK: the money reconciles" without them; verify called model_decision (a record this
/// pingpost writes) unknown.
#[test]
fn skipped_records_are_reported_by_csv_and_verify_never_claims_ok_without_them() {
    let tmp = framed_ledger(&[AUCTION_1, SALE_1, SALE_V99, DECISION]);
    let dir = tmp.path().to_str().unwrap();
    let o = run(&["ledger", "report", "--dir", dir, "--format", "csv"]);
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("note: 1 record(s) of format version 99 skipped"),
        "{stderr}"
    );
    // stdout stays plain CSV.
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(csv.lines().all(|l| !l.contains("note")), "{csv}");

    let o = run(&["ledger", "verify", "--dir", dir]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(!out.contains("OK: the money reconciles"), "{out}");
    assert!(
        out.contains("NOT RECONCILED: 1 record(s) skipped (1 of format version 99"),
        "{out}"
    );
    assert!(
        !out.contains("ignored (a type this pingpost does not know)"),
        "a type this pingpost writes: {out}"
    );

    // Without the newer record: OK, and model_decision is still no "unknown type".
    let tmp = framed_ledger(&[AUCTION_1, SALE_1, DECISION]);
    let o = run(&["ledger", "verify", "--dir", tmp.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("OK: the money reconciles"), "{out}");
    assert!(!out.contains("ignored"), "{out}");
}

/// Issue: verify --config failed an older sale after a legitimate payout change by
/// reload (it re-checks with today's rule).
#[tokio::test]
async fn verify_config_does_not_fail_sales_decided_before_a_payout_reload() {
    let acme = ScriptedBidder::bidding(20.0);
    let (a, _ha) = serve("acme", &acme).await;
    let mut ex = TestConfig::new().buyer(a).start().await;
    let p = ex.client.ping("TX").await;
    assert_eq!(p.price.unwrap().0, QUOTED);
    assert_eq!(
        ex.client.post(&p.ping_id, "TX").await.status,
        PostStatus::Sold
    );
    // A test sale of generation 1 too: counted apart (black-box round 34: the count
    // mixed it in while the money lines leave it out).
    let mut ping = ping_body("TX");
    ping["test"] = json!(true);
    let t = ex.client.post_json("/v1/ping", &ping).await.ping_answer();
    assert_eq!(
        ex.client.post(&t.ping_id, "TX").await.status,
        PostStatus::Sold
    );
    let cfg = std::fs::read_to_string(&ex.config_path).unwrap();
    ex.write_config_text(&cfg.replace("share_pct = 80", "share_pct = 70"));
    let r = ex.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let p = ex.client.ping("TX").await;
    assert_eq!(p.price.unwrap().0, 14_000_000);
    assert_eq!(
        ex.client.post(&p.ping_id, "TX").await.status,
        PostStatus::Sold
    );
    ex.shutdown().await;
    let o = run(&[
        "ledger",
        "verify",
        "--config",
        ex.config_path.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("payouts re-checked against the configuration given (today's payout models"),
        "{out}"
    );
    assert!(
        out.contains("generation 2 from seg-00000001.jsonl seq "),
        "{out}"
    );
    assert!(
        out.contains("sales decided before it (2 of generation 1, 1 of them test;"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("PAYOUT NOT RE-CHECKED: ")
            && l.contains("seller_price_micros 16000000")
            && l.contains(
                "gives 14000000; the auction ran under generation 1, before a reload or restart"
            )),
        "{out}"
    );
    assert!(out.contains("OK: the money reconciles"), "{out}");

    // The seller removed since (black-box round 18: every sale of a seller a reload had
    // removed failed verify): its sales of earlier runs are listed, like a changed rule;
    // one of the latest run still fails, as its payout cannot be checked.
    let removed = ex.config_path.with_file_name("seller-removed.toml");
    let toml = std::fs::read_to_string(&ex.config_path).unwrap();
    assert!(toml.contains("sellers.main"));
    std::fs::write(&removed, toml.replace("sellers.main", "sellers.other")).unwrap();
    let o = run(&["ledger", "verify", "--config", removed.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("PAYOUT NOT RE-CHECKED: ")
            && l.contains("seller \"main\" is not in the configuration given; the auction ran under generation 1, before a reload or restart")),
        "{out}"
    );
    let mismatches: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("MISMATCH: "))
        .collect();
    assert_eq!(mismatches.len(), 1, "{out}");
    assert!(
        mismatches[0].contains("seller \"main\" is not in the configuration, and the auction ran under generation 2, the ledger's latest"),
        "{out}"
    );
}

/// Black-box round 8: with its chain broken, verify exited 1 but its last line said
/// "OK: the money reconciles and every delivery has an outcome".
#[test]
fn verify_of_a_broken_chain_never_ends_with_ok() {
    let tmp = framed_ledger(&[AUCTION_1, SALE_1]);
    let seg = tmp.path().join(pingpost::ledger::segments::segment_name(1));
    // The first line's checksum changed (one hex digit), the money untouched: the
    // sale still reconciles with its auction.
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(7).position(|w| w == b"\"sum\":\"").unwrap() + 7;
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&seg, bytes).unwrap();
    let o = run(&["ledger", "verify", "--dir", tmp.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("OK: ")), "{out}");
    assert!(out.contains("NOT OK: the ledger does not verify"), "{out}");
}

/// An auction and its sale of `n` (`au_n`, `pg_n`, `ld_n`) to `buyer`, in USD: the buyer
/// pays `bid`, the seller is paid `price`. The sale is of format 3 (before `post_sent`).
fn sold(n: u32, buyer: &str, bid: i64, price: i64) -> [String; 2] {
    [
        format!(
            r#"{{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_{n}","ping_id":"pg_{n}","seller":"s","vertical":"v","currency":"USD","test":false,"direct":false,"reserve_micros":1000000,"buyers":[{{"buyer":"{buyer}","outcome":"bid","bid_micros":{bid}}}],"winner":"{buyer}","bid_micros":{bid},"seller_price_micros":{price},"took_us":5}}"#
        ),
        format!(
            r#"{{"type":"sale","v":3,"generation":1,"at":"2026-11-29T10:00:01.000Z","lead_id":"ld_{n}","ping_id":"pg_{n}","auction_id":"au_{n}","seller":"s","buyer":"{buyer}","vertical":"v","currency":"USD","test":false,"bid_micros":{bid},"seller_price_micros":{price},"margin_micros":{},"attempt":0}}"#,
            bid - price
        ),
    ]
}

/// Black-box round 41: on a genuine ledger whose revenue is 9.4e18 micros (each sale
/// far from `i64::MAX`), `report` saturated revenue at 9223372036854.775807 with exit 0
/// (its row then broke revenue = payouts + margin) and `verify` called the untouched
/// ledger a MISMATCH; a sale of `i64::MAX` made the by-buyer total wrap negative. Every
/// sum is exact, in the table, CSV and JSON. (Bids past 1,000,000,000 units are past what
/// the exchange takes: since round 203b verify says so of each, and of nothing else.)
#[test]
fn money_past_i64_max_is_reported_exactly_and_reconciles() {
    // Ten sales of 940,000,000,000.00 (seller paid 80%): 9.4e18 micros of revenue.
    let (bid, price) = (940_000_000_000_000_000i64, 752_000_000_000_000_000i64);
    let records: Vec<String> = (1..=10).flat_map(|n| sold(n, "b", bid, price)).collect();
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let tmp = framed_ledger(&refs);
    let dir = tmp.path().to_str().unwrap();
    let o = run(&["ledger", "report", "--dir", dir, "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let json = String::from_utf8(o.stdout).unwrap();
    for exact in [
        r#""revenue_micros": 9400000000000000000,"#,
        r#""payouts_micros": 7520000000000000000,"#,
        r#""margin_micros": 1880000000000000000,"#,
    ] {
        assert!(json.contains(exact), "{exact}: {json}");
    }
    let o = run(&["ledger", "report", "--dir", dir]);
    let table = text(&o);
    assert!(o.status.success(), "{table}");
    let total: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("total"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        total.get(6..9),
        Some(&["9400000000000.00", "7520000000000.00", "1880000000000.00"][..]),
        "{table}"
    );
    let o = run(&["ledger", "verify", "--dir", dir]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let mismatches: Vec<&str> = out.lines().filter(|l| l.starts_with("MISMATCH")).collect();
    assert_eq!(mismatches.len(), 10, "{out}");
    assert!(
        mismatches
            .iter()
            .all(|m| m.contains("is a price the exchange never sells at")),
        "{out}"
    );
    assert!(
        out.contains("USD: 10 sale(s), revenue 9400000000000.00 - refunds 0.00 = sales 9400000000000.00; payouts 7520000000000.00, margin 1880000000000.00"),
        "{out}"
    );

    // One sale of i64::MAX among others: the by-buyer total is exact and positive.
    let mut records: Vec<String> = sold(1, "b", i64::MAX, i64::MAX - 1).into();
    records.extend(sold(2, "b", 20_000_000, 16_000_000));
    records.extend(sold(3, "c", 20_000_000, 16_000_000));
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let tmp = framed_ledger(&refs);
    let dir = tmp.path().to_str().unwrap();
    let o = run(&[
        "ledger", "report", "--dir", dir, "--by", "buyer", "--format", "csv",
    ]);
    let csv = text(&o);
    assert!(o.status.success(), "{csv}");
    assert!(
        csv.contains("\nb,USD,2,2,0,2,9223372036874775807,9223372036870775806,4000001,0,0\n"),
        "{csv}"
    );
    assert!(
        csv.contains("\ntotal,USD,3,3,0,3,9223372036894775807,9223372036886775806,8000001,0,0\n"),
        "{csv}"
    );
    let o = run(&["ledger", "verify", "--dir", dir]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let mismatches: Vec<&str> = out.lines().filter(|l| l.starts_with("MISMATCH")).collect();
    assert_eq!(mismatches.len(), 1, "{out}");
    assert!(
        mismatches[0]
            .contains("bid_micros 9223372036854775807 is a price the exchange never sells at"),
        "{out}"
    );
}

/// Black-box round 41: a money field that is not an integer fitting i64 was read as 0,
/// and report exited 0 without that money. report, export and replay refuse the ledger
/// with status 2 (nothing on stdout), verify lists it as a PROBLEM and exits 1.
#[test]
fn a_malformed_money_field_stops_report_export_and_replay_and_fails_verify() {
    let [auction, sale] = sold(1, "b", 20_000_000, 16_000_000);
    let sale = sale.replace(r#""bid_micros":20000000"#, r#""bid_micros":1e22"#);
    let tmp = framed_ledger(&[&auction, &sale]);
    let dir = tmp.path().to_str().unwrap();
    let named = "seg-00000001.jsonl seq 2: sale record: bid_micros is 1e+22";
    for args in [
        &["ledger", "report", "--dir", dir][..],
        &[
            "ledger",
            "export",
            "--dir",
            dir,
            "--from",
            "2026-11-29",
            "--to",
            "2026-11-29",
        ],
        &["ledger", "replay", "au_1", "--dir", dir],
    ] {
        let o = run(args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(o.stdout.is_empty(), "{args:?}: {out}");
        assert!(out.contains(named), "{args:?}: {out}");
    }
    let o = run(&["ledger", "verify", "--dir", dir]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("PROBLEM: {named}")), "{out}");
    assert!(!out.contains("bid_micros 0"), "{out}");
}

/// `pingpost ledger verify | head -1` panicked ("failed printing to stdout: Broken
/// pipe", exit 101; black-box round 9): a reader that goes away ends every ledger
/// command with status 2 and one line on stderr, as `ledger export` did.
#[test]
fn a_reader_that_goes_away_ends_a_ledger_command_with_2_not_a_panic() {
    use std::process::Stdio;
    let tmp = framed_ledger(&[AUCTION_1, SALE_1]);
    let dir = tmp.path().to_str().unwrap();
    for args in [
        vec!["ledger", "verify", "--dir", dir],
        vec!["ledger", "report", "--dir", dir],
        vec![
            "ledger",
            "export",
            "--dir",
            dir,
            "--from",
            "2026-11-29",
            "--to",
            "2026-11-29",
        ],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pingpost"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reading end closes before a byte is read, as `head -1` closes it early.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("writing:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// Black-box round 12: a configuration error written to a stderr whose reader went away
/// (`2>&1 | head -3`) panicked with 101; it ends with 2. The secrets are not read by the
/// tools, so a token variable set to a value the exchange would refuse stops nothing.
#[test]
fn a_config_error_to_a_closed_stderr_is_status_2_and_bad_secrets_stop_no_report() {
    use std::process::Stdio;
    let tmp = framed_ledger(&[AUCTION_1, SALE_1]);
    let cfg_dir = tempfile::tempdir().unwrap();
    let broken = cfg_dir.path().join("broken.toml");
    std::fs::write(&broken, "[server]\nno_such_key = 1\n").unwrap();
    for _ in 0..3 {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = Command::new(env!("CARGO_BIN_EXE_pingpost"))
            .args(["ledger", "report", "--config", broken.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(2));
    }
    // The default configuration names its token and secret variables; set them to
    // values the exchange refuses.
    let default = cfg_dir.path().join("default.toml");
    std::fs::write(&default, pingpost::app::DEFAULT_CONFIG).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args([
            "ledger",
            "report",
            "--config",
            default.to_str().unwrap(),
            "--dir",
            tmp.path().to_str().unwrap(),
        ])
        .env("PINGPOST_ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Black-box round 10: a sale, a crash, a restart under another payout model, and verify
/// (before any new auction) failed the sale as a MISMATCH: with no shutdown `flush` and
/// the same generation, the restart was not seen as a new run. Every start now writes a
/// `flush` with `start`, and a run begins there.
#[tokio::test]
async fn verify_config_does_not_fail_a_sale_decided_before_a_crash_and_restart() {
    let acme = ScriptedBidder::bidding(20.0);
    let (a, _ha) = serve("acme", &acme).await;
    let mut first = TestConfig::new().buyer(a.clone()).start().await;
    let p = first.client.ping("TX").await;
    assert_eq!(
        first.client.post(&p.ping_id, "TX").await.status,
        PostStatus::Sold
    );
    // A SIGKILL now: the sale is on disk, no shutdown flush.
    let tmp = tempfile::tempdir().unwrap();
    let crashed = tmp.path().join("crashed");
    crash_copy(&first.ledger_path, &crashed);
    first.shutdown().await;
    let ledger_line = format!("ledger_path = {:?}", crashed.to_str().unwrap());
    let mut second = TestConfig::new()
        .buyer(a)
        .start_edited(move |t| {
            let t = t.replace("share_pct = 80", "share_pct = 70");
            t.lines()
                .map(|l| {
                    if l.starts_with("ledger_path = ") {
                        ledger_line.clone()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .await;
    // Verified while the restarted exchange runs (reading only is safe then), once its
    // start is on disk (queued before serving, written at once).
    let starts = || {
        pingpost::ledger::segments::read_all(&crashed)
            .unwrap()
            .lines()
            .filter(|l| l.contains(r#""type":"flush""#) && l.contains(r#""start":true"#))
            .count()
    };
    tokio::time::timeout(EVENT_WAIT_MAX, async {
        while starts() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the restart's flush is written");
    let config = second.config_path.clone();
    let o = run(&["ledger", "verify", "--config", config.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(!out.contains("MISMATCH"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("PAYOUT NOT RE-CHECKED: ")
            && l.contains("seller_price_micros 16000000")
            && l.contains("before a reload or restart")),
        "{out}"
    );
    // Each generation 1 named by its start (black-box round 110c: one number named the
    // latest run on one line and an earlier run's on the next).
    assert!(
        out.contains("sales decided before it (1 of generation 1 after start 1;"),
        "{out}"
    );
    assert!(
        out.contains("the ledger's latest run, generation 1 after start 2 from "),
        "{out}"
    );

    // Round 80a: generations start again at 1 at every start, and the summary added up
    // the sales of generation 1 of both starts. A sale of this start's generation 1, a
    // reload (generation 2) and an auction under it: both sales are earlier, each named
    // by its start.
    let p = second.client.ping("TX").await;
    assert_eq!(
        second.client.post(&p.ping_id, "TX").await.status,
        PostStatus::Sold
    );
    let r = second.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    second.client.ping("TX").await;
    second.shutdown().await;
    let o = run(&["ledger", "verify", "--config", config.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains(
            "sales decided before it (1 of generation 1 after start 1, 1 of generation 1 after start 2;"
        ),
        "{out}"
    );
}

/// `ledger export --format csv --type KIND` of 2026-11-29 in the ledger directory `dir`
/// (a [`framed_ledger`]'s day), which must succeed.
fn export_csv_29(dir: &Path, kind: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args(["ledger", "export", "--dir", dir.to_str().unwrap()])
        .args(["--from", "2026-11-29", "--to", "2026-11-29"])
        .args(["--format", "csv", "--type", kind])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The CSV export of `flush` records says which are a start's (black-box round 10: the
/// column was missing; the JSON-lines export had it).
#[test]
fn the_csv_export_of_flushes_has_the_start_column() {
    let tmp = framed_ledger(&[
        r#"{"type":"flush","v":5,"generation":1,"at":"2026-11-29T09:00:00.000Z","start":true}"#,
        AUCTION_1,
        r#"{"type":"flush","v":5,"generation":1,"at":"2026-11-29T11:00:00.000Z"}"#,
    ]);
    let csv = export_csv_29(tmp.path(), "flush");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        [
            "seq,at,generation,start",
            "1,2026-11-29T09:00:00.000Z,1,true",
            "3,2026-11-29T11:00:00.000Z,1,false"
        ],
        "{csv}"
    );
}

/// The CSV export of `post_attempt`, `unsold` and quote hold records says which are a
/// test lead's (black-box round 33: only the JSON lines of some records said so): `true`
/// where the record carries it, `false` where it does not (a real lead's, or one written
/// before the field was added).
#[test]
fn the_csv_export_of_attempts_unsold_and_holds_has_a_test_column() {
    let tmp = framed_ledger(&[
        r#"{"type":"post_attempt","v":5,"generation":1,"at":"2026-11-29T09:00:00.000Z","lead_id":"ld_t","auction_id":"au_t","buyer":"a","attempt":0,"outcome":"rejected","test":true}"#,
        r#"{"type":"post_attempt","v":5,"generation":1,"at":"2026-11-29T09:00:01.000Z","lead_id":"ld_r","auction_id":"au_r","buyer":"a","attempt":0,"outcome":"rejected"}"#,
        r#"{"type":"unsold","v":5,"generation":1,"at":"2026-11-29T09:00:02.000Z","lead_id":"ld_t","ping_id":"pg_t","auction_id":"au_t","seller":"s","reason":"all_rejected","attempts":1,"test":true}"#,
        r#"{"type":"quote_released","v":5,"generation":1,"at":"2026-11-29T09:00:03.000Z","ping_id":"pg_u","buyer":"","price_micros":0,"reason":"suppressed","test":true}"#,
        r#"{"type":"quote_released","v":5,"generation":1,"at":"2026-11-29T09:00:04.000Z","ping_id":"pg_v","buyer":"a","price_micros":5000000,"reason":"mismatch"}"#,
    ]);
    let export = |kind: &str| export_csv_29(tmp.path(), kind);
    let csv = export("post_attempt");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines,
        [
            "seq,at,generation,lead_id,auction_id,buyer,attempt,outcome,reason,test",
            "1,2026-11-29T09:00:00.000Z,1,ld_t,au_t,a,0,rejected,,true",
            "2,2026-11-29T09:00:01.000Z,1,ld_r,au_r,a,0,rejected,,false",
        ],
        "{csv}"
    );
    let csv = export("unsold");
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "seq,at,generation,lead_id,ping_id,auction_id,seller,reason,attempts,test",
            "3,2026-11-29T09:00:02.000Z,1,ld_t,pg_t,au_t,s,all_rejected,1,true",
        ],
        "{csv}"
    );
    let csv = export("quote_released");
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "seq,at,generation,type,ping_id,buyer,price_micros,reason,test",
            "4,2026-11-29T09:00:03.000Z,1,quote_released,pg_u,,0,suppressed,true",
            "5,2026-11-29T09:00:04.000Z,1,quote_released,pg_v,a,5000000,mismatch,false",
        ],
        "{csv}"
    );
}

/// `ledger verify --anchor SEQ:SUM` checks the ledger against a record kept outside the
/// exchange host: a record changed and the chain recomputed after it, or records removed
/// from the end, verify on their own, and fail against the anchor.
#[test]
fn verify_checks_anchors_kept_outside() {
    let tmp = framed_ledger(&[AUCTION_1, SALE_1]);
    let dir = tmp.path().to_str().unwrap().to_string();
    let verify = |dir: &str, anchors: &[String]| {
        let mut args = vec![
            "ledger".to_string(),
            "verify".into(),
            "--dir".into(),
            dir.into(),
        ];
        for a in anchors {
            args.push("--anchor".into());
            args.push(a.clone());
        }
        let o = Command::new(env!("CARGO_BIN_EXE_pingpost"))
            .args(&args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let (code, out) = verify(&dir, &[]);
    assert_eq!(code, Some(0), "{out}");
    let last = out
        .lines()
        .find_map(|l| l.strip_prefix("last record: seq 2, sum "))
        .unwrap()
        .to_string();
    let anchor = format!("2:{last}");
    let (code, out) = verify(&dir, std::slice::from_ref(&anchor));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("anchor seq 2: matches"), "{out}");

    // The sale's money changed and the chain recomputed: verifies alone, not anchored.
    let forged = framed_ledger(&[AUCTION_1, &SALE_1.replace("10000000", "10000001")]);
    let forged_dir = forged.path().to_str().unwrap().to_string();
    let (code, out) = verify(&forged_dir, &[]);
    assert!(
        out.contains("OK: every checksum and the chain verify"),
        "{out}"
    );
    let _ = code;
    let (code, out) = verify(&forged_dir, std::slice::from_ref(&anchor));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("ANCHOR FAILED: seq 2 has sum"), "{out}");

    // The last record removed: verifies alone, not anchored.
    let short = framed_ledger(&[AUCTION_1]);
    let (code, out) = verify(
        short.path().to_str().unwrap(),
        std::slice::from_ref(&anchor),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("ANCHOR FAILED: the ledger ends at seq 1, before seq 2"),
        "{out}"
    );

    // A bad anchor is a bad argument, named as one (black-box round 62b: `-1:…` was
    // taken for an unknown option).
    for bad in [
        "2",
        "x:y",
        "0:abc",
        "2:1234",
        "-1:abc",
        &format!("-2:{last}"),
    ] {
        let o = run(&["ledger", "verify", "--dir", &dir, "--anchor", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains("--anchor"), "{bad}: {err}");
        assert!(!err.contains("unexpected argument"), "{bad}: {err}");
    }
}

/// Black-box round 62b: a JSON line that is not a record (no `type`) was reported as a
/// record of a type a newer pingpost writes ("verify with a pingpost that reads them").
#[test]
fn a_line_without_a_type_is_not_a_record() {
    let dir = framed_ledger(&[AUCTION_1, r#"{"hello":1}"#]);
    let d = dir.path().to_str().unwrap();
    let o = run(&["ledger", "verify", "--dir", d]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("it has no \"type\""), "{out}");
    assert!(!out.contains("NOT RECONCILED"), "{out}");
    assert!(!out.contains("does not know"), "{out}");
    let o = run(&["ledger", "report", "--dir", d]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

/// `ledger replay` of a quote that ended unposted stopped at "firm until its expiry", as
/// if it were still open (black-box round 19): its end names only the ping id, and is
/// now shown.
#[test]
fn replay_shows_how_an_unposted_quote_ended() {
    const OPENED: &str = r#"{"type":"quote_opened","v":5,"generation":1,"at":"2026-11-29T10:00:00.001Z","ping_id":"pg_1","auction_id":"au_1","seller":"s","vertical":"v","price_micros":8000000,"currency":"USD","expires_at_ms":1795946460000}"#;
    for (end, says) in [
        (
            r#"{"type":"quote_expired","v":5,"generation":1,"at":"2026-11-29T10:01:00.050Z","ping_id":"pg_1","buyer":"b","price_micros":10000000}"#,
            "QUOTE EXPIRED: not posted before its expiry (a post after it is answered `expired`); the hold on b's cap and budget was released at 2026-11-29T10:01:00.050Z",
        ),
        (
            r#"{"type":"quote_released","v":5,"generation":1,"at":"2026-11-29T10:00:30.000Z","ping_id":"pg_1","buyer":"b","price_micros":10000000,"reason":"mismatch"}"#,
            "QUOTE ENDED (mismatch) at 2026-11-29T10:00:30.000Z",
        ),
    ] {
        // Another ping's end is not this quote's.
        let other = end.replace("pg_1", "pg_2");
        let tmp = framed_ledger(&[AUCTION_1, OPENED, &other, end]);
        let o = run(&["ledger", "replay", "au_1", "--dir", tmp.path().to_str().unwrap()]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(
            out.contains("QUOTED: the seller was quoted 8.00 in USD, firm until 2026-11-29T10:01:00.000Z"),
            "{out}"
        );
        assert_eq!(out.matches("QUOTE E").count(), 1, "{out}");
        assert!(out.contains(says), "{out}");
        assert!(!out.contains("no post of this"), "{out}");
    }

    // A failed delivery releases the winner's hold, and the post goes on: not the
    // quote's end (black-box round 20: it said QUOTE ENDED before a fallback's sale).
    let failed = r#"{"type":"quote_released","v":5,"generation":1,"at":"2026-11-29T10:00:10.000Z","ping_id":"pg_1","buyer":"b","price_micros":10000000,"reason":"post_failed"}"#;
    let tmp = framed_ledger(&[AUCTION_1, OPENED, failed]);
    let out = text(&run(&[
        "ledger",
        "replay",
        "au_1",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]));
    assert!(!out.contains("QUOTE E"), "{out}");
    assert!(
        out.contains("hold on b's cap and budget released (post_failed) at 2026-11-29T10:00:10.000Z: the post moves on to the next bid while time and bids remain"),
        "{out}"
    );

    // An exploration auction says so: its p is a draw, not the estimate (black-box round
    // 21: a lower bid's win read as the model's call); an auction that did not explore
    // does not.
    let ev = AUCTION_1.replace(
        r#""bid_micros":10000000}]"#,
        r#""bid_micros":10000000,"p_ppm":648000}]"#,
    );
    assert_ne!(ev, AUCTION_1);
    for (auction, explored) in [
        (
            ev.replace(r#""took_us":5"#, r#""took_us":5,"explore":true"#),
            true,
        ),
        (ev.clone(), false),
    ] {
        let tmp = framed_ledger(&[&auction]);
        let out = text(&run(&[
            "ledger",
            "replay",
            "au_1",
            "--dir",
            tmp.path().to_str().unwrap(),
        ]));
        assert!(out.contains("ranked by expected value"), "{out}");
        assert_eq!(out.contains("EXPLORATION auction"), explored, "{out}");
    }

    // An auction refused for its consent names that, not the filters (black-box round 22).
    let refused = r#"{"type":"auction","v":5,"generation":1,"at":"2026-11-29T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","test":false,"direct":false,"reserve_micros":1000000,"buyers":[],"no_bid":"consent_required","took_us":5}"#;
    let tmp = framed_ledger(&[refused]);
    let out = text(&run(&[
        "ledger",
        "replay",
        "au_1",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]));
    assert!(
        out.contains("consent_required, so no filter was run"),
        "{out}"
    );
    assert!(!out.contains("no buyer passed the filters"), "{out}");

    // A quote with nothing after it (a test lead's writes no record when it expires).
    let tmp = framed_ledger(&[AUCTION_1, OPENED]);
    let out = text(&run(&[
        "ledger",
        "replay",
        "au_1",
        "--dir",
        tmp.path().to_str().unwrap(),
    ]));
    assert!(out.contains("firm until 2026-11-29T10:01:00.000Z"), "{out}");
    assert!(
        out.contains(
            "no post of this quote is recorded: not posted yet, or not before its expiry above"
        ),
        "{out}"
    );
}

/// Black-box round 171b: a ledger whose records disagree with each other, every line
/// framed and chained (an edit with its chain recomputed), was counted by `report` and
/// `export` with exit 0 and no word, while `verify` failed it. They still count the
/// records as written (they are the records), and now say the money does not reconcile:
/// in every report format (on stderr for CSV) and on export's stderr. A ledger that
/// reconciles gets no such note.
#[test]
fn report_and_export_say_when_the_records_do_not_reconcile() {
    let notice = "the money does NOT reconcile: ";
    let [auction, sale] = sold(1, "b", 20_000_000, 16_000_000);
    let good = framed_ledger(&[&auction, &sale]);
    // The sale's bid raised by 1.00 (and its margin with it), its auction left as it was.
    let raised = sale
        .replace(r#""bid_micros":20000000"#, r#""bid_micros":21000000"#)
        .replace(r#""margin_micros":4000000"#, r#""margin_micros":5000000"#);
    assert_ne!(raised, sale);
    let forged = framed_ledger(&[&auction, &raised]);
    for (tmp, said) in [(&good, false), (&forged, true)] {
        let dir = tmp.path().to_str().unwrap();
        let o = run(&["ledger", "verify", "--dir", dir]);
        assert_eq!(
            o.status.code(),
            Some(if said { 1 } else { 0 }),
            "{}",
            text(&o)
        );
        for format in ["table", "json", "csv"] {
            let o = run(&["ledger", "report", "--dir", dir, "--format", format]);
            let out = text(&o);
            assert_eq!(o.status.code(), Some(0), "{format}: {out}");
            assert_eq!(out.contains(notice), said, "{format}: {out}");
            if said {
                // The figures are the records' as written: 21.00 of revenue.
                assert!(out.contains("21"), "{format}: {out}");
                let stdout = String::from_utf8_lossy(&o.stdout).to_string();
                assert_eq!(
                    stdout.contains(notice),
                    format != "csv",
                    "{format}: {stdout}"
                );
            }
        }
        let o = run(&[
            "ledger",
            "export",
            "--dir",
            dir,
            "--from",
            "2026-11-29",
            "--to",
            "2026-11-29",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(stderr.contains(notice), said, "{stderr}");
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains(notice),
            "export's stdout is data"
        );
    }
    // The note reads only as far as the report's own reading (black-box round 189a: on a
    // running exchange's ledger it read further, and the two disagreed): up to the
    // auction, before the raised sale, the records reconcile.
    let dir = forged.path();
    let note = pingpost::finance::reconcile::unreconciled_note;
    assert!(note(dir, None).is_some_and(|n| n.starts_with(notice)));
    assert_eq!(note(dir, Some(1)), None);
    assert!(note(dir, Some(2)).is_some());
}

/// Black-box round 172a: text from an edited ledger's records (a lead id holding an
/// escape, a carriage return and a line break) reached the terminal raw in `verify`'s
/// MISMATCH lines, `report`'s note and `replay`, and forged a line ("FAKE: OK"). Each
/// shows such text with `?` for the hidden characters, on its own line.
#[test]
fn text_from_an_edited_ledger_is_shown_not_obeyed() {
    let [auction, sale] = sold(1, "b", 20_000_000, 16_000_000);
    let forged = sale
        .replace(
            r#""lead_id":"ld_1""#,
            r#""lead_id":"ld_1\u001b[31m\r\nFAKE: OK\u009b2J\u202e""#,
        )
        .replace(r#""margin_micros":4000000"#, r#""margin_micros":5000000"#);
    assert_ne!(forged, sale);
    let tmp = framed_ledger(&[&auction, &forged]);
    let dir = tmp.path().to_str().unwrap();
    for (args, status) in [
        (vec!["ledger", "verify", "--dir", dir], 1),
        (vec!["ledger", "report", "--dir", dir], 0),
        (vec!["ledger", "report", "--dir", dir, "--format", "csv"], 0),
        (vec!["ledger", "replay", "au_1", "--dir", dir], 0),
    ] {
        let o = run(&args);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(status), "{args:?}: {out}");
        assert!(out.contains("ld_1?[31m??FAKE: OK"), "{args:?}: {out}");
        for hidden in ['\u{1b}', '\r', '\u{9b}', '\u{202e}'] {
            assert!(!out.contains(hidden), "{args:?}: {hidden:?} in {out:?}");
        }
        assert!(
            !out.lines().any(|l| l.starts_with("FAKE")),
            "{args:?}: a forged line: {out}"
        );
    }
    // Round 176a: a report's rows are named by such text too (here the sale's buyer), in
    // the table, CSV and HTML.
    let forged = sale
        .replace(r#""buyer":"b""#, r#""buyer":"b\r\nFAKE: OK\u001b[2J""#)
        .replace(r#""margin_micros":4000000"#, r#""margin_micros":5000000"#);
    let tmp = framed_ledger(&[&auction, &forged]);
    let dir = tmp.path().to_str().unwrap();
    // Outside the ledger directory (round 234a: a page inside it is refused).
    let pages = tempfile::tempdir().unwrap();
    let html = pages.path().join("r.html");
    for format in ["table", "csv", "json"] {
        let o = run(&[
            "ledger",
            "report",
            "--dir",
            dir,
            "--by",
            "buyer",
            "--format",
            format,
            "--html",
            html.to_str().unwrap(),
        ]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(0), "{format}: {out}");
        let page = std::fs::read_to_string(&html).unwrap();
        for shown in [&out, &page] {
            assert!(shown.contains("b??FAKE: OK?[2J"), "{format}: {shown}");
            assert!(
                !shown.contains('\u{1b}') && !shown.contains('\r'),
                "{format}: {shown:?}"
            );
            assert!(
                !shown.lines().any(|l| l.starts_with("FAKE")),
                "{format}: {shown}"
            );
        }
    }
}

/// Black-box round 178a: a currency holding a line break, an escape or a direction
/// control (every record alike, the chain recomputed) forged lines in `verify`'s
/// reconciliation (it printed the currency raw), and, shown otherwise by the report than
/// by verify's own sums, failed the reconciliation of a ledger whose money adds up. Both
/// name it as the report does; the money reconciles.
#[test]
fn a_currency_holding_control_characters_reconciles_and_is_shown() {
    let odd = r#""currency":"U\nSD\u001b[2J\u202e""#;
    let records: Vec<String> = sold(1, "b", 20_000_000, 16_000_000)
        .iter()
        .map(|r| r.replace(r#""currency":"USD""#, odd))
        .collect();
    assert!(records.iter().all(|r| r.contains(odd)), "{records:?}");
    let refs: Vec<&str> = records.iter().map(String::as_str).collect();
    let tmp = framed_ledger(&refs);
    let dir = tmp.path().to_str().unwrap();
    let o = run(&["ledger", "verify", "--dir", dir]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(
        out.contains("  U?SD?[2J?: 1 sale(s), revenue 20.00"),
        "{out}"
    );
    assert!(!out.contains("MISMATCH"), "{out}");
    for shown in [out, text(&run(&["ledger", "report", "--dir", dir]))] {
        assert!(!shown.contains("NOT reconcile"), "{shown}");
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{202e}'),
            "{shown:?}"
        );
        assert!(!shown.lines().any(|l| l.starts_with("SD")), "{shown}");
    }
}

/// Black-box round 234a: `ledger report --html` naming a file in the ledger directory
/// (a segment, `HEAD`, a new name there, or the same through a link) replaced it with the
/// page, exit 0, and the exchange would not start on that ledger. Refused, the ledger
/// untouched; a page outside it is still written.
#[test]
fn the_html_page_is_never_written_among_the_ledgers_files() {
    let tmp = framed_ledger(&[AUCTION_1, SALE_1]);
    let dir = tmp.path().to_str().unwrap();
    let segment = tmp.path().join(pingpost::ledger::segments::segment_name(1));
    let before = std::fs::read(&segment).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let link = outside.path().join("to-ledger");
    std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
    for page in [
        segment.clone(),
        tmp.path().join("page.html"),
        link.join(pingpost::ledger::segments::segment_name(1)),
    ] {
        let o = run(&[
            "ledger",
            "report",
            "--dir",
            dir,
            "--html",
            page.to_str().unwrap(),
        ]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {out}", page.display());
        assert!(out.contains("in a ledger directory"), "{out}");
        assert_eq!(std::fs::read(&segment).unwrap(), before);
        assert!(!tmp.path().join("page.html").exists());
    }
    // Another ledger's directory, named by another path than --dir (round 237a: its
    // segment was replaced, and the exchange running on it stopped).
    let other = framed_ledger(&[AUCTION_1, SALE_1]);
    let other_segment = other
        .path()
        .join(pingpost::ledger::segments::segment_name(1));
    std::fs::create_dir(other.path().join("sub")).unwrap();
    for page in [
        other_segment.clone(),
        other.path().join("new.html"),
        other.path().join("sub").join("x.html"),
    ] {
        let o = run(&[
            "ledger",
            "report",
            "--dir",
            dir,
            "--html",
            page.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert_eq!(std::fs::read(&other_segment).unwrap(), before);
        assert!(!other.path().join("new.html").exists());
    }
    let page = outside.path().join("page.html");
    // The page keeps the mode of the file it replaces (round 237a: 600 became 644), but
    // never a set-user-ID bit (round 238a).
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(&page, "old").unwrap();
    for (had, has) in [(0o600, 0o600), (0o4755, 0o755)] {
        std::fs::set_permissions(&page, std::fs::Permissions::from_mode(had)).unwrap();
        let o = run(&[
            "ledger",
            "report",
            "--dir",
            dir,
            "--html",
            page.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(std::fs::read_to_string(&page).unwrap().contains("<html"));
        let mode = std::fs::metadata(&page).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, has, "{had:o}");
    }
}

/// Black-box round 236a: `--html /dev/stdout` with stdout sent to a file renamed the
/// page over the machine's `/dev/stdout` link (the page is written under a temporary
/// name and renamed into place; the rename replaced the link). A link is followed and
/// the file it leads to replaced, the link kept; a path that is the command's own stdout
/// is written through it. (`/proc/self/fd/1` here, never the real `/dev/stdout`.)
#[test]
fn the_html_page_follows_links_and_writes_to_its_own_stdout() {
    let tmp = framed_ledger(&[AUCTION_1, SALE_1]);
    let dir = tmp.path().to_str().unwrap();
    let pages = tempfile::tempdir().unwrap();
    let target = pages.path().join("target.html");
    std::fs::write(&target, "old").unwrap();
    let link = pages.path().join("link.html");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let o = run(&[
        "ledger",
        "report",
        "--dir",
        dir,
        "--html",
        link.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::read_to_string(&target).unwrap().contains("<html"));
    // A link that leads nowhere: an error, and no file made in its place.
    let dangling = pages.path().join("dangling.html");
    std::os::unix::fs::symlink(pages.path().join("nowhere.html"), &dangling).unwrap();
    let o = run(&[
        "ledger",
        "report",
        "--dir",
        dir,
        "--html",
        dangling.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(std::fs::symlink_metadata(&dangling)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!pages.path().join("nowhere.html").exists());
    // Its own stdout, sent to a file: the page and the JSON both reach it.
    let out = pages.path().join("stdout.txt");
    let o = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args([
            "ledger",
            "report",
            "--dir",
            dir,
            "--format",
            "json",
            "--html",
            "/proc/self/fd/1",
        ])
        .stdout(std::fs::File::create(&out).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = std::fs::read_to_string(&out).unwrap();
    assert!(
        said.contains("<html") && said.contains("\"revenue_micros\""),
        "{said}"
    );
}
