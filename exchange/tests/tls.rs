//! TLS against real sockets, with a local CA made at test time (rcgen): the seller
//! listener over HTTPS (ALPN h2 and http/1.1) and its certificate reload; a bidder served
//! by the SDK over TLS, trusted through `server.buyer_ca_path` (an auction and a post
//! complete) or not (the call fails, counted as an error, never a bid); and the loader
//! refusing `http://` buyer URLs that are not loopback.

// A helper failing is the test failing (clippy's test allowance covers only `#[test]`
// bodies).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bidder_sdk::listener::{server_config_from_pem, TlsAcceptor};
use bidder_sdk::{spawn, Secret, ServeOptions};
use bytes::Bytes;
use common::{metric_value, ScriptedBidder, SellerClient, TestConfig, EVENT_WAIT_MAX};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingpost::app::{self, Running};
use pingpost::clock::Clock;
use proto::seller::{PingStatus, PostStatus};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A CA and a leaf for 127.0.0.1 and localhost, as PEM.
struct LocalCa {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn local_ca(name: &str) -> LocalCa {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("pingpost test CA {name}"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    LocalCa {
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf_cert.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The test configuration `toml` with `server_keys` added to `[server]` and a
/// `[server.tls]` table for `cert` and `key` (a table goes after the plain keys of
/// `[server]`, before `[server.breaker]`).
fn with_server_tls(toml: &str, server_keys: &str, cert: &Path, key: &Path) -> String {
    toml.replacen(
        "[server.breaker]\n",
        &format!(
            "{server_keys}[server.tls]\ncert_path = {:?}\nkey_path = {:?}\n\n[server.breaker]\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
        1,
    )
}

/// A rustls client configuration trusting only `ca_pem` (no ALPN).
fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in bidder_sdk::listener::certificates_from_pem(ca_pem.as_bytes(), "ca").unwrap() {
        roots.add(cert).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTPS client trusting only `ca_pem`; `h2` offers ALPN h2 and http/1.1, otherwise
/// http/1.1 only.
fn https_client(
    ca_pem: &str,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> {
    let config = client_config(ca_pem);
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        b.enable_all_versions().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: &str,
) -> Result<(StatusCode, Version, Bytes), String> {
    let call = async {
        let resp = client
            .request(Request::get(url).body(Empty::new()).unwrap())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (status, version) = (resp.status(), resp.version());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, version, body))
    };
    tokio::time::timeout(EVENT_WAIT_MAX, call)
        .await
        .expect("answer or error in time")
}

/// Starts an exchange from the test configuration with `server_extra` added to
/// `[server]` and `buyers` (TOML) appended; `secrets` are the environment.
async fn start(dir: &Path, server_extra: &str, buyers: &str, secrets: &[(&str, &str)]) -> Running {
    let ledger = dir.join("ledger");
    // A 3 s deadline: a first call's TLS handshake answers within it on a loaded machine.
    let text = TestConfig::new()
        .with(|c| c.auction_deadline_ms = 3_000)
        .toml(&ledger)
        .replacen("[server]\n", &format!("[server]\n{server_extra}\n"), 1)
        + buyers;
    let env: BTreeMap<String, String> = secrets
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = pingpost::config::load_str_with_env(&text, &move |n| env.get(n).cloned())
        .unwrap_or_else(|e| panic!("config does not load:\n{e}\n{text}"));
    app::start(config, Clock::system())
        .await
        .expect("exchange starts")
}

#[tokio::test]
async fn sellers_get_https_with_alpn_h2_and_the_certificate_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let first = local_ca("one");
    let cert = write(dir.path(), "cert.pem", &first.leaf_pem);
    let key = write(dir.path(), "key.pem", &first.leaf_key_pem);
    let ledger = dir.path().join("ledger");
    let text = with_server_tls(&TestConfig::new().toml(&ledger), "", &cert, &key);
    let config = pingpost::config::load_str_with_env(&text, &|_| None)
        .unwrap_or_else(|e| panic!("config does not load:\n{e}\n{text}"));
    assert!(config.server.listener.tls.is_some());
    let ex = app::start(config, Clock::system()).await.unwrap();
    let url = format!("https://localhost:{}/healthz", ex.addr.port());
    let url_ip = format!("https://127.0.0.1:{}/healthz", ex.addr.port());

    let (status, version, body) = get(&https_client(&first.ca_pem, true), &url).await.unwrap();
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
    let (status, version, _) = get(&https_client(&first.ca_pem, false), &url_ip)
        .await
        .unwrap();
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_11));

    // A client that does not trust the CA is refused by its own verification.
    let stranger = local_ca("stranger");
    assert!(get(&https_client(&stranger.ca_pem, true), &url)
        .await
        .is_err());

    // Renew the certificate in place and reload: new connections get the new one.
    let second = local_ca("two");
    write(dir.path(), "cert.pem", &second.leaf_pem);
    write(dir.path(), "key.pem", &second.leaf_key_pem);
    pingpost::tls::reload_tls(&ex.state).unwrap();
    let (status, _, _) = get(&https_client(&second.ca_pem, true), &url)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(get(&https_client(&first.ca_pem, true), &url).await.is_err());

    // A broken file on reload changes nothing.
    write(dir.path(), "key.pem", "not a key");
    let err = pingpost::tls::reload_tls(&ex.state).unwrap_err();
    assert!(err.contains("server.tls"), "{err}");
    let (status, _, _) = get(&https_client(&second.ca_pem, true), &url)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    ex.shutdown().await.unwrap();
}

/// Writes `bytes` on a TLS connection to `port` that offered `alpn`, and returns what the
/// server sent back until it closed (or 2 s passed).
async fn tls_raw(ca_pem: &str, port: u16, alpn: &[u8], bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = client_config(ca_pem);
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(EVENT_WAIT_MAX, tls.read_to_end(&mut out)).await;
    out
}

/// The protocol ALPN chose is the one served (RFC 7301; RFC 9113 3.2): HTTP/1.1 text on
/// an `h2` connection is not answered as HTTP/1.1, and an HTTP/2 preface on an `http/1.1`
/// connection is closed, never served as HTTP/2 (black-box round 16: each was served as
/// the other protocol).
#[tokio::test]
async fn the_protocol_alpn_chose_is_the_one_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("alpn");
    let cert = write(dir.path(), "cert.pem", &ca.leaf_pem);
    let key = write(dir.path(), "key.pem", &ca.leaf_key_pem);
    let text = with_server_tls(
        &TestConfig::new().toml(&dir.path().join("ledger")),
        "",
        &cert,
        &key,
    );
    let config = pingpost::config::load_str_with_env(&text, &|_| None).unwrap();
    let ex = app::start(config, Clock::system()).await.unwrap();
    let port = ex.addr.port();
    let h1 = b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";
    // The same request is served when ALPN chose HTTP/1.1 ...
    let answer = tls_raw(&ca.ca_pem, port, b"http/1.1", h1).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // ... and not when it chose h2: the server speaks HTTP/2 (its SETTINGS frame, then a
    // GOAWAY for the bad preface), never an HTTP/1.1 answer.
    let answer = tls_raw(&ca.ca_pem, port, b"h2", h1).await;
    assert!(
        !answer.starts_with(b"HTTP/1"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        answer.get(3),
        Some(&4),
        "a SETTINGS frame first: {answer:?}"
    );
    // An HTTP/2 preface where ALPN chose HTTP/1.1 is not served as HTTP/2: hyper's
    // HTTP/1.1 side closes the connection on it (no SETTINGS frame).
    let answer = tls_raw(
        &ca.ca_pem,
        port,
        b"http/1.1",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    .await;
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    ex.shutdown().await.unwrap();
}

/// A cleartext HTTP request on a TLS port is answered in cleartext with the contract's
/// `400 invalid_request`, saying to use https://, and closed (before, the connection was
/// closed with nothing sent: "Empty reply from server"). Bytes that do not begin as a
/// request line (a TLS handshake cut short, binary) fail the handshake as before, and
/// TLS clients are served as before, on the seller and the admin listener alike.
#[tokio::test]
async fn a_cleartext_request_on_the_tls_port_is_told_to_use_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("cleartext");
    let cert = write(dir.path(), "cert.pem", &ca.leaf_pem);
    let key = write(dir.path(), "key.pem", &ca.leaf_key_pem);
    let text = with_server_tls(
        &TestConfig::new().toml(&dir.path().join("ledger")),
        "",
        &cert,
        &key,
    );
    let env = TestConfig::new().env();
    let config = pingpost::config::load_str_with_env(&text, &env).unwrap();
    let ex = app::start(config, Clock::system()).await.unwrap();
    let raw = |port: u16, bytes: &'static [u8]| async move {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(EVENT_WAIT_MAX, tcp.read_to_end(&mut out))
            .await
            .expect("the connection is closed")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let admin = ex.admin_addr.expect("an admin listener").port();
    for (port, request) in [
        (
            ex.addr.port(),
            &b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n"[..],
        ),
        (
            ex.addr.port(),
            &b"POST /v1/ping HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
        ),
        (admin, &b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n"[..]),
    ] {
        let answer = raw(port, request).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "invalid_request", "{answer:?}");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(message.contains("https://"), "{message}");
    }
    // To a HEAD: the same answer's status and headers, its length, no body (round 138a).
    let answer = raw(
        ex.addr.port(),
        b"HEAD /v1/ping HTTP/1.1\r\nhost: localhost\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer:?}");
    assert!(answer.contains("\r\ncontent-length: 1"), "{answer:?}");
    // Not a request line: a failed handshake as before (a TLS alert, never HTTP).
    for bytes in [
        &b"\x16\x03\x01\x00\x05hello"[..],
        &b"\x00\x01garbage\r\n\r\n"[..],
        &b"get / HTTP/1.1\r\n\r\n"[..],
    ] {
        let answer = raw(ex.addr.port(), bytes).await;
        assert!(!answer.contains("HTTP/1.1"), "{answer:?}");
    }
    // TLS clients are served as before.
    let url = format!("https://localhost:{}/healthz", ex.addr.port());
    let (status, _, _) = get(&https_client(&ca.ca_pem, true), &url).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    ex.shutdown().await.unwrap();
}

/// `pem` with its `line`-th line (from 0) left out: base64 that still decodes, to DER
/// that does not parse.
fn without_line(pem: &str, line: usize) -> String {
    pem.lines()
        .enumerate()
        .filter(|(i, _)| *i != line)
        .map(|(_, l)| format!("{l}\n"))
        .collect()
}

/// A certificate whose DER does not parse (a PEM line missing) is refused where the
/// configuration is read (`--check-config`, start, reload), naming the file and the
/// certificate; before, a chain with a broken second certificate was taken, and every
/// handshake then failed, the admin listener's too (black-box round 17). The same for a
/// buyer CA bundle, which `--check-config` passed and the start refused.
#[tokio::test]
async fn certificates_that_do_not_parse_are_refused_where_the_configuration_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("broken");
    let broken_chain = format!("{}{}", ca.leaf_pem, without_line(&ca.ca_pem, 3));
    refused_where_read_and_on_reload(
        dir.path(),
        &ca,
        &broken_chain,
        &["certificate 2 of 2 is not a valid X.509 certificate"],
    )
    .await;
    let ledger = dir.path().join("ledger");
    // A buyer CA bundle that does not parse is a configuration error naming its file.
    let bundle = write(dir.path(), "buyer-ca.pem", &without_line(&ca.ca_pem, 3));
    let text = TestConfig::new().toml(&ledger).replacen(
        "[server.breaker]\n",
        &format!(
            "buyer_ca_path = {:?}\n\n[server.breaker]\n",
            bundle.display().to_string()
        ),
        1,
    );
    let err = pingpost::config::load_str_with_env(&text, &|_| None)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("server.buyer_ca_path"), "{err}");
    assert!(err.contains("buyer-ca.pem: certificate 1 of 1"), "{err}");
}

