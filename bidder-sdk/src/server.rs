//! The HTTP shell around a [`Bidder`]: accept loop, per-request checks, graceful shutdown.
//!
//! The checks themselves ([`route`], [`check_head`], [`decode`]) are plain functions of
//! their inputs (no I/O, `now` passed in) so they are tested without sockets; the async
//! code only reads the body and drives hyper.
//!
//! Must never: panic on any input, buffer a body past the limit, or call the bidder with
//! a message whose signature did not verify (unless verification is switched off).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use proto::buyer::{BidReply, PingMessage, PostMessage};
use proto::signing::{Secret, SignatureError, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use proto::{ApiError, ErrorCode};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::listener::{
    serve_connections, ConnInfo, Limits, ListenerConfig, TlsAcceptor,
    H2_KEEPALIVE_INTERVAL_MS_DEFAULT, H2_KEEPALIVE_TIMEOUT_MS_DEFAULT, HEADERS_MAX_DEFAULT,
    HEADER_BYTES_MAX_DEFAULT, HEADER_READ_TIMEOUT_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT,
};
use crate::{Bidder, PingAnswer};

/// Default path the exchange pings.
pub const PING_PATH_DEFAULT: &str = "/ping";
/// Default path the exchange posts won leads to.
pub const POST_PATH_DEFAULT: &str = "/post";
/// Default largest request body, in bytes (64 KiB: a lead is a few hundred bytes).
pub const BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Default time a client has to send a whole body once its headers arrived, in ms.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default number of connections served at once; the next accept waits for a free slot.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// Default time shutdown waits for in-flight requests before dropping them, in ms.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The default [`ServeOptions::replay_ids_max`]: about 24 MB at most, enough for every
/// request of 1,600 requests/s within the signature tolerance.
pub const REPLAY_IDS_MAX_DEFAULT: usize = 500_000;
/// Concurrent HTTP/2 streams per connection.
const H2_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// Consecutive failed accepts before `serve` gives up: never (0). Running out of file
/// descriptors is a passing state; the loop backs off (1 ms to 1 s) and keeps serving, as
/// the exchange does, rather than taking the buyer's endpoint down for good.
const ACCEPT_ERRORS_CONSECUTIVE_MAX: u32 = 0;

/// How [`serve`] runs. Build it with [`ServeOptions::new`] and change fields as needed.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The shared secret the exchange signs with (the buyer's `whsec_…` secret).
    pub secret: Secret,
    /// Path of the ping endpoint, [`PING_PATH_DEFAULT`] by default.
    pub ping_path: String,
    /// Path of the post endpoint, [`POST_PATH_DEFAULT`] by default.
    pub post_path: String,
    /// Largest body accepted, in bytes; bigger ones get 413 without being buffered.
    pub body_bytes_max: usize,
    /// Whether to check the Standard Webhooks signature. Only switch it off in tests or
    /// behind a proxy that already checked it: anyone could otherwise post leads to you.
    pub verify_signatures: bool,
    /// Time a client has to send a whole body, in ms: bounds what a slow client holds.
    pub body_read_timeout_ms: u64,
    /// Connections served at once. Bounds memory and file descriptors under a flood.
    pub connections_max: usize,
    /// Time shutdown waits for in-flight requests to finish, in ms, before dropping them.
    pub drain_timeout_ms: u64,
    /// When set, incremented on every accepted connection: lets a load test see how many
    /// connections its clients opened (a timed-out HTTP/1.1 request costs one). `None`
    /// by default.
    pub connections_accepted: Option<Arc<AtomicU64>>,
    /// Time from accept to the first complete request head (a TLS handshake included),
    /// in ms; a connection that has not sent one by then is closed. Also bounds a later
    /// HTTP/1.1 head once its first bytes arrived. [`HEADER_READ_TIMEOUT_MS_DEFAULT`].
    pub header_read_timeout_ms: u64,
    /// A connection with no request for this long is closed, in ms
    /// ([`IDLE_TIMEOUT_MS_DEFAULT`], 120 s: longer than the exchange keeps an idle pooled
    /// connection, 90 s, so the exchange closes first and never races a close).
    pub idle_timeout_ms: u64,
    /// Interval between HTTP/2 keep-alive PINGs, in ms; 0 sends none.
    pub h2_keepalive_interval_ms: u64,
    /// Time a keep-alive PING has to be acknowledged before the connection is closed.
    pub h2_keepalive_timeout_ms: u64,
    /// Connections one client IP may hold; 0 (the default) for no per-IP limit: the
    /// exchange, this server's only client, may legitimately hold many.
    pub connections_per_ip_max: usize,
    /// Largest request head, in bytes; past it `431 headers_too_large`.
    pub header_bytes_max: usize,
    /// Most header fields per request; past it `431 headers_too_large`.
    pub headers_max: usize,
    /// Serve HTTPS with this certificate (ALPN `h2` and `http/1.1`) instead of
    /// cleartext. Build it with [`TlsAcceptor::from_pem_files`]; `None` by default.
    pub tls: Option<TlsAcceptor>,
    /// Most `webhook-id`s remembered to refuse a replayed signed request (`409`) while
    /// its timestamp is within tolerance; 0 remembers none. Past it the oldest are
    /// forgotten first (a replay of one of those is then taken). From 8,192 on, the ids
    /// are kept in shards by hash (at most 64, at least 4,096 ids each), each with its
    /// share of the bound and forgetting its own oldest first.
    pub replay_ids_max: usize,
    /// Most concurrent HTTP/2 streams per connection (256 by default). Each stream whose
    /// request is still coming costs about 6 KB, so a bidder open to the internet may
    /// lower it (with `connections_max` and `connections_per_ip_max`) to bound what a
    /// client without the secret can make it hold; the exchange opens as many streams
    /// as it has calls to the bidder in flight, and waits for a free one past it.
    pub h2_streams_per_connection_max: u32,
}

impl ServeOptions {
    /// The refusal `serve` and `spawn` would give these options, checked before anything
    /// starts: a secret shorter than [`proto::signing::SECRET_BYTES_MIN`] key bytes.
    pub fn check(&self) -> io::Result<()> {
        check_options(self)
    }

