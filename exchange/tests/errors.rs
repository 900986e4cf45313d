//! Every error of the contract's error table that the exchange produces, over real
//! sockets: status, the contract's JSON body, and that the refused request changed
//! nothing (no buyer pinged, no quote, no reservation, no ledger line).
//!
//! The cases are one table ([`cases`]). The runner executes every row, each in a task of
//! its own so that even a panicking helper fails only its row, collects every mismatch
//! and fails once at the end, naming each failing row.
//!
//! What a row's request may change is checked around it: the buyer's ping count, the
//! open quotes and the buyer's reservations must be the same after the refusal as before
//! it. Rows on the shared exchange also check the ledger: a direct sale before the row
//! and one after it (the ledger is written in order and a sale is durable once answered)
//! must be the only records between them.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bidder_sdk::ServerHandle;
use bytes::Bytes;
use common::*;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method};
use proto::seller::{PingAnswer, PingStatus, PostAnswer, PostStatus};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The table.

/// One seller request, as the row sends it.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    path: &'static str,
    /// Bearer key.
    key: Option<&'static str>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Req {
    /// A POST with the main seller's key and an empty JSON body.
    fn post(path: &'static str) -> Req {
        Req {
            method: Method::POST,
            path,
            key: Some(SELLER_KEY),
            content_type: Some("application/json"),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A request without key, type or body.
    fn bare(method: Method, path: &'static str) -> Req {
        Req {
            method,
            path,
            key: None,
            content_type: None,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn json(self, v: Value) -> Req {
        self.bytes(v.to_string().as_bytes())
    }

    fn bytes(mut self, b: &[u8]) -> Req {
        self.body = b.to_vec();
        self
    }

    fn key(mut self, key: Option<&'static str>) -> Req {
        self.key = key;
        self
    }

    fn content_type(mut self, ct: Option<&'static str>) -> Req {
        self.content_type = ct;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Req {
        self.headers.push((name, value.into()));
        self
    }

    async fn send(&self, c: &SellerClient) -> Reply {
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        c.send(
            self.method.clone(),
            self.path,
            self.key,
            self.content_type,
            &headers,
            self.body.clone(),
        )
        .await
    }
}

/// How a row's request goes out.
#[derive(Debug, Clone)]
enum Wire {
    Http(Req),
    /// Written as is on a fresh connection: what a well-behaved client would not send.
    Raw(Vec<u8>),
}

/// What runs before a row's request.
#[derive(Debug, Clone)]
enum Setup {
    /// The exchange shared by the stateless rows; nothing before the request.
    Shared,
    /// A fresh exchange; these requests go first and must each be answered 200. In the
    /// row's body, [`PING_ID`] becomes the `ping_id` the last of them was answered with.
    After(Vec<Req>),
    /// A fresh exchange whose buyer holds its answers, with one `/v1/ping` (main seller,
    /// these extra headers) in flight at the buyer. `one_slot` lets the exchange take one
    /// request at a time. After the row, the buyer answers: the held ping must then be
    /// answered `bid` and be the only one to have left a quote.
    HeldPing {
        one_slot: bool,
        headers: Vec<(&'static str, String)>,
    },
}

/// A check beyond status, code and body shape.
#[derive(Debug, Clone)]
enum Check {
    /// The error's `fields` name at least these paths.
    Fields(&'static [&'static str]),
    /// This text appears nowhere in the answer (PII is never echoed).
    NotEchoed(&'static str),
    /// The error's message mentions this (case-insensitive).
    MessageMentions(&'static str),
    /// The answer has this header with exactly this value.
    Header(&'static str, &'static str),
    /// `Retry-After` is a whole number of seconds, at least 1.
    RetryAfterSeconds,
    /// The answer has no such header.
    NoHeader(&'static str),
}

/// One row: a refused request and what the refusal must look like.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    setup: Setup,
    wire: Wire,
    status: u16,
    code: &'static str,
    checks: Vec<Check>,
    /// After the refusal, these must each be answered 200 `bid` with a new `ping_id`
    /// (the exchange still serves, and what was refused did not spill over).
    then: Vec<Req>,
}

/// Stands for the `ping_id` of the quote an [`Setup::After`] ping opened.
const PING_ID: &str = "$PING_ID";

fn row(name: &'static str, req: Req, status: u16, code: &'static str) -> Case {
    Case {
        name,
        setup: Setup::Shared,
        wire: Wire::Http(req),
        status,
        code,
        checks: Vec::new(),
        then: Vec::new(),
    }
}

fn raw_row(name: &'static str, request: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case {
        wire: Wire::Raw(request),
        ..row(name, Req::bare(Method::GET, "/"), status, code)
    }
}

impl Case {
    fn fields(self, fields: &'static [&'static str]) -> Case {
        self.check(Check::Fields(fields))
    }

    fn check(mut self, c: Check) -> Case {
        self.checks.push(c);
        self
    }

    fn setup(mut self, s: Setup) -> Case {
        self.setup = s;
        self
    }

    fn then(mut self, r: Req) -> Case {
        self.then.push(r);
        self
    }

    /// The row with [`PING_ID`] in its request's body replaced by `ping_id`.
    fn with_ping_id(&self, ping_id: &str) -> Case {
        let mut case = self.clone();
        if let Wire::Http(r) = &mut case.wire {
            if let Ok(text) = std::str::from_utf8(&r.body) {
                r.body = text.replace(PING_ID, ping_id).into_bytes();
            }
        }
        case
    }
}

fn ping() -> Req {
    Req::post("/v1/ping")
}

fn ping_tx() -> Req {
    ping().json(ping_body("TX"))
}

/// Every error row. Rows marked "added" are contract errors the exchange already
/// produced that had no test before the table.
fn cases() -> Vec<Case> {
    let mut pii = ping_body("TX");
    pii["lead"]["email"] = json!("ana@example.com");
    pii["lead"]["phone"] = json!("+18175550123");
    let content_length_head = format!(
        "POST /v1/ping HTTP/1.1\r\nHost: pingpost\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
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
    // A valid ping, chunked: refused for its framing alone.
    let valid = ping_body("TX").to_string();
    let valid_chunked = format!("{:x}\r\n{valid}\r\n0\r\n\r\n", valid.len());

    vec![
        // 400 invalid_request: malformed JSON, wrong types, several problems at once.
        row(
            "ping: malformed JSON",
            ping().bytes(b"{\"vertical\": \"auto_"),
            400,
            "invalid_request",
        ),
        row("ping: empty body", ping(), 400, "invalid_request"),
        row(
            "ping: a JSON array",
            ping().bytes(b"[1, 2]"),
            400,
            "invalid_request",
        ),
        row(
            "ping: vertical of the wrong type",
            ping().json(json!({"vertical": 7, "lead": []})),
            400,
            "invalid_request",
        )
        .fields(&["vertical"]),
        row(
            "ping: several problems at once, all listed",
            ping().json(json!({
                "vertical": VERTICAL,
                "lead": {"state": "XX", "zip": "1234", "age": "forty", "credit": "superb"},
                "min_price": "cheap",
            })),
            400,
            "invalid_request",
        )
        .fields(&[
            "min_price",
            "lead.state",
            "lead.zip",
            "lead.age",
            "lead.credit",
        ]),
        row(
            "ping: integers past 64 bits get their fields' range errors, not malformed JSON (added)",
            ping().bytes(
                br#"{"vertical": "auto_insurance", "lead": {"state": "TX", "zip": "75001", "age": 100000000000000000000000}, "min_price": 18446744073709551616}"#,
            ),
            400,
            "invalid_request",
        )
        .fields(&["min_price", "lead.age"]),
        row(
            "ping: required lead fields missing",
            ping().json(json!({"vertical": VERTICAL, "lead": {"age": 42}})),
            400,
            "invalid_request",
        )
        .fields(&["lead.state", "lead.zip"]),
        row(
            "ping: unknown vertical",
            ping().json(json!({"vertical": "boats", "lead": {}})),
            400,
            "invalid_request",
        )
        .fields(&["vertical"]),
        row(
            "post: no ping_id, lead not an object",
            Req::post("/v1/post").json(json!({"lead": 5})),
            400,
            "invalid_request",
        )
        .fields(&["ping_id"]),
        row(
            "post: an unknown field and the lead's problems, all listed (added)",
            Req::post("/v1/post").json(json!({
                "ping_id": PING_ID,
                "lead": {"state": "TX", "zip": "76180", "phone": "555", "email": "bad",
                         "birth_date": "2020-02-30"},
                "x": 1,
            })),
            400,
            "invalid_request",
        )
        .setup(Setup::After(vec![ping_tx()]))
        .fields(&[
            "x",
            "lead.first_name",
            "lead.last_name",
            "lead.phone",
            "lead.email",
            "lead.birth_date",
        ]),
        // Round 191b: a blank required name sold.
        row(
            "post: required names sent blank (added)",
            Req::post("/v1/post").json(json!({
                "ping_id": PING_ID,
                "lead": {"state": "TX", "zip": "76180", "first_name": "", "last_name": " \u{200B} ",
                         "phone": "+18175550123"},
            })),
            400,
            "invalid_request",
        )
        .setup(Setup::After(vec![ping_tx()]))
        .fields(&["lead.first_name", "lead.last_name"]),
        row(
            "post: an unknown field and a lead that is not an object (added)",
            Req::post("/v1/post").json(json!({"ping_id": PING_ID, "lead": "x", "x": 1})),
            400,
            "invalid_request",
        )
        .setup(Setup::After(vec![ping_tx()]))
        .fields(&["x", "lead"]),
        // A lead that is not an object, alone, is the envelope's problem whatever the
        // ping_id (black-box round 104a: for a ping_id of no open quote it was answered
        // `404 unknown ping_id`, and the seller never heard its lead was wrong).
        row(
            "post: a lead that is not an object, alone, for an unknown ping_id (added)",
            Req::post("/v1/post")
                .json(json!({"ping_id": "pg_00000000000000000000000000000000", "lead": [1]})),
            400,
            "invalid_request",
        )
        .fields(&["lead"]),
        row(
            "post: a lead sent as a JSON string, for an open quote (added)",
            Req::post("/v1/post").json(json!({"ping_id": PING_ID, "lead": "{\"zip\":\"76180\"}"})),
            400,
            "invalid_request",
        )
        .setup(Setup::After(vec![ping_tx()]))
        .fields(&["lead"]),
        row(
            "ping: unknown vertical and a lead that is not an object (added)",
            ping().json(json!({"vertical": "boats", "lead": "x"})),
            400,
            "invalid_request",
        )
        .fields(&["vertical", "lead"]),
        row(
            "ping: vertical not a string and a lead that is not an object (added)",
            ping().json(json!({"vertical": 5, "lead": "x"})),
            400,
            "invalid_request",
        )
        .fields(&["vertical", "lead"]),
        row(
            "post: malformed JSON (added)",
            Req::post("/v1/post").bytes(b"{\"ping_id\": "),
            400,
            "invalid_request",
        ),
        row(
            "leads: a direct post without the whole lead",
            Req::post("/v1/leads").json(ping_body("TX")),
            400,
            "invalid_request",
        )
        .fields(&["lead.first_name", "lead.last_name", "lead.phone"]),
        row(
            "ping: Idempotency-Key over 255 characters",
            ping_tx().header("Idempotency-Key", "k".repeat(256)),
            400,
            "invalid_request",
        ),
        // 400 pii_in_ping, with every PII field named and none echoed.
        row(
            "ping: PII in the lead",
            ping().json(pii),
            400,
            "pii_in_ping",
        )
        .fields(&["lead.email", "lead.phone"])
        .check(Check::NotEchoed("ana@example.com")),
        // 401: no key, an unknown key, not a bearer key.
        row("ping: no key", ping_tx().key(None), 401, "unauthorized"),
        row(
            "ping: unknown key",
            ping_tx().key(Some("not-a-seller")),
            401,
            "unauthorized",
        ),
        row(
            "ping: a second Authorization header after the seller's key (added)",
            ping_tx().header("authorization", "Bearer not-a-seller"),
            401,
            "unauthorized",
        ),
        row(
            "ping: two Idempotency-Key headers (added)",
            ping_tx()
                .header("Idempotency-Key", "key-a")
                .header("Idempotency-Key", "key-b"),
            400,
            "invalid_request",
        ),
        row(
            "ping: a lone UTF-16 surrogate escape (simd-json would read it as NUL) (added)",
            ping().bytes(
                ping_body("TX")
                    .to_string()
                    .replacen('{', r#"{"source":{"sub_id":"A\ud800B"},"#, 1)
                    .as_bytes(),
            ),
            400,
            "invalid_request",
        ),
        row(
            "ping: a lead field named twice, TX then CA (added)",
            ping().bytes(
                ping_body("TX")
                    .to_string()
                    .replacen(r#""state":"TX""#, r#""state":"TX","state":"CA""#, 1)
                    .as_bytes(),
            ),
            400,
            "invalid_request",
        ),
        row(
            "ping: a gzip Content-Encoding (added)",
            ping_tx().header("content-encoding", "gzip"),
            415,
            "unsupported_media_type",
        ),
        row(
            "ping: a charset other than UTF-8 (added)",
            ping_tx().content_type(Some("application/json; charset=latin1")),
            415,
            "unsupported_media_type",
        ),
        row(
            "ping: Basic instead of Bearer",
            ping_tx()
                .key(None)
                .header("authorization", "Basic c2VsbGVyOmtleQ=="),
            401,
            "unauthorized",
        ),
        // Black-box round 136b: a key can be hashed in any characters, but a header
        // carries visible ASCII only; the 401 says so.
        raw_row(
            "ping: a key in other characters than visible ASCII (added)",
            "POST /v1/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_\u{fc}n\u{ef}code_key\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                .as_bytes()
                .to_vec(),
            401,
            "unauthorized",
        )
        .check(Check::MessageMentions("visible ASCII"))
        .check(Check::Header("www-authenticate", "Bearer")),
        row(
            "post: no key",
            Req::post("/v1/post")
                .json(post_body("pg_x", "TX"))
                .key(None),
            401,
            "unauthorized",
        ),
        row(
            "leads: no key (added)",
            Req::post("/v1/leads").json(direct_body("TX")).key(None),
            401,
            "unauthorized",
        ),
        // 403: a valid key, not for this vertical.
        row(
            "ping: key not for this vertical",
            ping_tx().key(Some(SOLAR_ONLY_KEY)),
            403,
            "forbidden",
        ),
        row(
            "leads: key not for this vertical",
            Req::post("/v1/leads")
                .json(direct_body("TX"))
                .key(Some(SOLAR_ONLY_KEY)),
            403,
            "forbidden",
        ),
        // 404: unknown route, unknown ping_id.
        row(
            "unknown route",
            Req::post("/v1/nope").json(ping_body("TX")),
            404,
            "not_found",
        ),
        row(
            "GET / (unknown route)",
            Req::bare(Method::GET, "/"),
            404,
            "not_found",
        ),
        row(
            "post: unknown ping_id",
            Req::post("/v1/post").json(post_body("pg_0000000000000000000000000000000", "TX")),
            404,
            "not_found",
        )
        .check(Check::MessageMentions("answered no_bid")),
        // 405 is not in the contract's table, but an added code keeps the body shape, and
        // says what is allowed.
        row(
            "GET on a POST route",
            Req::bare(Method::GET, "/v1/ping").key(Some(SELLER_KEY)),
            405,
            "method_not_allowed",
        )
        .check(Check::Header("allow", "POST")),
        row(
            "POST on a GET route (added)",
            Req::bare(Method::POST, "/healthz"),
            405,
            "method_not_allowed",
        )
        .check(Check::Header("allow", "GET, HEAD")),
        // RFC 9112 3.2: an HTTP/1.1 request carries exactly one Host (black-box round 9).
        raw_row(
            "ping: HTTP/1.1 without Host (added)",
            format!(
                "POST /v1/ping HTTP/1.1\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        raw_row(
            "ping: a Host that is not a host and port (added)",
            format!(
                "POST /v1/ping HTTP/1.1\r\nHost: a@b:99999\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        raw_row(
            "ping: HTTP/1.1 with two Host headers (added)",
            format!(
                "POST /v1/ping HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        // RFC 9112 6.1: the one transfer coding taken is chunked, once; hyper read
        // `gzip, chunked` as chunked and took `chunked, chunked` (black-box round 12).
        raw_row(
            "ping: Transfer-Encoding gzip, chunked (added)",
            format!(
                "POST /v1/ping HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n{valid_chunked}"
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        raw_row(
            "ping: Transfer-Encoding chunked twice (added)",
            format!(
                "POST /v1/ping HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {SELLER_KEY}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{valid_chunked}"
            )
            .into_bytes(),
            400,
            "invalid_request",
        ),
        // 413, refused from the Content-Length alone: only the head is ever sent.
        raw_row(
            "ping: Content-Length over the limit",
            content_length_head,
            413,
            "payload_too_large",
        ),
        // And a body over the limit without a Content-Length (chunked) is cut off too.
        raw_row(
            "ping: chunked body over the limit",
            chunked,
            413,
            "payload_too_large",
        ),
        // 415: not JSON, or no type at all.
        row(
            "ping: text/plain",
            ping_tx().content_type(Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        row(
            "ping: no content type",
            ping_tx().content_type(None),
            415,
            "unsupported_media_type",
        ),
        row(
            "post: a form",
            Req::post("/v1/post")
                .content_type(Some("application/x-www-form-urlencoded"))
                .bytes(b"ping_id=pg_1"),
            415,
            "unsupported_media_type",
        ),
        row(
            "ping: Content-Type application/json, then text/plain (added)",
            ping_tx().header("content-type", "text/plain"),
            415,
            "unsupported_media_type",
        )
        .check(Check::MessageMentions("one Content-Type")),
        row(
            "ping: Content-Type text/plain, then application/json (added)",
            ping_tx()
                .content_type(Some("text/plain"))
                .header("content-type", "application/json"),
            415,
            "unsupported_media_type",
        )
        .check(Check::MessageMentions("one Content-Type")),
        row(
            "ping: Content-Type application/json twice (added)",
            ping_tx().header("content-type", "application/json"),
            415,
            "unsupported_media_type",
        ),
        row(
            "post: two Content-Type headers (added)",
            Req::post("/v1/post")
                .json(post_body(PING_ID, "TX"))
                .header("content-type", "text/plain"),
            415,
            "unsupported_media_type",
        )
        .setup(Setup::After(vec![ping_tx()])),
        row(
            "leads: two Content-Type headers (added)",
            Req::post("/v1/leads")
                .json(direct_body("TX"))
                .header("content-type", "text/plain"),
            415,
            "unsupported_media_type",
        ),
        row(
            "leads: text/plain (added)",
            Req::post("/v1/leads")
                .json(direct_body("TX"))
                .content_type(Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        // 409: an Idempotency-Key reused with another body. Keys belong to one seller:
        // another seller's identical key is its own.
        row(
            "ping: Idempotency-Key reused with another body",
            ping()
                .json(ping_body("OK"))
                .header("Idempotency-Key", "k-42"),
            409,
            "conflict",
        )
        .setup(Setup::After(vec![
            ping_tx().header("Idempotency-Key", "k-42")
        ]))
        .check(Check::MessageMentions("idempotency"))
        // Never ends by itself: no Retry-After (black-box round 210a).
        .check(Check::NoHeader("retry-after"))
        .then(
            ping_tx()
                .key(Some(THROTTLED_KEY))
                .header("Idempotency-Key", "k-42"),
        ),
        // 409: the same key and body while the first is still in flight.
        row(
            "ping: Idempotency-Key of a request still in flight (added)",
            ping_tx().header("Idempotency-Key", "k-7"),
            409,
            "conflict",
        )
        .setup(Setup::HeldPing {
            one_slot: false,
            headers: vec![("Idempotency-Key", "k-7".to_string())],
        })
        .check(Check::MessageMentions("in flight"))
        // Ends by itself: Retry-After says so (black-box round 210a).
        .check(Check::RetryAfterSeconds),
        // 409: the same key with another body while the first is still in flight: retry
        // after it, since the first may still fail and free the key (black-box round
        // 221b: told "never succeeds", the request then sold when sent again).
        row(
            "ping: Idempotency-Key of a request still in flight, another body (added)",
            ping()
                .json(ping_body("OK"))
                .header("Idempotency-Key", "k-8"),
            409,
            "conflict",
        )
        .setup(Setup::HeldPing {
            one_slot: false,
            headers: vec![("Idempotency-Key", "k-8".to_string())],
        })
        .check(Check::MessageMentions("in flight"))
        .check(Check::RetryAfterSeconds),
        // 429: a seller over its rate (rate_per_s = 1: the next request in the same second
        // is refused). Other sellers are not limited by it.
        row(
            "ping: seller over its rate",
            ping_tx().key(Some(THROTTLED_KEY)),
            429,
            "rate_limited",
        )
        .setup(Setup::After(vec![ping_tx().key(Some(THROTTLED_KEY))]))
        .check(Check::RetryAfterSeconds)
        .then(ping_tx()),
        // 503: past requests_in_flight_max the exchange sheds; with the slot free again,
        // the next request is served.
        row(
            "ping: past requests_in_flight_max",
            ping_tx(),
            503,
            "overloaded",
        )
        .setup(Setup::HeldPing {
            one_slot: true,
            headers: Vec::new(),
        })
        .check(Check::RetryAfterSeconds)
        .then(ping_tx()),
    ]
}

/// Error cases before the table (29 error assertions in 4 tests); every one is a row.
const ROWS_BEFORE_THE_TABLE: usize = 29;

// ---------------------------------------------------------------------------------------
// The runner.

#[tokio::test]
async fn every_error_of_the_contract_table_is_the_contract_error_and_changes_nothing() {
    let shared = Arc::new(Fixture::start(Fixture::config(false)).await);
    let cases = cases();
    let added = cases.iter().filter(|c| c.name.ends_with("(added)")).count();
    assert_eq!(
        cases.len() - added,
        ROWS_BEFORE_THE_TABLE,
        "a row went missing"
    );
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "row names must be unique");
    let total = cases.len();
    let mut failures = String::new();
    let mut failed = 0;
    for case in cases {
        let name = case.name;
        let problems = match tokio::spawn(run_case(shared.clone(), case)).await {
            Ok(problems) => problems,
            Err(e) => vec![format!("panicked: {}", panic_text(e))],
        };
        if !problems.is_empty() {
            failed += 1;
            let _ = writeln!(failures, "- {name}:");
            for p in problems {
                let _ = writeln!(failures, "    {p}");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{failed} of {total} rows failed:\n{failures}"
    );
}

/// An exchange with one buyer `a` bidding 10.
struct Fixture {
    ex: Exchange,
    a: Arc<ScriptedBidder>,
    _bidder: ServerHandle,
}

impl Fixture {
    /// The test configuration; `held`: the buyer may hold a ping for seconds without the
    /// auction giving up on it.
    fn config(held: bool) -> impl FnOnce(TestBuyer) -> TestConfig {
        move |b| {
            if held {
                TestConfig::new()
                    .buyer(b.ping_timeout_ms(5_000))
                    .with(|c| c.auction_deadline_ms = 6_000)
            } else {
                TestConfig::new().buyer(b)
            }
        }
    }

    async fn start(config: impl FnOnce(TestBuyer) -> TestConfig) -> Fixture {
        let a = ScriptedBidder::bidding(10.0);
        let (ab, handle) = serve("a", &a).await;
        let ex = config(ab).start().await;
        Fixture {
            ex,
            a,
            _bidder: handle,
        }
    }
}

/// What a refused request must not change.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    buyer_pings: u64,
    quotes_open: usize,
    reserved: u32,
}

impl Snapshot {
    fn take(f: &Fixture) -> Snapshot {
        Snapshot {
            buyer_pings: f.a.pings(),
            quotes_open: f.ex.quotes_open(),
            reserved: f.ex.reserved("a"),
        }
    }
}

/// Runs one row; returns its problems (none: it passed).
async fn run_case(shared: Arc<Fixture>, case: Case) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ping_ids = BTreeSet::new();
    match &case.setup {
        Setup::Shared => refuse(&shared, &case, true, &mut problems).await,
        Setup::After(before) => {
            let f = Fixture::start(Fixture::config(false)).await;
            let mut last_ping_id = None;
            for r in before {
                let reply = r.send(&f.ex.client).await;
                if reply.status != 200 {
                    problems.push(format!(
                        "setup {} {}: expected 200, got {}: {}",
                        r.method,
                        r.path,
                        reply.status,
                        short(&reply.text())
                    ));
                    return problems;
                }
                if let Ok(a) = serde_json::from_slice::<PingAnswer>(&reply.body) {
                    last_ping_id = Some(a.ping_id.clone());
                    ping_ids.insert(a.ping_id);
                }
            }
            let case = match &last_ping_id {
                Some(id) => case.with_ping_id(id),
                None => case.clone(),
            };
            refuse(&f, &case, false, &mut problems).await;
            then(&f, &case, &mut ping_ids, &mut problems).await;
        }
        Setup::HeldPing { one_slot, headers } => {
            let one_slot = *one_slot;
            let f = Fixture::start(move |b| {
                Fixture::config(true)(b).with(|c| {
                    if one_slot {
                        c.requests_in_flight_max = 1;
                    }
                })
            })
            .await;
            f.a.close();
            let mut held = ping_tx();
            held.headers.clone_from(headers);
            let client = f.ex.client.clone();
            let in_flight = tokio::spawn(async move { held.send(&client).await });
            f.a.wait_pings(1).await;
            let quotes_before = f.ex.quotes_open();
            refuse(&f, &case, false, &mut problems).await;
            f.a.open();
            match in_flight.await {
                Ok(reply) => match serde_json::from_slice::<PingAnswer>(&reply.body) {
                    Ok(a) if reply.status == 200 && a.status == PingStatus::Bid => {
                        ping_ids.insert(a.ping_id);
                    }
                    _ => problems.push(format!(
                        "the held ping: expected 200 bid, got {}: {}",
                        reply.status,
                        short(&reply.text())
                    )),
                },
                Err(e) => problems.push(format!("the held ping panicked: {}", panic_text(e))),
            }
            let quotes = f.ex.quotes_open();
            if quotes != quotes_before + 1 {
                problems.push(format!(
                    "only the held ping should have left a quote: {quotes_before} open \
                     before, {quotes} after"
                ));
            }
            then(&f, &case, &mut ping_ids, &mut problems).await;
        }
    }
    problems
}

/// Sends the row's request and checks the refusal and that it changed nothing.
async fn refuse(f: &Fixture, case: &Case, ledger: bool, problems: &mut Vec<String>) {
    let ledger_len = if ledger {
        if !sale(f, "before", problems).await {
            return;
        }
        f.ex.ledger().len()
    } else {
        0
    };
    let before = Snapshot::take(f);
    let reply = match &case.wire {
        Wire::Http(r) => r.send(&f.ex.client).await,
        Wire::Raw(bytes) => raw_reply(f, bytes).await,
    };
    check_reply(&reply, case, problems);
    let after = Snapshot::take(f);
    if after != before {
        problems.push(format!(
            "the refused request changed state: {before:?} -> {after:?}"
        ));
    }
    if ledger && sale(f, "after", problems).await {
        let kinds: Vec<String> = f.ex.ledger()[ledger_len..]
            .iter()
            .map(|r| r["type"].as_str().unwrap_or("?").to_string())
            .collect();
        if kinds != ["auction", "post_sent", "sale"] {
            problems.push(format!(
                "ledger records between the sales before and after it: {kinds:?}, \
                 expected only the second sale's [\"auction\", \"post_sent\", \"sale\"]"
            ));
        }
    }
}

/// A direct sale, answered only once its records are on disk; false if it did not sell.
async fn sale(f: &Fixture, when: &str, problems: &mut Vec<String>) -> bool {
    let reply = Req::post("/v1/leads")
        .json(direct_body("TX"))
        .send(&f.ex.client)
        .await;
    match serde_json::from_slice::<PostAnswer>(&reply.body) {
        Ok(a) if reply.status == 200 && a.status == PostStatus::Sold => true,
        _ => {
            problems.push(format!(
                "the direct sale {when} the request did not sell: {} {}",
                reply.status,
                short(&reply.text())
            ));
            false
        }
    }
}

/// The row's follow-up requests: each 200 `bid` with a `ping_id` not seen in this row.
async fn then(f: &Fixture, case: &Case, seen: &mut BTreeSet<String>, problems: &mut Vec<String>) {
    for r in &case.then {
        let reply = r.send(&f.ex.client).await;
        match serde_json::from_slice::<PingAnswer>(&reply.body) {
            Ok(a) if reply.status == 200 && a.status == PingStatus::Bid => {
                if !seen.insert(a.ping_id.clone()) {
                    problems.push(format!(
                        "afterwards, {} {} with key {:?}: ping_id {:?} is not a new one",
                        r.method, r.path, r.key, a.ping_id
                    ));
                }
            }
            _ => problems.push(format!(
                "afterwards, {} {} with key {:?}: expected 200 bid, got {}: {}",
                r.method,
                r.path,
                r.key,
                reply.status,
                short(&reply.text())
            )),
        }
    }
}

/// Writes `request` on a fresh connection and parses the answer into a [`Reply`].
async fn raw_reply(f: &Fixture, request: &[u8]) -> Reply {
    let (text, _) = raw_exchange(f.ex.addr, request, Duration::from_secs(5)).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut headers = HeaderMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.trim().as_bytes()),
                HeaderValue::from_str(v.trim()),
            ) {
                headers.append(k, v);
            }
        }
    }
    Reply {
        status,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

/// The contract's error body with the row's status and code, then the row's checks.
fn check_reply(reply: &Reply, case: &Case, problems: &mut Vec<String>) {
    let text = reply.text();
    if reply.status != case.status {
        problems.push(format!(
            "expected {} {}, got {}: {}",
            case.status,
            case.code,
            reply.status,
            short(&text)
        ));
    }
    let ct = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        problems.push(format!("content type {ct:?}, expected application/json"));
    }
    let error = match serde_json::from_slice::<Value>(&reply.body) {
        Ok(v) => v["error"].clone(),
        Err(e) => {
            problems.push(format!("the body is not JSON ({e}): {}", short(&text)));
            Value::Null
        }
    };
    if error["code"] != case.code {
        problems.push(format!("code {}, expected {:?}", error["code"], case.code));
    }
    if error["message"].as_str().is_none_or(str::is_empty) {
        problems.push(format!("error without a message: {error}"));
    }
    if let Some(fields) = error.get("fields") {
        match fields.as_array() {
            Some(fields) => {
                for f in fields {
                    if !(f["field"].is_string() && f["problem"].is_string()) {
                        problems.push(format!("bad `fields` entry: {f}"));
                    }
                }
            }
            None => problems.push(format!("`fields` is not a list: {fields}")),
        }
    }
    for check in &case.checks {
        match check {
            Check::Fields(expected) => {
                let got: BTreeSet<&str> = error["fields"]
                    .as_array()
                    .map(|fs| fs.iter().filter_map(|f| f["field"].as_str()).collect())
                    .unwrap_or_default();
                let missing: Vec<&str> = expected
                    .iter()
                    .copied()
                    .filter(|f| !got.contains(f))
                    .collect();
                if !missing.is_empty() {
                    problems.push(format!("`fields` should list {missing:?}: {error}"));
                }
            }
            Check::NotEchoed(s) => {
                let headers = format!("{:?}", reply.headers);
                if text.contains(s) || headers.contains(s) {
                    problems.push(format!("the answer echoes {s:?}"));
                }
            }
            Check::MessageMentions(s) => {
                let m = error["message"].as_str().unwrap_or("").to_lowercase();
                if !m.contains(&s.to_lowercase()) {
                    problems.push(format!("the message should mention {s:?}: {error}"));
                }
            }
            Check::Header(name, value) => {
                let got = reply.headers.get(*name).and_then(|v| v.to_str().ok());
                if got != Some(*value) {
                    problems.push(format!("header {name}: {got:?}, expected {value:?}"));
                }
            }
            Check::NoHeader(name) => {
                if let Some(v) = reply.headers.get(*name) {
                    problems.push(format!("{name}: {v:?}, expected none"));
                }
            }
            Check::RetryAfterSeconds => {
                let got = reply
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok());
                let seconds = got.and_then(|v| v.parse::<u64>().ok());
                if seconds.is_none_or(|s| s < 1) {
                    problems.push(format!("Retry-After: {got:?}, expected whole seconds >= 1"));
                }
            }
        }
    }
}

/// At most 300 characters of an answer, for a failure message.
fn short(text: &str) -> String {
    let mut s: String = text.chars().take(300).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}
