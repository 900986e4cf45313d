//! Tests of `[server]`.

use std::path::PathBuf;

use super::*;
use crate::config::BreakerConfig;

#[test]
fn server_keys() {
    let c = ok(&[(
            "#SERVER",
            "listen = \"0.0.0.0:9000\"\nbody_bytes_max = 2048\nheader_read_timeout_ms = 7\nrequests_in_flight_max = 8\n\
             connections_max = 9\nshutdown_grace_ms = 0\nquote_ttl_ms = 11\nquotes_open_max = 12\nidempotency_ttl_ms = 13\n\
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
    assert_eq!((s.idempotency_ttl_ms, s.idempotency_keys_max), (13, 14));
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
            "server.response_reserve_ms: must be a whole number between 0 and 10000",
            "server.breaker: must be a table",
        ]
    );
    assert_eq!(
            errors(&[("#SERVER", "response_reserve_ms = 200")]),
            ["verticals.auto.auction_deadline_ms: must be more than server.response_reserve_ms (200 ms), which is kept back to answer the seller"]
        );
}
