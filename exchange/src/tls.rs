//! TLS for the exchange: the seller listener's certificate (`[server.tls]`, served through
//! the shared accept loop with ALPN `h2`/`http/1.1`) and the trust store for calls to
//! buyers (WebPKI roots, plus `server.buyer_ca_path` when set; verification is never
//! switched off).
//!
//! Both live in [`AppState`] behind swappable pointers, so [`reload_tls`] can replace
//! them at run time: new seller connections get the new certificate, established ones keep
//! theirs; new buyer calls use the new trust store (a fresh connection pool).

use std::path::Path;
use std::sync::Arc;

use bidder_sdk::listener::{certificates_from_pem, TlsAcceptor};

use crate::config::ListenerSettings;
use crate::state::AppState;

/// A rustls client configuration trusting the WebPKI roots and every certificate in
/// `extra_ca_pem` (ring provider, TLS 1.2 and 1.3, no ALPN: the buyer connector sets it).
pub fn buyer_client_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    buyer_client_config_from(extra_ca_pem, "server.buyer_ca_path").map(logged)
}

/// [`buyer_client_config`], naming the bundle `label` (its file) in errors: what the
/// configuration's loader checks, so `--check-config` judges a bundle as the start does.
/// Its warnings (a CA or pin whose dates make it untrusted now) are returned, not logged:
/// the start and a reload log them once, when they build the trust store they use
/// (black-box round 69a: every warning was logged twice at a start).
pub fn buyer_client_config_labelled(
    extra_ca_pem: Option<&[u8]>,
    label: &str,
) -> Result<(rustls::ClientConfig, Vec<String>), String> {
    buyer_client_config_from(extra_ca_pem, label)
}

/// Logs a built trust store's warnings; returns the store.
fn logged((config, warnings): (rustls::ClientConfig, Vec<String>)) -> rustls::ClientConfig {
    for w in warnings {
        tracing::warn!("{w}");
    }
    config
}

