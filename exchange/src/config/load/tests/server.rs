//! Tests of `[server]`.

use std::path::PathBuf;

use super::*;
use crate::config::BreakerConfig;

#[test]
fn server_keys() {
    let c = ok(&[(
            "#SERVER",
            "listen = \"0.0.0.0:9000\"\nbody_bytes_max = 2048\nheader_read_timeout_ms = 7\nrequests_in_flight_max = 8\n\
             connections_max = 9\nshutdown_grace_ms = 0\nquote_ttl_ms = 11\nquote_min_ms = 10\nquotes_open_max = 12\nidempotency_ttl_ms = 86400013\n\
             idempotency_keys_max = 14\nledger_path = \"/tmp/l.jsonl\"\nbuyers_per_auction_max = 15\nresponse_reserve_ms = 16\n\
             post_attempts_max = 17\nbreaker = { failures = 18, open_ms = 19, probe_interval_ms = 20 }",
        )]);
    let s = &c.server;
    assert_eq!(s.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(
        (
            s.body_bytes_max,
            s.header_read_timeout_ms,
            s.requests_in_flight_max,
            s.connections_max
        ),
        (2048, 7, 8, 9)
    );
    assert_eq!(
        (s.shutdown_grace_ms, s.quote_ttl_ms, s.quotes_open_max),
        (0, 11, 12)
    );
    assert_eq!(s.quote_min_ms, 10);
    assert_eq!(
        (s.idempotency_ttl_ms, s.idempotency_keys_max),
        (86_400_013, 14)
    );
    assert_eq!(s.ledger_path, PathBuf::from("/tmp/l.jsonl"));
    assert_eq!(
        (
            s.buyers_per_auction_max,
            s.response_reserve_ms,
            s.post_attempts_max
        ),
        (15, 16, 17)
    );
    assert_eq!(
        s.breaker,
        BreakerConfig {
            enabled: true,
            failures: 18,
            open_ms: 19,
            probe_interval_ms: 20
        }
    );

    assert_eq!(
        errors(&[(
            "#SERVER",
            "body_bytes_max = 10\nledger_path = \"\"\nresponse_reserve_ms = \"2\"\nbreaker = 5"
        )]),
        [
            "server.body_bytes_max: must be a whole number between 1024 and 16777216",
            "server.ledger_path: must not be empty",
            "server.response_reserve_ms: must be a whole number between 0 and 10000, written without quotes",
            "server.breaker: must be a table",
        ]
    );
    // A number with a unit is told the key's unit (black-box round 198c: `"200ms"` was
    // told only the range).
    assert_eq!(
        errors(&[(
            "#SERVER",
            "idle_timeout_ms = \"200ms\"\nheader_bytes_max = \"16 KB\"\nheaders_max = \"64 x\"\nbody_bytes_max = \"ms\""
        )]),
        [
            "server.body_bytes_max: must be a whole number between 1024 and 16777216",
            "server.idle_timeout_ms: must be a whole number between 1 and 600000, written without quotes or a unit (it is in milliseconds)",
            "server.header_bytes_max: must be a whole number between 1024 and 262144, written without quotes or a unit (it is in bytes)",
            "server.headers_max: must be a whole number between 1 and 10000, written without quotes or a unit",
        ]
    );
    // A directory path with white space at an end names a directory with it (round
    // 147a: `ledger_path = " "` made a ledger in a directory named by one space).
    for path in ["\" \"", "\"ledger \"", "\" /var/ledger\"", "\"ledger\\t\""] {
        assert_eq!(
            errors(&[("#SERVER", &format!("ledger_path = {path}"))]),
            [format!(
                "server.ledger_path: {}",
                super::super::reader::EDGE_SPACE
            )],
            "{path}"
        );
    }
    assert_eq!(
        errors(&[("#BUYER", "\n[learning]\nmodels_dir = \"models \"")]),
        [format!(
            "learning.models_dir: {}",
            super::super::reader::EDGE_SPACE
        )]
    );
    // "Without quotes" only when the quotes are all that is wrong (round 102a: `"2.5"`
    // for a whole number was told to drop them).
    for quoted in ["\"2.5\"", "\"20000\"", "\"-1\"", "\"two\""] {
        assert_eq!(
            errors(&[("#SERVER", &format!("response_reserve_ms = {quoted}"))]),
            ["server.response_reserve_ms: must be a whole number between 0 and 10000"],
            "{quoted}"
        );
    }
    assert_eq!(
            errors(&[("#SERVER", "response_reserve_ms = 200")]),
            ["verticals.auto.auction_deadline_ms: must be more than server.response_reserve_ms (200 ms), which is kept back to answer the seller"]
        );
}

#[test]
fn idempotency_keys_are_kept_at_least_the_contracts_24_hours() {
    for short in ["1", "86399999"] {
        let e = errors(&[("#SERVER", &format!("idempotency_ttl_ms = {short}"))]);
        assert_eq!(
            e,
            vec![
                "server.idempotency_ttl_ms: must be a whole number between 86400000 and 2592000000"
                    .to_string()
            ],
            "{short}"
        );
    }
    let c = ok(&[("#SERVER", "idempotency_ttl_ms = 86400000")]);
    assert_eq!(c.server.idempotency_ttl_ms, 86_400_000);
}

#[test]
fn a_non_loopback_admin_listener_needs_tls() {
    let e = errors(&[("#BUYER", "\n[admin]\nlisten = \"0.0.0.0:8081\"")]);
    assert!(
        e.iter().any(|m| m
            .starts_with("admin.listen: is not a loopback address, so [server.tls] must be set")),
        "{e:?}"
    );
    // A `[server.tls]` that is there but refused is said by its own errors, not as
    // missing (black-box round 65b).
    let e = errors(&[
        (
            "#SERVER",
            "[server.tls]\ncert_path = \"/nonexistent/cert.pem\"\nkey_path = \"/nonexistent/key.pem\"",
        ),
        ("#BUYER", "\n[admin]\nlisten = \"0.0.0.0:8081\""),
    ]);
    assert!(e.iter().any(|m| m.starts_with("server.tls")), "{e:?}");
    assert!(!e.iter().any(|m| m.contains("must be set")), "{e:?}");
    // On loopback it loads (the admin listener stays off without a token).
    let c = ok(&[("#BUYER", "\n[admin]\nlisten = \"127.0.0.1:8081\"")]);
    assert!(c.admin.token.is_none());
    // So it does as an IPv4 loopback address written IPv4-mapped (black-box round 169b:
    // `[::ffff:127.0.0.1]` was refused as not loopback), and not for another mapped one.
    let c = ok(&[("#BUYER", "\n[admin]\nlisten = \"[::ffff:127.0.0.1]:8081\"")]);
    assert!(c.admin.token.is_none());
    let e = errors(&[("#BUYER", "\n[admin]\nlisten = \"[::ffff:10.0.0.1]:8081\"")]);
    assert!(
        e.iter().any(|m| m
            .starts_with("admin.listen: is not a loopback address, so [server.tls] must be set")),
        "{e:?}"
    );
}

#[test]
fn the_admin_listener_cannot_share_the_seller_port() {
    let admin =
        |listen: &str| format!("\n[admin]\ntoken_env = \"ADMIN_TOKEN\"\nlisten = \"{listen}\"");
    for listen in ["127.0.0.1:8080", "0.0.0.0:8080"] {
        let server = ("#SERVER", "listen = \"127.0.0.1:8080\"");
        let e = errors(&[server, ("#BUYER", &admin(listen))]);
        assert!(
            e.iter()
                .any(|m| m.starts_with("admin.listen: is the seller listener's port too")),
            "{listen}: {e:?}"
        );
    }
    // Another port, or another address on the same port, loads.
    for listen in ["127.0.0.1:8081", "127.0.0.2:8080"] {
        let c = ok(&[
            ("#SERVER", "listen = \"127.0.0.1:8080\""),
            ("#BUYER", &admin(listen)),
        ]);
        assert!(c.admin.token.is_some());
    }
}

#[test]
fn the_admin_token_cannot_be_a_seller_s_or_buyer_s_key() {
    use sha2::Digest;
    // ADMIN_TOKEN's value is the admin token and a seller's key.
    let digest = hex::encode(sha2::Sha256::digest(b"admin-token-value-0123"));
    let shared = format!(
        "\n[sellers.s2]\nkey_sha256 = \"{digest}\"\nverticals = [\"auto\"]\n\
         payout = {{ model = \"revenue_share\", share_pct = 80 }}\n\
         [admin]\ntoken_env = \"ADMIN_TOKEN\"\nlisten = \"127.0.0.1:8081\""
    );
    let e = errors(&[("#BUYER", &shared)]);
    assert!(
        e.iter().any(|m| m
            == "admin.token_env: the admin token ($ADMIN_TOKEN, or the demo's made-up one) \
                is also the key of sellers.s2: give the admin listener a token of its own"),
        "{e:?}"
    );
    assert!(e.iter().all(|m| !m.contains("admin-token-value")), "{e:?}");
    // Another seller key loads.
    let other = shared.replace(&digest, &"ab".repeat(32));
    let c = ok(&[("#BUYER", &other)]);
    assert!(c.admin.token.is_some());
    // A name no shell can set is refused, as `secret_env`'s is (black-box round 203a:
    // `1ABC` was taken, with only a warning that it is not set).
    for name in ["1ABC", "A-B", "", "_"] {
        assert_eq!(
            errors(&[(
                "#BUYER",
                &format!("\n[admin]\ntoken_env = \"{name}\"\nlisten = \"127.0.0.1:8081\""),
            )]),
            ["admin.token_env: must be an environment variable name (ASCII letters, digits and _, not starting with a digit, and not _ alone, which the shell sets itself); up to 64"],
            "{name:?}"
        );
    }
    // Nor may the token be a buyer's signing secret: that buyer would hold the admin
    // listener (black-box round 49). Buyer acme signs with $ACME_SECRET, whose value
    // $SAME_AS_ACME holds too, and $ACME_KEY_AS_WHSEC holds the same key written as
    // `whsec_` and base64 (round 52: passed).
    for var in ["SAME_AS_ACME", "ACME_KEY_AS_WHSEC"] {
        let e = errors(&[(
            "#BUYER",
            &format!("\n[admin]\ntoken_env = \"{var}\"\nlisten = \"127.0.0.1:8081\""),
        )]);
        assert_eq!(
            e,
            [format!(
                "admin.token_env: the admin token (${var}, or the demo's made-up one) can \
                 be taken from the signing secret of buyers.acme (buyers.acme.secret_env), \
                 which that buyer receives: give the admin listener a token of its own"
            )]
        );
        assert!(e.iter().all(|m| !m.contains("top-secret-value")), "{e:?}");
    }
    // One variable named for both is said by name, set or not (round 51: unset, it
    // showed only once set).
    for env in [test_env as fn(&str) -> Option<String>, |_: &str| None] {
        let text = doc(&[(
            "#BUYER",
            "\n[admin]\ntoken_env = \"ACME_SECRET\"\nlisten = \"127.0.0.1:8081\"",
        )]);
        let e = load_str_with_env(&text, &env).unwrap_err().0;
        assert!(
            e.contains(
                &"admin.token_env: names $ACME_SECRET, the variable buyers.acme.secret_env \
                  names too: the admin token would be that buyer's signing secret; give the \
                  admin listener a variable of its own"
                    .to_string()
            ),
            "{e:?}"
        );
        assert!(
            !e.iter()
                .any(|m| m.contains("can be taken from the signing secret")),
            "{e:?}"
        );
    }
    assert!(e.iter().all(|m| !m.contains("top-secret-value")), "{e:?}");
}

#[test]
fn a_secret_pasted_where_a_variable_name_belongs_is_never_printed() {
    // A `whsec_` secret (and many tokens) are letters, digits and `_`: a valid-looking
    // variable name. The message names the key, not the secret.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let buyer = format!(
        "\n[buyers.b2]\nping_url = \"http://127.0.0.1:9102/ping\"\npost_url = \"http://127.0.0.1:9102/post\"\nsecret_env = \"{secret}\"\nverticals = [\"auto\"]\n\n[admin]\ntoken_env = \"{secret}\"\nlisten = \"0.0.0.0:8081\""
    );
    let e = errors(&[("#BUYER", &buyer)]);
    assert!(
        e.iter().any(|m| m.starts_with("buyers.b2.secret_env:")),
        "{e:?}"
    );
    assert!(e.iter().all(|m| !m.contains(secret)), "{e:?}");
    // A conventional name is still shown, so the operator knows what to set.
    let e = errors(&[("#BUYER", "\n[buyers.b3]\nping_url = \"http://127.0.0.1:9103/ping\"\npost_url = \"http://127.0.0.1:9103/post\"\nsecret_env = \"B3_SECRET\"\nverticals = [\"auto\"]")]);
    assert!(
        e.iter()
            .any(|m| m == "buyers.b3.secret_env: environment variable B3_SECRET is not set"),
        "{e:?}"
    );
}

