//! The speed-of-light reference (PERFORMANCE.md): a bare fan-out server in front of the
//! same simulated buyers as the exchange, and the [`Fanout`] client the load generator
//! also uses directly as the direct-to-buyer baseline.
//!
//! The relay takes the deadline when a request arrives, forwards the body bytes unchanged
//! to every target (signed per Standard Webhooks, as the exchange does), waits until all
//! answered or timed out, and says how many did.
//!
//! Must never: authenticate, parse the lead or the buyers' answers, score, filter, cap or
//! write a ledger. Any logic here would make the reference slower and every ratio to it
//! flattering. It also never retries. A call still running at its bound is heard out in
//! the background within limits, as the exchange's late calls are
//! (`exchange/src/late.rs`: for twice its timeout, at most 64 per target and 1,024 in
//! all), so that its keep-alive connection survives: before, a timed-out call cost its
//! connection here while the exchange kept its own, and at 2,000/s on a slow host the
//! relay and the direct baseline fell into reconnecting (every call timing out) where the
//! exchange did not.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bidder_sdk::connect::ResetOnClose;
use bidder_sdk::listener::{bind_reuseport, serve_connections, ConnInfo, Limits, ListenerConfig};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use proto::signing::{Secret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest buyer answer read; a longer one counts as an error.
pub use proto::buyer::ANSWER_BYTES_MAX;
/// Largest request body the relay accepts.
pub const RELAY_BODY_BYTES_MAX: usize = 64 * 1024;
/// Connections the relay serves at once; the next accept waits for a free slot.
pub const RELAY_CONNECTIONS_MAX: usize = 8_192;
/// Idle keep-alive connections kept per buyer host by each pool: as the exchange's
/// buyer client, which like the relay has one pool per worker.
pub const IDLE_PER_HOST_MAX: usize = 32;
/// How long an idle pooled connection is kept, in s (as the exchange's buyer client).
pub const IDLE_TIMEOUT_S: u64 = 90;
/// TCP connect timeout, in ms (each call's own deadline bounds it again).
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long relay shutdown waits for requests in flight, in ms.
pub const RELAY_DRAIN_TIMEOUT_MS: u64 = 2_000;
/// Time from accept to a client's first complete request head, in ms.
const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Concurrent HTTP/2 streams per client connection.
const H2_STREAMS_PER_CONNECTION_MAX: u32 = 1_024;
/// Consecutive failed accepts before the relay gives up (back-off as every listener:
/// [`bidder_sdk::listener`]).
const ACCEPT_ERRORS_CONSECUTIVE_MAX: u32 = 100;
/// A client connection with no request for this long is closed, in ms.
const IDLE_TIMEOUT_MS: u64 = 120_000;
/// How long a call still running at its bound is heard out, as a multiple of its
/// timeout (the exchange's `LATE_DRAIN_TIMEOUTS`).
pub const LATE_DRAIN_TIMEOUTS: u32 = 2;
/// Late calls heard out at once per target (per prepared target; the exchange's
/// `LATE_CALLS_PER_BUYER_MAX`); past it a late call is dropped, its connection closed.
pub const LATE_CALLS_PER_TARGET_MAX: u32 = 64;
/// Late calls heard out at once by one [`Fanout`] (the exchange's `LATE_CALLS_MAX`).
pub const LATE_CALLS_MAX: usize = 1_024;

/// A buyer to ping.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutTarget {
    /// The buyer's ping URL, `http://addr/ping` (plain HTTP: loopback only).
    pub url: String,
    /// Its signing secret (`whsec_<base64>` or plain text).
    pub secret: String,
    /// Speak HTTP/2 with prior knowledge instead of HTTP/1.1 keep-alive.
    pub http2: bool,
    /// Per-call timeout, in ms (the request's deadline bounds it too).
    pub timeout_ms: u64,
}

/// Why a [`FanoutTarget`] cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse.
    #[error("target url {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        source: http::uri::InvalidUri,
    },
    /// The secret is empty or bad base64 after `whsec_`.
    #[error("target {url:?}: bad secret: {source}")]
    Secret {
        /// The target's URL.
        url: String,
        /// What is wrong with the secret.
        source: proto::signing::SignatureError,
    },
}

