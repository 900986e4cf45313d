//! Buyer connections that end when the certificates they were trusted on do.
//!
//! A TLS buyer is trusted at the handshake, and a pooled keep-alive connection carries
//! later calls without another: black-box round 68a sent a full lead to a pinned buyer
//! whose certificate had expired since, over a connection opened while it was valid
//! (CONFIGURATION.md promises such a buyer is refused while its dates say so). The
//! connector here records, for each TLS connection, when its trust ends: when the
//! earliest certificate its buyer presented stops being valid, at the end of its
//! `notAfter` second (RFC 5280's `notAfter` is inclusive, to the second, and a new
//! handshake is refused from then on: round 69a found connections closed a second before
//! new ones were refused). The buyer pools (`buyers::H1Pool`, `buyers::H2Pool`) never
//! hand out a connection past that moment; calls in flight on it finish (round 70a: an
//! HTTP/2 connection closed under its calls lost posts the buyer had received), and the
//! next call connects again and is verified again: refused, or trusted on a renewed
//! certificate. Plain `http://` connections have no end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use bidder_sdk::connect::ResetOnClose;

/// The TLS-or-plain connector under [`CertBound`].
pub type Inner = hyper_rustls::HttpsConnector<ResetOnClose>;
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// [`Inner`], whose TLS connections carry when their trust ends (module docs).
#[derive(Clone, Debug)]
pub struct CertBound(pub Inner);

impl tower_service::Service<Uri> for CertBound {
    type Response = Bounded;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Bounded, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = tower_service::Service::<Uri>::call(&mut self.0, uri);
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
            Ok(Bounded { io, trusted_until })
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

/// Now, in Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A buyer connection, with when its trust ends (TLS only).
pub struct Bounded {
    io: Stream,
    /// When its certificates stop being valid (Unix ms): the end of the earliest
    /// `notAfter` second.
    trusted_until: Option<i64>,
}

impl std::fmt::Debug for Bounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounded")
            .field("trusted_until", &self.trusted_until)
            .finish()
    }
}

impl Bounded {
    /// When its certificates stop being valid (Unix ms; `None`: plain HTTP, or no date
    /// readable).
    pub fn trusted_until(&self) -> Option<i64> {
        self.trusted_until
    }
}

impl hyper::rt::Read for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