#[test]
fn files_a_configuration_names_are_read_bounded_and_only_if_regular() {
    // /dev/zero never ends and a FIFO blocks the reader: both are refused before a byte is
    // read, as is a file over the size limit.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    let big = dir.path().join("big.pem");
    std::fs::write(
        &big,
        vec![b'a'; (bidder_sdk::listener::PEM_FILE_BYTES_MAX + 1) as usize],
    )
    .unwrap();
    let mut paths = vec![PathBuf::from("/dev/zero"), big];
    if made {
        paths.push(fifo);
    }
    for path in paths {
        let line = format!("buyer_ca_path = {:?}", path.display().to_string());
        let e = errors(&[("#SERVER", &line)]);
        assert!(
            e.iter()
                .any(|m| m.starts_with("server.buyer_ca_path: cannot read")
                    && (m.contains("not a regular file") || m.contains("larger than"))),
            "{path:?}: {e:?}"
        );
    }
    // The configuration file itself is read the same way.
    let e = load_file_with_env(std::path::Path::new("/dev/zero"), &|_| None).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // ... and says what to do (black-box round 242b).
    assert!(
        e.to_string().contains("write it to a file and name that"),
        "{e}"
    );
}

/// A self-signed certificate for `localhost` and its key, in PEM.
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The problems of a configuration whose `[server.tls]` names `cert` and `key`.
fn tls_errors(cert: &std::path::Path, key: &std::path::Path) -> Vec<String> {
    let line = format!(
        "tls = {{ cert_path = {:?}, key_path = {:?} }}",
        cert.display().to_string(),
        key.display().to_string()
    );
    errors(&[("#SERVER", &line)])
}

