//! End-to-end selling: ping, bid, post, sold; direct posts; no-bid reasons; fallback;
//! expiry; mismatch; idempotency; caps under concurrency; HTTP/2 buyers. Real sockets on
//! 127.0.0.1:0, real bidders from the bidder SDK, the configuration loaded from TOML.

// Helpers outside `#[test]` bodies panic on purpose: a helper failing is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use http::Version;
use pingpost::server::SWEEP_INTERVAL_MS;
use proto::seller::{NoBidReason, PingStatus, PostStatus};
use serde_json::{json, Value};

/// Lets virtual time run past `ttl_ms` (plus a margin) and the sweeper run, then goes back
/// to real time. Only call with no request in flight: paused time and sockets do not mix.
async fn jump_past(ttl_ms: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(ttl_ms + 500)).await;
    // Virtual: returns at once, after the sweeper's tick has run.
    tokio::time::sleep(Duration::from_millis(SWEEP_INTERVAL_MS * 3)).await;
    tokio::time::resume();
}

fn keys(lead: &std::collections::BTreeMap<String, Value>) -> BTreeSet<String> {
    lead.keys().cloned().collect()
}

fn ping_keys() -> BTreeSet<String> {
    ["state", "zip", "age", "credit"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[tokio::test]
async fn ping_bid_post_sold_and_the_sale_is_on_disk_before_the_answer() {
    let high = ScriptedBidder::bidding(20.0);
    let low = ScriptedBidder::bidding(12.0);
    let passer = ScriptedBidder::passing();
    let (hb, _h1) = serve("high", &high).await;
    let (lb, _h2) = serve("low", &low).await;
    let (pb, _h3) = serve("passer", &passer).await;
    let ex = TestConfig::new()
        .buyer(hb.clone())
        .buyer(lb)
        .buyer(pb)
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert!(quote.ping_id.starts_with("pg_"), "{quote:?}");
    assert_eq!(
        quote.price,
        Some(seller_price(usd(20.0))),
        "the seller gets 80 % of the best bid"
    );
    assert_eq!(quote.currency.as_deref(), Some("USD"));
    assert_eq!(quote.reason, None);
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(quote.expires_at.as_deref().expect("expires_at"))
            .expect("RFC 3339");
    let now_ms = chrono::Utc::now().timestamp_millis();
    assert!(
        expires_at.timestamp_millis() > now_ms,
        "a fresh quote expires in the future: {expires_at}"
    );
    assert!(
        expires_at.timestamp_millis() <= now_ms + 61_000,
        "quote_ttl_ms is 60 s: {expires_at}"
    );
    assert_eq!(
        ex.reserved("high"),
        1,
        "a firm quote reserves the winner's cap"
    );
    assert_eq!(ex.quotes_open(), 1);

    let sold = ex.client.post(&quote.ping_id, "TX").await;
    // Read the ledger right away: `sold` is answered only once the sale is durable.
    let ledger_text = pingpost::ledger::segments::read_all(&ex.ledger_path).unwrap();
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.price, quote.price, "the quoted price holds");
    assert_eq!(sold.buyer.as_deref(), Some(hb.name().as_str()));
    let lead_id = sold.lead_id.clone().expect("a lead_id");
    assert!(lead_id.starts_with("ld_"), "{sold:?}");

    let sale_lines: Vec<&str> = ledger_text
        .lines()
        .filter(|l| l.contains(r#""type":"sale""#))
        .collect();
    assert_eq!(
        sale_lines.len(),
        1,
        "one sale line on disk when `sold` arrives:\n{ledger_text}"
    );
    let sale: Value = serde_json::from_str(sale_lines[0]).unwrap();
    assert_eq!(sale["lead_id"], lead_id.as_str());
    assert_eq!(sale["ping_id"], quote.ping_id.as_str());
    assert_eq!(sale["buyer"], "high");
    assert_eq!(sale["seller"], "main");
    assert_eq!(
        sale["bid_micros"].as_i64(),
        Some(20_000_000),
        "integer micros: {sale}"
    );
    assert_eq!(
        sale["seller_price_micros"].as_i64(),
        Some(16_000_000),
        "integer micros: {sale}"
    );
    assert_eq!(
        sale["margin_micros"].as_i64(),
        Some(4_000_000),
        "integer micros: {sale}"
    );
    for pii in ["Ana", "Diaz", "+18175550123", "ana@example.com"] {
        assert!(
            !ledger_text.contains(pii),
            "the ledger holds PII ({pii}):\n{ledger_text}"
        );
    }

    // The winner got exactly one post, with the full lead; nobody else got any.
    assert_eq!((high.posts(), low.posts(), passer.posts()), (1, 0, 0));
    let post = &high.post_log()[0];
    let full = full_lead("TX");
    for (k, v) in full.as_object().unwrap() {
        assert_eq!(
            post.lead.get(k),
            Some(v),
            "post lead field {k}: {:?}",
            post.lead
        );
    }
    assert_eq!(post.price, usd(20.0), "the buyer pays its own bid");
    // How long its answer is waited for: its post_timeout_ms, the post's deadline being
    // further (black-box round 86a: a post carried no deadline).
    assert_eq!(post.tmax_ms, Some(1_000));
    assert_eq!(post.vertical, VERTICAL);
    assert_eq!(
        post.lead_id.as_deref(),
        Some(lead_id.as_str()),
        "the buyer is told the lead id it reports dispositions by"
    );
    assert_eq!(
        post.consent.get("jornaya_leadid").map(String::as_str),
        Some("LL-1")
    );

    // Every buyer was pinged once, with the PII-free lead only.
    for b in [&high, &low, &passer] {
        assert_eq!(b.pings(), 1);
        b.assert_no_pii_in_pings();
        assert_eq!(keys(&b.ping_log()[0].lead), ping_keys());
    }
    assert_eq!(ex.reserved("high"), 0);
    assert_eq!(ex.sold_today("high"), 1);
    assert_eq!(ex.quotes_open(), 0);
}

#[tokio::test]
async fn direct_post_sells_and_buyers_are_pinged_without_pii() {
    let a = ScriptedBidder::bidding(15.0);
    let b = ScriptedBidder::bidding(11.0);
    let (ab, _h1) = serve("a", &a).await;
    let (bb, _h2) = serve("b", &b).await;
    let ex = TestConfig::new().buyer(ab.clone()).buyer(bb).start().await;

    let sold = ex.client.direct("TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.price, Some(seller_price(usd(15.0))));
    assert_eq!(sold.buyer.as_deref(), Some(ab.name().as_str()));
    let sales = ex.ledger_of("sale");
    assert_eq!(sales.len(), 1, "{sales:?}");
    assert_eq!(sales[0]["lead_id"], sold.lead_id.clone().unwrap().as_str());
    let auctions = ex.ledger_of("auction");
    assert_eq!(auctions.len(), 1);
    assert_eq!(auctions[0]["direct"], true);

    for bidder in [&a, &b] {
        assert_eq!(bidder.pings(), 1);
        bidder.assert_no_pii_in_pings();
        assert_eq!(keys(&bidder.ping_log()[0].lead), ping_keys());
    }
    assert_eq!((a.posts(), b.posts()), (1, 0));
    assert_eq!(
        a.post_log()[0].lead.get("phone"),
        Some(&json!("+18175550123"))
    );
    assert_eq!(ex.reserved("a"), 0);
    assert_eq!(ex.sold_today("a"), 1);
}

#[tokio::test]
async fn no_bid_reasons_no_eligible_buyers_no_bids_below_reserve() {
    let passer = ScriptedBidder::passing();
    let cheap = ScriptedBidder::bidding(5.0);
    let (pb, _h1) = serve("passer", &passer).await;
    let (cb, _h2) = serve("cheap", &cheap).await;
    let ex = TestConfig::new().buyer(pb).buyer(cb).start().await;

    // Both buyers take TX and OK only.
    let a = ex.client.ping("CA").await;
    assert_eq!(
        (a.status, a.reason),
        (PingStatus::NoBid, Some(NoBidReason::NoEligibleBuyers)),
        "{a:?}"
    );
    assert_eq!(a.price, None);
    assert_eq!(
        (passer.pings(), cheap.pings()),
        (0, 0),
        "ineligible buyers are not pinged"
    );
    let d = ex.client.direct("CA").await;
    assert_eq!(d.status, PostStatus::Unsold, "{d:?}");
    assert_eq!(d.reason.as_deref(), Some("no_eligible_buyers"));

    // A 5.00 bid is 4.00 to the seller, under its min_price of 10.
    let mut body = ping_body("TX");
    body["min_price"] = json!(10.0);
    let a = ex.client.post_json("/v1/ping", &body).await.ping_answer();
    assert_eq!(
        (a.status, a.reason),
        (PingStatus::NoBid, Some(NoBidReason::BelowReserve)),
        "{a:?}"
    );
    assert_eq!((passer.pings(), cheap.pings()), (1, 1));

    // Without min_price the same bid sells...
    let a = ex.client.ping("TX").await;
    assert_eq!(a.status, PingStatus::Bid, "{a:?}");
    assert_eq!(a.price, Some(usd(4.0)));

    // ...and when every buyer passes, it is no_bids.
    cheap.set(|s| s.bid = None);
    let a = ex.client.ping("OK").await;
    assert_eq!(
        (a.status, a.reason),
        (PingStatus::NoBid, Some(NoBidReason::NoBids)),
        "{a:?}"
    );
    assert_eq!((passer.pings(), cheap.pings()), (3, 3));
    // A no-bid ping gave no quote: its id cannot be posted, and the answer says why
    // that may be (black-box round 130a: a bare "unknown ping_id").
    let r = ex
        .client
        .post_json("/v1/post", &post_body(&a.ping_id, "OK"))
        .await;
    let e = r.assert_error(404, "not_found");
    assert!(
        e["message"].as_str().unwrap().contains("answered no_bid"),
        "{e}"
    );

    assert_eq!(ex.quotes_open(), 1, "only the one bid holds a quote");
    assert_eq!(ex.reserved("cheap"), 1);
    assert_eq!(ex.reserved("passer"), 0);
}

#[tokio::test]
async fn the_post_falls_back_to_the_runner_up_when_the_winner_rejects() {
    // Ranked a (20), b (18), c (17). The seller is quoted 16.00; both fallbacks cover it.
    let a = ScriptedBidder::bidding(20.0).scripted(|s| s.accept = false);
    let b = ScriptedBidder::bidding(18.0);
    let c = ScriptedBidder::bidding(17.0);
    let (ab, _h1) = serve("a", &a).await;
    let (bb, _h2) = serve("b", &b).await;
    let (cb, _h3) = serve("c", &c).await;
    let ex = TestConfig::new()
        .buyer(ab)
        .buyer(bb.clone())
        .buyer(cb)
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.price, Some(usd(16.0)), "{quote:?}");
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(
        (a.posts(), b.posts(), c.posts()),
        (1, 1, 0),
        "the winner, then the runner-up, and nobody after a sale ({sold:?})"
    );
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some(bb.name().as_str()), "{sold:?}");
    assert_eq!(
        sold.price,
        Some(usd(16.0)),
        "the quoted price holds on fallback"
    );

    let sales = ex.ledger_of("sale");
    assert_eq!(sales.len(), 1);
    assert_eq!(sales[0]["buyer"], "b");
    assert_eq!(sales[0]["bid_micros"].as_i64(), Some(18_000_000));
    assert_eq!(sales[0]["seller_price_micros"].as_i64(), Some(16_000_000));
    for id in ["a", "b", "c"] {
        assert_eq!(ex.reserved(id), 0, "no reservation left for {id}");
    }
    assert_eq!(
        (ex.sold_today("a"), ex.sold_today("b"), ex.sold_today("c")),
        (0, 1, 0)
    );
}

/// A bid whose own seller price is under the reserve (the seller's `min_price`) never
/// wins, but it covers the price quoted for the winner, so it is a fallback: the seller
/// is paid the quoted price whoever takes the lead (black-box round 130b: after the
/// winner rejected, the lead went `unsold`, `all_buyers_rejected`, with a covering bid
/// never tried). A lower bid that does not cover the quote is still no fallback.
#[tokio::test]
async fn a_bid_under_the_reserve_that_covers_the_quote_takes_the_post_on_fallback() {
    // At 80 %: a (10.00) is quoted 8.00; b (9.00) would pay the seller 7.20, c (7.99)
    // 6.39. min_price 8.00: only a can win; b covers 8.00, c does not.
    let a = ScriptedBidder::bidding(10.0).scripted(|s| s.accept = false);
    let b = ScriptedBidder::bidding(9.0);
    let c = ScriptedBidder::bidding(7.99);
    let (ab, _h1) = serve("a", &a).await;
    let (bb, _h2) = serve("b", &b).await;
    let (cb, _h3) = serve("c", &c).await;
    let ex = TestConfig::new()
        .buyer(ab)
        .buyer(bb.clone())
        .buyer(cb)
        .start()
        .await;
    let mut body = ping_body("TX");
    body["min_price"] = serde_json::json!(8);
    let quote = ex.client.post_json("/v1/ping", &body).await.ping_answer();
    assert_eq!(quote.price, Some(usd(8.0)), "{quote:?}");
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some(bb.name().as_str()), "{sold:?}");
    assert_eq!(sold.price, Some(usd(8.0)), "the quoted price holds");
    assert_eq!((a.posts(), b.posts(), c.posts()), (1, 1, 0));
    let sales = ex.ledger_of("sale");
    assert_eq!(sales.len(), 1);
    assert_eq!(sales[0]["buyer"], "b");
    assert_eq!(sales[0]["bid_micros"].as_i64(), Some(9_000_000));
    assert_eq!(sales[0]["seller_price_micros"].as_i64(), Some(8_000_000));
    assert_eq!(sales[0]["margin_micros"].as_i64(), Some(1_000_000));
    // The auction still says b was under the reserve (it could not win).
    let auction = ex.ledger_of("auction").pop().unwrap();
    assert_eq!(auction["winner"], "a", "{auction}");
    assert_eq!(auction["reserve_micros"].as_i64(), Some(8_000_000));
    // `ledger replay` says so, and that c is none.
    let text = ex.replay(auction["auction_id"].as_str().unwrap(), true);
    let line = |buyer: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{buyer}: ")))
            .unwrap_or_else(|| panic!("{buyer}: {text}"))
            .to_string()
    };
    assert!(
        line("b").ends_with("below the reserve 8.00 USD; a fallback after the ranked ones: its bid covers the 8.00 USD quoted to the seller"),
        "{text}"
    );
    assert!(
        line("c").ends_with("below the reserve 8.00 USD; no fallback either: its bid is under the 8.00 USD quoted to the seller"),
        "{text}"
    );
    for id in ["a", "b", "c"] {
        assert_eq!(ex.reserved(id), 0, "no reservation left for {id}");
    }

    // Winner and fallback both reject: c (under the quote) is never tried.
    b.set(|s| s.accept = false);
    let quote = ex.client.post_json("/v1/ping", &body).await.ping_answer();
    let unsold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(unsold.status, PostStatus::Unsold, "{unsold:?}");
    assert_eq!((a.posts(), b.posts(), c.posts()), (2, 2, 0));
}

