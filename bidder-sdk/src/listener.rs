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
//!   quarter of the head budget) without sending a complete request head; with none,
//!   the served connection idle the longest (nothing in flight for at least the grace),
//!   gracefully (HTTP/1.1 closes, HTTP/2 GOAWAY). A connection with a request in flight
//!   is never evicted. One eviction at a time. Counted in [`ConnectionGate::evicted`].
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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use proto::{ApiError, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

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

/// Connection slots, shared by every listener of one server (the exchange's workers
/// share one): a global limit (one permit per accepted connection), and a per-client-IP count.
pub struct ConnectionGate {
    permits: Arc<Semaphore>,
    per_ip_max: usize,
    exempt_loopback: bool,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    refused_per_ip: AtomicU64,
    /// Every live connection, by accept order: when every slot is taken and a new
    /// connection waits, the oldest without a head past its grace, else the longest idle,
    /// is closed to make room ([`ConnectionGate::evict_one`]).
    live: Mutex<BTreeMap<u64, Arc<Activity>>>,
    next_conn: AtomicU64,
    evicted: AtomicU64,
}

impl fmt::Debug for ConnectionGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionGate")
            .field("available", &self.permits.available_permits())
            .field("per_ip_max", &self.per_ip_max)
            .field("exempt_loopback", &self.exempt_loopback)
            .finish()
    }
}

impl ConnectionGate {
    /// A gate with `connections_max` slots (at least one) and the per-IP limit of
    /// `limits`.
    pub fn new(limits: &Limits) -> Arc<ConnectionGate> {
        ConnectionGate::with_permits(
            Arc::new(Semaphore::new(limits.connections_max.max(1))),
            limits.connections_per_ip_max,
            limits.connections_per_ip_exempt_loopback,
        )
    }

    /// A gate over an existing semaphore (one permit per connection).
    pub fn with_permits(
        permits: Arc<Semaphore>,
        per_ip_max: usize,
        exempt_loopback: bool,
    ) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            permits,
            per_ip_max,
            exempt_loopback,
            per_ip: Mutex::new(HashMap::new()),
            refused_per_ip: AtomicU64::new(0),
            live: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// Connections closed to make room for a new one, since start: each had held its slot
    /// for at least its grace ([`eviction_grace`]) without sending a complete request
    /// head, or had been idle that long with none so, while every slot was taken and a
    /// new connection waited.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Activity>>> {
        // Plain entries: a panic elsewhere cannot leave the map inconsistent.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a new connection (for [`Self::evict_one`]); it leaves
    /// the list when the returned entry is dropped (its connection ended).
    fn register(self: &Arc<Self>, activity: &Arc<Activity>) -> Listed {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.live().insert(id, Arc::clone(activity));
        Listed(Arc::clone(self), id)
    }

    /// Closes the oldest listed connection that has held its slot for `grace` (from its
    /// accept) without sending a complete request head, or with none, the served one idle
    /// the longest (at least `grace`), and says whether there was one. A connection with
    /// a request in flight is never taken; none is while an evicted one has not ended.
    fn evict_one(&self, now: Instant, grace: Duration) -> bool {
        let list = self.live();
        let mut headless = None;
        // The served connection idle the longest (nothing in flight), and since when.
        let mut idle: Option<(u64, Instant)> = None;
        for (&id, activity) in list.iter() {
            if activity.evicted.load(Ordering::Acquire) {
                // One eviction at a time: the slot it frees is on its way.
                return false;
            }
            let accepted_at = activity.accepted_at.get().copied().unwrap_or(now);
            let started = activity.started.load(Ordering::Relaxed);
            if started == 0 {
                if headless.is_none() && now.saturating_duration_since(accepted_at) >= grace {
                    headless = Some(id);
                }
                continue;
            }
            // Nothing in flight, and over HTTP/1.1 no next head arriving (over HTTP/2,
            // control frames such as PING acknowledgements are not requests).
            if started == activity.finished.load(Ordering::Acquire)
                && (activity.h2.load(Ordering::Relaxed)
                    || activity.bytes_in.load(Ordering::Relaxed)
                        <= activity.bytes_at_finish.load(Ordering::Relaxed))
            {
                let since = activity.finished_at(accepted_at);
                if now.saturating_duration_since(since) >= grace
                    && idle.is_none_or(|(_, at)| since < at)
                {
                    idle = Some((id, since));
                }
            }
        }
        // A connection that never sent a head first; else the longest-idle served one
        // (black-box round 78b: one seller's idle kept-alive connections held every slot
        // for the idle timeout).
        let Some(activity) = headless
            .or(idle.map(|(id, _)| id))
            .and_then(|id| list.get(&id))
        else {
            return false;
        };
        activity.evicted.store(true, Ordering::Release);
        activity.evict.notify_one();
        true
    }

    /// Free connection slots.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Connections closed at accept because their IP held its limit, since start.
    pub fn refused_per_ip(&self) -> u64 {
        self.refused_per_ip.load(Ordering::Relaxed)
    }

