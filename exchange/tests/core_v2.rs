//! End-to-end tests of the auction core v2's hardening, over real sockets on 127.0.0.1:0:
//! the bid ceiling (`verticals.NAME.bid_max`), the per-seller open-quote limit
//! (`sellers.ID.quotes_open_max`) and the post deadline (`server.post_deadline_ms`).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bidder_sdk::{
    spawn, BidReply, Bidder, PingMessage, PostMessage, PostReply, Secret, ServeOptions,
};
use common::*;
use http::header;
use proto::seller::{NoBidReason, PingStatus, PostStatus};
use tokio::time::Instant;

/// Adds `lines` right under the `[section]` header of a TOML document.
fn under(section: &str, lines: &str) -> impl FnOnce(String) -> String {
    let header = format!("[{section}]\n");
    let with = format!("[{section}]\n{lines}\n");
    move |toml: String| {
        assert!(toml.contains(&header), "no {header} in the test config");
        toml.replacen(&header, &with, 1)
    }
}

#[tokio::test]
async fn a_bid_above_bid_max_loses_and_is_counted_and_recorded() {
    // One buyer answers {"bid": 1850} (cents by mistake); the ceiling is 100.00.
    let typo = ScriptedBidder::bidding(1850.0);
    let fair = ScriptedBidder::bidding(10.0);
    let (tb, _h1) = serve("typo", &typo).await;
    let (fb, _h2) = serve("fair", &fair).await;
    let ex = TestConfig::new()
        .buyer(tb)
        .buyer(fb)
        .start_edited(under("verticals.auto_insurance", "bid_max = 100"))
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert_eq!(
        quote.price,
        Some(seller_price(usd(10.0))),
        "the fair bid won"
    );
    assert_eq!(ex.reserved("typo"), 0);
    assert_eq!(ex.reserved("fair"), 1);
    let n = ex
        .metric(
            "pingpost_buyer_pings_total",
            &[("buyer", "typo"), ("outcome", "bid_above_max")],
        )
        .await;
    assert_eq!(n, 1.0);
    // Once the sale is durable, every earlier record is on disk.
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    let auction = &ex.ledger_of("auction")[0];
    let line = auction["buyers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["buyer"] == "typo")
        .unwrap()
        .clone();
    assert_eq!(line["outcome"], "bid_above_max", "{auction}");
    assert_eq!(line["bid_micros"], usd(1850.0).0);
    assert_eq!(auction["winner"], "fair");
    assert_eq!(auction["v"], pingpost::core::record::RECORD_VERSION);

    // Alone, the typo leaves the seller with no bid.
    fair.set(|s| s.bid = None);
    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::NoBid, "{quote:?}");
    assert_eq!(quote.reason, Some(NoBidReason::NoBids));
}

#[tokio::test]
async fn past_the_open_quote_limit_a_ping_is_429_with_retry_after_and_reserves_nothing() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab)
        .start_edited(under("sellers.main", "quotes_open_max = 2"))
        .await;

    let q1 = ex.client.ping("TX").await;
    let q2 = ex.client.ping("TX").await;
    assert_eq!((q1.status, q2.status), (PingStatus::Bid, PingStatus::Bid));
    assert_eq!(ex.reserved("a"), 2);

    let r = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.headers.contains_key(header::RETRY_AFTER),
        "429 without Retry-After"
    );
    assert_eq!(a.pings(), 2, "the refused ping reached no buyer");
    assert_eq!(ex.reserved("a"), 2, "the refused ping reserved nothing");
    assert_eq!(ex.quotes_open(), 2);
    // Counted by seller and limit (black-box round 199c: only the error code was).
    assert_eq!(
        ex.metric(
            "pingpost_seller_limited_total",
            &[("seller", "main"), ("limit", "quotes_open")]
        )
        .await,
        1.0
    );

    // Posting a quote frees a place.
    let sold = ex.client.post(&q1.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    // The sale is durable, so every earlier record is on disk: no auction ran for the
    // refused ping, and both quotes' holds were recorded.
    assert_eq!(
        ex.ledger_of("auction").len(),
        2,
        "an auction ran for the 429"
    );
    assert_eq!(ex.ledger_of("quote_reserved").len(), 2);
    let q3 = ex.client.ping("TX").await;
    assert_eq!(q3.status, PingStatus::Bid, "{q3:?}");
}