    /// Options with every default and this secret.
    pub fn new(secret: Secret) -> ServeOptions {
        ServeOptions {
            secret,
            ping_path: PING_PATH_DEFAULT.to_string(),
            post_path: POST_PATH_DEFAULT.to_string(),
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            verify_signatures: true,
            body_read_timeout_ms: BODY_READ_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            connections_accepted: None,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            h2_keepalive_interval_ms: H2_KEEPALIVE_INTERVAL_MS_DEFAULT,
            h2_keepalive_timeout_ms: H2_KEEPALIVE_TIMEOUT_MS_DEFAULT,
            connections_per_ip_max: 0,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            headers_max: HEADERS_MAX_DEFAULT,
            tls: None,
            replay_ids_max: REPLAY_IDS_MAX_DEFAULT,
            h2_streams_per_connection_max: H2_STREAMS_PER_CONNECTION_MAX,
        }
    }

    /// The shared listener's limits for these options.
    fn limits(&self) -> Limits {
        Limits {
            connections_max: self.connections_max.max(1),
            connections_per_ip_max: self.connections_per_ip_max,
            connections_per_ip_exempt_loopback: false,
            header_read_timeout_ms: self.header_read_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
            h2_keepalive_interval_ms: self.h2_keepalive_interval_ms,
            h2_keepalive_timeout_ms: self.h2_keepalive_timeout_ms,
            header_bytes_max: self.header_bytes_max,
            headers_max: self.headers_max,
            h2_streams_per_connection_max: self.h2_streams_per_connection_max.max(1),
            drain_timeout_ms: self.drain_timeout_ms,
            accept_errors_max: ACCEPT_ERRORS_CONSECUTIVE_MAX,
        }
    }
}

/// Why the SDK answered a request with an error instead of the bidder's reply. Passed to
/// [`Bidder::on_refused`]; its [`status`](Refusal::status) and [`code`](Refusal::code) are
/// what the client receives, in the contract's error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The path is neither the ping nor the post path (404).
    #[error("no such endpoint")]
    NotFound,
    /// The method is not POST (405).
    #[error("only POST is allowed")]
    MethodNotAllowed,
    /// An HTTP/1.1 request without exactly one valid `Host`, or an HTTP/2 one whose
    /// `host` names another authority (400, RFC 9112 3.2 and RFC 9113 8.3.1; the
    /// exchange's own rule, [`crate::listener::host_problem`]; black-box round 131b:
    /// served). The message says which.
    #[error("{0}")]
    BadHost(&'static str),
    /// The headers do not describe a plain JSON body (415): a `Content-Type` other than
    /// `application/json`, a `charset` other than `utf-8`, two `Content-Type` headers, or
    /// a `Content-Encoding` other than `identity`. The message says which.
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    /// The body is longer than the limit (413).
    #[error("body is over {body_bytes_max} bytes")]
    PayloadTooLarge {
        /// The limit in force.
        body_bytes_max: usize,
    },
    /// The body did not arrive in time (400).
    #[error("body not received within {body_read_timeout_ms} ms")]
    BodyTimeout {
        /// The timeout in force.
        body_read_timeout_ms: u64,
    },
    /// The body could not be read: the client reset the stream or sent bad framing (400).
    #[error("body could not be read: {0}")]
    BodyUnreadable(String),
    /// A webhook header is missing or the signature or timestamp does not verify (401).
    #[error("{0}")]
    Unauthorized(SignatureError),
    /// The body is not the JSON message this endpoint takes (400).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A signed request whose `webhook-id` was already taken within the signature
    /// tolerance: a replay (409). Checked after the signature, so only the exchange's own
    /// ids are remembered.
    #[error("this webhook-id was already received: a replayed request")]
    Replayed,
    /// The bidder panicked while answering (500).
    #[error("the bidder panicked")]
    BidderPanicked,
    /// The bidder's reply could not be serialized (500).
    #[error("reply could not be serialized: {0}")]
    ReplyUnserializable(String),
    /// The bidder's bid is one the exchange would throw away (500, and nothing sent that
    /// looks like a bid): a negative price or one over 1e9. (A `bid_id` over
    /// [`proto::buyer::BUYER_ID_LEN_MAX`] characters is not a refusal: it is left out and
    /// the bid sent without it, as the exchange would drop it, never cut it.)
    #[error("invalid bid reply: {0}")]
    InvalidBid(&'static str),
    /// The bidder's reply, serialized, is over [`proto::buyer::ANSWER_BYTES_MAX`] bytes,
    /// more than the exchange reads (500; the exchange would record it `too_large`).
    #[error("the reply is {bytes} bytes, over the {max} the exchange reads", max = proto::buyer::ANSWER_BYTES_MAX)]
    ReplyTooLarge {
        /// The serialized reply's length.
        bytes: usize,
    },
    /// The request head is over [`ServeOptions::header_bytes_max`] or has more than
    /// [`ServeOptions::headers_max`] fields (431). Answered by the listener.
    #[error("request head over the limits")]
    HeadersTooLarge,
}

impl Refusal {
    /// The contract's error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::NotFound => ErrorCode::NotFound,
            Refusal::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Refusal::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Refusal::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Refusal::BodyTimeout { .. }
            | Refusal::BodyUnreadable(_)
            | Refusal::Malformed(_)
            | Refusal::BadHost(_) => ErrorCode::InvalidRequest,
            Refusal::Unauthorized(_) => ErrorCode::Unauthorized,
            Refusal::BidderPanicked
            | Refusal::ReplyUnserializable(_)
            | Refusal::InvalidBid(_)
            | Refusal::ReplyTooLarge { .. } => ErrorCode::Internal,
            Refusal::HeadersTooLarge => ErrorCode::HeadersTooLarge,
            Refusal::Replayed => ErrorCode::Conflict,
        }
    }

    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Whether the answer closes its connection: every refusal of a request not known to
    /// come from the exchange (not signed with the secret, or signed and replayed), as the
    /// exchange closes the connection of every answer to a request without a key
    /// (SECURITY.md C5). Black-box round 100c: kept open for the idle timeout (120 s),
    /// such connections held the bidder's slots, 1,000 of them with answers the client
    /// never let out (an HTTP/2 flow-control window of 0). The refusals of a request that
    /// verified (its JSON, the bidder's own failures) keep the exchange's connection.
    pub fn closes_connection(&self) -> bool {
        match self {
            Refusal::NotFound
            | Refusal::MethodNotAllowed
            | Refusal::BadHost(_)
            | Refusal::UnsupportedMediaType(_)
            | Refusal::PayloadTooLarge { .. }
            | Refusal::BodyTimeout { .. }
            | Refusal::BodyUnreadable(_)
            | Refusal::Unauthorized(_)
            | Refusal::Replayed
            | Refusal::HeadersTooLarge => true,
            Refusal::Malformed(_)
            | Refusal::BidderPanicked
            | Refusal::ReplyUnserializable(_)
            | Refusal::InvalidBid(_)
            | Refusal::ReplyTooLarge { .. } => false,
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let body = ApiError::new(self.code(), self.to_string()).to_json();
        let mut response = json_response(self.status(), body);
        if *self == Refusal::MethodNotAllowed {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
        }
        if self.closes_connection() {
            response
                .extensions_mut()
                .insert(crate::listener::CloseConnection);
        }
        response
    }
}

