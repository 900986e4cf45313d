//! De-duplication end to end: a consumer sold once is a `duplicate` at a later ping,
//! post or direct post within the vertical's window, across a restart too; a post of the
//! same consumer still in flight makes another wait (`409`); a seller's hash that is not
//! one is refused naming its key. And the suppression list (`suppressed`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use pingpost::app::Running;
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

/// A buyer `a` bidding 10.00 (a daily cap of 100) on an exchange that de-duplicates.
async fn one_bidder_deduplicating() -> (
    std::sync::Arc<ScriptedBidder>,
    Exchange,
    bidder_sdk::ServerHandle,
) {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(100))
        .start_edited(with_dedup)
        .await;
    (a, ex, h)
}

#[tokio::test]
async fn a_consumer_sold_once_is_a_duplicate_at_ping_post_and_direct_post() {
    let (a, ex, _h) = one_bidder_deduplicating().await;
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
    // The keys being delivered are held, and counted (black-box round 86c: the gauge
    // moved only when a post ended).
    assert_eq!(ex.metric("pingpost_dedup_keys", &[]).await, 2.0);
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

    assert_eq!(ex.metric("pingpost_dedup_keys", &[]).await, 2.0);

    a.open_posts();
    assert_eq!(posting.await.unwrap().status, PostStatus::Sold);
    assert_eq!(ex.metric("pingpost_dedup_keys", &[]).await, 2.0);
    // Posted again once the first has ended: now a duplicate.
    let again = ex.client.post(&second.ping_id, "TX").await;
    assert_eq!(again.status, PostStatus::Duplicate, "{again:?}");
    assert_eq!(ex.reserved("a"), 0);
    assert_eq!(a.posts(), 1);
}

/// A direct post holds its consumer from its auction on (it delivers at its end), so
/// another direct post of it while that auction runs is `409`, said so, and pings no
/// buyer (black-box round 206c: the answer said "being delivered" while the first post
/// was only in its auction).
#[tokio::test]
async fn a_direct_post_in_its_auction_holds_its_consumer() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.ping_timeout_ms(8_000))
        .with(|c| c.auction_deadline_ms = 9_000)
        .start_edited(with_dedup)
        .await;
    a.close();
    let client = ex.client.clone();
    let first = tokio::spawn(async move { client.direct("TX").await });
    a.wait_pings(1).await;
    let r = ex.client.post_json("/v1/leads", &direct_body("TX")).await;
    let err = r.assert_error(409, "conflict");
    let said = err["message"].as_str().unwrap();
    assert!(said.contains("a direct post in its auction"), "{said}");
    // It ends by itself: Retry-After says so, as a 429's does (black-box round 210a).
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(a.pings(), 1, "the second direct post pinged no buyer");
    a.open();
    assert_eq!(first.await.unwrap().status, PostStatus::Sold);
    assert_eq!(
        ex.client.direct("TX").await.status,
        PostStatus::Duplicate,
        "once the first has sold"
    );
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