    /// Connections `ip` holds now.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map holds plain counts: a panic elsewhere cannot leave it inconsistent.
        self.per_ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection from `ip`, or `None` when `ip` already holds its limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`: counted, and
        // exempt when loopback, as the IPv4 address it is.
        let ip = canonical(ip);
        if self.per_ip_max == 0 || (self.exempt_loopback && ip.is_loopback()) {
            return Some(IpSlot(None));
        }
        let mut map = self.lock();
        let held = map.entry(ip).or_insert(0);
        if *held >= self.per_ip_max {
            drop(map);
            self.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *held += 1;
        Some(IpSlot(Some((Arc::clone(self), ip))))
    }
}

/// A connection's place in its gate's list of live connections; leaves it on
/// drop.
struct Listed(Arc<ConnectionGate>, u64);

impl Drop for Listed {
    fn drop(&mut self) {
        self.0.live().remove(&self.1);
    }
}

/// How long a connection may hold its slot without a complete request head before a new
/// connection, waiting for a slot when all are taken, may close it: a quarter of the head
/// budget (1.25 s of the default 5 s), at least 1 ms. An honest client sends its head
/// within a few round trips; a silent or trickling one that would have held its slot for
/// the whole head budget makes room for the next client after this grace instead.
pub fn eviction_grace(limits: &Limits) -> Duration {
    Duration::from_millis((limits.header_read_timeout_ms / 4).max(1))
}

/// An IPv4 client seen through an IPv6 socket counts as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One connection's place in its IP's count; released on drop.
struct IpSlot(Option<(Arc<ConnectionGate>, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((gate, ip)) = self.0.take() {
            let mut map = gate.lock();
            if let Some(held) = map.get_mut(&ip) {
                *held = held.saturating_sub(1);
                if *held == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The certificate PEM holds no certificate or does not parse.
    #[error("no PEM certificate found in {file}{hint}")]
    NoCertificate {
        /// The file (or what names it).
        file: String,
        /// What the file seems to hold instead, and what to do, or nothing.
        hint: &'static str,
    },
    /// The key PEM holds no private key or does not parse.
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) found in {0}")]
    NoKey(String),
    /// The key PEM holds only a passphrase-protected key, which the exchange cannot use.
    #[error(
        "{0} holds an encrypted private key, which is not supported: give an unencrypted \
         one (`openssl pkey -in ENCRYPTED.pem -out KEY.pem` decrypts it), readable only by \
         the exchange's user"
    )]
    EncryptedKey(String),
    /// A certificate in the PEM is not an X.509 certificate that parses.
    #[error("{file}: certificate {n} of {of} is not a valid X.509 certificate ({why})")]
    BadCertificate {
        /// The file (or what names it).
        file: String,
        /// Its position, from 1.
        n: usize,
        /// How many the file holds.
        of: usize,
        /// What the parser said.
        why: String,
    },
    /// rustls refused the pair (unsupported algorithm...).
    #[error("certificate and key rejected: {0}")]
    Rejected(String),
    /// The private key is not the certificate's.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: String,
        /// The certificate file.
        cert: String,
    },
}

/// Which of a certificate and key pair's files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain.
    Cert,
    /// The private key (a key that does not match the certificate counts here).
    Key,
}

/// The largest PEM file read: certificate chains and keys are a few KB, a bundle of every
/// public root CA about 250 KB.
pub const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Reads a regular file of at most `max` bytes. Anything else is an error before a byte is
/// read: a FIFO or a device could block forever or never end (`/dev/zero`), and a larger
/// file is refused without reading past `max`.
pub fn read_file_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    // `metadata` follows symlinks and opens nothing: a FIFO is refused before `open`,
    // which would block on it.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    std::fs::File::open(path)?
        .take(max.saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// Reads a PEM file (a regular file of at most [`PEM_FILE_BYTES_MAX`] bytes).
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_file_bounded(path, PEM_FILE_BYTES_MAX).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM document, each checked to parse as an X.509 certificate
/// (`label` names the document in errors). Base64 that decodes is not enough: a block
/// with a line missing decodes to DER that does not parse, and rustls takes such a chain
/// and sends it, so that every client's handshake fails (black-box round 17: a reload
/// took one, and locked the admin listener out too).
pub fn certificates_from_pem(
    pem: &[u8],
    label: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    // A byte-order mark before the first line (an editor's) is not part of the PEM.
    let pem = pem.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(pem);
    let none = |parse_failed: bool| TlsError::NoCertificate {
        file: label.to_string(),
        hint: pem_hint(pem, parse_failed),
    };
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| none(true))?;
    if certs.is_empty() {
        return Err(none(false));
    }
    let of = certs.len();
    for (i, cert) in certs.iter().enumerate() {
        // Parsing a certificate as a trust anchor reads its whole structure (names, key,
        // extensions), and trusts nothing: the store is dropped.
        if let Err(e) = rustls::RootCertStore::empty().add(cert.clone()) {
            let why = e.to_string();
            return Err(TlsError::BadCertificate {
                file: label.to_string(),
                n: i + 1,
                of,
                // Not a peer's: a file's.
                why: why
                    .strip_prefix("invalid peer certificate: ")
                    .unwrap_or(&why)
                    .to_string(),
            });
        }
    }
    Ok(certs)
}

/// What a certificate file that yields no PEM certificate seems to hold instead, and
/// what to do (black-box round 67a: DER, a cut-off block and OpenSSL's `TRUSTED
/// CERTIFICATE` were all told as "no PEM certificate found").
fn pem_hint(pem: &[u8], parse_failed: bool) -> &'static str {
    let holds = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    if pem.first() == Some(&0x30) {
        ": the file is DER, not PEM (`openssl x509 -inform DER -in FILE -out FILE.pem` converts it)"
    } else if parse_failed {
        ": a block is cut off (a BEGIN line without its END line) or its base64 does not decode; every block must be whole"
    } else if holds(b"-----BEGIN TRUSTED CERTIFICATE-----") {
        ": it holds an OpenSSL `TRUSTED CERTIFICATE` (made with `-trustout`); write the certificate without `-trustout`"
    } else if holds(b"PRIVATE KEY-----") {
        ": it holds a private key; give the certificate's file (a key never goes in a certificate file)"
    } else if holds(b"-----BEGIN CERTIFICATE REQUEST-----")
        || holds(b"-----BEGIN NEW CERTIFICATE REQUEST-----")
    {
        ": it holds a certificate request (CSR), not the certificate a CA issued for it"
    } else if holds(b"-----BEGIN X509 CERTIFICATE-----") {
        ": its block is labelled `X509 CERTIFICATE`; the label must be `CERTIFICATE`"
    } else {
        " (a certificate is a block from `-----BEGIN CERTIFICATE-----` to `-----END CERTIFICATE-----`)"
    }
}

