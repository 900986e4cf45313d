//! What every request passes through before its service: the header limits (`431`),
//! the transfer codings, the activity a connection's supervisor reads, and the
//! `Connection: close` an answer needs when its body was not read to its end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::Service;
use proto::{ApiError, ErrorCode};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::*;

/// An HTTP/1.1 request must carry exactly one `Host` (RFC 9112, 3.2), a host and an
/// optional port (empty allowed): without one, with two, or with a value that is not
/// that (`a b`, `a@b`, `a:99999`), it is `400`. HTTP/2 names its authority in the
/// request line; HTTP/1.0 may omit it.
pub fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    if req.version() == Version::HTTP_2 {
        // RFC 9113 8.3.1: a `host` that names another entity than `:authority` makes the
        // request malformed (black-box round 11: it was accepted). Either, when sent,
        // must be a host and port by the HTTP/1.1 rule (black-box round 134a: `host: a b`
        // without `:authority`, and `:authority: h:+80`, were served).
        let mut hosts = req.headers().get_all(http::header::HOST).iter();
        let (first, second) = (hosts.next(), hosts.next());
        if second.is_some() {
            return Some("a request has one host header, not several");
        }
        let authority = req.uri().authority();
        if authority.is_some_and(|a| !is_host_and_port(a.as_str().as_bytes())) {
            return Some("the :authority of the request is not a host and port");
        }
        return match (first, authority) {
            (Some(host), _) if !host.is_empty() && !is_host_and_port(host.as_bytes()) => {
                Some("the host header is not a host and port")
            }
            (Some(host), Some(authority))
                if !host.is_empty()
                    && !host
                        .to_str()
                        .is_ok_and(|h| h.eq_ignore_ascii_case(authority.as_str())) =>
            {
                Some("the host header differs from the :authority of the request")
            }
            _ => None,
        };
    }
    // An absolute-form target names its authority too (black-box round 135a: `GET
    // http://[zz]:+1/ HTTP/1.1` was served).
    if req
        .uri()
        .authority()
        .is_some_and(|a| !is_host_and_port(a.as_str().as_bytes()))
    {
        return Some("the request target's authority is not a host and port");
    }
    // RFC 9112 3.2: an HTTP/1.1 request needs one `Host`; any request with several, or
    // one that is not a host and port, is refused: HTTP/1.0 too, which may only leave
    // it out (black-box round 135a: HTTP/1.0 skipped every check).
    let http11 = req.version() == Version::HTTP_11;
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => (!host.is_empty() && !is_host_and_port(host.as_bytes()))
            .then_some("the Host header is not a host and port"),
        (None, _) if http11 => Some("an HTTP/1.1 request needs a Host header"),
        (None, _) => None,
        _ => Some("a request has one Host header, not several"),
    }
}

/// Whether `value` is `host[:port]` (RFC 9110 7.2, RFC 3986 3.2): no user info, a host
/// that is a name or an IPv4 address, or an IPv6 address in brackets, and a port, if any,
/// of ASCII digits that fit 16 bits (empty allowed). Black-box round 134a: `h:+80` and
/// `[zz]:80` passed (a sign parses as part of a number; brackets were not checked).
fn is_host_and_port(value: &[u8]) -> bool {
    let Ok(a) = http::uri::Authority::try_from(value) else {
        return false;
    };
    let (host, text) = (a.host(), a.as_str());
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty(),
    };
    // After the host: nothing, or `:` and a port.
    let port_ok = text.strip_prefix(host).is_some_and(|rest| {
        rest.is_empty()
            || rest.strip_prefix(':').is_some_and(|p| {
                p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
            })
    });
    !text.contains('@') && host_ok && port_ok
}

