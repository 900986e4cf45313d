//! Reaching the target: the loopback check, the HTTP client and its connection limit,
//! the exchange, relay and direct calls, and how each answer or failure is classified.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::Rng;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::leads::{buyer_ping_bytes, lead_pool, post_body, PooledLead};
use super::plan::{GenError, LoadPlan, Target};
use super::schedule::{MixSampler, Op};
use super::{
    BUYER_PING_VERTICAL, DIRECT_TARGETS_MAX, RELAY_PATH, RELAY_TMAX_MS, REQUEST_TIMEOUT_MS_MAX,
    RESPONSE_BODY_MAX,
};
use crate::relay::{Fanout, FanoutTarget, PreparedTarget};
/// Refuses anything but loopback, before a single packet goes out.
pub(super) fn check_loopback(target: &Target) -> Result<(), GenError> {
    match target {
        Target::Exchange { addr, .. } | Target::Relay { addr } => {
            if addr.ip().is_loopback() {
                Ok(())
            } else {
                Err(GenError::NotLoopback(addr.to_string()))
            }
        }
        Target::Direct { targets, .. } => {
            for t in targets {
                let loopback = t.url.parse::<Uri>().ok().and_then(|u| {
                    let host = u.host()?.trim_start_matches('[').trim_end_matches(']');
                    Some(
                        host.eq_ignore_ascii_case("localhost")
                            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
                    )
                });
                if loopback != Some(true) {
                    return Err(GenError::NotLoopback(t.url.clone()));
                }
            }
            Ok(())
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How requests reach the target.
// One per run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Wire {
    Exchange {
        ping: Uri,
        post: Uri,
        leads: Uri,
        auth: HeaderValue,
    },
    Relay {
        uri: Uri,
    },
    Direct {
        fanout: Fanout,
        /// Parsed once, as the relay does, so the baseline costs what the relay costs.
        targets: Vec<PreparedTarget>,
        deadline_ms: u64,
        /// Random, per run: the baseline's message ids never repeat across runs against
        /// the same buyers, which take a `webhook-id` once (the SDK refuses a replay with
        /// 409: a second rate of `p2-knee` failed every call of its baseline).
        tag: u64,
    },
}

/// Everything the request futures share (borrowed, same task).
pub(super) struct Ctx {
    wire: Wire,
    client: HttpClient,
    /// One permit per connection: at most `connections` requests on the wire.
    connections: Semaphore,
    timeout: Duration,
    pub(super) leads: Vec<PooledLead>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("wire", &self.wire)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A call to make.
#[derive(Debug)]
pub(super) enum Job {
    /// The request as planned.
    First {
        index: u64,
        planned: Instant,
        /// Where its latency counts from: `max(planned, started)`.
        origin: Instant,
        measured: bool,
        op: Op,
        lead: usize,
    },
    /// The `/v1/post` after a ping that answered `bid`.
    Post {
        index: u64,
        start: Instant,
        measured: bool,
        lead: usize,
        ping_id: String,
    },
}

/// A finished call.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) index: u64,
    /// First call: the planned time (for the send lag). Post: when it started.
    pub(super) planned: Instant,
    /// Where the latency counts from: first call, `max(planned, started)`; post, its start.
    pub(super) from: Instant,
    pub(super) measured: bool,
    pub(super) op: Op,
    pub(super) is_post: bool,
    pub(super) lead: usize,
    /// When it had a connection and went out.
    pub(super) wire_at: Instant,
    pub(super) at: Instant,
    pub(super) result: Result<Answer, ErrorClass>,
}

/// A successful answer, as an outcome.
#[derive(Debug)]
pub(super) enum Answer {
    Bid { ping_id: String },
    NoBid { reason: String },
    Post { status: String },
    Leads { status: String },
    Relayed { buyers: Option<BuyerCounts> },
    FannedOut { buyers: BuyerCounts },
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub(super) struct BuyerCounts {
    #[serde(default)]
    pub(super) answered: u64,
    #[serde(default)]
    pub(super) timeouts: u64,
    #[serde(default)]
    pub(super) errors: u64,
}

/// Error classes; see [`RunResult::errors`](super::RunResult::errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    Connect,
    Io,
    Timeout,
    Http4xx,
    RateLimited429,
    Http5xx,
    Overloaded503,
    HttpOther,
    BadBody,
    InFlightLimit,
}

impl ErrorClass {
    /// Every class.
    pub(super) const ALL: [ErrorClass; 10] = [
        ErrorClass::Connect,
        ErrorClass::Io,
        ErrorClass::Timeout,
        ErrorClass::Http4xx,
        ErrorClass::RateLimited429,
        ErrorClass::Http5xx,
        ErrorClass::Overloaded503,
        ErrorClass::HttpOther,
        ErrorClass::BadBody,
        ErrorClass::InFlightLimit,
    ];

    pub(super) fn name(self, post: bool) -> &'static str {
        use ErrorClass::*;
        match (self, post) {
            (Connect, false) => "connect",
            (Connect, true) => "post_connect",
            (Io, false) => "io",
            (Io, true) => "post_io",
            (Timeout, false) => "timeout",
            (Timeout, true) => "post_timeout",
            (Http4xx, false) => "http_4xx",
            (Http4xx, true) => "post_http_4xx",
            (RateLimited429, false) => "rate_limited_429",
            (RateLimited429, true) => "post_rate_limited_429",
            (Http5xx, false) => "http_5xx",
            (Http5xx, true) => "post_http_5xx",
            (Overloaded503, false) => "overloaded_503",
            (Overloaded503, true) => "post_overloaded_503",
            (HttpOther, false) => "http_other",
            (HttpOther, true) => "post_http_other",
            (BadBody, false) => "bad_body",
            (BadBody, true) => "post_bad_body",
            (InFlightLimit, false) => "in_flight_limit",
            (InFlightLimit, true) => "post_in_flight_limit",
        }
    }

    /// The target did answer (the request completed, badly).
    pub(super) fn answered(self) -> bool {
        use ErrorClass::*;
        matches!(
            self,
            Http4xx | RateLimited429 | Http5xx | Overloaded503 | HttpOther | BadBody
        )
    }

    /// Its latency goes into the histogram (module docs).
    pub(super) fn recorded(self) -> bool {
        matches!(self, ErrorClass::Timeout | ErrorClass::InFlightLimit)
    }

    fn of_status(status: StatusCode) -> ErrorClass {
        match status.as_u16() {
            503 => ErrorClass::Overloaded503,
            429 => ErrorClass::RateLimited429,
            500..=599 => ErrorClass::Http5xx,
            400..=499 => ErrorClass::Http4xx,
            _ => ErrorClass::HttpOther,
        }
    }
}

/// The class of a failed connect: a stall when it gave up on the connect timeout (the
/// error, or one of its sources, is an I/O `TimedOut`: hyper's connect timeout, or the
/// kernel's after its SYN retries), or when it took the whole connect timeout
/// (`waited`, from when it had a permit, is at least `connect_timeout`); otherwise a
/// fast failure, such as a refused connection (`connect`).
///
/// A target that stops (SIGSTOP, a full accept queue) lets its listen backlog fill, and
/// then every new connect hangs until the connect timeout, which is the request timeout:
/// when both expire in the same timer tick the connect's error wins, and these were
/// counted as `connect` and left out of the percentiles (black-box: 354 of a 6 s stall's
/// requests), though they are the stalled target's backlog as much as its `timeout`s.
pub(super) fn connect_error_class(
    err: &(dyn std::error::Error + 'static),
    waited: Duration,
    connect_timeout: Duration,
) -> ErrorClass {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return ErrorClass::Timeout;
        }
        source = e.source();
    }
    if waited >= connect_timeout {
        ErrorClass::Timeout
    } else {
        ErrorClass::Connect
    }
}

