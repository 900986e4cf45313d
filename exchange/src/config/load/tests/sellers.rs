//! Tests of `[sellers.ID]`.

use proto::Micros;

use super::*;
use crate::config::PayoutModel;

#[test]
fn seller_keys() {
    let c = ok(&[(
        "#SELLER",
        "name = \"Seller One\"\nreserve = \"0.75\"\nrate_per_s = 50",
    )]);
    let s = &c.sellers[0];
    assert_eq!(
        (s.name.as_str(), s.reserve, s.rate_per_s),
        ("Seller One", Some(Micros(750_000)), Some(50))
    );
    assert_eq!(s.verticals, [0]);

    let with_payout = |payout: &str| {
        load_str_with_env(
            &doc(&[]).replace("{ model = \"revenue_share\", share_pct = 80 }", payout),
            &test_env,
        )
    };
    let payout = |text: &str| with_payout(text).map(|c| c.sellers[0].payout);
    assert_eq!(
        payout("{ model = \"revenue_share\", share_pct = 82.5 }"),
        Ok(PayoutModel::RevenueShare { share_bp: 8250 })
    );
    assert_eq!(
        payout("{ model = \"revenue_share\", share_pct = 100 }"),
        Ok(PayoutModel::RevenueShare { share_bp: 10_000 })
    );
    assert_eq!(
        payout("{ model = \"fixed_margin\", margin = 2.00 }"),
        Ok(PayoutModel::FixedMargin {
            margin: Micros(2_000_000)
        })
    );
    let pct = "sellers.s1.payout.share_pct: must be a percentage between 0 and 100 with at most two decimals, such as 82.5";
    assert_eq!(
        payout("{ model = \"revenue_share\", share_pct = 82.555 }")
            .unwrap_err()
            .0,
        [pct]
    );
    assert_eq!(
        payout("{ model = \"revenue_share\", share_pct = 101 }")
            .unwrap_err()
            .0,
        [pct]
    );
    assert_eq!(
        payout("{ model = \"revenue_share\", share_pct = \"80 %\" }")
            .unwrap_err()
            .0,
        [format!("{pct} (written without the % sign)")]
    );
    assert_eq!(
        payout("{ model = \"revenue_share\", share_pct = -5 }")
            .unwrap_err()
            .0,
        [pct]
    );
    // One reading with money (black-box round 14): zero however signed, no padding.
    for zero in ["-0", "-0.0", "\"-0\""] {
        assert_eq!(
            payout(&format!(
                "{{ model = \"revenue_share\", share_pct = {zero} }}"
            )),
            Ok(PayoutModel::RevenueShare { share_bp: 0 }),
            "{zero}"
        );
    }
    for padded in ["\" 80\"", "\"80 \"", "\"\\t80\""] {
        assert_eq!(
            payout(&format!(
                "{{ model = \"revenue_share\", share_pct = {padded} }}"
            ))
            .unwrap_err()
            .0,
            [pct],
            "{padded}"
        );
    }
    assert_eq!(
        payout("{ model = \"revenue_share\", margin = 1 }")
            .unwrap_err()
            .0,
        [
            "sellers.s1.payout.share_pct: is required",
            "sellers.s1.payout.margin: unknown key"
        ]
    );
    assert_eq!(
        payout("{ model = \"cpa\" }").unwrap_err().0,
        ["sellers.s1.payout.model: unknown payout model \"cpa\" (revenue_share or fixed_margin)"]
    );
    // A misspelt model: its margin is not also called unknown (black-box round 22).
    assert_eq!(
        payout("{ model = \"fixed\", margin = 2.5 }").unwrap_err().0,
        ["sellers.s1.payout.model: unknown payout model \"fixed\" (revenue_share or fixed_margin)"]
    );
    assert_eq!(
            payout("\"80%\"").unwrap_err().0,
            ["sellers.s1.payout: must be a table such as { model = \"revenue_share\", share_pct = 80 }"]
        );

    let bad = doc(&[("#SELLER", "rate_per_s = 0\nname = \"\"")]).replace(KEY, "abc");
    assert_eq!(
        load_str_with_env(&bad, &test_env).unwrap_err().0,
        [
            "sellers.s1.name: must be 1 to 200 characters",
            "sellers.s1.key_sha256: must be 64 hex digits: the SHA-256 of the seller's key",
            "sellers.s1.rate_per_s: must be a whole number between 1 and 1000000",
        ]
    );
    let no_verticals = doc(&[]).replace("verticals = [\"auto\"]\npayout", "verticals = []\npayout");
    assert_eq!(
        load_str_with_env(&no_verticals, &test_env).unwrap_err().0,
        ["sellers.s1.verticals: must name at least one vertical"]
    );
}