/// Why a message's headers do not describe a JSON body this project reads, if they do
/// not: more than one `Content-Type` header (readers disagree on which one counts), a
/// type other than JSON ([`proto::json::media_type_problem`]: the media type and the
/// charset), or a `Content-Encoding` other than `identity` (the body would be read as if
/// it were not compressed). One rule for seller requests (`415`), buyer answers, and the
/// requests the SDK serves (`415`).
pub fn json_headers_problem(headers: &http::HeaderMap) -> Option<&'static str> {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let (first, second) = (types.next(), types.next());
    if second.is_some() {
        return Some("send one Content-Type header, not several");
    }
    let Some(ct) = first.and_then(|v| v.to_str().ok()) else {
        return Some("Content-Type must be application/json");
    };
    if let Some(problem) = proto::json::media_type_problem(ct) {
        return Some(problem);
    }
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| {
            v.to_str().map_or(true, |v| {
                v.split(',')
                    .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
            })
        });
    encoded.then_some("Content-Encoding is not supported: send the body uncompressed")
}

/// What a connection did, read by its supervisor.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Requests whose head was complete (the service was called).
    pub(super) started: AtomicU64,
    /// Requests answered or dropped.
    pub(super) finished: AtomicU64,
    /// Bytes read from the client (after TLS).
    pub(super) bytes_in: AtomicU64,
    /// `bytes_in` when the last request finished: on a quiet HTTP/1.1 connection, any
    /// byte past it is the start of the next head.
    pub(super) bytes_at_finish: AtomicU64,
    /// Over TLS, bytes read from the socket (before decryption), and their count when the
    /// last request finished: a record still arriving is a head arriving, though none of
    /// its bytes is readable yet.
    pub(super) raw_in: AtomicU64,
    pub(super) raw_at_finish: AtomicU64,
    /// Whether a request came over HTTP/2.
    pub(super) h2: AtomicBool,
    /// Woken when an HTTP/2 answer asked to close its connection ([`CloseConnection`]).
    pub(super) close: Notify,
    /// Woken when the connection is evicted (no head within its grace, every slot taken,
    /// a new connection waiting); `evicted` says it was.
    pub(super) evict: Notify,
    pub(super) evicted: AtomicBool,
    /// When the connection was accepted: the origin of `finished_at_us`.
    pub(super) accepted_at: OnceLock<Instant>,
    /// When the last request finished, in µs from `accepted_at`: idleness counts from it
    /// (not from the supervisor's next look).
    pub(super) finished_at_us: AtomicU64,
    /// When the first bytes of a head after the last finished request arrived, in µs from
    /// `accepted_at`: that head's budget counts from it.
    pub(super) head_started_at_us: AtomicU64,
    /// HTTP/2 answers made ([`Tracked`]) and not yet written to their end (the frame that
    /// ends their stream: [`FrameScan`](super::counted::FrameScan)). h2 takes a body into
    /// its own buffers whatever the client's flow-control window, and keeps it there until
    /// the window lets it out.
    pub(super) unsent: AtomicU32,
    /// When an answer last went out to its end, or the first of the unsent ones was made,
    /// in µs from `accepted_at`.
    pub(super) unsent_progress_us: AtomicU64,
    /// Woken when the first answer waits unsent, and when more than [`UNSENT_MAX`] do.
    pub(super) unsent_wake: Notify,
    /// HTTP/2 requests whose bodies have not been read to their end
    /// ([`BODIES_PENDING_MAX`]).
    pub(super) bodies_pending: AtomicU32,
    /// When bytes last arrived while bodies were pending (a DATA frame, most often), a
    /// pending body was read to its end (or its request ended), or the first of the
    /// pending ones came, in µs from `accepted_at`.
    pub(super) bodies_progress_us: AtomicU64,
    /// Since when a request body has been arriving, in µs from `accepted_at` plus 1; 0
    /// when none is: over HTTP/1.1, the body of the request in flight, from when it began
    /// to be read until it was read to its end ([`BodyRead::mark`](super::BodyRead::mark));
    /// over HTTP/2, from when `bodies_pending` last went from 0 to 1 until it is 0 again.
    /// With every slot taken, a connection whose requests in flight have all been
    /// receiving their bodies past the eviction grace is evictable
    /// ([`Activity::slow_body_since`]): nothing has acted on them (black-box round 149a:
    /// 1,100 HTTP/1.1 connections each sending a body a byte at a time held every slot;
    /// round 150a: one slow stream per HTTP/2 connection, opened again after each `400`).
    pub(super) body_since_us: AtomicU64,
    /// The client sent more HTTP/2 control frames than its allowance
    /// ([`CONTROL_FRAMES_BURST`](super::counted::CONTROL_FRAMES_BURST)): the connection
    /// was ended (counted with the stalled ones).
    pub(super) flooded: AtomicBool,
    /// The server wrote a GOAWAY with an error code (HTTP/2): h2 ended the connection for
    /// a protocol error, a rapid reset flood among them (counted by
    /// `ConnectionGate::protocol_errors`).
    pub(super) protocol_error: AtomicBool,
}