/// The first private key of a PEM file. A file that holds only an encrypted key (PKCS#8
/// `ENCRYPTED PRIVATE KEY`, or a legacy OpenSSL key with `Proc-Type: 4,ENCRYPTED`) is
/// [`TlsError::EncryptedKey`], not "no key".
pub fn private_key_from_pem(
    pem: &[u8],
    label: &str,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        let encrypted = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
        if encrypted(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || encrypted(b"Proc-Type: 4,ENCRYPTED")
        {
            TlsError::EncryptedKey(label.to_string())
        } else {
            TlsError::NoKey(label.to_string())
        }
    })
}

/// A rustls server configuration from a PEM certificate chain and private key, with the
/// ring provider, TLS 1.2 and 1.3, and ALPN `h2` then `http/1.1`.
pub fn server_config_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    label: &str,
) -> Result<rustls::ServerConfig, TlsError> {
    let certs = certificates_from_pem(cert_pem, label)?;
    let key = private_key_from_pem(key_pem, label)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Rejected(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| TlsError::Rejected(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// [`server_config_from_pem`] from two files (the first problem of
/// [`server_config_from_files_checked`]).
pub fn server_config_from_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<rustls::ServerConfig, TlsError> {
    server_config_from_files_checked(cert_path, key_path).map_err(|problems| {
        // Never empty; the certificate's problem comes first.
        problems.into_iter().next().map_or_else(
            || TlsError::Rejected("the certificate and key were refused".into()),
            |(_, e)| e,
        )
    })
}

/// [`server_config_from_files`] with every problem at once, each with the file it is
/// about: both files are read and parsed whatever the other's fate, and a key that is
/// not the certificate's is the key's problem ([`TlsError::KeyMismatch`]). The
/// certificate's problems come first; the list is never empty.
pub fn server_config_from_files_checked(
    cert_path: &Path,
    key_path: &Path,
) -> Result<rustls::ServerConfig, Vec<(TlsFile, TlsError)>> {
    let cert_name = cert_path.display().to_string();
    let key_name = key_path.display().to_string();
    let mut problems = Vec::new();
    let certs = read_pem(cert_path)
        .and_then(|pem| certificates_from_pem(&pem, &cert_name))
        .map_err(|e| problems.push((TlsFile::Cert, e)))
        .ok();
    let key = read_pem(key_path)
        .and_then(|pem| private_key_from_pem(&pem, &key_name))
        .map_err(|e| problems.push((TlsFile::Key, e)))
        .ok();
    let (Some(certs), Some(key)) = (certs, key) else {
        return Err(problems);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // A key rustls cannot use is the key's problem, not the pair's.
    let signing_key = match provider.key_provider.load_private_key(key.clone_key()) {
        Ok(k) => k,
        Err(e) => {
            return Err(vec![(
                TlsFile::Key,
                TlsError::Rejected(format!(
                    "{key_name}: the key cannot be used ({e}): the supported keys are RSA of 2048 to 8192 bits, ECDSA on P-256 or P-384, and Ed25519"
                )),
            )])
        }
    };
    // The key is another certificate's of the file: the chain is out of order (black-box
    // round 65b: told as a key that matches nothing).
    let own = |cert: &rustls::pki_types::CertificateDer<'static>| {
        rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key.clone())
            .keys_match()
            .is_ok()
    };
    if !certs.first().is_some_and(own) {
        if let Some(n) = certs.iter().position(own) {
            return Err(vec![(
                TlsFile::Cert,
                TlsError::Rejected(format!(
                    "{cert_name}: the key is certificate {}'s of {}, not the first's: the file must list the server's own certificate first, then each issuer in turn",
                    n + 1,
                    certs.len()
                )),
            )]);
        }
    }
    let built = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key));
    match built {
        Ok(mut config) => {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Ok(config)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(vec![(
            TlsFile::Key,
            TlsError::KeyMismatch {
                key: key_name,
                cert: cert_name,
            },
        )]),
        // The key loaded: what is left is the certificate (one rustls cannot parse).
        Err(e) => Err(vec![(
            TlsFile::Cert,
            TlsError::Rejected(format!("{cert_name}: {e}")),
        )]),
    }
}

/// The TLS side of a listener: a rustls server configuration behind an `ArcSwap`, read
/// once per accepted connection, so a new certificate applies to new connections while
/// established ones keep theirs. Clones share the configuration.
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ArcSwap<rustls::ServerConfig>>,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("alpn", &self.config.load().alpn_protocols.len())
            .finish()
    }
}