/// A winner whose post URL cannot be reached (nothing listens there) is never sent the
/// lead, so its attempt leaves no `post_sent`: the ledger says `error`, `not_connected`,
/// and the runner-up buys. Black-box round 92a: the `post_sent` was written before the
/// connection was tried, so when the ledger failed meanwhile the delivery that never left
/// was "outcome unknown" after the restart, counted in the buyer's caps.
#[tokio::test]
async fn a_winner_that_cannot_be_reached_is_sent_nothing_and_leaves_no_delivery() {
    let a = ScriptedBidder::bidding(20.0);
    let b = ScriptedBidder::bidding(18.0);
    let (ab, _h1) = serve("a", &a).await;
    let (bb, _h2) = serve("b", &b).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let winner_post = format!("post_url = \"http://{}/post\"", ab.addr);
    let ex = TestConfig::new()
        .buyer(ab)
        .buyer(bb.clone())
        .start_edited(|t| {
            assert!(t.contains(&winner_post), "{t}");
            t.replacen(
                &winner_post,
                &format!("post_url = \"http://{closed}/post\""),
                1,
            )
        })
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some(bb.name().as_str()), "{sold:?}");
    assert_eq!((a.posts(), b.posts()), (0, 1));

    let sent: Vec<(String, i64)> = ex
        .ledger_of("post_sent")
        .iter()
        .map(|r| {
            (
                r["buyer"].as_str().unwrap().to_string(),
                r["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [("b".to_string(), 1)],
        "only the delivery that left is recorded as sent"
    );
    let attempts = ex.ledger_of("post_attempt");
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        (
            attempts[0]["buyer"].as_str(),
            attempts[0]["attempt"].as_i64(),
            attempts[0]["outcome"].as_str(),
            attempts[0]["reason"].as_str()
        ),
        (Some("a"), Some(0), Some("error"), Some("not_connected")),
        "{attempts:?}"
    );
    for id in ["a", "b"] {
        assert_eq!(ex.reserved(id), 0, "no reservation left for {id}");
    }
    assert_eq!((ex.sold_today("a"), ex.sold_today("b")), (0, 1));
}

#[tokio::test]
async fn a_high_bid_that_expires_before_the_seller_could_post_does_not_win_the_quote() {
    // Black-box round 26 (high): a buyer bidding high with a bid that held 150 ms won
    // every quote, which then expired before the seller posted; nothing sold, at no cost
    // to that buyer. A ping's bid must now hold `server.quote_min_ms` (10 s by default).
    let short = ScriptedBidder::bidding(50.0).scripted(|s| s.bid_expires_in_ms = Some(150));
    let honest = ScriptedBidder::bidding(20.0);
    let (sb, _h1) = serve("short", &short).await;
    let (hb, _h2) = serve("honest", &honest).await;
    let ex = TestConfig::new()
        .buyer(sb.clone())
        .buyer(hb.clone())
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert_eq!(
        quote.price,
        Some(usd(16.0)),
        "the honest bid's price: {quote:?}"
    );
    assert_eq!((short.pings(), honest.pings()), (1, 1));
    assert_eq!((ex.reserved("short"), ex.reserved("honest")), (0, 1));
    ex.state.ledger.flush().await.unwrap();
    let auctions = ex.ledger_of("auction");
    assert_eq!(auctions[0]["winner"], "honest", "{auctions:?}");
    let line = auctions[0]["buyers"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["buyer"] == "short"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(line["outcome"], "bid_expired", "{line}");
    assert_eq!(line["detail"], "quote_min_ms", "{line}");
    assert_eq!(line["bid_micros"].as_i64(), Some(50_000_000), "{line}");
    // `ledger replay` re-derives the award and says why the high bid lost.
    let cfg_now = ex.state.runtime.load().config.clone();
    let id = auctions[0]["auction_id"].as_str().unwrap_or_default();
    let (a, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
    let rep = pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now));
    assert!(!rep.mismatch, "{}", rep.text);
    assert!(
        rep.text.contains("held for less than server.quote_min_ms"),
        "{}",
        rep.text
    );

    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some(hb.name().as_str()));
    assert_eq!(short.posts(), 0, "the short bid is no fallback either");

    // A direct post delivers at once: the same short bid wins it.
    let direct = ex
        .client
        .post_json("/v1/leads", &direct_body("TX"))
        .await
        .post_answer();
    assert_eq!(direct.status, PostStatus::Sold, "{direct:?}");
    assert_eq!(direct.buyer.as_deref(), Some(sb.name().as_str()));
    assert_eq!(short.posts(), 1);

    // Alone, the short bid leaves the ping with no bid; replay does not blame the reserve
    // (black-box round 27).
    honest.set(|s| s.bid = None);
    let none = ex.client.ping("TX").await;
    assert_eq!(none.status, PingStatus::NoBid, "{none:?}");
    assert_eq!(none.reason, Some(NoBidReason::NoBids), "{none:?}");
    ex.state.ledger.flush().await.unwrap();
    let auctions = ex.ledger_of("auction");
    let last = auctions.last().cloned().unwrap_or_default();
    let id = last["auction_id"].as_str().unwrap_or_default();
    let (a, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
    let rep = pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now));
    assert!(!rep.mismatch, "{}", rep.text);
    assert!(
        rep.text.contains("no bid stood at the award"),
        "{}",
        rep.text
    );
    assert!(!rep.text.contains("reserve, so none"), "{}", rep.text);
}