/// A [`FanoutTarget`] parsed once: URL and secret ready for every call.
#[derive(Debug, Clone)]
pub struct PreparedTarget {
    uri: Uri,
    secret: Secret,
    http2: bool,
    timeout: Duration,
    /// This target's calls being heard out late (shared by the target's clones).
    late: Arc<AtomicU32>,
}

impl FanoutTarget {
    /// The target for a simulated buyer's ping endpoint.
    pub fn for_sim_buyer(buyer: &crate::sim::SimBuyerInfo, timeout_ms: u64) -> FanoutTarget {
        FanoutTarget {
            url: format!("http://{}/ping", buyer.addr),
            secret: buyer.secret.clone(),
            http2: buyer.http2,
            timeout_ms,
        }
    }

    /// Parses the URL and the secret, so that [`Fanout::ping_prepared`] does not redo it
    /// on every call.
    pub fn prepare(&self) -> Result<PreparedTarget, TargetError> {
        let uri = self.url.parse::<Uri>().map_err(|source| TargetError::Url {
            url: self.url.clone(),
            source,
        })?;
        let secret = Secret::new(&self.secret).map_err(|source| TargetError::Secret {
            url: self.url.clone(),
            source,
        })?;
        Ok(PreparedTarget {
            uri,
            secret,
            http2: self.http2,
            timeout: Duration::from_millis(self.timeout_ms),
            late: Arc::default(),
        })
    }
}

/// How a fan-out went: every target is counted exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutResult {
    /// Targets that answered a 2xx in time (the body is read, never parsed).
    pub answered: u32,
    /// Targets with no whole answer by their bound.
    pub timeouts: u32,
    /// Targets that failed: connection error, non-2xx status, oversize answer, or an
    /// unusable target.
    pub errors: u32,
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallEnd {
    Answered,
    TimedOut,
    Failed,
}

/// Pooled buyer clients, as the exchange's (`exchange/src/buyers.rs`): an HTTP/1.1
/// keep-alive pool and an HTTP/2 client, TCP_NODELAY, same pool limits; plain HTTP only.
#[derive(Debug, Clone)]
pub struct Fanout {
    h1: Client<ResetOnClose, Full<Bytes>>,
    h2: Client<ResetOnClose, Full<Bytes>>,
    /// Calls being heard out late, in all.
    late: Arc<AtomicUsize>,
}

/// One late call's place among those heard out (given back when dropped).
#[derive(Debug)]
struct LatePermit {
    total: Arc<AtomicUsize>,
    target: Arc<AtomicU32>,
}

