//! One connection from accept to close: its hyper builder, its slot, its TLS handshake,
//! and its supervisor (head budget, idle timeout, GOAWAY and the drain at shutdown).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use proto::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::*;
use super::{
    counted::{Counted, RawCounted},
    gate::{IpSlot, Listed},
    service::{Activity, Guarded},
};

pub(super) fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let hard = hard_head_bytes(limits);
    builder
        .http1()
        .keep_alive(true)
        // A client may send its whole request and then shut its side for writing
        // (`shutdown(SHUT_WR)`) while it waits: it still gets the answer. Without this,
        // hyper closed such a connection on reading the EOF, and a ping or post whose
        // answer took a moment was done (a quote opened, a lead sold) but answered with
        // nothing.
        .half_close(true)
        .timer(TokioTimer::new())
        // hyper's own timer restarts when a connection goes idle, so it would close
        // every keep-alive connection after one head timeout; the supervisor below
        // times heads and idleness instead.
        .header_read_timeout(None)
        .max_headers(hard_header_count(limits))
        .max_buf_size(hard);
    let keepalive = (limits.h2_keepalive_interval_ms > 0)
        .then(|| Duration::from_millis(limits.h2_keepalive_interval_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_streams_per_connection_max)
        .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX))
        .keep_alive_interval(keepalive)
        .keep_alive_timeout(Duration::from_millis(limits.h2_keepalive_timeout_ms.max(1)));
    builder
}

/// One connection's task: the TLS handshake, hyper, and the supervisor that enforces the
/// head budget and the idle timeout.
pub(super) struct Conn {
    pub(super) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(super) limits: Arc<Limits>,
    pub(super) activity: Arc<Activity>,
    pub(super) accepted_at: Instant,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) name: &'static str,
    // Dropped before the permit: an evicted connection is off the list when its slot
    // frees.
    pub(super) listed: Listed,
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _ip_slot: IpSlot,
}