#[test]
fn each_tls_file_is_reported_at_its_own_key_and_both_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = self_signed();
    let (_, other_key_pem) = self_signed();
    let cert = dir.path().join("tcert.pem");
    let key = dir.path().join("tkey.pem");
    let other_key = dir.path().join("other-key.pem");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    std::fs::write(&other_key, &other_key_pem).unwrap();
    std::fs::write(&junk, "not PEM").unwrap();
    let missing_cert = dir.path().join("gone-cert.pem");
    let missing_key = dir.path().join("gone-key.pem");
    let at = |e: &[String], key: &str| -> Vec<String> {
        e.iter()
            .filter(|m| m.starts_with(&format!("{key}: ")))
            .cloned()
            .collect()
    };

    // The pair loads.
    assert_eq!(tls_errors(&cert, &key), Vec::<String>::new());

    // Both files gone: both listed, each at its key.
    let e = tls_errors(&missing_cert, &missing_key);
    let (c, k) = (
        at(&e, "server.tls.cert_path"),
        at(&e, "server.tls.key_path"),
    );
    assert!(
        c.len() == 1 && c[0].contains(&format!("cannot read {}", missing_cert.display())),
        "{e:?}"
    );
    assert!(
        k.len() == 1 && k[0].contains(&format!("cannot read {}", missing_key.display())),
        "{e:?}"
    );

    // Only the key gone: at key_path, nothing at cert_path.
    let e = tls_errors(&cert, &missing_key);
    assert!(at(&e, "server.tls.cert_path").is_empty(), "{e:?}");
    let k = at(&e, "server.tls.key_path");
    assert!(
        k.len() == 1 && k[0].contains(&format!("cannot read {}", missing_key.display())),
        "{e:?}"
    );

    // Only the certificate gone: at cert_path, nothing at key_path.
    let e = tls_errors(&missing_cert, &key);
    assert!(at(&e, "server.tls.key_path").is_empty(), "{e:?}");
    assert_eq!(at(&e, "server.tls.cert_path").len(), 1, "{e:?}");

    // Neither file holds what it should: both, each at its key.
    let e = tls_errors(&junk, &junk);
    let (c, k) = (
        at(&e, "server.tls.cert_path"),
        at(&e, "server.tls.key_path"),
    );
    assert!(
        c.len() == 1 && c[0].contains("no PEM certificate found"),
        "{e:?}"
    );
    assert!(k.len() == 1 && k[0].contains("no PEM private key"), "{e:?}");

    // A certificate where the key belongs: the key's problem.
    let e = tls_errors(&cert, &cert);
    assert!(at(&e, "server.tls.cert_path").is_empty(), "{e:?}");
    assert_eq!(at(&e, "server.tls.key_path").len(), 1, "{e:?}");

    // A passphrase-protected key (PKCS#8 or legacy OpenSSL): said so, with how to
    // decrypt it, not "no key".
    for encrypted_pem in [
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0F0E\n\nMIIBvTBXBgkqhkiG9w0BBQ0w\n-----END RSA PRIVATE KEY-----\n",
    ] {
        let encrypted = dir.path().join("encrypted-key.pem");
        std::fs::write(&encrypted, encrypted_pem).unwrap();
        let e = tls_errors(&cert, &encrypted);
        assert!(at(&e, "server.tls.cert_path").is_empty(), "{e:?}");
        let k = at(&e, "server.tls.key_path");
        assert!(
            k.len() == 1
                && k[0].contains("holds an encrypted private key, which is not supported")
                && k[0].contains("openssl pkey"),
            "{e:?}"
        );
    }

    // A key that is not the certificate's: at key_path, saying so.
    let e = tls_errors(&cert, &other_key);
    assert!(at(&e, "server.tls.cert_path").is_empty(), "{e:?}");
    let k = at(&e, "server.tls.key_path");
    assert!(
        k.len() == 1 && k[0].contains("does not match the certificate"),
        "{e:?}"
    );
    // Only one of the two named: the other is required, and the one named is still read
    // (black-box round 89a: the missing key hid the unreadable certificate).
    let one = |key: &str, path: &std::path::Path| {
        errors(&[(
            "#SERVER",
            &format!("tls = {{ {key} = {:?} }}", path.display().to_string()),
        )])
    };
    let e = one("cert_path", &missing_cert);
    let c = at(&e, "server.tls.cert_path");
    assert!(
        c.len() == 1 && c[0].contains(&format!("cannot read {}", missing_cert.display())),
        "{e:?}"
    );
    assert_eq!(
        at(&e, "server.tls.key_path"),
        vec!["server.tls.key_path: is required".to_string()],
        "{e:?}"
    );
    let e = one("key_path", &junk);
    let k = at(&e, "server.tls.key_path");
    assert!(k.len() == 1 && k[0].contains("no PEM private key"), "{e:?}");
    assert_eq!(
        at(&e, "server.tls.cert_path"),
        vec!["server.tls.cert_path: is required".to_string()],
        "{e:?}"
    );
    // An empty path names no file: said so, beside the other file's own problems.
    let e = tls_errors(std::path::Path::new(""), &missing_key);
    assert_eq!(
        at(&e, "server.tls.cert_path"),
        vec!["server.tls.cert_path: must name a file, not be empty".to_string()],
        "{e:?}"
    );
    assert_eq!(at(&e, "server.tls.key_path").len(), 1, "{e:?}");
    // A good file named alone: only the other's `is required`.
    let e = one("cert_path", &cert);
    assert!(at(&e, "server.tls.cert_path").is_empty(), "{e:?}");
    assert_eq!(at(&e, "server.tls.key_path").len(), 1, "{e:?}");
    let e = one("key_path", &key);
    assert!(at(&e, "server.tls.key_path").is_empty(), "{e:?}");
    assert_eq!(at(&e, "server.tls.cert_path").len(), 1, "{e:?}");
}

