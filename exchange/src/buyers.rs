//! The buyer client: pooled keep-alive connections (HTTP/1.1, or HTTP/2 where the buyer's
//! config says so; TLS with rustls for `https://`), every request signed per Standard
//! Webhooks, answers read with a size limit and turned into values by proto.
//!
//! What this module never does: decide anything about the auction. It sends one message
//! and reports what came back, with how long it took.

use std::time::Duration;

use bidder_sdk::connect::ResetOnClose;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proto::buyer::{parse_bid_answer, parse_post_answer, BidOutcome, PostOutcome};
use proto::signing::{Secret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

use crate::config::HttpVersion;

/// Largest buyer answer read; anything longer is an invalid answer.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Idle keep-alive connections kept per buyer host, per worker thread. It bounds only the
/// surplus: connections in use are not counted, so a steady load keeps what it uses, and
/// after a burst (a stall that queued many auctions at once, whose pings then all needed
/// a connection) the extra ones are closed as they come back instead of being held, with
/// their buffers (about 24 KB each), for [`IDLE_TIMEOUT_S`].
pub const IDLE_PER_HOST_MAX: usize = 32;
/// How long an idle pooled connection is kept.
pub const IDLE_TIMEOUT_S: u64 = 90;
/// TCP connect timeout (bounded again by each call's own deadline).
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

/// Buyer connections end with a reset, so one dropped with its request unanswered leaves
/// no `TIME_WAIT` port behind (`bidder_sdk::connect`).
type Connector = hyper_rustls::HttpsConnector<ResetOnClose>;

/// The Standard Webhooks header names, made once: inserting a `&str` name parses it and
/// copies it into a new allocation on every request.
const WEBHOOK_ID: HeaderName = HeaderName::from_static(HEADER_ID);
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static(HEADER_TIMESTAMP);
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static(HEADER_SIGNATURE);

/// A buyer URL parsed once (per configuration, see `Runtime::ping_target`) rather than
/// on every request: the request target and the `Host` header an HTTP/1.1 request
/// carries, exactly as hyper-util would make it (`host` or `host:port`, the port left
/// out when it is the scheme's default).
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    host: HeaderValue,
}

impl Target {
    /// `None` for a URL that is not an absolute `http(s)://` URL with a host.
    pub fn parse(url: &str) -> Option<Target> {
        let uri = Uri::try_from(url).ok()?;
        let hostname = uri.host()?;
        let secure = matches!(uri.scheme_str(), Some("https" | "wss"));
        let host = match uri.port_u16() {
            Some(443) if secure => HeaderValue::from_str(hostname),
            Some(80) if !secure => HeaderValue::from_str(hostname),
            Some(port) => HeaderValue::from_maybe_shared(Bytes::from(format!("{hostname}:{port}"))),
            None => HeaderValue::from_str(hostname),
        }
        .ok()?;
        Some(Target { uri, host })
    }
}

/// Why a call produced no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// Could not connect, or the connection failed mid-request.
    Transport,
    /// The answer was longer than [`ANSWER_BYTES_MAX`].
    TooLarge,
    /// The request could not be built (bad URL).
    Request,
}

/// Pooled clients shared by every auction.
#[derive(Clone, Debug)]
pub struct BuyerClient {
    h1: Client<Connector, Full<Bytes>>,
    h2: Client<Connector, Full<Bytes>>,
}

fn connector(h2: bool, tls: Option<&rustls::ClientConfig>) -> Connector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let http = ResetOnClose(http);
    // Certificates are always verified: against the WebPKI roots, plus the extra CA
    // bundle of `server.buyer_ca_path` when the caller's configuration has one.
    let tls = match tls {
        Some(config) => Ok(config.clone()),
        None => crate::tls::buyer_client_config(None),
    };
    match tls {
        Ok(mut config) => {
            config.alpn_protocols.clear();
            let b = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http();
            if h2 {
                b.enable_http2().wrap_connector(http)
            } else {
                b.enable_http1().wrap_connector(http)
            }
        }
        // The ring provider supports rustls' default protocol versions; this cannot fail,
        // but fall back to a connector that trusts nothing rather than panic.
        Err(_) => hyper_rustls::HttpsConnector::from((http, rustls_fallback_config())),
    }
}

fn rustls_fallback_config() -> std::sync::Arc<rustls::ClientConfig> {
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .unwrap_or_else(|_| unreachable!("ring supports the default versions")),
    )
}

impl BuyerClient {
    /// Clients trusting the WebPKI roots.
    pub fn new() -> BuyerClient {
        BuyerClient::build(None)
    }

    /// Clients trusting what `tls` trusts (its ALPN setting is replaced).
    pub fn with_tls(tls: &rustls::ClientConfig) -> BuyerClient {
        BuyerClient::build(Some(tls))
    }

