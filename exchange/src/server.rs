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
use proto::seller::{parse_ping, PingAnswer, PingStatus, PostAnswer, PostEnvelope, PostStatus};
use proto::{ApiError, ErrorCode, LeadMode};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::auction::{deliver, run_auction, AuctionInput, Delivery};
use crate::clock::rfc3339;
use crate::config::SellerIdx;
use crate::core::quotes::{BeginPost, Quote};
use crate::idempotency::{self, Begin};
use crate::state::{AppState, Runtime};

type Body = Full<Bytes>;

/// How often expired quotes and idempotency keys are swept.
pub const SWEEP_INTERVAL_MS: u64 = 100;
/// Concurrent HTTP/2 streams per seller connection.
const H2_STREAMS_PER_CONNECTION_MAX: u32 = 256;

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
    let rt = state.runtime.load_full();
    let server_cfg = rt.config.server.clone();
    let l = &server_cfg.listener;
    let metrics_state = state.clone();
    let config = ListenerConfig {
        limits: Limits {
            connections_max: server_cfg.connections_max,
            connections_per_ip_max: l.connections_per_ip_max,
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
        // Shared by every worker: the slots and the per-IP counts are process-wide.
        gate: Some(state.conn_gate.clone()),
        tls: state.tls.clone(),
        connections_accepted: None,
        on_headers_too_large: Some(Arc::new(move || {
            metrics_state
                .metrics
                .http_errors
                .with_label_values(&[ErrorCode::HeadersTooLarge.as_str()])
                .inc();
        })),
        name: "exchange",
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
                async move { Ok::<_, Infallible>(handle(st, req).await) }
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
        "/metrics" => "metrics",
        _ => "unknown",
    };
    // Probes and scrapes are cheap and must keep answering when sellers overload us, or
    // an orchestrator would restart a busy but healthy exchange.
    match (route, req.method()) {
        ("healthz", &Method::GET) => return json_response(200, br#"{"status":"ok"}"#.to_vec()),
        ("readyz", &Method::GET) => return readyz(&state),
        ("metrics", &Method::GET) => return metrics(&state),
        _ => {}
    }
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return error_response(
            &state,
            &ApiError::new(
                ErrorCode::Overloaded,
                "too many requests in flight; retry shortly",
            ),
        );
    };
    state.metrics.requests_in_flight.inc();
    let resp = match (route, req.method()) {
        ("ping" | "post" | "leads", &Method::POST) => {
            seller_request(&state, route, req, arrival).await
        }
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
    state.metrics.requests_in_flight.dec();
    state
        .metrics
        .observe_route(route, arrival.elapsed().as_secs_f64());
    resp
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
    for (i, b) in rt.config.buyers.iter().enumerate() {
        let u = state.caps.usage(i, b, now);
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
    let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    rt.config
        .seller_by_key_sha256
        .get(&digest)
        .copied()
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown seller key"))
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
) -> Response<Body> {
    let rt = state.runtime.load_full();
    let seller = match authenticate(&rt, &req) {
        Ok(s) => s,
        Err(e) => return error_response(state, &e),
    };
    if let Some(rate) = rt.config.sellers[seller].rate_per_s {
        if !state.rate_limits.allow(seller, rate, state.clock.now_ms()) {
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
            Ok(k) if !k.is_empty() && k.len() <= idempotency::KEY_LEN_MAX => Some(k.to_string()),
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
    if let Some(key) = &idem_key {
        match state
            .idempotency
            .begin(seller, key, &body, state.clock.now_ms())
        {
            Begin::Proceed => {}
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
            Begin::Full => {
                return error_response(
                    state,
                    &ApiError::new(ErrorCode::Overloaded, "too many idempotency keys held"),
                )
            }
        }
    }
    // The work runs in its own task: a client that disconnects mid-auction or mid-post
    // cancels nothing, so reservations, quotes and the ledger always reach a final state.
    let st = state.clone();
    let rt2 = rt.clone();
    let task = tokio::spawn(async move {
        let mut buf = body.to_vec();
        match route {
            "ping" => ping(&st, &rt2, seller, &mut buf, arrival).await,
            "leads" => direct_post(&st, &rt2, seller, &mut buf, arrival).await,
            _ => post(&st, &rt2, seller, &mut buf).await,
        }
    });
    let result = task.await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the request failed inside the exchange",
        ))
    });
    let (status, bytes) = match result {
        Ok(bytes) => (200, bytes),
        Err(e) => {
            if let Some(key) = &idem_key {
                // An error changed nothing: the same request may be retried.
                state.idempotency.forget(seller, key);
            }
            return error_response(state, &e);
        }
    };
    if let Some(key) = &idem_key {
        state
            .idempotency
            .complete(seller, key, status, Bytes::from(bytes.clone()));
    }
    json_response(status, bytes)
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
    let answer = match (result.no_bid, result.ranked.first()) {
        (None, Some(winner)) => {
            let now = state.clock.now_ms();
            let ttl = winner
                .bid
                .expires_in_ms
                .unwrap_or(u64::MAX)
                .min(cfg.server.quote_ttl_ms);
            let expires_at = result.started_ms.saturating_add(ttl as i64).max(now);
            let price = winner.seller_price;
            let quote = Quote {
                ping_id: result.ping_id.clone(),
                auction_id: result.auction_id.clone(),
                seller,
                vertical,
                lead: req.lead.clone(),
                test: req.test,
                price,
                currency: v.currency.clone(),
                expires_at,
                auctioned_at: result.started_ms,
                ranked: result.ranked,
                reservation: result.reservation.clone(),
                score: result.score,
            };
            if state.quotes.insert(quote).is_err() {
                if let Some(r) = &result.reservation {
                    state.caps.release(r);
                }
                return Err(ApiError::new(ErrorCode::Overloaded, "too many open quotes"));
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
        (reason, _) => PingAnswer {
            ping_id: result.ping_id,
            status: PingStatus::NoBid,
            price: None,
            currency: None,
            expires_at: None,
            reason: Some(reason.unwrap_or(proto::seller::NoBidReason::NoBids)),
            score: result.score,
        },
    };
    Ok(to_json(&answer))
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
    let answer = match (result.no_bid, result.ranked.first()) {
        (None, Some(winner)) => {
            let quoted = winner.seller_price;
            let d = Delivery {
                auction_id: &result.auction_id,
                ping_id: &result.ping_id,
                seller,
                vertical,
                lead: &req.lead,
                consent: &req.consent,
                test: req.test,
                quoted,
                ranked: result.ranked,
                reservation: result.reservation,
                auction_started_ms: result.started_ms,
            };
            deliver(state, rt, d).await.map_err(|e| {
                ApiError::new(ErrorCode::Internal, format!("{e}; the lead was not sold"))
            })?
        }
        (reason, _) => {
            let mut a = PostAnswer::status_only(
                PostStatus::Unsold,
                Some(
                    reason
                        .unwrap_or(proto::seller::NoBidReason::NoBids)
                        .as_str(),
                ),
            );
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
    let quote = match state.quotes.begin_post(&env.ping_id, seller, now) {
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
                state.caps.release(&r);
            }
            let mut a = PostAnswer::status_only(PostStatus::Expired, Some("quote_expired"));
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
    let schema = &cfg.verticals[quote.vertical].schema;
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
        if let Some(r) = &quote.reservation {
            state.caps.release(r);
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
            vertical: quote.vertical,
            lead: &lead,
            consent: &env.consent,
            test: quote.test,
            quoted: quote.price,
            ranked: quote.ranked.clone(),
            reservation: quote.reservation.clone(),
            auction_started_ms: quote.auctioned_at,
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
