//! The accept loop every pingpost server shares: the exchange's seller listener, the
//! bidder SDK and the load tester's speed-of-light relay all serve through
//! [`serve_connections`], so their limits cannot drift apart.
//!
//! What it enforces, per connection, from the moment it is accepted:
//! - **Slots**: each accepted connection takes a permit ([`ConnectionGate`]); while a
//!   listener's connection waits for one, it accepts no other, so a flood waits in the
//!   kernel's backlog, not in memory (at most one accepted connection per listener
//!   waits). No slot is held while waiting for a connection. A per-client-IP limit
//!   closes a connection at once when its address already holds that many.
//! - **Eviction**: when every slot is taken, the waiting connection makes room by
//!   closing the oldest connection that has held its slot for [`eviction_grace`] (a
//!   quarter of the head budget) without sending a complete request head (or, over
//!   HTTP/1.1, whose next head has been arriving that long, closed at once); with none,
//!   the connection whose requests in flight have all been receiving their bodies the
//!   longest past the grace, at once, with no answer (nothing acted on it); with none,
//!   the served connection idle the longest (nothing in flight for the grace, or,
//!   while a connection without a head, or a later HTTP/1.1 head, is listed however
//!   young, for the whole head budget), gracefully (HTTP/1.1 closes, HTTP/2 GOAWAY). A connection with a request being served (its body
//!   read) is never evicted. One eviction at a time. Counted in [`ConnectionGate::evicted`].
//! - **Head budget**: every connection must deliver its first complete request head
//!   within [`Limits::header_read_timeout_ms`] of being accepted, whatever it speaks
//!   (HTTP/1.1, h2c prior knowledge, TLS: the handshake counts against the same budget)
//!   and however many bytes it sent. One byte of `P` and silence, or a bare HTTP/2
//!   preface, is closed when the budget runs out.
//! - **Later heads** (HTTP/1.1 keep-alive): once bytes of a new head have arrived on an
//!   otherwise quiet connection, the rest must follow within the same budget, counted
//!   from those first bytes (closed when it runs out, to within a few ms; the idle
//!   timeout does not cut a head that is arriving).
//! - **Idle**: a connection with no request in flight and no new request for
//!   [`Limits::idle_timeout_ms`] from the end of its last request is shut down gracefully (HTTP/1.1 closes, HTTP/2 sends
//!   GOAWAY); HTTP/2 connections also get keep-alive PINGs and are closed when a PING is
//!   not acknowledged in time.
//! - **Header limits**: a request whose head is over [`Limits::header_bytes_max`] bytes
//!   or carries more than [`Limits::headers_max`] fields is answered `431` with the
//!   contract's JSON error (`headers_too_large`) and never reaches the service. hyper is
//!   configured so that its own 431 only happens past much larger hard caps
//!   ([`hard_head_bytes`], [`hard_header_count`]).
//! - **hyper's own answers** (HTTP/1.x): the empty-bodied `400`, `414` and `431` hyper
//!   writes for a head it cannot read get the contract's JSON body on their way out
//!   (`400 invalid_request`, `431 headers_too_large`), so every bad input has one.
//! - **Accept errors** (out of file descriptors and the like): exponential back-off from
//!   2 ms to 1 s; after [`Limits::accept_errors_max`] failures in a row the loop stops
//!   (0: never). Errors that concern one peer only (it reset before we accepted) are
//!   skipped without back-off.
//! - **Unread bodies** (HTTP/1.x): an answer sent before the service read the request's
//!   body to its end carries `Connection: close`, and hyper closes the connection once
//!   it is written: the rest of that body may still be on its way, so the connection
//!   cannot carry another request, and the client is told so instead of finding it shut
//!   when it sends the next one. A service says it read a body with [`BodyRead::mark`].
//! - **Closing on request**: a response carrying [`CloseConnection`] in its extensions
//!   closes its connection after it (HTTP/1.x: `Connection: close`; HTTP/2: GOAWAY, the
//!   open streams finish). No `connection` header is ever put on an HTTP/2 answer.
//! - **Shutdown**: when the shutdown future resolves the listener is closed, every
//!   connection is asked to finish (HTTP/1.1 after its current request, HTTP/2 with
//!   GOAWAY), and connections still open after [`Limits::drain_timeout_ms`] are dropped.
//!
//! TLS is optional ([`TlsAcceptor`], rustls with the ring provider, ALPN `h2` and
//! `http/1.1`); its certificate can be swapped at run time for new connections.

