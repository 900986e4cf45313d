//! The outgoing-connection side shared by the exchange's buyer client and the load
//! tester's relay and generator: an HTTP connector whose connections end with a reset.
//!
//! A client that gives up on a request (a buyer that did not answer within its bound)
//! must close the HTTP/1.1 connection it was sent on. A normal close leaves the socket
//! in `TIME_WAIT` for 60 s on the closing side, holding its ephemeral port towards that
//! buyer: a buyer that never answers, pinged 2,000 times a second, piles up 120,000 of
//! them in a minute, past the 28,232 ports Linux has by default, and every `connect` to it
//! then searches the port range (CPU on the auction threads, then failures). With
//! `SO_LINGER` set to 0 the close sends a reset and leaves nothing behind.
//!
//! The cost: a connection closed while the peer still had bytes in flight to us drops
//! them, and the peer sees `ECONNRESET` rather than end-of-file. The clients here close a
//! connection only when it is idle (nothing in flight) or abandoned (its answer is no
//! longer wanted), so nothing wanted is lost.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The error of a failed connect.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP connector whose sockets are set to close with a reset (`SO_LINGER` 0) before
/// they connect, so closing one, at any point, leaves no `TIME_WAIT` socket behind. It
/// resolves host names with `R` (hyper's `GaiResolver` by default), tries the addresses
/// within `connect_timeout` (in turn within a family, the other family 300 ms later
/// beside them), and sets `TCP_NODELAY` and TCP keep-alive (30 s). It connects any
/// scheme's host (the TLS layer above decides).
///
/// Until 2026-12-07 it wrapped hyper-util's `HttpConnector` and set the option once the
/// connect was done: a connect given up midway (black-box round 246a), or one the
/// connector's own timeout closed as the host answered (round 247a), was closed with a
/// FIN first.
#[derive(Debug, Clone)]
pub struct ResetOnClose<R = GaiResolver> {
    resolver: R,
    connect_timeout: Duration,
}

impl<R> ResetOnClose<R> {
    /// Resolves with `resolver`; each connect (all of a name's addresses) is given up
    /// after `connect_timeout`.
    pub fn new(resolver: R, connect_timeout: Duration) -> ResetOnClose<R> {
        ResetOnClose {
            resolver,
            connect_timeout,
        }
    }
}

impl<R> tower_service::Service<Uri> for ResetOnClose<R>
where
    R: tower_service::Service<Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = std::net::SocketAddr>,
    R::Error: Into<ConnectError>,
    R::Future: Send,
{
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    /// The connect runs in a task of its own (needs a tokio runtime): a caller that goes
    /// meanwhile leaves the connect to finish there and its stream to be dropped (with a
    /// reset), rather than the connect cut off at whatever step it had reached.
    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut resolver = self.resolver.clone();
        let timeout = self.connect_timeout;
        let connecting = async move {
            let host = uri.host().ok_or("the URL has no host")?;
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let bare = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            let addrs: Vec<std::net::SocketAddr> = match bare.parse::<std::net::IpAddr>() {
                Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
                Err(_) => {
                    let name: Name = bare.parse().map_err(|e| -> ConnectError { Box::new(e) })?;
                    std::future::poll_fn(|cx| resolver.poll_ready(cx))
                        .await
                        .map_err(Into::into)?;
                    resolver
                        .call(name)
                        .await
                        .map_err(Into::into)?
                        .map(|mut a| {
                            a.set_port(port);
                            a
                        })
                        .collect()
                }
            };
            if addrs.is_empty() {
                return Err(format!("{bare}: no address found").into());
            }
            connect_addrs(addrs, timeout, connect_one)
                .await
                .map(TokioIo::new)
                .map_err(Into::into)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // Nobody waiting: the stream is dropped here, with a reset.
            let _ = tx.send(connecting.await);
        });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the connect task ended without an answer".into()))
        })
    }
}

/// How long the addresses of the first one's family are tried alone before those of the
/// other family are tried beside them (RFC 8305's "Connection Attempt Delay", and
/// hyper-util's `HttpConnector` default).
const FALLBACK_DELAY: Duration = Duration::from_millis(300);

