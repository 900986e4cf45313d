//! The HTTP server: hyper 1.x over HTTP/1.1 and HTTP/2 (cleartext auto-detected, or TLS
//! with ALPN), the contract's routes, and every limit: connections (taken before
//! `accept`, and per client IP), a head budget from accept and an idle timeout (the
//! shared accept loop, `bidder_sdk::listener`), header size and count (431), requests in
//! flight (503 past it, never a queue), body size (413 before reading), body read time.
//! Graceful shutdown stops accepting and lets in-flight auctions and posts finish within
//! the grace period.
//!
//! Layout: this file has the listeners (`serve_routes` on the shared accept loop), the
//! seller listener's router (`handle`), the probes and the response helpers;
//! `seller.rs` the seller API (auth, in-flight place and idempotency key owned by the
//! work, `ping`, `post`, `direct_post`); `admin.rs` the admin listener's router
//! (`handle_admin`: token, `/metrics`, `/admin/reload`).

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

use crate::auction::{deliver, run_auction, AuctionInput, Delivery, DeliveryError};
use crate::clock::rfc3339;
use crate::config::{SellerIdx, SellerKey};
use crate::core::quotes::{BeginPost, Quote, QuoteRefused};
use crate::core::settlement::drop_hold;
use crate::effects;
use crate::idempotency::{self, Begin};
use crate::state::{AppState, ReloadError, Runtime, ADMIN_CONNECTIONS_MAX};

mod admin;
mod dispositions;
mod seller;

pub use admin::{handle_admin, reload_answer, ADMIN_BODY_BYTES_MAX};
pub use seller::{direct_no_bid_answer, PartyConnection};
use seller::{read_body, seller_request, InFlight};

type Body = Full<Bytes>;

/// How often expired quotes and idempotency keys are swept.
pub const SWEEP_INTERVAL_MS: u64 = 100;
/// Concurrent HTTP/2 streams per seller connection.
const H2_STREAMS_PER_CONNECTION_MAX: u32 = 256;
/// The admin listener's idle timeout (`server.idle_timeout_ms` when that is shorter): its
/// connection slots are few ([`ADMIN_CONNECTIONS_MAX`]), so a token holder's idle
/// keep-alive connection gives its slot back soon. (Probes and `401`s close their
/// connection at once.)
pub const ADMIN_IDLE_TIMEOUT_MS: u64 = 5_000;

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

/// One of HTTP's own methods (RFC 9110, and PATCH).
fn is_standard(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ]
    .contains(method)
}