mod conn;
mod counted;
mod gate;
mod service;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::{
    conn::{builder, Conn},
    counted::is_peer_error,
    service::{Activity, Guarded},
};

pub use counted::{CONTROL_FRAMES_BURST, CONTROL_FRAMES_PER_SECOND, CONTROL_FRAMES_PER_STREAM};
pub use gate::{eviction_grace, ConnectionGate};
pub use service::{
    head_only, host_problem, json_headers_problem, Tracked, UNSENT_MAX, UNSENT_STALL,
};
pub use tls::*;

/// The send buffer asked of the kernel for each accepted connection (`SO_SNDBUF`; Linux
/// doubles it for its bookkeeping, and no longer tunes it): 128 KiB in all.
pub const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// Sets an accepted connection's options: `TCP_NODELAY` (requests are small and
/// latency-bound) and a bounded kernel send buffer ([`SEND_BUFFER_BYTES`]). Answers are
/// small, and a client that stops reading (an HTTP/2 client with a huge flow-control
/// window that never reads) otherwise had the kernel take up to `net.ipv4.tcp_wmem`'s
/// 4 MiB of answers per connection, still held for minutes after the connection was
/// closed (FIN-WAIT-1, orphaned, counted against no slot: black-box rounds 249b and 250a,
/// 105 s to about 6 minutes; 40 connections from one address held 151 MB; now some
/// 130-150 KB each).
pub fn set_accepted_options(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER_BYTES)
}

/// Default connections served at once.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1_024;
/// Default time from accept to the first complete request head, in ms.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time a connection may sit with no request before it is closed, in ms.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Default interval between HTTP/2 keep-alive PINGs, in ms.
pub const H2_KEEPALIVE_INTERVAL_MS_DEFAULT: u64 = 20_000;
/// Default time an HTTP/2 keep-alive PING has to be acknowledged, in ms.
pub const H2_KEEPALIVE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default largest request head (request line and header fields), in bytes.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Default most header fields in one request.
pub const HEADERS_MAX_DEFAULT: usize = 100;
/// Default concurrent HTTP/2 streams per connection.
pub const H2_STREAMS_PER_CONNECTION_MAX_DEFAULT: u32 = 256;
/// Default time shutdown waits for connections to finish, in ms.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default consecutive failed accepts before the loop gives up.
pub const ACCEPT_ERRORS_MAX_DEFAULT: u32 = 100;
/// Longest pause between failed accepts, in ms.
pub const ACCEPT_BACKOFF_MS_MAX: u64 = 1_000;
/// hyper's own HTTP/1.1 read buffer (its default, 8 KiB + 100 × 4 KiB): a request head
/// longer than this gets hyper's own 431 (given the JSON body on its way out), and the
/// connection is closed.
const HYPER_H1_BUF_BYTES: usize = 8_192 + 4_096 * 100;

/// The limits of one listener. [`Limits::default`] holds the `*_DEFAULT` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; the next `accept` waits for a free slot. Ignored when
    /// a shared [`ConnectionGate`] is given.
    pub connections_max: usize,
    /// Connections one client IP may hold at once; past it a new one is closed as soon as
    /// it is accepted. 0: no per-IP limit. Ignored when a shared gate is given.
    pub connections_per_ip_max: usize,
    /// Whether loopback clients (127.0.0.0/8, ::1) are exempt from the per-IP limit.
    pub connections_per_ip_exempt_loopback: bool,
    /// From accept to the first complete request head (TLS handshake included), in ms;
    /// also the time a later HTTP/1.1 head has once its first bytes arrived.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and none started for this long is closed.
    pub idle_timeout_ms: u64,
    /// Interval between HTTP/2 keep-alive PINGs, in ms; 0 sends none.
    pub h2_keepalive_interval_ms: u64,
    /// Time a keep-alive PING has to be acknowledged before the connection is closed.
    pub h2_keepalive_timeout_ms: u64,
    /// Largest request head in bytes (request line, names, values, separators).
    pub header_bytes_max: usize,
    /// Most header fields in one request.
    pub headers_max: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub h2_streams_per_connection_max: u32,
    /// Time shutdown waits for connections to finish before dropping them, in ms.
    pub drain_timeout_ms: u64,
    /// Consecutive failed accepts before the loop returns the error; 0: never gives up.
    pub accept_errors_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_ip_max: 0,
            connections_per_ip_exempt_loopback: true,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            h2_keepalive_interval_ms: H2_KEEPALIVE_INTERVAL_MS_DEFAULT,
            h2_keepalive_timeout_ms: H2_KEEPALIVE_TIMEOUT_MS_DEFAULT,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            headers_max: HEADERS_MAX_DEFAULT,
            h2_streams_per_connection_max: H2_STREAMS_PER_CONNECTION_MAX_DEFAULT,
            drain_timeout_ms: DRAIN_TIMEOUT_MS_DEFAULT,
            accept_errors_max: ACCEPT_ERRORS_MAX_DEFAULT,
        }
    }
}