/// [`buyer_client_config`], naming the bundle `label` (its file) in errors.
///
/// A CA's certificate in the bundle (BasicConstraints `cA`, no server name of its own,
/// and a keyUsage, if any, that allows signing certificates) is a trust anchor, as the
/// WebPKI roots are. A self-signed certificate that is not such a CA's, a server's own
/// (it names a host: OpenSSL's `req -x509` marks those `CA:TRUE` too, black-box round
/// 66a), is **pinned**: trusted only as the very certificate a buyer presents (its name
/// and dates checked), never as an issuer (round 65b: a pinned self-signed certificate
/// was a trust anchor, so anything its key signed was trusted for any host, and a full
/// lead went to such a host). Any other certificate is refused: it can trust nothing.
fn buyer_client_config_from(
    extra_ca_pem: Option<&[u8]>,
    label: &str,
) -> Result<(rustls::ClientConfig, Vec<String>), String> {
    let mut warnings = Vec::new();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut pinned = Vec::new();
    let mut trust_anchors: Vec<rustls::pki_types::TrustAnchor<'static>> =
        webpki_roots::TLS_SERVER_ROOTS.to_vec();
    let mut bundle_cas: Vec<BundleCa> = Vec::new();
    if let Some(pem) = extra_ca_pem {
        let certs =
            certificates_from_pem(pem, label).map_err(|e| format!("server.buyer_ca_path: {e}"))?;
        for (i, cert) in certs.into_iter().enumerate() {
            let n = i + 1;
            let info = x509::info(cert.as_ref()).ok_or_else(|| {
                format!("server.buyer_ca_path: {label}: certificate {n} is not a readable X.509 certificate")
            })?;
            match info.kind {
                x509::Kind::Ca => {
                    let anchor = webpki::anchor_from_trusted_cert(&cert)
                        .map_err(|e| {
                            format!("server.buyer_ca_path: {label}: certificate {n} is not a usable CA: {e}")
                        })?
                        .to_owned();
                    let validity = validity_ms(cert.as_ref());
                    if let Some(problem) = validity.and_then(|v| anchor_date_problem(v, crate::cert_bound::now_ms()))
                    {
                        warnings.push(format!("server.buyer_ca_path: {label}: certificate {n} {problem}"));
                    }
                    bundle_cas.push(BundleCa {
                        spki: anchor.subject_public_key_info.to_vec(),
                        path_len: info.path_len,
                        validity,
                    });
                    trust_anchors.push(anchor);
                    roots.add(cert).map_err(|e| {
                        format!("server.buyer_ca_path: {label}: certificate {n} is not a usable CA: {e}")
                    })?
                }
                x509::Kind::SelfSigned => {
                    if let Some(problem) = pin_problem(&cert, info.alt_names, &provider)
                        .map_err(|e| format!("server.buyer_ca_path: {label}: certificate {n} {e}"))?
                    {
                        warnings.push(format!("server.buyer_ca_path: {label}: certificate {n} {problem}"));
                    }
                    let mut own = rustls::RootCertStore::empty();
                    own.add(cert.clone()).map_err(|e| {
                        format!("server.buyer_ca_path: {label}: certificate {n} cannot be pinned: {e}")
                    })?;
                    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                        Arc::new(own),
                        provider.clone(),
                    )
                    .build()
                    .map_err(|e| format!("server.buyer_ca_path: {label}: certificate {n}: {e}"))?;
                    pinned.push((cert, verifier));
                }
                x509::Kind::Issued => {
                    return Err(format!(
                        "server.buyer_ca_path: {label}: certificate {n} is neither a CA's certificate nor self-signed (a certificate a CA issued to a server), so it can trust nothing: put its CA's certificate there instead"
                    ))
                }
                x509::Kind::NotSigning => {
                    return Err(format!(
                        "server.buyer_ca_path: {label}: certificate {n} is marked CA:TRUE but may not sign certificates (its keyUsage lacks keyCertSign, or it names a host) and is not self-signed, so it can trust nothing: put the CA that signs buyers' certificates there instead"
                    ))
                }
                x509::Kind::Ambiguous => {
                    return Err(format!(
                        "server.buyer_ca_path: {label}: certificate {n} is self-signed and marked CA:TRUE with neither a keyUsage nor a subjectAltName, as OpenSSL's plain `req -x509` makes it for a CA and for a server alike, so nothing says which it is: a CA's needs keyUsage keyCertSign (-addext keyUsage=critical,keyCertSign,cRLSign), a buyer's own (pinned) needs CA:FALSE and its host in a subjectAltName (docs/CONFIGURATION.md)"
                    ))
                }
            }
        }
    }
    let anchors = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("server.buyer_ca_path: {e}"))?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = Arc::new(PinningVerifier {
        anchors,
        pinned,
        trust_anchors,
        bundle_cas,
        algs: provider.signature_verification_algorithms.all,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // No session resumption: a resumed handshake presents no certificate and verifies
    // none, so a buyer trusted once stayed trusted on new connections after its
    // certificate expired (found checking black-box round 68a's fix). Every new buyer
    // connection is verified in full; pooled connections make them rare.
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config, warnings))
}