/// Black-box round 159b: the same mailbox in other spellings sold its consumer again
/// within the window: a domain in its IDNA ASCII form (`xn--…`) or with an ideographic
/// full stop hashed as another consumer (now: `duplicate`), and a quoted local part
/// (`"ana"@…`) was taken (now: `400`, and nothing changes). Round 160a: more spellings.
#[tokio::test]
async fn the_same_mailbox_in_another_spelling_is_a_duplicate_or_refused() {
    let (a, ex, _h) = one_bidder_deduplicating().await;
    let direct =
        |phone: &str, email: &str| json!({"vertical": VERTICAL, "lead": lead_of(phone, email)});
    for (phone, first, again) in [
        (
            ["+18175550101", "+18175550102"],
            "bob@ex\u{e4}mple.com",
            "bob@xn--exmple-cua.com",
        ),
        (
            ["+18175550103", "+18175550104"],
            "zed@mail.example.com",
            "zed@mail.example\u{3002}com",
        ),
        // Round 160a: a capital sigma lower-cased as a final one; full-width quotes; a
        // Punycode label IDNA would not register; a domain whose only dot is `。`.
        (
            ["+18175550106", "+18175550107"],
            "greek@\u{3b1}\u{3c3}1.com",
            "greek@\u{391}\u{3a3}1.com",
        ),
        (
            ["+18175550108", "+18175550109"],
            "dex@example.com",
            "\u{ff02}dex\u{ff02}@example.com",
        ),
        (
            ["+18175550110", "+18175550111"],
            "kim@ex\u{e4}mple.com",
            "kim@xn--exmple-xna.com",
        ),
        (
            ["+18175550112", "+18175550113"],
            "lee@ex\u{e4}mple.org",
            "lee@ex\u{e4}mple\u{3002}org",
        ),
        // Round 161a: a trailing dot made by folding; IDNA's mapping of `ᾀ`.
        (
            ["+18175550114", "+18175550115"],
            "tdq@example.com",
            "tdq@example.com.\u{200b}",
        ),
        (
            ["+18175550116", "+18175550117"],
            "zoe@\u{1f00}\u{3b9}.gr",
            "zoe@\u{1f80}.gr",
        ),
    ] {
        let sold = ex
            .client
            .post_json("/v1/leads", &direct(phone[0], first))
            .await
            .post_answer();
        assert_eq!(sold.status, PostStatus::Sold, "{first}: {sold:?}");
        let dup = ex
            .client
            .post_json("/v1/leads", &direct(phone[1], again))
            .await
            .post_answer();
        assert_eq!(dup.status, PostStatus::Duplicate, "{again}: {dup:?}");
    }
    assert_eq!(a.posts(), 8, "each consumer delivered once");
    // A quoted local part is refused, naming the field, and changes nothing.
    let records = || {
        ex.ledger()
            .into_iter()
            .filter(|r| r["type"] != "flush")
            .count()
    };
    ex.state.ledger.flush().await.unwrap();
    let before = records();
    let refused = ex
        .client
        .post_json(
            "/v1/leads",
            &direct("+18175550105", "\"zed\"@mail.example.com"),
        )
        .await;
    let e = refused.assert_error(400, "invalid_request");
    assert_eq!(e["fields"][0]["field"], "lead.email", "{e}");
    assert_eq!(
        e["fields"][0]["problem"],
        proto::schema::EMAIL_SPECIALS_PROBLEM,
        "{e}"
    );
    ex.state.ledger.flush().await.unwrap();
    assert_eq!(records(), before, "nothing written");
    assert_eq!(a.posts(), 8, "nothing delivered");
}

/// Black-box round 172b: in a vertical with two phone fields (so two phone keys,
/// `phone_sha256` and `alt_phone_sha256`, the defaults), a lead with the two numbers
/// swapped, or a number moved from one field to the other, was another consumer and sold
/// again: a key matched only under its own name. A phone is one consumer in whichever
/// phone key it comes, at the post and in a seller's hash at the ping.
#[tokio::test]
async fn a_phone_in_either_phone_field_is_the_same_consumer() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(100))
        .start_edited(|t| {
            with_dedup(t).replace(
                "[verticals.auto_insurance.fields]\n",
                "[verticals.auto_insurance.fields]\nalt_phone = { type = \"phone\", pii = true }\n",
            )
        })
        .await;
    let direct = |phone: &str, alt: Option<&str>, email: &str| {
        let mut lead = lead_of(phone, email);
        if let Some(alt) = alt {
            lead["alt_phone"] = json!(alt);
        }
        json!({"vertical": VERTICAL, "lead": lead})
    };
    let post = |body: Value| {
        let client = &ex.client;
        async move { client.post_json("/v1/leads", &body).await.post_answer() }
    };
    let (first, second) = ("+18175550201", "+18175550202");
    let sold = post(direct(first, Some(second), "one@example.com")).await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    // Each number under both phone keys, the e-mail under its own.
    assert_eq!(ex.metric("pingpost_dedup_keys", &[]).await, 5.0);
    for (phone, alt, email) in [
        (second, Some(first), "two@example.com"),
        (second, None, "three@example.com"),
        ("+18175550203", Some(first), "four@example.com"),
    ] {
        let dup = post(direct(phone, alt, email)).await;
        assert_eq!(
            dup.status,
            PostStatus::Duplicate,
            "{phone} {alt:?}: {dup:?}"
        );
    }
    // A seller's hash of the alternate number, under the other phone key, at the ping.
    let answer = ex
        .client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": sha(second)})))
        .await
        .ping_answer();
    assert_eq!(answer.status, PingStatus::NoBid, "{answer:?}");
    assert_eq!(answer.reason, Some(NoBidReason::Duplicate), "{answer:?}");
    // Another consumer still sells, and is delivered; the duplicates were not.
    let fresh = post(direct(
        "+18175550204",
        Some("+18175550205"),
        "five@example.com",
    ))
    .await;
    assert_eq!(fresh.status, PostStatus::Sold, "{fresh:?}");
    assert_eq!(a.posts(), 2);
}