impl Conn {
    pub(super) async fn run<S, B>(
        self,
        stream: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: Guarded<S>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        B: hyper::body::Body + From<Bytes> + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let head_deadline =
            self.accepted_at + Duration::from_millis(self.limits.header_read_timeout_ms);
        match tls {
            None => self.drive(stream, service, head_deadline, None).await,
            Some(config) => {
                // A TLS connection begins with a handshake record (0x16); one that begins
                // with a capital letter is an HTTP/1 request line sent in cleartext, and
                // gets the contract's JSON error in cleartext rather than a silent close.
                let mut first = [0u8; 1];
                let peeked = self
                    .unless_stopped(tokio::time::timeout_at(
                        head_deadline,
                        stream.peek(&mut first),
                    ))
                    .await;
                match peeked {
                    None => return,
                    Some(Ok(Ok(1))) if first[0].is_ascii_uppercase() => {
                        let answered = self
                            .unless_stopped(tokio::time::timeout_at(
                                head_deadline,
                                answer_cleartext(stream, &self.activity, &self.limits),
                            ))
                            .await;
                        tracing::debug!(
                            listener = self.name,
                            answered = matches!(answered, Some(Ok(Ok(())))),
                            "a cleartext HTTP request on the TLS port"
                        );
                        return;
                    }
                    Some(_) => {}
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let handshake = self
                    .unless_stopped(tokio::time::timeout_at(
                        head_deadline,
                        acceptor.accept(RawCounted {
                            inner: stream,
                            activity: Arc::clone(&self.activity),
                        }),
                    ))
                    .await;
                let Some(handshake) = handshake else { return };
                match handshake {
                    Ok(Ok(tls_stream)) => {
                        // The protocol ALPN chose is the one spoken (RFC 7301, RFC 9113
                        // 3.2): HTTP/1.1 bytes on an `h2` connection are not served as
                        // HTTP/1.1, nor a preface on an `http/1.1` one as HTTP/2 (black-box
                        // round 16). No ALPN: either, told apart by the preface.
                        let alpn = match tls_stream.get_ref().1.alpn_protocol() {
                            Some(b"h2") => Some(Version::HTTP_2),
                            Some(b"http/1.1") => Some(Version::HTTP_11),
                            _ => None,
                        };
                        self.drive(tls_stream, service, head_deadline, alpn).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, listener = self.name, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(listener = self.name, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    /// Whether the client stalls the connection: it leaves more than [`UNSENT_MAX`]
    /// answers unsent with none going out to its end for [`UNSENT_STALL`], or any for
    /// `budget` (the head budget, `header_read_timeout_ms`); or it has more than [`BODIES_PENDING_MAX`]
    /// request bodies still coming and none arriving for [`BODIES_STALL`]. Then why, and
    /// the connection is closed: each holds memory outside every request limit (black-box
    /// round 110b: an HTTP/2 client with a flow-control window of 0 held 250 answers a
    /// connection until the idle timeout; round 111c: 256 streams a connection that sent
    /// headers and no body each held theirs for the body's budget). Else when to look
    /// again, if any waits.
    fn unsent_verdict(
        &self,
        activity: &Activity,
        now: Instant,
        budget: Duration,
    ) -> Result<Option<Instant>, &'static str> {
        let mut next = None;
        let pending = activity.bodies_pending.load(Ordering::Acquire);
        if pending > BODIES_PENDING_MAX {
            let due = activity.bodies_progress_at(self.accepted_at) + BODIES_STALL;
            if now >= due {
                return Err(
                    "more request bodies than BODIES_PENDING_MAX still coming, none arriving",
                );
            }
            next = Some(due);
        }
        let unsent = activity.unsent.load(Ordering::Acquire);
        if unsent == 0 {
            return Ok(next);
        }
        // Past UNSENT_MAX, the client has UNSENT_STALL to take one to its end (black-box
        // round 114a: a client that read every answer but asked for 40 large ones at once,
        // more than its window let out at a time, was cut at the 33rd).
        let (allowed, why) = if unsent > UNSENT_MAX {
            (
                UNSENT_STALL.min(budget),
                "more answers than UNSENT_MAX unsent, none taken by the client for UNSENT_STALL",
            )
        } else {
            (
                budget,
                "answers not taken by the client within the head budget",
            )
        };
        let due = activity.unsent_progress_at(self.accepted_at) + allowed;
        if now >= due {
            return Err(why);
        }
        Ok(Some(next.map_or(due, |n| n.min(due))))
    }

    /// `work`, unless the listener stops or this connection is evicted (slots full, no
    /// head within its grace) first: then `None`.
    async fn unless_stopped<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        let mut stop = self.stop.clone();
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            () = self.activity.evict.notified() => {
                self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = self.name, "evicted before its first request: slots full, no head within its grace");
                None
            }
            r = work => Some(r),
        }
    }

    pub(super) async fn drive<I, S, B>(
        self,
        io: I,
        service: Guarded<S>,
        head_deadline: Instant,
        alpn: Option<Version>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        B: hyper::body::Body + From<Bytes> + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Arc::clone(&self.activity);
        let io = TokioIo::new(Counted {
            inner: io,
            activity: Arc::clone(&activity),
            limits: Arc::clone(&self.limits),
            on_refused: service.on_refused.clone(),
            replacing: None,
            frames: Default::default(),
            frames_in: Default::default(),
            head_request: false,
            tls_hello: false,
        });
        let only;
        let builder: &auto::Builder<TokioExecutor> = match alpn {
            Some(Version::HTTP_2) => {
                only = (*self.builder).clone().http2_only();
                &only
            }
            Some(_) => {
                only = (*self.builder).clone().http1_only();
                &only
            }
            None => &self.builder,
        };
        let conn = builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let head = Duration::from_millis(self.limits.header_read_timeout_ms.max(1));
        let idle = Duration::from_millis(self.limits.idle_timeout_ms.max(1));
        // Looks every half of the shorter budget (on HTTP/2, where only idleness is timed
        // after the first request, every half idle timeout), and at the instant a budget
        // counted from the last request's end runs out: a connection is closed when its
        // budget ends, not up to two looks later (black-box round 37: an idle timeout of
        // 4 s closed at 6-7 s).
        let tick = (head.min(idle) / 2).max(Duration::from_millis(1));
        let h2_tick = (idle / 2).max(tick);
        let mut stop = self.stop.clone();
        let mut next_check = (Instant::now() + tick).min(head_deadline);
        // Set once a graceful shutdown was asked for; the connection is dropped if it has
        // not finished by the next check.
        let mut closing = false;
        let mut stopping = false;
        // When the server's stop reached this connection.
        let mut stopped_at = self.accepted_at;
        // Set once an answer asked to close an HTTP/2 connection and GOAWAY was sent; the
        // idle timeout still bounds a client that keeps the connection open after it.
        let mut goaway = false;
        // When an answer asked to close an HTTP/2 connection: GOAWAY at this instant.
        let mut goaway_at: Option<Instant> = None;
        // When to look whether the client leaves its answers unsent (`unsent_verdict`):
        // set once one waits.
        let mut stall_check: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                served = conn.as_mut() => {
                    if activity.flooded.load(Ordering::Acquire) {
                        self.listed.0.stalled.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, "more HTTP/2 control frames than the connection's allowance, closed");
                    } else if activity.protocol_error.load(Ordering::Acquire) {
                        self.listed.0.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, "HTTP/2 connection ended with a GOAWAY for a protocol error");
                    } else if let Err(e) = served {
                        tracing::debug!(error = %e, listener = self.name, "connection ended with an error");
                    }
                    return;
                }
                () = activity.evict.notified() => {
                    // Every slot taken, a new connection waiting, and this one had sent no
                    // head within its grace, or was the longest idle (`evict_one`).
                    let started = activity.started.load(Ordering::Relaxed);
                    if started == 0 {
                        self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, "evicted: slots full, no head within its grace");
                        return;
                    }
                    if activity.slow_body_since(self.accepted_at).is_some() {
                        // Its requests' bodies were still arriving past the grace: nothing
                        // has acted on them. Closed at once (its client gets no answer;
                        // over HTTP/2, every stream of it was still receiving its body).
                        self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, "evicted: slots full, a request body arriving past its grace");
                        return;
                    }
                    if activity.later_head_since(self.accepted_at).is_some() {
                        // Its next HTTP/1.1 head was arriving past the grace: nothing has
                        // acted on it. Closed at once, unanswered (a graceful close would
                        // wait for that head to complete and serve it).
                        self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, "evicted: slots full, a later request head arriving past its grace");
                        return;
                    }
                    if started == activity.finished.load(Ordering::Acquire) && !goaway && !closing {
                        // Idle: closed gracefully (HTTP/1.1 at once, HTTP/2 with GOAWAY), and
                        // dropped once nothing is in flight, `EVICT_LINGER` on: a new
                        // connection waits for this slot.
                        self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, h2 = activity.h2.load(Ordering::Relaxed), "evicted: slots full, the longest idle connection");
                        goaway = true;
                        conn.as_mut().graceful_shutdown();
                        next_check = next_check.min(Instant::now() + EVICT_LINGER);
                    } else if !goaway && !closing {
                        // A request came since that look: served, and not evicted.
                        activity.evicted.store(false, Ordering::Release);
                    }
                }
                () = activity.unsent_wake.notified(), if !stopping => {
                    // The first answer waits unsent, or more than the limit do: look now.
                    stall_check = Some(Instant::now());
                }
                () = tokio::time::sleep_until(stall_check.unwrap_or(next_check)), if stall_check.is_some() && !stopping => {
                    match self.unsent_verdict(&activity, Instant::now(), head) {
                        Err(why) => {
                            self.listed.0.stalled.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(listener = self.name, "{why}, closing");
                            return;
                        }
                        // Looked at again when the oldest may be due, or once one waits.
                        Ok(due) => stall_check = due,
                    }
                }
                () = activity.close.notified(), if goaway_at.is_none() && !closing => {
                    // An answer asked to close (`CloseConnection`) over HTTP/2: GOAWAY
                    // once the answer has left (`GOAWAY_DELAY`).
                    goaway_at = Some(Instant::now() + GOAWAY_DELAY);
                }
                () = tokio::time::sleep_until(goaway_at.unwrap_or(next_check)), if goaway_at.is_some() && !goaway && !closing => {
                    // GOAWAY: the streams already open finish. hyper then waits for the
                    // client to answer its PING, which a client need never do: once
                    // nothing is in flight, the connection is dropped at the next check,
                    // at most `GOAWAY_LINGER` on (before, such a client held its slot
                    // until the HTTP/2 keep-alive timeout, 10 s).
                    goaway = true;
                    conn.as_mut().graceful_shutdown();
                    next_check = next_check.min(Instant::now() + GOAWAY_LINGER);
                }
                _ = stop.wait_for(|s| *s), if !stopping => {
                    // Server shutdown: finish what is in flight, then close. The drain
                    // timeout of the accept loop bounds it.
                    stopping = true;
                    if !closing {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    stopped_at = Instant::now();
                    next_check = next_check.min(stopped_at + GOAWAY_LINGER);
                }
                () = tokio::time::sleep_until(next_check) => {
                    if closing && !stopping {
                        // Asked to close at the last check and still open: drop it.
                        return;
                    }
                    let now = Instant::now();
                    next_check = now + tick;
                    if stopping {
                        // HTTP/2: after the stop's GOAWAY hyper waits for the client to
                        // answer its PING, which an idle pooled client need never do
                        // (httpx, python-h2): it held the stop for the whole drain
                        // timeout, which then said requests were dropped unanswered
                        // (black-box round 85a). Once nothing is in flight, it is dropped
                        // `GOAWAY_LINGER` after the stop or its last answer, whichever is
                        // later, as after any GOAWAY; so is a connection that has sent
                        // no request yet (HTTP/2's preface and SETTINGS only, or a head
                        // still coming). HTTP/1.x ends by itself once its answer is written.
                        let started = activity.started.load(Ordering::Relaxed);
                        if activity.h2.load(Ordering::Relaxed) || started == 0 {
                            let finished = activity.finished.load(Ordering::Acquire);
                            if started == finished {
                                let quiet = activity.finished_at(self.accepted_at).max(stopped_at);
                                let drop_at = quiet + GOAWAY_LINGER;
                                if now >= drop_at {
                                    tracing::debug!(listener = self.name, "closed at the stop, nothing in flight");
                                    return;
                                }
                                next_check = drop_at;
                            } else {
                                next_check = now + GOAWAY_RECHECK;
                            }
                        }
                        continue;
                    }
                    let finished = activity.finished.load(Ordering::Acquire);
                    let started = activity.started.load(Ordering::Relaxed);
                    let bytes_in = activity.bytes_in.load(Ordering::Relaxed);
                    if goaway {
                        if started == finished {
                            tracing::debug!(listener = self.name, "closed after GOAWAY, nothing in flight");
                            return;
                        }
                        // Requests still in flight: look again soon, so the connection
                        // is dropped within `GOAWAY_RECHECK` of the last one's answer
                        // (black-box round 43: a whole `tick` later, about 1 s).
                        next_check = now + GOAWAY_RECHECK;
                        continue;
                    }
                    if started == 0 {
                        if now >= head_deadline {
                            // No complete head within the budget from accept: close now.
                            self.listed.0.head_timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(listener = self.name, bytes_in, "no request head in time, closing");
                            return;
                        }
                        next_check = next_check.min(head_deadline);
                        continue;
                    }
                    if started != finished {
                        // Busy.
                        continue;
                    }
                    // Quiet since the last request finished (its end, not this look).
                    let quiet_since = activity.finished_at(self.accepted_at);
                    let quiet_for = now.saturating_duration_since(quiet_since);
                    let h2 = activity.h2.load(Ordering::Relaxed);
                    if h2 {
                        next_check = now + h2_tick;
                    } else if let Some(since) = activity.later_head_since(self.accepted_at) {
                        // Part of a new HTTP/1.1 head arrived and has not completed: it
                        // has the head budget from its first bytes, and the idle timeout
                        // does not cut it (black-box round 38: counted from the end of the
                        // request before, a head sent in two pieces after a long idle
                        // time was closed unanswered between them; with an idle timeout
                        // shorter than the budget, a head still arriving was cut by it).
                        if now.saturating_duration_since(since) >= head {
                            self.listed.0.head_timeouts.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(listener = self.name, "request head not completed in time, closing");
                            return;
                        }
                        next_check = next_check.min(since + head);
                        continue;
                    }
                    if quiet_for >= idle {
                        tracing::debug!(listener = self.name, h2, "idle connection closed");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    } else {
                        next_check = next_check.min(quiet_since + idle);
                    }
                }
            }
        }
    }
}

