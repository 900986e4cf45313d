//! JSON nested far too deep, from a seller and from a buyer: refused before any recursive
//! parser runs, so the process keeps serving. Real sockets on 127.0.0.1:0.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{header, Method};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::seller::{PingStatus, PostStatus};
use tokio::net::TcpListener;

const PINGS: &str = "pingpost_buyer_pings_total";
const DEPTH: usize = 30_000;

/// `{"vertical": …, "lead": [[[…]]]}` with a lead 30,000 arrays deep (60 KB).
fn deep_seller_body(extra: &str) -> Vec<u8> {
    let mut body = format!(r#"{{"vertical":"{VERTICAL}",{extra}"lead":"#).into_bytes();
    body.extend(std::iter::repeat_n(b'[', DEPTH));
    body.extend(std::iter::repeat_n(b']', DEPTH));
    body.push(b'}');
    body
}

/// A buyer answering every request `200 application/json` with a bid 30,000 levels deep.
/// (A helper failing is the test failing, hence `expect`.)
#[allow(clippy::expect_used)]
async fn deep_buyer() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request| async move {
                    let _ = req.into_body().collect().await;
                    let mut body = br#"{"bid":"#.to_vec();
                    body.extend(std::iter::repeat_n(b'[', DEPTH));
                    body.extend(b"12.5");
                    body.extend(std::iter::repeat_n(b']', DEPTH));
                    body.push(b'}');
                    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

type Request = http::Request<Incoming>;

#[tokio::test]
async fn a_seller_body_30000_levels_deep_is_invalid_and_the_exchange_lives_on() {
    let good = ScriptedBidder::bidding(10.0);
    let (gb, _h) = serve("good", &good).await;
    let ex = TestConfig::new().buyer(gb).start().await;

    for (path, body) in [
        ("/v1/ping", deep_seller_body("")),
        ("/v1/leads", deep_seller_body("")),
        ("/v1/post", {
            let mut b = br#"{"ping_id":"pg_1","lead":"#.to_vec();
            b.extend(std::iter::repeat_n(b'[', DEPTH));
            b.extend(std::iter::repeat_n(b']', DEPTH));
            b.push(b'}');
            b
        }),
    ] {
        assert!(body.len() < 64 * 1024, "{} bytes", body.len());
        let reply = ex
            .client
            .send(
                Method::POST,
                path,
                Some(SELLER_KEY),
                Some("application/json"),
                &[],
                body,
            )
            .await;
        let e = reply.assert_error(400, "invalid_request");
        assert_eq!(
            e["message"], "body: JSON nested deeper than 64 levels",
            "{path}: {e}"
        );
        assert_eq!(e["fields"][0]["field"], "body", "{path}: {e}");
    }

    // Still alive, and still selling.
    assert_eq!(ex.client.get("/healthz").await.status, 200);
    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert_eq!(good.pings(), 1, "a refused body reached a buyer");
}

#[tokio::test]
async fn a_buyer_answer_30000_levels_deep_is_a_no_bid_and_the_auction_completes() {
    let (deep_addr, deep_task) = deep_buyer().await;
    let good = ScriptedBidder::bidding(10.0);
    let (gb, _h) = serve("good", &good).await;
    // 2 s to answer (a 30,000-level body on a loaded machine), so the outcome is the
    // body's, never a timeout.
    let ex = TestConfig::new()
        .buyer(TestBuyer::new("deep", deep_addr).ping_timeout_ms(2_000))
        .buyer(gb.clone().ping_timeout_ms(2_000))
        .with(|c| c.auction_deadline_ms = 3_000)
        .start()
        .await;

    let quote = ex.client.ping("TX").await;
    assert_eq!(quote.status, PingStatus::Bid, "{quote:?}");
    assert_eq!(quote.price, Some(seller_price(usd(10.0))), "{quote:?}");
    assert_eq!(
        ex.metric(PINGS, &[("buyer", "deep"), ("outcome", "invalid")])
            .await,
        1.0
    );
    assert_eq!(
        ex.metric(PINGS, &[("buyer", "deep"), ("outcome", "bid")])
            .await,
        0.0
    );
    let sold = ex.client.post(&quote.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!(sold.buyer.as_deref(), Some(gb.name().as_str()));
    let auction = &ex.ledger_of("auction")[0];
    assert!(auction.to_string().contains("too_deep"), "{auction}");
    assert_eq!(ex.client.get("/healthz").await.status, 200);
    deep_task.abort();
}
