//! Buyer connections that end when the certificates they were trusted on do.
//!
//! A TLS buyer is trusted at the handshake, and a pooled keep-alive connection carries
//! later calls without another: black-box round 68a sent a full lead to a pinned buyer
//! whose certificate had expired since, over a connection opened while it was valid
//! (CONFIGURATION.md promises such a buyer is refused while its dates say so). Each TLS
//! connection's trust end is read from it when it is made ([`trusted_until`]): when the
//! earliest certificate its buyer presented stops being valid, at the end of its
//! `notAfter` second (RFC 5280's `notAfter` is inclusive, to the second, and a new
//! handshake is refused from then on: round 69a found connections closed a second before
//! new ones were refused). The buyer pools (`buyers::H1Pool`, `buyers::H2Pool`) never
//! hand out a connection past that moment; calls in flight on it finish (round 70a: an
//! HTTP/2 connection closed under its calls lost posts the buyer had received), and the
//! next call connects again and is verified again: refused, or trusted on a renewed
//! certificate. Plain `http://` connections have no end.

use hyper_rustls::MaybeHttpsStream;

/// When the connection `io` stops being trusted (Unix ms): the end of the `notAfter`
/// second of the earliest certificate its buyer presented. `None` for plain HTTP, or
/// when no date can be read.
pub fn trusted_until<T>(io: &MaybeHttpsStream<T>) -> Option<i64> {
    match io {
        MaybeHttpsStream::Https(tls) => tls
            .inner()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(chain_ends_ms)
            .map(|not_after| not_after.saturating_add(1_000)),
        MaybeHttpsStream::Http(_) => None,
    }
}

/// Whether HTTP/2 may be spoken on `io`: over TLS only when the server selected `h2` by
/// ALPN (RFC 9113, 3.2); over plain TCP by prior knowledge, as configured.
pub fn h2_negotiated<T>(io: &MaybeHttpsStream<T>) -> bool {
    match io {
        MaybeHttpsStream::Https(tls) => {
            tls.inner().get_ref().1.alpn_protocol() == Some(b"h2".as_slice())
        }
        MaybeHttpsStream::Http(_) => true,
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

/// Whether a connection whose trust ends at `trusted_until` (Unix ms; `None`: never,
/// plain HTTP) may still carry a request: what both buyer pools ask before handing one
/// out. The clock is read only for a TLS connection.
pub fn still_trusted(trusted_until: Option<i64>) -> bool {
    trusted_until.is_none_or(|until| now_ms() < until)
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