/// The answer to an HTTP/1 request sent in cleartext to a TLS port: `400
/// invalid_request` in the contract's JSON, sent in cleartext, connection closed; to a
/// `HEAD`, without the JSON (its length kept: black-box round 138a).
pub(super) fn cleartext_answer(head_request: bool) -> Vec<u8> {
    let body = ApiError::new(
        ErrorCode::InvalidRequest,
        "this port speaks HTTPS only (TLS), and the request was sent in cleartext: send it to an https:// URL",
    )
    .to_json();
    let mut out = Vec::with_capacity(body.len() + 128);
    out.extend_from_slice(
        b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-type: application/json\r\n",
    );
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    if !head_request {
        out.extend_from_slice(&body);
    }
    out
}

/// Reads the cleartext request's head (up to `header_bytes_max`: whatever has come when
/// its end is read, or the client stops), answers [`cleartext_answer`] and closes. What
/// the client sent is read first so that the close does not reset the connection before
/// the answer is read (unread bytes at a close make the kernel send a reset).
async fn answer_cleartext(
    mut stream: TcpStream,
    activity: &Activity,
    limits: &Limits,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    activity.head_starts();
    let max = limits.header_bytes_max.max(1);
    let mut head = Vec::with_capacity(1024.min(max));
    let mut buf = [0u8; 2048];
    while head.len() < max && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n.min(max - head.len())]);
    }
    let answer = cleartext_answer(super::counted::is_head_request(&head));
    stream.write_all(&answer).await?;
    stream.shutdown().await
}