#[tokio::test]
async fn every_buyer_rejecting_is_unsold_and_releases_every_cap() {
    let a = ScriptedBidder::bidding(20.0).scripted(|s| s.accept = false);
    let b = ScriptedBidder::bidding(18.0).scripted(|s| s.accept = false);
    let (ab, _h1) = serve("a", &a).await;
    let (bb, _h2) = serve("b", &b).await;
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(5))
        .buyer(bb.caps_daily(5))
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid);
    assert_eq!(ex.reserved("a"), 1);
    let answer = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(answer.status, PostStatus::Unsold, "{answer:?}");
    assert_eq!(answer.reason.as_deref(), Some("all_buyers_rejected"));
    for id in ["a", "b"] {
        assert_eq!(ex.reserved(id), 0, "{id}'s reservation is released");
        assert_eq!(ex.sold_today(id), 0);
    }
    assert!(ex.ledger_of("sale").is_empty());
    assert_eq!(ex.ledger_of("unsold").len(), 1);
    assert_eq!(
        (a.posts(), b.posts()),
        (1, 1),
        "both buyers were offered the lead"
    );

    // The outcome is final: posting again answers it again and delivers nothing.
    let again = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(again, answer);
    assert_eq!((a.posts(), b.posts()), (1, 1));
}

/// `pingpost_posts_total` counts every post answered `200` as what it answered: the
/// first post of a quote the sweeper had already expired (it was answered `expired` but
/// not counted: only a post that found the quote still open was), and a repeated post of
/// a finished `ping_id`, answered again from the finished posts.
#[tokio::test]
async fn every_post_answered_200_is_counted_by_the_status_it_answered() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    // Long enough that the auctions before the jump all run within it on a loaded machine.
    let ttl_ms = 10_000;
    let ex = TestConfig::new()
        .buyer(ab)
        .with(|c| c.quote_ttl_ms = ttl_ms)
        .start()
        .await;
    let count = |text: &str, status: &str| {
        metric_value(text, "pingpost_posts_total", &[("status", status)])
    };

    let stale = ex.client.ping("TX").await;
    assert_eq!(stale.status, PingStatus::Bid, "{stale:?}");
    jump_past(ttl_ms).await;
    assert_eq!(ex.quotes_open(), 0, "the sweeper expired the quote");
    for n in 1..=2 {
        let answer = ex.client.post(&stale.ping_id, "TX").await;
        assert_eq!(answer.status, PostStatus::Expired, "{answer:?}");
        let text = ex.metrics().await;
        assert_eq!(count(&text, "expired"), f64::from(n), "post {n}: {text}");
    }

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(count(&ex.metrics().await, "sold"), 1.0);
    let again = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(again, sold, "the first outcome again");
    assert_eq!(a.posts(), 1, "delivered once");
    let text = ex.metrics().await;
    assert_eq!(count(&text, "sold"), 2.0, "{text}");
    assert_eq!(count(&text, "expired"), 2.0, "{text}");
    assert_eq!(ex.ledger_of("sale").len(), 1, "one sale all the same");
}

