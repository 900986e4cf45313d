//! The SDK over real sockets on 127.0.0.1:0: checks, answers, HTTP/2, shutdown.

// Helpers outside #[test] functions fail the test just the same when they unwrap.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bidder_sdk::examples::{FlatBidder, ScorecardBidder, DUPLICATE, OUTSIDE_CRITERIA};
use bidder_sdk::proto::buyer::{BidOutcome, PostOutcome};
use bidder_sdk::testkit::{sample_ping, sample_post, SampleLead, Signing, TestClient};
use bidder_sdk::{
    spawn, BidReply, Bidder, Micros, PingMessage, PostMessage, PostReply, Refusal, Secret,
    ServeOptions, ServerHandle,
};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

const SECRET: &str = "test-secret-0123456789";
const PRICE: Micros = Micros(12_500_000);

fn secret() -> Secret {
    Secret::new(SECRET).unwrap()
}

async fn start<B: Bidder>(bidder: Arc<B>) -> (TestClient, SocketAddr, ServerHandle) {
    let (addr, handle) = spawn(bidder, ServeOptions::new(secret())).await.unwrap();
    (
        TestClient::new(format!("http://{addr}"), secret()),
        addr,
        handle,
    )
}

fn flat() -> Arc<FlatBidder> {
    Arc::new(FlatBidder::new(PRICE, ["TX", "OK"]))
}

fn ping_body() -> Vec<u8> {
    serde_json::to_vec(&sample_ping(&SampleLead::default())).unwrap()
}