/// Answers a connection may hold unsent (a client that does not read them: HTTP/2 flow
/// control with a window of 0) before it is closed: each costs memory outside every
/// request limit (black-box round 110b: 250 streams per connection held about 0.5 MB,
/// 429 refusals included, until the idle timeout).
pub const UNSENT_MAX: u32 = 32;

/// How long a connection with more than [`UNSENT_MAX`] answers unsent may go without one
/// of them going out to its end before it is closed. A client that reads its answers takes
/// one within it, however many it asked for at once.
pub const UNSENT_STALL: Duration = Duration::from_secs(1);

/// An answer's body. Over HTTP/2 an answer with a body is counted among its connection's
/// unsent answers ([`Activity::unsent`]) from when the service made it. It takes itself
/// off when it is dropped before hyper read any of it: h2 refused it, its stream already
/// reset (a request its client cancelled while its body was still coming: black-box round
/// 199a, each such answer stayed counted, and the connection was closed as stalled 5 s
/// later, with the answers of its other requests). Once read, the frame scan of the
/// connection's writes takes it off at the frame that ends its stream, or at a reset of
/// its stream by the server (a RST_STREAM written) or the client (one read: round 200b,
/// an answer whose body a window of 0 held stayed counted once its stream was reset). An
/// answer without a body (its end in its HEADERS frame) holds no body in h2's buffers and
/// is not counted. Over HTTP/1.x nothing is counted: hyper takes the body into its write
/// buffer at once, one answer at a time, so a client that does not read holds one answer
/// and its socket's buffers.
///
/// One race is left: hyper gives h2 the answer's HEADERS, then checks the stream for a
/// reset before it reads the body; should the HEADERS be written and the client's reset
/// read in between (by the connection's task, on another thread), the answer is taken
/// off twice, and the count is one under the truth until the connection ends.
pub struct Tracked<B> {
    inner: B,
    /// The connection's activity, while this answer is counted among its unsent ones.
    counted: Option<Arc<Activity>>,
}