/// The request-head size past which hyper answers by itself (431): the larger
/// of hyper's HTTP/1.1 read buffer (408 KiB) and 4 × `header_bytes_max`. Also the
/// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` advertised.
pub fn hard_head_bytes(limits: &Limits) -> usize {
    HYPER_H1_BUF_BYTES.max(limits.header_bytes_max.saturating_mul(4))
}

/// The header count past which hyper answers an HTTP/1.1 request by itself (431): 4 ×
/// `headers_max`, at least 100 (hyper's default).
pub fn hard_header_count(limits: &Limits) -> usize {
    limits.headers_max.saturating_mul(4).max(100)
}

/// What the service factory learns about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Called when the listener answers 431 itself (for counting).
pub type RefusedHook = Arc<dyn Fn() + Send + Sync>;

/// How [`serve_connections`] runs, beyond its [`Limits`].
#[derive(Clone, Default)]
pub struct ListenerConfig {
    /// The limits.
    pub limits: Limits,
    /// Shared connection slots; `None` makes one from `limits`.
    pub gate: Option<Arc<ConnectionGate>>,
    /// Serve TLS (`https`) instead of cleartext.
    pub tls: Option<TlsAcceptor>,
    /// Incremented on every accepted connection (counted before any limit closes it).
    pub connections_accepted: Option<Arc<AtomicU64>>,
    /// Called each time a request is answered 431 by the listener.
    pub on_headers_too_large: Option<RefusedHook>,
    /// Increased by the connections still open when the drain at the end timed out (they
    /// are dropped, their requests unanswered), so the caller's last log line can say so.
    pub connections_dropped: Option<Arc<AtomicU64>>,
    /// A name for log lines (`"exchange"`, `"bidder-sdk"`, `"relay"`).
    pub name: &'static str,
}

impl fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("limits", &self.limits)
            .field("gate", &self.gate)
            .field("tls", &self.tls.is_some())
            .field("name", &self.name)
            .finish()
    }
}

/// In the extensions of every HTTP/1.x request that has a body: the service marks it
/// ([`BodyRead::mark`]) once it has read the body to its end. An answer to a request
/// whose body was not read to its end carries `Connection: close` (see the module docs),
/// so a service that answers without reading a body (a `401` before the body, a `413` on
/// `Content-Length`) needs to do nothing.
#[derive(Debug, Clone, Default)]
pub struct BodyRead(Arc<BodyReadInner>);

#[derive(Debug, Default)]
struct BodyReadInner {
    read: AtomicBool,
    /// Over HTTP/2: the connection whose bodies still coming this one counts among
    /// ([`BODIES_PENDING_MAX`]), until it is read or its request ends.
    pending_on: Option<Arc<service::Activity>>,
    /// Over HTTP/1.1: the connection whose body being read this is (its
    /// `body_since_us`, cleared once the body is read).
    h1_on: Option<Arc<service::Activity>>,
}

impl BodyRead {
    /// Records that the request whose extensions these are had its body read to its end
    /// (call it after the body's last frame, with the extensions of the request's parts).
    /// Nothing happens for a request that has no marker (one not from this listener, a
    /// request without a body).
    pub fn mark(extensions: &http::Extensions) {
        if let Some(read) = extensions.get::<BodyRead>() {
            read.done();
        }
    }

    /// A marker for an HTTP/2 request whose body is still coming, counted on `activity`.
    fn pending_on(activity: &Arc<service::Activity>) -> BodyRead {
        BodyRead(Arc::new(BodyReadInner {
            read: AtomicBool::new(false),
            pending_on: Some(Arc::clone(activity)),
            h1_on: None,
        }))
    }