/// Whether a buyer could ever present the self-signed `cert` and be trusted: checked as
/// a call checks it (against itself alone, for a server), with no name. `Err` when it
/// never could (black-box round 67a: such a pin was taken without a word, and every call
/// to its buyer failed): its own key did not sign it, it is a CA's (marked `CA:TRUE` and
/// naming a host), it is not for servers, or it has no subjectAltName; `Ok(Some)` when
/// only its dates keep it from being trusted now (a warning: time may fix it).
fn pin_problem(
    cert: &rustls::pki_types::CertificateDer<'static>,
    alt_names: bool,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Option<String>, String> {
    let refuse = |why: &str| {
        Err(format!(
            "is self-signed, so it would be pinned (trusted only as the certificate a buyer presents), but {why}"
        ))
    };
    let (Ok(anchor), Ok(ee)) = (
        webpki::anchor_from_trusted_cert(cert),
        webpki::EndEntityCert::try_from(cert),
    ) else {
        return refuse("it does not parse as a certificate");
    };
    let anchors = [anchor];
    let checked = ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &anchors,
        &[],
        rustls::pki_types::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    match checked.map(|_| ()) {
        Ok(()) if !alt_names => refuse(
            "it has no subjectAltName, the only names a buyer's URL is matched against (a host in the subject's CN is not read): make it with -addext subjectAltName=DNS:host (or IP:address)",
        ),
        Ok(()) => Ok(None),
        Err(webpki::Error::CertExpired { not_after, .. }) => Ok(Some(format!(
            "is a pinned certificate that expired at {}: its buyer is refused until it presents a renewed one (and the bundle holds it)",
            crate::core::record::rfc3339(unix_ms(not_after))
        ))),
        Err(webpki::Error::CertNotValidYet { not_before, .. }) => Ok(Some(format!(
            "is a pinned certificate not valid before {}: its buyer is refused until then",
            crate::core::record::rfc3339(unix_ms(not_before))
        ))),
        Err(webpki::Error::CaUsedAsEndEntity) => refuse(
            "it is marked CA:TRUE and names a host, and a buyer cannot present a CA's certificate as its own: make a buyer's own with CA:FALSE (-addext basicConstraints=critical,CA:FALSE), or a CA's without a subjectAltName",
        ),
        Err(webpki::Error::RequiredEkuNotFoundContext(_)) => {
            refuse("its extendedKeyUsage does not allow serverAuth")
        }
        Err(
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey,
        ) => refuse(
            "its own key did not sign it (its issuer's name is its subject's, but another key signed it): put the certificate of the CA that signed it there instead",
        ),
        Err(e) => refuse(&format!("a buyer presenting it would be refused: {e}")),
    }
}

/// A webpki time in Unix ms.
fn unix_ms(t: rustls::pki_types::UnixTime) -> i64 {
    i64::try_from(t.as_secs().saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A CA certificate of `server.buyer_ca_path`, by what a [`webpki`] trust anchor leaves
/// out of it.
#[derive(Debug)]
struct BundleCa {
    /// Its subject public key info, which names its anchor.
    spki: Vec<u8>,
    /// Its pathLenConstraint: how many CAs may stand below it.
    path_len: Option<usize>,
    /// Its validity (Unix ms), when readable: a chain through it is refused outside it
    /// (black-box round 66a: an expired bundle CA still vouched, as OpenSSL would not).
    validity: Option<(i64, i64)>,
}

/// What a bundle CA's dates say at `now` (Unix ms), if they keep it from vouching.
fn anchor_date_problem((not_before, not_after): (i64, i64), now: i64) -> Option<String> {
    let at = crate::core::record::rfc3339;
    if now > not_after {
        Some(format!(
            "is a CA's certificate that expired at {}: no buyer certificate it issued is trusted; renew it and reload",
            at(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "is a CA's certificate not valid before {}: no buyer certificate it issued is trusted until then",
            at(not_before)
        ))
    } else {
        None
    }
}

/// Buyer certificates: the pinned ones by exact match (checked against themselves alone,
/// so their name and dates still count), everything else by the CA anchors, and then by
/// what rustls's verifier leaves out (black-box round 66a): a bundle CA's
/// pathLenConstraint (an anchor keeps none of its extensions there) and every CA's
/// keyUsage in the chain (`keyCertSign`, when it has a keyUsage).
#[derive(Debug)]
struct PinningVerifier {
    anchors: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<(
        rustls::pki_types::CertificateDer<'static>,
        Arc<rustls::client::WebPkiServerVerifier>,
    )>,
    /// The same anchors as `anchors`, for [`webpki`] called directly.
    trust_anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    /// What a bundle CA's anchor does not keep: its pathLenConstraint and its dates.
    bundle_cas: Vec<BundleCa>,
    algs: &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm],
}

impl PinningVerifier {
    /// Whether a chain to a trust anchor exists in which every CA certificate may sign
    /// certificates, no bundle CA has more CAs below it than its pathLenConstraint
    /// allows, and the bundle CA is valid at `now`.
    fn constraints_hold(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<(), rustls::Error> {
        let refused = |why: &str| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(std::io::Error::other(why.to_string())),
            )))
        };
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| refused("the certificate does not parse"))?;
        let now_ms = i64::try_from(now.as_secs().saturating_mul(1000)).unwrap_or(i64::MAX);
        let check = |path: &webpki::VerifiedPath<'_>| -> Result<(), webpki::Error> {
            let mut cas = 0usize;
            for c in path.intermediate_certificates() {
                cas += 1;
                let signs = x509::info(c.der().as_ref()).is_some_and(|i| i.may_sign_certificates);
                if !signs {
                    return Err(webpki::Error::EndEntityUsedAsCa);
                }
            }
            let spki = path.anchor().subject_public_key_info.as_ref();
            let Some(ca) = self.bundle_cas.iter().find(|c| c.spki.as_slice() == spki) else {
                return Ok(());
            };
            if ca.path_len.is_some_and(|limit| cas > limit) {
                return Err(webpki::Error::PathLenConstraintViolated);
            }
            let at = |ms: i64| {
                rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(
                    u64::try_from(ms).unwrap_or(0),
                ))
            };
            match ca.validity {
                Some((_, not_after)) if now_ms > not_after => Err(webpki::Error::CertExpired {
                    time: now,
                    not_after: at(not_after),
                }),
                Some((not_before, _)) if now_ms < not_before => {
                    Err(webpki::Error::CertNotValidYet {
                        time: now,
                        not_before: at(not_before),
                    })
                }
                _ => Ok(()),
            }
        };
        ee.verify_for_usage(
            self.algs,
            &self.trust_anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            Some(&check),
        )
        .map(|_| ())
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => {
                refused("the CA in server.buyer_ca_path that issued it has expired")
            }
            webpki::Error::CertNotValidYet { .. } => {
                refused("the CA in server.buyer_ca_path that issued it is not valid yet")
            }
            webpki::Error::EndEntityUsedAsCa => refused(
                "a certificate in the chain signed another but may not sign certificates (it is not a CA's, or its keyUsage lacks keyCertSign)",
            ),
            webpki::Error::PathLenConstraintViolated => refused(
                "the chain has more CAs below a bundle CA than its pathLenConstraint allows",
            ),
            e => refused(&format!("the chain breaks a CA's constraints: {e}")),
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .pinned
            .iter()
            .find(|(cert, _)| cert.as_ref() == end_entity.as_ref())
        {
            // The pinned certificate itself, with no issuer but itself.
            Some((_, own)) => {
                own.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            }
            None => {
                let verified = self.anchors.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                )?;
                self.constraints_hold(end_entity, intermediates, now)?;
                Ok(verified)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.anchors.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.anchors.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.anchors.supported_verify_schemes()
    }
}