async fn start_on(cfg: &TestConfig, ledger: &Path, clock: Clock) -> Running {
    start_with(cfg, ledger, clock, with_dedup).await
}

/// `ping_id`'s test quote is closed by one `quote_released` for `reason`, with no buyer,
/// no money, and `"test": true`.
fn assert_test_quote_closed(ledger: &Path, ping_id: &str, reason: &str) {
    let closed: Vec<Value> = ledger_at_of(ledger, "quote_released")
        .into_iter()
        .filter(|r| r["ping_id"] == ping_id)
        .collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    let r = &closed[0];
    assert_eq!(
        (&r["buyer"], &r["price_micros"], &r["reason"], &r["test"]),
        (&json!(""), &json!(0), &json!(reason), &json!(true))
    );
}

async fn start_with(
    cfg: &TestConfig,
    ledger: &Path,
    clock: Clock,
    edit: impl FnOnce(String) -> String,
) -> Running {
    start_config(cfg.load_edited(ledger, edit), clock).await
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

/// A buyer that accepts after its post timeout has the consumer: claimed while it may
/// still accept, a duplicate from then on, and after a restart (from the delivery's
/// `post_sent`), though the post was answered `unsold`.
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
    // The buyer that timed out may still accept: the consumer stays claimed meanwhile,
    // so another post of it waits rather than selling it to a second buyer (black-box
    // round 29: it sold).
    let r = client.post_json("/v1/leads", &direct_body("TX")).await;
    let err = r.assert_error(409, "conflict");
    // Said why, though the post was answered (black-box round 114b: "in flight" only).
    let said = err["message"].as_str().unwrap();
    assert!(
        said.contains("timed out on it is still heard out (up to 10 s"),
        "{said}"
    );
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

/// `[suppression]`: a consumer whose phone or e-mail hash is on the list is never sold,
/// in a vertical without `[dedup]` too (its phone and e-mail fields are its keys): a
/// ping is `no_bid` `suppressed`, a post `suppressed` with its hold released, a direct
/// post `suppressed`; the list is read again at a reload.
#[tokio::test]
async fn a_consumer_on_the_suppression_list_is_never_sold_and_a_reload_reads_the_list_again() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let list_dir = tempfile::tempdir().unwrap();
    let list = list_dir.path().join("dnc.txt");
    std::fs::write(
        &list,
        format!(
            "# do not contact\n\n{}\n{}\n",
            sha("+18175550123").to_uppercase(),
            sha("zed@example.com")
        ),
    )
    .unwrap();
    let with_list = |t: String| {
        format!(
            "{t}\n[suppression]\npath = {:?}\n",
            list.display().to_string()
        )
    };
    let ex = TestConfig::new().buyer(ab).start_edited(with_list).await;
    assert_eq!(ex.metric("pingpost_suppression_hashes", &[]).await, 2.0);

    let r = ex
        .client
        .post_json(
            "/v1/ping",
            &ping_with(json!({"phone_sha256": sha("+18175550123")})),
        )
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::Suppressed), "{r:?}");
    let r = ex
        .client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": "x"})))
        .await;
    r.assert_error(400, "invalid_request");
    assert_eq!(a.pings(), 0, "nobody pinged");

    // A test lead of a listed consumer reaches no buyer either (black-box round 30: a
    // test direct post sent its PII to one).
    let mut test_ping = ping_with(json!({"phone_sha256": sha("+18175550123")}));
    test_ping["test"] = json!(true);
    let r = ex
        .client
        .post_json("/v1/ping", &test_ping)
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::Suppressed), "{r:?}");
    let mut test_direct = direct_body("TX");
    test_direct["test"] = json!(true);
    let d = ex
        .client
        .post_json("/v1/leads", &test_direct)
        .await
        .post_answer();
    assert_eq!(d.status, PostStatus::Suppressed, "{d:?}");
    let mut plain_test = ping_body("TX");
    plain_test["test"] = json!(true);
    let q = ex
        .client
        .post_json("/v1/ping", &plain_test)
        .await
        .ping_answer();
    assert_eq!(q.status, PingStatus::Bid);
    let p = ex.client.post(&q.ping_id, "TX").await;
    assert_eq!(p.status, PostStatus::Suppressed, "{p:?}");
    assert_eq!(a.posts(), 0, "no buyer was sent the lead");

    // Pinged without hashes: quoted; its post, with the listed phone, is suppressed.
    let q = ex.client.ping("TX").await;
    assert_eq!(q.status, PingStatus::Bid);
    for _ in 0..2 {
        let p = ex.client.post(&q.ping_id, "TX").await;
        assert_eq!(p.status, PostStatus::Suppressed, "{p:?}");
        assert_eq!(p.reason.as_deref(), Some("suppression_list"));
    }
    assert_eq!(ex.reserved("a"), 0);
    assert_eq!(a.posts(), 0);
    // A direct post by the listed e-mail alone, in another case.
    let body = json!({"vertical": VERTICAL, "lead": lead_of("+18175550999", "Zed@Example.com")});
    let d = ex.client.post_json("/v1/leads", &body).await.post_answer();
    assert_eq!(d.status, PostStatus::Suppressed, "{d:?}");
    // Another consumer sells.
    let body = json!({"vertical": VERTICAL, "lead": lead_of("+18175550999", "amy@example.com")});
    assert_eq!(
        ex.client
            .post_json("/v1/leads", &body)
            .await
            .post_answer()
            .status,
        PostStatus::Sold
    );

    // The list edited and reloaded: the first consumer may be sold now.
    std::fs::write(&list, format!("{}\n", sha("zed@example.com"))).unwrap();
    assert_eq!(ex.reload().await.status, 200);
    assert_eq!(ex.metric("pingpost_suppression_hashes", &[]).await, 1.0);
    assert_eq!(ex.client.direct("TX").await.status, PostStatus::Sold);
    // A broken list is refused by the reload, naming the line, and the old one serves.
    std::fs::write(&list, "0123\n").unwrap();
    let r = ex.reload().await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("line 1: not a SHA-256"), "{}", r.text());
    assert_eq!(ex.metric("pingpost_suppression_hashes", &[]).await, 1.0);
    assert_eq!(
        ex.client
            .post_json("/v1/leads", &body)
            .await
            .post_answer()
            .status,
        PostStatus::Sold,
        "amy is not listed"
    );

    assert_eq!(
        ex.metric("pingpost_auctions_total", &[("outcome", "suppressed")])
            .await,
        4.0
    );
    assert_eq!(
        ex.metric("pingpost_posts_total", &[("status", "suppressed")])
            .await,
        5.0
    );
    ex.state.ledger.flush().await.unwrap();
    let released = ex
        .ledger_of("quote_released")
        .into_iter()
        .filter(|r| r["reason"] == "suppressed")
        .count();
    assert_eq!(
        released, 2,
        "the quote's hold, and the test quote's end (no buyer, no money)"
    );
    // Nothing of the list or the lead is written.
    let text = ex
        .ledger()
        .iter()
        .map(|r| r.to_string())
        .collect::<String>();
    assert!(!text.contains(&sha("+18175550123")[..16]), "{text}");
}

