//! The HTTP server: hyper 1.x over HTTP/1.1 and HTTP/2 (cleartext auto-detected, or TLS
//! with ALPN), the contract's routes, and every limit: connections (taken before
//! `accept`, and per client IP), a head budget from accept and an idle timeout (the
//! shared accept loop, `bidder_sdk::listener`), header size and count (431), requests in
//! flight (503 past it, never a queue), body size (413 before reading), body read time.
//! Graceful shutdown stops accepting and lets in-flight auctions and posts finish within
//! the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bidder_sdk::listener::{serve_connections, ConnInfo, Limits, ListenerConfig};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use proto::seller::{
    parse_ping, NoBidReason, PingAnswer, PingStatus, PostAnswer, PostEnvelope, PostStatus,
};
use proto::{ApiError, ErrorCode, LeadMode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::auction::{deliver, run_auction, AuctionInput, Delivery};
use crate::clock::rfc3339;
use crate::config::{SellerIdx, SellerKey};
use crate::core::quotes::{BeginPost, Quote, QuoteRefused, EXPIRED_REASON};
use crate::core::settlement::{drop_hold, release_reason};
use crate::effects;
use crate::idempotency::{self, Begin};
use crate::state::{AppState, ReloadError, Runtime, ADMIN_CONNECTIONS_MAX};

type Body = Full<Bytes>;

/// How often expired quotes and idempotency keys are swept.
pub const SWEEP_INTERVAL_MS: u64 = 100;
/// Concurrent HTTP/2 streams per seller connection.
const H2_STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// `Retry-After` (seconds) for a seller over its idempotency key quota: keys free up only
/// as they expire, so retrying within the second is pointless.
const KEY_QUOTA_RETRY_AFTER_S: &str = "60";

fn json_response(status: u16, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(state: &AppState, e: &ApiError) -> Response<Body> {
    state
        .metrics
        .http_errors
        .with_label_values(&[e.code.as_str()])
        .inc();
    let mut resp = json_response(e.status(), e.to_json());
    if matches!(e.code, ErrorCode::RateLimited | ErrorCode::Overloaded) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Serves until `shutdown` resolves, then drains in-flight requests for up to the grace
/// period. Also runs the sweeper (expired quotes, old idempotency keys).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, true).await
}

/// [`serve`], with the sweeper only where `sweeper` is set: with several workers, one
/// sweeps for all.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
    sweeper: bool,
) -> std::io::Result<()> {
    serve_routes(listener, state, false, shutdown, sweeper, handle).await
}

/// The admin listener: the same accept loop and limits as the seller listener, with the
/// admin routes ([`handle_admin`]) and its own connection bound.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    serve_routes(listener, state, true, shutdown, false, handle_admin).await
}