/// Connects to one of `addrs` (not empty), "happy eyeballs" as hyper-util's
/// `HttpConnector` did: the addresses of the first one's family (IPv6 or IPv4) in turn,
/// each within its share of `timeout`; if none has connected after [`FALLBACK_DELAY`], or
/// once they have all failed, the other family's in turn beside them; the first connect
/// wins, and the other attempt is dropped (its socket reset). The whole is given up after
/// `timeout`. When every address fails, the error is the last one's.
async fn connect_addrs<S, F, Fut>(
    addrs: Vec<std::net::SocketAddr>,
    timeout: Duration,
    connect: F,
) -> std::io::Result<S>
where
    F: Fn(std::net::SocketAddr, Duration) -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let first_v6 = addrs.first().is_some_and(std::net::SocketAddr::is_ipv6);
    let (preferred, fallback): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let racing = async {
        let preferred = in_turn(preferred, timeout, &connect);
        if fallback.is_empty() {
            return preferred.await;
        }
        let fallback = in_turn(fallback, timeout, &connect);
        tokio::pin!(preferred, fallback);
        tokio::select! {
            biased;
            done = &mut preferred => return match done {
                Ok(stream) => Ok(stream),
                Err(_) => fallback.await,
            },
            () = tokio::time::sleep(FALLBACK_DELAY) => {}
        }
        tokio::select! {
            done = &mut preferred => match done {
                Ok(stream) => Ok(stream),
                Err(_) => fallback.await,
            },
            done = &mut fallback => match done {
                Ok(stream) => Ok(stream),
                Err(_) => preferred.await,
            },
        }
    };
    tokio::time::timeout(timeout, racing)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "tcp connect error: timed out",
            ))
        })
}

/// Connects to `addrs` one after another, each within its share of `timeout`.
async fn in_turn<S, F, Fut>(
    addrs: Vec<std::net::SocketAddr>,
    timeout: Duration,
    connect: &F,
) -> std::io::Result<S>
where
    F: Fn(std::net::SocketAddr, Duration) -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let each = timeout / u32::try_from(addrs.len()).unwrap_or(u32::MAX).max(1);
    let mut last = None;
    for addr in addrs {
        match connect(addr, each).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}

