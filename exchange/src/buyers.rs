//! The buyer client: pooled keep-alive connections (HTTP/1.1, or HTTP/2 where the buyer's
//! config says so; TLS with rustls for `https://`), every request signed per Standard
//! Webhooks, answers read with a size limit and turned into values by proto.
//!
//! What this module never does: decide anything about the auction. It sends one message
//! and reports what came back, with how long it took.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proto::buyer::{parse_bid_answer, parse_post_answer, BidOutcome, PostOutcome};
use proto::signing::{Secret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

use crate::config::HttpVersion;

/// Largest buyer answer read; anything longer is an invalid answer.
pub const ANSWER_BYTES_MAX: usize = 64 * 1024;
/// Idle keep-alive connections kept per buyer host.
pub const IDLE_PER_HOST_MAX: usize = 512;
/// How long an idle pooled connection is kept.
pub const IDLE_TIMEOUT_S: u64 = 90;
/// TCP connect timeout (bounded again by each call's own deadline).
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

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
        url: &str,
        http: HttpVersion,
        secret: &Secret,
        msg_id: &str,
        now_s: i64,
        body: Bytes,
    ) -> Result<(u16, Option<HeaderValue>, Vec<u8>), CallError> {
        let signature = secret.sign(msg_id, now_s, &body);
        // Built by hand rather than with `Request::builder()`: the builder parses every
        // header name and copies every value, which cost about 5,000 instructions a ping.
        // The request on the wire is the same (same headers, same order).
        let uri = Uri::try_from(url).map_err(|_| CallError::Request)?;
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
        headers.insert(HEADER_ID, id);
        headers.insert(HEADER_TIMESTAMP, HeaderValue::from(now_s));
        headers.insert(HEADER_SIGNATURE, signature);
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
        match self
            .exchange(to.url, to.http, to.secret, msg_id, now_s, body)
            .await
        {
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