#[tokio::test]
async fn an_expired_quote_is_refused_and_its_reservation_released() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    // Long enough that the auctions before the jump all run within it on a loaded machine.
    let ttl_ms = 10_000;
    let ex = TestConfig::new()
        .buyer(ab)
        .with(|c| c.quote_ttl_ms = ttl_ms)
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid);
    assert_eq!(ex.reserved("a"), 1);

    jump_past(ttl_ms).await;
    assert_eq!(
        ex.reserved("a"),
        0,
        "the sweeper released the expired quote's reservation"
    );
    assert_eq!(ex.quotes_open(), 0);

    let answer = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(answer.status, PostStatus::Expired, "{answer:?}");
    assert_eq!(a.posts(), 0, "nothing is delivered for an expired quote");
    assert_eq!(ex.reserved("a"), 0);
    assert_eq!(ex.sold_today("a"), 0);
    assert!(ex.ledger_of("sale").is_empty());
}

#[tokio::test]
async fn a_post_with_changed_ping_fields_is_a_mismatch_and_delivers_nothing() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid);
    let mut body = post_body(&quote.ping_id, "TX");
    body["lead"]["zip"] = json!("76181");
    let answer = ex.client.post_json("/v1/post", &body).await.post_answer();
    assert_eq!(answer.status, PostStatus::Mismatch, "{answer:?}");
    assert_eq!(answer.changed_fields, ["zip"]);
    assert_eq!(a.posts(), 0, "nothing delivered");
    assert_eq!(ex.reserved("a"), 0, "the reservation is released");

    // The ping was posted once; the honest lead now gets the first outcome again.
    let again = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(again.status, PostStatus::Mismatch, "{again:?}");
    assert_eq!(a.posts(), 0);
    assert!(ex.ledger_of("sale").is_empty());
}

/// Black-box round 141a: a reload that made `age` no ping field let an open quote's post
/// change it (sold with 43 on a ping of 42), or leave it out. A post repeats the ping
/// fields of the schema its quote was made under, matched by name; a field that became a
/// ping field after the ping was not part of it.
#[tokio::test]
async fn a_post_repeats_the_ping_fields_its_quote_was_made_under_across_a_reload() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let q = ex.client.ping("TX").await;
        assert_eq!(q.status, PingStatus::Bid, "{q:?}");
        ids.push(q.ping_id);
    }
    // `age` no ping field any more, and the fields reordered; `years_insured` a new ping
    // field.
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    let age = "age = { type = \"integer\", min = 18, max = 100, ping = true }\n";
    assert!(text.contains(age), "{text}");
    let edited = text
        .replacen(age, "", 1)
        .replacen(
            "[verticals.auto_insurance.fields]\n",
            "[verticals.auto_insurance.fields]\nage = { type = \"integer\", min = 18, max = 100 }\n",
            1,
        )
        .replacen(
            "[verticals.auto_insurance.fields]\n",
            "[verticals.auto_insurance.fields]\nyears_insured = { type = \"integer\", ping = true }\n",
            1,
        );
    assert_ne!(edited, text);
    std::fs::write(&ex.config_path, &edited).unwrap();
    let r = ex.reload().await;
    assert_eq!(r.status, 200, "{}", r.text());
    let post = |id: &str, edit: &dyn Fn(&mut Value)| {
        let mut body = post_body(id, "TX");
        edit(&mut body);
        let client = &ex.client;
        async move { client.post_json("/v1/post", &body).await }
    };
    let changed = post(&ids[0], &|b| b["lead"]["age"] = json!(43))
        .await
        .post_answer();
    assert_eq!(changed.status, PostStatus::Mismatch, "{changed:?}");
    assert_eq!(changed.changed_fields, ["age"]);
    let left_out = post(&ids[1], &|b| {
        b["lead"].as_object_mut().unwrap().remove("age");
    })
    .await
    .post_answer();
    assert_eq!(left_out.status, PostStatus::Mismatch, "{left_out:?}");
    assert_eq!(left_out.changed_fields, ["age"]);
    // Another zip is still a change, found by name in the reordered schema.
    let zip = post(&ids[2], &|b| b["lead"]["zip"] = json!("76181"))
        .await
        .post_answer();
    assert_eq!(zip.status, PostStatus::Mismatch, "{zip:?}");
    assert_eq!(zip.changed_fields, ["zip"]);
    // The same ping fields: sold, `years_insured` (a ping field only since) not compared.
    let same = post(&ids[3], &|b| b["lead"]["years_insured"] = json!(7))
        .await
        .post_answer();
    assert_eq!(same.status, PostStatus::Sold, "{same:?}");
    assert_eq!(a.posts(), 1, "only the honest post was delivered");
}