#[test]
fn duplicate_seller_keys() {
    let extra = format!(
            "\n[sellers.s2]\nkey_sha256 = \"{}\"\nverticals = [\"auto\"]\npayout = {{ model = \"fixed_margin\", margin = 1 }}\n",
            KEY.to_uppercase()
        );
    let text = doc(&[]) + &extra;
    assert_eq!(
        load_str_with_env(&text, &test_env).unwrap_err().0,
        ["sellers.s2.key_sha256: the same key as sellers.s1"]
    );
}

/// Black-box round 13: the checks between parties ran on the parties that read cleanly
/// only, so a seller's bad payout hid the key another seller repeats (and a buyer's
/// repeat of it was said to be another seller's), and a vertical's bad field hid a
/// buyer's filter on a field the vertical does not have. Every problem is listed at once.
#[test]
fn problems_between_parties_are_found_beside_the_parties_own() {
    let text = doc(&[
        ("#FIELD", "type = \"string\"\nlen_max = 0"),
        ("#BUYER", &format!("key_sha256 = \"{KEY}\"\nstates_include = [\"TX\"]")),
    ])
    .replace("share_pct = 80", "share_pct = 101")
    .replace(
        "state = { type = \"state\", required = true, ping = true }",
        "state = { type = \"string\", required = true, ping = true }",
    ) + &format!(
        "\n[sellers.s2]\nkey_sha256 = \"{KEY}\"\nverticals = [\"auto\"]\npayout = {{ model = \"fixed_margin\", margin = 1 }}\n"
    );
    let errors = load_str_with_env(&text, &test_env).unwrap_err().0;
    for expected in [
        "sellers.s1.payout.share_pct: must be a percentage",
        "verticals.auto.fields.extra.len_max: must be a whole number",
        "sellers.s2.key_sha256: the same key as sellers.s1",
        "buyers.acme.key_sha256: the same key as sellers.s1",
        "buyers.acme.states_include: vertical auto has no ping field named `state` of type \"state\"",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected}: {errors:#?}"
        );
    }
}

/// `sellers.ID.requests_in_flight_max` (black-box round 62d): one seller's share of the
/// server's places, a whole number from 1; absent, only the server's limit.
#[test]
fn a_sellers_in_flight_limit_loads_and_refuses_bad_values() {
    let c = ok(&[("#SELLER", "requests_in_flight_max = 7")]);
    assert_eq!(c.sellers[0].requests_in_flight_max, Some(7));
    let c = ok(&[]);
    assert_eq!(c.sellers[0].requests_in_flight_max, None);
    for bad in ["0", "-1", "1.5", "\"7\""] {
        let e = errors(&[("#SELLER", &format!("requests_in_flight_max = {bad}"))]);
        assert!(
            e.len() == 1 && e[0].contains("requests_in_flight_max"),
            "{bad}: {e:?}"
        );
    }
}

/// `sellers.ID.connections_max` (black-box round 214a): the connections one seller's
/// requests may hold, a whole number from 1 to 1,000,000; absent, the default share.
#[test]
fn a_sellers_connection_limit_loads_and_refuses_bad_values() {
    let c = ok(&[("#SELLER", "connections_max = 7")]);
    assert_eq!(c.sellers[0].connections_max, Some(7));
    let c = ok(&[]);
    assert_eq!(c.sellers[0].connections_max, None);
    for bad in ["0", "-1", "1.5", "\"7\"", "1000001"] {
        let e = errors(&[("#SELLER", &format!("connections_max = {bad}"))]);
        assert!(
            e.len() == 1 && e[0].contains("sellers.") && e[0].contains("connections_max"),
            "{bad}: {e:?}"
        );
    }
}