/// Black-box round 175b: pings past `server.quotes_open_max` were told "too many open
/// quotes" while no quote was open: a ping holds its quote's place while its auction
/// runs. The 503 says so, and the place comes back when the auction ends without a bid.
#[tokio::test]
async fn a_ping_in_its_auction_holds_a_place_of_the_server_s_open_quotes() {
    let a = ScriptedBidder::bidding(10.0);
    a.set(|s| {
        s.bid = None;
        s.ping_delay = Duration::from_millis(1_000);
    });
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.ping_timeout_ms(2_000))
        .with(|c| c.auction_deadline_ms = 3_000)
        .start_edited(under("server", "quotes_open_max = 1"))
        .await;
    let body = ping_body("TX");
    let (first, second) = tokio::join!(ex.client.post_json("/v1/ping", &body), async {
        // Once the first ping's auction has reached the buyer (which answers 1 s later).
        a.wait_pings(1).await;
        ex.client.post_json("/v1/ping", &body).await
    });
    assert_eq!(first.status, 200, "{first:?}");
    let e = second.assert_error(503, "overloaded");
    assert_eq!(
        e["message"],
        "the exchange holds its server.quotes_open_max open quotes, pings still in their auction counted as quotes; retry in a moment"
    );
    assert_eq!(ex.quotes_open(), 0, "no quote was open");
    let again = ex.client.ping("TX").await;
    assert_eq!(
        again.status,
        PingStatus::NoBid,
        "the place came back: {again:?}"
    );
}

/// Pings sent together by a seller one quote short of its limit each passed a look at the
/// count, ran an auction (every buyer pinged, the winner's cap held) and were refused only
/// at the quote (black-box round 18): a ping now takes its quote's place before its
/// auction, so exactly one runs. A ping whose auction ends without a bid gives the place
/// back.
#[tokio::test]
async fn pings_sent_together_cannot_run_past_the_open_quote_limit() {
    let a = ScriptedBidder::bidding(10.0);
    // Slow enough that the pings' auctions overlap.
    a.set(|s| s.ping_delay = Duration::from_millis(100));
    let (ab, _h) = serve("a", &a).await;
    // Bounds far above the 100 ms it takes, so that it bids on a loaded machine too.
    let ex = TestConfig::new()
        .buyer(ab.ping_timeout_ms(2_000))
        .with(|c| c.auction_deadline_ms = 3_000)
        .start_edited(under("sellers.main", "quotes_open_max = 2"))
        .await;
    let q1 = ex.client.ping("TX").await;
    assert_eq!(q1.status, PingStatus::Bid, "{q1:?}");

    let body = ping_body("TX");
    let replies =
        futures_util::future::join_all((0..20).map(|_| ex.client.post_json("/v1/ping", &body)))
            .await;
    let bids = replies.iter().filter(|r| r.status == 200).count();
    for r in replies.iter().filter(|r| r.status != 200) {
        r.assert_error(429, "rate_limited");
    }
    assert_eq!(bids, 1, "one place was left");
    assert_eq!(a.pings(), 2, "the refused pings reached no buyer");
    assert_eq!(ex.reserved("a"), 2, "the refused pings reserved nothing");
    assert_eq!(ex.quotes_open(), 2);

    // A sale makes every earlier record durable: two auctions, two holds, none released.
    let sold = ex.client.post(&q1.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(ex.ledger_of("auction").len(), 2);
    assert_eq!(ex.ledger_of("quote_reserved").len(), 2);
    assert!(ex.ledger_of("quote_released").is_empty());

    // An auction without a bid gives its place back: the buyer passes, then bids again,
    // and the freed place (the sale's) is there for it.
    a.set(|s| {
        s.bid = None;
        s.ping_delay = Duration::ZERO;
    });
    let none = ex.client.ping("TX").await;
    assert_eq!(none.status, PingStatus::NoBid, "{none:?}");
    a.set(|s| s.bid = Some(usd(10.0)));
    let again = ex.client.ping("TX").await;
    assert_eq!(again.status, PingStatus::Bid, "{again:?}");
    assert_eq!(ex.quotes_open(), 2);
    let full = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
    full.assert_error(429, "rate_limited");
}

/// Bids on every ping; takes `post_delay` to answer a post (its own behaviour).
#[derive(Debug)]
struct SlowPoster {
    price: f64,
    post_delay: Duration,
    posts: AtomicU64,
    /// The `tmax_ms` of the last post received (0: none, or none given).
    post_tmax_ms: AtomicU64,
}

impl Bidder for SlowPoster {
    async fn ping(&self, _ping: PingMessage) -> BidReply {
        BidReply::Bid {
            bid: usd(self.price),
            bid_id: None,
            expires_in_ms: None,
        }
    }

    async fn post(&self, post: PostMessage) -> PostReply {
        self.post_tmax_ms
            .store(post.tmax_ms.unwrap_or(0), Ordering::Relaxed);
        self.posts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.post_delay).await;
        PostReply {
            accepted: true,
            buyer_lead_id: None,
            reason: None,
        }
    }
}

