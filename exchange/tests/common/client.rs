//! The seller-side HTTP client, the answers it reads, and raw-socket helpers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proto::seller::{PingAnswer, PostAnswer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{direct_body, ping_body, post_body, EVENT_WAIT_MAX, SELLER_KEY};

/// An HTTP answer, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text()))
    }

    /// Checks the contract's error body (`{"error": {"code", "message", ...}}`) with
    /// `status` and `code` and an `application/json` type, and returns the `error` object.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got: {}",
            self.text()
        );
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "content type {ct:?} for {}",
            self.text()
        );
        let v = self.json();
        let e = &v["error"];
        assert_eq!(e["code"], code, "{v}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {v}"
        );
        if let Some(fields) = e.get("fields") {
            for f in fields.as_array().expect("fields is a list") {
                assert!(
                    f["field"].is_string() && f["problem"].is_string(),
                    "bad field entry: {f}"
                );
            }
        }
        e.clone()
    }

    pub fn ping_answer(&self) -> PingAnswer {
        assert_eq!(self.status, 200, "ping answer: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a ping answer ({e}): {}", self.text()))
    }

    pub fn post_answer(&self) -> PostAnswer {
        assert_eq!(self.status, 200, "post answer: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a post answer ({e}): {}", self.text()))
    }
}

/// A seller's HTTP/1.1 client (hyper-util legacy). No pooling: each request has its own
/// connection, so nothing a test does to one request's connection leaks into the next.
#[derive(Debug, Clone)]
pub struct SellerClient {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl SellerClient {
    pub fn new(addr: SocketAddr) -> SellerClient {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        SellerClient { addr, client }
    }

    /// Sends a request; `key` is the bearer key, `content_type` the body's type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .expect("the exchange answers");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("whole body")
                .to_bytes();
            Reply {
                status,
                headers,
                body,
            }
        };
        tokio::time::timeout(EVENT_WAIT_MAX, call)
            .await
            .expect("the exchange answers in time")
    }

    /// POSTs JSON with the main seller's key.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_json_with(path, SELLER_KEY, &[], body).await
    }

    pub async fn post_json_with(
        &self,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        self.send(
            Method::POST,
            path,
            Some(key),
            Some("application/json"),
            headers,
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None, &[], Bytes::new())
            .await
    }

    /// `/v1/ping` for a lead in `state`, expecting a 200 answer.
    pub async fn ping(&self, state: &str) -> PingAnswer {
        self.post_json("/v1/ping", &ping_body(state))
            .await
            .ping_answer()
    }

    /// `/v1/post` of the full lead for `ping_id`, expecting a 200 answer.
    pub async fn post(&self, ping_id: &str, state: &str) -> PostAnswer {
        self.post_json("/v1/post", &post_body(ping_id, state))
            .await
            .post_answer()
    }

    /// `/v1/leads` (direct post), expecting a 200 answer.
    pub async fn direct(&self, state: &str) -> PostAnswer {
        self.post_json("/v1/leads", &direct_body(state))
            .await
            .post_answer()
    }
}

/// Writes `request` on a fresh connection and reads until a whole answer has arrived
/// (head and `Content-Length` body), the server closes the connection, or `wait` passes.
/// Returns what was read and whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_answer(&mut stream, wait).await
}

/// Reads one answer from `stream` (an open connection the caller keeps): until a whole
/// answer (head and `Content-Length` body) has arrived, the server closes the
/// connection, or `wait` passes. Returns what was read and whether the server closed.
pub async fn read_answer(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut answer = Vec::new();
    let mut closed = false;
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if is_complete_answer(&answer) {
                return;
            }
        }
    })
    .await;
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

/// Whether the server closes `stream` within `wait` (it reads and drops any bytes that
/// come first).
pub async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// The value of header `name` in a raw answer's head (`name` in lower case), if any.
pub fn head_value(answer: &str, name: &str) -> Option<String> {
    let head = answer.split("\r\n\r\n").next().unwrap_or("");
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_ascii_lowercase())
    })
}

fn is_complete_answer(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|len| bytes.len() >= head_end + 4 + len)
}