/// Which message an endpoint takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Ping,
    Post,
}

/// A request body that passed every check.
#[derive(Debug)]
enum Message {
    Ping(PingMessage),
    Post(PostMessage),
}

/// The endpoint for a method and path.
fn route(options: &ServeOptions, method: &Method, path: &str) -> Result<Endpoint, Refusal> {
    let endpoint = if path == options.ping_path {
        Endpoint::Ping
    } else if path == options.post_path {
        Endpoint::Post
    } else {
        return Err(Refusal::NotFound);
    };
    if method != Method::POST {
        return Err(Refusal::MethodNotAllowed);
    }
    Ok(endpoint)
}

/// Checks made from the headers alone, before reading any of the body. `body_len_min` is
/// the least the body can be (its `Content-Length` when it has one).
fn check_head(
    options: &ServeOptions,
    headers: &HeaderMap,
    body_len_min: u64,
) -> Result<(), Refusal> {
    if body_len_min > options.body_bytes_max as u64 {
        return Err(Refusal::PayloadTooLarge {
            body_bytes_max: options.body_bytes_max,
        });
    }
    // A missing Content-Type is tolerated: the signature already proves who sent it. Any
    // other header that does not describe a plain JSON body is refused, by the rule the
    // exchange reads its own messages by (black-box round 17: two types, a Latin-1
    // charset and a gzip encoding were taken).
    let described =
        headers.contains_key(CONTENT_TYPE) || headers.contains_key(http::header::CONTENT_ENCODING);
    if described {
        if let Some(problem) = crate::listener::json_headers_problem(headers) {
            return Err(Refusal::UnsupportedMediaType(problem));
        }
    }
    Ok(())
}

/// Verifies the signature over the raw body at `now_s` (Unix seconds), then parses it.
#[cfg(test)]
fn decode(
    options: &ServeOptions,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Vec<u8>,
    now_s: i64,
) -> Result<Message, Refusal> {
    verify(options, headers, &body, now_s)?;
    parse(endpoint, body)
}

/// Verifies the signature over the raw body at `now_s` (Unix seconds), when the options
/// say to.
fn verify(
    options: &ServeOptions,
    headers: &HeaderMap,
    body: &[u8],
    now_s: i64,
) -> Result<(), Refusal> {
    if options.verify_signatures {
        // Two of a webhook header: which one was signed is anyone's guess.
        let names = [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE];
        if names
            .iter()
            .any(|n| headers.get_all(*n).iter().nth(1).is_some())
        {
            return Err(Refusal::Unauthorized(SignatureError::RepeatedHeader));
        }
        // A header that is not visible ASCII counts as missing: a tab too, which HTTP
        // allows in a value (black-box round 183a: an id with a tab was taken). Spaces
        // separate a signature's entries.
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.contains('\t'))
        };
        options
            .secret
            .verify(
                header(HEADER_ID),
                header(HEADER_TIMESTAMP),
                header(HEADER_SIGNATURE),
                body,
                now_s,
            )
            .map_err(Refusal::Unauthorized)?;
    }
    Ok(())
}