/// The seller or (`admin`) the admin listener on the shared accept loop
/// (`bidder_sdk::listener`): connection slots before `accept` (the admin listener has its
/// own), the head budget, idle timeout, header limits, graceful shutdown, and `handler`
/// for each request.
pub async fn serve_routes<H, F>(
    listener: TcpListener,
    state: Arc<AppState>,
    admin: bool,
    shutdown: impl Future<Output = ()> + Send,
    sweeper: bool,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(Arc<AppState>, Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let rt = state.runtime.load_full();
    let server_cfg = rt.config.server.clone();
    let (gate, tls, connections_max) = if admin {
        let gate = bidder_sdk::listener::ConnectionGate::with_permits(
            state.admin_connections.clone(),
            0,
            true,
        );
        (gate, None, ADMIN_CONNECTIONS_MAX)
    } else {
        (
            state.conn_gate.clone(),
            state.tls.clone(),
            server_cfg.connections_max,
        )
    };
    let l = &server_cfg.listener;
    let metrics_state = state.clone();
    let config = ListenerConfig {
        limits: Limits {
            connections_max,
            connections_per_ip_max: if admin { 0 } else { l.connections_per_ip_max },
            connections_per_ip_exempt_loopback: l.connections_per_ip_exempt_loopback,
            header_read_timeout_ms: server_cfg.header_read_timeout_ms,
            idle_timeout_ms: l.idle_timeout_ms,
            h2_keepalive_interval_ms: l.h2_keepalive_interval_ms,
            h2_keepalive_timeout_ms: l.h2_keepalive_timeout_ms,
            header_bytes_max: l.header_bytes_max,
            headers_max: l.headers_max,
            h2_streams_per_connection_max: H2_STREAMS_PER_CONNECTION_MAX,
            drain_timeout_ms: server_cfg.shutdown_grace_ms,
            // The exchange keeps trying to accept (with back-off) however long it fails.
            accept_errors_max: 0,
        },
        // Shared by every worker: the slots and the per-IP counts are process-wide. The
        // admin listener has its own slots, so sellers can never crowd it out.
        gate: Some(gate),
        tls,
        connections_accepted: None,
        on_headers_too_large: Some(Arc::new(move || {
            metrics_state
                .metrics
                .http_errors
                .with_label_values(&[ErrorCode::HeadersTooLarge.as_str()])
                .inc();
        })),
        name: if admin { "admin" } else { "exchange" },
    };
    let sweeper = sweeper.then(|| {
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(SWEEP_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                st.sweep();
            }
        })
    });
    // The shared accept loop: slots before accept, per-IP limit, a head budget from
    // accept (TLS handshake included), idle timeout, HTTP/2 keep-alive, 431 with the
    // contract's body, graceful drain within `shutdown_grace_ms`.
    let served = serve_connections(
        listener,
        config,
        move |_info: &ConnInfo| {
            let st = state.clone();
            service_fn(move |req| {
                let st = st.clone();
                async move { Ok::<_, Infallible>(handler(st, req).await) }
            })
        },
        shutdown,
    )
    .await;
    if let Some(s) = sweeper {
        s.abort();
    }
    served
}