/// A P-521 key (a test key, made for this test): it parses, and rustls does not sign
/// with it.
const P521_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIACpJt8iqParTXttHW\nbrJ4wn05ltbHlDxj5NvJG4pr/N8IitGzVEKHqsCyyeYRd4N89u0ox8fdFmytE6Qx\njQ3ShOKhgYkDgYYABAEdAK9/LqY3+YbsgfHRXm1V7dwZi4tEZLoidU1+lFa+MGDA\nhL7QmVSo7jFeRMnfzXSpi4/1JzrttOUU9jUI2G6EKwCn4TxTrkDQAjzq9zXCAZhU\nx3vnXLL09SMPx4DRgc/igzWPoQ9xvkJZnm5Bh36n0uEsgiPMwhX3on6fyL11wYK4\now==\n-----END PRIVATE KEY-----\n";

/// A key that parses but is not a type or size rustls signs with is told so, not as
/// rustls's "unexpected error: failed to parse private key" (black-box round 146b).
#[test]
fn an_unsupported_key_is_told_as_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("p521");
    let cert = write(dir.path(), "cert.pem", &ca.leaf_pem);
    let key = write(dir.path(), "key.pem", P521_KEY);
    let ledger = dir.path().join("ledger");
    let text = with_server_tls(&TestConfig::new().toml(&ledger), "", &cert, &key);
    let err = pingpost::config::load_str_with_env(&text, &|_| None)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("server.tls.key_path"), "{err}");
    assert!(
        err.contains("key.pem: the key cannot be used (its type or size is not supported): the supported keys are"),
        "{err}"
    );
    assert!(!err.contains("unexpected error"), "{err}");
}