const OTHER_KEY: &str = "seller-other-key";

/// [`with_dedup`] and a second seller of the vertical (`other`, [`OTHER_KEY`]), the
/// vertical's `ping_scope` set to `scope`.
fn two_sellers(scope: &'static str) -> impl FnOnce(String) -> String {
    move |t| {
        let t = with_dedup(t).replace(
            "window_days = 30\n",
            &format!("window_days = 30\nping_scope = \"{scope}\"\n"),
        );
        format!(
            "{t}\n[sellers.other]\nkey_sha256 = \"{}\"\nverticals = [\"auto_insurance\"]\npayout = {{ model = \"revenue_share\", share_pct = 80 }}\n",
            sha(OTHER_KEY)
        )
    }
}

/// Black-box round 29: a ping answered `duplicate` for another seller's sale let any
/// seller test guessed phone numbers for free (`min_price` above every bid: no quote, no
/// cost). By default (`ping_scope = "seller"`) a ping or direct post is screened only
/// against the seller's own sales; another seller's sale is found when the lead would
/// be delivered (the post, or a direct post's award), so learning it means having a
/// lead a buyer takes. `ping_scope = "all"` screens every sale at the ping.
#[tokio::test]
async fn another_seller_s_sale_is_found_at_the_post_not_the_ping_unless_the_scope_is_all() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.clone())
        .start_edited(two_sellers("seller"))
        .await;
    let phone = json!({"phone_sha256": sha("+18175550123")});
    assert_eq!(ex.client.direct("TX").await.status, PostStatus::Sold);

    // The seller that sold it: screened at the ping.
    let mine = ex
        .client
        .post_json("/v1/ping", &ping_with(phone.clone()))
        .await
        .ping_answer();
    assert_eq!(mine.reason, Some(NoBidReason::Duplicate));
    // Another seller, priced out of every bid: the same answer as for a consumer never sold.
    let mut probe = ping_with(phone.clone());
    probe["min_price"] = json!(400);
    let r = ex
        .client
        .post_json_with("/v1/ping", OTHER_KEY, &[], &probe)
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::BelowReserve), "{r:?}");
    let mut probe = direct_body("TX");
    probe["min_price"] = json!(400);
    let d = ex
        .client
        .post_json_with("/v1/leads", OTHER_KEY, &[], &probe)
        .await
        .post_answer();
    assert_eq!(d.reason.as_deref(), Some("below_reserve"), "{d:?}");
    // With a bid: the quote is made; its post is the duplicate, delivering nothing.
    let q = ex
        .client
        .post_json_with("/v1/ping", OTHER_KEY, &[], &ping_with(phone.clone()))
        .await
        .ping_answer();
    assert_eq!(q.status, PingStatus::Bid, "{q:?}");
    let p = ex
        .client
        .post_json_with("/v1/post", OTHER_KEY, &[], &post_body(&q.ping_id, "TX"))
        .await
        .post_answer();
    assert_eq!(p.status, PostStatus::Duplicate, "{p:?}");
    // A direct post with a winner: refused after the award, its hold released.
    let d = ex
        .client
        .post_json_with("/v1/leads", OTHER_KEY, &[], &direct_body("TX"))
        .await
        .post_answer();
    assert_eq!(d.status, PostStatus::Duplicate, "{d:?}");
    assert_eq!(a.posts(), 1, "only the first sale was delivered");
    assert_eq!(ex.reserved("a"), 0);
    assert_eq!(ex.sold_today("a"), 1);
    // `ledger replay` explains the refused award and matches it (black-box round 32:
    // MISMATCH, and "no buyer was pinged").
    ex.state.ledger.flush().await.unwrap();
    let refused = ex
        .ledger_of("auction")
        .into_iter()
        .find(|r| r["direct"] == true && r["no_bid"] == "duplicate")
        .unwrap();
    let id = refused["auction_id"].as_str().unwrap();
    let (rec, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
    let cfg_now = ex.state.runtime.load().config.clone();
    let rep = pingpost::finance::replay::replay(&rec, &posts, Some(&cfg_now));
    assert!(!rep.mismatch, "{}", rep.text);
    assert!(rep.text.contains("the award was refused"), "{}", rep.text);
    assert!(
        !rep.text.contains("before any buyer was pinged"),
        "{}",
        rep.text
    );

    // `ping_scope = "all"`: another seller's ping is screened too.
    let ex = TestConfig::new()
        .buyer(ab)
        .start_edited(two_sellers("all"))
        .await;
    assert_eq!(ex.client.direct("TX").await.status, PostStatus::Sold);
    let pings = a.pings();
    let r = ex
        .client
        .post_json_with("/v1/ping", OTHER_KEY, &[], &ping_with(phone))
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::Duplicate));
    let d = ex
        .client
        .post_json_with("/v1/leads", OTHER_KEY, &[], &direct_body("TX"))
        .await
        .post_answer();
    assert_eq!(d.status, PostStatus::Duplicate);
    assert_eq!(a.pings(), pings, "nobody pinged");
}