/// Just enough X.509 (DER) to tell a CA's certificate from a self-signed one and from
/// one a CA issued: BasicConstraints `cA`, and the issuer against the subject.
mod x509 {
    /// What a certificate of the buyer CA bundle is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// BasicConstraints with `cA` true, no subjectAltName, and a keyUsage (if any)
        /// with `keyCertSign`: an issuer.
        Ca,
        /// Issued by itself and not an issuer (a server's own certificate): pinned.
        SelfSigned,
        /// Not an issuer, issued by another.
        Issued,
        /// A CA's certificate issued by another whose keyUsage forbids signing
        /// certificates (or that names a host): it can vouch for nothing.
        NotSigning,
        /// Self-signed, `CA:TRUE`, with neither a keyUsage nor a host name: a CA's or a
        /// server's, nothing says which.
        Ambiguous,
    }

    /// One DER element: its tag, its content, and the rest of the input after it.
    pub(super) fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The elements of a constructed element's content.
    fn elements(mut content: &[u8]) -> Option<Vec<(u8, &[u8])>> {
        let mut out = Vec::new();
        while !content.is_empty() {
            let (tag, value, rest) = element(content)?;
            out.push((tag, value));
            content = rest;
        }
        Some(out)
    }

    const SEQUENCE: u8 = 0x30;
    const BOOLEAN: u8 = 0x01;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    /// `[0]` (the version) and `[3]` (the extensions) of a TBSCertificate.
    const VERSION: u8 = 0xa0;
    const EXTENSIONS: u8 = 0xa3;
    /// id-ce-basicConstraints, 2.5.29.19.
    const BASIC_CONSTRAINTS: [u8; 3] = [0x55, 0x1d, 0x13];
    /// id-ce-subjectAltName, 2.5.29.17.
    const SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1d, 0x11];
    /// id-ce-keyUsage, 2.5.29.15.
    const KEY_USAGE: [u8; 3] = [0x55, 0x1d, 0x0f];
    const BIT_STRING: u8 = 0x03;
    const INTEGER: u8 = 0x02;

    /// What the bundle needs to know of a certificate.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Info {
        pub kind: Kind,
        /// BasicConstraints' pathLenConstraint, on a CA's certificate.
        pub path_len: Option<usize>,
        /// No keyUsage, or one with `keyCertSign`.
        pub may_sign_certificates: bool,
        /// It has a subjectAltName (the only names a buyer's URL is matched against).
        pub alt_names: bool,
    }

    /// [`Info`] of the certificate `der`, or `None` when it is not DER this reads.
    pub fn info(der: &[u8]) -> Option<Info> {
        let (tag, cert, _) = element(der)?;
        if tag != SEQUENCE {
            return None;
        }
        let (tag, tbs, _) = element(cert)?;
        if tag != SEQUENCE {
            return None;
        }
        let fields = elements(tbs)?;
        // [version], serial, signature, issuer, validity, subject, key, ..., [3] ext.
        let skip = usize::from(fields.first()?.0 == VERSION);
        let issuer = fields.get(skip + 2)?;
        let subject = fields.get(skip + 4)?;
        let mut ca = false;
        let mut path_len = None;
        let mut names_a_host = false;
        let mut may_sign_certificates = true;
        let mut key_usage_given = false;
        if let Some((_, exts)) = fields.iter().find(|(t, _)| *t == EXTENSIONS) {
            let (tag, list, _) = element(exts)?;
            if tag != SEQUENCE {
                return None;
            }
            for (tag, ext) in elements(list)? {
                if tag != SEQUENCE {
                    return None;
                }
                let parts = elements(ext)?;
                let Some(&(OID, oid)) = parts.first() else {
                    return None;
                };
                let (tag, value) = *parts.last()?;
                if tag != OCTET_STRING {
                    return None;
                }
                if oid == BASIC_CONSTRAINTS {
                    let (tag, bc, _) = element(value)?;
                    if tag != SEQUENCE {
                        return None;
                    }
                    let items = elements(bc)?;
                    ca = matches!(items.first(), Some((BOOLEAN, v)) if v.first().is_some_and(|&b| b != 0));
                    path_len = items
                        .iter()
                        .find(|(t, _)| *t == INTEGER)
                        .filter(|(_, v)| !v.is_empty() && v.len() <= 4)
                        .map(|(_, v)| v.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)));
                } else if oid == SUBJECT_ALT_NAME {
                    names_a_host = true;
                } else if oid == KEY_USAGE {
                    // BIT STRING: unused-bits count, then the bits; keyCertSign is bit 5
                    // of the first byte (0x04).
                    let (tag, bits, _) = element(value)?;
                    if tag != BIT_STRING {
                        return None;
                    }
                    may_sign_certificates = bits.get(1).is_some_and(|&b| b & 0x04 != 0);
                    key_usage_given = true;
                }
            }
        }
        let self_signed = issuer == subject;
        // A self-signed `CA:TRUE` certificate with neither a keyUsage nor a host name is
        // what OpenSSL's plain `req -x509` makes, for a CA as for a server (black-box round
        // 66c: a buyer's own made so was an issuer): told by nothing, it is refused, and
        // the message says how to mark it either way.
        if ca && self_signed && !names_a_host && !key_usage_given {
            return Some(Info {
                kind: Kind::Ambiguous,
                path_len,
                may_sign_certificates,
                alt_names: names_a_host,
            });
        }
        let issuer_ca = ca && !names_a_host && may_sign_certificates;
        Some(Info {
            kind: if issuer_ca {
                Kind::Ca
            } else if self_signed {
                Kind::SelfSigned
            } else if ca {
                Kind::NotSigning
            } else {
                Kind::Issued
            },
            path_len,
            may_sign_certificates,
            alt_names: names_a_host,
        })
    }
}