/// Connects to `addr` within `timeout` on a socket set to close with a reset, with
/// `TCP_NODELAY` and keep-alive, all before the `connect`.
async fn connect_one(addr: std::net::SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A zero linger never blocks the close (tokio's own setter is deprecated for the
    // blocking a nonzero one does).
    let sock = socket2::SockRef::from(&socket);
    sock.set_linger(Some(Duration::ZERO))?;
    sock.set_tcp_nodelay(true)?;
    sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)))?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(std::io::Error::new(
            e.kind(),
            format!("tcp connect error: {e}"),
        )),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "tcp connect error: timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::connect::HttpConnector;
    use tower_service::Service;

    /// The `/proc/net/tcp` lines (Linux) of `TIME_WAIT` sockets from `local` to `remote`
    /// (both on 127.0.0.1). The whole connection is matched, addresses and ports: other
    /// tests and programs leave `TIME_WAIT` sockets on the same ephemeral ports.
    fn time_wait(local: u16, remote: u16) -> Vec<String> {
        // /proc/net/tcp writes an IPv4 address as the hex of its bytes in host order.
        let loopback = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        let local = format!("{loopback}:{local:04X}");
        let remote = format!("{loopback}:{remote:04X}");
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // local address, remote address, state (06 = TIME_WAIT)
                cols.len() > 3 && cols[1] == local && cols[2] == remote && cols[3] == "06"
            })
            .map(str::to_string)
            .collect()
    }

    /// Connects to a fresh listener (through [`ResetOnClose`] when `reset`), closes the
    /// client side first, and returns the client's port with the `TIME_WAIT` lines of
    /// that connection before and after the close.
    async fn connect_and_close(reset: bool) -> (u16, Vec<String>, Vec<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepting = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let io = if reset {
            ResetOnClose::new(GaiResolver::new(), Duration::from_secs(5))
                .call(uri)
                .await
                .unwrap()
        } else {
            HttpConnector::new().call(uri).await.unwrap()
        };
        let local = io.inner().local_addr().unwrap().port();
        let server_side = accepting.await.unwrap().unwrap();
        let before = time_wait(local, addr.port());
        // The client closes first: a normal close leaves its side in TIME_WAIT.
        drop(io);
        // Wait for the server to see the close (end-of-file or reset), so the client's
        // side has finished its part of the exchange.
        let mut buf = [0u8; 1];
        let _ = server_side.readable().await;
        let _ = server_side.try_read(&mut buf);
        drop(server_side);
        // On loopback the last FIN is usually handled within the close, but on a loaded
        // machine the kernel may do it a little later: look again until it shows, for at
        // most 5 s (a bound on the wait, not a timing check: a failure means no
        // TIME_WAIT ever came).
        let mut after = time_wait(local, addr.port());
        let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
        while after.is_empty() && !reset && tokio::time::Instant::now() < give_up {
            tokio::task::yield_now().await;
            std::thread::yield_now();
            after = time_wait(local, addr.port());
        }
        (local, before, after)
    }

    #[tokio::test]
    async fn a_reset_on_close_connection_leaves_no_time_wait() {
        let (port, before, after) = connect_and_close(true).await;
        // None left by this connection (an earlier one with the same addresses and
        // ports, if the kernel kept one, may still be there: never more than before).
        assert!(
            after.len() <= before.len(),
            "port {port}: a reset leaves no TIME_WAIT: {before:?} then {after:?}"
        );
        let sock_linger = {
            // The option is what the connector set (read back from a fresh connection).
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let uri: Uri = format!("http://{addr}/").parse().unwrap();
            let io = ResetOnClose::new(GaiResolver::new(), Duration::from_secs(5))
                .call(uri)
                .await
                .unwrap();
            socket2::SockRef::from(io.inner()).linger().unwrap()
        };
        assert_eq!(sock_linger, Some(Duration::ZERO));
    }

    /// Black-box round 246a: a connect given up (its future dropped) after the kernel had
    /// finished it was closed with a FIN, before the reset was set. The connect is
    /// finished apart and the unwanted stream reset: the server sees a reset, not an
    /// end-of-file.
    #[tokio::test]
    async fn a_connect_given_up_midway_is_closed_with_a_reset() {
        for _ in 0..5 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let uri: Uri = format!("http://{addr}/").parse().unwrap();
            let mut connecting =
                ResetOnClose::new(GaiResolver::new(), Duration::from_secs(5)).call(uri);
            // Polled once (the connect begun), then given up.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(connecting.as_mut().poll(&mut cx).is_pending());
            drop(connecting);
            let (mut server_side, _) =
                tokio::time::timeout(Duration::from_secs(10), listener.accept())
                    .await
                    .expect("the connect was finished")
                    .unwrap();
            let mut buf = [0u8; 1];
            let ended = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::read(&mut server_side, &mut buf),
            )
            .await
            .expect("the client closed it");
            assert!(
                matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "a reset, not {ended:?}"
            );
        }
    }

    /// A host name is resolved and its addresses tried in turn (`localhost` may give
    /// `::1`, where nothing listens here, before `127.0.0.1`); a host whose accept queue
    /// is full (its SYNs dropped) is given up at the timeout, said as such; a refused
    /// connect says so. The socket was set to reset before its connect, so a connect
    /// given up at any step leaves nothing in `TIME_WAIT` (round 247a: one the host
    /// answered as the timeout ran out was closed with a FIN).
    #[tokio::test]
    async fn names_addresses_in_turn_timeouts_and_refusals() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let uri: Uri = format!("http://localhost:{port}/").parse().unwrap();
        let io = ResetOnClose::new(GaiResolver::new(), Duration::from_secs(5))
            .call(uri)
            .await
            .expect("localhost reaches 127.0.0.1");
        let sock = socket2::SockRef::from(io.inner());
        assert_eq!(sock.linger().unwrap(), Some(Duration::ZERO));
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());

        // A backlog of one, never accepted, filled: the next SYN is dropped.
        let full =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        full.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        full.listen(1).unwrap();
        let addr = full.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        let mut timed_out = None;
        for _ in 0..8 {
            let uri: Uri = format!("http://{addr}/").parse().unwrap();
            match ResetOnClose::new(GaiResolver::new(), Duration::from_millis(300))
                .call(uri)
                .await
            {
                Ok(io) => held.push(io),
                Err(e) => {
                    timed_out = Some(e.to_string());
                    break;
                }
            }
        }
        assert_eq!(
            timed_out.as_deref(),
            Some("tcp connect error: timed out"),
            "{} connects taken by a backlog of one",
            held.len()
        );

        drop(full);
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        let refused = ResetOnClose::new(GaiResolver::new(), Duration::from_secs(5))
            .call(uri)
            .await
            .expect_err("nothing listens");
        assert!(
            refused
                .to_string()
                .starts_with("tcp connect error: Connection refused"),
            "{refused}"
        );
    }

    /// What a fake connect to an address does: connects, or fails (refused), after a
    /// time; `None`: never answers (its SYNs dropped).
    type Plan = Vec<(std::net::SocketAddr, Option<(u64, bool)>)>;

    /// Runs [`connect_addrs`] over `plan`'s addresses (in its order) with fake connects
    /// on paused time; returns the address connected to or the error, when (ms from the
    /// start), and each attempt as (address, started at ms).
    async fn eyeballs(
        plan: Plan,
        timeout_ms: u64,
    ) -> (
        Result<std::net::SocketAddr, String>,
        u64,
        Vec<(String, u64)>,
    ) {
        let t0 = tokio::time::Instant::now();
        let ms = move || u64::try_from((tokio::time::Instant::now() - t0).as_millis()).unwrap();
        let attempts = std::sync::Mutex::new(Vec::new());
        let addrs = plan.iter().map(|(a, _)| *a).collect();
        let connect = |addr: std::net::SocketAddr, share: Duration| {
            attempts.lock().unwrap().push((addr.to_string(), ms()));
            let outcome = plan.iter().find(|(a, _)| *a == addr).unwrap().1;
            async move {
                let answer = async {
                    match outcome {
                        Some((after, ok)) => {
                            tokio::time::sleep(Duration::from_millis(after)).await;
                            if ok {
                                Ok(addr)
                            } else {
                                Err(std::io::Error::other(format!("{addr} refused")))
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::time::timeout(share, answer)
                    .await
                    .unwrap_or_else(|_| Err(std::io::Error::other(format!("{addr} timed out"))))
            }
        };
        let got = connect_addrs(addrs, Duration::from_millis(timeout_ms), connect).await;
        let attempts = attempts.into_inner().unwrap();
        (got.map_err(|e| e.to_string()), ms(), attempts)
    }

    /// The connector's "happy eyeballs" (hyper-util's `HttpConnector` did the same): the
    /// first address's family in turn, the other family 300 ms later (or at once when the
    /// first family has failed) beside it; the first connect wins; the whole within the
    /// timeout. Paused time: the figures are exact.
    #[tokio::test(start_paused = true)]
    async fn happy_eyeballs_between_the_families_in_turn_within_one() {
        let v6: std::net::SocketAddr = "[::1]:80".parse().unwrap();
        let v6b: std::net::SocketAddr = "[::2]:80".parse().unwrap();
        let v4: std::net::SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v4b: std::net::SocketAddr = "127.0.0.2:80".parse().unwrap();
        let at = |a: std::net::SocketAddr, t: u64| (a.to_string(), t);
        // The first family black-holed: the other is tried 300 ms later and wins.
        let (got, done, attempts) = eyeballs(vec![(v6, None), (v4, Some((10, true)))], 1_000).await;
        assert_eq!((got, done), (Ok(v4), 310));
        assert_eq!(attempts, vec![at(v6, 0), at(v4, 300)]);
        // The first family refused at once: the other is tried then, not 300 ms later.
        let (got, done, attempts) =
            eyeballs(vec![(v6, Some((5, false))), (v4, Some((10, true)))], 1_000).await;
        assert_eq!((got, done), (Ok(v4), 15));
        assert_eq!(attempts, vec![at(v6, 0), at(v4, 5)]);
        // Both families racing: the first to connect wins, the first family's here.
        let (got, done, _) = eyeballs(
            vec![(v6, Some((400, true))), (v4, Some((200, true)))],
            1_000,
        )
        .await;
        assert_eq!((got, done), (Ok(v6), 400));
        // Within a family, in turn, each within its share of the timeout (500 ms of
        // 1 s for two): the second v6 address is tried when the first is given up, while
        // IPv4 (from 300 ms) connects first.
        let (got, done, attempts) = eyeballs(
            vec![(v6, None), (v6b, Some((10, true))), (v4, Some((300, true)))],
            1_000,
        )
        .await;
        assert_eq!((got, done), (Ok(v6b), 510));
        assert_eq!(attempts, vec![at(v6, 0), at(v4, 300), at(v6b, 500)]);
        // One family: in turn, a refusal moving on at once.
        let (got, done, attempts) =
            eyeballs(vec![(v4, Some((1, false))), (v4b, Some((10, true)))], 1_000).await;
        assert_eq!((got, done), (Ok(v4b), 11));
        assert_eq!(attempts, vec![at(v4, 0), at(v4b, 1)]);
        // Every address black-holed: given up at the timeout, not past it.
        let (got, done, _) = eyeballs(vec![(v6, None), (v4, None)], 1_000).await;
        assert_eq!(
            (got, done),
            (Err("tcp connect error: timed out".to_string()), 1_000)
        );
        // Every address refused: the last failure is said.
        let (got, done, _) =
            eyeballs(vec![(v6, Some((5, false))), (v4, Some((7, false)))], 1_000).await;
        assert_eq!((got, done), (Err(format!("{v4} refused")), 12));
    }

    #[tokio::test]
    async fn a_normal_close_leaves_time_wait_which_is_what_the_reset_avoids() {
        let (port, before, after) = connect_and_close(false).await;
        assert!(
            !after.is_empty(),
            "port {port}: the closing side keeps TIME_WAIT: {before:?} then {after:?}"
        );
    }
}
