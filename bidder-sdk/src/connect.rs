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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The error of a failed connect.
pub type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// An [`HttpConnector`] whose connections are closed with a reset (`SO_LINGER` 0), so
/// closing one leaves no `TIME_WAIT` socket behind. Everything else is the inner
/// connector's (its timeouts, `TCP_NODELAY`, keep-alive, its resolver of host names:
/// `R`, hyper's `GaiResolver` by default).
#[derive(Debug, Clone)]
pub struct ResetOnClose<R = GaiResolver>(pub HttpConnector<R>);

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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.0, cx).map_err(Into::into)
    }

    /// The connect runs in a task of its own (needs a tokio runtime), which sets the
    /// option as soon as it is done even if the caller has gone meanwhile (its call
    /// given up: black-box round 246a, 1,024 buyers a ping on a busy host left thousands
    /// of sockets in `TIME_WAIT`, connects the kernel had finished while their futures
    /// were dropped, closed with a FIN before the option was set); the stream nobody
    /// takes is then closed with a reset.
    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower_service::Service::<Uri>::call(&mut self.0, uri);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let done = match connecting.await {
                Ok(io) => reset_on_close(io.inner()).map(|()| io).map_err(Into::into),
                Err(e) => Err(e.into()),
            };
            // Nobody waiting: the stream is dropped here, with the reset set.
            let _ = tx.send(done);
        });
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the connect task ended without an answer".into()))
        })
    }
}

/// Sets `SO_LINGER` to 0 on `stream`: closing it sends a reset and leaves no `TIME_WAIT`.
pub fn reset_on_close(stream: &TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
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
            ResetOnClose(HttpConnector::new()).call(uri).await.unwrap()
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
            let io = ResetOnClose(HttpConnector::new()).call(uri).await.unwrap();
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
            let mut connecting = ResetOnClose(HttpConnector::new()).call(uri);
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

    #[tokio::test]
    async fn a_normal_close_leaves_time_wait_which_is_what_the_reset_avoids() {
        let (port, before, after) = connect_and_close(false).await;
        assert!(
            !after.is_empty(),
            "port {port}: the closing side keeps TIME_WAIT: {before:?} then {after:?}"
        );
    }
}