/// Black-box round 30: a keyed direct post of another seller's consumer, answered
/// `duplicate` after its award, left no record to rebuild its answer from, so its retry
/// after a restart ran a second auction (and answered `unsold` once buyers stopped
/// bidding). The award is the core's now: its auction record says `duplicate`.
#[tokio::test]
async fn a_keyed_direct_post_of_another_seller_s_consumer_answers_the_same_after_a_restart() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let cfg = TestConfig::new().buyer(ab);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");

    let first = start_with(&cfg, &ledger, Clock::system(), two_sellers("seller")).await;
    let client = SellerClient::new(first.addr);
    assert_eq!(client.direct("TX").await.status, PostStatus::Sold);
    let keyed = [("Idempotency-Key", "retry-me-1")];
    let r = client
        .post_json_with("/v1/leads", OTHER_KEY, &keyed, &direct_body("TX"))
        .await;
    assert_eq!(r.post_answer().status, PostStatus::Duplicate);
    let answer = r.text();
    first.state.ledger.flush().await.unwrap();
    first.shutdown().await.unwrap();

    a.set(|s| s.bid = None);
    let pings = a.pings();
    let second = start_with(&cfg, &ledger, Clock::system(), two_sellers("seller")).await;
    let client = SellerClient::new(second.addr);
    let r = client
        .post_json_with("/v1/leads", OTHER_KEY, &keyed, &direct_body("TX"))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), answer, "the stored answer, byte for byte");
    assert_eq!(a.pings(), pings, "no second auction");
    assert_eq!(a.posts(), 1);
    second.shutdown().await.unwrap();
}