/// What a start would warn of in a configuration's `server.buyer_ca_path` (a CA or a pin
/// whose dates make it untrusted now), for `--check-config`; nothing when there is no
/// bundle or it cannot be read (the configuration's check says so).
pub fn buyer_ca_warnings(settings: &ListenerSettings) -> Vec<String> {
    let Some(path) = &settings.buyer_ca_path else {
        return Vec::new();
    };
    bidder_sdk::listener::read_file_bounded(path, bidder_sdk::listener::PEM_FILE_BYTES_MAX)
        .ok()
        .and_then(|pem| {
            buyer_client_config_from(Some(&pem), &crate::cli_out::Shown(path).to_string()).ok()
        })
        .map(|(_, warnings)| warnings)
        .unwrap_or_default()
}

/// [`buyer_client_config`] for a configuration's `server.buyer_ca_path`.
pub fn buyer_client_config_for(
    settings: &ListenerSettings,
) -> Result<rustls::ClientConfig, String> {
    buyer_trust_for(settings).map(|(config, _)| config)
}

/// What the buyer trust store was built from: the SHA-256 of the CA bundle's bytes, or
/// zeros for the WebPKI roots alone. A reload that finds the same keeps the buyer client
/// (and its open connections to buyers).
pub type TrustSource = [u8; 32];