/// Routes one request. Never panics; every failure is a contract error.
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let arrival = Instant::now();
    let route: &'static str = match req.uri().path() {
        "/v1/ping" => "ping",
        "/v1/post" => "post",
        "/v1/leads" => "leads",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        // `/metrics` names buyers and volumes: it is on the admin listener only.
        "/openapi.json" => "openapi",
        _ => "unknown",
    };
    // Probes are cheap and must keep answering when sellers overload us, or an
    // orchestrator would restart a busy but healthy exchange.
    match (route, req.method()) {
        ("healthz", &Method::GET) => return json_response(200, br#"{"status":"ok"}"#.to_vec()),
        ("readyz", &Method::GET) => return readyz(&state),
        _ => {}
    }
    let Some(permit) = InFlight::try_acquire(&state) else {
        return error_response(
            &state,
            &ApiError::new(
                ErrorCode::Overloaded,
                "too many requests in flight; retry shortly",
            ),
        );
    };
    let resp = match (route, req.method()) {
        ("ping" | "post" | "leads", &Method::POST) => {
            seller_request(&state, route, req, arrival, permit).await
        }
        ("openapi", &Method::GET) => openapi_json(&state),
        ("unknown", _) => error_response(
            &state,
            &ApiError::new(
                ErrorCode::NotFound,
                format!("no route {}", truncate(req.uri().path(), 64)),
            ),
        ),
        (_, m) => {
            let allow = if matches!(route, "ping" | "post" | "leads") {
                "POST"
            } else {
                "GET"
            };
            let mut resp = error_response(
                &state,
                &ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    format!("{m} is not allowed on {}; use {allow}", req.uri().path()),
                ),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
    };
    state
        .metrics
        .observe_route(route, arrival.elapsed().as_secs_f64());
    resp
}

/// One request's place under `server.requests_in_flight_max`. It is owned, not borrowed
/// from the handler: a seller request's work moves it into its own task, so a client that
/// disconnects frees its place only when the work it started has ended, and the limit
/// counts the work actually running.
struct InFlight {
    state: Arc<AppState>,
}

impl InFlight {
    fn try_acquire(state: &Arc<AppState>) -> Option<InFlight> {
        // The permit is forgotten and given back in `drop`: that makes it owned without
        // changing how `AppState` holds the semaphore.
        state.in_flight.try_acquire().ok()?.forget();
        state.metrics.requests_in_flight.inc();
        Some(InFlight {
            state: state.clone(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.add_permits(1);
        self.state.metrics.requests_in_flight.dec();
    }
}

/// An `Idempotency-Key` that `begin` let through: unless `settle` stores an answer, it is
/// forgotten when dropped (an error, or a panic inside the work), so a retry runs again
/// instead of meeting `409` until the key expires.
struct KeyClaim {
    state: Arc<AppState>,
    seller: SellerKey,
    key: String,
    settled: bool,
}

impl KeyClaim {
    /// Stores the answer for replays.
    fn settle(mut self, status: u16, body: &[u8]) {
        self.state.idempotency.complete(
            self.seller,
            &self.key,
            status,
            Bytes::copy_from_slice(body),
        );
        self.settled = true;
    }
}

impl Drop for KeyClaim {
    fn drop(&mut self) {
        if !self.settled {
            self.state.idempotency.forget(self.seller, &self.key);
        }
    }
}

/// `GET /openapi.json`: this exchange's seller API, built from the running configuration.
fn openapi_json(state: &AppState) -> Response<Body> {
    let rt = state.runtime.load();
    json_response(200, crate::openapi::document(&rt.config))
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).filter(|c| !c.is_control()).collect()
}

fn readyz(state: &AppState) -> Response<Body> {
    if state.ledger.is_healthy() {
        json_response(200, br#"{"status":"ready"}"#.to_vec())
    } else {
        json_response(
            503,
            br#"{"status":"not_ready","reason":"ledger not writable"}"#.to_vec(),
        )
    }
}

fn metrics(state: &AppState) -> Response<Body> {
    let rt = state.runtime.load();
    let now = state.clock.now_ms();
    for b in rt.config.buyers.iter() {
        let u = state.caps.usage(b.key, b, now);
        let windows = [
            ("hour", b.caps.hourly, u.sold_hour),
            ("day", b.caps.daily, u.sold_day),
            ("week", b.caps.weekly, u.sold_week),
            ("month", b.caps.monthly, u.sold_month),
        ];
        for (w, cap, sold) in windows {
            if let Some(cap) = cap {
                let used = u64::from(sold) + u64::from(u.reserved);
                let pct = (used * 100 / u64::from(cap.max(1))) as i64;
                state
                    .metrics
                    .cap_utilisation
                    .with_label_values(&[&b.id, w])
                    .set(pct);
            }
        }
    }
    state
        .metrics
        .quotes_open
        .set(state.quotes.open_count() as i64);
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Authenticates a seller from `Authorization: Bearer <key>`.
fn authenticate(rt: &Runtime, req: &Request<Incoming>) -> Result<SellerIdx, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            "missing Authorization: Bearer <seller key>",
        )
    })?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "Authorization must be Bearer <seller key>",
            )
        })?;
    let unknown = || ApiError::new(ErrorCode::Unauthorized, "unknown seller key");
    // Timing: the key is hashed first, so the map lookup's time depends only on the
    // digest, which an attacker cannot steer towards a valid key's digest (that would
    // need SHA-256 preimages); the final check against the seller's stored digests is
    // constant-time all the same, so no comparison on secret material short-circuits.
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let seller = *rt
        .config
        .seller_by_key_sha256
        .get(&digest)
        .ok_or_else(unknown)?;
    let s = rt.config.sellers.get(seller).ok_or_else(unknown)?;
    let next = s.key_sha256_next.unwrap_or(s.key_sha256);
    let valid = digest.ct_eq(&s.key_sha256) | digest.ct_eq(&next);
    if bool::from(valid) {
        Ok(seller)
    } else {
        Err(unknown())
    }
}

