//! `[server]`, including the listener keys (per-IP limit, timers, header limits,
//! `[server.tls]`, `buyer_ca_path`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::reader::{Problems, Section, EDGE_SPACE};
use super::{
    BODY_BYTES_MAX_FLOOR, BODY_BYTES_MAX_LIMIT, BREAKER_FAILURES_LIMIT, COUNT_LIMIT, DAY_MS,
    FAN_OUT_LIMIT, HOUR_MS, POST_ATTEMPTS_LIMIT, SERVER_WAIT_MS_LIMIT, TABLE_ENTRIES_LIMIT,
    TIMEOUT_MS_LIMIT,
};
use crate::config::{defaults, BreakerConfig, ListenerSettings, ServerConfig, TlsFiles};

pub(super) fn default_listen() -> SocketAddr {
    defaults::LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
}

pub(super) fn read_server(mut s: Section<'_>, p: &mut Problems) -> ServerConfig {
    let listen = match s.opt("listen") {
        None => default_listen(),
        Some((path, v)) => match v.as_str().map(str::parse::<SocketAddr>) {
            Some(Ok(addr)) => addr,
            _ => {
                p.at(&path, "must be a socket address such as \"127.0.0.1:8080\" (an IP address and a port: a host name such as localhost is not looked up)");
                default_listen()
            }
        },
    };
    let body_bytes_max = s.usize_or(
        p,
        "body_bytes_max",
        BODY_BYTES_MAX_FLOOR,
        BODY_BYTES_MAX_LIMIT,
        defaults::BODY_BYTES_MAX,
    );
    let header_read_timeout_ms = s.u64_or(
        p,
        "header_read_timeout_ms",
        1,
        SERVER_WAIT_MS_LIMIT,
        defaults::HEADER_READ_TIMEOUT_MS,
    );
    let requests_in_flight_max = s.usize_or(
        p,
        "requests_in_flight_max",
        1,
        COUNT_LIMIT,
        defaults::REQUESTS_IN_FLIGHT_MAX,
    );
    let connections_max = s.usize_or(
        p,
        "connections_max",
        1,
        COUNT_LIMIT,
        defaults::CONNECTIONS_MAX,
    );
    let worker_threads = s.usize_or(p, "worker_threads", 0, 256, defaults::WORKER_THREADS);
    let shutdown_grace_ms = s.u64_or(
        p,
        "shutdown_grace_ms",
        0,
        SERVER_WAIT_MS_LIMIT,
        defaults::SHUTDOWN_GRACE_MS,
    );
    let quote_ttl_ms = s.u64_or(p, "quote_ttl_ms", 1, HOUR_MS, defaults::QUOTE_TTL_MS);
    let quote_min_ms = s.u64_or(p, "quote_min_ms", 0, HOUR_MS, defaults::QUOTE_MIN_MS);
    let dedup_keys_max = s.usize_or(
        p,
        "dedup_keys_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::DEDUP_KEYS_MAX,
    );
    let quotes_open_max = s.usize_or(
        p,
        "quotes_open_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::QUOTES_OPEN_MAX,
    );
    // CONTRACT.md: an idempotency key is remembered at least 24 h.
    let idempotency_ttl_ms = s.u64_or(
        p,
        "idempotency_ttl_ms",
        DAY_MS,
        30 * DAY_MS,
        defaults::IDEMPOTENCY_TTL_MS,
    );
    let idempotency_keys_max = s.usize_or(
        p,
        "idempotency_keys_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::IDEMPOTENCY_KEYS_MAX,
    );
    let idempotency_keys_per_seller_max = s.usize_or(
        p,
        "idempotency_keys_per_seller_max",
        1,
        TABLE_ENTRIES_LIMIT,
        defaults::IDEMPOTENCY_KEYS_PER_SELLER_MAX,
    );
    let ledger_path = match s.str_opt(p, "ledger_path") {
        None => PathBuf::from(defaults::LEDGER_PATH),
        Some("") => {
            p.at(&s.path_of("ledger_path"), "must not be empty");
            PathBuf::from(defaults::LEDGER_PATH)
        }
        Some(path) if path.trim() != path => {
            p.at(&s.path_of("ledger_path"), EDGE_SPACE);
            PathBuf::from(defaults::LEDGER_PATH)
        }
        Some(path) => PathBuf::from(path),
    };
    let ledger_segment_bytes_max = s.u64_or(
        p,
        "ledger_segment_bytes_max",
        LEDGER_SEGMENT_BYTES_MIN,
        LEDGER_SEGMENT_BYTES_LIMIT,
        defaults::LEDGER_SEGMENT_BYTES_MAX,
    );
    let buyers_per_auction_max = s.usize_or(
        p,
        "buyers_per_auction_max",
        1,
        FAN_OUT_LIMIT,
        defaults::BUYERS_PER_AUCTION_MAX,
    );
    let response_reserve_ms = s.u64_or(
        p,
        "response_reserve_ms",
        0,
        10_000,
        defaults::RESPONSE_RESERVE_MS,
    );
    let post_attempts_max = s.usize_or(
        p,
        "post_attempts_max",
        1,
        POST_ATTEMPTS_LIMIT,
        defaults::POST_ATTEMPTS_MAX,
    );
    let post_deadline_ms = s.u64_or(
        p,
        "post_deadline_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::POST_DEADLINE_MS,
    );
    // Sold leads remembered for `POST /v1/dispositions` (oldest forgotten first).
    let sold_leads_max = s.usize_or(
        p,
        "sold_leads_max",
        1,
        SOLD_LEADS_LIMIT,
        defaults::SOLD_LEADS_MAX,
    );

    // Deliveries of one buyer heard out after their timeout (each holds a connection and a
    // cap hold) at which it is sent no more leads.
    let late_posts_per_buyer_max = s
        .u32_opt(p, "late_posts_per_buyer_max", 1, LATE_POSTS_PER_BUYER_LIMIT)
        .unwrap_or(defaults::LATE_POSTS_PER_BUYER_MAX);

    let mut b = s.section_or_empty(p, "breaker");
    let breaker = BreakerConfig {
        enabled: b.bool_or(p, "enabled", true),
        failures: b
            .u32_opt(p, "failures", 1, BREAKER_FAILURES_LIMIT)
            .unwrap_or(defaults::BREAKER_FAILURES),
        open_ms: b.u64_or(p, "open_ms", 1, HOUR_MS, defaults::BREAKER_OPEN_MS),
        probe_interval_ms: b.u64_or(
            p,
            "probe_interval_ms",
            1,
            HOUR_MS,
            defaults::BREAKER_PROBE_INTERVAL_MS,
        ),
    };
    b.finish(p);
    let listener = read_listener(&mut s, p);
    s.finish(p);

    ServerConfig {
        listen,
        body_bytes_max,
        header_read_timeout_ms,
        requests_in_flight_max,
        connections_max,
        worker_threads,
        shutdown_grace_ms,
        quote_ttl_ms,
        quote_min_ms,
        quotes_open_max,
        dedup_keys_max,
        idempotency_ttl_ms,
        idempotency_keys_max,
        idempotency_keys_per_seller_max,
        ledger_path,
        ledger_segment_bytes_max,
        new_fingerprint_key: false,
        buyers_per_auction_max,
        response_reserve_ms,
        post_attempts_max,
        post_deadline_ms,
        sold_leads_max,
        late_posts_per_buyer_max,
        breaker,
        listener,
    }
}

