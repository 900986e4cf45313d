//! TLS for the listeners: PEM files read with bounds, the rustls server configuration,
//! and a [`TlsAcceptor`] whose certificate can be swapped for new connections.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

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
    /// A PEM block after `whole` whole certificates does not read: cut off, or its
    /// base64 does not decode (black-box round 154a: told as "no PEM certificate found"
    /// though the first block was a good certificate).
    #[error(
        "{file}: the PEM block after certificate {whole} is cut off (a BEGIN line without \
         its END line) or its base64 does not decode; every block must be whole"
    )]
    CutBlock {
        /// The file (or what names it).
        file: String,
        /// How many whole certificates come before it.
        whole: usize,
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
    /// A server's certificate chain too large for clients to take.
    #[error(
        "{file}: the certificate chain is {bytes} bytes in {count} certificate(s), over {max} \
         bytes: clients refuse a chain that large (OpenSSL's limit is 100 KiB), and every \
         handshake would send it; give the server's certificate and its intermediates only"
    )]
    ChainTooLarge {
        /// The file.
        file: String,
        /// The chain's DER bytes.
        bytes: usize,
        /// Its certificates.
        count: usize,
        /// [`SERVER_CHAIN_BYTES_MAX`].
        max: usize,
    },
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

/// The largest certificate chain a listener serves, in DER bytes: a server's certificate
/// and its intermediates are a few KB; OpenSSL's clients refuse a Certificate message
/// over 100 KiB, and every handshake sends the chain (black-box round 146b: 402
/// certificates, 242 KB sent to each ClientHello of 517 bytes, passed `--check-config`,
/// and no client could connect).
pub const SERVER_CHAIN_BYTES_MAX: usize = 64 * 1024;

/// `certs`, a server's chain from `label`, if it is not over [`SERVER_CHAIN_BYTES_MAX`].
fn server_chain(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    label: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let bytes: usize = certs.iter().map(|c| c.len()).sum();
    if bytes > SERVER_CHAIN_BYTES_MAX {
        return Err(TlsError::ChainTooLarge {
            file: label.to_string(),
            bytes,
            count: certs.len(),
            max: SERVER_CHAIN_BYTES_MAX,
        });
    }
    Ok(certs)
}

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
pub(super) fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
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
    let mut certs = Vec::new();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        match cert {
            Ok(c) => certs.push(c),
            Err(_) if certs.is_empty() => return Err(none(true)),
            Err(_) => {
                return Err(TlsError::CutBlock {
                    file: label.to_string(),
                    whole: certs.len(),
                })
            }
        }
    }
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
pub(super) fn pem_hint(pem: &[u8], parse_failed: bool) -> &'static str {
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
    let certs = server_chain(certificates_from_pem(cert_pem, label)?, label)?;
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

/// One file of a pair read and parsed alone, as [`server_config_from_files_checked`]
/// reads it: for a configuration that names only one of the two, so that the file it
/// names is still checked (black-box round 89a: a missing key hid an unreadable
/// certificate).
pub fn check_one_tls_file(path: &Path, file: TlsFile) -> Result<(), TlsError> {
    let name = path.display().to_string();
    let pem = read_pem(path)?;
    match file {
        TlsFile::Cert => {
            certificates_from_pem(&pem, &name).and_then(|c| server_chain(c, &name).map(|_| ()))
        }
        TlsFile::Key => private_key_from_pem(&pem, &name).map(|_| ()),
    }
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
        .and_then(|certs| server_chain(certs, &cert_name))
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
            // rustls says "unexpected error: failed to parse private key as RSA, ECDSA, or
            // EdDSA" of a key that parses but is not one it signs with (black-box round
            // 146b: an RSA-1024 or P-521 key).
            let why = e.to_string();
            let why = if why.contains("failed to parse private key") {
                "its type or size is not supported".to_string()
            } else {
                why
            };
            return Err(vec![(
                TlsFile::Key,
                TlsError::Rejected(format!(
                    "{key_name}: the key cannot be used ({why}): the supported keys are RSA of 2048 to 8192 bits, ECDSA on P-256 or P-384, and Ed25519"
                )),
            )]);
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
    pub(super) config: Arc<ArcSwap<rustls::ServerConfig>>,
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
