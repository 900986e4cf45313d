//! Tests of the buyer keys for `POST /v1/dispositions` (`key_sha256`, `key_sha256_next`),
//! `return_window_days` and `server.sold_leads_max`.

use super::*;

const BUYER_KEY: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
const NEXT_KEY: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

#[test]
fn buyer_keys_and_return_window() {
    let c = ok(&[]);
    let b = &c.buyers[0];
    assert_eq!((b.key_sha256, b.key_sha256_next), (None, None));
    assert_eq!(b.return_window_days, defaults::RETURN_WINDOW_DAYS);
    assert!(c.buyer_by_key_sha256.is_empty());
    assert_eq!(c.server.sold_leads_max, defaults::SOLD_LEADS_MAX);

    let c = ok(&[
        (
            "#BUYER",
            &format!(
                "key_sha256 = \"{BUYER_KEY}\"\nkey_sha256_next = \"{NEXT_KEY}\"\nreturn_window_days = 7"
            ),
        ),
        ("#SERVER", "sold_leads_max = 500"),
    ]);
    let b = &c.buyers[0];
    let mut digest = [0u8; 32];
    hex::decode_to_slice(BUYER_KEY, &mut digest).unwrap();
    assert_eq!(b.key_sha256, Some(digest));
    assert_eq!(c.buyer_by_key_sha256.get(&digest), Some(&0));
    assert_eq!(c.buyer_by_key_sha256.len(), 2);
    assert_eq!(b.return_window_days, 7);
    assert_eq!(c.server.sold_leads_max, 500);
    assert_eq!(
        ok(&[("#BUYER", "return_window_days = 365")]).buyers[0].return_window_days,
        365
    );
}

/// `buyers.ID.pings_in_flight_max` (black-box round 161b): unset is no limit; a whole
/// number from 1 to 1,000,000; anything else is refused naming the key.
#[test]
fn pings_in_flight_max_is_read_and_bad_values_are_refused() {
    assert_eq!(ok(&[]).buyers[0].pings_in_flight_max, None);
    assert_eq!(
        ok(&[("#BUYER", "pings_in_flight_max = 64")]).buyers[0].pings_in_flight_max,
        Some(64)
    );
    assert_eq!(
        ok(&[("#BUYER", "pings_in_flight_max = 1000000")]).buyers[0].pings_in_flight_max,
        Some(1_000_000)
    );
    for bad in [
        "pings_in_flight_max = 0",
        "pings_in_flight_max = -3",
        "pings_in_flight_max = 1000001",
        "pings_in_flight_max = 2.5",
        "pings_in_flight_max = \"64\"",
    ] {
        let e = errors(&[("#BUYER", bad)]);
        assert!(
            e.iter()
                .any(|m| m.starts_with("buyers.acme.pings_in_flight_max")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn bad_buyer_keys_and_windows_are_refused() {
    let cases: &[(&str, &str)] = &[
        (
            "key_sha256 = \"abc\"",
            "buyers.acme.key_sha256: must be 64 hex digits",
        ),
        (
            "key_sha256 = 5",
            "buyers.acme.key_sha256: must be a string of 64 hex digits",
        ),
        (
            &format!("key_sha256_next = \"{NEXT_KEY}\""),
            "buyers.acme.key_sha256_next: needs key_sha256",
        ),
        (
            &format!("key_sha256 = \"{BUYER_KEY}\"\nkey_sha256_next = \"{BUYER_KEY}\""),
            "buyers.acme.key_sha256_next: must differ from key_sha256",
        ),
        // The seller's key: a key must say who is calling.
        (
            &format!("key_sha256 = \"{KEY}\""),
            "buyers.acme.key_sha256: the same key as sellers.s1",
        ),
        ("return_window_days = 366", "buyers.acme.return_window_days"),
        ("return_window_days = -1", "buyers.acme.return_window_days"),
        ("return_window_days = 1.5", "buyers.acme.return_window_days"),
        (
            "return_window_days = \"7\"",
            "buyers.acme.return_window_days",
        ),
    ];
    for (lines, expected) in cases {
        let e = errors(&[("#BUYER", lines)]);
        assert!(
            e.iter().any(|m| m.starts_with(expected)),
            "{lines}: expected {expected}, got {e:?}"
        );
    }
    for bad in [
        "sold_leads_max = 0",
        "sold_leads_max = 10000001",
        "sold_leads_max = \"1\"",
    ] {
        let e = errors(&[("#SERVER", bad)]);
        assert!(
            e.iter().any(|m| m.starts_with("server.sold_leads_max")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn two_buyers_may_not_share_a_key() {
    let second = format!(
        "key_sha256 = \"{BUYER_KEY}\"\n\n[buyers.bravo]\nping_url = \"http://127.0.0.1:9102/ping\"\npost_url = \"http://127.0.0.1:9102/post\"\nsecret_env = \"ACME_SECRET\"\nverticals = [\"auto\"]\nkey_sha256 = \"{NEXT_KEY}\"\nkey_sha256_next = \"{BUYER_KEY}\""
    );
    let e = errors(&[("#BUYER", &second)]);
    assert!(
        e.iter()
            .any(|m| m == "buyers.bravo.key_sha256_next: the same key as buyers.acme"),
        "{e:?}"
    );
}