/// Writes `request` on a fresh connection and reads until the server closes it (the
/// request says `Connection: close`). Returns the status code and the whole text.
async fn raw_http1(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn signed_ping_gets_a_bid() {
    let bidder = flat();
    let (client, _, handle) = start(Arc::clone(&bidder)).await;

    let answer = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    assert_eq!(answer.raw.status, StatusCode::OK);
    assert_eq!(answer.raw.version, Version::HTTP_11);
    assert_eq!(answer.raw.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        answer.outcome,
        BidOutcome::Bid {
            price: PRICE,
            bid_id: None,
            expires_in_ms: None,
            currency: None,
        }
    );

    let elsewhere = SampleLead {
        state: "CA".into(),
        ..SampleLead::default()
    };
    let answer = client.ping(&sample_ping(&elsewhere)).await.unwrap();
    assert_eq!(answer.raw.status, StatusCode::OK);
    assert_eq!(
        answer.outcome,
        BidOutcome::NoBid {
            reason: Some(OUTSIDE_CRITERIA.into())
        }
    );

    assert_eq!(bidder.pings_received(), 2);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_signatures_are_refused_before_the_bidder() {
    let bidder = flat();
    let (client, _, handle) = start(Arc::clone(&bidder)).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    for signing in [
        Signing::WrongSecret,
        Signing::At {
            timestamp_s: now_s - 400,
        },
        Signing::Unsigned,
    ] {
        let answer = client
            .send(Method::POST, "/ping", ping_body(), signing.clone())
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{signing:?}");
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            answer.error_code().as_deref(),
            Some("unauthorized"),
            "{signing:?}"
        );
    }
    // A timestamp inside the tolerance is fine.
    let answer = client
        .send(
            Method::POST,
            "/ping",
            ping_body(),
            Signing::At {
                timestamp_s: now_s - 200,
            },
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    assert_eq!(bidder.pings_received(), 1);
    handle.shutdown().await.unwrap();
}

/// A captured signed request sent again within the signature tolerance is a replay:
/// `409 conflict`, and the bidder never sees it (SECURITY.md N6; before, the SDK took it).
#[tokio::test]
async fn a_replayed_request_is_refused_before_the_bidder() {
    let bidder = flat();
    let (client, _, handle) = start(Arc::clone(&bidder)).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let captured = Signing::WithId {
        id: "msg_captured".into(),
        timestamp_s: now_s,
    };
    let first = client
        .send(Method::POST, "/ping", ping_body(), captured.clone())
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    for path in ["/ping", "/ping", "/post"] {
        let again = client
            .send(Method::POST, path, ping_body(), captured.clone())
            .await
            .unwrap();
        assert_eq!(again.status, StatusCode::CONFLICT, "{path}");
        assert_eq!(again.error_code().as_deref(), Some("conflict"));
    }
    // A request with another id is taken; one with a bad signature and a taken id is
    // refused for its signature, and poisons nothing.
    let other = client
        .send(Method::POST, "/ping", ping_body(), Signing::Valid)
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(bidder.pings_received(), 2);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_bodies_get_400() {
    let bidder = flat();
    let (client, _, handle) = start(Arc::clone(&bidder)).await;
    for body in [
        &b"{not json"[..],
        b"",
        b"[1,2]",
        br#"{"auction_id":"au_1"}"#,
        b"\xff\xfe\x00",
    ] {
        let answer = client
            .send(Method::POST, "/ping", body.to_vec(), Signing::Valid)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(answer.error_code().as_deref(), Some("invalid_request"));
        let message = answer.json().unwrap()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.starts_with("malformed message"), "{message}");
    }
    // A ping sent to the post endpoint is malformed there.
    let answer = client
        .send(Method::POST, "/post", ping_body(), Signing::Valid)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(bidder.pings_received() + bidder.posts_received(), 0);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversize_body_with_content_length_gets_413() {
    let (client, addr, handle) = start(flat()).await;
    let answer = client
        .send(
            Method::POST,
            "/ping",
            vec![b' '; 64 * 1024 + 1],
            Signing::Valid,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error_code().as_deref(), Some("payload_too_large"));

    // Refused from the header alone: no body is ever sent, yet the answer comes.
    let (status, text) = raw_http1(
        addr,
        b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains(r#""code":"payload_too_large""#), "{text}");

    // Exactly at the limit is read (and then fails the signature check, not the size).
    let answer = client
        .send(
            Method::POST,
            "/ping",
            vec![b' '; 64 * 1024],
            Signing::Unsigned,
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversize_chunked_body_is_cut_off() {
    let (_, addr, handle) = start(flat()).await;
    let chunk = vec![b' '; 16 * 1024];
    let mut request =
        b"POST /ping HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..5 {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = raw_http1(addr, &request).await;
    assert_eq!(status, 413, "{text}");
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn routes_methods_and_media_types() {
    let (client, addr, handle) = start(flat()).await;
    let answer = client
        .send(Method::POST, "/nope", ping_body(), Signing::Valid)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code().as_deref(), Some("not_found"));

    let answer = client
        .send(Method::GET, "/ping", Vec::new(), Signing::Valid)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.error_code().as_deref(), Some("method_not_allowed"));

    let (status, text) = raw_http1(
        addr,
        b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 415, "{text}");

    // Garbage instead of HTTP closes the connection; the server keeps serving.
    let (status, _) = raw_http1(addr, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n").await;
    assert_ne!(status, 200);
    let answer = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    assert_eq!(answer.raw.status, StatusCode::OK);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn http2_prior_knowledge_works() {
    let bidder = flat();
    let (addr, handle) = spawn(Arc::clone(&bidder), ServeOptions::new(secret()))
        .await
        .unwrap();
    let client = TestClient::new_http2(format!("http://{addr}"), secret());

    // Many pings at once, multiplexed on one connection.
    let pings = (0..32).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.ping(&sample_ping(&SampleLead::default())).await })
    });
    for ping in pings.collect::<Vec<_>>() {
        let answer = ping.await.unwrap().unwrap();
        assert_eq!(answer.raw.version, Version::HTTP_2);
        assert_eq!(
            answer.outcome,
            BidOutcome::Bid {
                price: PRICE,
                bid_id: None,
                expires_in_ms: None,
                currency: None,
            }
        );
    }
    let answer = client
        .send(Method::POST, "/ping", ping_body(), Signing::WrongSecret)
        .await
        .unwrap();
    assert_eq!(
        (answer.version, answer.status),
        (Version::HTTP_2, StatusCode::UNAUTHORIZED)
    );

    assert_eq!(bidder.pings_received(), 32);
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn post_accepts_then_rejects_the_duplicate() {
    let bidder = Arc::new(ScorecardBidder::default());
    let (client, _, handle) = start(Arc::clone(&bidder)).await;

    let answer = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    // good credit 18.00 + homeowner 4.00.
    let BidOutcome::Bid {
        price,
        bid_id: Some(bid_id),
        expires_in_ms: Some(60_000),
        currency: None,
    } = answer.outcome
    else {
        panic!("expected a bid: {:?}", answer.outcome);
    };
    assert_eq!(price, Micros(22_000_000));
    assert!(bid_id.starts_with("sc-"), "{bid_id}");

    let lead = SampleLead::default();
    let first = client.post(&sample_post(&lead, price)).await.unwrap();
    assert_eq!(first.raw.status, StatusCode::OK);
    assert!(
        matches!(
            first.outcome,
            PostOutcome::Accepted {
                buyer_lead_id: Some(_)
            }
        ),
        "{:?}",
        first.outcome
    );

    // The same phone written differently is the same person.
    let again = SampleLead {
        phone: "+1 (817) 555-0123".into(),
        ..lead
    };
    let second = client.post(&sample_post(&again, price)).await.unwrap();
    assert_eq!(second.raw.status, StatusCode::OK);
    assert_eq!(
        second.outcome,
        PostOutcome::Rejected {
            reason: Some(DUPLICATE.into())
        }
    );

    assert_eq!(
        (
            bidder.pings_received(),
            bidder.posts_received(),
            bidder.posts_accepted()
        ),
        (1, 2, 1)
    );
    handle.shutdown().await.unwrap();
}

/// A bidder whose ping waits for the test to release it, and that records refusals.
#[derive(Default)]
struct Gated {
    entered: Notify,
    release: Notify,
    refusals: Mutex<Vec<Refusal>>,
}

impl Bidder for Gated {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        if ping.lead.get("state").and_then(|s| s.as_str()) == Some("XX") {
            panic!("a bidder bug");
        }
        self.entered.notify_one();
        self.release.notified().await;
        BidReply::Bid {
            bid: PRICE,
            bid_id: None,
            expires_in_ms: None,
        }
    }

    async fn post(&self, _post: PostMessage) -> PostReply {
        PostReply {
            accepted: true,
            buyer_lead_id: None,
            reason: None,
        }
    }

    fn on_refused(&self, refusal: &Refusal) {
        self.refusals.lock().unwrap().push(refusal.clone());
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let bidder = Arc::new(Gated::default());
    let (client, addr, handle) = start(Arc::clone(&bidder)).await;

    let in_flight =
        tokio::spawn(async move { client.ping(&sample_ping(&SampleLead::default())).await });
    bidder.entered.notified().await;
    let shutdown = tokio::spawn(handle.shutdown());
    // Shutdown cannot complete while the ping is held.
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished());

    bidder.release.notify_one();
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(
        answer.outcome,
        BidOutcome::Bid {
            price: PRICE,
            bid_id: None,
            expires_in_ms: None,
            currency: None,
        }
    );
    shutdown.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

#[tokio::test]
async fn a_panicking_bidder_costs_one_request_and_is_reported() {
    let bidder = Arc::new(Gated::default());
    let (client, _, handle) = start(Arc::clone(&bidder)).await;
    // The test failed once, in 5.9 s, beside other test suites (its output was lost): the
    // client's default 5 s bound is the one wait here a slow machine could run past (the
    // panic is printed with a backtrace when RUST_BACKTRACE is set, as in CI, resolved
    // in a debug build). The client waits for the answer instead.
    let client = client.with_timeout_ms(60_000);

    let bug = SampleLead {
        state: "XX".into(),
        ..SampleLead::default()
    };
    let answer = client.ping(&sample_ping(&bug)).await.unwrap();
    assert_eq!(answer.raw.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.raw.error_code().as_deref(), Some("internal"));
    assert_eq!(answer.outcome, BidOutcome::Invalid("http_status"));

    // The next request on the same client is served normally.
    bidder.release.notify_one();
    let answer = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    assert_eq!(answer.raw.status, StatusCode::OK);

    let _ = client
        .send(Method::POST, "/ping", ping_body(), Signing::Unsigned)
        .await
        .unwrap();
    let refusals = bidder.refusals.lock().unwrap().clone();
    assert!(
        matches!(
            refusals.as_slice(),
            [Refusal::BidderPanicked, Refusal::Unauthorized(_)]
        ),
        "{refusals:?}"
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn custom_paths_and_unverified_mode() {
    let bidder = flat();
    let options = ServeOptions {
        ping_path: "/v2/bid".into(),
        post_path: "/v2/lead".into(),
        verify_signatures: false,
        ..ServeOptions::new(secret())
    };
    let (addr, handle) = spawn(Arc::clone(&bidder), options).await.unwrap();
    let client =
        TestClient::new(format!("http://{addr}/"), secret()).with_paths("/v2/bid", "/v2/lead");
    let answer = client
        .send(Method::POST, "/v2/bid", ping_body(), Signing::Unsigned)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let answer = client
        .post(&sample_post(&SampleLead::default(), PRICE))
        .await
        .unwrap();
    assert!(
        matches!(answer.outcome, PostOutcome::Accepted { .. }),
        "{:?}",
        answer.outcome
    );
    let answer = client
        .send(Method::POST, "/ping", ping_body(), Signing::Valid)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!((bidder.pings_received(), bidder.posts_received()), (1, 1));
    handle.shutdown().await.unwrap();
}

/// A bidder whose answer is chosen by the lead's `state`: a reason too long for any
/// answer (`LG`), a `bid_id` longer than the exchange keeps (`ID`), else a plain bid.
#[derive(Default)]
struct Oversized {
    refusals: Mutex<Vec<Refusal>>,
}

impl Bidder for Oversized {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        match ping.lead.get("state").and_then(|s| s.as_str()) {
            Some("LG") => BidReply::NoBid {
                no_bid: "x".repeat(100_000),
            },
            Some("ID") => BidReply::Bid {
                bid: PRICE,
                bid_id: Some("b".repeat(129)),
                expires_in_ms: Some(60_000),
            },
            _ => BidReply::Bid {
                bid: PRICE,
                bid_id: Some("b".repeat(128)),
                expires_in_ms: Some(60_000),
            },
        }
    }

    async fn post(&self, _post: PostMessage) -> PostReply {
        PostReply {
            accepted: true,
            buyer_lead_id: None,
            reason: None,
        }
    }

    fn on_refused(&self, refusal: &Refusal) {
        self.refusals.lock().unwrap().push(refusal.clone());
    }
}

/// Black-box round 86a: a bid with a 129-character `bid_id` was refused whole (the
/// exchange keeps the bid and drops the id), and a 100 KB reason went out as a `200` the
/// exchange records `too_large` while the test kit read it as a plain no bid.
#[tokio::test]
async fn answers_the_exchange_would_not_read_as_meant_never_leave_as_such() {
    let bidder = Arc::new(Oversized::default());
    let (client, _, handle) = start(Arc::clone(&bidder)).await;
    let ping_of = |state: &str| {
        sample_ping(&SampleLead {
            state: state.into(),
            ..SampleLead::default()
        })
    };

    // At the limit, the id goes out; past it, the bid goes out without it.
    let answer = client.ping(&ping_of("TX")).await.unwrap();
    assert!(
        matches!(&answer.outcome, BidOutcome::Bid { bid_id: Some(id), .. } if id.len() == 128),
        "{:?}",
        answer.outcome
    );
    let answer = client.ping(&ping_of("ID")).await.unwrap();
    assert_eq!(answer.raw.status, StatusCode::OK);
    assert_eq!(
        answer.outcome,
        BidOutcome::Bid {
            price: PRICE,
            bid_id: None,
            expires_in_ms: Some(60_000),
            currency: None,
        }
    );

    // Past what the exchange reads: a 500 that says so, and the refusal reported.
    let answer = client.ping(&ping_of("LG")).await.unwrap();
    assert_eq!(answer.raw.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.raw.error_code().as_deref(), Some("internal"));
    let text = String::from_utf8_lossy(&answer.raw.body).into_owned();
    assert!(text.contains("over the 65536 the exchange reads"), "{text}");
    assert!(text.len() < 1_000, "{} bytes", text.len());
    let refusals = bidder.refusals.lock().unwrap().clone();
    assert!(
        matches!(refusals.as_slice(), [Refusal::ReplyTooLarge { bytes }] if *bytes > 100_000),
        "{refusals:?}"
    );
    handle.shutdown().await.unwrap();
}

/// Black-box round 86a: every 415 said "Content-Type must be application/json", also for
/// a `Content-Encoding`, a charset or two types.
#[tokio::test]
async fn each_media_type_refusal_says_what_is_wrong() {
    let (_, addr, handle) = start(flat()).await;
    for (headers, says) in [
        (
            "Content-Type: text/plain\r\n",
            "Content-Type must be application/json",
        ),
        (
            "Content-Type: application/json; charset=iso-8859-1\r\n",
            "the body must be UTF-8",
        ),
        (
            "Content-Type: application/json\r\nContent-Type: application/json\r\n",
            "send one Content-Type header",
        ),
        (
            "Content-Type: application/json\r\nContent-Encoding: gzip\r\n",
            "Content-Encoding is not supported",
        ),
    ] {
        let request = format!(
            "POST /ping HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let (status, text) = raw_http1(addr, request.as_bytes()).await;
        assert_eq!(status, 415, "{headers}: {text}");
        assert!(text.contains("\"unsupported_media_type\""), "{text}");
        assert!(text.contains(says), "{headers}: {text}");
    }
    handle.shutdown().await.unwrap();
}

/// Black-box round 100c: a request that is not the exchange's (unsigned, another path or
/// method, a replay) kept its connection open for the idle timeout (120 s), so 1,000 such
/// connections, their answers stalled by an HTTP/2 flow-control window of 0, held every
/// slot of the bidder. Its answer now closes the connection, as the exchange's answers to
/// requests without a key do: `Connection: close` over HTTP/1.1, GOAWAY over HTTP/2.
#[tokio::test]
async fn answers_to_requests_not_from_the_exchange_close_their_connection() {
    let (client, addr, handle) = start(flat()).await;
    let body = ping_body();
    for (what, head) in [
        ("unsigned", "POST /ping HTTP/1.1"),
        ("wrong path", "POST /nowhere HTTP/1.1"),
        ("wrong method", "PUT /ping HTTP/1.1"),
    ] {
        // A keep-alive request (no `Connection: close`): the server must end it.
        let request = format!(
            "{head}\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let mut raw = request.into_bytes();
        raw.extend_from_slice(&body);
        let (status, text) = raw_http1(addr, &raw).await;
        assert!(matches!(status, 401 | 404 | 405), "{what}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{what}: {text}"
        );
    }
    // Over HTTP/2 (prior knowledge): the answer, then GOAWAY, and the connection ends
    // though the client does nothing to end it.
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let unsigned = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/ping"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
        .unwrap();
    let r = send.send_request(unsigned).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the bidder ends the connection after its 401")
        .unwrap()
        .unwrap();
    // The exchange's own signed requests keep theirs: the keep-alive client's two pings.
    let first = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    assert_eq!(first.raw.status, StatusCode::OK);
    let second = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    assert_eq!(second.raw.status, StatusCode::OK);
    handle.shutdown().await.unwrap();
}

/// A body that never comes: its request's headers go out, and nothing after them.
struct NeverBody;

impl hyper::body::Body for NeverBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

/// Black-box round 111c: HTTP/2 streams that send headers and never a body, without any
/// key, each held memory for the body's 5 s budget (250 connections of 256 streams: 4.5
/// to 254 MB). A connection with more than `BODIES_PENDING_MAX` bodies still coming and
/// none arriving for `BODIES_STALL` (1 s) is closed, long before that budget; one at the
/// bound is left to the budget. The exchange's own signed requests, whose bodies follow
/// their headers, are served as before, a hundred at once on one connection.
#[tokio::test]
async fn http2_requests_whose_bodies_never_come_are_bounded_per_connection() {
    use bidder_sdk::listener::{BODIES_PENDING_MAX, BODIES_STALL};
    let (client, addr, handle) = start(flat()).await;
    // `n` requests whose bodies never come, on one connection: how long it lived.
    // With `pings`, the client sends a PING every 200 ms meanwhile; with `trickle`, the
    // first stream's body comes a byte every 200 ms (the others' never).
    let bodiless = |n: u32, pings: bool, trickle: bool| async move {
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let mut builder =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        if pings {
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_millis(200))
                .keep_alive_while_idle(true);
        }
        let (send, conn) = builder.handshake(io).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let conn = tokio::spawn(conn);
        let mut calls = Vec::new();
        for i in 0..n {
            let mut send = send.clone();
            let body = if trickle && i == 0 {
                http_body_util::Either::Right(TrickleBody::new(
                    &[b' '; 40],
                    40,
                    Duration::from_millis(200),
                ))
            } else {
                http_body_util::Either::Left(NeverBody)
            };
            let req = http::Request::builder()
                .method(Method::POST)
                .uri(format!("http://{addr}/ping"))
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
            calls.push(tokio::spawn(async move { send.send_request(req).await }));
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), conn)
            .await
            .expect("the bidder ends the connection");
        for c in calls {
            c.abort();
        }
        t0.elapsed()
    };
    // Past the bound: closed once no body has come for BODIES_STALL; PINGs are not a
    // body's bytes (black-box round 114a: they held the streams for the body budget), nor
    // is one stream's body enough for the others (round 116a: a byte every 200 ms on one
    // stream held the other 255 for the body budget).
    for (pings, trickle) in [(false, false), (true, false), (false, true)] {
        let lived = bodiless(BODIES_PENDING_MAX + 8, pings, trickle).await;
        assert!(lived >= BODIES_STALL, "{lived:?}");
        assert!(
            lived < Duration::from_secs(4),
            "closed by the stall rule (PINGs {pings}, one body trickling {trickle}): {lived:?}"
        );
    }
    // At the bound: each body has its own budget (5 s), then the connection ends.
    let lived = bodiless(BODIES_PENDING_MAX, false, false).await;
    assert!(lived >= Duration::from_secs(4), "{lived:?}");
    // The exchange's signed pings are served, many at once on one HTTP/2 connection.
    let h2 = TestClient::new_http2(format!("http://{addr}"), secret());
    let mut pings = Vec::new();
    for _ in 0..100 {
        let c = h2.clone();
        pings.push(tokio::spawn(async move {
            c.ping(&sample_ping(&SampleLead::default())).await.unwrap()
        }));
    }
    for p in pings {
        assert_eq!(p.await.unwrap().raw.status, StatusCode::OK);
    }
    let r = client
        .ping(&sample_ping(&SampleLead::default()))
        .await
        .unwrap();
    assert_eq!(r.raw.status, StatusCode::OK);
    handle.shutdown().await.unwrap();
}

/// A body sent in `chunks`, one every `every` (the first after `every` too).
struct TrickleBody {
    chunks: std::collections::VecDeque<bytes::Bytes>,
    every: Duration,
    wait: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl TrickleBody {
    fn new(body: &[u8], pieces: usize, every: Duration) -> TrickleBody {
        let size = body.len().div_ceil(pieces);
        TrickleBody {
            chunks: body
                .chunks(size)
                .map(bytes::Bytes::copy_from_slice)
                .collect(),
            every,
            wait: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl hyper::body::Body for TrickleBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.chunks.is_empty() {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(std::future::Future::poll(self.wait.as_mut(), cx));
        let next = tokio::time::Instant::now() + self.every;
        self.wait.as_mut().reset(next);
        let chunk = self.chunks.pop_front().unwrap();
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// Black-box round 112a: more than `BODIES_PENDING_MAX` signed bodies that arrive slowly
/// (a piece every 250 ms, over 2 s, as on a slow link) had their connection closed after
/// 1 s with no answer, though the rule is for bodies of which nothing arrives. Bytes
/// arriving are their progress: every request is answered, on a connection kept.
#[tokio::test]
async fn http2_bodies_that_arrive_slowly_are_served() {
    use bidder_sdk::listener::{BODIES_PENDING_MAX, BODIES_STALL};
    let (_, addr, handle) = start(flat()).await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let signer = secret();
    let every = BODIES_STALL / 4;
    let mut calls = Vec::new();
    for n in 0..BODIES_PENDING_MAX + 8 {
        let body = ping_body();
        let id = format!("msg_slow_{n}");
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}/ping"))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signer.sign(&id, ts, &body))
            .body(TrickleBody::new(&body, 8, every))
            .unwrap();
        let mut send = send.clone();
        calls.push(tokio::spawn(async move {
            let resp = send.send_request(req).await.expect("an answer");
            resp.status()
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), StatusCode::OK);
    }
    assert!(!conn.is_finished(), "the connection is kept");
    handle.shutdown().await.unwrap();
}

/// `ServeOptions::h2_streams_per_connection_max` is what the server announces in its
/// HTTP/2 SETTINGS (`SETTINGS_MAX_CONCURRENT_STREAMS`): a bidder open to the internet can
/// lower what one connection holds (black-box round 112a).
#[tokio::test]
async fn the_http2_stream_bound_is_an_option() {
    let options = ServeOptions {
        h2_streams_per_connection_max: 4,
        ..ServeOptions::new(secret())
    };
    let (addr, handle) = spawn(flat(), options).await.unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 4, "a SETTINGS frame first: {head:?}");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let max_streams = payload
        .chunks(6)
        .find(|p| p[..2] == [0, 3])
        .map(|p| u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
    assert_eq!(max_streams, Some(4), "{payload:?}");
    handle.shutdown().await.unwrap();
}

/// RFC 9112 3.2, as the exchange's listeners have it: an HTTP/1.1 request without
/// exactly one valid `Host` is `400 invalid_request` and its connection closes, even when
/// signed; the bidder never sees it (black-box round 131b: each was bid on).
#[tokio::test]
async fn a_request_without_one_valid_host_is_refused_before_the_bidder() {
    let bidder = flat();
    let (_client, addr, handle) = start(Arc::clone(&bidder)).await;
    let body = ping_body();
    let raw = |hosts: &[&str], id: &str| {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut head = String::from("POST /ping HTTP/1.1\r\n");
        for h in hosts {
            head.push_str(&format!("Host: {h}\r\n"));
        }
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nwebhook-id: {id}\r\nwebhook-timestamp: {now_s}\r\nwebhook-signature: {}\r\nConnection: close\r\n\r\n",
            body.len(),
            secret().sign(id, now_s, &body)
        ));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    };
    for (i, (hosts, said)) in [
        (&[][..], "needs a Host header"),
        (
            &["a.example", "b.example"][..],
            "one Host header, not several",
        ),
        (&["127.0.0.1:99999"][..], "not a host and port"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, text) = raw_http1(addr, &raw(hosts, &format!("msg_host_{i}"))).await;
        assert_eq!(status, 400, "{hosts:?}: {text}");
        assert!(
            text.contains("\"invalid_request\"") && text.contains(said),
            "{text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    assert_eq!(bidder.pings_received(), 0);
    let (status, text) = raw_http1(addr, &raw(&["127.0.0.1"], "msg_host_ok")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(bidder.pings_received(), 1);
    handle.shutdown().await.unwrap();
}
