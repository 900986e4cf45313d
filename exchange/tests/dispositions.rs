//! `POST /v1/dispositions` end to end (issue 8/9): real sockets, SDK bidders, the real
//! loader. A lead is sold by ping then post to `acme` (bids 18.00; the main seller's
//! payout is an 80 % revenue share, so the seller is paid 14.40); `acme` reports what
//! became of it with its own bearer key. Checked: a valid disposition is answered 200 and
//! recorded; every bad input gets its contract error and writes nothing; another buyer
//! gets 403, an unknown lead 404, a repeat 409; a `returned` inside acme's 7-day return
//! window writes a refund with the sale's exact micros, and the finance tools (report,
//! verify, export) count it; after a restart on the same ledger a repeat is still
//! refused, and a `returned` after the window is recorded but refunds nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use pingpost::app::Running;
use pingpost::clock::Clock;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::*;

const ACME_KEY: &str = "buyer-acme-dispositions-key";
const ACME_NEXT_KEY: &str = "buyer-acme-next-key";
const OTHER_KEY: &str = "buyer-other-dispositions-key";
const ACME_BID: i64 = 18_000_000;
const ACME_SELLER_PRICE: i64 = 14_400_000;
const DAY_MS: i64 = 86_400_000;

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Gives acme and other their bearer keys (acme also a rotation key and a 7-day return
/// window; other keeps the default window, 0).
fn with_keys(toml: String) -> String {
    toml.replace(
        "[buyers.acme]\n",
        &format!(
            "[buyers.acme]\nkey_sha256 = \"{}\"\nkey_sha256_next = \"{}\"\nreturn_window_days = 7\n",
            digest(ACME_KEY),
            digest(ACME_NEXT_KEY)
        ),
    )
    .replace(
        "[buyers.other]\n",
        &format!("[buyers.other]\nkey_sha256 = \"{}\"\n", digest(OTHER_KEY)),
    )
}

/// acme bids 18.00 and wins; other bids 10.00.
async fn bidders() -> (TestConfig, Vec<bidder_sdk::ServerHandle>) {
    let acme = ScriptedBidder::bidding(18.0);
    let other = ScriptedBidder::bidding(10.0);
    let (a, ha) = serve("acme", &acme).await;
    let (o, ho) = serve("other", &other).await;
    (TestConfig::new().buyer(a).buyer(o), vec![ha, ho])
}

/// Sells one lead by ping then post; returns its lead id.
async fn sell(client: &SellerClient) -> String {
    let ping = client.ping("TX").await;
    let sold = client.post(&ping.ping_id, "TX").await;
    assert_eq!(sold.buyer.as_deref(), Some("Buyer acme"), "{sold:?}");
    sold.lead_id.expect("a sold lead has an id")
}

async fn dispose(client: &SellerClient, key: &str, body: &Value) -> Reply {
    client
        .post_json_with("/v1/dispositions", key, &[], body)
        .await
}

fn records(ledger: &Path, kind: &str) -> Vec<Value> {
    ledger_at_of(ledger, kind)
}

fn run(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args(args)
        .output()
        .expect("the pingpost binary runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test]
async fn a_disposition_is_recorded_and_a_return_in_the_window_refunds_the_sale_exactly() {
    let (cfg, _h) = bidders().await;
    let mut ex = cfg.start_edited(with_keys).await;
    let lead = sell(&ex.client).await;

    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "contacted"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"lead_id": lead, "outcome": "contacted", "recorded": true, "refund": null})
    );
    // The rotation key works too.
    let r = dispose(
        &ex.client,
        ACME_NEXT_KEY,
        &json!({"lead_id": lead, "outcome": "quoted", "reason": "rate_sent"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "returned", "reason": "disconnected_number"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["recorded"], true);
    assert_eq!(
        v["refund"],
        json!({"currency": "USD", "buyer_refund": 18.0, "seller_clawback": 14.4})
    );
    assert!(v.get("no_refund").is_none(), "{v}");

    // Durable: on disk before the answer (no flush needed for these two types).
    let disp = records(&ex.ledger_path, "disposition");
    assert_eq!(disp.len(), 3, "{disp:?}");
    let sale = &records(&ex.ledger_path, "sale")[0];
    assert_eq!(disp[0]["lead_id"], lead);
    assert_eq!(disp[0]["buyer"], "acme");
    assert_eq!(disp[0]["seller"], "main");
    assert_eq!(disp[0]["vertical"], VERTICAL);
    assert_eq!(disp[0]["auction_id"], sale["auction_id"]);
    assert_eq!(disp[0]["outcome"], "contacted");
    assert!(disp[0].get("reason").is_none());
    assert_eq!(disp[1]["reason"], "rate_sent");
    assert_eq!(disp[2]["outcome"], "returned");
    let refunds = records(&ex.ledger_path, "refund");
    assert_eq!(refunds.len(), 1);
    let f = &refunds[0];
    assert_eq!(sale["bid_micros"], ACME_BID);
    assert_eq!(sale["seller_price_micros"], ACME_SELLER_PRICE);
    assert_eq!(f["lead_id"], lead);
    assert_eq!(f["buyer"], "acme");
    assert_eq!(f["seller"], "main");
    assert_eq!(f["currency"], "USD");
    assert_eq!(f["buyer_refund_micros"], ACME_BID);
    assert_eq!(f["seller_clawback_micros"], ACME_SELLER_PRICE);
    assert_eq!(f["margin_reversed_micros"], ACME_BID - ACME_SELLER_PRICE);
    assert_eq!(f["return_window_days"], 7);
    // The refund (the line that moves money) is written before its disposition.
    assert!(
        f["seq"].as_u64().unwrap() < disp[2]["seq"].as_u64().unwrap(),
        "{f} {}",
        disp[2]
    );

    // A second return of the same lead: 409, nothing written.
    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "returned"}),
    )
    .await;
    r.assert_error(409, "conflict");
    assert_eq!(records(&ex.ledger_path, "refund").len(), 1);
    // Nothing follows a return: a later `sold` is 409 and writes nothing.
    let dispositions_before = records(&ex.ledger_path, "disposition").len();
    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "sold"}),
    )
    .await;
    let e = r.assert_error(409, "conflict");
    assert!(e.to_string().contains("returned"), "{e}");
    assert_eq!(
        records(&ex.ledger_path, "disposition").len(),
        dispositions_before
    );

    // Two more sales, not returned: the finance tools net the refund out.
    sell(&ex.client).await;
    sell(&ex.client).await;
    ex.shutdown().await;
    let dir = ex.ledger_path.to_str().unwrap();
    let (ok, out) = run(&["ledger", "verify", "--dir", dir]);
    assert!(ok, "{out}");
    assert!(
        out.contains("USD: 3 sale(s), revenue 54.00 - refunds 18.00 = sales 36.00; payouts 28.80, margin 7.20 (1 refund(s)"),
        "{out}"
    );
    let (ok, out) = run(&[
        "ledger", "report", "--dir", dir, "--by", "buyer", "--format", "json",
    ]);
    assert!(ok, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let t = &report["totals"][0];
    assert_eq!(t["sales"], 3);
    assert_eq!(t["returns"], 1);
    assert_eq!(t["refunds_micros"], ACME_BID);
    assert_eq!(t["revenue_micros"], 2 * ACME_BID);
    assert_eq!(t["payouts_micros"], 2 * ACME_SELLER_PRICE);
    assert_eq!(t["margin_micros"], 2 * (ACME_BID - ACME_SELLER_PRICE));
    let auction = sale["auction_id"].as_str().unwrap();
    let (ok, out) = run(&["ledger", "replay", auction, "--dir", dir]);
    assert!(ok, "{out}");
    assert!(
        out.contains("DISPOSITION by acme: returned, reason disconnected_number"),
        "{out}"
    );
    assert!(
        out.contains("REFUNDED (returned within 7 day(s)): the buyer acme gets 18.00 USD back, 14.40 USD is clawed back from the seller main, margin 3.60 USD reversed"),
        "{out}"
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let (ok, out) = run(&[
        "ledger", "export", "--dir", dir, "--from", &today, "--to", &today, "--format", "csv",
        "--type", "refund",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("seq,at,generation,lead_id,auction_id,buyer,seller,vertical,currency,buyer_refund_micros,seller_clawback_micros,margin_reversed_micros"), "{out}");
    assert!(
        out.contains(&format!(",{lead},")) && out.contains(",USD,18000000,14400000,3600000,"),
        "{out}"
    );
    let (ok, out) = run(&[
        "ledger",
        "export",
        "--dir",
        dir,
        "--from",
        &today,
        "--to",
        &today,
        "--format",
        "csv",
        "--type",
        "disposition",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains(",returned,disconnected_number,false"), "{out}");
}

#[tokio::test]
async fn every_bad_disposition_gets_its_error_and_writes_nothing() {
    let (cfg, _h) = bidders().await;
    let ex = cfg.start_edited(with_keys).await;
    let lead = sell(&ex.client).await;
    let c = &ex.client;
    let ok_body = json!({"lead_id": lead, "outcome": "contacted"});
    let raw = |key: Option<&'static str>, ct: Option<&'static str>, body: &'static str| {
        let c = c.clone();
        async move {
            c.send(
                Method::POST,
                "/v1/dispositions",
                key,
                ct,
                &[],
                Bytes::from_static(body.as_bytes()),
            )
            .await
        }
    };

    // 401: no key, a malformed header, an unknown key. 403: a seller's key (valid, but
    // not for this endpoint), and a buyer's key on the seller API.
    raw(None, Some("application/json"), "{}")
        .await
        .assert_error(401, "unauthorized");
    let r = dispose(c, "not-a-key", &ok_body).await;
    r.assert_error(401, "unauthorized");
    assert_eq!(
        r.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let e = dispose(c, SELLER_KEY, &ok_body)
        .await
        .assert_error(403, "forbidden");
    assert!(
        !e.to_string().contains(SELLER_KEY),
        "the key is never echoed: {e}"
    );
    for path in ["/v1/ping", "/v1/post", "/v1/leads"] {
        let e = c
            .post_json_with(path, ACME_KEY, &[], &ok_body)
            .await
            .assert_error(403, "forbidden");
        assert!(!e.to_string().contains(ACME_KEY), "{path}: {e}");
    }
    // 415, 400 (malformed, not an object, too deep, fields), 413.
    raw(Some(ACME_KEY), Some("text/plain"), r#"{"lead_id":"ld_1"}"#)
        .await
        .assert_error(415, "unsupported_media_type");
    // Two Content-Type headers, in either order, are refused alike (the first one was
    // read alone: application/json then text/plain passed).
    for (first, second) in [
        ("application/json", "text/plain"),
        ("text/plain", "application/json"),
    ] {
        let e = c
            .send(
                Method::POST,
                "/v1/dispositions",
                Some(ACME_KEY),
                Some(first),
                &[("content-type", second)],
                Bytes::from(ok_body.to_string()),
            )
            .await
            .assert_error(415, "unsupported_media_type");
        assert!(e.to_string().contains("one Content-Type"), "{e}");
    }
    raw(Some(ACME_KEY), Some("application/json"), "{not json")
        .await
        .assert_error(400, "invalid_request");
    raw(Some(ACME_KEY), Some("application/json"), "[1]")
        .await
        .assert_error(400, "invalid_request");
    let deep: &'static str = Box::leak("[".repeat(10_000).into_boxed_str());
    raw(Some(ACME_KEY), Some("application/json"), deep)
        .await
        .assert_error(400, "invalid_request");
    let e = dispose(
        c,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "lost", "reason": "called Ana Diaz", "note": 1}),
    )
    .await
    .assert_error(400, "invalid_request");
    let fields: Vec<&str> = e["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["note", "outcome", "reason"], "{e}");
    for body in [
        json!({"outcome": "contacted"}),
        json!({"lead_id": lead}),
        json!({"lead_id": 5, "outcome": "contacted"}),
        json!({"lead_id": "ld_../x", "outcome": "contacted"}),
        json!({"lead_id": lead, "outcome": "contacted", "reason": "8175550123"}),
        json!({"lead_id": lead, "outcome": "contacted", "reason": "x".repeat(65)}),
        json!({"lead_id": lead, "outcome": "contacted", "reason": ""}),
    ] {
        dispose(c, ACME_KEY, &body)
            .await
            .assert_error(400, "invalid_request");
    }
    let big = json!({"lead_id": lead, "outcome": "contacted", "reason": "a".repeat(70_000)});
    dispose(c, ACME_KEY, &big)
        .await
        .assert_error(413, "payload_too_large");
    // 404 unknown lead, 403 another buyer's lead, 405 wrong method.
    dispose(
        c,
        ACME_KEY,
        &json!({"lead_id": "ld_00000000000000000000000000000000", "outcome": "contacted"}),
    )
    .await
    .assert_error(404, "not_found");
    dispose(c, OTHER_KEY, &ok_body)
        .await
        .assert_error(403, "forbidden");
    let r = c
        .send(
            Method::GET,
            "/v1/dispositions",
            Some(ACME_KEY),
            None,
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.headers["allow"], "POST");
    ex.state.ledger.flush().await.unwrap();
    assert!(
        records(&ex.ledger_path, "disposition").is_empty(),
        "no bad disposition is recorded"
    );

    // The valid one, then its repeat: 409, one record.
    assert_eq!(dispose(c, ACME_KEY, &ok_body).await.status, 200);
    dispose(c, ACME_KEY, &ok_body)
        .await
        .assert_error(409, "conflict");
    // other's window is 0 but it may not return acme's lead at all.
    dispose(
        c,
        OTHER_KEY,
        &json!({"lead_id": lead, "outcome": "returned"}),
    )
    .await
    .assert_error(403, "forbidden");
    ex.state.ledger.flush().await.unwrap();
    assert_eq!(records(&ex.ledger_path, "disposition").len(), 1);
    assert!(records(&ex.ledger_path, "refund").is_empty());
    // Nothing from a body reached the ledger but the code.
    let all = pingpost::ledger::segments::read_all(&ex.ledger_path).unwrap();
    assert!(!all.contains("Ana Diaz") && !all.contains("8175550123"));
}

/// Starts an exchange on `ledger` with `clock` (a restart when it holds records).
async fn start(cfg: &TestConfig, ledger: &Path, clock: Clock) -> Running {
    start_config(cfg.load_edited(ledger, with_keys), clock).await
}

#[tokio::test]
async fn after_a_restart_a_repeat_is_refused_and_a_late_return_is_refused() {
    let (cfg, _h) = bidders().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");

    let first = start(&cfg, &ledger, Clock::system()).await;
    let client = SellerClient::new(first.addr);
    let (l1, l2, l3) = (
        sell(&client).await,
        sell(&client).await,
        sell(&client).await,
    );
    for (lead, outcome) in [(&l1, "contacted"), (&l2, "returned")] {
        let r = dispose(
            &client,
            ACME_KEY,
            &json!({"lead_id": lead, "outcome": outcome}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    first.shutdown().await.unwrap();

    // Same time: the index is rebuilt from the ledger.
    let second = start(&cfg, &ledger, Clock::system()).await;
    assert_eq!(second.state.sold_leads.len(), 3);
    let client = SellerClient::new(second.addr);
    // l2 was returned before the restart: a repeat, and any outcome after it, are 409.
    for (lead, outcome) in [(&l1, "contacted"), (&l2, "returned"), (&l2, "sold")] {
        dispose(
            &client,
            ACME_KEY,
            &json!({"lead_id": lead, "outcome": outcome}),
        )
        .await
        .assert_error(409, "conflict");
    }
    dispose(
        &client,
        OTHER_KEY,
        &json!({"lead_id": l3, "outcome": "sold"}),
    )
    .await
    .assert_error(403, "forbidden");
    let r = dispose(
        &client,
        ACME_KEY,
        &json!({"lead_id": l1, "outcome": "sold"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    second.shutdown().await.unwrap();

    // Eight days later (acme's window is 7): the return is refused, says why, and
    // writes nothing; the lead still takes other outcomes.
    let later = Clock::at(chrono::Utc::now().timestamp_millis() + 8 * DAY_MS);
    let third = start(&cfg, &ledger, later).await;
    let client = SellerClient::new(third.addr);
    let before = records(&ledger, "disposition").len();
    for _ in 0..2 {
        let r = dispose(
            &client,
            ACME_KEY,
            &json!({"lead_id": l3, "outcome": "returned"}),
        )
        .await;
        r.assert_error(409, "conflict");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("outside the return window") && msg.contains("7-day"),
            "{msg}"
        );
    }
    third.state.ledger.flush().await.unwrap();
    assert_eq!(records(&ledger, "disposition").len(), before);
    let r = dispose(
        &client,
        ACME_KEY,
        &json!({"lead_id": l3, "outcome": "disqualified"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    dispose(
        &client,
        ACME_KEY,
        &json!({"lead_id": l1, "outcome": "sold"}),
    )
    .await
    .assert_error(409, "conflict");
    third.shutdown().await.unwrap();

    let disp = records(&ledger, "disposition");
    let seen: Vec<(String, String)> = disp
        .iter()
        .map(|d| {
            (
                d["lead_id"].as_str().unwrap().to_string(),
                d["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (l1.clone(), "contacted".to_string()),
            (l2.clone(), "returned".to_string()),
            (l1.clone(), "sold".to_string()),
            (l3.clone(), "disqualified".to_string()),
        ]
    );
    let refunds = records(&ledger, "refund");
    assert_eq!(refunds.len(), 1, "only l2's return was in the window");
    assert_eq!(refunds[0]["lead_id"], l2);
    let (ok, out) = run(&["ledger", "verify", "--dir", ledger.to_str().unwrap()]);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_buyer_without_a_key_cannot_report_and_keys_are_checked_at_load() {
    let (cfg, _h) = bidders().await;
    // Without keys, nobody can report: every key is unknown.
    let ex = cfg.start().await;
    let lead = sell(&ex.client).await;
    dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "contacted"}),
    )
    .await
    .assert_error(401, "unauthorized");
    let dir = tempfile::tempdir().unwrap();
    let load = |edit: &dyn Fn(String) -> String| {
        let text = edit(cfg.toml(&dir.path().join("l")));
        pingpost::config::load_str_with_env(&text, &cfg.env())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    // A buyer key equal to the main seller's key, and one shared by two buyers.
    let e = load(&|t| {
        t.replace(
            "[buyers.acme]\n",
            &format!("[buyers.acme]\nkey_sha256 = \"{}\"\n", digest(SELLER_KEY)),
        )
    });
    assert!(
        e.contains("buyers.acme.key_sha256: the same key as sellers.main"),
        "{e}"
    );
    let e = load(&|t| {
        t.replace(
            "[buyers.acme]\n",
            &format!("[buyers.acme]\nkey_sha256 = \"{}\"\n", digest(OTHER_KEY)),
        )
        .replace(
            "[buyers.other]\n",
            &format!(
                "[buyers.other]\nkey_sha256_next = \"{}\"\nkey_sha256 = \"{}\"\n",
                digest(OTHER_KEY),
                digest("x")
            ),
        )
    });
    assert!(
        e.contains("buyers.other.key_sha256_next: the same key as buyers.acme"),
        "{e}"
    );
    let e = load(&|t| {
        t.replace(
            "[buyers.acme]\n",
            "[buyers.acme]\nkey_sha256 = \"abc\"\nreturn_window_days = 366\n",
        )
    });
    assert!(
        e.contains("buyers.acme.key_sha256: must be 64 hex digits"),
        "{e}"
    );
    assert!(e.contains("buyers.acme.return_window_days"), "{e}");
    let e = load(&|t| {
        t.replace(
            "[buyers.acme]\n",
            &format!(
                "[buyers.acme]\nkey_sha256_next = \"{}\"\nreturn_window_days = -1\n",
                digest("y")
            ),
        )
    });
    assert!(
        e.contains("buyers.acme.key_sha256_next: needs key_sha256"),
        "{e}"
    );
    assert!(e.contains("buyers.acme.return_window_days"), "{e}");
    let _ = Arc::clone(&ex.state);
}

#[test]
fn verify_refuses_refunds_that_do_not_match_their_sale() {
    const AUCTION: &str = r#"{"type":"auction","v":4,"generation":1,"at":"2026-11-20T10:00:00.000Z","auction_id":"au_1","ping_id":"pg_1","seller":"s","vertical":"v","test":false,"direct":false,"reserve_micros":1000000,"skipped":{"total":0,"by_reason":{}},"buyers":[{"buyer":"b","outcome":"bid","bid_micros":10000000}],"winner":"b","bid_micros":10000000,"seller_price_micros":8000000,"took_us":5}"#;
    // Format 3, before `post_sent` (a sale of format 4 or later needs its delivery's).
    const SALE: &str = r#"{"type":"sale","v":3,"generation":1,"at":"2026-11-20T10:00:01.000Z","lead_id":"ld_b","ping_id":"pg_1","auction_id":"au_1","seller":"s","buyer":"b","vertical":"v","currency":"USD","test":false,"bid_micros":10000000,"seller_price_micros":8000000,"margin_micros":2000000,"attempt":0}"#;
    let returned = r#"{"type":"disposition","v":4,"generation":1,"at":"2026-11-21T10:00:00.000Z","lead_id":"ld_b","auction_id":"au_1","buyer":"b","seller":"s","vertical":"v","outcome":"returned","test":false}"#;
    let refund = |at: &str, refund: i64, days: u16| {
        format!(
            r#"{{"type":"refund","v":4,"generation":1,"at":"{at}","lead_id":"ld_b","auction_id":"au_1","buyer":"b","seller":"s","vertical":"v","currency":"USD","buyer_refund_micros":{refund},"seller_clawback_micros":8000000,"margin_reversed_micros":{},"sold_at_ms":0,"return_window_days":{days}}}"#,
            refund - 8_000_000
        )
    };
    let check = |lines: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("seg-00000001.jsonl"),
            lines.join("\n") + "\n",
        )
        .unwrap();
        pingpost::finance::reconcile::reconcile(dir.path(), None).unwrap()
    };

    // A good one reconciles, net of the refund.
    let good = refund("2026-11-22T10:00:00.000Z", 10_000_000, 7);
    let r = check(&[AUCTION, SALE, returned, &good]);
    assert!(!r.failed(), "{}", r.render());
    assert_eq!(r.totals["USD"], (1, 0, 0, 0));
    assert_eq!(r.refunds["USD"], (1, 10_000_000));

    // Wrong amount, outside the window, twice, without a disposition, another buyer's.
    let wrong = refund("2026-11-22T10:00:00.000Z", 11_000_000, 7);
    let late = refund("2026-11-29T10:00:02.000Z", 10_000_000, 7);
    let by_c = returned.replace(r#""buyer":"b""#, r#""buyer":"c""#);
    let cases: [(Vec<&str>, &str); 5] = [
        (
            vec![AUCTION, SALE, returned, &wrong],
            "differ from the sale's bid 10000000",
        ),
        (
            vec![AUCTION, SALE, returned, &late],
            "outside its return window of 7 day(s)",
        ),
        (
            vec![AUCTION, SALE, returned, &good, &good],
            "lead refunded twice",
        ),
        (
            vec![AUCTION, SALE, &by_c, &good],
            "a refund without a returned disposition by its buyer",
        ),
        (
            vec![AUCTION, SALE, &by_c],
            "a disposition by buyer c of a lead sold to b",
        ),
    ];
    // The refund alone (a crash between it and its disposition, written after it):
    // listed, and the money still reconciles net of it.
    let r = check(&[AUCTION, SALE, &good]);
    assert!(!r.failed(), "{}", r.render());
    assert_eq!(r.return_line_missing.len(), 1, "{}", r.render());
    assert!(
        r.render().contains("DISPOSITION LINE MISSING"),
        "{}",
        r.render()
    );
    assert_eq!(r.totals["USD"], (1, 0, 0, 0));
    for (lines, expected) in cases {
        let r = check(&lines);
        assert!(r.failed(), "{expected}: {}", r.render());
        assert!(
            r.mismatches.iter().any(|m| m.contains(expected)),
            "{expected}: {:?}",
            r.mismatches
        );
    }
}

#[tokio::test]
async fn a_test_lead_takes_dispositions_and_is_never_refunded() {
    let (cfg, _h) = bidders().await;
    let ex = cfg.start_edited(with_keys).await;
    let mut body = direct_body("TX");
    body["test"] = json!(true);
    let sold = ex.client.post_json("/v1/leads", &body).await.post_answer();
    assert_eq!(sold.buyer.as_deref(), Some("Buyer acme"), "{sold:?}");
    let lead = sold.lead_id.unwrap();
    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "returned"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"lead_id": lead, "outcome": "returned", "recorded": true, "refund": null,
               "no_refund": "test_lead"})
    );
    let disp = records(&ex.ledger_path, "disposition");
    assert_eq!(disp.len(), 1);
    assert_eq!(disp[0]["test"], true);
    assert!(records(&ex.ledger_path, "refund").is_empty());
}

#[tokio::test]
async fn a_buyer_without_a_return_window_cannot_return() {
    let (cfg, _h) = bidders().await;
    let ex = cfg
        .start_edited(|t| with_keys(t).replace("return_window_days = 7", "return_window_days = 0"))
        .await;
    let lead = sell(&ex.client).await;
    for _ in 0..2 {
        let r = dispose(
            &ex.client,
            ACME_KEY,
            &json!({"lead_id": lead, "outcome": "returned"}),
        )
        .await;
        let e = r.assert_error(409, "conflict");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("no return window"), "{msg}");
        assert!(!msg.contains("Ana") && !msg.contains("555"), "{msg}");
    }
    ex.state.ledger.flush().await.unwrap();
    assert!(records(&ex.ledger_path, "disposition").is_empty());
    assert!(records(&ex.ledger_path, "refund").is_empty());
    // The lead still takes the other outcomes.
    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": lead, "outcome": "no_contact"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Black-box round 216a: a buyer's key kept 296 of 300 connection slots with connections
/// each sending a disposition every 3.7-4.0 s (the sellers' limit did not bound it), and
/// new connections waited 5-10 s. A buyer's requests hold at most 32 connections, or a
/// quarter of `server.connections_max` when that is smaller: a disposition on one more is
/// `429 rate_limited`, its connection closed.
#[tokio::test]
async fn a_buyer_s_dispositions_hold_at_most_a_quarter_of_the_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cfg, _h) = bidders().await;
    let ex = cfg
        .start_edited(|t| with_keys(t).replacen("[server]\n", "[server]\nconnections_max = 8\n", 1))
        .await;
    let body = r#"{"lead_id":"ld_nonexistent","outcome":"contacted"}"#;
    let request = |key: &str| {
        format!(
            "POST /v1/dispositions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Reads one answer's head and body (its content-length), then whether the server
    // closed the connection after it.
    async fn answer(s: &mut tokio::net::TcpStream) -> (String, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(EVENT_WAIT_MAX, s.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap_or(0);
            if n == 0 {
                return (String::from_utf8_lossy(&got).into_owned(), true);
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .to_ascii_lowercase()
                    .split("content-length: ")
                    .nth(1)
                    .and_then(|r| r.split("\r\n").next())
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    let closing = text
                        .to_ascii_lowercase()
                        .contains("\r\nconnection: close\r\n");
                    return (text, closing);
                }
            }
        }
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
        s.write_all(request(ACME_KEY).as_bytes()).await.unwrap();
        let (text, closing) = answer(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 404") && !closing, "{text}");
        held.push(s);
    }
    let mut s = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
    s.write_all(request(ACME_KEY).as_bytes()).await.unwrap();
    let (text, closing) = answer(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 429") && closing, "{text}");
    assert!(
        text.contains("this buyer holds its limit of 2 open connection(s)"),
        "{text}"
    );
    // Its connections still serve it; another buyer has places of its own.
    for s in &mut held {
        s.write_all(request(ACME_KEY).as_bytes()).await.unwrap();
        let (text, closing) = answer(s).await;
        assert!(text.starts_with("HTTP/1.1 404") && !closing, "{text}");
    }
    let mut other = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
    other
        .write_all(request(OTHER_KEY).as_bytes())
        .await
        .unwrap();
    let (text, closing) = answer(&mut other).await;
    assert!(text.starts_with("HTTP/1.1 404") && !closing, "{text}");
}

/// POSTs a disposition with acme's key and `headers` (an `Idempotency-Key`, or several).
async fn dispose_keyed(client: &SellerClient, headers: &[(&str, &str)], body: &Value) -> Reply {
    client
        .post_json_with("/v1/dispositions", ACME_KEY, headers, body)
        .await
}

/// Hex SHA-256 of `body` as the client sends it.
fn body_digest(body: &Value) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(body).unwrap()))
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_writes_once() {
    let (cfg, _h) = bidders().await;
    let ex = cfg.start_edited(with_keys).await;
    let lead = sell(&ex.client).await;
    let c = &ex.client;
    let key = "disp-retry-Qx7";
    let body = json!({"lead_id": lead, "outcome": "contacted"});

    let first = dispose_keyed(c, &[("Idempotency-Key", key)], &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.json(),
        json!({"lead_id": lead, "outcome": "contacted", "recorded": true, "refund": null})
    );
    // The retry gets the same bytes (not 409 "already recorded"), and writes nothing.
    for _ in 0..2 {
        let again = dispose_keyed(c, &[("Idempotency-Key", key)], &body).await;
        assert_eq!(
            (again.status, &again.body),
            (200, &first.body),
            "{}",
            again.text()
        );
    }
    let disp = records(&ex.ledger_path, "disposition");
    assert_eq!(disp.len(), 1, "{disp:?}");
    // The record names the key and the body by digests keyed with the ledger's
    // FINGERPRINT_KEY, never the key itself, nor a plain SHA-256 a reader could test
    // guesses against (black-box round 72d).
    assert_ne!(disp[0]["idempotency_key_sha256"], digest(key));
    assert_ne!(disp[0]["body_sha256"], body_digest(&body));
    let keyed = |label: &[u8], bytes: &[u8]| {
        use hmac::Mac;
        let file = std::fs::read_to_string(ex.ledger_path.join("FINGERPRINT_KEY")).unwrap();
        let secret = hex::decode(file.trim()).unwrap();
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(label);
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(
        disp[0]["idempotency_key_sha256"],
        keyed(b"pingpost idempotency key v1\0", key.as_bytes())
    );
    assert_eq!(
        disp[0]["body_sha256"],
        keyed(
            b"pingpost idempotency body v1\0",
            &serde_json::to_vec(&body).unwrap()
        )
    );
    let all = pingpost::ledger::segments::read_all(&ex.ledger_path).unwrap();
    assert!(!all.contains(key), "the key itself is never written");

    // The same key with another body: 409, nothing written.
    let other = json!({"lead_id": lead, "outcome": "quoted"});
    dispose_keyed(c, &[("Idempotency-Key", key)], &other)
        .await
        .assert_error(409, "conflict");
    // A key whose request failed is forgotten: its retry runs (here with a good body).
    let unknown = json!({"lead_id": "ld_00000000000000000000000000000000", "outcome": "quoted"});
    dispose_keyed(c, &[("Idempotency-Key", "k-failed")], &unknown)
        .await
        .assert_error(404, "not_found");
    let r = dispose_keyed(c, &[("Idempotency-Key", "k-failed")], &other).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A keyless disposition still works, and its record names no key.
    let keyless = json!({"lead_id": lead, "outcome": "sold"});
    assert_eq!(dispose(c, ACME_KEY, &keyless).await.status, 200);
    let disp = records(&ex.ledger_path, "disposition");
    assert_eq!(disp.len(), 3, "{disp:?}");
    assert!(
        disp[2].get("idempotency_key_sha256").is_none(),
        "{}",
        disp[2]
    );
    assert!(disp[2].get("body_sha256").is_none(), "{}", disp[2]);
}

#[tokio::test]
async fn a_malformed_or_repeated_idempotency_key_is_refused_and_writes_nothing() {
    let (cfg, _h) = bidders().await;
    let ex = cfg.start_edited(with_keys).await;
    let lead = sell(&ex.client).await;
    let c = &ex.client;
    let body = json!({"lead_id": lead, "outcome": "contacted"});
    let long = "k".repeat(256);
    for key in ["has space", "tab\there", "", long.as_str()] {
        let e = dispose_keyed(c, &[("Idempotency-Key", key)], &body)
            .await
            .assert_error(400, "invalid_request");
        assert!(e.to_string().contains("Idempotency-Key"), "{key:?}: {e}");
    }
    let e = dispose_keyed(
        c,
        &[("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        &body,
    )
    .await
    .assert_error(400, "invalid_request");
    assert!(e.to_string().contains("one Idempotency-Key"), "{e}");
    ex.state.ledger.flush().await.unwrap();
    assert!(records(&ex.ledger_path, "disposition").is_empty());
    // The longest key is fine.
    let ok = "k".repeat(255);
    let r = dispose_keyed(c, &[("Idempotency-Key", &ok)], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(records(&ex.ledger_path, "disposition").len(), 1);
}

#[tokio::test]
async fn a_keyed_return_replays_its_refund_and_refunds_once() {
    let (cfg, _h) = bidders().await;
    let ex = cfg.start_edited(with_keys).await;
    let lead = sell(&ex.client).await;
    let c = &ex.client;
    let body = json!({"lead_id": lead, "outcome": "returned", "reason": "disconnected_number"});
    let first = dispose_keyed(c, &[("Idempotency-Key", "return-1")], &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.json()["refund"],
        json!({"currency": "USD", "buyer_refund": 18.0, "seller_clawback": 14.4})
    );
    let again = dispose_keyed(c, &[("Idempotency-Key", "return-1")], &body).await;
    assert_eq!(
        (again.status, &again.body),
        (200, &first.body),
        "{}",
        again.text()
    );
    // Without the key, the repeat is still refused.
    dispose(c, ACME_KEY, &body)
        .await
        .assert_error(409, "conflict");
    assert_eq!(records(&ex.ledger_path, "refund").len(), 1);
    assert_eq!(records(&ex.ledger_path, "disposition").len(), 1);
}

#[tokio::test]
async fn a_buyer_holds_at_most_its_quota_of_disposition_keys() {
    let (cfg, _h) = bidders().await;
    let ex = cfg
        .start_edited(|t| {
            with_keys(t).replacen(
                "[server]\n",
                "[server]\nidempotency_keys_per_seller_max = 1\n",
                1,
            )
        })
        .await;
    let lead = sell(&ex.client).await;
    let c = &ex.client;
    let contacted = json!({"lead_id": lead, "outcome": "contacted"});
    let quoted = json!({"lead_id": lead, "outcome": "quoted"});
    let a = dispose_keyed(c, &[("Idempotency-Key", "a")], &contacted).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let over = dispose_keyed(c, &[("Idempotency-Key", "b")], &quoted).await;
    over.assert_error(429, "rate_limited");
    assert!(
        over.headers.contains_key("retry-after"),
        "{:?}",
        over.headers
    );
    // The held key still replays; a request without a key still runs.
    let replay = dispose_keyed(c, &[("Idempotency-Key", "a")], &contacted).await;
    assert_eq!((replay.status, &replay.body), (200, &a.body));
    assert_eq!(dispose(c, ACME_KEY, &quoted).await.status, 200);
    // The sellers' keys are another store: the seller's key quota is untouched.
    let ping = c
        .post_json_with(
            "/v1/ping",
            SELLER_KEY,
            &[("Idempotency-Key", "a")],
            &ping_body("TX"),
        )
        .await;
    assert_eq!(ping.status, 200, "{}", ping.text());
}

/// Opens `n` dispositions from the buyer of `key` whose bodies never come: each holds its
/// place in flight while its stream is kept.
async fn hold_dispositions(
    ex: &Exchange,
    key: &str,
    n: usize,
    held: &mut Vec<tokio::net::TcpStream>,
) {
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "POST /v1/dispositions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 66\r\n\r\n"
    );
    let before = ex.state.metrics.requests_in_flight.get();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    while ex.state.metrics.requests_in_flight.get() < before + n as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the requests never started"
        );
        tokio::task::yield_now().await;
    }
}

/// Black-box round 155b: one buyer's dispositions whose bodies never came each held a
/// place of `server.requests_in_flight_max` for the body budget (about 500 of 4,096, all
/// 400 of a smaller limit), and sellers got `503`. A buyer holds at most
/// `DISPOSITIONS_IN_FLIGHT_PER_BUYER_MAX` of them; past it `429`, and sellers are served.
#[tokio::test]
async fn a_buyer_holds_at_most_its_share_of_requests_in_flight() {
    // Of a server limit of 40, a buyer takes at most a quarter (round 156a: a fixed 32
    // filled a limit of 24); of a large limit, at most 32.
    let max = pingpost::dispositions::in_flight_per_buyer_max(40);
    assert_eq!(max, 10);
    assert_eq!(pingpost::dispositions::in_flight_per_buyer_max(24), 6);
    assert_eq!(pingpost::dispositions::in_flight_per_buyer_max(4_096), 32);
    let (cfg, _h) = bidders().await;
    let ex = cfg
        .with(|c| c.requests_in_flight_max = 40)
        .start_edited(with_keys)
        .await;
    // `max` dispositions whose bodies never come: each holds its place.
    let mut held = Vec::new();
    hold_dispositions(&ex, ACME_KEY, max, &mut held).await;
    // One more from that buyer: refused at once, before its body is waited for.
    let over = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": "ld_x", "outcome": "contacted"}),
    )
    .await;
    let e = over.assert_error(429, "rate_limited");
    assert!(
        e["message"].as_str().unwrap().contains(&format!(
            "holds its limit of {max} disposition(s) in flight"
        )),
        "{e}"
    );
    assert!(
        over.headers.contains_key("retry-after"),
        "{:?}",
        over.headers
    );
    // Another buyer, and the sellers, are served meanwhile.
    let other = dispose(
        &ex.client,
        OTHER_KEY,
        &json!({"lead_id": "ld_x", "outcome": "contacted"}),
    )
    .await;
    other.assert_error(404, "not_found");
    let ping = ex.client.ping("TX").await;
    assert_eq!(ping.status, proto::seller::PingStatus::Bid, "{ping:?}");
    // Once they go, the buyer is served again.
    drop(held);
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    while ex.state.metrics.requests_in_flight.get() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the requests never ended"
        );
        tokio::task::yield_now().await;
    }
    dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": "ld_x", "outcome": "contacted"}),
    )
    .await
    .assert_error(404, "not_found");
}

/// Session 57 left open: each buyer's bound did not bound the buyers together (128
/// buyers holding 32 each fill 4,096 places, and sellers get `503`). Every buyer's
/// dispositions in flight together hold at most half of `server.requests_in_flight_max`;
/// past it `429`, the sellers keep the other half, and the places come back.
#[tokio::test]
async fn the_buyers_together_hold_at_most_half_of_requests_in_flight() {
    // A limit of 10: each buyer 3, the buyers together 5.
    assert_eq!(pingpost::dispositions::in_flight_per_buyer_max(10), 3);
    assert_eq!(pingpost::dispositions::in_flight_all_buyers_max(10), 5);
    // Half rounded down, so sellers keep at least half (round 159a: rounded up, buyers
    // held 2 places of 3 and the one place of 1); a buyer never more than the buyers'.
    for (server, own, all) in [(1, 0, 0), (2, 1, 1), (3, 1, 1), (5, 2, 2), (24, 6, 12)] {
        assert_eq!(
            pingpost::dispositions::in_flight_per_buyer_max(server),
            own,
            "{server}"
        );
        assert_eq!(
            pingpost::dispositions::in_flight_all_buyers_max(server),
            all,
            "{server}"
        );
    }
    let (cfg, _h) = bidders().await;
    let ex = cfg
        .with(|c| c.requests_in_flight_max = 10)
        .start_edited(with_keys)
        .await;
    let mut held = Vec::new();
    hold_dispositions(&ex, ACME_KEY, 3, &mut held).await;
    hold_dispositions(&ex, OTHER_KEY, 2, &mut held).await;
    let report = json!({"lead_id": "ld_x", "outcome": "contacted"});
    // `other` has a place of its own left, but the buyers' half is full.
    let over = dispose(&ex.client, OTHER_KEY, &report).await;
    let e = over.assert_error(429, "rate_limited");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("the buyers together hold their limit of 5 disposition(s)"),
        "{e}"
    );
    assert!(
        over.headers.contains_key("retry-after"),
        "{:?}",
        over.headers
    );
    // `acme` is refused by its own bound first.
    let e = dispose(&ex.client, ACME_KEY, &report)
        .await
        .assert_error(429, "rate_limited");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("holds its limit of 3 disposition(s)"),
        "{e}"
    );
    // The refusals took no place: sellers are served from the other half.
    assert_eq!(ex.state.metrics.requests_in_flight.get(), 5);
    for _ in 0..3 {
        let ping = ex.client.ping("TX").await;
        assert_eq!(ping.status, proto::seller::PingStatus::Bid, "{ping:?}");
    }
    // One of `acme`'s ends: `other` is served again (its place and the buyers' came back).
    held.remove(0);
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    while ex.state.metrics.requests_in_flight.get() > 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never ended"
        );
        tokio::task::yield_now().await;
    }
    dispose(&ex.client, OTHER_KEY, &report)
        .await
        .assert_error(404, "not_found");
    drop(held);
}