impl TlsAcceptor {
    /// An acceptor for this configuration (set its ALPN protocols yourself, or use
    /// [`server_config_from_pem`]).
    pub fn new(config: rustls::ServerConfig) -> TlsAcceptor {
        TlsAcceptor {
            config: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// An acceptor from PEM certificate chain and key files.
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<TlsAcceptor, TlsError> {
        server_config_from_files(cert_path.as_ref(), key_path.as_ref()).map(TlsAcceptor::new)
    }

    /// Re-reads the PEM files and swaps the configuration in for new connections. On
    /// error the current configuration stays.
    pub fn reload_pem_files(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        let config = server_config_from_files(cert_path.as_ref(), key_path.as_ref())?;
        self.replace(config);
        Ok(())
    }

    /// Swaps the configuration in for new connections.
    pub fn replace(&self, config: rustls::ServerConfig) {
        self.config.store(Arc::new(config));
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }
}

/// What the service factory learns about a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
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
pub struct BodyRead(Arc<AtomicBool>);

impl BodyRead {
    /// Records that the request whose extensions these are had its body read to its end
    /// (call it after the body's last frame, with the extensions of the request's parts).
    /// Nothing happens for a request that has no marker (one not from this listener, an
    /// HTTP/2 request, a request without a body).
    pub fn mark(extensions: &http::Extensions) {
        if let Some(read) = extensions.get::<BodyRead>() {
            read.0.store(true, Ordering::Relaxed);
        }
    }

    fn is_read(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

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

/// How often a connection sent GOAWAY looks whether its last requests are answered.
pub const GOAWAY_RECHECK: Duration = Duration::from_millis(100);

/// How long after an HTTP/2 answer asked to close its connection the GOAWAY is sent: the
/// answer's frames go out first. h2 writes a pending GOAWAY ahead of stream frames, and
/// each stream's answer is written from a task of its own, so a GOAWAY asked for at once
/// went out before the answer; curl 7.88 then closed without reading the answer behind
/// it (black-box round 42: 4 of 20 refusals `431` over HTTP/2 were lost).
pub const GOAWAY_DELAY: Duration = Duration::from_millis(50);

/// What a connection did, read by its supervisor.
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose head was complete (the service was called).
    started: AtomicU64,
    /// Requests answered or dropped.
    finished: AtomicU64,
    /// Bytes read from the client (after TLS).
    bytes_in: AtomicU64,
    /// `bytes_in` when the last request finished: on a quiet HTTP/1.1 connection, any
    /// byte past it is the start of the next head.
    bytes_at_finish: AtomicU64,
    /// Over TLS, bytes read from the socket (before decryption), and their count when the
    /// last request finished: a record still arriving is a head arriving, though none of
    /// its bytes is readable yet.
    raw_in: AtomicU64,
    raw_at_finish: AtomicU64,
    /// Whether a request came over HTTP/2.
    h2: AtomicBool,
    /// Woken when an HTTP/2 answer asked to close its connection ([`CloseConnection`]).
    close: Notify,
    /// Woken when the connection is evicted (no head within its grace, every slot taken,
    /// a new connection waiting); `evicted` says it was.
    evict: Notify,
    evicted: AtomicBool,
    /// When the connection was accepted: the origin of `finished_at_us`.
    accepted_at: OnceLock<Instant>,
    /// When the last request finished, in µs from `accepted_at`: idleness counts from it
    /// (not from the supervisor's next look).
    finished_at_us: AtomicU64,
    /// When the first bytes of a head after the last finished request arrived, in µs from
    /// `accepted_at`: that head's budget counts from it.
    head_started_at_us: AtomicU64,
}

impl Activity {
    fn new(accepted_at: Instant) -> Activity {
        let a = Activity::default();
        let _ = a.accepted_at.set(accepted_at);
        a
    }

    /// When the last request finished (`accepted_at` if none has).
    fn finished_at(&self, accepted_at: Instant) -> Instant {
        accepted_at + Duration::from_micros(self.finished_at_us.load(Ordering::Acquire))
    }

    /// When the bytes of the head being read began to arrive (see `head_started_at_us`).
    fn head_started_at(&self, accepted_at: Instant) -> Instant {
        accepted_at + Duration::from_micros(self.head_started_at_us.load(Ordering::Acquire))
    }

    /// The first bytes of a head after the last finished request arrived now (kept if an
    /// earlier look, below TLS, saw them first).
    fn head_starts(&self) {
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
    fn now_us(&self) -> u64 {
        self.accepted_at.get().map_or(0, |origin| {
            let us = Instant::now()
                .saturating_duration_since(*origin)
                .as_micros();
            u64::try_from(us).unwrap_or(u64::MAX)
        })
    }
}

/// Counts a finished request when dropped (answered, or dropped by hyper).
struct Finished(Arc<Activity>);

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
fn head_bytes<B>(req: &Request<B>) -> usize {
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
fn check_head_limits<B>(req: &Request<B>, limits: &Limits) -> Option<ApiError> {
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
fn transfer_coding_problem<B>(req: &Request<B>) -> Option<&'static str> {
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
struct Guarded<S> {
    inner: S,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    on_refused: Option<RefusedHook>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<Incoming>> for Guarded<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: From<Bytes> + Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<B>, S::Error>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        use hyper::body::Body as _;
        if req.version() == Version::HTTP_2 {
            self.activity.h2.store(true, Ordering::Relaxed);
        }
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        let finished = Finished(Arc::clone(&self.activity));
        let h1 = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11);
        let h10 = req.version() == Version::HTTP_10;
        // An HTTP/1.x body not read to its end leaves the connection unusable for another
        // request: the answer must say `Connection: close`.
        let body_read = (h1 && !req.body().is_end_stream()).then(|| {
            let read = BodyRead::default();
            req.extensions_mut().insert(read.clone());
            read
        });
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
            result
        })
    }
}

/// Marks an HTTP/1.x answer as the last on its connection: `Connection: close`. To an
/// HTTP/1.0 request the answer is also HTTP/1.0: hyper judges keep-alive by the answer's
/// version before it downgrades it, and to an HTTP/1.1 answer of a keep-alive request it
/// appends `keep-alive` (`connection: close, keep-alive`, black-box round 10).
fn closing_h1<B>(response: &mut Response<B>, h10: bool) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    if h10 {
        *response.version_mut() = Version::HTTP_10;
    }
}

/// A stream that counts the bytes read from it, and gives hyper's own error answers the
/// contract's JSON body ([`bare_answer_replacement`]).
/// The socket under TLS: counts the bytes that arrive before they are decrypted
/// (`Activity::raw_in`), so a head whose first TLS record is still arriving has begun
/// (black-box round 39: a record split across the idle timeout was cut by it).
struct RawCounted<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for RawCounted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            let a = &this.activity;
            let was = a.raw_in.fetch_add(read as u64, Ordering::Relaxed);
            if was == a.raw_at_finish.load(Ordering::Relaxed) {
                a.head_starts();
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for RawCounted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

struct Counted<I> {
    inner: I,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    on_refused: Option<RefusedHook>,
    /// An answer being written in place of one of hyper's bare ones.
    replacing: Option<Replacing>,
}

/// The bytes written in place of hyper's, how many are out, and the length of hyper's
/// buffer they stand for (reported written once all of them are).
struct Replacing {
    bytes: Vec<u8>,
    sent: usize,
    stands_for: usize,
}

/// The largest head hyper writes for an answer of its own (status line, `connection`,
/// `content-length`, `date`): anything longer is not one.
const BARE_HEAD_MAX: usize = 256;

/// What goes on the wire instead of hyper's own answer to a head it could not read, if
/// `head` is one: hyper answers a request line or header field that does not parse with
/// `400`, a target over the `http` crate's 64 KiB with `414`, and a head over its read
/// buffer or field count (both well past `header_bytes_max` and `headers_max`) with
/// `431`, each with an empty body and `connection: close`. The contract gives every bad
/// input its JSON error body, so the same answer goes out with one: `400
/// invalid_request`, or `431 headers_too_large` for both of the last (a target that long
/// is a head over `header_bytes_max`, which counts the request line). An answer of the
/// service always has a `content-type`, so it is never taken for one of these; the
/// status and the other fields (`connection: close`, `date`) are kept.
fn bare_answer_replacement(head: &[u8], limits: &Limits) -> Option<(Vec<u8>, bool)> {
    if head.len() > BARE_HEAD_MAX
        || head.len() < 13
        || !(head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.0 4"))
        || !head.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let (version, status) = (&head[..9], &head[9..12]);
    let too_large = match status {
        b"400" => false,
        b"414" | b"431" => true,
        _ => return None,
    };
    let text = std::str::from_utf8(&head[..head.len() - 4]).ok()?;
    let mut lines = text.split("\r\n");
    lines.next()?;
    let mut kept = Vec::new();
    let mut empty_body = false;
    let mut says_close = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-type") {
            return None;
        }
        if name.eq_ignore_ascii_case("connection") {
            says_close |= value.trim().eq_ignore_ascii_case("close");
        }
        if name.eq_ignore_ascii_case("content-length") {
            if value.trim() != "0" {
                return None;
            }
            empty_body = true;
            continue;
        }
        kept.push(line);
    }
    if !empty_body {
        return None;
    }
    let error = if too_large {
        ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request head is over {} bytes or has more than {} header fields",
                limits.header_bytes_max, limits.headers_max
            ),
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "the request head could not be read as HTTP/1.1 (its request line or a header field is malformed, or its Content-Length is invalid or repeated)",
        )
    };
    let body = error.to_json();
    let mut out = Vec::with_capacity(head.len() + body.len() + 64);
    out.extend_from_slice(version);
    out.extend_from_slice(if too_large {
        b"431 Request Header Fields Too Large\r\n".as_slice()
    } else {
        b"400 Bad Request\r\n".as_slice()
    });
    for line in kept {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // hyper closes the connection after these, and says so, except in an answer it
    // writes as HTTP/1.0 (after an HTTP/1.0 keep-alive request on the connection), where
    // closing is the default: the answer says it anyway, as every closing answer of the
    // listener does (black-box round 16).
    if !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"content-type: application/json\r\n");
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    Some((out, too_large))
}