impl<B: hyper::body::Body> Tracked<B> {
    pub(super) fn new(inner: B, activity: &Arc<Activity>) -> Tracked<B> {
        let counted = activity.h2.load(Ordering::Relaxed) && !inner.is_end_stream();
        if counted {
            let was = activity.unsent.fetch_add(1, Ordering::AcqRel);
            if was == 0 {
                activity
                    .unsent_progress_us
                    .store(activity.now_us(), Ordering::Release);
            }
            if was == 0 || was == UNSENT_MAX {
                activity.unsent_wake.notify_one();
            }
        }
        Tracked {
            inner,
            counted: counted.then(|| Arc::clone(activity)),
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        // Dropped before hyper read any of it: h2 refused the answer (its stream already
        // reset), so no frame of it will be written.
        if let Some(a) = self.counted.take() {
            a.answers_dropped(1);
        }
    }
}

impl<B> fmt::Debug for Tracked<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        // Read: h2 took the answer (its HEADERS are on their way), so from here the frame
        // scan ends it, at the frame that ends its stream or at a reset of it by either
        // side (hyper reads a body before the window lets it out).
        this.counted = None;
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Activity {
    pub(super) fn new(accepted_at: Instant) -> Activity {
        let a = Activity::default();
        let _ = a.accepted_at.set(accepted_at);
        a
    }

    /// When the last request finished (`accepted_at` if none has).
    pub(super) fn finished_at(&self, accepted_at: Instant) -> Instant {
        accepted_at + Duration::from_micros(self.finished_at_us.load(Ordering::Acquire))
    }

    /// Since when the connection's requests in flight have all been receiving their
    /// bodies (`body_since_us`), if they are: over HTTP/1.1 the one request in flight,
    /// over HTTP/2 every one of them with its body pending. `None` when nothing is in
    /// flight, or a request's body was read (its service at work).
    pub(super) fn slow_body_since(&self, accepted_at: Instant) -> Option<Instant> {
        let in_flight = self
            .started
            .load(Ordering::Acquire)
            .saturating_sub(self.finished.load(Ordering::Acquire));
        let since = self.body_since_us.load(Ordering::Acquire);
        if in_flight == 0 || since == 0 {
            return None;
        }
        let all_receiving = !self.h2.load(Ordering::Relaxed)
            || u64::from(self.bodies_pending.load(Ordering::Acquire)) >= in_flight;
        all_receiving.then(|| accepted_at + Duration::from_micros(since - 1))
    }

    /// `n` unsent answers went out to their end: the client's progress.
    pub(super) fn answers_sent(&self, n: u32) {
        self.unsent_progress_us
            .store(self.now_us(), Ordering::Release);
        self.answers_dropped(n);
    }

    /// `n` unsent answers will never be sent (their stream reset, by either side, or
    /// refused): no longer counted, and no progress either (black-box round 201a: a
    /// request opened and cancelled every 0.8 s, its answer never sent, passed for an
    /// answer going out, and 250 answers held behind a window of 0 kept their connection
    /// for as long as it went on).
    pub(super) fn answers_dropped(&self, n: u32) {
        let _ = self
            .unsent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// When an unsent answer last made progress (see `unsent_progress_us`).
    pub(super) fn unsent_progress_at(&self, accepted_at: Instant) -> Instant {
        accepted_at + Duration::from_micros(self.unsent_progress_us.load(Ordering::Acquire))
    }

    /// When a pending HTTP/2 body last made progress (see `bodies_progress_us`).
    pub(super) fn bodies_progress_at(&self, accepted_at: Instant) -> Instant {
        accepted_at + Duration::from_micros(self.bodies_progress_us.load(Ordering::Acquire))
    }

    /// Since when a later HTTP/1.1 head has been arriving on a connection with nothing in
    /// flight (its first bytes, or below TLS the record carrying them, after the last
    /// request finished), if one is: the head budget of that head counts from it.
    pub(super) fn later_head_since(&self, accepted_at: Instant) -> Option<Instant> {
        let started = self.started.load(Ordering::Acquire);
        if started == 0
            || self.h2.load(Ordering::Relaxed)
            || started != self.finished.load(Ordering::Acquire)
        {
            return None;
        }
        let arriving = self.bytes_in.load(Ordering::Relaxed)
            > self.bytes_at_finish.load(Ordering::Relaxed)
            || self.raw_in.load(Ordering::Relaxed) > self.raw_at_finish.load(Ordering::Relaxed);
        arriving.then(|| {
            self.head_started_at(accepted_at)
                .max(self.finished_at(accepted_at))
        })
    }

    /// When the bytes of the head being read began to arrive (see `head_started_at_us`).
    pub(super) fn head_started_at(&self, accepted_at: Instant) -> Instant {
        accepted_at + Duration::from_micros(self.head_started_at_us.load(Ordering::Acquire))
    }

    /// The first bytes of a head after the last finished request arrived now (kept if an
    /// earlier look, below TLS, saw them first).
    pub(super) fn head_starts(&self) {
        if self.finished.load(Ordering::Relaxed) == 0 {
            return; // the first head has its budget from accept
        }
        if self.head_started_at_us.load(Ordering::Acquire)
            < self.finished_at_us.load(Ordering::Acquire)
        {
            self.head_started_at_us
                .store(self.now_us(), Ordering::Release);
        }
    }

    /// µs from `accepted_at` to now (0 when it is not set).
    pub(super) fn now_us(&self) -> u64 {
        self.accepted_at.get().map_or(0, |origin| {
            let us = Instant::now()
                .saturating_duration_since(*origin)
                .as_micros();
            u64::try_from(us).unwrap_or(u64::MAX)
        })
    }
}

/// Counts an HTTP/2 request's body off its connection's pending ones when dropped (its
/// request answered, or dropped by hyper), if the service did not mark it read first.
pub(super) struct PendingBody(BodyRead);

impl Drop for PendingBody {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// Counts a finished request when dropped (answered, or dropped by hyper).
pub(super) struct Finished(pub(super) Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        let bytes = self.0.bytes_in.load(Ordering::Relaxed);
        self.0.bytes_at_finish.store(bytes, Ordering::Relaxed);
        let raw = self.0.raw_in.load(Ordering::Relaxed);
        self.0.raw_at_finish.store(raw, Ordering::Relaxed);
        self.0
            .finished_at_us
            .store(self.0.now_us(), Ordering::Release);
        self.0.finished.fetch_add(1, Ordering::Release);
    }
}

/// The head's size as counted against `header_bytes_max`: request line (method, target,
/// version) and, per field, name, value and the 4 bytes of `: ` and CRLF.
pub(super) fn head_bytes<B>(req: &Request<B>) -> usize {
    let target = req
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len())
        .saturating_add(req.uri().authority().map_or(0, |a| a.as_str().len()));
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    req.method().as_str().len() + target + 12 + fields
}

/// The 431 for a head over the limits, if it is.
pub(super) fn check_head_limits<B>(req: &Request<B>, limits: &Limits) -> Option<ApiError> {
    if let Some(problem) = transfer_coding_problem(req) {
        return Some(ApiError::new(ErrorCode::InvalidRequest, problem));
    }
    // An HTTP/2 request without `:path` is malformed (RFC 9113 8.3.1); the h2 layer lets
    // some through with an empty path (black-box round 16: routed, and answered 404).
    if req.uri().path().is_empty() {
        return Some(ApiError::new(
            ErrorCode::InvalidRequest,
            "the request has no path (:path)",
        ));
    }
    let count = req.headers().len();
    if count > limits.headers_max {
        return Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "{count} header fields; at most {} are accepted",
                limits.headers_max
            ),
        ));
    }
    if head_bytes(req) > limits.header_bytes_max {
        return Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("the request head is over {} bytes", limits.header_bytes_max),
        ));
    }
    None
}