    /// A marker for an HTTP/1.1 request whose body is being read on `activity`'s
    /// connection.
    fn h1_on(activity: &Arc<service::Activity>) -> BodyRead {
        BodyRead(Arc::new(BodyReadInner {
            read: AtomicBool::new(false),
            pending_on: None,
            h1_on: Some(Arc::clone(activity)),
        }))
    }

    /// The body was read, or its request ended: counted off once. Progress of the
    /// bodies still coming only when at most [`BODIES_PENDING_MAX`] are left: past it,
    /// a request that ends (a reset, a refusal, a quick request beside them) is none of
    /// theirs, and their bytes are judged by stream (`counted::InScan`; black-box round
    /// 117a: a reset every 200 ms, or a complete ping every 100 ms, held 40 to 256
    /// bodiless streams for the body budget).
    fn done(&self) {
        if !self.0.read.swap(true, Ordering::AcqRel) {
            if let Some(a) = &self.0.h1_on {
                a.body_since_us.store(0, Ordering::Release);
            }
            if let Some(a) = &self.0.pending_on {
                let was = a.bodies_pending.fetch_sub(1, Ordering::AcqRel);
                if was == 1 {
                    a.body_since_us.store(0, Ordering::Release);
                }
                if was <= BODIES_PENDING_MAX.saturating_add(1) {
                    a.bodies_progress_us.store(a.now_us(), Ordering::Release);
                }
            }
        }
    }

    fn is_read(&self) -> bool {
        self.0.read.load(Ordering::Relaxed)
    }
}

/// HTTP/2 requests on one connection whose bodies have not all arrived (the service has
/// not read them to their end): with more than this many, and none read to its end for
/// [`BODIES_STALL`], the connection is closed (counted by `ConnectionGate::stalled`).
/// Each such stream holds memory for up to the body's time budget, and the server cannot
/// tell an honest client's from an attacker's before the body is there to verify
/// (black-box round 111c: 250 connections of 256 streams that sent headers and no body,
/// without any key, took an SDK bidder from 4.5 to 254 MB). An honest client with many
/// requests at once can have more than this many pending for a moment (the service is
/// called on the headers), but its bodies keep arriving.
pub const BODIES_PENDING_MAX: u32 = 32;

/// How long a connection with more than [`BODIES_PENDING_MAX`] bodies still coming may go
/// without one of them arriving before it is closed.
pub const BODIES_STALL: Duration = Duration::from_secs(1);

/// Put in a response's extensions to close its connection once the response is sent:
/// over HTTP/1.x the response carries `Connection: close` (hyper closes the connection
/// after writing it); over HTTP/2 the connection is sent GOAWAY (streams already open
/// finish, no new one is taken). The marker itself is removed from the response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseConnection;

/// How long an HTTP/2 connection asked to close ([`CloseConnection`]) is kept after its
/// GOAWAY once nothing is in flight: long enough for the answer to leave, not for the
/// client to hold the connection.
pub const GOAWAY_LINGER: Duration = Duration::from_millis(500);

/// How long an idle HTTP/2 connection closed to make room for a new one (every slot
/// taken) is kept after its GOAWAY: long enough for the GOAWAY to be written, not for the
/// client to answer hyper's PING, which it need never do. The waiting connection takes the
/// slot once it is dropped, so this is the cost of each such eviction: with
/// [`GOAWAY_LINGER`], a seller whose HTTP/2 clients stopped reading made 20 new
/// connections wait 0.5 s each, one after the other (black-box round 220a).
pub const EVICT_LINGER: Duration = Duration::from_millis(20);

/// How often a connection sent GOAWAY looks whether its last requests are answered.
pub const GOAWAY_RECHECK: Duration = Duration::from_millis(100);

/// How long after an HTTP/2 answer asked to close its connection the GOAWAY is sent: the
/// answer's frames go out first. h2 writes a pending GOAWAY ahead of stream frames, and
/// each stream's answer is written from a task of its own, so a GOAWAY asked for at once
/// went out before the answer; curl 7.88 then closed without reading the answer behind
/// it (black-box round 42: 4 of 20 refusals `431` over HTTP/2 were lost).
pub const GOAWAY_DELAY: Duration = Duration::from_millis(50);