/// A chain over 64 KiB is refused where the configuration is read, and on reload (the
/// running certificate serves on): black-box round 146b: 402 certificates passed
/// `--check-config`, every handshake sent 242 KB, and no OpenSSL client could connect.
#[tokio::test]
async fn a_certificate_chain_clients_cannot_take_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("huge");
    let huge = format!("{}{}", ca.leaf_pem, ca.ca_pem.repeat(200));
    refused_where_read_and_on_reload(
        dir.path(),
        &ca,
        &huge,
        &[
            "cert.pem: the certificate chain is ",
            "in 201 certificate(s), over 65536 bytes",
        ],
    )
    .await;
}

/// `chain` as the seller listener's certificate (with `ca`'s leaf key) is refused where
/// the configuration is read, saying each of `says`; an exchange started with `ca`'s good
/// chain refuses it on reload, saying the same, and serves on.
async fn refused_where_read_and_on_reload(dir: &Path, ca: &LocalCa, chain: &str, says: &[&str]) {
    let cert = write(dir, "cert.pem", chain);
    let key = write(dir, "key.pem", &ca.leaf_key_pem);
    let ledger = dir.join("ledger");
    let text = with_server_tls(&TestConfig::new().toml(&ledger), "", &cert, &key);
    let err = pingpost::config::load_str_with_env(&text, &|_| None)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("server.tls.cert_path"), "{err}");
    for said in says {
        assert!(err.contains(said), "{err}");
    }
    // A good chain starts; the bad one on reload is refused and the good one serves.
    write(dir, "cert.pem", &format!("{}{}", ca.leaf_pem, ca.ca_pem));
    let config = pingpost::config::load_str_with_env(&text, &|_| None).unwrap();
    let ex = app::start(config, Clock::system()).await.unwrap();
    let url = format!("https://localhost:{}/healthz", ex.addr.port());
    let client = https_client(&ca.ca_pem, true);
    assert_eq!(get(&client, &url).await.unwrap().0, StatusCode::OK);
    write(dir, "cert.pem", chain);
    let err = pingpost::tls::reload_tls(&ex.state).unwrap_err();
    for said in says {
        assert!(err.contains(said), "{err}");
    }
    assert_eq!(get(&client, &url).await.unwrap().0, StatusCode::OK);
    ex.shutdown().await.unwrap();
}

/// `--check-config` warns of an expired seller certificate as a start does, on stderr,
/// and still exits 0 (black-box round 17: only the start said it).
#[test]
fn check_config_warns_of_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key_pair = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&key_pair).unwrap();
    let cert = write(dir.path(), "cert.pem", &expired.pem());
    let key = write(dir.path(), "key.pem", &key_pair.serialize_pem());
    let cfg = TestConfig::new();
    let text = with_server_tls(&cfg.toml(&dir.path().join("ledger")), "", &cert, &key);
    let file = write(dir.path(), "pingpost.toml", &text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .envs(cfg.env_vars())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: server.tls.cert_path: the certificate expired at 2021-01-01"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// `--check-config` warns of a bundle CA that has expired, once, on stderr, as a start
/// does (black-box round 69a: a start logged each such warning twice; `--check-config`
/// printed it as a log line).
#[test]
fn check_config_warns_once_of_an_expired_bundle_ca() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "old CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(2020, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let ca = ca.self_signed(&key).unwrap();
    let ca_path = write(dir.path(), "old-ca.pem", &ca.pem());
    let cfg = TestConfig::new();
    let text = cfg.toml(&dir.path().join("ledger")).replacen(
        "[server]\n",
        &format!(
            "[server]\nbuyer_ca_path = {:?}\n",
            ca_path.display().to_string()
        ),
        1,
    );
    let file = write(dir.path(), "pingpost.toml", &text);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .envs(cfg.env_vars())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let warning = "warning: server.buyer_ca_path: ";
    assert_eq!(err.matches(warning).count(), 1, "{err}");
    assert!(
        err.contains("old-ca.pem: certificate 1") && err.contains("2021-01-01"),
        "{err}"
    );
    assert!(!stdout.contains("buyer_ca_path"), "{stdout}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
}

const BUYER_SECRET: &str = "secret-of-tls-buyer";
const BUYER_ENV: &str = "PINGPOST_TEST_SECRET_TLSB";

fn tls_buyer(port: u16) -> String {
    format!(
        r#"
[buyers.tlsb]
name = "TLS Buyer"
ping_url = "https://127.0.0.1:{port}/ping"
post_url = "https://127.0.0.1:{port}/post"
secret_env = "{BUYER_ENV}"
ping_timeout_ms = 2000
post_timeout_ms = 2000
verticals = ["auto_insurance"]
states_include = ["TX"]
"#
    )
}

#[tokio::test]
async fn a_tls_bidder_is_trusted_through_buyer_ca_path_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("buyers");
    let ca_path = write(dir.path(), "buyer-ca.pem", &ca.ca_pem);
    let bidder = ScriptedBidder::bidding(10.0);
    let mut options = ServeOptions::new(Secret::new(BUYER_SECRET).unwrap());
    options.tls = Some(TlsAcceptor::new(
        server_config_from_pem(ca.leaf_pem.as_bytes(), ca.leaf_key_pem.as_bytes(), "leaf").unwrap(),
    ));
    let (addr, handle) = spawn(bidder.clone(), options).await.unwrap();

    // Trusted: an auction and a post over https.
    let trusted_dir = tempfile::tempdir().unwrap();
    let ex = start(
        trusted_dir.path(),
        &format!("buyer_ca_path = {:?}", ca_path.display().to_string()),
        &tls_buyer(addr.port()),
        &[(BUYER_ENV, BUYER_SECRET)],
    )
    .await;
    let seller = SellerClient::new(ex.addr);
    let answer = seller.ping("TX").await;
    assert_eq!(answer.status, PingStatus::Bid, "{answer:?}");
    let sold = seller.post(&answer.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold, "{sold:?}");
    assert_eq!((bidder.pings(), bidder.posts()), (1, 1));
    ex.shutdown().await.unwrap();

    // Not trusted: the call fails verification, is counted as an error, never a bid, and
    // the bidder never sees the ping.
    let untrusted_dir = tempfile::tempdir().unwrap();
    let ex = start(
        untrusted_dir.path(),
        "",
        &tls_buyer(addr.port()),
        &[(BUYER_ENV, BUYER_SECRET)],
    )
    .await;
    let seller = SellerClient::new(ex.addr);
    let answer = seller.ping("TX").await;
    assert_eq!(answer.status, PingStatus::NoBid, "{answer:?}");
    let metrics = String::from_utf8(ex.state.metrics.render()).unwrap();
    let pings = "pingpost_buyer_pings_total";
    assert_eq!(
        metric_value(&metrics, pings, &[("buyer", "tlsb"), ("outcome", "error")]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, pings, &[("buyer", "tlsb"), ("outcome", "bid")]),
        0.0
    );
    assert_eq!(bidder.pings(), 1);
    ex.shutdown().await.unwrap();
    handle.shutdown().await.unwrap();
}