    fn build(tls: Option<&rustls::ClientConfig>) -> BuyerClient {
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(IDLE_TIMEOUT_S))
            .pool_max_idle_per_host(IDLE_PER_HOST_MAX)
            .build(connector(false, tls));
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(IDLE_TIMEOUT_S))
            .http2_only(true)
            .build(connector(true, tls));
        BuyerClient { h1, h2 }
    }

    /// Sends one signed JSON message and returns `(status, content type, body)`.
    async fn exchange(
        &self,
        to: Endpoint<'_>,
        msg_id: &str,
        now_s: i64,
        body: Bytes,
    ) -> Result<(u16, Option<HeaderValue>, Vec<u8>), CallError> {
        let Endpoint {
            url,
            target,
            http,
            secret,
        } = to;
        let signature = secret.sign(msg_id, now_s, &body);
        // Built by hand rather than with `Request::builder()`: the builder parses every
        // header name and copies every value, which cost about 5,000 instructions a ping.
        // The request on the wire is the same (same headers, same order).
        let (uri, host) = match target {
            Some(t) => (t.uri.clone(), Some(&t.host)),
            None => (Uri::try_from(url).map_err(|_| CallError::Request)?, None),
        };
        let (Ok(id), Ok(signature)) = (
            HeaderValue::from_str(msg_id),
            HeaderValue::try_from(signature),
        ) else {
            return Err(CallError::Request);
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        // Room for these five and the two hyper adds (Host, Content-Length): a map sized
        // for five grows (rehashes) on the seventh, once per ping.
        headers.reserve(7);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static("pingpost/0.1"));
        headers.insert(WEBHOOK_ID, id);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(now_s));
        headers.insert(WEBHOOK_SIGNATURE, signature);
        // HTTP/1.1 only (HTTP/2 carries `:authority` instead): the `Host` that hyper-util
        // would otherwise format on every request, in the same place (after the others).
        if let (HttpVersion::Http1, Some(host)) = (http, host) {
            headers.insert(header::HOST, host.clone());
        }
        let client = match http {
            HttpVersion::Http1 => &self.h1,
            HttpVersion::Http2 => &self.h2,
        };
        let resp = client
            .request(req)
            .await
            .map_err(|_| CallError::Transport)?;
        let status = resp.status().as_u16();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        let collected = Limited::new(resp.into_body(), ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    CallError::TooLarge
                } else {
                    CallError::Transport
                }
            })?;
        Ok((status, content_type, collected.to_bytes().to_vec()))
    }
}

/// Which message a buyer call carries (ping or post), and how its answer is read.
pub trait BuyerMessage {
    /// What the answer means.
    type Outcome: Send;
    /// Reads an answer (`status`, `Content-Type`, body).
    fn parse(status: u16, content_type: Option<&str>, body: &mut [u8]) -> Self::Outcome;
    /// An answer longer than [`ANSWER_BYTES_MAX`].
    fn too_large() -> Self::Outcome;
}

/// A ping: the answer is a bid or a pass.
#[derive(Debug, Clone, Copy)]
pub struct Ping;

impl BuyerMessage for Ping {
    type Outcome = BidOutcome;
    fn parse(status: u16, content_type: Option<&str>, body: &mut [u8]) -> BidOutcome {
        parse_bid_answer(status, content_type, body)
    }
    fn too_large() -> BidOutcome {
        BidOutcome::Invalid("too_large")
    }
}

/// A post: the answer accepts or rejects the lead.
#[derive(Debug, Clone, Copy)]
pub struct Post;

impl BuyerMessage for Post {
    type Outcome = PostOutcome;
    fn parse(status: u16, content_type: Option<&str>, body: &mut [u8]) -> PostOutcome {
        parse_post_answer(status, content_type, body)
    }
    fn too_large() -> PostOutcome {
        PostOutcome::Invalid("too_large")
    }
}

/// Where and how to reach one buyer endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub url: &'a str,
    /// `url` parsed already (pings); `None`: parsed for this call.
    pub target: Option<&'a Target>,
    pub http: HttpVersion,
    pub secret: &'a Secret,
}

/// How the exchange talks to buyers: one signed JSON message out, one answer back
/// (HTTP/1.1 and HTTP/2 today, QUIC later). The same call carries pings and posts; the
/// caller owns the deadline (it wraps the call in its own timeout).
pub trait BuyerTransport {
    /// Sends `body` to `to` and reads the answer as an `M`. Never fails: every problem is
    /// an outcome.
    fn call<M: BuyerMessage>(
        &self,
        to: Endpoint<'_>,
        msg_id: &str,
        now_s: i64,
        body: Bytes,
    ) -> impl std::future::Future<Output = CallResult<M::Outcome>> + Send;
}

impl BuyerTransport for BuyerClient {
    async fn call<M: BuyerMessage>(
        &self,
        to: Endpoint<'_>,
        msg_id: &str,
        now_s: i64,
        body: Bytes,
    ) -> CallResult<M::Outcome> {
        match self.exchange(to, msg_id, now_s, body).await {
            Ok((status, ct, mut bytes)) => {
                let ct = ct.as_ref().and_then(|v| v.to_str().ok());
                CallResult::Answer(M::parse(status, ct, &mut bytes))
            }
            Err(CallError::TooLarge) => CallResult::Answer(M::too_large()),
            Err(e) => CallResult::Failed(e),
        }
    }
}