/// `405 method_not_allowed` with the `Allow` header naming the one method the route takes.
fn method_not_allowed(
    state: &AppState,
    method: &Method,
    path: &str,
    allow: &'static str,
) -> Response<Body> {
    // A `HEAD`'s answer is its `GET`'s without the body: the same `Content-Length` too
    // (RFC 9110 8.6), so its message is the one a `GET` gets (black-box round 138a: it
    // named `HEAD`, one byte longer).
    let named = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let mut resp = error_response(
        state,
        &ApiError::new(
            ErrorCode::MethodNotAllowed,
            // The method is named only when it is a standard one: any token is a method,
            // a phone number too (black-box round 73a).
            format!(
                "{} is not allowed on {}; use {allow}",
                if is_standard(named) {
                    named.as_str()
                } else {
                    "this method"
                },
                truncate(path, 64)
            ),
        ),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `resp`, or for a `HEAD` its [`bidder_sdk::listener::head_only`] form: the `GET`'s
/// status and headers, its length in `Content-Length`, and no body.
fn answer_to(method: &Method, resp: Response<Body>) -> Response<Body> {
    if method == Method::HEAD {
        bidder_sdk::listener::head_only(resp)
    } else {
        resp
    }
}

/// The request's `Host` problem, if it has one, as the SDK's listener judges it
/// ([`bidder_sdk::listener::host_problem`]): `400 invalid_request`.
fn host_problem<B>(req: &Request<B>) -> Option<ApiError> {
    bidder_sdk::listener::host_problem(req).map(|m| ApiError::new(ErrorCode::InvalidRequest, m))
}

/// Marks an answer that reaches nobody ([`ApiError::unheard`]): it is not observed in the
/// request-duration histogram either (black-box round 180a: 40 requests whose clients
/// left mid-body were observed as answered).
#[derive(Clone, Copy)]
struct Unheard;

fn error_response(state: &AppState, e: &ApiError) -> Response<Body> {
    // An answer that reaches nobody (the client's stream or connection is gone) is not
    // an error answer.
    if !e.unheard {
        state
            .metrics
            .http_errors
            .with_label_values(&[e.code.as_str()])
            .inc();
    }
    let mut resp = json_response(e.status(), e.to_json());
    if e.unheard {
        resp.extensions_mut().insert(Unheard);
    }
    if matches!(e.code, ErrorCode::RateLimited | ErrorCode::Overloaded) || e.retry_later {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    // RFC 9110: a 401 names the scheme it wants.
    if e.code == ErrorCode::Unauthorized {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// The token of the request's one `Authorization: Bearer <token>` header: the scheme in
/// any case (RFC 9110), spaces around the token trimmed. `None` when there is no such
/// header, when it is not UTF-8 or not Bearer or the token is empty, and when there is
/// more than one `Authorization` header: a proxy that read the last one would disagree
/// with a server that read the first about who is asking, so neither is taken.
pub(super) fn bearer_token(headers: &hyper::HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next()?;
    if all.next().is_some() {
        return None;
    }
    // White space at the value's ends (RFC 9110 5.5: spaces and tabs) is not the
    // field's: HTTP/1.1 trims it, HTTP/2 does not (black-box rounds 138a, at the key's
    // end, and 223c, before the scheme).
    let value = value.to_str().ok()?.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim_matches([' ', '\t']);
    // A key is at most 16 words: what the loader looks for in buyers' signing secrets
    // (black-box round 187a: a seller key of 17 words, in a buyer's secret, passed the
    // loader's look and authenticated).
    let words = token.split([' ', '\t']).filter(|w| !w.is_empty()).count();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && words <= crate::config::KEY_WORDS_MAX)
        .then_some(token)
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
/// (`bidder_sdk::listener`): connection slots (one per accepted connection) (the admin listener has its
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
        let gate = state.admin_gate.clone();
        // With `[server.tls]` the admin listener speaks HTTPS too (same certificate): its
        // bearer token and the metrics never cross a network in cleartext.
        (gate, state.tls.clone(), ADMIN_CONNECTIONS_MAX)
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
            idle_timeout_ms: if admin {
                l.idle_timeout_ms.min(ADMIN_IDLE_TIMEOUT_MS)
            } else {
                l.idle_timeout_ms
            },
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
        connections_dropped: Some(Arc::clone(&state.connections_dropped_at_stop)),
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
            // The connection's place among its party's connections, given back when the
            // connection closes and this service is dropped.
            let party_connection = Arc::new(PartyConnection::default());
            service_fn(move |mut req: Request<Incoming>| {
                let st = st.clone();
                req.extensions_mut().insert(Arc::clone(&party_connection));
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

/// `resp`, closing its connection after it (`Connection: close` over HTTP/1.x, GOAWAY
/// over HTTP/2, calls in flight finishing): a listener keeps a connection open only for
/// the parties it serves (a seller's or buyer's key, the admin token), so clients that
/// probe or hold no key cannot keep its connection slots for the idle timeout.
fn closing(mut resp: Response<Body>) -> Response<Body> {
    resp.extensions_mut()
        .insert(bidder_sdk::listener::CloseConnection);
    resp
}

/// Routes one request. Never panics; every failure is a contract error. An answer to a
/// request that carries no valid key (the probes, `/openapi.json`, `404`, `405`, a bad
/// `Host`, `401`) closes its connection (black-box round 71d: one `GET /healthz` held a
/// connection slot for the whole idle timeout, 299 of them every slot).
pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let arrival = Instant::now();
    let route: &'static str = match req.uri().path() {
        "/v1/ping" => "ping",
        "/v1/post" => "post",
        "/v1/leads" => "leads",
        "/v1/dispositions" => "dispositions",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        // `/metrics` names buyers and volumes: it is on the admin listener only.
        "/openapi.json" => "openapi",
        _ => "unknown",
    };
    // Probes are cheap and must keep answering when sellers overload us, or an
    // orchestrator would restart a busy but healthy exchange. HEAD is GET without the
    // body.
    match (route, req.method()) {
        ("healthz", m @ (&Method::GET | &Method::HEAD)) => {
            return closing(answer_to(
                m,
                json_response(200, br#"{"status":"ok"}"#.to_vec()),
            ))
        }
        ("readyz", m @ (&Method::GET | &Method::HEAD)) => {
            return closing(answer_to(m, readyz(&state)))
        }
        _ => {}
    }
    if let Some(e) = host_problem(&req) {
        return closing(error_response(&state, &e));
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
        ("dispositions", &Method::POST) => {
            dispositions::disposition_request(&state, req, permit).await
        }
        ("openapi", m @ (&Method::GET | &Method::HEAD)) => {
            closing(answer_to(m, openapi_json(&state)))
        }
        ("unknown", _) => closing(error_response(
            &state,
            &ApiError::new(
                ErrorCode::NotFound,
                // The path is not echoed: it may carry anything, PII too (black-box
                // round 72d); the routes are named instead.
                "no such route (the seller listener serves POST /v1/ping, /v1/post, \
                 /v1/leads and /v1/dispositions, GET /healthz, /readyz and /openapi.json)",
            ),
        )),
        (_, m) => {
            let allow = if matches!(route, "ping" | "post" | "leads" | "dispositions") {
                "POST"
            } else {
                "GET, HEAD"
            };
            closing(method_not_allowed(&state, m, req.uri().path(), allow))
        }
    };
    if resp.extensions().get::<Unheard>().is_none() {
        state
            .metrics
            .observe_route(route, arrival.elapsed().as_secs_f64());
    }
    // A `401` carried no valid key, a `403` a key that may not do this: its connection is
    // closed over HTTP/2 too (black-box round 72b: 20 keyless HTTP/2 connections answered
    // `401` held every slot; round 217a: a buyer's key on `/v1/ping`, or a seller's on
    // `/v1/dispositions`, answered `403`, kept 283 of 300 connections that counted for no
    // party's limit; over HTTP/1.1 an answer before the body closes already).
    if matches!(
        resp.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        return closing(resp);
    }
    resp
}

/// `GET /openapi.json`: this exchange's seller API, built from the running configuration
/// once per configuration: every answer shares the one buffer, so a client that never
/// reads its answers (an HTTP/2 window of 0, many streams) holds no copy of its own.
fn openapi_json(state: &AppState) -> Response<Body> {
    let rt = state.runtime.load();
    let mut resp = Response::new(Full::new(rt.openapi_document()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn truncate(s: &str, n: usize) -> String {
    // Hidden characters shown as `?`, never dropped: a name with one dropped could read
    // as another, valid one (black-box round 46: `v\u0000x` was echoed as "vx"); a cut
    // one ends in `…`, so it is not taken for a name of exactly `n` characters
    // (black-box round 209a: the admin's unknown vertical and version).
    proto::error::shown_text(s, n)
}

/// Ready while the ledger is healthy and every vertical's champion model loaded. After a
/// ledger failure (fail-stop) it answers 503 with the reason until the exchange is
/// restarted; while a vertical's `CHAMPION` names a model that failed to load and no
/// model serves that vertical, 503 naming it, until a model (or none, on purpose) is
/// served for it (`POST /admin/models`, or a `CHAMPION` the directory watch can serve).
fn readyz(state: &AppState) -> Response<Body> {
    let unserved = state.unserved_champions();
    let stalled = stall_reason(state.ledger.stalled_for());
    match state.ledger.failure() {
        None if !unserved.is_empty() => {
            // The reason names the vertical and version only: the problems (with paths)
            // are in the log, and this probe needs no authentication.
            let failed: serde_json::Map<String, serde_json::Value> = unserved
                .iter()
                .map(|(v, f)| (v.clone(), truncate(&f.version, 64).into()))
                .collect();
            let reason = unserved
                .iter()
                .map(|(v, f)| {
                    format!(
                        "vertical {v}: the champion model {:?} failed to load ({} problem(s), \
                         in the log), so no model serves it; POST /admin/models serves one",
                        truncate(&f.version, 64),
                        f.problems.len()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            json_response(
                503,
                to_json(&Readiness {
                    status: "not_ready",
                    reason: Some(reason),
                    models_failed: Some(failed),
                    ..Readiness::default()
                }),
            )
        }
        None if stalled.is_some() => json_response(
            503,
            to_json(&Readiness {
                status: "not_ready",
                reason: stalled,
                ..Readiness::default()
            }),
        ),
        None => {
            // Which model version serves each vertical that declares features (null: none
            // yet, so cold-start rates).
            let rt = state.runtime.load();
            let models: serde_json::Map<String, serde_json::Value> = rt
                .config
                .verticals
                .iter()
                .enumerate()
                .filter(|(_, v)| v.features.is_some())
                .map(|(i, v)| {
                    let ver = rt
                        .models
                        .get(i)
                        .and_then(|m| m.as_ref())
                        .map(|m| m.version.clone());
                    (
                        v.name.clone(),
                        ver.map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect();
            json_response(
                200,
                to_json(&Readiness {
                    status: "ready",
                    generation: Some(rt.generation),
                    models: Some(models),
                    ..Readiness::default()
                }),
            )
        }
        Some(why) => json_response(
            503,
            to_json(&Readiness {
                status: "not_ready",
                reason: Some(format!("ledger failed (restart after fixing it): {why}")),
                ..Readiness::default()
            }),
        ),
    }
}

/// `/readyz`'s reason when the ledger's write has been running for [`STALL_MS`] or more
/// (black-box round 90b: a frozen filesystem held every post while `/readyz` said ready).
/// It is ready again as soon as the write returns.
///
/// [`STALL_MS`]: crate::ledger::STALL_MS
fn stall_reason(stalled: Option<std::time::Duration>) -> Option<String> {
    let d = stalled?;
    (d.as_millis() >= u128::from(crate::ledger::STALL_MS)).then(|| {
        format!(
            "ledger write stalled for {} s (a frozen or hung filesystem?): posts and sales wait for it",
            d.as_secs()
        )
    })
}

/// `/readyz`'s answer, its fields in the order API.md shows them (a `json!` map is
/// written in alphabetical order: black-box round 81b).
#[derive(Debug, Default, serde::Serialize)]
struct Readiness {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models_failed: Option<serde_json::Map<String, serde_json::Value>>,
}

fn metrics(state: &AppState) -> Response<Body> {
    let rt = state.runtime.load();
    let now = state.clock.now_ms();
    for b in rt.config.buyers.iter() {
        let u = state.caps.usage(b.key, b, now);
        let sold = [u.sold_hour, u.sold_day, u.sold_week, u.sold_month];
        for ((w, cap), (sold, reserved)) in crate::metrics::cap_windows(Some(&b.caps))
            .into_iter()
            .zip(sold.into_iter().zip(u.reserved_in))
        {
            if let Some(cap) = cap {
                let used = u64::from(sold) + u64::from(reserved);
                let gauge = &state.metrics.cap_utilisation;
                if used == 0 {
                    // Nothing sold or held: no series (absent reads as 0), so 10,000
                    // configured buyers cost series only for the ones in use.
                    let _ = gauge.remove_label_values(&[&b.id, w]);
                    continue;
                }
                // Not rounded: a window in use never reads as the 0 of one unused.
                let pct = used as f64 * 100.0 / f64::from(cap.max(1));
                gauge.with_label_values(&[&b.id, w]).set(pct);
            }
        }
        if let Some(budget) = b.caps.budget_daily {
            let gauge = &state.metrics.budget_utilisation;
            let used = i128::from(u.spent_day.0) + i128::from(u.reserved_micros.0);
            if used <= 0 {
                let _ = gauge.remove_label_values(&[&b.id]);
            } else {
                // A budget of 0 (a paused buyer) with money spent or held is past it by
                // any measure: +Inf, not a percentage of one micro (black-box round 208a).
                let pct = if budget.0 <= 0 {
                    f64::INFINITY
                } else {
                    used as f64 * 100.0 / budget.0 as f64
                };
                gauge.with_label_values(&[&b.id]).set(pct);
            }
        }
    }
    state
        .metrics
        .quotes_open
        .set(state.quotes.open_count() as i64);
    let keys = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    state
        .metrics
        .idempotency_keys
        .set(keys(state.idempotency.len()));
    state
        .metrics
        .disposition_keys
        .set(keys(state.disposition_keys.len()));
    for (listener, gate) in [("seller", &state.conn_gate), ("admin", &state.admin_gate)] {
        let evicted = state
            .metrics
            .connections_evicted
            .with_label_values(&[listener]);
        state.metrics.catch_up(&evicted, gate.evicted());
        let stalled = state
            .metrics
            .connections_stalled
            .with_label_values(&[listener]);
        state.metrics.catch_up(&stalled, gate.stalled());
        let protocol = state
            .metrics
            .connections_protocol_errors
            .with_label_values(&[listener]);
        state.metrics.catch_up(&protocol, gate.protocol_errors());
        let refused = state
            .metrics
            .connections_refused
            .with_label_values(&[listener]);
        state.metrics.catch_up(&refused, gate.refused_per_ip());
        let head = state
            .metrics
            .connections_head_timeouts
            .with_label_values(&[listener]);
        state.metrics.catch_up(&head, gate.head_timeouts());
        state
            .metrics
            .connections_open
            .with_label_values(&[listener])
            .set(i64::try_from(gate.open()).unwrap_or(i64::MAX));
    }
    let mut resp = Response::new(Full::new(Bytes::from(state.metrics.render())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, stall_reason};

    #[test]
    fn a_ledger_write_running_for_the_stall_limit_makes_readyz_not_ready() {
        use std::time::Duration;
        assert_eq!(stall_reason(None), None);
        assert_eq!(stall_reason(Some(Duration::from_millis(4_999))), None);
        let r = stall_reason(Some(Duration::from_millis(7_200))).unwrap_or_default();
        assert!(r.starts_with("ledger write stalled for 7 s"), "{r}");
    }

    fn headers(values: &[&str]) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        for v in values {
            h.append(
                hyper::header::AUTHORIZATION,
                hyper::header::HeaderValue::from_str(v).expect("a header value"),
            );
        }
        h
    }

    #[test]
    fn one_bearer_header_in_any_case_gives_its_token() {
        for v in ["Bearer k1", "bearer k1", "BEARER k1", "BeArEr   k1  "] {
            assert_eq!(bearer_token(&headers(&[v])), Some("k1"), "{v:?}");
        }
        for v in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer    ",
            "Basic k1",
            "Bearerk1",
            "Token k1",
        ] {
            assert_eq!(bearer_token(&headers(&[v])), None, "{v:?}");
        }
        assert_eq!(bearer_token(&headers(&[])), None);
        // At most 16 words, inner white space as written.
        let sixteen = (1..=16)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join("  ");
        assert_eq!(
            bearer_token(&headers(&[&format!("Bearer {sixteen}")])),
            Some(sixteen.as_str())
        );
        assert_eq!(
            bearer_token(&headers(&[&format!("Bearer {sixteen}\tw17")])),
            None
        );
        // Two headers, whatever their order or agreement: neither is taken.
        assert_eq!(bearer_token(&headers(&["Bearer k1", "Bearer k2"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer k1", "Bearer k1"])), None);
    }
}