async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body is over {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect()).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body did not arrive in time",
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body could not be read",
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn is_json(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

async fn seller_request(
    state: &Arc<AppState>,
    route: &'static str,
    req: Request<Incoming>,
    arrival: Instant,
    permit: InFlight,
) -> Response<Body> {
    let rt = state.runtime.load_full();
    let seller = match authenticate(&rt, &req) {
        Ok(s) => s,
        Err(e) => return error_response(state, &e),
    };
    // Per-seller state (rate, idempotency keys, quotes) is keyed by the stable key.
    let seller_key = rt.config.sellers[seller].key;
    if let Some(rate) = rt.config.sellers[seller].rate_per_s {
        if !state
            .rate_limits
            .allow(seller_key, rate, state.clock.now_ms())
        {
            return error_response(
                state,
                &ApiError::new(
                    ErrorCode::RateLimited,
                    format!("over {rate} requests per second"),
                ),
            );
        }
    }
    if !is_json(&req) {
        return error_response(
            state,
            &ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/json",
            ),
        );
    }
    let idem_key = match req.headers().get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if idempotency::is_valid_key(k) => Some(k.to_string()),
            _ => {
                return error_response(
                    state,
                    &ApiError::new(
                        ErrorCode::InvalidRequest,
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    ),
                )
            }
        },
    };
    let server = &rt.config.server;
    let body = match read_body(
        req,
        server.body_bytes_max,
        Duration::from_millis(server.header_read_timeout_ms),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return error_response(state, &e),
    };
    let claim = match idem_key {
        None => None,
        Some(key) => {
            let quota = rt.config.idempotency_keys_max_of(seller);
            match state.idempotency.begin_within(
                seller_key,
                &key,
                &body,
                state.clock.now_ms(),
                quota,
            ) {
                Begin::Proceed => Some(KeyClaim {
                    state: state.clone(),
                    seller: seller_key,
                    key,
                    settled: false,
                }),
                Begin::Replay { status, body } => return json_response(status, body.to_vec()),
                Begin::BodyMismatch => {
                    return error_response(
                        state,
                        &ApiError::new(
                            ErrorCode::Conflict,
                            "Idempotency-Key was used with a different body",
                        ),
                    )
                }
                Begin::InFlight => {
                    return error_response(
                        state,
                        &ApiError::new(
                            ErrorCode::Conflict,
                            "a request with this Idempotency-Key is still in flight",
                        ),
                    )
                }
                Begin::SellerFull => {
                    let mut resp = error_response(
                        state,
                        &ApiError::new(
                            ErrorCode::RateLimited,
                            format!(
                                "this seller holds {quota} idempotency keys already; \
                                 keys are freed as they expire, or send requests without one"
                            ),
                        ),
                    );
                    resp.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from_static(KEY_QUOTA_RETRY_AFTER_S),
                    );
                    return resp;
                }
                Begin::Full => {
                    return error_response(
                        state,
                        &ApiError::new(ErrorCode::Overloaded, "too many idempotency keys held"),
                    )
                }
            }
        }
    };
    // The work runs in its own task, which also owns the in-flight permit and the
    // idempotency key: a client that disconnects mid-auction or mid-post cancels nothing,
    // so reservations, quotes, deliveries and the ledger reach a final state, the key is
    // settled (a retry gets the stored answer), and the permit is held until the work ends.
    let st = state.clone();
    let rt2 = rt.clone();
    let task = tokio::spawn(async move {
        let _permit = permit;
        let mut buf = body.to_vec();
        let result = match route {
            "ping" => ping(&st, &rt2, seller, &mut buf, arrival).await,
            "leads" => direct_post(&st, &rt2, seller, &mut buf, arrival).await,
            _ => post(&st, &rt2, seller, &mut buf).await,
        };
        if let Some(claim) = claim {
            match &result {
                Ok(bytes) => claim.settle(200, bytes),
                // A 500 may come after a buyer got the lead (a sale the ledger could not
                // record): running it again could deliver twice, so it is stored too.
                Err(e) if e.code == ErrorCode::Internal => claim.settle(e.status(), &e.to_json()),
                // Any other error changed nothing: the key is forgotten and may be retried.
                Err(_) => drop(claim),
            }
        }
        result
    });
    let result = task.await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the request failed inside the exchange",
        ))
    });
    match result {
        Ok(bytes) => json_response(200, bytes),
        Err(e) => error_response(state, &e),
    }
}