/// Black-box round 121b: with a shared bound set low, one seller could hold every open
/// quote (or every idempotency key) and the others got `503`, while `--check-config`
/// said nothing. A seller whose own bound reaches the shared one is warned of, with
/// several sellers; with one, or the defaults, nothing is said.
#[test]
fn a_seller_bound_that_reaches_the_shared_one_is_warned_of() {
    use crate::config::shared_bound_warnings;
    let mut c = ok(&[]);
    assert_eq!(c.sellers.len(), 1);
    c.server.quotes_open_max = 50;
    assert!(shared_bound_warnings(&c).is_empty(), "one seller");
    c.server.quotes_open_max = 1_000_000;
    let mut second = c.sellers[0].clone();
    second.id = "s2".into();
    c.sellers.push(second);
    assert!(shared_bound_warnings(&c).is_empty(), "the defaults");

    c.server.quotes_open_max = 50;
    let first = c.sellers[0].id.clone();
    let w = shared_bound_warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!(
            "sellers.{first}.quotes_open_max, sellers.s2.quotes_open_max are not below server.quotes_open_max (50)"
        )),
        "{w:?}"
    );
    c.sellers[0].quotes_open_max = 10;
    let w = shared_bound_warnings(&c);
    assert!(
        w[0].starts_with("sellers.s2.quotes_open_max is not below"),
        "{w:?}"
    );

    c.server.idempotency_keys_max = 8;
    c.sellers[0].idempotency_keys_max = Some(5);
    let w = shared_bound_warnings(&c);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[1].starts_with(
            "the idempotency key quota of server.idempotency_keys_per_seller_max (the quota of s2) is not below server.idempotency_keys_max (8)"
        ),
        "{w:?}"
    );
    // Many sellers: five named, the rest counted.
    for i in 3..=9 {
        let mut s = c.sellers[1].clone();
        s.id = format!("s{i}");
        c.sellers.push(s);
    }
    let w = shared_bound_warnings(&c);
    assert!(
        w[0].contains("sellers.s6.quotes_open_max and 3 more are not below"),
        "{w:?}"
    );
    // The sellers on the shared default are named once, by its key.
    assert!(
        w[1].starts_with(
            "the idempotency key quota of server.idempotency_keys_per_seller_max (the quota of s2, s3, s4, s5, s6 and 3 more) are not below"
        ),
        "{w:?}"
    );
}

/// What start and `--check-config` print is bounded per problem, as the reload's answer
/// is (black-box round 147a: a seller id of 5,000,000 characters made a 5 MB line).
#[test]
fn a_refusal_prints_each_problem_bounded() {
    let long = "x".repeat(100_000);
    let text = DEFAULT_TOML.replace("[sellers.demo]", &format!("[sellers.{long}]"));
    let err = load_str_with_env(&text, &|name| {
        name.starts_with("PINGPOST_DEMO_SECRET_")
            .then(|| "s".repeat(32))
    })
    .unwrap_err();
    assert!(err.0.iter().any(|e| e.len() > 100_000), "{err:?}");
    let printed = err.to_string();
    let line = printed
        .lines()
        .find(|l| l.starts_with("sellers.xxx"))
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(line.len() < 600, "{} bytes", line.len());
    assert!(
        line.ends_with("x…: the name must be 1 to 64 ASCII letters, digits, '_' or '-'"),
        "{line}"
    );
}

/// A seller's rate written with its unit is told to drop it (black-box round 203a:
/// `"200/s"` was told only the range).
#[test]
fn a_rate_written_with_its_unit_is_told_to_drop_it() {
    assert_eq!(
        errors(&[("#SELLER", "rate_per_s = \"200/s\"")]),
        ["sellers.s1.rate_per_s: must be a whole number between 1 and 1000000, written without quotes or a unit"]
    );
}