#[tokio::test]
async fn repeated_posts_and_idempotency_keys_never_sell_twice() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;
    let c = &ex.client;

    // The same ping_id posted twice: the first outcome, one delivery.
    let quote = c.ping("TX").await;
    let first = c.post(&quote.ping_id, "TX").await;
    assert_eq!(first.status, PostStatus::Sold, "{first:?}");
    let second = c.post(&quote.ping_id, "TX").await;
    assert_eq!(second, first, "a repeated post returns the first outcome");
    assert_eq!(a.posts(), 1);
    assert_eq!(ex.ledger_of("sale").len(), 1);

    // Idempotency-Key on a ping: the stored answer, no second auction.
    let key = [("Idempotency-Key", "ping-key-1")];
    let r1 = c
        .post_json_with("/v1/ping", SELLER_KEY, &key, &ping_body("TX"))
        .await;
    let r2 = c
        .post_json_with("/v1/ping", SELLER_KEY, &key, &ping_body("TX"))
        .await;
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(
        (r2.status, &r2.body),
        (200, &r1.body),
        "the same key and body replay the answer"
    );
    assert_eq!(a.pings(), 2, "the replay ran no auction");
    assert_eq!(ex.quotes_open(), 1);
    // The same key with another body: 409, and nothing happens.
    let r3 = c
        .post_json_with("/v1/ping", SELLER_KEY, &key, &ping_body("OK"))
        .await;
    r3.assert_error(409, "conflict");
    assert_eq!(a.pings(), 2);
    assert_eq!(ex.quotes_open(), 1);

    // Idempotency-Key on a post.
    let ping_id = r1.ping_answer().ping_id;
    let key = [("Idempotency-Key", "post-key-1")];
    let p1 = c
        .post_json_with("/v1/post", SELLER_KEY, &key, &post_body(&ping_id, "TX"))
        .await;
    let p2 = c
        .post_json_with("/v1/post", SELLER_KEY, &key, &post_body(&ping_id, "TX"))
        .await;
    assert_eq!(p1.post_answer().status, PostStatus::Sold);
    assert_eq!(p2.body, p1.body);
    let mut other = post_body(&ping_id, "TX");
    other["lead"]["first_name"] = json!("Bea");
    c.post_json_with("/v1/post", SELLER_KEY, &key, &other)
        .await
        .assert_error(409, "conflict");
    assert_eq!(a.posts(), 2);

    // Idempotency-Key on a direct post.
    let key = [("Idempotency-Key", "direct-key-1")];
    let d1 = c
        .post_json_with("/v1/leads", SELLER_KEY, &key, &direct_body("TX"))
        .await;
    let d2 = c
        .post_json_with("/v1/leads", SELLER_KEY, &key, &direct_body("TX"))
        .await;
    assert_eq!(d1.post_answer().status, PostStatus::Sold);
    assert_eq!(d2.body, d1.body);
    assert_eq!((a.pings(), a.posts()), (3, 3));
    assert_eq!(ex.ledger_of("sale").len(), 3);
    assert_eq!(ex.sold_today("a"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_cap_of_10_holds_under_30_concurrent_pings() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    // Generous timeouts: 30 auctions at once share 2 cores with everything else.
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(10).ping_timeout_ms(2_000))
        .with(|c| c.auction_deadline_ms = 3_000)
        .start()
        .await;

    let mut set = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let client = ex.client.clone();
        set.spawn(async move { client.ping("TX").await });
    }
    let answers: Vec<_> = set.join_all().await;
    let bids: Vec<_> = answers
        .iter()
        .filter(|a| a.status == PingStatus::Bid)
        .collect();
    assert_eq!(bids.len(), 10, "exactly the cap is quoted: {answers:?}");
    for a in answers.iter().filter(|a| a.status == PingStatus::NoBid) {
        assert_eq!(
            a.reason,
            Some(NoBidReason::Capped),
            "a buyer at its cap is `capped`: {a:?}"
        );
    }
    assert_eq!(ex.reserved("a"), 10);
    assert_eq!(ex.quotes_open(), 10);

    let mut set = tokio::task::JoinSet::new();
    for q in &bids {
        let client = ex.client.clone();
        let ping_id = q.ping_id.clone();
        set.spawn(async move { client.post(&ping_id, "TX").await });
    }
    for sold in set.join_all().await {
        assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    }
    assert_eq!(a.posts(), 10);
    assert_eq!(ex.sold_today("a"), 10);
    assert_eq!(ex.reserved("a"), 0, "no reservation remains");
    assert_eq!(ex.quotes_open(), 0);
    assert_eq!(ex.ledger_of("sale").len(), 10);

    // At its cap the buyer is not even pinged.
    let pings = a.pings();
    let more = ex.client.ping("TX").await;
    assert_eq!(
        (more.status, more.reason),
        (PingStatus::NoBid, Some(NoBidReason::Capped)),
        "{more:?}"
    );
    assert_eq!(a.pings(), pings);
}

#[tokio::test]
async fn quotes_that_expire_unposted_give_their_cap_back() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    // Long enough that the auctions before the jump all run within it on a loaded machine.
    let ttl_ms = 10_000;
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(10))
        .with(|c| c.quote_ttl_ms = ttl_ms)
        .start()
        .await;

    for _ in 0..10 {
        assert_eq!(ex.client.ping("TX").await.status, PingStatus::Bid);
    }
    assert_eq!(ex.reserved("a"), 10);
    let capped = ex.client.ping("TX").await;
    assert_eq!(
        capped.reason,
        Some(NoBidReason::Capped),
        "reserved leads count against the cap: {capped:?}"
    );

    jump_past(ttl_ms).await;
    assert_eq!(
        ex.reserved("a"),
        0,
        "every expired quote released its reservation"
    );
    assert_eq!(ex.quotes_open(), 0);
    assert_eq!(ex.sold_today("a"), 0);

    let again = ex.client.ping("TX").await;
    assert_eq!(
        again.status,
        PingStatus::Bid,
        "the cap is free again: {again:?}"
    );
    assert_eq!(a.posts(), 0);
}

#[tokio::test]
async fn an_http2_buyer_is_pinged_over_http2_and_wins() {
    let raw = RawBuyer::start(Behaviour::Bid(25_000_000)).await;
    let sdk = ScriptedBidder::bidding(20.0);
    let (sb, _h) = serve("sdk2", &sdk).await;
    let rb = TestBuyer::new("raw2", raw.addr).http2();
    let ex = TestConfig::new()
        .buyer(rb.clone())
        .buyer(sb.http2())
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.price, Some(seller_price(usd(25.0))), "{quote:?}");
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some(rb.name().as_str()));
    assert_eq!(raw.paths(), ["/ping", "/post"]);
    assert!(
        raw.versions().iter().all(|v| *v == Version::HTTP_2),
        "{:?}",
        raw.versions()
    );
    // The SDK's server speaks h2c too.
    assert_eq!(sdk.pings(), 1);
    sdk.assert_no_pii_in_pings();
    assert_eq!(sdk.posts(), 0);
}