fn check_vertical(rt: &Runtime, seller: SellerIdx, vertical: &str) -> Result<usize, ApiError> {
    let (idx, _) = rt
        .config
        .vertical(vertical)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "vertical: unknown vertical"))?;
    if rt.config.sellers[seller].verticals.contains(&idx) {
        Ok(idx)
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this key may not sell in vertical {vertical}"),
        ))
    }
}

/// Parses a ping (`LeadMode::Ping`) or direct post (`LeadMode::Full`) body and checks
/// that the seller may sell in its vertical.
fn parse_seller_lead(
    rt: &Runtime,
    seller: SellerIdx,
    buf: &mut [u8],
    mode: LeadMode,
) -> Result<(proto::seller::PingRequest, usize), ApiError> {
    let cfg = &rt.config;
    let req = parse_ping(buf, mode, |v| cfg.vertical(v).map(|(_, x)| &x.schema))?;
    let vertical = check_vertical(rt, seller, &req.vertical)?;
    Ok((req, vertical))
}

async fn ping(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    seller: SellerIdx,
    buf: &mut [u8],
    arrival: Instant,
) -> Result<Vec<u8>, ApiError> {
    let cfg = &rt.config;
    let (req, vertical) = parse_seller_lead(rt, seller, buf, LeadMode::Ping)?;
    if state.quotes.open_count() >= cfg.server.quotes_open_max {
        return Err(ApiError::new(ErrorCode::Overloaded, "too many open quotes"));
    }
    let seller_open_max = cfg.sellers[seller].quotes_open_max;
    if state.quotes.seller_open_count(cfg.sellers[seller].key) >= seller_open_max {
        return Err(seller_quotes_limited(seller_open_max));
    }
    let result = run_auction(
        state,
        rt,
        AuctionInput {
            seller,
            vertical,
            req: &req,
            lead: &req.lead,
            arrival,
            direct: false,
        },
    )
    .await;
    let v = &cfg.verticals[vertical];
    let award = result.award;
    let answer = match award.winner() {
        Some(winner) => {
            let now = state.clock.now_ms();
            let expires_at = award.quote_expires_at(cfg.server.quote_ttl_ms, now);
            let price = winner.seller_price;
            let reserved = award.quote_reserved(cfg, rt.generation, &result.ping_id, now);
            let quote = Quote {
                ping_id: result.ping_id.clone(),
                auction_id: result.auction_id.clone(),
                seller: cfg.sellers[seller].key,
                vertical,
                vertical_name: v.name.clone(),
                // The request is done with: the quote takes its lead without a copy.
                lead: req.lead,
                test: req.test,
                price,
                currency: v.currency.clone(),
                expires_at,
                auctioned_at: award.arrival,
                reservation: award.reservation.clone(),
                ranked: award.ranked,
                score: result.score,
            };
            if let Err(refused) = state.quotes.insert_limited(quote, seller_open_max) {
                if let Some(r) = award.reservation {
                    let drop = drop_hold(
                        cfg,
                        rt.generation,
                        r,
                        Some(&result.ping_id),
                        false,
                        Some(release_reason::QUOTE_REFUSED),
                        now,
                    );
                    let _ = effects::execute(state, rt, drop.into_iter()).await;
                }
                return Err(match refused {
                    QuoteRefused::SellerLimit => seller_quotes_limited(seller_open_max),
                    QuoteRefused::BookFull => {
                        ApiError::new(ErrorCode::Overloaded, "too many open quotes")
                    }
                });
            }
            if let Some(rec) = reserved {
                effects::record(state, &rec).await;
            }
            PingAnswer {
                ping_id: result.ping_id,
                status: PingStatus::Bid,
                price: Some(price),
                currency: Some(v.currency.clone()),
                expires_at: Some(rfc3339(expires_at)),
                reason: None,
                score: result.score,
            }
        }
        None => PingAnswer {
            ping_id: result.ping_id,
            status: PingStatus::NoBid,
            price: None,
            currency: None,
            expires_at: None,
            reason: Some(award.no_bid.unwrap_or(NoBidReason::NoBids)),
            score: result.score,
        },
    };
    Ok(to_json(&answer))
}