/// Black-box round 159a: at `server.requests_in_flight_max = 1` one buyer's disposition
/// whose body never came held the only place, and sellers got `503`. Buyers hold half of
/// the limit rounded down, none of 1: a disposition is refused at once, saying why, and
/// the seller keeps its place.
#[tokio::test]
async fn at_a_limit_of_one_request_in_flight_dispositions_take_no_place() {
    let (cfg, _h) = bidders().await;
    let ex = cfg
        .with(|c| c.requests_in_flight_max = 1)
        .start_edited(with_keys)
        .await;
    let e = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": "ld_x", "outcome": "contacted"}),
    )
    .await
    .assert_error(429, "rate_limited");
    assert!(
        e["message"].as_str().unwrap().contains(
            "server.requests_in_flight_max is 1: it leaves buyers' dispositions no place"
        ),
        "{e}"
    );
    // A head whose body never comes is answered at once, and holds nothing.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
    held.write_all(
        format!(
            "POST /v1/dispositions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ACME_KEY}\r\n\
             content-type: application/json\r\ncontent-length: 66\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(EVENT_WAIT_MAX, held.read_exact(&mut head))
        .await
        .expect("answered before its body")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 429");
    let ping = ex.client.ping("TX").await;
    assert_eq!(ping.status, proto::seller::PingStatus::Bid, "{ping:?}");
}

/// Black-box round 156a: a return whose head came before a reload that closed the buyer's
/// return window (or removed the buyer), and whose body came after it, was refunded under
/// the old window. The configuration serving when the disposition has come whole decides.
#[tokio::test]
async fn a_return_whose_body_comes_after_a_reload_is_judged_by_the_new_configuration() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cfg, _h) = bidders().await;
    let ex = cfg.start_edited(with_keys).await;
    let lead = sell(&ex.client).await;
    let body = json!({"lead_id": lead, "outcome": "returned"}).to_string();
    let head = format!(
        "POST /v1/dispositions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ACME_KEY}\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    while ex.state.metrics.requests_in_flight.get() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never started"
        );
        tokio::task::yield_now().await;
    }
    // The window closes while the return's body has not come.
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    let closed = text.replace("return_window_days = 7", "return_window_days = 0");
    assert_ne!(closed, text);
    ex.write_config_text(&closed);
    assert_eq!(ex.reload().await.status, 200);
    s.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(EVENT_WAIT_MAX, s.read_to_string(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
    assert!(answer.contains("conflict"), "{answer}");
    assert!(
        records(&ex.ledger_path, "refund").is_empty(),
        "nothing refunded"
    );
}

#[tokio::test]
async fn a_disposition_key_survives_a_restart() {
    let (cfg, _h) = bidders().await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");

    let first = start(&cfg, &ledger, Clock::system()).await;
    let client = SellerClient::new(first.addr);
    let (l1, l2) = (sell(&client).await, sell(&client).await);
    let mut test_body = direct_body("TX");
    test_body["test"] = json!(true);
    let sold = client
        .post_json("/v1/leads", &test_body)
        .await
        .post_answer();
    let l3 = sold.lead_id.expect("the test lead is sold");
    let cases = [
        (
            "key-contacted",
            json!({"lead_id": l1, "outcome": "contacted"}),
        ),
        (
            "key-returned",
            json!({"lead_id": l2, "outcome": "returned", "reason": "wrong_number"}),
        ),
        ("key-test", json!({"lead_id": l3, "outcome": "returned"})),
    ];
    let mut answers = Vec::new();
    for (key, body) in &cases {
        let r = dispose_keyed(&client, &[("Idempotency-Key", key)], body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        answers.push(r.body);
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&answers[2]).unwrap()["no_refund"],
        "test_lead"
    );
    first.shutdown().await.unwrap();
    let before = (
        records(&ledger, "disposition").len(),
        records(&ledger, "refund").len(),
    );
    assert_eq!(before, (3, 1));

    let second = start(&cfg, &ledger, Clock::system()).await;
    let client = SellerClient::new(second.addr);
    // Each retry gets the bytes it got before the restart and writes nothing.
    for ((key, body), answer) in cases.iter().zip(&answers) {
        let r = dispose_keyed(&client, &[("Idempotency-Key", key)], body).await;
        assert_eq!((r.status, &r.body), (200, answer), "{key}: {}", r.text());
    }
    // The same key with another body is still a conflict.
    dispose_keyed(
        &client,
        &[("Idempotency-Key", "key-contacted")],
        &json!({"lead_id": l1, "outcome": "sold"}),
    )
    .await
    .assert_error(409, "conflict");
    second.state.ledger.flush().await.unwrap();
    assert_eq!(
        (
            records(&ledger, "disposition").len(),
            records(&ledger, "refund").len()
        ),
        before
    );
    second.shutdown().await.unwrap();
    let (ok, out) = run(&["ledger", "verify", "--dir", ledger.to_str().unwrap()]);
    assert!(ok, "{out}");
}

/// A buyer left out of the configuration at a restart keeps its disposition keys under
/// its id, as it keeps its counts: a reload that brings it back finds them, and its
/// retry gets its stored refund, not `409` (black-box round 22).
#[tokio::test]
async fn a_buyer_missing_at_a_restart_keeps_its_disposition_keys_for_a_reload() {
    let acme = ScriptedBidder::bidding(18.0);
    let other = ScriptedBidder::bidding(10.0);
    let (a, _ha) = serve("acme", &acme).await;
    let (o, _ho) = serve("other", &other).await;
    let both = TestConfig::new().buyer(a).buyer(o.clone());
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");

    let first = start(&both, &ledger, Clock::system()).await;
    let client = SellerClient::new(first.addr);
    let lead = sell(&client).await;
    let body = json!({"lead_id": lead, "outcome": "returned", "reason": "wrong_number"});
    let key = [("Idempotency-Key", "key-away")];
    let returned = dispose_keyed(&client, &key, &body).await;
    assert_eq!(returned.status, 200, "{}", returned.text());
    first.shutdown().await.unwrap();

    let without_acme = TestConfig::new().buyer(o);
    let second = start(&without_acme, &ledger, Clock::system()).await;
    second
        .state
        .apply_config(both.load_edited(&ledger, with_keys))
        .expect("the reload brings acme back");
    let client = SellerClient::new(second.addr);
    let again = dispose_keyed(&client, &key, &body).await;
    assert_eq!(
        (again.status, &again.body),
        (200, &returned.body),
        "{}",
        again.text()
    );
    second.state.ledger.flush().await.unwrap();
    assert_eq!(records(&ledger, "refund").len(), 1, "refunded once");
    second.shutdown().await.unwrap();
}

/// OPERATIONS.md's way to stop a buyer buying while it may still return leads (black-box
/// round 128a: a removed buyer's key is nobody's, so its return window ended silently):
/// closed by `schedule = {}`, it is pinged no more and its returns still refund; removed,
/// its dispositions get 401 and write nothing.
#[tokio::test]
async fn a_buyer_closed_by_its_schedule_still_returns_and_a_removed_one_cannot() {
    let acme = ScriptedBidder::bidding(18.0);
    let other = ScriptedBidder::bidding(10.0);
    let (a, _ha) = serve("acme", &acme).await;
    let (o, _ho) = serve("other", &other).await;
    let ex = TestConfig::new()
        .buyer(a)
        .buyer(o)
        .start_edited(with_keys)
        .await;
    let sold: Vec<String> = [sell(&ex.client).await, sell(&ex.client).await].into();
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    let closed = text.replace("[buyers.acme]\n", "[buyers.acme]\nschedule = {}\n");
    assert_ne!(closed, text);
    ex.write_config_text(&closed);
    assert_eq!(ex.reload().await.status, 200);
    let pinged = acme.pings();
    let ping = ex.client.ping("TX").await;
    let third = ex.client.post(&ping.ping_id, "TX").await;
    assert_eq!(third.buyer.as_deref(), Some("Buyer other"), "{third:?}");
    assert_eq!(acme.pings(), pinged, "a closed buyer is not pinged");
    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": sold[0], "outcome": "returned"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["refund"]["buyer_refund"], 18.0, "{}", r.text());
    // Removed: its key is nobody's.
    let removed = closed
        .split("\n[")
        .filter(|section| !section.starts_with("buyers.acme]"))
        .collect::<Vec<_>>()
        .join("\n[");
    assert!(!removed.contains("[buyers.acme]"), "{removed}");
    ex.write_config_text(&removed);
    assert_eq!(ex.reload().await.status, 200, "{removed}");
    let r = dispose(
        &ex.client,
        ACME_KEY,
        &json!({"lead_id": sold[1], "outcome": "returned"}),
    )
    .await;
    r.assert_error(401, "unauthorized");
    ex.state.ledger.flush().await.unwrap();
    assert_eq!(records(&ex.ledger_path, "disposition").len(), 1);
    assert_eq!(records(&ex.ledger_path, "refund").len(), 1);
}