/// Black-box round 183a: a buyer's signing secret that was also a seller's or another
/// buyer's API key loaded; that buyer receives the secret with every request, and could
/// sell as the seller or file the other buyer's returns. Refused, however the secret is
/// written, naming the variable and never the value; a buyer's own key is no problem.
#[test]
fn a_signing_secret_that_is_another_partys_key_is_refused() {
    use sha2::Digest as _;
    // The problems of BASE with `buyer` spliced in, with $ACME_SECRET holding `secret`.
    let with_secret = |secret: &str, buyer: &str| -> Vec<String> {
        let env = |name: &str| match name {
            "ACME_SECRET" => Some(secret.to_string()),
            other => test_env(other),
        };
        match load_str_with_env(&doc(&[("#BUYER", buyer)]), &env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        }
    };
    let digest = hex::encode(sha2::Sha256::digest(b"top-secret-value"));
    let seller = format!(
        "\n[sellers.s2]\nkey_sha256 = \"{digest}\"\nverticals = [\"auto\"]\npayout = {{ model = \"revenue_share\", share_pct = 80 }}\n"
    );
    let e = errors(&[("#BUYER", &seller)]);
    assert_eq!(
        e,
        ["buyers.acme.secret_env: $ACME_SECRET holds the API key of sellers.s2: buyers.acme receives its signing secret with every request and could call the exchange as sellers.s2; give each its own"]
    );
    // Written as `whsec_` and base64, as `secret_env_next` too.
    let e = errors(&[(
        "#BUYER",
        &format!(
            "{seller}\n[buyers.b2]\nping_url = \"http://127.0.0.1:9102/ping\"\npost_url = \"http://127.0.0.1:9102/post\"\nsecret_env = \"ACME_NEXT\"\nsecret_env_next = \"ACME_KEY_AS_WHSEC\"\nverticals = [\"auto\"]\n"
        ),
    )]);
    assert!(
        e.contains(&"buyers.b2.secret_env_next: $ACME_KEY_AS_WHSEC holds the API key of sellers.s2: buyers.b2 receives its signing secret with every request and could call the exchange as sellers.s2; give each its own".to_string()),
        "{e:?}"
    );
    // Another buyer's key.
    let buyer = format!(
        "\n[buyers.b2]\nping_url = \"http://127.0.0.1:9102/ping\"\npost_url = \"http://127.0.0.1:9102/post\"\nsecret_env = \"ACME_NEXT\"\nkey_sha256 = \"{digest}\"\nverticals = [\"auto\"]\n"
    );
    let e = errors(&[("#BUYER", &buyer)]);
    assert_eq!(
        e,
        ["buyers.acme.secret_env: $ACME_SECRET holds the API key of buyers.b2: buyers.acme receives its signing secret with every request and could call the exchange as buyers.b2; give each its own"]
    );
    assert!(e.iter().all(|m| !m.contains("top-secret-value")), "{e:?}");
    // However the holder would present it: with white space around it, after
    // `Bearer `, or with a newline, plain or `whsec_` (black-box round 184a: passed).
    for secret in [
        "top-secret-value\n",
        " top-secret-value",
        "top-secret-value\t",
        "Bearer top-secret-value",
        "whsec_dG9wLXNlY3JldC12YWx1ZQo=",
        // Beside bytes that are not UTF-8 in a `whsec_` secret: b"\xff top-secret-value",
        // b"junkjunk\xa0top-secret-value", b"top-secret-value\n\xff" (round 186a).
        "whsec_/yB0b3Atc2VjcmV0LXZhbHVl",
        "whsec_anVua2p1bmugdG9wLXNlY3JldC12YWx1ZQ==",
        "whsec_dG9wLXNlY3JldC12YWx1ZQr/",
    ] {
        assert_eq!(
            with_secret(secret, &seller),
            ["buyers.acme.secret_env: $ACME_SECRET holds the API key of sellers.s2: buyers.acme receives its signing secret with every request and could call the exchange as sellers.s2; give each its own"],
            "{secret:?}"
        );
    }
    // A key of several words, after `Bearer ` or among other words, inner white space
    // as written (black-box round 185a: a seller keyed "Spaced key  42" passed).
    let spaced = hex::encode(sha2::Sha256::digest(b"Spaced key  42"));
    let seller = format!(
        "\n[sellers.s2]\nkey_sha256 = \"{spaced}\"\nverticals = [\"auto\"]\npayout = {{ model = \"revenue_share\", share_pct = 80 }}\n"
    );
    for secret in [
        "Bearer Spaced key  42",
        "bearer  Spaced key  42 \n",
        "Authorization: Bearer Spaced key  42",
        "my key is Spaced key  42 ok",
    ] {
        let e = with_secret(secret, &seller);
        assert_eq!(e.len(), 1, "{secret:?}: {e:?}");
        assert!(
            e[0].contains("holds the API key of sellers.s2"),
            "{secret:?}: {e:?}"
        );
    }
    // After any number of other words (round 186a: the 65th word was not looked at).
    let many = format!("{} top-secret-value", vec!["w"; 1_000].join(" "));
    assert_eq!(with_secret(&many, &format!("\n[sellers.s3]\nkey_sha256 = \"{digest}\"\nverticals = [\"auto\"]\npayout = {{ model = \"revenue_share\", share_pct = 80 }}\n")).len(), 1);
    // A secret is at most 4,096 bytes, so looking through it is bounded.
    assert_eq!(
        with_secret(&"k".repeat(4_097), ""),
        ["buyers.acme.secret_env: environment variable ACME_SECRET holds a value longer than 4096 bytes (as set, `whsec_` and base64 included): use 24 to 64 random bytes (`whsec_` and base64, as Standard Webhooks suggests)"]
    );
    assert!(with_secret(&"k".repeat(4_096), "").is_empty());
    // Words apart otherwise are another text: "Spaced key 42" (one space) is not it.
    assert!(with_secret("Bearer Spaced key 42", &seller).is_empty());
    // The admin token so written is refused as that buyer's secret too.
    assert_eq!(
        with_secret(
            "admin-token-value-0123\n",
            "\n[admin]\ntoken_env = \"ADMIN_TOKEN\"\nlisten = \"127.0.0.1:8081\""
        ),
        ["admin.token_env: the admin token ($ADMIN_TOKEN, or the demo's made-up one) can be taken from the signing secret of buyers.acme (buyers.acme.secret_env), which that buyer receives: give the admin listener a token of its own"]
    );
    // Its own key: no other party's.
    assert!(errors(&[("#BUYER", &format!("key_sha256 = \"{digest}\""))]).is_empty());
}