/// A seller holding its `sellers.ID.quotes_open_max` open quotes: 429 with `Retry-After`.
fn seller_quotes_limited(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        format!("over {max} open quotes; post or let some expire first"),
    )
}

async fn direct_post(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    seller: SellerIdx,
    buf: &mut [u8],
    arrival: Instant,
) -> Result<Vec<u8>, ApiError> {
    let cfg = &rt.config;
    let (req, vertical) = parse_seller_lead(rt, seller, buf, LeadMode::Full)?;
    let schema = &cfg.verticals[vertical].schema;
    let projection = req.lead.ping_projection(schema);
    let result = run_auction(
        state,
        rt,
        AuctionInput {
            seller,
            vertical,
            req: &req,
            lead: &projection,
            arrival,
            direct: true,
        },
    )
    .await;
    let award = result.award;
    let answer = match award.winner().map(|w| w.seller_price) {
        Some(quoted) => {
            let d = Delivery {
                auction_id: &result.auction_id,
                ping_id: &result.ping_id,
                seller,
                vertical,
                lead: &req.lead,
                consent: &req.consent,
                test: req.test,
                quoted,
                ranked: award.ranked,
                reservation: award.reservation,
                auction_started_ms: award.arrival,
                from_quote: false,
            };
            deliver(state, rt, d).await.map_err(|e| {
                ApiError::new(ErrorCode::Internal, format!("{e}; the lead was not sold"))
            })?
        }
        None => {
            let reason = award.no_bid.unwrap_or(NoBidReason::NoBids);
            let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(reason.as_str()));
            a.ping_id = Some(result.ping_id);
            a
        }
    };
    state
        .metrics
        .posts
        .with_label_values(&[answer.status.as_str()])
        .inc();
    Ok(to_json(&answer))
}