/// A helper failing is the test failing.
#[allow(clippy::unwrap_used)]
async fn slow(
    id: &str,
    price: f64,
    post_delay: Duration,
) -> (TestBuyer, Arc<SlowPoster>, bidder_sdk::ServerHandle) {
    let probe = TestBuyer::new(id, SocketAddr::from(([127, 0, 0, 1], 0)));
    let bidder = Arc::new(SlowPoster {
        price,
        post_delay,
        posts: AtomicU64::new(0),
        post_tmax_ms: AtomicU64::new(0),
    });
    let (addr, handle) = spawn(
        bidder.clone(),
        ServeOptions::new(Secret::new(&probe.secret).unwrap()),
    )
    .await
    .unwrap();
    // Each buyer alone would be waited on for 1 s.
    (
        TestBuyer { addr, ..probe }.post_timeout_ms(1_000),
        bidder,
        handle,
    )
}

#[tokio::test]
async fn the_post_deadline_answers_unsold_within_it_and_keeps_only_the_late_answers_hold() {
    let (ab, a, _h1) = slow("a", 20.0, Duration::from_secs(5)).await;
    let (bb, b, _h2) = slow("b", 18.0, Duration::from_secs(5)).await;
    let ex = TestConfig::new()
        .buyer(ab)
        .buyer(bb)
        .start_edited(under("server", "post_deadline_ms = 300"))
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert_eq!(ex.reserved("a"), 1);
    let t0 = Instant::now();
    let answer = ex.client.post(&quote.ping_id, "TX").await;
    let took = t0.elapsed();
    assert_eq!(answer.status, PostStatus::Unsold, "{answer:?}");
    assert_eq!(
        answer.reason.as_deref(),
        Some("post_deadline"),
        "{answer:?}"
    );
    // Two buyers at 1 s each would take 2 s; the deadline ends the post at 300 ms.
    assert!(
        took < Duration::from_millis(1_000),
        "the post took {took:?}"
    );
    assert_eq!(a.posts.load(Ordering::Relaxed), 1);
    // The post told the buyer how long it would be waited for: not its 1 s
    // post_timeout_ms, but what was left of the post's 300 ms (black-box round 86a).
    let told = a.post_tmax_ms.load(Ordering::Relaxed);
    assert!((1..=300).contains(&told), "tmax_ms {told}");
    assert_eq!(
        b.posts.load(Ordering::Relaxed),
        0,
        "no time left for the fallback"
    );
    // a's answer is still awaited (it comes after 5 s, a late accept): its place stays
    // taken until then, so it can never be sold a lead past its caps meanwhile. b was
    // never reserved.
    assert_eq!((ex.reserved("a"), ex.reserved("b")), (1, 0));
    assert_eq!((ex.sold_today("a"), ex.sold_today("b")), (0, 0));
    let unsold = ex.ledger_of("unsold");
    assert_eq!(unsold[0]["reason"], "post_deadline");
    let released = ex.ledger_of("quote_released");
    assert_eq!(released[0]["reason"], "post_deadline", "{released:?}");
    // The first outcome again on a repeat; nothing delivered.
    let again = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(again.reason.as_deref(), Some("post_deadline"));
    assert_eq!(a.posts.load(Ordering::Relaxed), 1);
}

