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
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let certs =
            certificates_from_pem(pem, "server.buyer_ca_path").map_err(|e| e.to_string())?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!("server.buyer_ca_path: a certificate is not a usable CA: {e}")
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
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
            .map_err(|e| format!("server.buyer_ca_path: cannot read {}: {e}", path.display()))?;
            let source: TrustSource = sha2::Sha256::digest(&pem).into();
            Ok((buyer_client_config(Some(&pem))?, source))
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

/// Reads a PEM file's certificates (for tools and tests).
pub fn read_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem =
        bidder_sdk::listener::read_file_bounded(path, bidder_sdk::listener::PEM_FILE_BYTES_MAX)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    certificates_from_pem(&pem, &path.display().to_string()).map_err(|e| e.to_string())
}