async fn post(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    seller: SellerIdx,
    buf: &mut [u8],
) -> Result<Vec<u8>, ApiError> {
    let cfg = &rt.config;
    let env = PostEnvelope::parse(buf)?;
    let now = state.clock.now_ms();
    let seller_key = cfg.sellers[seller].key;
    let quote = match state.quotes.begin_post(&env.ping_id, seller_key, now) {
        BeginPost::NotFound => return Err(ApiError::new(ErrorCode::NotFound, "unknown ping_id")),
        BeginPost::InFlight => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a post for this ping_id is still in flight",
            ))
        }
        BeginPost::Done(answer) => return Ok(to_json(&answer)),
        BeginPost::Expired(reservation) => {
            if let Some(r) = reservation {
                let drop = drop_hold(cfg, rt.generation, r, Some(&env.ping_id), true, None, now);
                let _ = effects::execute(state, rt, drop.into_iter()).await;
            }
            let mut a = PostAnswer::status_only(PostStatus::Expired, Some(EXPIRED_REASON));
            a.ping_id = Some(env.ping_id.clone());
            state
                .metrics
                .posts
                .with_label_values(&[a.status.as_str()])
                .inc();
            return Ok(to_json(&a));
        }
        BeginPost::Post(q) => q,
    };
    // The quote may predate a reload that moved verticals: find its vertical by name.
    let vertical = match cfg.verticals.get(quote.vertical) {
        Some(v) if v.name == quote.vertical_name => Some(quote.vertical),
        _ => cfg.vertical(&quote.vertical_name).map(|(i, _)| i),
    };
    let Some(vertical) = vertical else {
        // The vertical left the configuration: nothing can be delivered.
        if let Some(r) = &quote.reservation {
            state.caps.release(r);
        }
        let mut a = PostAnswer::status_only(PostStatus::Unsold, Some("vertical_removed"));
        a.ping_id = Some(quote.ping_id.clone());
        state.quotes.finish(&quote.ping_id, a.clone(), now);
        state
            .metrics
            .posts
            .with_label_values(&[a.status.as_str()])
            .inc();
        return Ok(to_json(&a));
    };
    let schema = &cfg.verticals[vertical].schema;
    let lead = match env.validate_lead(schema) {
        Ok(l) => l,
        Err(e) => {
            // Nothing was delivered: the quote stays open for a corrected post.
            state.quotes.abandon(&env.ping_id, quote);
            return Err(e);
        }
    };
    let changed = quote.lead.ping_field_changes(&lead, schema);
    let answer = if !changed.is_empty() {
        if let Some(r) = quote.reservation.clone() {
            let drop = drop_hold(
                cfg,
                rt.generation,
                r,
                Some(&quote.ping_id),
                false,
                Some(release_reason::MISMATCH),
                state.clock.now_ms(),
            );
            let _ = effects::execute(state, rt, drop.into_iter()).await;
        }
        let mut a = PostAnswer::status_only(PostStatus::Mismatch, Some("ping_fields_changed"));
        a.ping_id = Some(quote.ping_id.clone());
        a.changed_fields = changed.iter().map(|s| s.to_string()).collect();
        a
    } else {
        let d = Delivery {
            auction_id: &quote.auction_id,
            ping_id: &quote.ping_id,
            seller,
            vertical,
            lead: &lead,
            consent: &env.consent,
            test: quote.test,
            quoted: quote.price,
            ranked: quote.ranked.clone(),
            reservation: quote.reservation.clone(),
            auction_started_ms: quote.auctioned_at,
            from_quote: true,
        };
        match deliver(state, rt, d).await {
            Ok(a) => a,
            Err(e) => {
                // The reservation was committed or released inside; the post's outcome is
                // unknown to the seller, so the ping stays in flight-safe Done with an error.
                tracing::error!(error = %e, "sale not recorded");
                let a = PostAnswer::status_only(PostStatus::Unsold, Some("ledger_unavailable"));
                state.quotes.finish(&quote.ping_id, a, state.clock.now_ms());
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    "the sale could not be recorded; the lead was not sold",
                ));
            }
        }
    };
    state
        .quotes
        .finish(&quote.ping_id, answer.clone(), state.clock.now_ms());
    state
        .metrics
        .posts
        .with_label_values(&[answer.status.as_str()])
        .inc();
    Ok(to_json(&answer))
}

// ---------------------------------------------------------------------------------------
// The admin listener.

/// Largest admin request body (`POST /admin/reload` takes none; a stray body is bounded).
pub const ADMIN_BODY_BYTES_MAX: usize = 4 * 1024;