/// [`buyer_client_config_for`] with its [`TrustSource`].
pub fn buyer_trust_for(
    settings: &ListenerSettings,
) -> Result<(rustls::ClientConfig, TrustSource), String> {
    use sha2::Digest;
    match &settings.buyer_ca_path {
        None => Ok((buyer_client_config(None)?, [0; 32])),
        Some(path) => {
            let pem = bidder_sdk::listener::read_file_bounded(
                path,
                bidder_sdk::listener::PEM_FILE_BYTES_MAX,
            )
            .map_err(|e| {
                format!(
                    "server.buyer_ca_path: cannot read {}: {e}",
                    crate::cli_out::Shown(path)
                )
            })?;
            let source: TrustSource = sha2::Sha256::digest(&pem).into();
            let label = crate::cli_out::Shown(path).to_string();
            Ok((
                logged(buyer_client_config_from(Some(&pem), &label)?),
                source,
            ))
        }
    }
}

/// The seller listener's rustls configuration from `[server.tls]`'s files, or every
/// problem of both files, each at its key (`server.tls.cert_path: …`,
/// `server.tls.key_path: …`; a key that is not the certificate's at `key_path`).
pub fn seller_server_config(
    cert_path: &Path,
    key_path: &Path,
) -> Result<rustls::ServerConfig, Vec<String>> {
    use bidder_sdk::listener::TlsFile;
    bidder_sdk::listener::server_config_from_files_checked(cert_path, key_path).map_err(
        |problems| {
            problems
                .into_iter()
                .map(|(file, e)| match file {
                    TlsFile::Cert => format!("server.tls.cert_path: {e}"),
                    TlsFile::Key => format!("server.tls.key_path: {e}"),
                })
                .collect()
        },
    )
}

/// The seller listener's acceptor for `[server.tls]`, or `None` for cleartext.
pub fn seller_acceptor(settings: &ListenerSettings) -> Result<Option<TlsAcceptor>, String> {
    settings
        .tls
        .as_ref()
        .map(|files| {
            seller_server_config(&files.cert_path, &files.key_path)
                .map(TlsAcceptor::new)
                .map_err(|problems| problems.join("; "))
        })
        .transpose()
}

/// Loads the TLS parts of `state` from its current configuration (at start).
pub fn install(state: &mut AppState) -> Result<(), String> {
    let rt = state.runtime.load_full();
    let settings = &rt.config.server.listener;
    state.tls = seller_acceptor(settings)?;
    warn_of_expiry(settings, state.clock.now_ms());
    let (config, source) = buyer_trust_for(settings)?;
    state.buyer_tls.store(Arc::new(config));
    *state.buyer_trust.lock() = source;
    Ok(())
}

/// Re-reads the seller certificate and key (`[server.tls]`) and the
/// buyer CA bundle (`server.buyer_ca_path`) named by the configuration `state` runs on
/// now, and swaps them in: new seller connections get the new certificate, new buyer calls
/// the new trust store. A configuration reload (`POST /admin/reload`, SIGHUP) does this
/// for the new configuration (see [`TlsReload`]); call it directly when the certificate
/// files were renewed in place.
///
/// On any error nothing changes and the error says which file. TLS cannot be switched on
/// or off without a restart: when the exchange started in cleartext and the configuration
/// now has `[server.tls]` (or the reverse) this is an error, and nothing changes.
pub fn reload_tls(state: &AppState) -> Result<(), String> {
    let rt = state.runtime.load_full();
    TlsReload::prepare(state, &rt.config.server.listener)
        .map_err(|problems| problems.join("; "))?
        .apply(state);
    Ok(())
}

/// The TLS material of a configuration, read and checked but not yet in use: a reload
/// prepares it before anything changes and applies it with the new runtime.
#[derive(Debug)]
pub struct TlsReload {
    buyer: rustls::ClientConfig,
    buyer_source: TrustSource,
    seller: Option<rustls::ServerConfig>,
}