/// Largest `server.late_posts_per_buyer_max`.
const LATE_POSTS_PER_BUYER_LIMIT: i64 = 100_000;
/// Largest `server.sold_leads_max` (about 775 MB of sold-lead index, reserved at start:
/// 64 bytes a slot and a 128 MiB index).
const SOLD_LEADS_LIMIT: i64 = crate::dispositions::SOLD_LEADS_MAX_LIMIT as i64;
/// Smallest `server.ledger_segment_bytes_max` (4 KiB: a few records per segment).
const LEDGER_SEGMENT_BYTES_MIN: i64 = 4 * 1024;
/// Largest `server.ledger_segment_bytes_max` (1 GiB).
const LEDGER_SEGMENT_BYTES_LIMIT: i64 = 1 << 30;
/// Largest `server.header_bytes_max`.
const HEADER_BYTES_MAX_LIMIT: i64 = 256 * 1024;
/// Largest `server.headers_max`.
const HEADERS_MAX_LIMIT: i64 = 10_000;

/// The listener's keys of `[server]`: per-IP limit, idle and HTTP/2 keep-alive timers,
/// header limits, `[server.tls]` and `buyer_ca_path`. The TLS files are read and checked
/// here, so a bad certificate is a configuration error, not a failed start.
fn read_listener(s: &mut Section<'_>, p: &mut Problems) -> ListenerSettings {
    let d = ListenerSettings::default();
    let connections_per_ip_max = s.usize_or(
        p,
        "connections_per_ip_max",
        0,
        COUNT_LIMIT,
        d.connections_per_ip_max,
    );
    let connections_per_ip_exempt_loopback = s.bool_or(
        p,
        "connections_per_ip_exempt_loopback",
        d.connections_per_ip_exempt_loopback,
    );
    let idle_timeout_ms = s.u64_or(
        p,
        "idle_timeout_ms",
        1,
        SERVER_WAIT_MS_LIMIT,
        d.idle_timeout_ms,
    );
    let h2_keepalive_interval_ms = s.u64_or(
        p,
        "h2_keepalive_interval_ms",
        0,
        SERVER_WAIT_MS_LIMIT,
        d.h2_keepalive_interval_ms,
    );
    let h2_keepalive_timeout_ms = s.u64_or(
        p,
        "h2_keepalive_timeout_ms",
        1,
        SERVER_WAIT_MS_LIMIT,
        d.h2_keepalive_timeout_ms,
    );
    let header_bytes_max = s.usize_or(
        p,
        "header_bytes_max",
        1024,
        HEADER_BYTES_MAX_LIMIT,
        d.header_bytes_max,
    );
    let headers_max = s.usize_or(p, "headers_max", 1, HEADERS_MAX_LIMIT, d.headers_max);
    let tls = if s.has("tls") {
        let mut t = s.section_or_empty(p, "tls");
        let cert = t.str_req(p, "cert_path");
        let key = t.str_req(p, "key_path");
        let cert_key = t.path_of("cert_path");
        let key_key = t.path_of("key_path");
        t.finish(p);
        // An empty path names no file (black-box round 91a: "cannot read : …").
        if cert == Some("") {
            p.at(&cert_key, "must name a file, not be empty");
        }
        if key == Some("") {
            p.at(&key_key, "must name a file, not be empty");
        }
        let cert = cert.filter(|c| !c.is_empty());
        let key = key.filter(|k| !k.is_empty());
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert_path: PathBuf::from(cert),
                    key_path: PathBuf::from(key),
                };
                // Each file's problems at its own key, both at once; a key that is not
                // the certificate's at `key_path`.
                match bidder_sdk::listener::server_config_from_files_checked(
                    &files.cert_path,
                    &files.key_path,
                ) {
                    Ok(_) => Some(files),
                    Err(problems) => {
                        for (file, e) in problems {
                            let at = match file {
                                bidder_sdk::listener::TlsFile::Cert => &cert_key,
                                bidder_sdk::listener::TlsFile::Key => &key_key,
                            };
                            p.at(at, e);
                        }
                        None
                    }
                }
            }
            // The one named is still read and parsed, beside the other's `is required`
            // (black-box round 89a: the missing key hid an unreadable certificate).
            (cert, key) => {
                let one = [
                    (cert, bidder_sdk::listener::TlsFile::Cert, &cert_key),
                    (key, bidder_sdk::listener::TlsFile::Key, &key_key),
                ];
                for (path, file, at) in one {
                    if let Some(path) = path {
                        if let Err(e) =
                            bidder_sdk::listener::check_one_tls_file(Path::new(path), file)
                        {
                            p.at(at, e);
                        }
                    }
                }
                None
            }
        }
    } else {
        // Known, so a `[server.tsl]` is told "did you mean tls?" (black-box round 198c).
        let _ = s.opt("tls");
        None
    };
    let buyer_ca_path = s.str_opt(p, "buyer_ca_path").and_then(|path| {
        let key = s.path_of("buyer_ca_path");
        match bidder_sdk::listener::read_file_bounded(
            std::path::Path::new(path),
            bidder_sdk::listener::PEM_FILE_BYTES_MAX,
        ) {
            Err(e) => {
                p.at(&key, format!("cannot read {path}: {e}"));
                None
            }
            // Each certificate parsed as the start will parse it (black-box round 17: a
            // bundle `--check-config` passed was refused at the start).
            // and judged as the start will judge it (round 66a: a certificate a CA issued
            // passed `--check-config` and was refused at the start).
            Ok(pem) => match bidder_sdk::listener::certificates_from_pem(&pem, path) {
                Ok(_) => match crate::tls::buyer_client_config_labelled(Some(&pem), path) {
                    Ok(_warnings) => Some(PathBuf::from(path)),
                    Err(e) => {
                        p.at(
                            &key,
                            e.strip_prefix("server.buyer_ca_path: ")
                                .unwrap_or(&e)
                                .to_string(),
                        );
                        None
                    }
                },
                Err(e) => {
                    p.at(&key, e);
                    None
                }
            },
        }
    });
    ListenerSettings {
        connections_per_ip_max,
        connections_per_ip_exempt_loopback,
        idle_timeout_ms,
        h2_keepalive_interval_ms,
        h2_keepalive_timeout_ms,
        header_bytes_max,
        headers_max,
        tls,
        buyer_ca_path,
    }
}