/// A seller that sends its whole ping and then shuts its side of the connection for
/// writing (`shutdown(SHUT_WR)`, as some HTTP clients and `nc -N` do) still gets the
/// answer, even when the auction takes a moment: the work is done either way, so an empty
/// reply would leave a quote open that the seller never hears of.
#[tokio::test]
async fn a_seller_that_half_closes_after_its_request_still_gets_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let buyer = ScriptedBidder::bidding(14.0);
    let (b, _h) = serve("slow", &buyer).await;
    let ex = TestConfig::new().buyer(b).start().await;
    // The buyer holds its answer until the test opens the gate.
    buyer.close();
    let body = ping_body("TX").to_string();
    let head = format!(
        "POST /v1/ping HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SELLER_KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(ex.addr)
        .await
        .expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body.as_bytes()).await.expect("write");
    stream.shutdown().await.expect("half close");
    buyer.wait_pings(1).await;
    buyer.open();
    let mut answer = Vec::new();
    tokio::time::timeout(EVENT_WAIT_MAX, stream.read_to_end(&mut answer))
        .await
        .expect("the exchange answers and closes in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains(r#""status":"bid""#), "{answer:?}");
    assert!(answer.contains(r#""ping_id":"pg_"#), "{answer:?}");
}

/// A vertical's `consent_required`: a ping or direct post without the key (or with a
/// blank value) is answered `consent_required`, pings no buyer and holds nothing; a post
/// without it is refused with `invalid_request` naming it, and the quote stays open for
/// a post that carries it, which the buyer receives.
#[tokio::test]
async fn a_vertical_that_requires_consent_gets_it_at_the_ping_and_the_post() {
    let bidder = ScriptedBidder::bidding(20.0);
    let (b, _h) = serve("b", &bidder).await;
    let ex = TestConfig::new()
        .buyer(b)
        .start_edited(|t| {
            t.replacen(
                "[verticals.auto_insurance]\n",
                "[verticals.auto_insurance]\nconsent_required = [\"trustedform_cert_url\"]\n",
                1,
            )
        })
        .await;
    let cert = "https://cert.trustedform.com/abc";

    for consent in [
        json!({}),
        json!({"trustedform_cert_url": "  "}),
        json!({"jornaya_leadid": "x"}),
    ] {
        let mut body = ping_body("TX");
        body["consent"] = consent.clone();
        let a = ex.client.post_json("/v1/ping", &body).await.ping_answer();
        assert_eq!(a.status, PingStatus::NoBid, "{consent}: {a:?}");
        assert_eq!(a.reason, Some(NoBidReason::ConsentRequired));
        let mut direct = direct_body("TX");
        direct["consent"] = consent.clone();
        let d = ex
            .client
            .post_json("/v1/leads", &direct)
            .await
            .post_answer();
        assert_eq!(d.status, PostStatus::Unsold, "{consent}: {d:?}");
        assert_eq!(d.reason.as_deref(), Some("consent_required"));
    }
    assert_eq!(
        bidder.pings(),
        0,
        "a lead without the required consent pings no buyer"
    );
    assert_eq!(ex.reserved("b"), 0);
    assert_eq!(ex.quotes_open(), 0);
    ex.state.ledger.flush().await.unwrap();
    let records = ex.ledger_of("auction");
    assert_eq!(records.len(), 6, "each is an auction on record");
    assert!(
        records.iter().all(|r| r["no_bid"] == "consent_required"),
        "{records:?}"
    );

    let mut body = ping_body("TX");
    body["consent"] = json!({"trustedform_cert_url": cert});
    let quote = ex.client.post_json("/v1/ping", &body).await.ping_answer();
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert_eq!(bidder.pings(), 1);
    assert_eq!(ex.reserved("b"), 1);

    // post_body carries only a Jornaya id: refused, naming the key; nothing changes.
    let refused = ex
        .client
        .post_json("/v1/post", &post_body(&quote.ping_id, "TX"))
        .await;
    let err = refused.assert_error(400, "invalid_request");
    assert_eq!(
        err["fields"][0]["field"], "consent.trustedform_cert_url",
        "{err}"
    );
    assert_eq!(bidder.posts(), 0);
    assert_eq!(ex.reserved("b"), 1, "the quote still holds its cap");
    assert_eq!(ex.quotes_open(), 1);

    let mut post = post_body(&quote.ping_id, "TX");
    post["consent"]["trustedform_cert_url"] = json!(cert);
    let sold = ex.client.post_json("/v1/post", &post).await.post_answer();
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    let delivered = bidder.post_log();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0]
            .consent
            .get("trustedform_cert_url")
            .map(String::as_str),
        Some(cert),
        "the buyer receives the consent it requires"
    );
}

