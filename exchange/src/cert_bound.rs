//! Buyer connections that end when the certificates they were trusted on do.
//!
//! A TLS buyer is trusted at the handshake, and a pooled keep-alive connection carries
//! later calls without another: black-box round 68a sent a full lead to a pinned buyer
//! whose certificate had expired since, over a connection opened while it was valid
//! (CONFIGURATION.md promises such a buyer is refused while its dates say so). A TLS
//! connection's trust ends when the earliest certificate its buyer presented stops being
//! valid: at the end of its `notAfter` second (RFC 5280's `notAfter` is inclusive, to the
//! second, and a new handshake is refused from then on: round 69a found connections
//! closed a second before new ones were refused). No request is sent over a connection
//! past that moment: `buyers::H1Pool` never hands one out (a call in flight
//! finishes), and an HTTP/2 connection, pooled by hyper-util, is closed then (its read
//! and write sides fail: a timer, so an idle one is closed too). The next call connects
//! again and is verified again: refused, or trusted on a renewed certificate. Plain
//! `http://` connections are passed through untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use bidder_sdk::connect::ResetOnClose;

/// The TLS-or-plain connector under [`CertBound`].
pub type Inner = hyper_rustls::HttpsConnector<ResetOnClose>;
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The longest a connection's timer is set for: tokio's timer reaches about two years,
/// and a connection that lives this long is simply made again.
const BOUND_MAX: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// [`Inner`], whose TLS connections end with their certificates (module docs);
/// `closes` sets the timer that closes a connection then (HTTP/2: hyper-util's pool
/// cannot be told; HTTP/1.1's pool checks [`Bounded::trusted_until`] itself).
#[derive(Clone, Debug)]
pub struct CertBound {
    pub inner: Inner,
    pub closes: bool,
}

impl tower_service::Service<Uri> for CertBound {
    type Response = Bounded;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Bounded, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower_service::Service::<Uri>::call(&mut self.inner, uri);
        let closes = self.closes;
        Box::pin(async move {
            let io = connecting.await?;
            let trusted_until = match &io {
                MaybeHttpsStream::Https(tls) => tls
                    .inner()
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(chain_ends_ms)
                    .map(|not_after| not_after.saturating_add(1_000)),
                MaybeHttpsStream::Http(_) => None,
            };
            let ends = trusted_until
                .filter(|_| closes)
                .map(|ms| Box::pin(tokio::time::sleep(until(ms, now_ms()))));
            Ok(Bounded {
                io,
                trusted_until,
                ends,
            })
        })
    }
}

/// The earliest `notAfter` (Unix ms) of `chain`, or `None` when none can be read.
pub fn chain_ends_ms(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<i64> {
    chain
        .iter()
        .filter_map(|c| crate::tls::validity_ms(c.as_ref()).map(|(_, not_after)| not_after))
        .min()
}

/// How long from `now` (Unix ms) until `ends` (Unix ms): none when it has passed, at
/// most [`BOUND_MAX`].
pub fn until(ends: i64, now: i64) -> std::time::Duration {
    let ms = u64::try_from(ends.saturating_sub(now)).unwrap_or(0);
    std::time::Duration::from_millis(ms).min(BOUND_MAX)
}

/// Now, in Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A buyer connection, with the timer of its certificates' end (TLS only).
pub struct Bounded {
    io: Stream,
    /// When its certificates stop being valid (Unix ms): the end of the earliest
    /// `notAfter` second.
    trusted_until: Option<i64>,
    ends: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("bounded", &self.ends.is_some())
            .finish()
    }
}

impl Bounded {
    /// When its certificates stop being valid (Unix ms; `None`: plain HTTP, or no date
    /// readable).
    pub fn trusted_until(&self) -> Option<i64> {
        self.trusted_until
    }

    /// Whether its certificates have ended (and, if not, the timer is set to wake the
    /// caller when they do).
    fn ended(&mut self, cx: &mut Context<'_>) -> bool {
        self.ends
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

fn ended_error() -> std::io::Error {
    std::io::Error::other("the buyer's certificate has expired since this connection was made")
}

impl hyper::rt::Read for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if self.ended(cx) {
            return Poll::Ready(Err(ended_error()));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connection for Bounded {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_bounded_by_the_earliest_end_and_never_past_a_year() {
        assert_eq!(
            until(10_000, 4_000),
            std::time::Duration::from_millis(6_000)
        );
        assert_eq!(until(4_000, 10_000), std::time::Duration::ZERO);
        assert_eq!(until(i64::MAX, 0), BOUND_MAX);
        assert_eq!(chain_ends_ms(&[]), None);
    }

    #[test]
    fn a_chain_ends_with_its_earliest_certificate() {
        let cert = |until: (i32, u8, u8)| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
            rustls::pki_types::CertificateDer::from(p.self_signed(&key).unwrap().der().to_vec())
        };
        let chain = [cert((2031, 1, 1)), cert((2030, 6, 1)), cert((2032, 1, 1))];
        // 2030-06-01T00:00:00Z.
        assert_eq!(chain_ends_ms(&chain), Some(1_906_502_400_000));
        let junk = rustls::pki_types::CertificateDer::from(b"not der".to_vec());
        assert_eq!(chain_ends_ms(std::slice::from_ref(&junk)), None);
        assert_eq!(
            chain_ends_ms(&[junk, cert((2030, 6, 1))]),
            Some(1_906_502_400_000)
        );
    }
}