#[derive(Deserialize)]
struct PingAnswer {
    status: String,
    #[serde(default)]
    ping_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct PostAnswer {
    status: String,
}

impl Ctx {
    pub(super) fn new(plan: &LoadPlan, target: &Target) -> Result<Ctx, GenError> {
        let uri = |addr: &SocketAddr, path: &str| {
            format!("http://{addr}{path}")
                .parse::<Uri>()
                .map_err(|e| GenError::InvalidPlan(format!("target address {addr}: {e}")))
        };
        let (wire, vertical) = match target {
            Target::Exchange {
                addr,
                seller_key,
                vertical,
            } => {
                let auth =
                    HeaderValue::from_str(&format!("Bearer {seller_key}")).map_err(|_| {
                        GenError::InvalidPlan("the seller key is not a valid header value".into())
                    })?;
                let wire = Wire::Exchange {
                    ping: uri(addr, "/v1/ping")?,
                    post: uri(addr, "/v1/post")?,
                    leads: uri(addr, "/v1/leads")?,
                    auth,
                };
                (wire, vertical.as_str())
            }
            Target::Relay { addr } => (
                Wire::Relay {
                    uri: uri(addr, RELAY_PATH)?,
                },
                BUYER_PING_VERTICAL,
            ),
            Target::Direct {
                targets,
                deadline_ms,
            } => {
                if targets.is_empty() || targets.len() > DIRECT_TARGETS_MAX {
                    return Err(GenError::InvalidPlan(format!(
                        "a direct target needs 1..={DIRECT_TARGETS_MAX} buyers, got {}",
                        targets.len()
                    )));
                }
                if *deadline_ms == 0 || *deadline_ms > REQUEST_TIMEOUT_MS_MAX {
                    return Err(GenError::InvalidPlan(format!(
                        "direct deadline_ms {deadline_ms} is outside 1..={REQUEST_TIMEOUT_MS_MAX}"
                    )));
                }
                let prepared = targets
                    .iter()
                    .map(FanoutTarget::prepare)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| GenError::InvalidPlan(format!("direct target: {e}")))?;
                let wire = Wire::Direct {
                    fanout: Fanout::new(),
                    targets: prepared,
                    deadline_ms: *deadline_ms,
                    tag: rand::random(),
                };
                (wire, BUYER_PING_VERTICAL)
            }
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_millis(plan.request_timeout_ms)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(plan.connections)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Ctx {
            wire,
            client,
            connections: Semaphore::new(plan.connections),
            timeout: Duration::from_millis(plan.request_timeout_ms),
            leads: lead_pool(plan.seed, vertical),
        })
    }