impl TlsReload {
    /// Reads `settings`' certificate, key and buyer CA files; every problem at once, each
    /// naming its key and file (the certificate's and the key's at
    /// `server.tls.cert_path` and `server.tls.key_path`).
    pub fn prepare(
        state: &AppState,
        settings: &ListenerSettings,
    ) -> Result<TlsReload, Vec<String>> {
        let mut problems = Vec::new();
        let buyer = buyer_trust_for(settings).map_err(|e| problems.push(e));
        let seller = match (&state.tls, &settings.tls) {
            (Some(_), Some(files)) => seller_server_config(&files.cert_path, &files.key_path)
                .map(Some)
                .map_err(|mut more| problems.append(&mut more)),
            (None, None) => Ok(None),
            (Some(_), None) => {
                problems.push("server.tls was removed: switching TLS off needs a restart".into());
                Err(())
            }
            (None, Some(_)) => {
                problems.push("server.tls was added: switching TLS on needs a restart".into());
                Err(())
            }
        };
        match (buyer, seller) {
            (Ok((buyer, buyer_source)), Ok(seller)) => Ok(TlsReload {
                buyer,
                buyer_source,
                seller,
            }),
            _ => Err(problems),
        }
    }

    /// Swaps the prepared material in (new connections and new buyer calls use it).
    pub fn apply(self, state: &AppState) {
        if let (Some(acceptor), Some(config)) = (&state.tls, self.seller) {
            acceptor.replace(config);
            warn_of_expiry(
                &state.runtime.load().config.server.listener,
                state.clock.now_ms(),
            );
        }
        // The same trust store as before: keep the buyer client, whose pooled connections
        // every worker reuses (a new one would reconnect to every buyer at once).
        let mut source = state.buyer_trust.lock();
        if *source != self.buyer_source {
            state.buyer_tls.store(Arc::new(self.buyer));
            *source = self.buyer_source;
        }
    }
}

/// How close to its end a seller certificate is warned about at a start or reload.
pub const CERT_EXPIRY_WARN_MS: i64 = 14 * 24 * 3_600_000;

/// Logs a warning when the seller certificate (`[server.tls]`, its first certificate)
/// is not valid at `now` (expired, or not yet valid) or ends within
/// [`CERT_EXPIRY_WARN_MS`]: clients refuse an expired certificate, so the exchange
/// serves it but says so, at every start and reload (black-box round 10: an expired one
/// was taken without a word).
pub fn warn_of_expiry(settings: &ListenerSettings, now: crate::core::UnixMs) {
    if let Some((path, problem)) = expiry_warning(settings, now) {
        tracing::warn!(cert = %crate::cli_out::Shown(path), "server.tls.cert_path: {problem}");
    }
}

/// The seller certificate's file and what [`expiry_problem`] finds in it at `now`, if
/// anything (also for `--check-config`, which prints it as a warning).
pub fn expiry_warning(
    settings: &ListenerSettings,
    now: crate::core::UnixMs,
) -> Option<(&Path, String)> {
    let files = settings.tls.as_ref()?;
    let validity = read_certificates(&files.cert_path)
        .ok()
        .and_then(|certs| certs.first().and_then(|c| validity_ms(c.as_ref())))?;
    expiry_problem(validity, now).map(|p| (files.cert_path.as_path(), p))
}

/// What is wrong with a certificate valid from `not_before` to `not_after` (Unix ms) at
/// `now`, if anything.
pub fn expiry_problem(
    (not_before, not_after): (i64, i64),
    now: crate::core::UnixMs,
) -> Option<String> {
    let at = crate::core::record::rfc3339;
    if now > not_after {
        Some(format!(
            "the certificate expired at {}: clients will refuse it; renew it and reload",
            at(not_after)
        ))
    } else if now < not_before {
        Some(format!(
            "the certificate is not valid before {}: clients will refuse it until then",
            at(not_before)
        ))
    } else if not_after - now < CERT_EXPIRY_WARN_MS {
        // In minutes under an hour (black-box round 146b: "in 0 hour(s)").
        let left = not_after - now;
        let within = if left < 3_600_000 {
            format!("{} minute(s)", left / 60_000)
        } else {
            format!("{} hour(s)", left / 3_600_000)
        };
        Some(format!(
            "the certificate expires at {} (in {within}); renew it and reload",
            at(not_after),
        ))
    } else {
        None
    }
}