/// Black-box round 31: a start with every window at 0 (de-duplication paused) forgot the
/// history, so once a reload turned it back on the consumers sold before sold again. The
/// book keeps at least 30 days of sales whatever the windows.
#[tokio::test]
async fn a_start_with_de_duplication_paused_keeps_the_history_for_a_reload_that_resumes_it() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let cfg = TestConfig::new().buyer(ab);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let paused = |t: String| with_dedup(t).replace("window_days = 30", "window_days = 0");

    let first = start_on(&cfg, &ledger, Clock::system()).await;
    let client = SellerClient::new(first.addr);
    assert_eq!(client.direct("TX").await.status, PostStatus::Sold);
    // A quote of another consumer, by its ping hash, open over the restart.
    let other = sha("+18175550177");
    let q = client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": other})))
        .await
        .ping_answer();
    assert_eq!(q.status, PingStatus::Bid);
    first.shutdown().await.unwrap();

    let second = start_with(&cfg, &ledger, Clock::system(), paused).await;
    assert!(second.state.dedup.len() >= 2, "the sale's keys are kept");
    // The same sale made by another quote now (paused: no check), then resumed.
    second
        .state
        .apply_config(cfg.load_edited(&ledger, with_dedup))
        .unwrap();
    let client = SellerClient::new(second.addr);
    assert_eq!(client.direct("TX").await.status, PostStatus::Duplicate);
    // The restored quote kept its ping hash: sold under it, that consumer is a duplicate.
    let body = json!({"ping_id": q.ping_id, "lead": lead_of("+18175550178", "cy@example.com")});
    assert_eq!(
        client
            .post_json("/v1/post", &body)
            .await
            .post_answer()
            .status,
        PostStatus::Sold
    );
    let r = client
        .post_json("/v1/ping", &ping_with(json!({"phone_sha256": other})))
        .await
        .ping_answer();
    assert_eq!(r.reason, Some(NoBidReason::Duplicate));
    second.shutdown().await.unwrap();
}