/// Waits until nothing accepts connections at `addr` any more (the listener is closed).
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + EVENT_WAIT_MAX;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The bytes a bare HTTP/2 client sends to ask `GET path` on stream 1 over cleartext
/// (prior knowledge, no token): the preface, an empty SETTINGS and its ack, and one
/// HEADERS frame (END_STREAM | END_HEADERS). Such a client never answers a PING.
pub fn raw_h2_get(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS
    out.extend_from_slice(&[0, 0, 0, 4, 1, 0, 0, 0, 0]); // SETTINGS ack
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 0x01, b'x']);
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

/// Whether the HTTP/2 frames read in `got` hold a HEADERS frame on stream 1 (its answer).
pub fn raw_h2_answered(got: &[u8]) -> bool {
    let mut at = 0;
    while at + 9 <= got.len() {
        let len =
            usize::from(got[at]) << 16 | usize::from(got[at + 1]) << 8 | usize::from(got[at + 2]);
        let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
        if got[at + 3] == 1 && stream == 1 {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// The first way an answer does not match schema `name` of an OpenAPI document `doc`, for the JSON
/// Schema the answers' schemas use: `oneOf` chosen by its `discriminator`, `required`,
/// each property declared (an answer field its schema does not name is a failure too),
/// `const`, `enum`, `type`, `minItems` and `$ref`s into `components/schemas`. Money
/// (`$ref` to `Money`) is a JSON number.
pub fn schema_problem(doc: &Value, name: &str, v: &Value) -> Option<String> {
    let schemas = &doc["components"]["schemas"];
    let mut schema = &schemas[name];
    if !schema.is_object() {
        return Some(format!("no schema {name}"));
    }
    if let Some(d) = schema.get("discriminator") {
        let property = d["propertyName"].as_str().expect("discriminator property");
        let Some(tag) = v[property].as_str() else {
            return Some(format!("{name}: no {property} in {v}"));
        };
        let Some(target) = d["mapping"][tag].as_str() else {
            return Some(format!("{name}: no variant for {property} {tag:?}: {v}"));
        };
        let variant = target.trim_start_matches("#/components/schemas/");
        if !schema["oneOf"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["$ref"].as_str() == Some(target)))
        {
            return Some(format!("{name}: {variant} is not one of its oneOf"));
        }
        schema = &schemas[variant];
        if !schema.is_object() {
            return Some(format!("no schema {variant}"));
        }
    }
    let Some(obj) = v.as_object() else {
        return Some(format!("{name}: not an object: {v}"));
    };
    for r in schema["required"].as_array().into_iter().flatten() {
        let r = r.as_str().unwrap();
        if !obj.contains_key(r) {
            return Some(format!("{name}: {r} is required: {v}"));
        }
    }
    for (key, value) in obj {
        let mut p = &schema["properties"][key.as_str()];
        if !p.is_object() {
            return Some(format!("{name}: {key} is not declared: {v}"));
        }
        if let Some(r) = p.get("$ref").and_then(Value::as_str) {
            let target = r.trim_start_matches("#/components/schemas/");
            p = &schemas[target];
            if target == "Money" {
                if !value.is_number() {
                    return Some(format!("{name}: {key} is not money: {v}"));
                }
                continue;
            }
        }
        if let Some(c) = p.get("const") {
            if value != c {
                return Some(format!("{name}: {key} must be {c}: {v}"));
            }
        }
        if let Some(e) = p.get("enum").and_then(Value::as_array) {
            if !e.contains(value) {
                return Some(format!("{name}: {key} is not one of {e:?}: {v}"));
            }
        }
        let typed = match p.get("type").and_then(Value::as_str) {
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("array") => value.as_array().is_some_and(|a| {
                a.len() as u64 >= p.get("minItems").and_then(Value::as_u64).unwrap_or(0)
            }),
            Some("object") => value.is_object(),
            Some("boolean") => value.is_boolean(),
            _ => true,
        };
        if !typed {
            return Some(format!("{name}: {key} is not what {p} says: {v}"));
        }
    }
    None
}

/// [`schema_problem`] finds none.
pub fn assert_matches_schema(doc: &Value, name: &str, v: &Value) {
    if let Some(problem) = schema_problem(doc, name, v) {
        panic!("{problem}");
    }
}
