//! De-duplication end to end: a consumer sold once is a `duplicate` at a later ping,
//! post or direct post within the vertical's window, across a restart too; a post of the
//! same consumer still in flight makes another wait (`409`); a seller's hash that is not
//! one is refused naming its key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use pingpost::app::{self, Running};
use pingpost::clock::Clock;
use proto::seller::{NoBidReason, PingStatus, PostStatus};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use common::*;

/// The test vertical with a 30-day dedup window (its keys: `phone_sha256` from `phone`,
/// `email_sha256` from `email`, the defaults).
fn with_dedup(toml: String) -> String {
    toml.replace(
        "[verticals.auto_insurance.fields]",
        "[verticals.auto_insurance.dedup]\nwindow_days = 30\n\n[verticals.auto_insurance.fields]",
    )
}

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// [`full_lead`] for another consumer.
fn lead_of(phone: &str, email: &str) -> Value {
    let mut l = full_lead("TX");
    l["phone"] = json!(phone);
    l["email"] = json!(email);
    l
}

fn ping_with(dedup: Value) -> Value {
    json!({"vertical": VERTICAL, "lead": ping_lead("TX"), "dedup": dedup})
}

#[tokio::test]
async fn a_consumer_sold_once_is_a_duplicate_at_ping_post_and_direct_post() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(100))
        .start_edited(with_dedup)
        .await;
    let phone_hash = sha("+18175550123");

    // Sold: a ping carrying the seller's phone hash, then its post.
    let q = ex
        .client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": phone_hash})))
        .await
        .ping_answer();
    assert_eq!(q.status, PingStatus::Bid, "{q:?}");
    let sold = ex.client.post(&q.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");

    // The sale record keeps keyed digests: two keys (the seller's phone hash and the
    // post's own are one), neither the hash the seller sent nor anything of the lead.
    ex.state.ledger.flush().await.unwrap();
    let sale = ex.ledger_of("sale").pop().unwrap();
    let keys: Vec<&str> = sale["dedup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{sale}");
    let text = sale.to_string();
    let email_hash = sha("ana@example.com");
    for secret in [
        phone_hash.as_str(),
        email_hash.as_str(),
        "8175550123",
        "ana@",
    ] {
        assert!(!text.contains(&secret[..12.min(secret.len())]), "{text}");
    }

    // Pings of the same consumer: by phone hash (upper-case hex too), by e-mail hash.
    let pings = a.pings();
    for dedup in [
        json!({"phone_sha256": phone_hash.to_uppercase()}),
        json!({"email_sha256": sha("ana@example.com"), "phone_sha256": ""}),
        json!({"phone_sha256": sha("+19995550000"), "email_sha256": sha("ana@example.com")}),
    ] {
        let r = ex
            .client
            .post_json("/v1/ping", &ping_with(dedup.clone()))
            .await
            .ping_answer();
        assert_eq!(r.status, PingStatus::NoBid, "{dedup}: {r:?}");
        assert_eq!(r.reason, Some(NoBidReason::Duplicate), "{dedup}");
    }
    assert_eq!(a.pings(), pings, "a duplicate pings no buyer");

    // A ping without hashes is quoted; its post of the same consumer is a duplicate:
    // nothing is delivered and the winner's hold is released for it.
    let q = ex.client.ping("TX").await;
    assert_eq!(q.status, PingStatus::Bid);
    assert_eq!(ex.reserved("a"), 1);
    let posts = a.posts();
    for _ in 0..2 {
        let dup = ex.client.post(&q.ping_id, "TX").await;
        assert_eq!(dup.status, PostStatus::Duplicate, "{dup:?}");
        assert_eq!(dup.reason.as_deref(), Some("sold_within_window"));
        assert_eq!(dup.lead_id, None);
    }
    assert_eq!(a.posts(), posts, "nothing delivered");
    assert_eq!(ex.reserved("a"), 0, "the hold was released");
    assert_eq!(ex.sold_today("a"), 1);

    // A direct post of the same consumer: duplicate, no buyer pinged.
    let pings = a.pings();
    let d = ex.client.direct("TX").await;
    assert_eq!(d.status, PostStatus::Duplicate, "{d:?}");
    assert_eq!(a.pings(), pings);
    // The e-mail alone, in another case, is the same consumer.
    let body = json!({"vertical": VERTICAL, "lead": lead_of("+18175550999", "Ana@Example.COM")});
    let d = ex.client.post_json("/v1/leads", &body).await.post_answer();
    assert_eq!(d.status, PostStatus::Duplicate, "{d:?}");

    // Another consumer sells; a test lead of the first one is never a duplicate.
    let body = json!({"vertical": VERTICAL, "lead": lead_of("+18175550100", "bo@example.com")});
    let d = ex.client.post_json("/v1/leads", &body).await.post_answer();
    assert_eq!(d.status, PostStatus::Sold, "{d:?}");
    let body = json!({"vertical": VERTICAL, "lead": full_lead("TX"), "test": true});
    let d = ex.client.post_json("/v1/leads", &body).await.post_answer();
    assert_eq!(d.status, PostStatus::Sold, "a test lead: {d:?}");

    // Counted and recorded as what they were.
    assert_eq!(
        ex.metric("pingpost_auctions_total", &[("outcome", "duplicate")])
            .await,
        5.0
    );
    assert_eq!(
        ex.metric("pingpost_posts_total", &[("status", "duplicate")])
            .await,
        4.0
    );
    assert!(ex.metric("pingpost_dedup_keys", &[]).await >= 4.0);
    ex.state.ledger.flush().await.unwrap();
    let released: Vec<Value> = ex
        .ledger_of("quote_released")
        .into_iter()
        .filter(|r| r["reason"] == "duplicate")
        .collect();
    assert_eq!(released.len(), 1, "one release, however often it is posted");
    let dup_auctions = ex
        .ledger_of("auction")
        .into_iter()
        .filter(|r| r["no_bid"] == "duplicate")
        .count();
    assert_eq!(dup_auctions, 5);
}