/// `server.late_posts_per_buyer_max`: a buyer that bids but hangs on its deliveries is
/// heard out for 10 s after each timeout (each holding a connection and a cap hold).
/// Once it has this many unanswered, the next post that names it skips it as `busy`
/// (nothing sent, its hold released as `buyer_busy`) and delivers to the next bid.
#[tokio::test]
async fn a_buyer_with_too_many_deliveries_unanswered_is_skipped_as_busy() {
    // Answers its posts after longer than the 10 s the exchange hears a late one out.
    let (hb, hangs, _h1) = slow("hangs", 20.0, Duration::from_secs(60)).await;
    let fair = ScriptedBidder::bidding(19.5);
    let (fb, _h2) = serve("fair", &fair).await;
    let ex = TestConfig::new()
        .buyer(hb.post_timeout_ms(100))
        .buyer(fb)
        .start_edited(|toml| {
            // Ranked by price, so the timeouts do not move the award to the other buyer.
            let toml = under("server", "late_posts_per_buyer_max = 2")(toml);
            under("verticals.auto_insurance.routing", "award = \"price\"")(toml)
        })
        .await;
    let busy = [("buyer", "hangs"), ("outcome", "busy")];

    for n in 1..=3u64 {
        let quote = ex.client.ping("TX").await;
        assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
        // Its quote's hold, beside one for each delivery still heard out.
        assert_eq!(ex.reserved("hangs"), n as u32, "post {n}: the winner won");
        let answer = ex.client.post(&quote.ping_id, "TX").await;
        assert_eq!(answer.status, PostStatus::Sold, "post {n}: {answer:?}");
        assert_eq!(answer.buyer.as_deref(), Some("Buyer fair"), "post {n}");
    }
    // The first two posts reached it and timed out; the third was not sent.
    assert_eq!(hangs.posts.load(Ordering::Relaxed), 2);
    assert_eq!(ex.metric("pingpost_buyer_posts_total", &busy).await, 1.0);
    // Two holds stay for the two deliveries still heard out; the busy one was released.
    assert_eq!(ex.reserved("hangs"), 2);
    let attempts = ex.ledger_of("post_attempt");
    let outcomes: Vec<&str> = attempts
        .iter()
        .filter(|a| a["buyer"] == "hangs")
        .map(|a| a["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(outcomes, ["timeout", "timeout", "busy"], "{attempts:?}");
    let released = ex.ledger_of("quote_released");
    assert_eq!(
        released
            .iter()
            .filter(|r| r["reason"] == "buyer_busy")
            .count(),
        1,
        "{released:?}"
    );
    let sent = ex.ledger_of("post_sent");
    assert_eq!(
        sent.iter().filter(|r| r["buyer"] == "hangs").count(),
        2,
        "nothing is recorded as sent to the busy buyer"
    );
}

#[test]
fn the_new_keys_load_with_their_defaults_and_refuse_bad_values() {
    let path = std::path::Path::new("/tmp/unused-ledger");
    let base = TestConfig::new().toml(path);
    let load = |text: &str| pingpost::config::load_str_with_env(text, &|_: &str| None);
    let c = load(&base).expect("the base config loads");
    assert_eq!(c.server.post_deadline_ms, 5_000);
    assert_eq!(c.server.late_posts_per_buyer_max, 256);
    assert_eq!(c.verticals[0].bid_max, None);
    assert!(c.sellers.iter().all(|s| s.quotes_open_max == 1_000));

    let edited = under("verticals.auto_insurance", "bid_max = 18.50")(base.clone());
    let edited = under(
        "server",
        "post_deadline_ms = 250\nlate_posts_per_buyer_max = 9",
    )(edited);
    let edited = under("sellers.main", "quotes_open_max = 3")(edited);
    let c = load(&edited).expect("edited config loads");
    assert_eq!(c.verticals[0].bid_max, Some(usd(18.5)));
    assert_eq!(c.server.post_deadline_ms, 250);
    assert_eq!(c.server.late_posts_per_buyer_max, 9);
    assert_eq!(c.sellers[0].quotes_open_max, 3);

    let bad = under("verticals.auto_insurance", "bid_max = 0")(base.clone());
    let bad = under(
        "server",
        "post_deadline_ms = 0\nlate_posts_per_buyer_max = 0",
    )(bad);
    let bad = under("sellers.main", "quotes_open_max = 0")(bad);
    let errors = load(&bad).expect_err("bad values are refused").to_string();
    for key in [
        "verticals.auto_insurance.bid_max",
        "server.post_deadline_ms",
        "server.late_posts_per_buyer_max",
        "sellers.main.quotes_open_max",
    ] {
        assert!(errors.contains(key), "no error for {key}:\n{errors}");
    }
}

#[tokio::test]
async fn a_fallback_whose_bid_holds_for_a_huge_time_is_not_taken_as_expired() {
    // The winner rejects; the fallback's bid says it holds for u64::MAX ms, which once
    // wrapped to -1 and made the fallback look expired.
    let winner = ScriptedBidder::bidding(20.0).scripted(|s| s.accept = false);
    let fallback = ScriptedBidder::bidding(18.0).scripted(|s| s.bid_expires_in_ms = Some(u64::MAX));
    let (wb, _h1) = serve("winner", &winner).await;
    let (fb, _h2) = serve("fallback", &fallback).await;
    let ex = TestConfig::new().buyer(wb).buyer(fb).start().await;
    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some("Buyer fallback"));
    assert_eq!(sold.price, quote.price, "the seller gets what was quoted");
    assert_eq!((ex.reserved("winner"), ex.reserved("fallback")), (0, 0));
    assert_eq!(ex.sold_today("fallback"), 1);
}

/// Black-box round 33 (low): a test lead's `post_attempt` and `unsold` records did not
/// say they were a test lead's, so finance had to join them to the auction to leave them
/// out. They carry `"test": true` now; a real lead's carry no `test` at all.
#[tokio::test]
async fn a_test_lead_s_post_attempts_and_unsold_say_test_and_a_real_lead_s_do_not() {
    let a = ScriptedBidder::bidding(10.0).scripted(|s| s.accept = false);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;

    let mut ping = ping_body("TX");
    ping["test"] = serde_json::json!(true);
    let test_q = ex.client.post_json("/v1/ping", &ping).await.ping_answer();
    assert_eq!(test_q.status, PingStatus::Bid, "{test_q:?}");
    let real_q = ex.client.ping("TX").await;
    assert_eq!(real_q.status, PingStatus::Bid, "{real_q:?}");
    for q in [&test_q, &real_q] {
        let r = ex.client.post(&q.ping_id, "TX").await;
        assert_eq!(r.status, PostStatus::Unsold, "{r:?}");
    }
    ex.state.ledger.flush().await.unwrap();
    let lead_of = |kind: &str, ping_id: &str| -> Vec<serde_json::Value> {
        let auction_id = ex
            .ledger_of("auction")
            .into_iter()
            .find(|r| r["ping_id"] == ping_id)
            .map(|r| r["auction_id"].clone())
            .unwrap();
        ex.ledger_of(kind)
            .into_iter()
            .filter(|r| r["auction_id"] == auction_id)
            .collect()
    };
    for kind in ["post_attempt", "unsold"] {
        let test = lead_of(kind, &test_q.ping_id);
        assert_eq!(test.len(), 1, "{kind}: {test:?}");
        assert_eq!(test[0]["test"], true, "{kind}: {}", test[0]);
        let real = lead_of(kind, &real_q.ping_id);
        assert_eq!(real.len(), 1, "{kind}: {real:?}");
        assert!(real[0].get("test").is_none(), "{kind}: {}", real[0]);
    }
}

/// Black-box round 161b: one seller's bursts (256 pings at once) timed a shared buyer
/// out, its breaker opened, and every seller lost it for 5 s. With
/// `buyers.ID.pings_in_flight_max`, a buyer holding that many pings in flight (late ones
/// still being heard out included) is skipped, not pinged: counted as `skipped_busy`,
/// named in the record's `pings_in_flight_full`, its breaker untouched; its place comes
/// back when the call ends, and it is pinged again.
#[tokio::test]
async fn a_buyer_holding_its_pings_in_flight_is_skipped_until_one_ends() {
    let slow = ScriptedBidder::bidding(20.0);
    // Its own behaviour: it answers after a second (past its 150 ms bound, heard out
    // late meanwhile).
    slow.set(|s| s.ping_delay = Duration::from_millis(1_000));
    let fast = ScriptedBidder::bidding(10.0);
    let (sb, _h1) = serve("slow", &slow).await;
    let (fb, _h2) = serve("fast", &fast).await;
    let ex = TestConfig::new()
        .buyer(sb)
        .buyer(fb)
        .start_edited(under("buyers.slow", "pings_in_flight_max = 1"))
        .await;
    let first = tokio::spawn({
        let client = ex.client.clone();
        async move { client.ping("TX").await }
    });
    slow.wait_pings(1).await;
    // While that ping is in flight the slow buyer is skipped; the fast one wins.
    let second = ex.client.ping("TX").await;
    assert_eq!(second.status, PingStatus::Bid, "{second:?}");
    assert_eq!(second.price, Some(seller_price(usd(10.0))), "{second:?}");
    assert_eq!(slow.pings(), 1, "the busy buyer was not pinged");
    let busy = [("buyer", "slow"), ("outcome", "skipped_busy")];
    assert_eq!(ex.metric("pingpost_buyer_pings_total", &busy).await, 1.0);
    ex.state.ledger.flush().await.unwrap();
    let record = ex
        .ledger_of("auction")
        .into_iter()
        .find(|r| r["pings_in_flight_full"]["total"] == 1)
        .expect("the second auction's record names the busy buyer");
    assert_eq!(record["pings_in_flight_full"]["first"][0], "slow");
    let _ = first.await.unwrap();
    // The late call ends with the buyer's answer: its place comes back.
    let key = ex.state.runtime.load().config.buyers[0].key;
    let deadline = Instant::now() + EVENT_WAIT_MAX;
    while ex.state.pings_in_flight.of(key) > 0 {
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::task::yield_now().await;
    }
    slow.set(|s| s.ping_delay = Duration::ZERO);
    let third = ex.client.ping("TX").await;
    assert_eq!(third.price, Some(seller_price(usd(20.0))), "{third:?}");
    assert_eq!(slow.pings(), 2);
    // Being busy taught the breaker nothing: one timeout (the first auction's), no skip.
    let skipped = [("buyer", "slow"), ("outcome", "skipped_breaker")];
    assert_eq!(ex.metric("pingpost_buyer_pings_total", &skipped).await, 0.0);
}

/// Black-box round 163a: pings were counted only for a buyer with a limit, so a reload
/// that set `pings_in_flight_max` in the middle of a burst found none in flight and let
/// the burst and as many more through. Every buyer's pings are counted: the limit a
/// reload sets holds at once.
#[tokio::test]
async fn a_limit_a_reload_sets_counts_the_pings_already_in_flight() {
    let slow = ScriptedBidder::bidding(20.0);
    slow.set(|s| s.ping_delay = Duration::from_millis(1_000));
    let fast = ScriptedBidder::bidding(10.0);
    let (sb, _h1) = serve("slow", &slow).await;
    let (fb, _h2) = serve("fast", &fast).await;
    let ex = TestConfig::new().buyer(sb).buyer(fb).start().await;
    let first = tokio::spawn({
        let client = ex.client.clone();
        async move { client.ping("TX").await }
    });
    slow.wait_pings(1).await;
    // The limit arrives while that ping is in flight.
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    std::fs::write(
        &ex.config_path,
        under("buyers.slow", "pings_in_flight_max = 1")(text),
    )
    .unwrap();
    let r = ex.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let second = ex.client.ping("TX").await;
    assert_eq!(second.price, Some(seller_price(usd(10.0))), "{second:?}");
    assert_eq!(
        slow.pings(),
        1,
        "the limit counted the ping already in flight"
    );
    let busy = [("buyer", "slow"), ("outcome", "skipped_busy")];
    assert_eq!(ex.metric("pingpost_buyer_pings_total", &busy).await, 1.0);
    let _ = first.await.unwrap();
}