impl LatePermit {
    /// A place for a late call of `target`, if neither it nor the fan-out is at its limit.
    fn admit(total: &Arc<AtomicUsize>, target: &Arc<AtomicU32>) -> Option<LatePermit> {
        if target.fetch_add(1, Ordering::AcqRel) >= LATE_CALLS_PER_TARGET_MAX {
            target.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if total.fetch_add(1, Ordering::AcqRel) >= LATE_CALLS_MAX {
            total.fetch_sub(1, Ordering::AcqRel);
            target.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(LatePermit {
            total: Arc::clone(total),
            target: Arc::clone(target),
        })
    }
}

impl Drop for LatePermit {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        self.target.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout::new()
    }
}

/// Like the exchange's buyer client: connections end with a reset, so the ones dropped
/// with a request unanswered (a hanging buyer) leave no `TIME_WAIT` behind.
fn connector() -> ResetOnClose {
    ResetOnClose::new(
        hyper_util::client::legacy::connect::dns::GaiResolver::new(),
        Duration::from_millis(CONNECT_TIMEOUT_MS),
    )
}

fn unix_now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Fanout {
    /// Fresh connection pools.
    pub fn new() -> Fanout {
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(IDLE_TIMEOUT_S))
            .pool_max_idle_per_host(IDLE_PER_HOST_MAX)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(connector());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(IDLE_TIMEOUT_S))
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_only(true)
            .build(connector());
        Fanout {
            h1,
            h2,
            late: Arc::default(),
        }
    }

    /// Sends `body` to every target in parallel (signed per Standard Webhooks, message id
    /// `{id_prefix}.{i}`), each bounded by `min(deadline, now + timeout_ms)`; returns as
    /// soon as all answered or timed out. Parses each target's URL and secret on every
    /// call; [`Fanout::ping_prepared`] does not. An unusable target counts as an error.
    pub async fn ping_all(
        &self,
        targets: &[FanoutTarget],
        body: Bytes,
        id_prefix: &str,
        deadline: Instant,
    ) -> FanoutResult {
        let start = Instant::now();
        let timestamp = Timestamp::now();
        let mut calls: FuturesUnordered<_> = targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                let body = body.clone();
                let timestamp = &timestamp;
                async move {
                    match target.prepare() {
                        Ok(prepared) => {
                            self.call(&prepared, body, id_prefix, i, timestamp, start, deadline)
                                .await
                        }
                        Err(_) => CallEnd::Failed,
                    }
                }
            })
            .collect();
        collect(&mut calls).await
    }

    /// [`Fanout::ping_all`] for targets prepared once ([`FanoutTarget::prepare`]): the
    /// cheapest fan-out this client can do, and what the relay runs.
    pub async fn ping_prepared(
        &self,
        targets: &[PreparedTarget],
        body: Bytes,
        id_prefix: &str,
        deadline: Instant,
    ) -> FanoutResult {
        let start = Instant::now();
        let timestamp = Timestamp::now();
        let mut calls: FuturesUnordered<_> = targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                self.call(
                    target,
                    body.clone(),
                    id_prefix,
                    i,
                    &timestamp,
                    start,
                    deadline,
                )
            })
            .collect();
        collect(&mut calls).await
    }

    /// One signed call, bounded by `min(deadline, start + timeout)`.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        target: &PreparedTarget,
        body: Bytes,
        id_prefix: &str,
        index: usize,
        timestamp: &Timestamp,
        start: Instant,
        deadline: Instant,
    ) -> CallEnd {
        let until = deadline.min(start + target.timeout);
        let id = format!("{id_prefix}.{index}");
        let signature = target.secret.sign(&id, timestamp.unix_s, &body);
        let (Ok(id), Ok(signature)) = (HeaderValue::try_from(id), HeaderValue::try_from(signature))
        else {
            // Only an id prefix with control characters gets here.
            return CallEnd::Failed;
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.uri.clone();
        let headers = request.headers_mut();
        headers.reserve(4);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(HEADER_ID, id);
        headers.insert(HEADER_TIMESTAMP, timestamp.header.clone());
        headers.insert(HEADER_SIGNATURE, signature);
        let client = if target.http2 { &self.h2 } else { &self.h1 };
        // The response future owns what it needs, so a late call can outlive this one.
        let response = client.request(request);
        let exchange = async move {
            let response = response.await.map_err(|_| ())?;
            let ok = response.status().is_success();
            // Read (and drop) the whole answer, so the connection can be reused.
            let mut body = response.into_body();
            let mut read: usize = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| ())?;
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                    if read > ANSWER_BYTES_MAX {
                        return Err(());
                    }
                }
            }
            Ok(ok)
        };
        // Boxed, as the exchange boxes each call, so that it can be handed over late.
        let mut exchange = Box::pin(exchange);
        match tokio::time::timeout_at(until, exchange.as_mut()).await {
            Ok(Ok(true)) => CallEnd::Answered,
            Ok(Ok(false) | Err(())) => CallEnd::Failed,
            Err(_) => {
                // Heard out in the background within limits; past them, dropped here
                // (its connection reset).
                if let Some(permit) = LatePermit::admit(&self.late, &target.late) {
                    let bound = target.timeout * LATE_DRAIN_TIMEOUTS;
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(bound, exchange).await;
                        drop(permit);
                    });
                }
                CallEnd::TimedOut
            }
        }
    }
}

/// The `webhook-timestamp`, computed once per fan-out.
#[derive(Debug)]
struct Timestamp {
    unix_s: i64,
    header: HeaderValue,
}

impl Timestamp {
    fn now() -> Timestamp {
        let unix_s = unix_now_s();
        Timestamp {
            unix_s,
            header: HeaderValue::from(unix_s),
        }
    }
}

async fn collect<F>(calls: &mut FuturesUnordered<F>) -> FanoutResult
where
    F: Future<Output = CallEnd>,
{
    let mut result = FanoutResult::default();
    // Ends after one item per target.
    while let Some(end) = calls.next().await {
        match end {
            CallEnd::Answered => result.answered += 1,
            CallEnd::TimedOut => result.timeouts += 1,
            CallEnd::Failed => result.errors += 1,
        }
    }
    result
}