/// A buyer with `http = "2"` whose TLS server does not select `h2` by ALPN is not sent
/// HTTP/2 (RFC 9113, 3.2): the call is an `error` and the bidder gets nothing; with `h2`
/// selected it bids (black-box round 91b: the exchange sent the HTTP/2 preface whatever
/// the server had chosen).
#[tokio::test]
async fn an_http2_buyer_over_tls_is_called_only_when_its_server_selects_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("buyers");
    let ca_path = write(dir.path(), "buyer-ca.pem", &ca.ca_pem);
    for (alpn, bids) in [(Vec::<Vec<u8>>::new(), false), (vec![b"h2".to_vec()], true)] {
        let bidder = ScriptedBidder::bidding(10.0);
        let mut options = ServeOptions::new(Secret::new(BUYER_SECRET).unwrap());
        let mut config =
            server_config_from_pem(ca.leaf_pem.as_bytes(), ca.leaf_key_pem.as_bytes(), "leaf")
                .unwrap();
        config.alpn_protocols = alpn.clone();
        options.tls = Some(TlsAcceptor::new(config));
        let (addr, handle) = spawn(bidder.clone(), options).await.unwrap();
        let run_dir = tempfile::tempdir().unwrap();
        let buyer = tls_buyer(addr.port()).replace(
            "ping_timeout_ms = 2000",
            "ping_timeout_ms = 2000\nhttp = \"2\"",
        );
        let ex = start(
            run_dir.path(),
            &format!("buyer_ca_path = {:?}", ca_path.display().to_string()),
            &buyer,
            &[(BUYER_ENV, BUYER_SECRET)],
        )
        .await;
        let answer = SellerClient::new(ex.addr).ping("TX").await;
        let expected = if bids {
            PingStatus::Bid
        } else {
            PingStatus::NoBid
        };
        assert_eq!(answer.status, expected, "ALPN {alpn:?}: {answer:?}");
        assert_eq!(bidder.pings(), u64::from(bids), "ALPN {alpn:?}");
        ex.shutdown().await.unwrap();
        handle.shutdown().await.unwrap();
    }
}