/// The validity of a DER X.509 certificate, `(notBefore, notAfter)` in Unix ms, read by
/// walking the DER: Certificate, TBSCertificate, then past the version, serial number,
/// signature algorithm and issuer to the validity's two times (UTCTime or
/// GeneralizedTime). `None` when the bytes are not shaped so.
pub fn validity_ms(der: &[u8]) -> Option<(i64, i64)> {
    use x509::element;
    fn time_ms(tag: u8, content: &[u8]) -> Option<i64> {
        let text = std::str::from_utf8(content).ok()?;
        let full = match tag {
            // UTCTime, YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280 4.1.2.5.1).
            0x17 => {
                let yy: u32 = text.get(..2)?.parse().ok()?;
                format!("{}{text}", if yy >= 50 { "19" } else { "20" })
            }
            0x18 => text.to_string(),
            _ => return None,
        };
        let t =
            chrono::NaiveDateTime::parse_from_str(full.strip_suffix('Z')?, "%Y%m%d%H%M%S").ok()?;
        Some(t.and_utc().timestamp_millis())
    }
    let (0x30, cert, _) = element(der)? else {
        return None;
    };
    let (0x30, tbs, _) = element(cert)? else {
        return None;
    };
    let (tag, _, after) = element(tbs)?;
    let mut rest = if tag == 0xA0 { after } else { tbs };
    // Serial number, signature algorithm, issuer.
    for want in [0x02, 0x30, 0x30] {
        let (tag, _, after) = element(rest)?;
        if tag != want {
            return None;
        }
        rest = after;
    }
    let (0x30, validity, _) = element(rest)? else {
        return None;
    };
    let (t1, c1, after) = element(validity)?;
    let (t2, c2, _) = element(after)?;
    Some((time_ms(t1, c1)?, time_ms(t2, c2)?))
}

/// Reads a PEM file's certificates (for tools and tests).
pub fn read_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem =
        bidder_sdk::listener::read_file_bounded(path, bidder_sdk::listener::PEM_FILE_BYTES_MAX)
            .map_err(|e| format!("cannot read {}: {e}", crate::cli_out::Shown(path)))?;
    certificates_from_pem(&pem, &crate::cli_out::Shown(path).to_string()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod validity_tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn ms(y: i32, m: u32, d: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    #[test]
    fn the_validity_of_a_certificate_is_read_from_its_der() {
        // UTCTime (before 2050) and GeneralizedTime (from 2050) both.
        for (nb, na) in [((2020, 1, 2), (2021, 3, 4)), ((2024, 5, 6), (2051, 7, 8))] {
            let der = cert(nb, na);
            assert_eq!(
                validity_ms(&der),
                Some((
                    ms(nb.0, u32::from(nb.1), u32::from(nb.2)),
                    ms(na.0, u32::from(na.1), u32::from(na.2))
                ))
            );
        }
        // Not a certificate: nothing, never a panic.
        let der = cert((2020, 1, 2), (2021, 3, 4));
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            let _ = validity_ms(&der[..cut]);
        }
        assert_eq!(validity_ms(b"not der"), None);
        assert_eq!(validity_ms(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn an_expired_or_ending_certificate_is_a_problem() {
        let v = (ms(2026, 1, 1), ms(2026, 12, 1));
        assert!(expiry_problem(v, ms(2026, 6, 1)).is_none());
        assert!(expiry_problem(v, ms(2026, 12, 2))
            .unwrap()
            .contains("expired at 2026-12-01T00:00:00.000Z"));
        assert!(expiry_problem(v, ms(2025, 12, 31))
            .unwrap()
            .contains("not valid before"));
        assert!(expiry_problem(v, ms(2026, 11, 25))
            .unwrap()
            .contains("expires at 2026-12-01T00:00:00.000Z (in 144 hour(s))"));
        assert!(expiry_problem(v, ms(2026, 12, 1) - 45_000)
            .unwrap()
            .contains("(in 0 minute(s))"));
        assert!(expiry_problem(v, ms(2026, 12, 1) - 59 * 60_000)
            .unwrap()
            .contains("(in 59 minute(s))"));
    }
}