/// Parses the body as the message `endpoint` takes.
fn parse(endpoint: Endpoint, mut body: Vec<u8>) -> Result<Message, Refusal> {
    // Both parsers refuse nesting deeper than proto's EXCHANGE_MESSAGE_DEPTH_MAX first.
    match endpoint {
        Endpoint::Ping => PingMessage::from_json(&mut body)
            .map(Message::Ping)
            .map_err(Refusal::Malformed),
        Endpoint::Post => PostMessage::from_json(&mut body)
            .map(Message::Post)
            .map_err(Refusal::Malformed),
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn unix_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Polls a future and turns a panic inside it into `Err(())`, so one bidder bug costs one
/// request rather than the connection (and every HTTP/2 stream on it).
struct CatchPanic<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.get_mut().0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

async fn catch_panic<F: Future>(future: F) -> Result<F::Output, Refusal> {
    CatchPanic(Box::pin(future))
        .await
        .map_err(|()| Refusal::BidderPanicked)
}

struct Shared<B> {
    bidder: Arc<B>,
    options: ServeOptions,
    /// The `webhook-id`s of the signed requests taken ([`ServeOptions::replay_ids_max`]).
    seen: SeenIds,
    /// Becomes `true` when shutdown starts, releasing requests held by [`PingAnswer::Hang`].
    stopping: watch::Receiver<bool>,
}

/// A request the server drops without answering ([`PingAnswer::Hang`] at shutdown):
/// hyper closes the HTTP/1.1 connection or resets the HTTP/2 stream.
#[derive(Debug, thiserror::Error)]
#[error("request dropped without an answer at shutdown")]
struct Dropped;

/// The `webhook-id`s of the signed requests taken, each kept until its timestamp leaves
/// the tolerance ([`proto::signing::TIMESTAMP_TOLERANCE_S`]), so a captured request
/// replayed within it is refused (SECURITY.md N6). Bounded: at most `max` ids (kept as
/// 64-bit keyed hashes), the oldest forgotten first. Past [`SEEN_SHARD_IDS`] ids the
/// memory is split into up to [`SEEN_SHARDS_MAX`] shards by hash, each with its share of
/// `max` (the oldest of a shard forgotten first): a table that grows rehashes only its
/// shard, under that shard's lock. One table of 500,000 ids rehashed everything under
/// one lock at each doubling, and every request of the server waited: 20-50 ms at
/// 1,600-2,000 requests/s (session 56, found as `loadtest`'s simulated buyers stalling
/// every target's auctions at the same request counts).
struct SeenIds {
    /// Ids per shard at most (0: none remembered).
    shard_max: usize,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[std::sync::Mutex<SeenInner>]>,
}

/// Most shards of [`SeenIds`].
const SEEN_SHARDS_MAX: usize = 64;
/// Ids per shard below which [`SeenIds`] adds no shard: a small bound is kept exactly
/// (one table), a large one in shards of at least this many.
const SEEN_SHARD_IDS: usize = 4_096;

#[derive(Default)]
struct SeenInner {
    /// Id hash to the last second (Unix) a request with it can be in tolerance.
    until: std::collections::HashMap<u64, i64>,
    /// In the order taken.
    order: std::collections::VecDeque<(i64, u64)>,
}

impl SeenIds {
    fn new(max: usize) -> SeenIds {
        let shards = (max / SEEN_SHARD_IDS).clamp(1, SEEN_SHARDS_MAX);
        SeenIds {
            shard_max: max.div_ceil(shards),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..shards).map(|_| std::sync::Mutex::default()).collect(),
        }
    }

    /// Takes `id` (of a request stamped `ts`, verified) at `now`: false when it was
    /// taken before and is still within its tolerance (a replay).
    fn first_time(&self, id: &str, ts: i64, now: i64) -> bool {
        use std::hash::BuildHasher as _;
        if self.shard_max == 0 {
            return true;
        }
        let key = self.hasher.hash_one(id);
        let until = ts.saturating_add(proto::signing::TIMESTAMP_TOLERANCE_S);
        // The high bits pick the shard; the table hashes the key again.
        let shard = usize::try_from(key >> 32).unwrap_or(0) % self.shards.len();
        let mut g = self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget the oldest: those out of tolerance, and any past the bound.
        while let Some(&(u, k)) = g.order.front() {
            if u >= now && g.order.len() < self.shard_max {
                break;
            }
            g.order.pop_front();
            if g.until.get(&k) == Some(&u) {
                g.until.remove(&k);
            }
        }
        if g.until.get(&key).is_some_and(|u| *u >= now) {
            return false;
        }
        g.until.insert(key, until);
        g.order.push_back((until, key));
        true
    }
}

/// What the server does with a request that passed routing.
enum Outcome {
    Respond(Response<Full<Bytes>>),
    Hang,
}

impl<B: Bidder> Shared<B> {
    async fn handle(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
        match self.answer(request).await {
            Ok(Outcome::Respond(response)) => Ok(response),
            Ok(Outcome::Hang) => {
                // Held until the client goes away (hyper then drops this future) or the
                // server stops. A closed channel means the server is gone: stop too.
                let mut stopping = self.stopping.clone();
                let _ = stopping.wait_for(|stopping| *stopping).await;
                Err(Dropped)
            }
            Err(refusal) => {
                tracing::debug!(%refusal, status = refusal.status().as_u16(), "bidder-sdk refused a request");
                self.bidder.on_refused(&refusal);
                Ok(refusal.response())
            }
        }
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Outcome, Refusal> {
        let options = &self.options;
        if let Some(problem) = crate::listener::host_problem(&request) {
            return Err(Refusal::BadHost(problem));
        }
        let endpoint = route(options, request.method(), request.uri().path())?;
        check_head(
            options,
            request.headers(),
            request.body().size_hint().lower(),
        )?;
        let (parts, body) = request.into_parts();
        let body = read_body(body, options).await?;
        // Read to its end: the connection can take the next request.
        crate::listener::BodyRead::mark(&parts.extensions);
        let now_s = unix_now_s();
        verify(options, &parts.headers, &body, now_s)?;
        if options.verify_signatures {
            // Verified: the id and timestamp are the exchange's own.
            let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
            let ts = header(HEADER_TIMESTAMP).and_then(|t| t.parse::<i64>().ok());
            if let (Some(id), Some(ts)) = (header(HEADER_ID), ts) {
                if !self.seen.first_time(id, ts, now_s) {
                    return Err(Refusal::Replayed);
                }
            }
        }
        let json = match parse(endpoint, body)? {
            Message::Ping(ping) => match catch_panic(self.bidder.answer_ping(ping)).await? {
                PingAnswer::Reply(mut reply) => {
                    check_bid(&mut reply)?;
                    serde_json::to_vec(&reply)
                }
                PingAnswer::Raw {
                    status,
                    content_type,
                    body,
                } => return Ok(Outcome::Respond(raw_response(status, &content_type, body))),
                PingAnswer::Hang => return Ok(Outcome::Hang),
            },
            Message::Post(post) => serde_json::to_vec(&catch_panic(self.bidder.post(post)).await?),
        };
        let json = json.map_err(|e| Refusal::ReplyUnserializable(e.to_string()))?;
        // Black-box round 86a: a 100 KB reason went out, and the exchange recorded the
        // answer `too_large`.
        if json.len() > proto::buyer::ANSWER_BYTES_MAX {
            return Err(Refusal::ReplyTooLarge { bytes: json.len() });
        }
        Ok(Outcome::Respond(json_response(StatusCode::OK, json)))
    }
}

/// Refuses a bid the exchange would not take as the bidder meant it, and leaves out a
/// `bid_id` it would drop for its length (black-box round 86a: such a bid was refused
/// whole, though the exchange keeps the bid and drops only the id; API.md, "Ping").
fn check_bid(reply: &mut BidReply) -> Result<(), Refusal> {
    let BidReply::Bid { bid, bid_id, .. } = reply else {
        return Ok(());
    };
    if bid.0 < 0 || bid.0 > proto::money::AMOUNT_MAX_MICROS {
        return Err(Refusal::InvalidBid("the bid must be 0 to 1e9"));
    }
    if let Some(len) = bid_id
        .as_deref()
        .map(|id| id.chars().count())
        .filter(|len| *len > proto::buyer::BUYER_ID_LEN_MAX)
    {
        tracing::warn!(
            len,
            max = proto::buyer::BUYER_ID_LEN_MAX,
            "bidder-sdk: bid_id over the longest the exchange keeps; the bid is sent without it"
        );
        *bid_id = None;
    }
    Ok(())
}

/// A [`PingAnswer::Raw`] as sent: a bad status becomes 500, a bad or empty content type
/// no header.
fn raw_response(status: u16, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !content_type.is_empty() {
        if let Ok(value) = HeaderValue::from_str(content_type) {
            response.headers_mut().insert(CONTENT_TYPE, value);
        }
    }
    response
}

/// Reads at most `body_bytes_max` bytes within `body_read_timeout_ms`.
async fn read_body(body: Incoming, options: &ServeOptions) -> Result<Vec<u8>, Refusal> {
    let timeout = Duration::from_millis(options.body_read_timeout_ms);
    match tokio::time::timeout(
        timeout,
        Limited::new(body, options.body_bytes_max).collect(),
    )
    .await
    {
        Err(_) => Err(Refusal::BodyTimeout {
            body_read_timeout_ms: options.body_read_timeout_ms,
        }),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Refusal::PayloadTooLarge {
                body_bytes_max: options.body_bytes_max,
            })
        }
        Ok(Err(e)) => Err(Refusal::BodyUnreadable(e.to_string())),
        Ok(Ok(collected)) => Ok(Vec::from(collected.to_bytes())),
    }
}