fn load_with_buyer_urls(ping: &str, post: &str, extra: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let text = TestConfig::new().toml(&dir.path().join("ledger"))
        + &format!(
            r#"
[buyers.acme]
ping_url = "{ping}"
post_url = "{post}"
secret_env = "{BUYER_ENV}"
verticals = ["auto_insurance"]
{extra}
"#
        );
    pingpost::config::load_str_with_env(&text, &|name: &str| {
        // The admin token may not be a buyer's signing secret.
        Some(if name == common::ADMIN_TOKEN_ENV {
            format!("{BUYER_SECRET}-admin")
        } else {
            BUYER_SECRET.to_string()
        })
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[test]
fn plaintext_buyer_urls_are_refused_unless_loopback_or_allowed() {
    let err = load_with_buyer_urls("http://buyer.example/ping", "http://buyer.example/post", "")
        .unwrap_err();
    for key in ["buyers.acme.ping_url", "buyers.acme.post_url"] {
        assert!(
            err.contains(&format!(
                "{key}: is http:// to a host that is not loopback: full leads would travel in cleartext; use https://, or set allow_plaintext = true for this buyer"
            )),
            "{err}"
        );
    }
    // Only the post URL in cleartext: only it is named.
    let err =
        load_with_buyer_urls("https://buyer.example/ping", "http://10.0.0.8/post", "").unwrap_err();
    assert!(err.contains("buyers.acme.post_url: is http://"), "{err}");
    assert!(!err.contains("ping_url"), "{err}");
    // An IPv4-mapped address is judged as the IPv4 address it is.
    let err = load_with_buyer_urls(
        "https://buyer.example/ping",
        "http://[::ffff:10.0.0.8]/post",
        "",
    )
    .unwrap_err();
    assert!(err.contains("buyers.acme.post_url: is http://"), "{err}");
    // Loopback hosts, https, or an explicit allow_plaintext load.
    for (ping, post) in [
        ("http://127.0.0.1:9/ping", "http://127.9.9.9:9/post"),
        ("http://localhost:9/ping", "http://[::1]:9/post"),
        // Black-box round 169b: 127.0.0.1 written IPv4-mapped is loopback too.
        (
            "http://[::ffff:127.0.0.1]:9/ping",
            "http://[::ffff:127.0.0.2]:9/post",
        ),
        ("https://buyer.example/ping", "https://buyer.example/post"),
    ] {
        load_with_buyer_urls(ping, post, "").unwrap_or_else(|e| panic!("{ping} {post}: {e}"));
    }
    load_with_buyer_urls(
        "http://buyer.example/ping",
        "http://buyer.example/post",
        "allow_plaintext = true",
    )
    .unwrap();
}

#[test]
fn bad_tls_files_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = write(dir.path(), "junk.pem", "not PEM");
    let text = TestConfig::new()
        .toml(&dir.path().join("ledger"))
        .replacen(
            "[server.breaker]\n",
            &format!(
                "buyer_ca_path = {junk:?}\n[server.tls]\ncert_path = {junk:?}\nkey_path = \"/nonexistent/key.pem\"\n\n[server.breaker]\n",
                junk = junk.display().to_string()
            ),
            1,
        );
    let err = pingpost::config::load_str_with_env(&text, &|_| None)
        .unwrap_err()
        .to_string();
    // Each file's problem at its own key, both at once.
    assert!(
        err.contains("server.tls.key_path: cannot read /nonexistent/key.pem"),
        "{err}"
    );
    assert!(
        err.contains("server.tls.cert_path: no PEM certificate found"),
        "{err}"
    );
    let text = text.replace("/nonexistent/key.pem", &junk.display().to_string());
    let err = pingpost::config::load_str_with_env(&text, &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.tls.cert_path: no PEM certificate found"),
        "{err}"
    );
    assert!(
        err.contains("server.tls.key_path: no PEM private key"),
        "{err}"
    );
    assert!(
        err.contains("server.buyer_ca_path: no PEM certificate found"),
        "{err}"
    );
}

/// Black-box round 65b: a key of a type the TLS library cannot use was "unexpected
/// error: failed to parse private key", and a chain listed issuer first was told as a
/// key that matches nothing. Each now says what is wrong and what to do.
#[test]
fn a_seller_key_of_an_unsupported_type_and_a_chain_out_of_order_say_so() {
    use bidder_sdk::listener::{server_config_from_files_checked, TlsFile};
    // An ECDSA key on P-521, which the TLS library does not sign with.
    const P521: &str = "-----BEGIN PRIVATE KEY-----
MIHuAgEAMBAGByqGSM49AgEGBSuBBAAjBIHWMIHTAgEBBEIBVdSFylUJkAzYBgXm
18DPkkXopRhTKcYU3UstygNDP8yXmqvgl0b6JpY56iVkXkI/EAAWl/Arb5Yfgo3I
7bohNdqhgYkDgYYABAAB3KxYLi01bnWh1Ii4LMOnnulCHoeV9Hc48U6fRVBu/17K
GKOJvs0IbG0E2RFxXIh0AwqzWlEC6gpCILTvPI6a5wGWgm74inpfcGJ622ZGESbS
1GALv+F7LTco8DAOG2lb8Sulvvl1bP4Fu+/jmcbmLc68UPdZuRfIal9nKgdYd9bq
vQ==
-----END PRIVATE KEY-----
";
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("order");
    let chain = write(
        dir.path(),
        "chain.pem",
        &format!("{}{}", ca.leaf_pem, ca.ca_pem),
    );
    let reversed = write(
        dir.path(),
        "reversed.pem",
        &format!("{}{}", ca.ca_pem, ca.leaf_pem),
    );
    let key = write(dir.path(), "key.pem", &ca.leaf_key_pem);
    let p521 = write(dir.path(), "p521.pem", P521);
    assert!(server_config_from_files_checked(&chain, &key).is_ok());
    let problems = |cert: &Path, key: &Path| {
        server_config_from_files_checked(cert, key)
            .map(|_| ())
            .unwrap_err()
            .into_iter()
            .map(|(file, e)| (file, e.to_string()))
            .collect::<Vec<_>>()
    };
    let p = problems(&reversed, &key);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, TlsFile::Cert, "{p:?}");
    assert!(
        p[0].1.contains("certificate 2's of 2") && p[0].1.contains("first"),
        "{p:?}"
    );
    let p = problems(&chain, &p521);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, TlsFile::Key, "{p:?}");
    assert!(p[0].1.contains("P-256 or P-384"), "{p:?}");
    // A key that is no certificate's of the file is still a mismatch.
    let other = local_ca("other");
    let other_key = write(dir.path(), "other.pem", &other.leaf_key_pem);
    let p = problems(&chain, &other_key);
    assert!(p[0].1.contains("does not match"), "{p:?}");
}