/// A post lacking several required consent keys names every one of them at once, as
/// every other `400` lists its problems (black-box round 100b: only the first was named,
/// the next one only after the seller had fixed it).
#[tokio::test]
async fn a_post_without_several_consent_keys_names_them_all() {
    let bidder = ScriptedBidder::bidding(20.0);
    let (b, _h) = serve("b", &bidder).await;
    let ex = TestConfig::new()
        .buyer(b)
        .start_edited(|t| {
            t.replacen(
                "[verticals.auto_insurance]\n",
                "[verticals.auto_insurance]\nconsent_required = [\"tf\", \"jl\", \"xk\"]\n",
                1,
            )
        })
        .await;
    let mut body = ping_body("TX");
    body["consent"] = json!({"tf": "https://cert/1", "jl": "abc", "xk": "k"});
    let quote = ex.client.post_json("/v1/ping", &body).await.ping_answer();
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    let mut post = post_body(&quote.ping_id, "TX");
    post["consent"] = json!({"tf": " ", "xk": "given"});
    let err = ex
        .client
        .post_json("/v1/post", &post)
        .await
        .assert_error(400, "invalid_request");
    let fields: Vec<&str> = err["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["consent.tf", "consent.jl"], "{err}");
    assert_eq!(bidder.posts(), 0);
    assert_eq!(ex.quotes_open(), 1, "the quote stays open");
}

/// A buyer with budget left, but less than its bid, is still pinged (its bid is not known
/// before it answers); its bid is refused at award (`capped_at_award`) and counted in
/// `pingpost_buyer_capped_at_award_total`, so an operator sees a buyer bidding past its
/// budget (black-box round 38: thousands of such bids showed only as `bid`).
#[tokio::test]
async fn a_bid_past_the_budget_left_is_refused_at_award_and_counted() {
    let a = ScriptedBidder::bidding(30.0);
    let b = ScriptedBidder::bidding(20.0);
    let (ab, _ha) = serve("a", &a).await;
    let (bb, _hb) = serve("b", &b).await;
    let ex = TestConfig::new()
        .buyer(ab.clone())
        .buyer(bb.clone())
        .start_edited(|t| t.replacen("[buyers.a]\n", "[buyers.a]\nbudget_daily = 50\n", 1))
        .await;
    const CAPPED: &str = "pingpost_buyer_capped_at_award_total";
    // 30.00 of 50.00 spent: 20.00 left, under a's bid of 30.00.
    assert_eq!(
        ex.client.direct("TX").await.buyer.as_deref(),
        Some(ab.name().as_str())
    );
    assert_eq!(ex.metric(CAPPED, &[("buyer", "a")]).await, 0.0);
    let second = ex.client.direct("TX").await;
    assert_eq!(
        second.buyer.as_deref(),
        Some(bb.name().as_str()),
        "{second:?}"
    );
    assert_eq!(a.pings(), 2, "a is still pinged: it has budget left");
    assert_eq!(ex.metric(CAPPED, &[("buyer", "a")]).await, 1.0);
    assert_eq!(ex.metric(CAPPED, &[("buyer", "b")]).await, 0.0);
    let auction = &ex.ledger_of("auction")[1];
    assert!(
        auction["buyers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["buyer"] == "a" && l["outcome"] == "capped_at_award"),
        "{auction}"
    );
}

/// A buyer with less of its budget left than the vertical's floor is not pinged at all:
/// no bid under the floor is quoted and a buyer pays its bid, so it could win nothing,
/// and a ping would only show it a lead it cannot buy. It is skipped as `capped`.
#[tokio::test]
async fn a_buyer_with_less_budget_left_than_the_floor_is_not_pinged() {
    let a = ScriptedBidder::bidding(45.0);
    let b = ScriptedBidder::bidding(20.0);
    let (ab, _ha) = serve("a", &a).await;
    let (bb, _hb) = serve("b", &b).await;
    let ex = TestConfig {
        floor: 10.0,
        ..TestConfig::new()
    }
    .buyer(ab.clone())
    .buyer(bb.clone())
    .start_edited(|t| t.replacen("[buyers.a]\n", "[buyers.a]\nbudget_daily = 50\n", 1))
    .await;
    // 45.00 of 50.00 spent: 5.00 left, under the floor of 10.00.
    assert_eq!(
        ex.client.direct("TX").await.buyer.as_deref(),
        Some(ab.name().as_str())
    );
    assert_eq!(a.pings(), 1);
    let second = ex.client.direct("TX").await;
    assert_eq!(
        second.buyer.as_deref(),
        Some(bb.name().as_str()),
        "{second:?}"
    );
    assert_eq!(
        a.pings(),
        1,
        "a is not pinged: what it has left buys nothing"
    );
    let auction = &ex.ledger_of("auction")[1];
    assert_eq!(
        auction["skipped"],
        serde_json::json!({"total": 1, "by_reason": {"capped": 1},
            "first": [{"buyer": "a", "reason": "capped"}]}),
        "{auction}"
    );
    assert_eq!(
        ex.metric("pingpost_buyer_capped_at_award_total", &[("buyer", "a")])
            .await,
        0.0
    );
}

/// Black-box round 41: the cap gauge was a whole percent, so 3 leads of an hourly 600
/// read 0, the value of a window with nothing sold.
#[tokio::test]
async fn the_cap_gauge_is_not_rounded_to_whole_percents() {
    let a = ScriptedBidder::bidding(30.0);
    let (ab, _ha) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab.caps_daily(3)).start().await;
    const GAUGE: &str = "pingpost_cap_utilisation_percent";
    assert_eq!(
        ex.client.direct("TX").await.buyer.as_deref(),
        Some("Buyer a")
    );
    let day = ex.metric(GAUGE, &[("buyer", "a"), ("window", "day")]).await;
    assert!((day - 100.0 / 3.0).abs() < 1e-9, "1 of 3: {day}");
    ex.client.direct("TX").await;
    let day = ex.metric(GAUGE, &[("buyer", "a"), ("window", "day")]).await;
    assert!((day - 200.0 / 3.0).abs() < 1e-9, "2 of 3: {day}");
}

/// Budget use has a gauge of its own, as caps have (black-box round 205c: only the
/// ledger showed how much of a buyer's `budget_daily` was gone): money spent plus money
/// held by open quotes, over the budget; no series while nothing is spent or held, nor for
/// a buyer a reload stops budgeting.
#[tokio::test]
async fn the_budget_gauge_reads_spent_and_held_money_over_the_daily_budget() {
    let a = ScriptedBidder::bidding(12.5);
    let (ab, _ha) = serve("a", &a).await;
    let ex = TestConfig::new()
        .buyer(ab.clone())
        .start_edited(|t| t.replacen("[buyers.a]\n", "[buyers.a]\nbudget_daily = 50\n", 1))
        .await;
    let series = "pingpost_budget_utilisation_percent{buyer=\"a\"}";
    let scrape = ex.metrics().await;
    assert!(!scrape.contains(series), "nothing spent: {scrape}");
    assert_eq!(
        ex.client.direct("TX").await.buyer.as_deref(),
        Some(ab.name().as_str())
    );
    let scrape = ex.metrics().await;
    assert!(
        scrape.contains(&format!("{series} 25\n")),
        "12.50 of 50: {scrape}"
    );
    let held = ex.client.ping("TX").await;
    assert_eq!(held.status, PingStatus::Bid, "{held:?}");
    let scrape = ex.metrics().await;
    assert!(
        scrape.contains(&format!("{series} 50\n")),
        "12.50 spent and 12.50 held: {scrape}"
    );
    // A budget of 0 pauses the buyer: what it has spent or holds reads +Inf (black-box
    // round 208a: 2,500,000,000, a percentage of one micro).
    ex.write_config(&TestConfig::new().buyer(ab.clone()));
    std::fs::write(
        &ex.config_path,
        std::fs::read_to_string(&ex.config_path).unwrap().replacen(
            "[buyers.a]\n",
            "[buyers.a]\nbudget_daily = 0\n",
            1,
        ),
    )
    .unwrap();
    ex.reload().await;
    let scrape = ex.metrics().await;
    // The text format writes it `inf` (Prometheus reads that as +Inf, ignoring case).
    assert!(
        scrape.contains(&format!("{series} inf\n")),
        "budget 0: {scrape}"
    );
    ex.write_config(&TestConfig::new().buyer(ab.clone()));
    ex.reload().await;
    let scrape = ex.metrics().await;
    assert!(!scrape.contains(series), "no budget any more: {scrape}");
}

/// A buyer moving to a new signing secret (`secret_env_next`): every ping and post is
/// signed with both secrets, so a buyer verifying with either one takes it, and the
/// operator can move it over without a hard cut-over; without the next secret, a buyer
/// already verifying with the new one refuses the ping (no bid).
#[tokio::test]
async fn a_buyer_moving_to_its_next_secret_verifies_with_either() {
    const OLD: &str = "the-old-secret-of-buyer-rot";
    const NEW: &str = "whsec_dGhlLW5ldy1zZWNyZXQtb2YtYnV5ZXItcm90";
    for (verifies_with, next, sells) in [
        (OLD, Some(NEW), true),
        (NEW, Some(NEW), true),
        (NEW, None, false),
    ] {
        let bidder = ScriptedBidder::bidding(20.0);
        let (addr, _h) = bidder.serve(verifies_with).await;
        let mut buyer = TestBuyer::new("rot", addr);
        buyer.secret = OLD.to_string();
        if let Some(n) = next {
            buyer = buyer.secret_next(n);
        }
        let ex = TestConfig::new().buyer(buyer).start().await;
        let quote = ex.client.ping("TX").await;
        let case = format!("verifies with {verifies_with}, next {next:?}");
        if !sells {
            assert_eq!(quote.status, PingStatus::NoBid, "{case}: {quote:?}");
            assert_eq!(bidder.posts(), 0, "{case}");
            continue;
        }
        assert_eq!(quote.status, PingStatus::Bid, "{case}: {quote:?}");
        let answer = ex.client.post(&quote.ping_id, "TX").await;
        assert_eq!(answer.status, PostStatus::Sold, "{case}: {answer:?}");
        assert_eq!(bidder.posts(), 1, "{case}");
    }
}

/// The answers [`every_answer_is_the_openapi_variant_its_status_names`] checked, by
/// route and status, against the exchange's own OpenAPI document.
struct Answers {
    doc: Value,
    seen: BTreeSet<String>,
}

impl Answers {
    /// Checks `v` against `schema`: it matches, and each field it carries is one its status
    /// always carries (required by its variant: without it, the answer does not match),
    /// but the optional `score` and an unsold post's `lead_id` (only after a delivery).
    fn check(&mut self, route: &str, schema: &str, v: Value) -> Value {
        assert_matches_schema(&self.doc, schema, &v);
        for key in v.as_object().unwrap().keys() {
            if key == "score" || (key == "lead_id" && v["status"] == "unsold") {
                continue;
            }
            let mut without = v.clone();
            without.as_object_mut().unwrap().remove(key);
            assert!(
                schema_problem(&self.doc, schema, &without).is_some(),
                "{schema} does not require {key}: {v}"
            );
        }
        self.seen
            .insert(format!("{route} {}", v["status"].as_str().unwrap()));
        v
    }

    async fn ping(&mut self, client: &SellerClient) -> Value {
        let v = client.post_json("/v1/ping", &ping_body("TX")).await.json();
        self.check("ping", "PingAnswer", v)
    }

    async fn post(&mut self, client: &SellerClient, ping_id: &str, lead: Value) -> Value {
        let body = json!({"ping_id": ping_id, "lead": lead, "consent": {"jornaya_leadid": "LL-1"}});
        let v = client.post_json("/v1/post", &body).await.json();
        self.check("post", "PostAnswer", v)
    }

    async fn direct(&mut self, client: &SellerClient, lead: Value) -> Value {
        let body = json!({"vertical": VERTICAL, "lead": lead});
        let v = client.post_json("/v1/leads", &body).await.json();
        self.check("leads", "PostAnswer", v)
    }
}

/// Every `200` answer of `/v1/ping`, `/v1/post` and `/v1/leads` is the variant of the
/// exchange's own OpenAPI document its `status` names, with each field that variant
/// requires and none it does not declare (black-box round 210a: one schema per route with
/// every field optional, so a client could not tell from it which fields come with
/// which status).
#[tokio::test]
async fn every_answer_is_the_openapi_variant_its_status_names() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ttl_ms = 10_000;
    let ex = TestConfig::new()
        .buyer(ab.caps_daily(100))
        .with(|c| c.quote_ttl_ms = ttl_ms)
        .start_edited(|toml| {
            toml.replace(
                "[verticals.auto_insurance.fields]",
                "[verticals.auto_insurance.dedup]\nwindow_days = 30\n\n[verticals.auto_insurance.fields]",
            )
        })
        .await;
    let c = &ex.client;
    let mut answers = Answers {
        doc: c.get("/openapi.json").await.json(),
        seen: BTreeSet::new(),
    };
    // A consumer of its own: each sale makes later leads of the same one duplicates.
    let consumer = |n: u32, state: &str| {
        let mut l = full_lead(state);
        l["phone"] = json!(format!("+1817555{n:04}"));
        l["email"] = json!(format!("c{n}@example.com"));
        l
    };

    let q = answers.ping(c).await;
    assert_eq!(q["status"], "bid", "{q}");
    let sold = answers
        .post(c, q["ping_id"].as_str().unwrap(), consumer(1, "TX"))
        .await;
    assert_eq!(sold["status"], "sold", "{sold}");

    // The consumer sold: a direct post and another quote's post of it are duplicates.
    let d = answers.direct(c, consumer(1, "TX")).await;
    assert_eq!(d["status"], "duplicate", "{d}");
    let q = c.ping("TX").await;
    let dup = answers.post(c, &q.ping_id, consumer(1, "TX")).await;
    assert_eq!(dup["status"], "duplicate", "{dup}");

    // A ping field changed between ping and post.
    let q = c.ping("TX").await;
    let m = answers.post(c, &q.ping_id, consumer(2, "CA")).await;
    assert_eq!(m["status"], "mismatch", "{m}");
    assert_eq!(m["changed_fields"], json!(["state"]), "{m}");

    // A direct post sold, then a post the buyer rejects (unsold after delivery: a lead_id).
    let d = answers.direct(c, consumer(3, "TX")).await;
    assert_eq!(d["status"], "sold", "{d}");
    a.set(|s| s.accept = false);
    let q = c.ping("TX").await;
    let u = answers.post(c, &q.ping_id, consumer(4, "TX")).await;
    assert_eq!(
        (&u["status"], &u["reason"]),
        (&json!("unsold"), &json!("all_buyers_rejected")),
        "{u}"
    );
    assert!(u["lead_id"].is_string(), "{u}");

    // No bid: the ping's no_bid, and a direct post unsold with the no-bid reason.
    a.set(|s| s.bid = None);
    let n = answers.ping(c).await;
    assert_eq!(
        (&n["status"], &n["reason"]),
        (&json!("no_bid"), &json!("no_bids")),
        "{n}"
    );
    let d = answers.direct(c, consumer(5, "TX")).await;
    assert_eq!(
        (&d["status"], &d["reason"]),
        (&json!("unsold"), &json!("no_bids")),
        "{d}"
    );
    assert!(d.get("lead_id").is_none(), "{d}");

    // Expired: posted after the quote's time.
    a.set(|s| s.bid = Some(usd(10.0)));
    let q = c.ping("TX").await;
    assert_eq!(q.status, PingStatus::Bid, "{q:?}");
    jump_past(ttl_ms).await;
    let e = answers.post(c, &q.ping_id, consumer(6, "TX")).await;
    assert_eq!(e["status"], "expired", "{e}");

    let want: BTreeSet<String> = [
        "ping bid",
        "ping no_bid",
        "post sold",
        "post unsold",
        "post duplicate",
        "post mismatch",
        "post expired",
        "leads sold",
        "leads unsold",
        "leads duplicate",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(answers.seen, want);
}