impl<I: AsyncWrite + Unpin> Counted<I> {
    /// Starts replacing `buf` if it is one of hyper's bare answers (HTTP/1.x only).
    fn check_bare(&mut self, buf: &[u8]) {
        if self.replacing.is_some()
            || buf.len() > BARE_HEAD_MAX
            || !buf.starts_with(b"HTTP/1.")
            || self.activity.h2.load(Ordering::Relaxed)
        {
            return;
        }
        if let Some((bytes, too_large)) = bare_answer_replacement(buf, &self.limits) {
            if too_large {
                if let Some(hook) = &self.on_refused {
                    hook();
                }
            }
            self.replacing = Some(Replacing {
                bytes,
                sent: 0,
                stands_for: buf.len(),
            });
        }
    }

    /// Writes the replacement out; ready with the length of hyper's buffer once it is.
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Option<Poll<io::Result<usize>>> {
        let replacing = self.replacing.as_mut()?;
        while replacing.sent < replacing.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &replacing.bytes[replacing.sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => replacing.sent += n,
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Pending => return Some(Poll::Pending),
            }
        }
        let written = replacing.stands_for;
        self.replacing = None;
        Some(Poll::Ready(Ok(written)))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            let a = &this.activity;
            let before = a.bytes_in.fetch_add(read as u64, Ordering::Relaxed);
            // The first bytes after the last finished request: a new head starts, and its
            // budget counts from now (not from the end of the request before, which may
            // lie a long, legitimate idle time back).
            if before == a.bytes_at_finish.load(Ordering::Relaxed) {
                a.head_starts();
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_bare(buf);
        if let Some(polled) = this.poll_replacing(cx) {
            return polled;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            this.check_bare(only);
        }
        if let Some(polled) = this.poll_replacing(cx) {
            return polled;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accept errors that concern one peer only (it gave up before we accepted).
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
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
    B: hyper::body::Body + From<Bytes> + Send + 'static,
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
        // Requests are small and latency-bound.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, listener = name, "set_nodelay failed");
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

/// One connection's task: the TLS handshake, hyper, and the supervisor that enforces the
/// head budget and the idle timeout.
struct Conn {
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    activity: Arc<Activity>,
    accepted_at: Instant,
    stop: watch::Receiver<bool>,
    name: &'static str,
    // Dropped before the permit: an evicted connection is off the list when its slot
    // frees.
    listed: Listed,
    _permit: OwnedSemaphorePermit,
    _ip_slot: IpSlot,
}

impl Conn {
    async fn run<S, B>(
        self,
        stream: TcpStream,
        tls: Option<Arc<rustls::ServerConfig>>,
        service: Guarded<S>,
    ) where
        S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        B: hyper::body::Body + From<Bytes> + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let head_deadline =
            self.accepted_at + Duration::from_millis(self.limits.header_read_timeout_ms);
        match tls {
            None => self.drive(stream, service, head_deadline, None).await,
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let mut stop = self.stop.clone();
                let handshake = tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return,
                    () = self.activity.evict.notified() => {
                        self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, "evicted during the TLS handshake: slots full, no head within its grace");
                        return;
                    }
                    r = tokio::time::timeout_at(head_deadline, acceptor.accept(RawCounted {
                        inner: stream,
                        activity: Arc::clone(&self.activity),
                    })) => r,
                };
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

    async fn drive<I, S, B>(
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
        B: hyper::body::Body + From<Bytes> + Send + 'static,
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
        loop {
            tokio::select! {
                biased;
                served = conn.as_mut() => {
                    if let Err(e) = served {
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
                    if started == activity.finished.load(Ordering::Acquire) && !goaway && !closing {
                        // Idle: closed gracefully (HTTP/1.1 at once, HTTP/2 with GOAWAY), and
                        // dropped once nothing is in flight, as after any GOAWAY.
                        self.listed.0.evicted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(listener = self.name, h2 = activity.h2.load(Ordering::Relaxed), "evicted: slots full, the longest idle connection");
                        goaway = true;
                        conn.as_mut().graceful_shutdown();
                        next_check = next_check.min(Instant::now() + GOAWAY_LINGER);
                    } else if !goaway && !closing {
                        // A request came since that look: served, and not evicted.
                        activity.evicted.store(false, Ordering::Release);
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
                    let mark = activity.bytes_at_finish.load(Ordering::Relaxed);
                    let h2 = activity.h2.load(Ordering::Relaxed);
                    if h2 {
                        next_check = now + h2_tick;
                    } else if bytes_in > mark
                        || activity.raw_in.load(Ordering::Relaxed)
                            > activity.raw_at_finish.load(Ordering::Relaxed)
                    {
                        // Part of a new HTTP/1.1 head arrived and has not completed: it
                        // has the head budget from its first bytes, and the idle timeout
                        // does not cut it (black-box round 38: counted from the end of the
                        // request before, a head sent in two pieces after a long idle
                        // time was closed unanswered between them; with an idle timeout
                        // shorter than the budget, a head still arriving was cut by it).
                        let since = activity
                            .head_started_at(self.accepted_at)
                            .max(quiet_since);
                        if now.saturating_duration_since(since) >= head {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `step` bytes per call and is not ready every other call.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.ready = !this.ready;
            if !this.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(this.step);
            this.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn counted(step: usize) -> Counted<Trickle> {
        Counted {
            inner: Trickle {
                out: Vec::new(),
                step,
                ready: false,
            },
            activity: Arc::new(Activity::default()),
            limits: Arc::new(Limits::default()),
            on_refused: None,
            replacing: None,
        }
    }

    /// Writes `buf` whole, as hyper does (again after `Pending` or a short write), and
    /// returns what reached the wire.
    async fn write_like_hyper(c: &mut Counted<Trickle>, buf: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        c.write_all(buf).await.expect("write");
        std::mem::take(&mut c.inner.out)
    }

    const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 20:00:21 GMT\r\n\r\n";

    #[tokio::test]
    async fn hypers_bare_answers_get_the_json_body_even_through_short_writes() {
        for step in [1, 7, 4096] {
            let mut c = counted(step);
            let wire = write_like_hyper(&mut c, BARE_400).await;
            let text = String::from_utf8(wire).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");
            assert!(head.contains("\r\nconnection: close\r\n"), "{text:?}");
            assert!(
                head.contains("\r\ndate: Tue, 01 Dec 2026 20:00:21 GMT"),
                "{text:?}"
            );
            assert!(
                head.contains("\r\ncontent-type: application/json"),
                "{text:?}"
            );
            assert!(
                head.ends_with(&format!("content-length: {}", body.len())),
                "{text:?}"
            );
            assert!(!head.contains("content-length: 0"), "{text:?}");
            assert!(
                body.starts_with(r#"{"error":{"code":"invalid_request""#),
                "{body}"
            );
            // The next write on the connection goes through untouched.
            assert_eq!(write_like_hyper(&mut c, b"more").await, b"more");
        }
        for status in ["414 URI Too Long", "431 Request Header Fields Too Large"] {
            let head =
                format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            let (wire, counted_as_refused) =
                bare_answer_replacement(head.as_bytes(), &Limits::default()).unwrap();
            let text = String::from_utf8(wire).unwrap();
            assert!(
                text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{text}"
            );
            assert!(
                text.contains(r#"{"error":{"code":"headers_too_large""#),
                "{text}"
            );
            assert!(counted_as_refused);
        }
    }

    #[test]
    fn a_request_without_a_path_is_refused() {
        let req = Request::builder()
            .method("CONNECT")
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert_eq!(req.uri().path(), "");
        let e = check_head_limits(&req, &Limits::default()).expect("refused");
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        let ok = Request::get("/healthz").body(()).unwrap();
        assert!(check_head_limits(&ok, &Limits::default()).is_none());
    }

    /// An answer hyper writes as HTTP/1.0 has no `connection` field: the replacement says
    /// `close` anyway, once.
    #[test]
    fn a_replacement_always_says_connection_close_once() {
        for head in [
            "HTTP/1.0 400 Bad Request\r\ndate: x\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        ] {
            let (wire, _) = bare_answer_replacement(head.as_bytes(), &Limits::default()).unwrap();
            let text = String::from_utf8(wire).unwrap();
            assert_eq!(text.matches("connection: close\r\n").count(), 1, "{text}");
            assert!(text.starts_with(&head[..9]), "{text}");
        }
    }

    #[tokio::test]
    async fn the_services_own_answers_are_never_rewritten() {
        let kept: [&[u8]; 6] = [
            // A service's error: it has a content type.
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            // A head with a body to come.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            // Other statuses.
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            // Not a whole head, or a head and more.
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        ];
        for head in kept {
            assert!(
                bare_answer_replacement(head, &Limits::default()).is_none(),
                "{head:?}"
            );
            let mut c = counted(5);
            assert_eq!(write_like_hyper(&mut c, head).await, head);
        }
        // Over HTTP/2 nothing is looked at.
        let mut c = counted(4096);
        c.activity.h2.store(true, Ordering::Relaxed);
        assert_eq!(write_like_hyper(&mut c, BARE_400).await, BARE_400);
    }

    #[test]
    fn head_limits() {
        let limits = Limits {
            header_bytes_max: 200,
            headers_max: 3,
            ..Limits::default()
        };
        let ok = Request::builder()
            .uri("/ping")
            .header("a", "1")
            .body(())
            .unwrap();
        assert!(check_head_limits(&ok, &limits).is_none());
        let many = Request::builder()
            .uri("/ping")
            .header("a", "1")
            .header("a", "2")
            .header("b", "3")
            .header("c", "4")
            .body(())
            .unwrap();
        let e = check_head_limits(&many, &limits).unwrap();
        assert_eq!(e.code, ErrorCode::HeadersTooLarge);
        assert_eq!(e.status(), 431);
        let big = Request::builder()
            .uri("/ping")
            .header("a", "x".repeat(200))
            .body(())
            .unwrap();
        assert!(check_head_limits(&big, &limits).is_some());
        assert!(hard_head_bytes(&limits) > 100 * 1024);
        assert!(hard_header_count(&limits) >= 100);
    }

    #[test]
    fn the_oldest_connection_without_a_head_past_its_grace_is_evicted() {
        let gate = ConnectionGate::new(&Limits::default());
        let grace = Duration::from_millis(1_000);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let conn = |accepted_ms: u64| Arc::new(Activity::new(at(accepted_ms)));
        // Accepted in this order: one busy with a request, two silent ones, a young one.
        let busy = conn(0);
        busy.started.store(1, Ordering::Relaxed);
        let silent_a = conn(100);
        let silent_b = conn(200);
        let young = conn(1_500);
        let mut listed: Vec<Option<Listed>> = [&busy, &silent_a, &silent_b, &young]
            .iter()
            .map(|a| Some(gate.register(a)))
            .collect();
        let evicted = |a: &Arc<Activity>| a.evicted.load(Ordering::Acquire);
        // Nobody past the grace yet: the oldest silent one is 1,000 ms old at 1,100.
        assert!(!gate.evict_one(at(1_099), grace));
        assert!(!evicted(&silent_a));
        // A busy connection is never taken, however old; the oldest silent one is.
        assert!(gate.evict_one(at(1_100), grace));
        assert!(evicted(&silent_a) && !evicted(&busy) && !evicted(&silent_b));
        // One at a time: none more until the evicted one has ended.
        assert!(!gate.evict_one(at(1_300), grace));
        listed[1] = None;
        assert!(gate.evict_one(at(1_300), grace));
        assert!(evicted(&silent_b));
        listed[2] = None;
        // A head that arrived and was answered: no head-less one is left, so the
        // longest-idle served connection is next (black-box round 78b), once idle for the
        // grace; a busy one never.
        young.started.store(1, Ordering::Relaxed);
        young.finished.store(1, Ordering::Relaxed);
        young.finished_at_us.store(500_000, Ordering::Release); // idle since 2,000
        assert!(!gate.evict_one(at(2_999), grace));
        assert!(gate.evict_one(at(3_000), grace));
        assert!(evicted(&young) && !evicted(&busy));
        listed[3] = None;
        assert!(!gate.evict_one(at(60_000), grace), "busy: never");
        assert!(!evicted(&busy));
        // An idle connection whose next HTTP/1.1 head is arriving is not idle.
        busy.finished.store(1, Ordering::Relaxed);
        busy.bytes_in.store(10, Ordering::Relaxed);
        assert!(!gate.evict_one(at(60_000), grace));
        busy.bytes_at_finish.store(10, Ordering::Relaxed);
        assert!(gate.evict_one(at(60_000), grace));
        drop(listed);
        assert!(gate.live().is_empty(), "ended connections leave the list");
        let head = |ms| Limits {
            header_read_timeout_ms: ms,
            ..Limits::default()
        };
        assert_eq!(eviction_grace(&head(5_000)), Duration::from_millis(1_250));
        assert_eq!(eviction_grace(&head(2)), Duration::from_millis(1));
    }

    #[test]
    fn per_ip_slots_are_counted_and_released() {
        let limits = Limits {
            connections_per_ip_max: 2,
            connections_per_ip_exempt_loopback: false,
            ..Limits::default()
        };
        let gate = ConnectionGate::new(&limits);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = gate.admit(ip).unwrap();
        let b = gate.admit(ip).unwrap();
        assert!(gate.admit(ip).is_none());
        assert_eq!(gate.refused_per_ip(), 1);
        // The same client through an IPv6 socket.
        assert!(gate.admit("::ffff:10.0.0.1".parse().unwrap()).is_none());
        assert!(gate.admit("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert_eq!(gate.held_by(ip), 1);
        let _c = gate.admit(ip).unwrap();
        drop(b);
        let exempt = ConnectionGate::new(&Limits {
            connections_per_ip_max: 1,
            ..Limits::default()
        });
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let _x = exempt.admit(loopback).unwrap();
        assert!(exempt.admit(loopback).is_some());
        // Loopback through a dual-stack socket is exempt too, and so is IPv6 loopback.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let _y = exempt.admit(mapped).unwrap();
        assert!(exempt.admit(mapped).is_some());
        let v6: IpAddr = "::1".parse().unwrap();
        let _z = exempt.admit(v6).unwrap();
        assert!(exempt.admit(v6).is_some());
        assert_eq!(exempt.refused_per_ip(), 0);
    }
}
