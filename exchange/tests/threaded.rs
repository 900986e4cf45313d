//! The thread-per-core server (`server.worker_threads`): several workers share one
//! listening address with SO_REUSEPORT and one set of books; quotes made on one worker can
//! be posted through another, caps hold across them, and shutdown joins every worker with
//! the ledger's tail made durable.

mod common;

use common::*;
use pingpost::app;
use pingpost::clock::Clock;
use proto::seller::{PingStatus, PostStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_share_the_address_the_books_and_the_caps() {
    let bidder = ScriptedBidder::bidding(15.0);
    let (buyer, _handle) = serve("acme", &bidder).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger_path = dir.path().join("ledger");
    let mut config = TestConfig::new()
        .buyer(buyer.caps_daily(12))
        .load(&ledger_path);
    config.server.worker_threads = 3;
    let server = tokio::task::spawn_blocking(move || app::start_threaded(config, Clock::system()))
        .await
        .expect("join")
        .expect("threaded exchange starts");
    let addr = server.addr;

    // Many connections (one client each), so the kernel spreads them over the workers;
    // each quote is posted over a different connection than the one that pinged.
    let clients: Vec<SellerClient> = (0..8).map(|_| SellerClient::new(addr)).collect();
    let mut pings = Vec::new();
    for i in 0..16 {
        pings.push(clients[i % clients.len()].ping("TX").await);
    }
    let bids: Vec<_> = pings
        .iter()
        .filter(|p| p.status == PingStatus::Bid)
        .collect();
    assert_eq!(bids.len(), 12, "the daily cap of 12 holds across workers");
    let mut sold = 0;
    for (i, p) in bids.iter().enumerate() {
        let answer = clients[(i + 3) % clients.len()]
            .post(&p.ping_id, "TX")
            .await;
        assert_eq!(answer.status, PostStatus::Sold, "{answer:?}");
        sold += 1;
    }
    assert_eq!(sold, 12);
    assert_eq!(bidder.posts(), 12);

    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .expect("join")
        .expect("clean shutdown");
    let text = pingpost::ledger::segments::read_all(&ledger_path).expect("ledger");
    let sales = text
        .lines()
        .filter(|l| l.contains(r#""type":"sale""#))
        .count();
    assert_eq!(sales, 12);
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains(r#""type":"flush""#)),
        "shutdown made the tail durable"
    );
    // The port is free again: every worker stopped listening.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// A second exchange started on the address of a running one (by mistake: the same
/// `server.listen`) must not start. With `SO_REUSEPORT` on the workers' listeners it
/// would otherwise bind beside the first, and the kernel would split the sellers
/// between two exchanges with separate quotes and ledgers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_exchange_on_the_same_address_refuses_to_start() {
    let bidder = ScriptedBidder::bidding(15.0);
    let (buyer, _handle) = serve("acme", &bidder).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let first_cfg = TestConfig::new()
        .buyer(buyer.clone())
        .load(&dir.path().join("a"));
    let first =
        tokio::task::spawn_blocking(move || app::start_threaded(first_cfg, Clock::system()))
            .await
            .expect("join")
            .expect("the first exchange starts");
    let addr = first.addr;

    let mut second_cfg = TestConfig::new().buyer(buyer).load(&dir.path().join("b"));
    second_cfg.server.listen = addr;
    let second =
        tokio::task::spawn_blocking(move || app::start_threaded(second_cfg, Clock::system()))
            .await
            .expect("join");
    let err = second.expect_err("a second exchange on the same address must not start");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("server.listen"),
        "the error names the address and the setting: {msg}"
    );
    assert!(!dir.path().join("b").exists(), "nothing was created: {msg}");

    // The first one still serves every seller.
    let client = SellerClient::new(addr);
    for _ in 0..4 {
        assert_eq!(client.ping("TX").await.status, PingStatus::Bid);
    }
    tokio::task::spawn_blocking(move || first.shutdown())
        .await
        .expect("join")
        .expect("clean shutdown");
}