/// A listener on `addr` that other listeners on the same address may share
/// (`SO_REUSEPORT`: the kernel spreads new connections over them), so that each worker
/// of a thread-per-core server (the exchange, the relay) accepts on its own. Backlog 1,024.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves connections accepted on `listener` until `shutdown` resolves, each with a
/// service made by `make_service`, under `config`'s limits (see the module docs). Returns
/// `Ok(())` after a graceful drain, or the accept error when accepting kept failing
/// ([`Limits::accept_errors_max`] in a row), after draining the same way.
pub async fn serve_connections<F, S, B>(
    listener: TcpListener,
    config: ListenerConfig,
    make_service: F,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()>
where
    F: Fn(&ConnInfo) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    B: hyper::body::Body + From<Bytes> + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = config.name;
    let limits = Arc::new(config.limits.clone());
    let gate = config
        .gate
        .clone()
        .unwrap_or_else(|| ConnectionGate::new(&limits));
    let builder = Arc::new(builder(&limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors: u32 = 0;
    let mut failure = None;
    let grace = eviction_grace(&limits);
    'accept: loop {
        // One connection at a time, then its slot: with none free, this loop accepts
        // nothing more until it has one (below), so a flood waits in the kernel's backlog.
        // A slot is never held while waiting for a connection: with several listeners on
        // one gate (the exchange's workers, SO_REUSEPORT), a listener holding the last
        // free slot while the kernel gave the next connection to another kept that
        // connection waiting until some other slot freed (black-box round 75a: 8.5 s,
        // with 19 of 20 slots taken).
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                accept_errors = 0;
                accepted
            }
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                accept_errors = accept_errors.saturating_add(1);
                if limits.accept_errors_max > 0 && accept_errors >= limits.accept_errors_max {
                    tracing::error!(error = %e, listener = name, "accept keeps failing, stopping");
                    failure = Some(e);
                    break;
                }
                let backoff_ms = (1_u64 << accept_errors.min(10)).min(ACCEPT_BACKOFF_MS_MAX);
                tracing::warn!(error = %e, backoff_ms, listener = name, "accept failed");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(Duration::from_millis(backoff_ms)) => continue,
                }
            }
        };
        if let Some(counter) = &config.connections_accepted {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // Reap finished connections so the set stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        let Some(ip_slot) = gate.admit(peer.ip()) else {
            tracing::debug!(listener = name, "connection over the per-IP limit closed");
            drop(stream);
            continue;
        };
        let permit = match Arc::clone(&gate.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => break,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                // Every slot is taken: close the oldest connection that has sent no head
                // within its grace, and take the slot it frees. With none to close, wait
                // for a slot, looking again as connections pass their grace (this one
                // connection waits here; the next ones in the backlog).
                let look = (grace / 4).max(Duration::from_millis(1));
                loop {
                    if gate.evict_one(Instant::now(), grace) {
                        tracing::debug!(
                            listener = name,
                            "slots full: closed the oldest connection without a head past its grace"
                        );
                    }
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break 'accept,
                        permit = Arc::clone(&gate.permits).acquire_owned() => match permit {
                            Ok(permit) => break permit,
                            Err(_closed) => break 'accept,
                        },
                        () = tokio::time::sleep(look) => {}
                    }
                }
            }
        };
        // The head budget counts from here: a connection that waited for its slot has
        // its whole budget once it has one.
        let accepted_at = Instant::now();
        if let Err(e) = set_accepted_options(&stream) {
            tracing::debug!(error = %e, listener = name, "a socket option could not be set");
        }
        let info = ConnInfo {
            peer,
            tls: config.tls.is_some(),
        };
        let activity = Arc::new(Activity::new(accepted_at));
        let service = Guarded {
            inner: make_service(&info),
            activity: Arc::clone(&activity),
            limits: Arc::clone(&limits),
            on_refused: config.on_headers_too_large.clone(),
        };
        let listed = gate.register(&activity);
        let conn = Conn {
            builder: Arc::clone(&builder),
            limits: Arc::clone(&limits),
            activity,
            accepted_at,
            stop: stop_rx.clone(),
            name,
            listed,
            _permit: permit,
            _ip_slot: ip_slot,
        };
        let tls = config.tls.as_ref().map(TlsAcceptor::current);
        connections.spawn(conn.run(stream, tls, service));
    }
    drop(listener);
    stop_tx.send_replace(true);
    let drain = Duration::from_millis(limits.drain_timeout_ms);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            drain_timeout_ms = limits.drain_timeout_ms,
            connections = connections.len(),
            "drain timed out, dropping connections"
        );
        if let Some(dropped) = &config.connections_dropped {
            dropped.fetch_add(connections.len() as u64, Ordering::Relaxed);
        }
    }
    connections.shutdown().await;
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests;