/// Serves `bidder` on `listener` until `shutdown` resolves, over HTTP/1.1 (keep-alive)
/// and HTTP/2 (h2c with prior knowledge, or ALPN `h2` with [`ServeOptions::tls`]) on the
/// same port, through the shared accept loop ([`crate::listener`]): connection slots
/// (one per accepted connection, the oldest without a head evicted when they run out), a head budget from accept, an idle timeout, HTTP/2 keep-alive,
/// header limits (431).
///
/// When `shutdown` resolves it stops accepting, closes the listener, lets in-flight
/// requests finish (up to [`ServeOptions::drain_timeout_ms`]) and returns `Ok(())`. A
/// failing accept (such as file descriptors running out) never ends it: the loop backs
/// off (1 ms to 1 s) and keeps serving.
pub async fn serve<B: Bidder>(
    listener: TcpListener,
    bidder: Arc<B>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    check_options(&options)?;
    if !options.verify_signatures {
        tracing::warn!(
            "bidder-sdk: signature verification is off; anyone can send pings and posts"
        );
    }
    let (stop_hangs, stopping) = watch::channel(false);
    let refused_bidder = Arc::clone(&bidder);
    let config = ListenerConfig {
        limits: options.limits(),
        gate: None,
        tls: options.tls.clone(),
        connections_accepted: options.connections_accepted.clone(),
        on_headers_too_large: Some(Arc::new(move || {
            refused_bidder.on_refused(&Refusal::HeadersTooLarge);
        })),
        connections_dropped: None,
        name: "bidder-sdk",
    };
    let shared = Arc::new(Shared {
        bidder,
        seen: SeenIds::new(options.replay_ids_max),
        options,
        stopping,
    });
    // Held pings never finish on their own: release them when shutdown starts, so
    // draining can complete.
    let shutdown = async move {
        shutdown.await;
        stop_hangs.send_replace(true);
    };
    serve_connections(
        listener,
        config,
        move |_info: &ConnInfo| {
            let shared = Arc::clone(&shared);
            service_fn(move |request: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move { shared.handle(request).await }
            })
        },
        shutdown,
    )
    .await
}

/// Refuses options no exchange could serve: a secret shorter than
/// [`proto::signing::SECRET_BYTES_MIN`] key bytes, which the exchange refuses for a buyer
/// (black-box round 86a: the SDK served with a 3-byte secret).
fn check_options(options: &ServeOptions) -> io::Result<()> {
    let min = proto::signing::SECRET_BYTES_MIN;
    if options.verify_signatures && options.secret.key_len() < min {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the secret stands for {} key bytes, fewer than the {min} the exchange requires of a buyer's secret: use at least {min} random bytes",
                options.secret.key_len()
            ),
        ));
    }
    Ok(())
}

/// A server started by [`spawn`]. Dropping it leaves the server running until the runtime
/// stops; call [`ServerHandle::shutdown`] to stop it gracefully.
#[derive(Debug)]
#[must_use = "dropping the handle leaves the server running with no way to stop it"]
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for in-flight requests, and returns what [`serve`] returned.
    pub async fn shutdown(self) -> io::Result<()> {
        // The server may already have stopped on its own; then there is nobody to tell.
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(io::Error::other(join)),
        }
    }
}

/// Binds `127.0.0.1:0` and serves `bidder` on a tokio task. Returns the bound address and
/// a handle to stop it: what tests and demos use.
pub async fn spawn<B: Bidder>(
    bidder: Arc<B>,
    options: ServeOptions,
) -> io::Result<(SocketAddr, ServerHandle)> {
    check_options(&options)?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    spawn_on(listener, bidder, options).await
}