#[tokio::test]
async fn a_stalled_tls_handshake_counts_against_the_head_budget() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("stall");
    let cert = write(dir.path(), "cert.pem", &ca.leaf_pem);
    let key = write(dir.path(), "key.pem", &ca.leaf_key_pem);
    let ledger = dir.path().join("ledger");
    let text = with_server_tls(
        &TestConfig::new()
            .with(|c| c.header_read_timeout_ms = 300)
            .toml(&ledger),
        "connections_max = 2\n",
        &cert,
        &key,
    );
    let config = pingpost::config::load_str_with_env(&text, &|_| None)
        .unwrap_or_else(|e| panic!("config does not load:\n{e}\n{text}"));
    let ex = app::start(config, Clock::system()).await.unwrap();
    // Two clients take both slots: one sends nothing, one the first byte of a
    // ClientHello. A real client makes room by evicting the older once it has held its
    // slot for the grace (a quarter of the budget: in its TLS handshake, with no head) and
    // is served; the other is closed when the budget runs out.
    let t0 = tokio::time::Instant::now();
    let silent = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
    let mut one_byte = tokio::net::TcpStream::connect(ex.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut one_byte, &[0x16])
        .await
        .unwrap();
    let url = format!("https://localhost:{}/healthz", ex.addr.port());
    let (status, _, _) = get(&https_client(&ca.ca_pem, true), &url).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    for (mut s, not_before) in [(silent, 75), (one_byte, 300)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(EVENT_WAIT_MAX, async {
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await {
                if n == 0 {
                    break;
                }
            }
            tokio::time::Instant::now()
        })
        .await
        .expect("closed in time");
        assert!(closed - t0 >= std::time::Duration::from_millis(not_before));
    }
    assert_eq!(ex.state.conn_gate.evicted(), 1);
    ex.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_server_tls_the_admin_listener_speaks_https_too() {
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("admin");
    let cert = write(dir.path(), "cert.pem", &ca.leaf_pem);
    let key = write(dir.path(), "key.pem", &ca.leaf_key_pem);
    let ledger = dir.path().join("ledger");
    let text = with_server_tls(&TestConfig::new().toml(&ledger), "", &cert, &key);
    let env = TestConfig::new().env();
    let config = pingpost::config::load_str_with_env(&text, &env)
        .unwrap_or_else(|e| panic!("config does not load:\n{e}\n{text}"));
    let ex = app::start(config, Clock::system()).await.unwrap();
    let admin = ex.admin_addr.expect("the admin listener started");
    let client = https_client(&ca.ca_pem, true);
    let (status, _, body) = get(
        &client,
        &format!("https://localhost:{}/healthz", admin.port()),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    // The token is checked over TLS as over cleartext.
    let (status, _, _) = get(
        &client,
        &format!("https://localhost:{}/metrics", admin.port()),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Cleartext is not served on the admin port: a plain HTTP request is only told to use
    // https:// (`400`), never answered by a route.
    let mut plain = tokio::net::TcpStream::connect(admin).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(EVENT_WAIT_MAX, plain.read_to_end(&mut buf)).await;
    let buf = String::from_utf8_lossy(&buf);
    assert!(
        buf.starts_with("HTTP/1.1 400 "),
        "cleartext answered: {buf:?}"
    );
    assert!(buf.contains("https://"), "{buf:?}");
    ex.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_configuration_reload_rereads_the_seller_certificate_or_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let first = local_ca("reload-one");
    let cert = write(dir.path(), "cert.pem", &first.leaf_pem);
    let key = write(dir.path(), "key.pem", &first.leaf_key_pem);
    let mut ex = TestConfig::new()
        .start_edited(|toml| with_server_tls(&toml, "", &cert, &key))
        .await;
    let url = format!("https://localhost:{}/healthz", ex.addr.port());
    let generation = ex.state.generation();
    let (status, _, _) = get(&https_client(&first.ca_pem, true), &url).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // New files in place, then the same reload as SIGHUP or POST /admin/reload.
    let second = local_ca("reload-two");
    write(dir.path(), "cert.pem", &second.leaf_pem);
    write(dir.path(), "key.pem", &second.leaf_key_pem);
    let state = ex.state.clone();
    let applied = tokio::task::spawn_blocking(move || state.reload())
        .await
        .unwrap();
    assert_eq!(applied.ok(), Some(generation + 1));
    let (status, _, _) = get(&https_client(&second.ca_pem, true), &url)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(get(&https_client(&first.ca_pem, true), &url).await.is_err());

    // A broken key refuses the whole reload: same generation, same certificate.
    write(dir.path(), "key.pem", "not a key");
    let state = ex.state.clone();
    let refused = tokio::task::spawn_blocking(move || state.reload())
        .await
        .unwrap();
    assert!(refused.is_err());
    assert_eq!(ex.state.generation(), generation + 1);
    let (status, _, _) = get(&https_client(&second.ca_pem, true), &url)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    ex.shutdown().await;
}

/// Over TLS, a later head whose first record has begun to arrive is arriving, though no
/// byte of it can be decrypted yet: it has the head budget from those first bytes, and
/// the idle timeout does not cut it (black-box round 39: a record whose first bytes came
/// just before the idle timeout and the rest just after was cut, unanswered). A plain
/// rustls client on a blocking socket, so the record can be split by hand; the waits are
/// the scenario's idle time and gap, with 500 ms of margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_record_split_across_the_idle_timeout_is_answered() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let ca = local_ca("split");
    let cert = write(dir.path(), "cert.pem", &ca.leaf_pem);
    let key = write(dir.path(), "key.pem", &ca.leaf_key_pem);
    let ledger = dir.path().join("ledger");
    let text = with_server_tls(
        &TestConfig::new()
            .with(|c| c.header_read_timeout_ms = 2_000)
            .toml(&ledger),
        "idle_timeout_ms = 1500\n",
        &cert,
        &key,
    );
    let config = pingpost::config::load_str_with_env(&text, &|_| None)
        .unwrap_or_else(|e| panic!("config does not load:\n{e}\n{text}"));
    let ex = app::start(config, Clock::system()).await.unwrap();
    let (port, ca_pem) = (ex.addr.port(), ca.ca_pem.clone());
    let answers = tokio::task::spawn_blocking(move || {
        let mut config = client_config(&ca_pem);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        // A seller's request (a ping without its fields: `400`), whose connection is
        // kept (a probe's is closed).
        let req = format!(
            "POST /v1/ping HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
            common::SELLER_KEY
        );
        let req = req.as_bytes();
        let mut answers = Vec::new();
        for round in 0..2 {
            if round == 1 {
                // Idle for 1,000 ms (the idle timeout is 1,500), then one record: its
                // first 10 bytes now, the rest 700 ms later, after the idle timeout's end
                // (and within the 2,000 ms head budget).
                std::thread::sleep(std::time::Duration::from_millis(1_000));
                conn.writer().write_all(req).unwrap();
                let mut record = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut record).unwrap();
                }
                sock.write_all(&record[..10]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(700));
                sock.write_all(&record[10..]).unwrap();
            } else {
                let mut tls = rustls::Stream::new(&mut conn, &mut sock);
                tls.write_all(req).unwrap();
            }
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            let mut buf = [0u8; 4096];
            let n = tls.read(&mut buf).unwrap_or(0);
            answers.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        answers
    })
    .await
    .unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("HTTP/1.1 400"), "request {i}: {a:?}");
    }
    ex.shutdown().await.unwrap();
}