#[tokio::test]
async fn a_seller_hash_that_is_not_one_is_refused_naming_its_key_and_changes_nothing() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.clone())
        .start_edited(with_dedup)
        .await;
    for bad in [
        "abc",
        "+18175550123",
        &sha("x")[..63],
        &format!("{}0", sha("x")),
        &format!("{}g", &sha("x")[..63]),
        " ",
    ] {
        for path in ["/v1/ping", "/v1/leads"] {
            let mut body = if path == "/v1/ping" {
                ping_with(json!({}))
            } else {
                direct_body("TX")
            };
            body["dedup"] = json!({"phone_sha256": bad, "email_sha256": sha("ok@example.com")});
            let r = ex.client.post_json(path, &body).await;
            let err = r.assert_error(400, "invalid_request");
            let fields = err["fields"].to_string();
            assert!(
                fields.contains("dedup.phone_sha256"),
                "{path} {bad:?}: {err}"
            );
            assert!(!fields.contains("email_sha256"), "{err}");
            assert!(
                bad.len() < 4 || !r.text().contains(bad),
                "the value is never echoed: {}",
                r.text()
            );
        }
    }
    assert_eq!(a.pings(), 0);
    ex.state.ledger.flush().await.unwrap();
    assert!(ex.ledger_of("auction").is_empty());

    // A key the vertical does not name is not checked; without [dedup] nothing is.
    let r = ex
        .client
        .post_json("/v1/ping", &ping_with(json!({"fb_click": "abc"})))
        .await
        .ping_answer();
    assert_eq!(r.status, PingStatus::Bid);
    let plain = TestConfig::new().buyer(ab).start().await;
    let r = plain
        .client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": "abc"})))
        .await
        .ping_answer();
    assert_eq!(r.status, PingStatus::Bid);
}

#[tokio::test]
async fn a_post_of_a_consumer_being_posted_waits_with_409_and_its_quote_stays_open() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.post_timeout_ms(5_000))
        .start_edited(with_dedup)
        .await;
    let first = ex.client.ping("TX").await;
    let second = ex.client.ping("TX").await;
    assert_eq!(second.status, PingStatus::Bid);

    a.close_posts();
    let client = ex.client.clone();
    let ping_id = first.ping_id.clone();
    let posting = tokio::spawn(async move { client.post(&ping_id, "TX").await });
    a.wait_posts(1).await;
    // The same consumer, while the first post waits for the buyer.
    for path in ["/v1/post", "/v1/leads"] {
        let body = if path == "/v1/post" {
            post_body(&second.ping_id, "TX")
        } else {
            direct_body("TX")
        };
        let r = ex.client.post_json(path, &body).await;
        let err = r.assert_error(409, "conflict");
        assert!(
            err["message"].as_str().unwrap().contains("same dedup key"),
            "{err}"
        );
    }
    assert_eq!(
        ex.quotes_open(),
        2,
        "the second quote is still open (the first is being posted)"
    );
    assert_eq!(a.posts(), 1);

    a.open_posts();
    assert_eq!(posting.await.unwrap().status, PostStatus::Sold);
    // Posted again once the first has ended: now a duplicate.
    let again = ex.client.post(&second.ping_id, "TX").await;
    assert_eq!(again.status, PostStatus::Duplicate, "{again:?}");
    assert_eq!(ex.reserved("a"), 0);
    assert_eq!(a.posts(), 1);
}