/// Black-box round 32: a test quote (which holds nothing) answered `suppressed` wrote no
/// record, so a restart brought it back open and a repeat of its post was answered
/// `expired`, or `sold` once the list no longer named the consumer. It is closed by a
/// `quote_released` with no buyer now, and a repeat gets the first answer.
#[tokio::test]
async fn a_test_quote_refused_at_its_post_stays_refused_after_a_restart() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let cfg = TestConfig::new().buyer(ab);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let list = dir.path().join("dnc.txt");
    std::fs::write(&list, format!("{}\n", sha("+18175550123"))).unwrap();
    let listed = |t: String| {
        format!(
            "{}\n[suppression]\npath = {:?}\n",
            with_dedup(t),
            list.display().to_string()
        )
    };

    let first = start_with(&cfg, &ledger, Clock::system(), listed).await;
    let client = SellerClient::new(first.addr);
    let mut ping = ping_body("TX");
    ping["test"] = json!(true);
    let q = client.post_json("/v1/ping", &ping).await.ping_answer();
    assert_eq!(q.status, PingStatus::Bid);
    let keyed = [("Idempotency-Key", "test-post-1")];
    let r = client
        .post_json_with("/v1/post", SELLER_KEY, &keyed, &post_body(&q.ping_id, "TX"))
        .await;
    assert_eq!(r.post_answer().status, PostStatus::Suppressed);
    let answer = r.text();
    first.state.ledger.flush().await.unwrap();
    // The closing record says it is a test lead's, with no buyer and no money.
    assert_test_quote_closed(&ledger, &q.ping_id, "suppressed");
    first.shutdown().await.unwrap();

    // The list no longer names the consumer: the refusal stands all the same.
    std::fs::write(&list, "").unwrap();
    let second = start_with(&cfg, &ledger, Clock::system(), listed).await;
    assert_eq!(
        second.state.quotes.open_count(),
        0,
        "the quote stays closed"
    );
    let client = SellerClient::new(second.addr);
    let r = client
        .post_json_with("/v1/post", SELLER_KEY, &keyed, &post_body(&q.ping_id, "TX"))
        .await;
    assert_eq!(r.text(), answer);
    let r = client.post(&q.ping_id, "TX").await;
    assert_eq!(r.status, PostStatus::Suppressed);
    assert_eq!(a.posts(), 0);
    second.shutdown().await.unwrap();
}

/// Black-box round 33: a test quote (no hold) that a start could not restore (its seller
/// gone) was closed by no record, so a later start with the seller back reopened it and
/// it sold. It is closed by a `quote_released` with no buyer now.
#[tokio::test]
async fn a_test_quote_a_start_cannot_restore_stays_closed_at_the_next_start() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let cfg = TestConfig::new().buyer(ab);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let first = start_with(&cfg, &ledger, Clock::system(), |t| t).await;
    let client = SellerClient::new(first.addr);
    let mut ping = ping_body("TX");
    ping["test"] = json!(true);
    let q = client
        .post_json_with("/v1/ping", THROTTLED_KEY, &[], &ping)
        .await
        .ping_answer();
    assert_eq!(q.status, PingStatus::Bid);
    first.state.ledger.flush().await.unwrap();
    first.shutdown().await.unwrap();

    // The seller is gone: the quote is not restored.
    let without = |t: String| {
        let start = t.find("[sellers.throttled]").unwrap();
        let end = t[start..].find("rate_per_s = 1\n").unwrap() + start + "rate_per_s = 1\n".len();
        format!("{}{}", &t[..start], &t[end..])
    };
    let second = start_with(&cfg, &ledger, Clock::system(), without).await;
    second.state.ledger.flush().await.unwrap();
    assert_test_quote_closed(&ledger, &q.ping_id, "seller_removed");
    second.shutdown().await.unwrap();

    // Back: the quote stays closed, and its post sells nothing.
    let third = start_with(&cfg, &ledger, Clock::system(), |t| t).await;
    assert_eq!(third.state.quotes.open_count(), 0);
    let client = SellerClient::new(third.addr);
    let r = client
        .post_json_with("/v1/post", THROTTLED_KEY, &[], &post_body(&q.ping_id, "TX"))
        .await;
    assert_ne!(r.status, 200, "{}", r.text());
    assert_eq!(a.posts(), 0);
    third.shutdown().await.unwrap();
}