/// Black-box round 65b: a pinned self-signed buyer certificate (not a CA) was a trust
/// anchor, so a certificate its key signed for another host was trusted, and a full lead
/// went to that host. A pinned certificate is trusted only as itself; a CA's certificate
/// is an issuer; a certificate a CA issued is refused in the bundle (it can trust nothing).
#[tokio::test]
async fn a_pinned_certificate_is_trusted_as_itself_never_as_an_issuer() {
    let dir = tempfile::tempdir().unwrap();
    // The pinned one: self-signed, not a CA (with and without BasicConstraints), for
    // 127.0.0.1.
    let self_signed = |names: Vec<String>, is_ca: IsCa| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.is_ca = is_ca;
        params
            .distinguished_name
            .push(DnType::CommonName, "pinned buyer");
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    // `IsCa::Ca` with a host name (what OpenSSL's `req -x509` makes, round 66a) is never
    // an issuer; and since WebPKI never takes a CA's certificate as a server's own, it
    // could serve no buyer either: refused at load, saying how to make a buyer's own
    // (round 67a: it was pinned in silence, and every call to its buyer failed).
    let (ca_named, _) = self_signed(
        vec!["127.0.0.1".to_string()],
        IsCa::Ca(BasicConstraints::Unconstrained),
    );
    let e = pingpost::tls::buyer_client_config(Some(ca_named.pem().as_bytes())).unwrap_err();
    assert!(
        e.contains("certificate 1")
            && e.contains("CA:TRUE and names a host")
            && e.contains("CA:FALSE"),
        "{e}"
    );
    for is_ca in [IsCa::ExplicitNoCa, IsCa::NoCa] {
        let (pinned, pinned_key) = self_signed(vec!["127.0.0.1".to_string()], is_ca.clone());
        let ca_path = write(dir.path(), "pinned.pem", &pinned.pem());
        // A certificate the pinned key signs, for the same host.
        let minted_key = KeyPair::generate().unwrap();
        let mut minted = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        minted.distinguished_name.push(DnType::CommonName, "minted");
        let minted = minted.signed_by(&minted_key, &pinned, &pinned_key).unwrap();
        for (served, served_key, trusted) in [
            (pinned.pem(), pinned_key.serialize_pem(), true),
            (minted.pem(), minted_key.serialize_pem(), false),
        ] {
            let case = format!("{is_ca:?} trusted {trusted}");
            ping_a_tls_buyer(&ca_path, &served, &served_key, trusted, &case).await;
        }
    }
    // A CA's certificate is an issuer; a certificate a CA issued is refused, named.
    let ca = local_ca("issuer");
    assert!(pingpost::tls::buyer_client_config(Some(ca.ca_pem.as_bytes())).is_ok());
    let e = pingpost::tls::buyer_client_config(Some(ca.leaf_pem.as_bytes())).unwrap_err();
    assert!(
        e.contains("neither a CA's certificate nor self-signed"),
        "{e}"
    );
    let both = format!("{}{}", ca.ca_pem, ca.leaf_pem);
    let e = pingpost::tls::buyer_client_config(Some(both.as_bytes())).unwrap_err();
    assert!(e.contains("certificate 2 is neither"), "{e}");
    // Self-signed, CA:TRUE, neither keyUsage nor a host name (OpenSSL's plain
    // `req -x509 -subj /CN=host`): a CA's or a buyer's own, nothing says which, so it is
    // refused with how to mark it (round 66c: a buyer's own made so was an issuer).
    let key = KeyPair::generate().unwrap();
    let mut plain = CertificateParams::new(Vec::<String>::new()).unwrap();
    plain.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    plain
        .distinguished_name
        .push(DnType::CommonName, "bids.buyer.example");
    let plain = plain.self_signed(&key).unwrap();
    let e = pingpost::tls::buyer_client_config(Some(plain.pem().as_bytes())).unwrap_err();
    assert!(
        e.contains("neither a keyUsage nor a subjectAltName") && e.contains("keyCertSign"),
        "{e}"
    );
    // And `--check-config` judges the bundle as the start does (round 66a: it said OK).
    let leaf_path = write(dir.path(), "issued.pem", &ca.leaf_pem);
    let text = TestConfig::new().toml(&dir.path().join("ledger")).replacen(
        "[server]\n",
        &format!(
            "[server]\nbuyer_ca_path = {:?}\n",
            leaf_path.display().to_string()
        ),
        1,
    );
    let e = pingpost::config::load_str_with_env(&text, &|_: &str| Some(BUYER_SECRET.to_string()))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("server.buyer_ca_path") && e.contains("neither a CA's certificate"),
        "{e}"
    );
}

/// Black-box round 66a: rustls's verifier keeps none of a bundle CA's extensions, so a
/// sub-CA the CA signed against its own `pathlen:0`, or a CA whose keyUsage does not allow
/// signing certificates, vouched for a buyer, and a full lead went to it. Both are refused
/// now; the same chain under a CA without those limits is trusted.
#[tokio::test]
async fn a_bundle_cas_path_length_and_a_cas_key_usage_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let ca_of = |constraints: BasicConstraints| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(constraints);
        params
            .distinguished_name
            .push(DnType::CommonName, "bundle CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.self_signed(&key).unwrap(), key)
    };
    for (root_limit, sub_usages, trusted) in [
        (
            BasicConstraints::Unconstrained,
            vec![KeyUsagePurpose::KeyCertSign],
            true,
        ),
        (
            BasicConstraints::Constrained(0),
            vec![KeyUsagePurpose::KeyCertSign],
            false,
        ),
        (
            BasicConstraints::Unconstrained,
            vec![KeyUsagePurpose::DigitalSignature],
            false,
        ),
    ] {
        let case = format!("{root_limit:?} {sub_usages:?}");
        let (root, root_key) = ca_of(root_limit);
        let sub_key = KeyPair::generate().unwrap();
        let mut sub = CertificateParams::new(Vec::<String>::new()).unwrap();
        sub.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        sub.distinguished_name.push(DnType::CommonName, "sub CA");
        sub.key_usages = sub_usages;
        let sub = sub.signed_by(&sub_key, &root, &root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "buyer");
        let leaf = leaf.signed_by(&leaf_key, &sub, &sub_key).unwrap();
        let ca_path = write(dir.path(), "bundle.pem", &root.pem());
        let chain = format!("{}{}", leaf.pem(), sub.pem());
        ping_a_tls_buyer(&ca_path, &chain, &leaf_key.serialize_pem(), trusted, &case).await;
    }
}