thread_local! {
    /// One client (and so one set of connection pools) per thread: with a thread-per-core
    /// server, a buyer call and its connection task stay on one event loop, with no
    /// cross-thread wake-ups on the hot path.
    static LOCAL: BuyerClient = BuyerClient::new();
}

thread_local! {
    /// This thread's clients for trust stores other than the default, by the identity of
    /// the `Arc` holding the configuration ([`AppState::buyer_tls`](crate::state::AppState)).
    /// A reload that swaps the trust store makes a new entry; the oldest are dropped.
    static LOCAL_WITH_TLS: std::cell::RefCell<Vec<(std::sync::Arc<rustls::ClientConfig>, BuyerClient)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Trust stores whose clients a thread keeps at once.
const LOCAL_TLS_CLIENTS_MAX: usize = 4;

impl BuyerClient {
    /// This thread's client (WebPKI roots only).
    pub fn local() -> BuyerClient {
        LOCAL.with(BuyerClient::clone)
    }

    /// This thread's client for the trust store `tls` (the exchange's
    /// `AppState::buyer_tls`, which adds `server.buyer_ca_path` to the WebPKI roots).
    pub fn local_for(tls: &std::sync::Arc<rustls::ClientConfig>) -> BuyerClient {
        LOCAL_WITH_TLS.with(|cell| {
            let mut clients = cell.borrow_mut();
            if let Some((_, client)) = clients
                .iter()
                .find(|(config, _)| std::sync::Arc::ptr_eq(config, tls))
            {
                return client.clone();
            }
            if clients.len() >= LOCAL_TLS_CLIENTS_MAX {
                clients.remove(0);
            }
            let client = BuyerClient::with_tls(tls);
            clients.push((std::sync::Arc::clone(tls), client.clone()));
            client
        })
    }
}

impl Default for BuyerClient {
    fn default() -> Self {
        BuyerClient::new()
    }
}

/// A buyer call's result (timeouts are decided by the caller, which owns the deadline).
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult<T> {
    Answer(T),
    Failed(CallError),
}

/// A ping's result.
pub type PingResult = CallResult<BidOutcome>;
/// A post's result.
pub type PostResult = CallResult<PostOutcome>;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_target_carries_the_host_hyper_util_would_send() {
        let host =
            |url: &str| Target::parse(url).map(|t| t.host.to_str().unwrap_or_default().to_string());
        for (url, want) in [
            ("http://127.0.0.1:9101/ping", "127.0.0.1:9101"),
            ("http://example.com/ping", "example.com"),
            ("http://example.com:80/ping", "example.com"),
            ("https://example.com:443/", "example.com"),
            ("https://example.com:80/", "example.com:80"),
            ("http://example.com:443/", "example.com:443"),
            ("https://example.com:8443/", "example.com:8443"),
            ("http://[::1]:8080/ping", "[::1]:8080"),
        ] {
            assert_eq!(host(url).as_deref(), Some(want), "{url}");
        }
        assert_eq!(host("/ping"), None);
        assert_eq!(host("not a url"), None);
    }

    /// One HTTP/1.1 request as it arrived on `listener`, byte for byte; answered 200.
    async fn one_request(listener: &tokio::net::TcpListener) -> Vec<u8> {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = sock.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = end {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            assert!(n > 0, "the connection closed mid-request");
        }
        sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"bid\":false}")
            .await
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn a_parsed_target_sends_the_request_a_url_sends() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ping", listener.local_addr().unwrap());
        let target = Target::parse(&url).unwrap();
        let secret = Secret::new("test-secret").unwrap();
        let mut wire = Vec::new();
        for parsed in [None, Some(&target)] {
            // A client each, so each request has a connection of its own.
            let client = BuyerClient::new();
            let to = Endpoint {
                url: &url,
                target: parsed,
                http: HttpVersion::Http1,
                secret: &secret,
            };
            let body = Bytes::from_static(br#"{"auction_id":"au_1","tmax_ms":40}"#);
            let (request, answer) = tokio::join!(
                one_request(&listener),
                client.call::<Ping>(to, "au_1.7", 1_790_000_000, body)
            );
            assert!(matches!(answer, CallResult::Answer(_)), "{answer:?}");
            wire.push(request);
        }
        assert_eq!(
            String::from_utf8_lossy(&wire[0]),
            String::from_utf8_lossy(&wire[1])
        );
        let text = String::from_utf8_lossy(&wire[1]).to_string();
        assert!(text.starts_with("POST /ping HTTP/1.1\r\n"), "{text}");
        assert!(
            text.contains(&format!("\r\nhost: {}\r\n", listener.local_addr().unwrap())),
            "{text}"
        );
    }
}
