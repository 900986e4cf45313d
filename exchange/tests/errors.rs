//! Every error of the contract's error table that the exchange produces, over real
//! sockets: status, the contract's JSON body, and that the refused request changed
//! nothing (no buyer pinged, no quote, no ledger line).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{header, Method};
use proto::seller::{PingStatus, PostStatus};
use serde_json::{json, Value};

fn field_names(error: &Value) -> BTreeSet<String> {
    error["fields"]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| f["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_fields(error: &Value, expected: &[&str]) {
    let got = field_names(error);
    for f in expected {
        assert!(got.contains(*f), "`fields` should list {f}: {error}");
    }
}

#[tokio::test]
async fn refused_requests_get_the_contract_error_and_change_nothing() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;
    let c = &ex.client;
    let json_ct = Some("application/json");
    let send = |path: &'static str,
                key: Option<&'static str>,
                ct: Option<&'static str>,
                body: Vec<u8>| async move {
        c.send(Method::POST, path, key, ct, &[], body).await
    };
    let bytes = |v: Value| serde_json::to_vec(&v).unwrap();

    // 400 invalid_request: malformed JSON, wrong types, several problems at once.
    send(
        "/v1/ping",
        Some(SELLER_KEY),
        json_ct,
        b"{\"vertical\": \"auto_".to_vec(),
    )
    .await
    .assert_error(400, "invalid_request");
    send("/v1/ping", Some(SELLER_KEY), json_ct, Vec::new())
        .await
        .assert_error(400, "invalid_request");
    send("/v1/ping", Some(SELLER_KEY), json_ct, b"[1, 2]".to_vec())
        .await
        .assert_error(400, "invalid_request");
    let e = send(
        "/v1/ping",
        Some(SELLER_KEY),
        json_ct,
        bytes(json!({"vertical": 7, "lead": []})),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_fields(&e, &["vertical"]);
    let many = json!({
        "vertical": VERTICAL,
        "lead": {"state": "XX", "zip": "1234", "age": "forty", "credit": "superb"},
        "min_price": "cheap",
    });
    let e = send("/v1/ping", Some(SELLER_KEY), json_ct, bytes(many))
        .await
        .assert_error(400, "invalid_request");
    assert_fields(
        &e,
        &[
            "min_price",
            "lead.state",
            "lead.zip",
            "lead.age",
            "lead.credit",
        ],
    );
    let e = send(
        "/v1/ping",
        Some(SELLER_KEY),
        json_ct,
        bytes(json!({"vertical": VERTICAL, "lead": {"age": 42}})),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_fields(&e, &["lead.state", "lead.zip"]);
    let e = send(
        "/v1/ping",
        Some(SELLER_KEY),
        json_ct,
        bytes(json!({"vertical": "boats", "lead": {}})),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_fields(&e, &["vertical"]);
    let e = send(
        "/v1/post",
        Some(SELLER_KEY),
        json_ct,
        bytes(json!({"lead": 5})),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_fields(&e, &["ping_id"]);
    // A direct post must carry the whole lead.
    let e = send(
        "/v1/leads",
        Some(SELLER_KEY),
        json_ct,
        bytes(ping_body("TX")),
    )
    .await
    .assert_error(400, "invalid_request");
    assert_fields(&e, &["lead.first_name", "lead.last_name", "lead.phone"]);

    // 400 pii_in_ping, with every PII field named.
    let mut pii = ping_body("TX");
    pii["lead"]["email"] = json!("ana@example.com");
    pii["lead"]["phone"] = json!("+18175550123");
    let e = send("/v1/ping", Some(SELLER_KEY), json_ct, bytes(pii))
        .await
        .assert_error(400, "pii_in_ping");
    assert_fields(&e, &["lead.email", "lead.phone"]);
    assert!(
        !e.to_string().contains("ana@example.com"),
        "the error echoes PII: {e}"
    );

    // 401: no key, an unknown key, not a bearer key.
    send("/v1/ping", None, json_ct, bytes(ping_body("TX")))
        .await
        .assert_error(401, "unauthorized");
    send(
        "/v1/ping",
        Some("not-a-seller"),
        json_ct,
        bytes(ping_body("TX")),
    )
    .await
    .assert_error(401, "unauthorized");
    c.send(
        Method::POST,
        "/v1/ping",
        None,
        json_ct,
        &[("authorization", "Basic c2VsbGVyOmtleQ==")],
        bytes(ping_body("TX")),
    )
    .await
    .assert_error(401, "unauthorized");
    send("/v1/post", None, json_ct, bytes(post_body("pg_x", "TX")))
        .await
        .assert_error(401, "unauthorized");

    // 403: a valid key, not for this vertical.
    send(
        "/v1/ping",
        Some(SOLAR_ONLY_KEY),
        json_ct,
        bytes(ping_body("TX")),
    )
    .await
    .assert_error(403, "forbidden");
    send(
        "/v1/leads",
        Some(SOLAR_ONLY_KEY),
        json_ct,
        bytes(direct_body("TX")),
    )
    .await
    .assert_error(403, "forbidden");

    // 404: unknown route, unknown ping_id.
    send(
        "/v1/nope",
        Some(SELLER_KEY),
        json_ct,
        bytes(ping_body("TX")),
    )
    .await
    .assert_error(404, "not_found");
    c.get("/").await.assert_error(404, "not_found");
    send(
        "/v1/post",
        Some(SELLER_KEY),
        json_ct,
        bytes(post_body("pg_0000000000000000000000000000000", "TX")),
    )
    .await
    .assert_error(404, "not_found");
    // (405 is not in the contract's table, but an added code must keep the body shape.)
    c.send(
        Method::GET,
        "/v1/ping",
        Some(SELLER_KEY),
        None,
        &[],
        Bytes::new(),
    )
    .await
    .assert_error(405, "method_not_allowed");

    // 413 refused from the Content-Length alone: only the head is ever sent.
    let head = format!(
        "POST /v1/ping HTTP/1.1\r\nHost: pingpost\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n"
    );
    let (text, _) = raw_exchange(ex.addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(r#""code":"payload_too_large""#), "{text}");
    // And a body over the limit without a Content-Length (chunked) is cut off too.
    let mut chunked = format!(
        "POST /v1/ping HTTP/1.1\r\nHost: pingpost\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..5 {
        chunked.extend_from_slice(format!("{:x}\r\n", 16 * 1024).as_bytes());
        chunked.extend_from_slice(&[b' '; 16 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (text, _) = raw_exchange(ex.addr, &chunked, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");

    // 415: not JSON, or no type at all.
    send(
        "/v1/ping",
        Some(SELLER_KEY),
        Some("text/plain"),
        bytes(ping_body("TX")),
    )
    .await
    .assert_error(415, "unsupported_media_type");
    send("/v1/ping", Some(SELLER_KEY), None, bytes(ping_body("TX")))
        .await
        .assert_error(415, "unsupported_media_type");
    send(
        "/v1/post",
        Some(SELLER_KEY),
        Some("application/x-www-form-urlencoded"),
        b"ping_id=pg_1".to_vec(),
    )
    .await
    .assert_error(415, "unsupported_media_type");

    // None of that reached a buyer, opened a quote or wrote the ledger. A last request
    // that sells is durable, and the ledger is written in order, so once it is answered
    // every earlier record would be on disk too.
    assert_eq!(a.pings(), 0, "a refused request pinged a buyer");
    assert_eq!(ex.quotes_open(), 0, "a refused request opened a quote");
    assert_eq!(ex.reserved("a"), 0);
    let sold = c.direct("TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    let kinds: Vec<String> = ex
        .ledger()
        .iter()
        .map(|r| r["type"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        kinds,
        ["auction", "sale"],
        "only the last request left records"
    );
    assert_eq!(a.pings(), 1);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_body_is_a_conflict_that_changes_nothing() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;
    let key = [("Idempotency-Key", "k-42")];
    let first = ex
        .client
        .post_json_with("/v1/ping", SELLER_KEY, &key, &ping_body("TX"))
        .await
        .ping_answer();
    assert_eq!(first.status, PingStatus::Bid);
    let e = ex
        .client
        .post_json_with("/v1/ping", SELLER_KEY, &key, &ping_body("OK"))
        .await
        .assert_error(409, "conflict");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("idempotency"),
        "{e}"
    );
    assert_eq!(a.pings(), 1);
    assert_eq!(ex.quotes_open(), 1);
    assert_eq!(ex.reserved("a"), 1);
    // A key longer than 255 characters is refused outright.
    let long = "k".repeat(256);
    ex.client
        .post_json_with(
            "/v1/ping",
            SELLER_KEY,
            &[("Idempotency-Key", long.as_str())],
            &ping_body("TX"),
        )
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(a.pings(), 1);
    // Keys belong to one seller: another seller's identical key is its own.
    let other = ex
        .client
        .post_json_with("/v1/ping", THROTTLED_KEY, &key, &ping_body("TX"))
        .await
        .ping_answer();
    assert_eq!(other.status, PingStatus::Bid);
    assert_ne!(other.ping_id, first.ping_id);
}

#[tokio::test]
async fn a_seller_over_its_rate_gets_429_with_retry_after() {
    let a = ScriptedBidder::bidding(10.0);
    let (ab, _h) = serve("a", &a).await;
    let ex = TestConfig::new().buyer(ab).start().await;

    let ok = ex
        .client
        .post_json_with("/v1/ping", THROTTLED_KEY, &[], &ping_body("TX"))
        .await
        .ping_answer();
    assert_eq!(ok.status, PingStatus::Bid);
    // rate_per_s = 1: the next request in the same second is refused.
    let r = ex
        .client
        .post_json_with("/v1/ping", THROTTLED_KEY, &[], &ping_body("TX"))
        .await;
    r.assert_error(429, "rate_limited");
    let retry_after = r
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    assert_eq!(a.pings(), 1, "the refused ping reached no buyer");
    assert_eq!(ex.quotes_open(), 1);
    // Other sellers are not limited by it.
    assert_eq!(ex.client.ping("TX").await.status, PingStatus::Bid);
}

#[tokio::test]
async fn past_requests_in_flight_max_the_exchange_sheds_with_503() {
    let slow = ScriptedBidder::bidding(10.0);
    slow.close();
    let (sb, _h) = serve("slow", &slow).await;
    let ex = TestConfig::new()
        .buyer(sb.ping_timeout_ms(5_000))
        .with(|c| {
            c.requests_in_flight_max = 1;
            c.auction_deadline_ms = 6_000;
        })
        .start()
        .await;

    let client = ex.client.clone();
    let in_flight = tokio::spawn(async move { client.ping("TX").await });
    slow.wait_pings(1).await;

    let r = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
    r.assert_error(503, "overloaded");
    assert!(
        r.headers.contains_key(header::RETRY_AFTER),
        "503 without Retry-After"
    );
    assert_eq!(slow.pings(), 1, "the shed request pinged no buyer");

    slow.open();
    let first = in_flight.await.unwrap();
    assert_eq!(first.status, PingStatus::Bid, "{first:?}");
    assert_eq!(
        ex.quotes_open(),
        1,
        "only the request in flight left a quote"
    );
    // With the slot free again, the next request is served.
    assert_eq!(ex.client.ping("TX").await.status, PingStatus::Bid);
}