/// What every relay request shares.
#[derive(Debug)]
struct Relay {
    fanout: Fanout,
    targets: Vec<PreparedTarget>,
    deadline: Duration,
    /// Numbers the relayed requests (their message ids); shared by the workers.
    requests: Arc<AtomicU64>,
    /// Random, per relay process: message ids never repeat across relays serving the same
    /// buyers, which take a `webhook-id` once (the SDK refuses a replay with 409).
    tag: u64,
}

impl Relay {
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        // The deadline is taken when the request arrives, as the exchange does.
        let deadline = Instant::now() + self.deadline;
        if request.method() != Method::POST {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        }
        let (parts, body) = request.into_parts();
        let limited = Limited::new(body, RELAY_BODY_BYTES_MAX);
        let body = match tokio::time::timeout_at(deadline, limited.collect()).await {
            Ok(Ok(collected)) => {
                // Read to its end: the connection stays open for the next request.
                bidder_sdk::listener::BodyRead::mark(&parts.extensions);
                collected.to_bytes()
            }
            Ok(Err(_)) => return text_response(StatusCode::BAD_REQUEST, "unreadable body\n"),
            Err(_) => return text_response(StatusCode::REQUEST_TIMEOUT, "body too slow\n"),
        };
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let id_prefix = format!("relay_{:016x}_{n}", self.tag);
        let result = self
            .fanout
            .ping_prepared(&self.targets, body, &id_prefix, deadline)
            .await;
        let json = format!(
            r#"{{"answered":{},"timeouts":{},"errors":{}}}"#,
            result.answered, result.timeouts, result.errors
        );
        let mut response = Response::new(Full::new(Bytes::from(json)));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Serves the relay on `listener` until `shutdown` resolves: POST on any path, any body,
/// forwarded to every target within `deadline_ms` of its arrival; answers
/// `200 {"answered":k,"timeouts":t,"errors":e}`. HTTP/1.1 keep-alive and h2c on the same
/// port, TCP_NODELAY, through the shared accept loop ([`bidder_sdk::listener`], the same
/// limits and back-off as the exchange and the SDK). Fails at once (`InvalidInput`) if a
/// target is unusable, or later if accepting keeps failing.
pub async fn serve_relay(
    listener: TcpListener,
    targets: Vec<FanoutTarget>,
    deadline_ms: u64,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let prepared = targets
        .iter()
        .map(FanoutTarget::prepare)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let relay = Relay {
        fanout: Fanout::new(),
        targets: prepared,
        deadline: Duration::from_millis(deadline_ms),
        requests: Arc::new(AtomicU64::new(0)),
        tag: rand::random(),
    };
    serve_relay_on(listener, Arc::new(relay), shutdown).await
}

/// Serves `relay` on `listener` until `shutdown` resolves (see [`serve_relay`]).
async fn serve_relay_on(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let config = ListenerConfig {
        limits: Limits {
            connections_max: RELAY_CONNECTIONS_MAX,
            // Its only clients are the load generator's, on loopback.
            connections_per_ip_max: 0,
            connections_per_ip_exempt_loopback: true,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_MS,
            h2_streams_per_connection_max: H2_STREAMS_PER_CONNECTION_MAX,
            drain_timeout_ms: RELAY_DRAIN_TIMEOUT_MS,
            accept_errors_max: ACCEPT_ERRORS_CONSECUTIVE_MAX,
            ..Limits::default()
        },
        name: "relay",
        ..ListenerConfig::default()
    };
    serve_connections(
        listener,
        config,
        move |_info: &ConnInfo| {
            let relay = Arc::clone(&relay);
            service_fn(move |request: Request<Incoming>| {
                let relay = Arc::clone(&relay);
                async move { Ok::<_, Infallible>(relay.handle(request).await) }
            })
        },
        shutdown,
    )
    .await
}

/// A relay started by [`spawn_relay`].
#[derive(Debug)]
#[must_use = "dropping the handle leaves the relay running with no way to stop it"]
pub struct RelayHandle {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl RelayHandle {
    /// The address the relay listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish, and returns what
    /// [`serve_relay`] returned.
    pub async fn shutdown(self) -> io::Result<()> {
        let _ = self.shutdown.send(());
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(io::Error::other(join)),
        }
    }
}

/// Binds a loopback port ([`crate::ports::bind_loopback`]) and serves the relay on a task.
pub async fn spawn_relay(
    targets: Vec<FanoutTarget>,
    deadline_ms: u64,
) -> io::Result<(SocketAddr, RelayHandle)> {
    // Check the targets before spawning, so a bad one is an error here.
    for target in &targets {
        target
            .prepare()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    }
    let listener = crate::ports::bind_loopback_tokio()?;
    let addr = listener.local_addr()?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let stopped = async move {
        // A dropped handle is not a request to stop.
        if stop.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let task = tokio::spawn(serve_relay(listener, targets, deadline_ms, stopped));
    Ok((
        addr,
        RelayHandle {
            addr,
            shutdown,
            task,
        },
    ))
}

/// What [`run_relay_process`] prints once listening.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayReady {
    /// Where the relay listens.
    pub addr: SocketAddr,
}

/// The relay child process, built like the exchange it is measured against: `threads`
/// workers (at least 1), each an OS thread with its own current-thread event loop, its
/// own listener on the same `127.0.0.1` port (`SO_REUSEPORT`) and its own buyer pools,
/// so a request and its fan-out stay on one thread. Prints `{"addr": "..."}` as one line
/// once every worker listens, serves until stdin reaches EOF or SIGTERM, then stops.
pub fn run_relay_process(
    targets: Vec<FanoutTarget>,
    deadline_ms: u64,
    threads: usize,
) -> anyhow::Result<()> {
    let prepared = targets
        .iter()
        .map(FanoutTarget::prepare)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("relay target: {e}"))?;
    let requests = Arc::new(AtomicU64::new(0));
    let tag: u64 = rand::random();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    // The first worker binds the port the others share: the kernel's pick, or with
    // `LOADTEST_PORTS` one of its range that was free a moment ago (a port bound with
    // SO_REUSEPORT by another process of this user would be shared, not refused, so the
    // range's pick is made by a plain bind first; black-box round 218c: the relay of a
    // `loadtest run --ports` listened outside the range).
    let mut addr = match crate::ports::range()? {
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
        Some(_) => {
            let port = crate::ports::free_loopback_ports(1)?
                .first()
                .copied()
                .ok_or_else(|| anyhow::anyhow!("no free port in {}", crate::ports::PORTS_ENV))?;
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let mut workers = Vec::new();
    let mut started = Ok(());
    for i in 0..threads.max(1) {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<SocketAddr>>();
        let relay = Arc::new(Relay {
            fanout: Fanout::new(),
            targets: prepared.clone(),
            deadline: Duration::from_millis(deadline_ms),
            requests: Arc::clone(&requests),
            tag,
        });
        let mut stop_rx = stop_rx.clone();
        let bind_to = addr;
        let worker = std::thread::Builder::new()
            .name(format!("relay-worker-{i}"))
            .spawn(move || -> io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = bind_reuseport(bind_to).and_then(|l| {
                        let a = l.local_addr()?;
                        Ok((l, a))
                    });
                    let listener = match listener {
                        Ok((l, a)) => {
                            let _ = ready_tx.send(Ok(a));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    let shutdown = async move {
                        let _ = stop_rx.wait_for(|stopped| *stopped).await;
                    };
                    serve_relay_on(listener, relay, shutdown).await
                })
            });
        match worker {
            Ok(w) => workers.push(w),
            Err(e) => {
                started = Err(anyhow::anyhow!("relay worker {i}: {e}"));
                break;
            }
        }
        match ready_rx.recv() {
            Ok(Ok(a)) => addr = a,
            Ok(Err(e)) => {
                started = Err(anyhow::anyhow!(
                    "relay worker {i} cannot listen on {bind_to}: {e}"
                ));
                break;
            }
            Err(_) => {
                started = Err(anyhow::anyhow!("relay worker {i} ended before listening"));
                break;
            }
        }
    }
    let served = started.and_then(|()| {
        crate::sim::print_json_line(&RelayReady { addr })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(crate::sim::stdin_eof_or_signal());
        Ok(())
    });
    let _ = stop.send(true);
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("relay: a worker stopped with an error: {e}"),
            Err(_) => eprintln!("relay: a worker panicked"),
        }
    }
    served
}