/// An unsold post lets its keys go: the consumer may be sold later.
#[tokio::test]
async fn an_unsold_post_is_no_duplicate() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start_edited(with_dedup).await;
    a.set(|s| s.accept = false);
    assert_eq!(ex.client.direct("TX").await.status, PostStatus::Unsold);
    a.set(|s| s.accept = true);
    assert_eq!(ex.client.direct("TX").await.status, PostStatus::Sold);
    assert_eq!(ex.client.direct("TX").await.status, PostStatus::Duplicate);
    assert_eq!(ex.metric("pingpost_dedup_keys", &[]).await, 2.0);
}

async fn start_on(cfg: &TestConfig, ledger: &Path, clock: Clock) -> Running {
    let config = cfg.load_edited(ledger, with_dedup);
    tokio::time::timeout(EVENT_WAIT_MAX, async {
        loop {
            match app::start(config.clone(), clock).await {
                Ok(r) => return r,
                Err(e) if e.to_string().contains("in use") => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the exchange starts")
}

#[tokio::test]
async fn a_restart_keeps_the_window_and_a_start_after_it_forgets_the_sale() {
    let a = ScriptedBidder::bidding(10.0);
    // The exchange's clock jumps a month ahead below: the buyer takes its messages'
    // timestamps as they come.
    let probe = TestBuyer::new("a", std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let options = bidder_sdk::ServeOptions {
        verify_signatures: false,
        ..bidder_sdk::ServeOptions::new(bidder_sdk::Secret::new(&probe.secret).unwrap())
    };
    let (addr, _h) = bidder_sdk::spawn(a.clone(), options).await.unwrap();
    let ab = TestBuyer { addr, ..probe };
    let cfg = TestConfig::new().buyer(ab);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let now = chrono::Utc::now().timestamp_millis();

    let first = start_on(&cfg, &ledger, Clock::at(now)).await;
    let client = SellerClient::new(first.addr);
    assert_eq!(client.direct("TX").await.status, PostStatus::Sold);
    // A quote of another consumer, with the seller's hash, stays open over the restart.
    let other = sha("+18175550177");
    let q = client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": other})))
        .await
        .ping_answer();
    assert_eq!(q.status, PingStatus::Bid);
    first.shutdown().await.unwrap();

    let second = start_on(&cfg, &ledger, Clock::at(now + 1_000)).await;
    let client = SellerClient::new(second.addr);
    let r = client
        .post_json(
            "/v1/ping",
            &ping_with(json!({"phone_sha256": sha("+18175550123")})),
        )
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::Duplicate), "{r:?}");
    assert_eq!(client.direct("TX").await.status, PostStatus::Duplicate);
    // The restored quote kept its hashes: its post sells (another phone in the lead),
    // and that consumer is a duplicate afterwards by the ping's hash alone.
    let body = json!({"ping_id": q.ping_id, "lead": lead_of("+18175550178", "cy@example.com")});
    let sold = client.post_json("/v1/post", &body).await.post_answer();
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(a.posts(), 2);
    let r = client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": other})))
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::Duplicate), "{r:?}");
    second.shutdown().await.unwrap();

    // Thirty days and a moment after the first sale, it is forgotten.
    let later = now + 30 * 86_400_000 + 1_000;
    let third = start_on(&cfg, &ledger, Clock::at(later)).await;
    let client = SellerClient::new(third.addr);
    assert_eq!(client.direct("TX").await.status, PostStatus::Sold);
    third.shutdown().await.unwrap();
}

/// A buyer that accepts after its post timeout has the consumer: a duplicate from then
/// on, and after a restart (from the delivery's `post_sent`), though the post was
/// answered `unsold`.
#[tokio::test]
async fn a_late_accept_makes_a_duplicate_live_and_after_a_restart() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let cfg = TestConfig::new().buyer(ab.post_timeout_ms(100));
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");

    let first = start_on(&cfg, &ledger, Clock::system()).await;
    let client = SellerClient::new(first.addr);
    a.close_posts();
    let d = client.direct("TX").await;
    assert_eq!(d.status, PostStatus::Unsold, "{d:?}");
    a.open_posts();
    let b = first.state.runtime.load().config.buyers[0].clone();
    tokio::time::timeout(EVENT_WAIT_MAX, async {
        while first
            .state
            .caps
            .usage(b.key, &b, first.state.clock.now_ms())
            .sold_day
            == 0
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the late accept is counted");
    assert_eq!(client.direct("TX").await.status, PostStatus::Duplicate);
    first.shutdown().await.unwrap();

    let second = start_on(&cfg, &ledger, Clock::system()).await;
    let client = SellerClient::new(second.addr);
    assert_eq!(client.direct("TX").await.status, PostStatus::Duplicate);
    assert_eq!(a.posts(), 1);
    second.shutdown().await.unwrap();
}