/// Black-box round 67a: a self-signed certificate no buyer could ever present and be
/// trusted with was pinned without a word (every call to its buyer then failed). Now
/// one without a subjectAltName, one whose own key did not sign it, and one not for
/// servers are refused at load with the reason; one whose dates alone keep it from
/// being trusted is loaded (time may fix it), and its buyer is refused while they do.
#[tokio::test]
async fn a_pin_no_buyer_could_ever_present_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |pem: &str, why: &str| {
        let e = pingpost::tls::buyer_client_config(Some(pem.as_bytes())).unwrap_err();
        assert!(
            e.contains("certificate 1 is self-signed") && e.contains(why),
            "{e}"
        );
    };
    // No subjectAltName: the host in its CN is never matched.
    let key = KeyPair::generate().unwrap();
    let mut no_san = CertificateParams::new(Vec::<String>::new()).unwrap();
    no_san.is_ca = IsCa::ExplicitNoCa;
    no_san
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    refused(
        &no_san.self_signed(&key).unwrap().pem(),
        "no subjectAltName",
    );
    // Its issuer's name is its own, but another key signed it.
    let other_key = KeyPair::generate().unwrap();
    let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    other
        .distinguished_name
        .push(DnType::CommonName, "same name");
    other.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let other = other.self_signed(&other_key).unwrap();
    let mut named_alike = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    named_alike.is_ca = IsCa::ExplicitNoCa;
    named_alike
        .distinguished_name
        .push(DnType::CommonName, "same name");
    let named_alike = named_alike.signed_by(&key, &other, &other_key).unwrap();
    refused(&named_alike.pem(), "its own key did not sign it");
    // For clients only.
    let mut client = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    client.is_ca = IsCa::ExplicitNoCa;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    refused(&client.self_signed(&key).unwrap().pem(), "serverAuth");
    // Expired: loaded, and its buyer refused.
    let mut expired = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    expired.is_ca = IsCa::ExplicitNoCa;
    expired.not_before = rcgen::date_time_ymd(2020, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = expired.self_signed(&key).unwrap();
    let ca_path = write(dir.path(), "expired-pin.pem", &expired.pem());
    ping_a_tls_buyer(
        &ca_path,
        &expired.pem(),
        &key.serialize_pem(),
        false,
        "expired pin",
    )
    .await;
}

/// Black-box round 67a: a certificate file in DER, with a block cut off, with OpenSSL's
/// `TRUSTED CERTIFICATE` or another label were all "no PEM certificate found", and a
/// byte-order mark hid a good one. Each says what it holds and what to do; a BOM is
/// skipped.
#[test]
fn a_certificate_file_that_is_not_pem_says_what_it_holds() {
    let ca = local_ca("files");
    let pem = ca.ca_pem.clone();
    let der = bidder_sdk::listener::certificates_from_pem(pem.as_bytes(), "f").unwrap()[0].to_vec();
    let relabel = |label: &str| {
        pem.replace("BEGIN CERTIFICATE", &format!("BEGIN {label}"))
            .replace("END CERTIFICATE", &format!("END {label}"))
    };
    let err = |bytes: &[u8]| {
        bidder_sdk::listener::certificates_from_pem(bytes, "f.pem")
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    // A cut-off block as the file's first: no certificate at all.
    let cut_first = "-----BEGIN CERTIFICATE-----\nAAAA\n";
    for (bytes, want) in [
        (der.clone(), "the file is DER"),
        (cut_first.as_bytes().to_vec(), "cut off"),
        (relabel("TRUSTED CERTIFICATE").into_bytes(), "-trustout"),
        (
            relabel("X509 CERTIFICATE").into_bytes(),
            "must be `CERTIFICATE`",
        ),
        (b"hello".to_vec(), "-----BEGIN CERTIFICATE-----"),
        (ca.leaf_key_pem.clone().into_bytes(), "holds a private key"),
        (
            relabel("CERTIFICATE REQUEST").into_bytes(),
            "certificate request",
        ),
    ] {
        let e = err(&bytes);
        assert!(
            e.contains("no PEM certificate found in f.pem") && e.contains(want),
            "{want}: {e}"
        );
    }
    // After a whole certificate: that one is named, not "no certificate" (black-box
    // round 154a).
    let cut = format!("{pem}-----BEGIN CERTIFICATE-----\nAAAA\n");
    let e = err(cut.as_bytes());
    assert!(
        e.contains("f.pem: the PEM block after certificate 1 is cut off")
            && !e.contains("no PEM certificate found"),
        "{e}"
    );
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), pem.as_bytes()].concat();
    assert_eq!(
        bidder_sdk::listener::certificates_from_pem(&with_bom, "f")
            .unwrap()
            .len(),
        1
    );
    // A block that decodes but is no certificate: the file's, not a "peer" certificate.
    let junk = format!("{pem}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let e = err(junk.as_bytes());
    assert!(
        e.contains("certificate 2 of 2") && !e.contains("peer"),
        "{e}"
    );
}

/// Black-box round 66a: a bundle CA's certificate that had expired still vouched for the
/// buyers it issued (a trust anchor keeps no dates), where OpenSSL refuses such a chain.
/// A chain through a bundle CA is trusted only while that CA is valid.
#[tokio::test]
async fn a_bundle_ca_vouches_only_while_it_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    for (from, until, trusted) in [
        ((2020, 1, 1), (2021, 1, 1), false),
        ((2090, 1, 1), (2091, 1, 1), false),
        ((2020, 1, 1), (2090, 1, 1), true),
    ] {
        let case = format!("CA valid {from:?} to {until:?}");
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "dated CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        ca.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let ca = ca.self_signed(&key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "buyer");
        let leaf = leaf.signed_by(&leaf_key, &ca, &key).unwrap();
        let ca_path = write(dir.path(), "dated.pem", &ca.pem());
        ping_a_tls_buyer(
            &ca_path,
            &leaf.pem(),
            &leaf_key.serialize_pem(),
            trusted,
            &case,
        )
        .await;
    }
}

/// Starts an exchange trusting the bundle at `ca_path`, and a bidder serving `cert_pem`
/// (a chain, leaf first) with `key_pem` over TLS; pings once and checks that the buyer
/// bid when `trusted`, and otherwise was never reached.
async fn ping_a_tls_buyer(
    ca_path: &Path,
    cert_pem: &str,
    key_pem: &str,
    trusted: bool,
    case: &str,
) {
    let bidder = ScriptedBidder::bidding(10.0);
    let mut options = ServeOptions::new(Secret::new(BUYER_SECRET).unwrap());
    options.tls = Some(TlsAcceptor::new(
        server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes(), "buyer").unwrap(),
    ));
    let (addr, handle) = spawn(bidder.clone(), options).await.unwrap();
    let ledger = tempfile::tempdir().unwrap();
    let ex = start(
        ledger.path(),
        &format!("buyer_ca_path = {:?}", ca_path.display().to_string()),
        &tls_buyer(addr.port()),
        &[(BUYER_ENV, BUYER_SECRET)],
    )
    .await;
    let answer = SellerClient::new(ex.addr).ping("TX").await;
    let want = if trusted {
        PingStatus::Bid
    } else {
        PingStatus::NoBid
    };
    assert_eq!(answer.status, want, "{case}: {answer:?}");
    if !trusted {
        assert_eq!(bidder.pings(), 0, "{case}: the host saw nothing");
    }
    ex.shutdown().await.unwrap();
    handle.shutdown().await.unwrap();
}