/// [`spawn`] on a listener already bound (a port of the caller's choosing): serves
/// `bidder` on a tokio task and returns the listener's address and a handle to stop it.
pub async fn spawn_on<B: Bidder>(
    listener: TcpListener,
    bidder: Arc<B>,
    options: ServeOptions,
) -> io::Result<(SocketAddr, ServerHandle)> {
    check_options(&options)?;
    let addr = listener.local_addr()?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let stopped = async move {
        // A dropped handle is not a request to stop: keep serving.
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let task = tokio::spawn(serve(listener, bidder, options, stopped));
    Ok((
        addr,
        ServerHandle {
            addr,
            shutdown,
            task,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ServeOptions {
        ServeOptions::new(Secret::new("s3cret-0123456789").unwrap())
    }

    fn signed(options: &ServeOptions, body: &[u8], timestamp_s: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_ID, HeaderValue::from_static("msg_1"));
        headers.insert(
            HEADER_TIMESTAMP,
            HeaderValue::from_str(&timestamp_s.to_string()).unwrap(),
        );
        let signature = options.secret.sign("msg_1", timestamp_s, body);
        headers.insert(HEADER_SIGNATURE, HeaderValue::from_str(&signature).unwrap());
        headers
    }

    const PING: &str = r#"{"auction_id":"au_1","vertical":"auto_insurance","lead":{"state":"TX","age":42},"tmax_ms":150}"#;

    #[test]
    fn routes() {
        let o = options();
        assert_eq!(route(&o, &Method::POST, "/ping"), Ok(Endpoint::Ping));
        assert_eq!(route(&o, &Method::POST, "/post"), Ok(Endpoint::Post));
        assert_eq!(
            route(&o, &Method::GET, "/ping"),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(route(&o, &Method::POST, "/ping/"), Err(Refusal::NotFound));
        assert_eq!(route(&o, &Method::GET, "/"), Err(Refusal::NotFound));
    }

    #[test]
    fn head_checks() {
        let o = options();
        let mut headers = HeaderMap::new();
        assert_eq!(check_head(&o, &headers, 10), Ok(()));
        assert_eq!(
            check_head(&o, &headers, 64 * 1024 + 1),
            Err(Refusal::PayloadTooLarge {
                body_bytes_max: 64 * 1024
            })
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(check_head(&o, &headers, 10), Ok(()));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert_eq!(
            check_head(&o, &headers, 10),
            Err(Refusal::UnsupportedMediaType(
                "Content-Type must be application/json"
            ))
        );
        // The exchange's own rule (black-box round 17: these were taken): a charset other
        // than UTF-8, two types, an encoding, with or without a type.
        let refused = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.append(*name, HeaderValue::from_static(value));
            }
            matches!(
                check_head(&o, &h, 10),
                Err(Refusal::UnsupportedMediaType(_))
            )
        };
        assert!(refused(&[(
            "content-type",
            "application/json; charset=latin1"
        )]));
        assert!(refused(&[
            ("content-type", "application/json"),
            ("content-type", "application/json")
        ]));
        assert!(refused(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip")
        ]));
        assert!(refused(&[("content-encoding", "gzip")]));
        assert!(!refused(&[
            ("content-type", "application/json"),
            ("content-encoding", "identity")
        ]));
        assert!(!refused(&[]), "no type at all is read as JSON");
    }

    #[test]
    fn decodes_only_verified_bodies() {
        let o = options();
        let now = 1_700_000_000;
        let ok = decode(
            &o,
            Endpoint::Ping,
            &signed(&o, PING.as_bytes(), now),
            PING.into(),
            now,
        );
        assert!(
            matches!(ok, Ok(Message::Ping(ref p)) if p.auction_id == "au_1" && p.tmax_ms == 150),
            "{ok:?}"
        );

        let stale = decode(
            &o,
            Endpoint::Ping,
            &signed(&o, PING.as_bytes(), now - 400),
            PING.into(),
            now,
        );
        assert!(matches!(
            stale,
            Err(Refusal::Unauthorized(
                SignatureError::TimestampOutOfTolerance
            ))
        ));
        let missing = decode(&o, Endpoint::Ping, &HeaderMap::new(), PING.into(), now);
        assert!(matches!(
            missing,
            Err(Refusal::Unauthorized(SignatureError::MissingHeader))
        ));
        // A header that is there but not visible ASCII is named so (black-box round 100c:
        // "missing or empty").
        let mut odd = signed(&o, PING.as_bytes(), now);
        odd.insert(HEADER_ID, HeaderValue::from_bytes(b"id-\xc3\xa9").unwrap());
        let r = decode(&o, Endpoint::Ping, &odd, PING.into(), now);
        let Err(refusal) = r else { panic!("{r:?}") };
        assert!(
            refusal.to_string().contains("not visible ASCII"),
            "{refusal}"
        );
        // So is a tab, even in an id signed with it.
        let mut tab = HeaderMap::new();
        tab.insert(HEADER_ID, HeaderValue::from_static("a\tb"));
        tab.insert(
            HEADER_TIMESTAMP,
            HeaderValue::from_str(&now.to_string()).unwrap(),
        );
        let signature = o.secret.sign("a\tb", now, PING.as_bytes());
        tab.insert(HEADER_SIGNATURE, HeaderValue::from_str(&signature).unwrap());
        let r = decode(&o, Endpoint::Ping, &tab, PING.into(), now);
        assert!(
            matches!(r, Err(Refusal::Unauthorized(SignatureError::MissingHeader))),
            "{r:?}"
        );
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let mut twice = signed(&o, PING.as_bytes(), now);
            let first = twice.get(name).unwrap().clone();
            twice.append(name, first);
            let r = decode(&o, Endpoint::Ping, &twice, PING.into(), now);
            assert!(
                matches!(
                    r,
                    Err(Refusal::Unauthorized(SignatureError::RepeatedHeader))
                ),
                "{name}: {r:?}"
            );
        }
        let tampered = PING.replace("TX", "CA");
        let bad = decode(
            &o,
            Endpoint::Ping,
            &signed(&o, PING.as_bytes(), now),
            tampered.into(),
            now,
        );
        assert!(matches!(
            bad,
            Err(Refusal::Unauthorized(SignatureError::Mismatch))
        ));

        for junk in ["", "{", "[]", "null", r#"{"auction_id":1}"#, "\u{0}\u{ff}"] {
            let r = decode(
                &o,
                Endpoint::Ping,
                &signed(&o, junk.as_bytes(), now),
                junk.into(),
                now,
            );
            assert!(matches!(r, Err(Refusal::Malformed(_))), "{junk:?}: {r:?}");
        }
        // A ping is not a post.
        let r = decode(
            &o,
            Endpoint::Post,
            &signed(&o, PING.as_bytes(), now),
            PING.into(),
            now,
        );
        assert!(matches!(r, Err(Refusal::Malformed(_))), "{r:?}");
    }

    #[test]
    fn too_deep_messages_are_malformed() {
        let o = options();
        let now = 1_700_000_000;
        for endpoint in [Endpoint::Ping, Endpoint::Post] {
            let body = format!(
                r#"{{"auction_id":"au_1","vertical":"v","price":1,"tmax_ms":1,"lead":{{"x":{}{}}}}}"#,
                "[".repeat(30_000),
                "]".repeat(30_000)
            );
            let r = decode(
                &o,
                endpoint,
                &signed(&o, body.as_bytes(), now),
                body.into(),
                now,
            );
            assert_eq!(
                r.unwrap_err(),
                Refusal::Malformed("body: JSON nested deeper than 64 levels".into())
            );
        }
    }

    #[test]
    fn bids_the_exchange_would_throw_away_are_refused_before_they_leave() {
        use proto::money::{Micros, AMOUNT_MAX_MICROS};
        let bid = |micros: i64, id_len: usize| BidReply::Bid {
            bid: Micros(micros),
            bid_id: (id_len > 0).then(|| "x".repeat(id_len)),
            expires_in_ms: None,
        };
        // (reply, sent, the bid_id sent)
        for (mut reply, ok, id_len) in [
            (bid(18_000_000, 0), true, 0),
            (bid(0, 0), true, 0),
            (bid(AMOUNT_MAX_MICROS, 128), true, 128),
            (bid(-5_000_000, 0), false, 0),
            (bid(AMOUNT_MAX_MICROS + 1, 0), false, 0),
            // Round 86a: the exchange drops such an id and keeps the bid; so does the SDK.
            (bid(1, 129), true, 0),
            (bid(1, 100_000), true, 0),
        ] {
            let before = format!("{reply:?}");
            let r = check_bid(&mut reply);
            assert_eq!(r.is_ok(), ok, "{before}: {r:?}");
            if let Err(refusal) = r {
                assert_eq!(refusal.status(), StatusCode::INTERNAL_SERVER_ERROR);
            } else {
                assert_eq!(reply, bid(reply_bid(&reply), id_len), "{before}");
            }
        }
        let mut no_bid = BidReply::NoBid {
            no_bid: "x".repeat(500),
        };
        assert!(check_bid(&mut no_bid).is_ok());
    }

    fn reply_bid(reply: &BidReply) -> i64 {
        match reply {
            BidReply::Bid { bid, .. } => bid.0,
            BidReply::NoBid { .. } => -1,
        }
    }

    #[test]
    fn extreme_timestamp_headers_are_refused() {
        let o = options();
        let now = 1_700_000_000;
        // Past the digits a timestamp can have, or signed: not a timestamp at all.
        for ts in [i64::MIN, i64::MAX, -1] {
            let r = decode(
                &o,
                Endpoint::Ping,
                &signed(&o, PING.as_bytes(), ts),
                PING.into(),
                now,
            );
            assert_eq!(
                r.unwrap_err(),
                Refusal::Unauthorized(SignatureError::BadTimestamp)
            );
        }
        // A well-formed one far from now: out of tolerance.
        for ts in [0, 999_999_999_999] {
            let r = decode(
                &o,
                Endpoint::Ping,
                &signed(&o, PING.as_bytes(), ts),
                PING.into(),
                now,
            );
            assert_eq!(
                r.unwrap_err(),
                Refusal::Unauthorized(SignatureError::TimestampOutOfTolerance)
            );
        }
    }

    #[test]
    fn unverified_mode_skips_the_signature_only() {
        let mut o = options();
        o.verify_signatures = false;
        assert!(decode(&o, Endpoint::Ping, &HeaderMap::new(), PING.into(), 0).is_ok());
        assert!(matches!(
            decode(&o, Endpoint::Ping, &HeaderMap::new(), b"{".to_vec(), 0),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn refusal_bodies_follow_the_contract() {
        let response = Refusal::MethodNotAllowed.response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "POST");
        assert_eq!(
            Refusal::PayloadTooLarge { body_bytes_max: 1 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            Refusal::Unauthorized(SignatureError::Mismatch).status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Refusal::BidderPanicked.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            Refusal::Malformed("x".into()).code(),
            ErrorCode::InvalidRequest
        );
    }

    #[tokio::test]
    async fn a_panic_is_a_value() {
        let r = catch_panic(async { panic!("bidder bug") }).await;
        assert_eq!(r, Err::<(), _>(Refusal::BidderPanicked));
        assert_eq!(catch_panic(async { 7 }).await, Ok(7));
    }

    /// Answers by the ping's state: `RA` a raw 500, `GB` a 200 that is not JSON, `HG`
    /// never; anything else through the default path (`ping`).
    struct Faulty;

    impl Bidder for Faulty {
        async fn ping(&self, _ping: PingMessage) -> crate::BidReply {
            crate::BidReply::NoBid {
                no_bid: "outside_criteria".into(),
            }
        }

        async fn post(&self, _post: PostMessage) -> crate::PostReply {
            crate::PostReply {
                accepted: false,
                buyer_lead_id: None,
                reason: None,
            }
        }

        async fn answer_ping(&self, ping: PingMessage) -> PingAnswer {
            match ping.lead.get("state").and_then(|s| s.as_str()) {
                Some("RA") => PingAnswer::Raw {
                    status: 500,
                    content_type: "application/json".into(),
                    body: Bytes::from_static(b"{}"),
                },
                Some("GB") => PingAnswer::Raw {
                    status: 200,
                    content_type: "text/plain".into(),
                    body: Bytes::from_static(b"<html>oops"),
                },
                Some("HG") => PingAnswer::Hang,
                _ => PingAnswer::Reply(self.ping(ping).await),
            }
        }
    }

    #[tokio::test]
    async fn answer_ping_can_answer_raw_or_hang_and_shutdown_releases_hangs() {
        use crate::proto::buyer::BidOutcome;
        use crate::testkit::{sample_ping, SampleLead, TestClient, TestError};

        let (addr, handle) = spawn(Arc::new(Faulty), options()).await.unwrap();
        let client = TestClient::new(format!("http://{addr}"), options().secret);
        let lead = |state: &str| {
            sample_ping(&SampleLead {
                state: state.into(),
                ..SampleLead::default()
            })
        };

        let answer = client.ping(&lead("TX")).await.unwrap();
        assert_eq!(
            answer.outcome,
            BidOutcome::NoBid {
                reason: Some("outside_criteria".into())
            }
        );
        let answer = client.ping(&lead("RA")).await.unwrap();
        assert_eq!(answer.raw.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answer.outcome, BidOutcome::Invalid("http_status"));
        let answer = client.ping(&lead("GB")).await.unwrap();
        assert_eq!(answer.raw.status, StatusCode::OK);
        assert_eq!(answer.raw.content_type.as_deref(), Some("text/plain"));
        assert_eq!(&answer.raw.body[..], b"<html>oops");
        assert_eq!(answer.outcome, BidOutcome::Invalid("content_type"));

        let impatient = client.clone().with_timeout_ms(100);
        assert!(matches!(
            impatient.ping(&lead("HG")).await,
            Err(TestError::Timeout { timeout_ms: 100 })
        ));

        // A hang in flight does not hold shutdown for the drain timeout (10 s): it is
        // dropped without an answer.
        let held = tokio::spawn(async move { client.ping(&lead("HG")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_finished());
        tokio::time::timeout(Duration::from_secs(3), handle.shutdown())
            .await
            .expect("shutdown waited for a hanging ping")
            .unwrap();
        let dropped = held.await.unwrap();
        assert!(matches!(dropped, Err(TestError::Send(_))), "{dropped:?}");
    }

    /// Round 86a: the SDK served with a secret the exchange refuses for a buyer.
    #[tokio::test]
    async fn a_secret_shorter_than_the_exchange_allows_is_refused_at_start() {
        for (text, refused) in [
            ("abc", true),
            ("0123456789abcde", true),
            // 12 bytes after base64.
            ("whsec_MDEyMzQ1Njc4OWFi", true),
            ("0123456789abcdef", false),
            ("whsec_MDEyMzQ1Njc4OWFiY2RlZg==", false),
        ] {
            let options = ServeOptions::new(Secret::new(text).unwrap());
            // The same answer before anything starts (round 136b: `serve_bidder` said
            // it served, then exited).
            assert_eq!(options.check().is_err(), refused, "{text}");
            match spawn(Arc::new(Faulty), options).await {
                Err(e) => {
                    assert!(refused, "{text}: {e}");
                    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
                    assert!(e.to_string().contains("fewer than the 16"), "{e}");
                }
                Ok((_, handle)) => {
                    assert!(!refused, "{text} was served");
                    handle.shutdown().await.unwrap();
                }
            }
        }
        // Unsigned (tests, or behind a proxy that checked): no secret is used.
        let options = ServeOptions {
            verify_signatures: false,
            ..ServeOptions::new(Secret::new("abc").unwrap())
        };
        let (_, handle) = spawn(Arc::new(Faulty), options).await.unwrap();
        handle.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn counts_accepted_connections() {
        use crate::testkit::{sample_ping, SampleLead, TestClient};
        use std::sync::atomic::Ordering;

        let accepted = Arc::new(AtomicU64::new(0));
        let options = ServeOptions {
            connections_accepted: Some(Arc::clone(&accepted)),
            ..options()
        };
        let secret = options.secret.clone();
        let (addr, handle) = spawn(Arc::new(Faulty), options).await.unwrap();
        let ping = sample_ping(&SampleLead::default());

        // Keep-alive: one connection for several requests.
        let client = TestClient::new(format!("http://{addr}"), secret.clone());
        for _ in 0..3 {
            assert_eq!(client.ping(&ping).await.unwrap().raw.status, StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
        // Each new client opens its own.
        for _ in 0..2 {
            let client = TestClient::new_http2(format!("http://{addr}"), secret.clone());
            assert_eq!(client.ping(&ping).await.unwrap().raw.status, StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 3);
        handle.shutdown().await.unwrap();
    }
    #[test]
    fn a_webhook_id_is_taken_once_within_its_tolerance_and_the_memory_is_bounded() {
        let seen = SeenIds::new(3);
        let t = 1_800_000_000;
        assert!(seen.first_time("a", t, t));
        assert!(!seen.first_time("a", t, t + 1), "a replay");
        assert!(!seen.first_time("a", t, t + 300), "at the tolerance's end");
        // Past its tolerance the id is forgotten (its request would be refused as stale).
        assert!(seen.first_time("a", t + 301, t + 301));
        // Bounded: the oldest id is forgotten first.
        for id in ["b", "c", "d"] {
            assert!(seen.first_time(id, t + 301, t + 301));
        }
        let len = seen.shards[0].lock().unwrap().order.len();
        assert!(len <= 3, "{len}");
        assert!(
            seen.first_time("a", t + 301, t + 302),
            "evicted past the bound"
        );
        assert!(!seen.first_time("d", t + 301, t + 302));
        // 0 remembers nothing.
        let off = SeenIds::new(0);
        assert!(off.first_time("a", t, t) && off.first_time("a", t, t));
    }

    /// A large bound is kept in shards, each with its share: every id taken is refused
    /// again within its tolerance, and the memory stays within the bound.
    #[test]
    fn a_large_memory_of_webhook_ids_is_sharded_and_still_refuses_every_replay() {
        let seen = SeenIds::new(REPLAY_IDS_MAX_DEFAULT);
        assert_eq!(seen.shards.len(), SEEN_SHARDS_MAX);
        assert_eq!(SeenIds::new(3).shards.len(), 1);
        assert_eq!(SeenIds::new(2 * SEEN_SHARD_IDS).shards.len(), 2);
        let t = 1_800_000_000;
        let ids: Vec<String> = (0..100_000).map(|i| format!("msg_{i}")).collect();
        assert!(ids.iter().all(|id| seen.first_time(id, t, t)));
        assert!(ids.iter().all(|id| !seen.first_time(id, t, t + 1)));
        let held: usize = seen
            .shards
            .iter()
            .map(|s| s.lock().unwrap().order.len())
            .sum();
        assert_eq!(held, 100_000);
        // Every shard took a share (the ids spread over all of them).
        assert!(seen
            .shards
            .iter()
            .all(|s| s.lock().unwrap().order.len() > 1_000));
        // Bounded: a small bound in shards keeps at most its share in each.
        let small = SeenIds::new(2 * SEEN_SHARD_IDS);
        for id in &ids {
            small.first_time(id, t, t);
        }
        let held: usize = small
            .shards
            .iter()
            .map(|s| s.lock().unwrap().order.len())
            .sum();
        assert!(held <= 2 * SEEN_SHARD_IDS, "{held}");
    }
}