    pub(super) fn op(&self, mix: &MixSampler, rng: &mut impl Rng) -> Op {
        match self.wire {
            Wire::Exchange { .. } => mix.pick(rng),
            Wire::Relay { .. } => Op::Relay,
            Wire::Direct { .. } => Op::Direct,
        }
    }

    /// Makes one call; never fails, the outcome is in [`Done::result`].
    pub(super) async fn call(&self, job: Job) -> Done {
        let (index, planned, from, measured, op, is_post, lead) = match &job {
            Job::First {
                index,
                planned,
                origin,
                measured,
                op,
                lead,
            } => (*index, *planned, *origin, *measured, *op, false, *lead),
            Job::Post {
                index,
                start,
                measured,
                lead,
                ..
            } => (*index, *start, *start, *measured, Op::PingPost, true, *lead),
        };
        let mut wire_at = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.exchange(job, &mut wire_at)).await {
                Ok(r) => r,
                Err(_) => Err(ErrorClass::Timeout),
            };
        Done {
            index,
            planned,
            from,
            measured,
            op,
            is_post,
            lead,
            wire_at,
            at: Instant::now(),
            result,
        }
    }

    async fn exchange(&self, job: Job, wire_at: &mut Instant) -> Result<Answer, ErrorClass> {
        let Some(lead) = self.leads.get(match &job {
            Job::First { lead, .. } | Job::Post { lead, .. } => *lead,
        }) else {
            return Err(ErrorClass::Io);
        };
        match (&self.wire, job) {
            (Wire::Exchange { post, auth, .. }, Job::Post { ping_id, .. }) => {
                let body = post_body(&ping_id, &lead.full_lead);
                let bytes = self.http(post, Some(auth), body, wire_at).await?;
                let a: PostAnswer =
                    serde_json::from_slice(&bytes).map_err(|_| ErrorClass::BadBody)?;
                Ok(Answer::Post { status: a.status })
            }
            (
                Wire::Exchange { ping, auth, .. },
                Job::First {
                    op: Op::Ping | Op::PingPost,
                    ..
                },
            ) => {
                let bytes = self
                    .http(ping, Some(auth), lead.exchange_ping.clone(), wire_at)
                    .await?;
                let a: PingAnswer =
                    serde_json::from_slice(&bytes).map_err(|_| ErrorClass::BadBody)?;
                match a.status.as_str() {
                    "bid" => match a.ping_id {
                        Some(ping_id) => Ok(Answer::Bid { ping_id }),
                        None => Err(ErrorClass::BadBody),
                    },
                    "no_bid" => Ok(Answer::NoBid {
                        reason: a.reason.unwrap_or_default(),
                    }),
                    _ => Err(ErrorClass::BadBody),
                }
            }
            (Wire::Exchange { leads, auth, .. }, Job::First { .. }) => {
                let bytes = self
                    .http(leads, Some(auth), lead.direct_post.clone(), wire_at)
                    .await?;
                let a: PostAnswer =
                    serde_json::from_slice(&bytes).map_err(|_| ErrorClass::BadBody)?;
                Ok(Answer::Leads { status: a.status })
            }
            (Wire::Relay { uri }, Job::First { index, .. }) => {
                let body =
                    buyer_ping_bytes(&lead.ping_lead, &format!("au_lt{index}"), RELAY_TMAX_MS);
                let bytes = self.http(uri, None, body, wire_at).await?;
                Ok(Answer::Relayed {
                    buyers: serde_json::from_slice::<BuyerCounts>(&bytes).ok(),
                })
            }
            (
                Wire::Direct {
                    fanout,
                    targets,
                    deadline_ms,
                    tag,
                },
                Job::First { index, .. },
            ) => {
                let id = format!("au_lt{tag:016x}_{index}");
                let body = buyer_ping_bytes(&lead.ping_lead, &id, *deadline_ms);
                *wire_at = Instant::now();
                let deadline = *wire_at + Duration::from_millis(*deadline_ms);
                let r = fanout.ping_prepared(targets, body, &id, deadline).await;
                Ok(Answer::FannedOut {
                    buyers: BuyerCounts {
                        answered: u64::from(r.answered),
                        timeouts: u64::from(r.timeouts),
                        errors: u64::from(r.errors),
                    },
                })
            }
            // Posts only follow exchange pings.
            (Wire::Relay { .. } | Wire::Direct { .. }, Job::Post { .. }) => Err(ErrorClass::Io),
        }
    }

    /// POSTs `body` as JSON and returns a 2xx answer's body; anything else is its class.
    async fn http(
        &self,
        uri: &Uri,
        auth: Option<&HeaderValue>,
        body: Bytes,
        wire_at: &mut Instant,
    ) -> Result<Bytes, ErrorClass> {
        let _permit = self
            .connections
            .acquire()
            .await
            .map_err(|_| ErrorClass::Io)?;
        *wire_at = Instant::now();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let req = req.body(Full::new(body)).map_err(|_| ErrorClass::Io)?;
        let resp = self.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                // hyper's connect timeout is the request timeout (`Ctx::new`).
                connect_error_class(&e, wire_at.elapsed(), self.timeout)
            } else {
                ErrorClass::Io
            }
        })?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), RESPONSE_BODY_MAX)
            .collect()
            .await
            .map_err(|_| ErrorClass::BadBody)?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(ErrorClass::of_status(status))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// An error with a source, as hyper-util wraps its connector's.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn a_connect_that_ran_out_its_timeout_is_a_stall_and_a_refusal_is_not() {
        let timeout = Duration::from_millis(300);
        let io = |kind| Wrapped(Box::new(std::io::Error::new(kind, "tcp connect error")));
        let quick = Duration::from_micros(80);
        // hyper's connect timeout (or the kernel's) somewhere down the sources.
        let timed_out = Wrapped(Box::new(io(std::io::ErrorKind::TimedOut)));
        assert_eq!(
            connect_error_class(&timed_out, quick, timeout),
            ErrorClass::Timeout
        );
        // A refusal: fast, and no timeout in it.
        let refused = io(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            connect_error_class(&refused, quick, timeout),
            ErrorClass::Connect
        );
        // Whatever the error says, a connect that took the whole timeout was a stall.
        assert_eq!(
            connect_error_class(&refused, timeout, timeout),
            ErrorClass::Timeout
        );
        assert_eq!(
            connect_error_class(&refused, timeout - Duration::from_millis(1), timeout),
            ErrorClass::Connect
        );
        // The stall is recorded in the histogram, the refusal is not.
        assert!(ErrorClass::Timeout.recorded() && !ErrorClass::Connect.recorded());
    }

    #[test]
    fn every_class_has_its_own_names() {
        let mut names: Vec<&str> = ErrorClass::ALL
            .iter()
            .flat_map(|c| [c.name(false), c.name(true)])
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 2 * ErrorClass::ALL.len());
        for name in [
            "timeout",
            "post_timeout",
            "in_flight_limit",
            "post_in_flight_limit",
        ] {
            assert!(super::super::error_in_percentiles(name), "{name}");
        }
        for name in [
            "connect",
            "io",
            "overloaded_503",
            "http_4xx",
            "post_bad_body",
            "other",
        ] {
            assert!(!super::super::error_in_percentiles(name), "{name}");
        }
    }
}