/// Is `presented` the admin token? Both sides are hashed first, so the comparison takes
/// the same time for every token of any length, and it never stops at the first
/// differing byte.
fn token_matches(expected: &[u8], presented: &[u8]) -> bool {
    let a: [u8; 32] = Sha256::digest(expected).into();
    let b: [u8; 32] = Sha256::digest(presented).into();
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Checks `Authorization: Bearer <admin token>`.
fn admin_authorized(rt: &Runtime, req: &Request<Incoming>) -> Result<(), ApiError> {
    let unauthorized = || {
        ApiError::new(
            ErrorCode::Unauthorized,
            "missing or wrong Authorization: Bearer <admin token>",
        )
    };
    let Some(expected) = &rt.config.admin.token else {
        return Err(unauthorized());
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    if token_matches(expected.as_bytes(), presented.as_bytes()) {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

/// Routes one admin request: `GET /healthz` and `GET /readyz` (open, as on the seller
/// listener), and, with the admin token, `GET /metrics` and `POST /admin/reload`. Without
/// the token every other path is `401` (the admin routes are not revealed). Never panics.
pub async fn handle_admin(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let route: &'static str = match req.uri().path() {
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/admin/reload" => "reload",
        _ => "unknown",
    };
    match (route, req.method()) {
        ("healthz", &Method::GET) => return json_response(200, br#"{"status":"ok"}"#.to_vec()),
        ("readyz", &Method::GET) => return readyz(&state),
        _ => {}
    }
    let rt = state.runtime.load_full();
    if let Err(e) = admin_authorized(&rt, &req) {
        return error_response(&state, &e);
    }
    let Ok(_permit) = state.admin_in_flight.try_acquire() else {
        return error_response(
            &state,
            &ApiError::new(
                ErrorCode::Overloaded,
                "too many admin requests in flight; retry shortly",
            ),
        );
    };
    match (route, req.method()) {
        ("metrics", &Method::GET) => metrics(&state),
        ("reload", &Method::POST) => {
            let timeout = Duration::from_millis(rt.config.server.header_read_timeout_ms);
            if let Err(e) = read_body(req, ADMIN_BODY_BYTES_MAX, timeout).await {
                return error_response(&state, &e);
            }
            admin_reload(&state).await
        }
        ("unknown", _) => error_response(
            &state,
            &ApiError::new(
                ErrorCode::NotFound,
                format!("no route {}", truncate(req.uri().path(), 64)),
            ),
        ),
        (_, m) => {
            let allow = if route == "reload" { "POST" } else { "GET" };
            let mut resp = error_response(
                &state,
                &ApiError::new(
                    ErrorCode::MethodNotAllowed,
                    format!("{m} is not allowed on {}; use {allow}", req.uri().path()),
                ),
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            resp
        }
    }
}

/// `POST /admin/reload`: `{"generation": N}`, or every problem at once (`400
/// invalid_request` with `fields`) while the old runtime keeps serving.
async fn admin_reload(state: &Arc<AppState>) -> Response<Body> {
    let st = state.clone();
    // Reading the file blocks; reloads are serialized inside.
    let result = tokio::task::spawn_blocking(move || st.reload())
        .await
        .unwrap_or_else(|_| {
            Err(ReloadError::Invalid(vec![proto::FieldProblem::new(
                "config",
                "the reload failed inside the exchange",
            )]))
        });
    reload_answer(state, result)
}

/// The HTTP answer for a reload result (also logs and counts it).
pub fn reload_answer(state: &AppState, result: Result<u64, ReloadError>) -> Response<Body> {
    match result {
        Ok(generation) => {
            state.metrics.reloads.with_label_values(&["applied"]).inc();
            tracing::info!(generation, "configuration reloaded");
            json_response(200, format!("{{\"generation\":{generation}}}").into_bytes())
        }
        Err(ReloadError::NoSource) => {
            state.metrics.reloads.with_label_values(&["refused"]).inc();
            error_response(
                state,
                &ApiError::new(
                    ErrorCode::Conflict,
                    "this exchange was not started from a configuration it can read again",
                ),
            )
        }
        Err(ReloadError::Invalid(fields)) => {
            state.metrics.reloads.with_label_values(&["refused"]).inc();
            tracing::warn!(
                problems = fields.len(),
                generation = state.generation(),
                "configuration reload refused; the running configuration stays"
            );
            error_response(
                state,
                &ApiError::from_fields(ErrorCode::InvalidRequest, fields),
            )
        }
    }
}