/// Why a request's `Transfer-Encoding` is refused, if it is: the one coding accepted is
/// `chunked`, given once. hyper reads `gzip, chunked` as plain chunked (the gzip is not
/// undone) and accepts `chunked, chunked` (black-box round 12): refused here, `400`,
/// rather than read as something the client did not send.
pub(super) fn transfer_coding_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut codings = 0usize;
    for value in req.headers().get_all(TRANSFER_ENCODING) {
        let Ok(text) = value.to_str() else {
            return Some("Transfer-Encoding must be chunked");
        };
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            codings += 1;
            if !coding.eq_ignore_ascii_case("chunked") {
                return Some("Transfer-Encoding: only chunked is accepted (no other transfer coding; send Content-Encoding-free bodies)");
            }
        }
    }
    (codings > 1).then_some("Transfer-Encoding: chunked may be given once only")
}

/// The service around the caller's: counts requests for the supervisor and answers heads
/// over the limits with 431 (and a transfer coding it does not take with 400).
pub(super) struct Guarded<S> {
    pub(super) inner: S,
    pub(super) activity: Arc<Activity>,
    pub(super) limits: Arc<Limits>,
    pub(super) on_refused: Option<RefusedHook>,
}

pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Guarded<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: From<Bytes> + hyper::body::Body + Send + 'static,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Tracked<B>>, S::Error>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        use hyper::body::Body as _;
        if req.version() == Version::HTTP_2 {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        let finished = Finished(Arc::clone(&self.activity));
        let h1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
        let h10 = req.version() == Version::HTTP_10;
        // HTTP/1.x leaves a `HEAD` answer's body unsent itself; HTTP/2 sends whatever body
        // it is given (black-box round 137a: a `405` to `HEAD` carried its JSON, and
        // clients refused the stream).
        let h2_head = !h1 && req.method() == Method::HEAD;
        // An HTTP/1.x body not read to its end leaves the connection unusable for another
        // request: the answer must say `Connection: close`.
        let body_read = (h1 && !req.body().is_end_stream()).then(|| {
            let a = &self.activity;
            a.body_since_us
                .store(a.now_us().saturating_add(1), Ordering::Release);
            let read = BodyRead::h1_on(a);
            req.extensions_mut().insert(read.clone());
            read
        });
        // An HTTP/2 body still coming is counted on its connection until it is read or
        // its request ends (`pending` is dropped with the request's future).
        let mut pending = None;
        if !h1 && !req.body().is_end_stream() {
            let a = &self.activity;
            let was = a.bodies_pending.fetch_add(1, Ordering::AcqRel);
            // Past the bound from now: its bodies have BODIES_STALL from here.
            if was == 0 || was == BODIES_PENDING_MAX {
                let now = a.now_us();
                a.bodies_progress_us.store(now, Ordering::Release);
                if was == 0 {
                    a.body_since_us
                        .store(now.saturating_add(1), Ordering::Release);
                }
            }
            if was == BODIES_PENDING_MAX {
                a.unsent_wake.notify_one();
            }
            let read = BodyRead::pending_on(a);
            req.extensions_mut().insert(read.clone());
            pending = Some(PendingBody(read));
        }
        if let Some(error) = check_head_limits(&req, &self.limits) {
            let status = if error.code == ErrorCode::HeadersTooLarge {
                if let Some(hook) = &self.on_refused {
                    hook();
                }
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let mut response = Response::new(B::from(Bytes::from(error.to_json())));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // Its connection is closed after it (HTTP/1.x `Connection: close`, HTTP/2
            // GOAWAY): the body is not read, and a client that keeps sending heads over
            // the limits must not keep a connection slot by it (black-box round 11: 64
            // such connections held every admin slot).
            if h1 {
                closing_h1(&mut response, h10);
            } else {
                self.activity.close.notify_one();
            }
            drop(finished);
            if h2_head {
                response = head_only(response);
            }
            let response = response.map(|b| Tracked::new(b, &self.activity));
            return Box::pin(std::future::ready(Ok(response)));
        }
        let future = self.inner.call(req);
        let activity = Arc::clone(&self.activity);
        Box::pin(async move {
            let mut result = future.await;
            if let Ok(response) = &mut result {
                let asked = response
                    .extensions_mut()
                    .remove::<CloseConnection>()
                    .is_some();
                let unread = body_read.as_ref().is_some_and(|read| !read.is_read());
                if h1 && (asked || unread) {
                    closing_h1(response, h10);
                } else if asked && !h1 {
                    // HTTP/2 has no `connection` header: the supervisor sends GOAWAY.
                    activity.close.notify_one();
                }
            }
            drop(finished);
            drop(pending);
            result.map(|r| {
                let r = if h2_head { head_only(r) } else { r };
                r.map(|b| Tracked::new(b, &activity))
            })
        })
    }
}

/// The answer to a `HEAD`: its status and headers, its body's length in
/// `Content-Length` (unless the service set one: its `GET`'s length), and no body.
pub fn head_only<B: From<Bytes> + hyper::body::Body>(mut response: Response<B>) -> Response<B> {
    if let Some(n) = response.body().size_hint().exact() {
        response
            .headers_mut()
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(n));
    }
    *response.body_mut() = B::from(Bytes::new());
    response
}

/// Marks an HTTP/1.x answer as the last on its connection: `Connection: close`. To an
/// HTTP/1.0 request the answer is also HTTP/1.0: hyper judges keep-alive by the answer's
/// version before it downgrades it, and to an HTTP/1.1 answer of a keep-alive request it
/// appends `keep-alive` (`connection: close, keep-alive`, black-box round 10).
pub(super) fn closing_h1<B>(response: &mut Response<B>, h10: bool) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    if h10 {
        *response.version_mut() = Version::HTTP_10;
    }
}
