//! Tests of `[buyers.ID]`, schedules included.

use proto::signing::Secret;
use proto::Micros;

use super::*;
use crate::config::load::buyers::{parse_clock, parse_range, show_range};
use crate::config::{Caps, HttpVersion, MinuteRange};

#[test]
fn buyer_keys() {
    let c = ok(&[(
            "#BUYER",
            "name = \"Acme Insurance LLC\"\nhttp = \"2\"\nping_timeout_ms = 80\npost_timeout_ms = 900\n\
             states_include = [\"TX\", \"OK\"]\nzip_prefixes = [\"761\", \"75\"]\ntimezone = \"America/Chicago\"\n\
             score_floor = 40\ncaps = { hourly = 1, daily = 2, weekly = 3, monthly = 4 }\nbudget_daily = 500",
        )]);
    let b = &c.buyers[0];
    assert_eq!(b.name, "Acme Insurance LLC");
    assert_eq!(b.http, HttpVersion::Http2);
    assert_eq!((b.ping_timeout_ms, b.post_timeout_ms), (80, 900));
    assert_eq!(b.states_include, ["TX", "OK"]);
    assert_eq!(b.zip_prefixes, ["761", "75"]);
    assert_eq!(b.timezone, chrono_tz::America::Chicago);
    assert_eq!(b.score_floor, Some(40));
    assert_eq!(
        b.caps,
        Caps {
            hourly: Some(1),
            daily: Some(2),
            weekly: Some(3),
            monthly: Some(4),
            budget_daily: Some(Micros(500_000_000))
        }
    );
    assert_eq!(b.secret_env, "ACME_SECRET");
    assert_eq!(
        b.secret.sign("id", 1, b"x"),
        Secret::new("top-secret-value").unwrap().sign("id", 1, b"x")
    );
    assert_eq!(c.buyers_by_vertical, [vec![0]]);
    assert!(b.secret_next.is_none());

    let p = "buyers.acme";
    assert_eq!(
            errors(&[(
                "#BUYER",
                "http = \"3\"\npost_timeout_ms = 60001\nstates_include = [\"TX\", \"tx\", \"TX\"]\nstates_exclude = [\"TX\", \"CA\"]\n\
                 zip_prefixes = [\"7618a\", \"\", \"123456\"]\ntimezone = \"Mars/Olympus\"\nscore_floor = 101\n\
                 caps = { hourly = 0, daily = -1, weekly = \"600\" }\nbudget_daily = 0.0000001"
            )]),
            [
                format!("{p}.http: must be \"1.1\" or \"2\" (HTTP/3 over QUIC is not implemented yet)"),
                format!("{p}.post_timeout_ms: must be a whole number between 1 and 60000"),
                format!("{p}.states_include[1]: \"tx\" is not a US state code (two upper-case letters such as \"TX\")"),
                format!("{p}.states_include[2]: \"TX\" is listed twice"),
                format!("{p}.states_exclude[0]: \"TX\" is also in states_include"),
                format!("{p}.zip_prefixes[0]: must be 1 to 5 digits"),
                format!("{p}.zip_prefixes[1]: must be 1 to 5 digits"),
                format!("{p}.zip_prefixes[2]: must be 1 to 5 digits"),
                format!("{p}.timezone: unknown time zone \"Mars/Olympus\" (an IANA name such as \"America/Chicago\")"),
                format!("{p}.score_floor: must be a whole number between 0 and 100"),
                format!("{p}.caps.hourly: must be a whole number between 1 and 4294967295"),
                format!("{p}.caps.daily: must be a whole number between 1 and 4294967295"),
                format!("{p}.caps.weekly: must be a whole number between 1 and 4294967295, written without quotes"),
                format!("{p}.budget_daily: must have at most 6 decimal places"),
            ]
        );
    // Exclusions alone are fine.
    assert_eq!(
        ok(&[("#BUYER", "states_exclude = [\"CA\"]")]).buyers[0].states_exclude,
        ["CA"]
    );
    // A zone whose clocks move by part of an hour is refused (black-box round 109b:
    // Lord Howe's 30-minute daylight saving made overlapping hours, and an hour sold past
    // its cap); whole-hour changes of odd offsets are fine.
    for zone in ["Australia/Lord_Howe", "Australia/LHI"] {
        assert_eq!(
            errors(&[("#BUYER", &format!("timezone = \"{zone}\""))]),
            [format!("{p}.timezone: \"{zone}\": its clocks change by part of an hour, which the exchange's hourly cap windows cannot follow yet; choose a zone whose clocks change by whole hours (a neighbouring one, or \"UTC\")")],
            "{zone}"
        );
    }
    for zone in [
        "America/St_Johns",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Pacific/Chatham",
        "Australia/Adelaide",
        "America/New_York",
    ] {
        let c = ok(&[("#BUYER", &format!("timezone = \"{zone}\""))]);
        assert_eq!(c.buyers[0].timezone.name(), zone);
    }
}

#[test]
fn a_full_list_of_zip_prefixes_loads_and_its_repeats_are_each_named() {
    // Every five-digit prefix (100,000, the list limit), then the same list with two
    // items repeating earlier ones: each repeat is named at its own index.
    let all: Vec<String> = (0..100_000).map(|i| format!("\"{i:05}\"")).collect();
    let c = ok(&[("#BUYER", &format!("zip_prefixes = [{}]", all.join(",")))]);
    assert_eq!(c.buyers[0].zip_prefixes.len(), 100_000);
    let mut repeated = all.clone();
    repeated[99_998] = "\"00007\"".into();
    repeated[99_999] = "\"76180\"".into();
    assert_eq!(
        errors(&[(
            "#BUYER",
            &format!("zip_prefixes = [{}]", repeated.join(","))
        )]),
        [
            "buyers.acme.zip_prefixes[99998]: \"00007\" is listed twice".to_string(),
            "buyers.acme.zip_prefixes[99999]: \"76180\" is listed twice".to_string(),
        ]
    );
}

/// A geography filter on a field the vertical does not send in pings (renamed, not a
/// ping field, or of another type) could never apply: refused at the filter's key.
#[test]
fn geography_filters_need_the_ping_fields_they_read() {
    let filters = "states_include = [\"TX\"]\nstates_exclude = [\"CA\"]\nzip_prefixes = [\"761\"]";
    assert!(errors(&[("#BUYER", filters)]).is_empty());
    let state = "state = { type = \"state\", required = true, ping = true }";
    let zip = "[verticals.auto.fields.zip]\ntype = \"zip\"\nping = true";
    for (case, state_to, zip_to) in [
        (
            "renamed",
            "st = { type = \"state\", required = true, ping = true }",
            "[verticals.auto.fields.postal]\ntype = \"zip\"\nping = true",
        ),
        (
            "not ping fields",
            "state = { type = \"state\", required = true }",
            "[verticals.auto.fields.zip]\ntype = \"zip\"",
        ),
        (
            "of another type",
            "state = { type = \"string\", required = true, ping = true }",
            "[verticals.auto.fields.zip]\ntype = \"integer\"\nping = true",
        ),
    ] {
        let text = doc(&[("#BUYER", filters)])
            .replace(state, state_to)
            .replace(zip, zip_to);
        assert!(text.contains(state_to) && text.contains(zip_to), "{case}");
        let errs = load_str_with_env(&text, &test_env).unwrap_err().0;
        for key in ["states_include", "states_exclude", "zip_prefixes"] {
            let want = format!("buyers.acme.{key}: vertical auto has no ping field");
            assert!(
                errs.iter().any(|e| e.starts_with(&want)),
                "{case}: {key} in {errs:?}"
            );
        }
    }
    // A buyer without geography filters needs neither field.
    let text = doc(&[])
        .replace(
            state,
            "st = { type = \"state\", required = true, ping = true }",
        )
        .replace(zip, "");
    assert!(load_str_with_env(&text, &test_env).is_ok());
}

#[test]
fn buyer_urls() {
    let with_ping = |url: &str| {
        let text = doc(&[]).replace("http://127.0.0.1:9101/ping", url);
        load_str_with_env(&text, &test_env).map(|c| c.buyers[0].ping_url.clone())
    };
    assert_eq!(
        with_ping("https://buyer.example/v1/ping?x=1"),
        Ok(Some("https://buyer.example/v1/ping?x=1".into()))
    );
    let scheme = "buyers.acme.ping_url: must be an http:// or https:// URL such as \"https://buyer.example/ping\"";
    for bad in [
        "ftp://x/ping",
        "/ping",
        "127.0.0.1:9101/ping",
        "not a url",
        "",
    ] {
        assert_eq!(with_ping(bad).unwrap_err().0, [scheme], "{bad}");
    }
    // A post URL is shown a post URL's example (black-box round 49: a ping URL's).
    let text = doc(&[]).replace(
        "post_url = \"http://127.0.0.1:9101/post\"",
        "post_url = \"ftp://127.0.0.1:9101/post\"",
    );
    assert_eq!(
        load_str_with_env(&text, &test_env).unwrap_err().0,
        ["buyers.acme.post_url: must be an http:// or https:// URL such as \"https://buyer.example/post\""]
    );
    // A port past 16 bits, or 0 (black-box round 37: they passed, and every call failed).
    for (bad, port) in [
        ("http://127.0.0.1:99999/ping", "99999"),
        ("http://127.0.0.1:65536/ping", "65536"),
        ("http://127.0.0.1:0/ping", "0"),
        ("https://x.example:99999/p", "99999"),
        ("http://[::1]:70000/ping", "70000"),
    ] {
        assert_eq!(
            with_ping(bad).unwrap_err().0,
            [format!(
                "buyers.acme.ping_url: port {port}: must be 1 to 65535"
            )],
            "{bad}"
        );
    }
    // A signed port (black-box round 229a: `+28812` passed).
    assert_eq!(
        with_ping("http://localhost:+28812/ping").unwrap_err().0,
        ["buyers.acme.ping_url: port +28812: must be 1 to 65535"]
    );
    // Names that could never resolve, and a host that is not ASCII, are said so (black-box
    // round 229a: they passed, or were told to be an http:// or https:// URL).
    let long_label = format!("https://{}.example/ping", "a".repeat(64));
    let long_name = format!("https://{}example/ping", "abcdefghi.".repeat(25));
    for bad in [
        long_label.as_str(),
        long_name.as_str(),
        "https://a..b/ping",
        "https://-lead.example/ping",
        "https://lead-.example/ping",
        "https://*.example/ping",
    ] {
        let e = with_ping(bad).unwrap_err().0;
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with("buyers.acme.ping_url: host ")
                && e[0].contains("is no name that could resolve"),
            "{bad}: {e:?}"
        );
    }
    assert_eq!(
        with_ping("https://bücher.example/ping").unwrap_err().0,
        ["buyers.acme.ping_url: must be ASCII: an internationalized host name in its punycode form (xn--…), other characters percent-encoded"]
    );
    for good in [
        "https://xn--bcher-kva.example/ping",
        "https://bids_1.buyer-2.example./ping",
        "https://b.example:443/ping",
    ] {
        assert!(with_ping(good).is_ok(), "{good}");
    }
    // Credentials in the URL would never be sent (black-box round 67d).
    for bad in [
        "http://user:s3cretpw@127.0.0.1:28318/ping",
        "https://user@buyer.example/ping",
        "http://user@127.0.0.1:65536/ping",
    ] {
        let e = with_ping(bad).unwrap_err().0;
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(
            e[0].starts_with("buyers.acme.ping_url: must not carry credentials"),
            "{e:?}"
        );
        assert!(!e[0].contains("s3cretpw"), "{e:?}");
    }
    for good in [
        "http://127.0.0.1:1/ping",
        "http://127.0.0.1:65535/ping",
        "http://[::1]:8080/ping",
        "http://[::1]/ping",
    ] {
        assert_eq!(with_ping(good), Ok(Some(good.into())));
    }
}

/// Display names go back to sellers and into the ledger: no control characters or
/// invisible marks (black-box round 37); other letters, accents and symbols are kept.
#[test]
fn display_names_refuse_control_characters_and_invisible_marks() {
    let named = |name: &str| {
        let text = doc(&[("#BUYER", &format!("name = {}", toml::Value::from(name)))]);
        load_str_with_env(&text, &test_env).map(|c| c.buyers[0].name.clone())
    };
    let message = "buyers.acme.name: must not contain control characters (line breaks, tabs) or characters that print as nothing (zero-width and direction marks, fillers, tags); a zero-width joiner or non-joiner may join two characters, and at most four combining marks may sit on one character (none on nothing)";
    for bad in [
        "Acme\nINFO fake",
        "Acme\u{7}",
        "Acme\tInc",
        "Acme\u{85}",
        "Acme\u{2028}",
        "Acme\u{202E}cnI",
        "Ac\u{200B}me",
        "Acme\u{2066}",
        "\u{FEFF}Acme",
        // Round 38: direction marks, fillers and other characters that print as nothing.
        "Acme\u{061C}",
        "Ac\u{00AD}me",
        "Acme\u{180E}",
        "Acme\u{FFF9}",
        "Acme\u{E0041}",
        "\u{E0100}Acme",
        "Ac\u{034F}me",
        "Acme\u{17B4}",
        "\u{3164}",
        "Acme \u{3164}",
        // A joiner that joins nothing.
        "\u{200C}Acme",
        "Acme\u{200D}",
        "Acme \u{200D} Inc",
        // Round 39: runs of joiners or selectors, and tags that are not a flag's.
        "A\u{200D}\u{200D}B",
        "A\u{200C}\u{200D}B",
        "\u{1F468}\u{200D}\u{200D}\u{1F469}",
        "\u{2764}\u{FE0F}\u{FE0F}",
        "\u{2764}\u{FE0E}\u{FE0F}",
        "A\u{E0100}\u{E0100}",
        "\u{1F3F4}\u{E0068}\u{E0065}\u{E006C}\u{E006C}\u{E006F}\u{E0020}\u{E0068}\u{E0069}\u{E007F}",
        "\u{1F3F4}\u{E0047}\u{E0042}\u{E007F}",
        "\u{1F3F4}\u{E0067}\u{E0062}",
        "\u{1F3F4}\u{E007F}",
        "\u{1F3F4}\u{E0067}\u{E0062}\u{E007F}\u{E007F}",
        "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E0078}\u{E0079}\u{E007F}",
        // Round 40: a flag shape that hides text, no look of its own, marks on nothing
        // or stacked past four.
        "Acme \u{1F3F4}\u{E0070}\u{E0061}\u{E0079}\u{E007F}",
        "\u{1F3F4}\u{E0075}\u{E0073}\u{E007F}",
        "Acme\u{FFFF}",
        "Acme\u{FDD0}",
        "Acme\u{E000}",
        "\u{301}",
        "a\u{301}\u{301}\u{301}\u{301}\u{301}",
    ] {
        assert_eq!(named(bad).unwrap_err().0, [message], "{bad:?}");
    }
    for good in [
        "Acme Insurance LLC",
        "Société Générale",
        "Acme & Co. (TX) – 日本",
        // A Persian word that needs its zero-width non-joiner, an emoji family (ZWJ), a
        // heart with its emoji presentation selector, Scotland's flag (tags), a
        // no-break space.
        "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}",
        "Family \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
        "Love \u{2764}\u{FE0F}",
        "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F} Leads",
        "Acme\u{A0}Inc",
        // A heart on fire (a selector, then a joiner), a rainbow flag, England's flag.
        "\u{2764}\u{FE0F}\u{200D}\u{1F525}",
        "\u{1F3F3}\u{FE0F}\u{200D}\u{1F308}",
        "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
        // A keycap (selector, then an enclosing mark), accents, Hindi with a virama and a
        // joiner, Mongolian with a free variation selector, a skin tone.
        "Call 1\u{FE0F}\u{20E3}",
        "Cafe\u{301} Re\u{301}sume\u{301}",
        "\u{915}\u{94D}\u{200D}\u{937}",
        "\u{1820}\u{180B}\u{1821}",
        "\u{1F44D}\u{1F3FD}",
    ] {
        assert_eq!(named(good), Ok(good.to_string()), "{good:?}");
    }
    let seller = doc(&[("#SELLER", "name = \"S\\r\\nX-Injected: 1\"")]);
    assert_eq!(
        load_str_with_env(&seller, &test_env).unwrap_err().0,
        [message.replace("buyers.acme", "sellers.s1")]
    );
}

#[test]
fn fixed_price_buyers() {
    let fixed = doc(&[("#BUYER", "fixed_price = 4.00")])
        .replace("ping_url = \"http://127.0.0.1:9101/ping\"\n", "");
    let c = load_str_with_env(&fixed, &test_env).unwrap();
    assert_eq!(
        (c.buyers[0].ping_url.as_deref(), c.buyers[0].fixed_price),
        (None, Some(Micros(4_000_000)))
    );
    assert_eq!(
            errors(&[("#BUYER", "fixed_price = 4")]),
            ["buyers.acme.fixed_price: applies only to a buyer without ping_url; a pinged buyer's price is its bid"]
        );
    // Above the vertical's bid_max, the guard its standing bid would pass (black-box
    // round 37: a fixed price of 600 under bid_max 500 won at 600); at it, it loads.
    let over = doc(&[
        ("#BUYER", "fixed_price = 600"),
        ("#VERTICAL", "bid_max = 500"),
    ])
    .replace("ping_url = \"http://127.0.0.1:9101/ping\"\n", "");
    assert_eq!(
        load_str_with_env(&over, &test_env).unwrap_err().0,
        ["buyers.acme.fixed_price: 600.00 is above verticals.auto.bid_max (500.00), the highest bid that vertical takes"]
    );
    let at = over.replace("fixed_price = 600", "fixed_price = 500");
    assert!(load_str_with_env(&at, &test_env).is_ok());
}

/// A deadline that only disagrees with the server's reserve does not hide the checks
/// across sections: both problems are listed at once (black-box round 47: the floor
/// above `bid_max` showed only once the deadline was fixed).
#[test]
fn a_deadline_under_the_reserve_does_not_hide_a_floor_above_bid_max() {
    let mut found = errors(&[
        ("#SERVER", "response_reserve_ms = 10"),
        (
            "#VERTICAL",
            "floor = 6\nbid_max = 5\nauction_deadline_ms = 1",
        ),
    ]);
    found.sort();
    assert_eq!(
        found,
        [
            "verticals.auto.auction_deadline_ms: must be more than server.response_reserve_ms (10 ms), which is kept back to answer the seller",
            "verticals.auto.floor: 6.00 is above bid_max (5.00): no bid could ever clear it",
        ]
    );
}

/// Any other problem of the vertical does not hide the checks across sections on its
/// prices: both are listed at once (black-box round 48: a field's problem hid a `floor`
/// above `bid_max`).
#[test]
fn another_problem_of_the_vertical_does_not_hide_a_floor_above_bid_max() {
    let mut found = errors(&[("#VERTICAL", "floor = 6\nbid_max = 5\ncurrency = \"usd\"")]);
    found.sort();
    assert_eq!(
        found,
        [
            "verticals.auto.currency: must be three upper-case letters such as \"USD\"",
            "verticals.auto.floor: 6.00 is above bid_max (5.00): no bid could ever clear it",
        ]
    );
    // Prices that do not read are not checked across sections: only their own problem.
    let found = errors(&[("#VERTICAL", "floor = -1\nbid_max = 5")]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("verticals.auto.floor: "), "{found:?}");
}

/// A seller's or a fixed-price buyer's other problem does not hide the prices of theirs
/// that could never sell: both are listed at once (black-box round 110c: a seller's bad
/// `name` hid its `reserve`, and a buyer's bad `ping_timeout_ms` its `fixed_price`, until
/// a second check). A price that does not read is not checked across sections.
#[test]
fn another_problem_of_the_party_does_not_hide_a_price_that_could_never_sell() {
    let mut found = errors(&[
        ("#VERTICAL", "bid_max = 5"),
        ("#SELLER", "reserve = 6\nrate_per_s = 0"),
    ]);
    found.sort();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("sellers.s1.rate_per_s: "), "{found:?}");
    assert!(
        found[1].starts_with("sellers.s1.reserve: in vertical auto, the highest bid it takes (bid_max 5.00) would pay this seller 4.00, under its reserve of 6.00"),
        "{found:?}"
    );
    let fixed = doc(&[
        ("#BUYER", "fixed_price = 600\nping_timeout_ms = 0"),
        ("#VERTICAL", "bid_max = 500"),
    ])
    .replace("ping_url = \"http://127.0.0.1:9101/ping\"\n", "");
    let mut found = load_str_with_env(&fixed, &test_env).unwrap_err().0;
    found.sort();
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        found[0],
        "buyers.acme.fixed_price: 600.00 is above verticals.auto.bid_max (500.00), the highest bid that vertical takes"
    );
    assert!(
        found[1].starts_with("buyers.acme.ping_timeout_ms: "),
        "{found:?}"
    );
    // A reserve that does not read gets only its own problem.
    let found = errors(&[("#VERTICAL", "bid_max = 5"), ("#SELLER", "reserve = -6")]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("sellers.s1.reserve: "), "{found:?}");
    assert!(!found[0].contains("could ever be quoted"), "{found:?}");
}

/// Prices that could never sell are refused, each at its key (black-box round 37).
#[test]
fn prices_that_could_never_sell_are_refused() {
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case<'_>; 6] = [
        (
            &[("#VERTICAL", "floor = 10\nbid_max = 5")],
            &["verticals.auto.floor: 10.00 is above bid_max (5.00): no bid could ever clear it"],
        ),
        (
            // 80 % of 5 is 4, under a reserve of 6.
            &[("#VERTICAL", "bid_max = 5"), ("#SELLER", "reserve = 6")],
            &["sellers.s1.reserve: in vertical auto, the highest bid it takes (bid_max 5.00) would pay this seller 4.00, under its reserve of 6.00: none of its leads there could ever be quoted"],
        ),
        (
            // The floor is compared with the seller's price too: 80 % of 5 is under 4.5.
            &[("#VERTICAL", "bid_max = 5\nfloor = 4.5")],
            &["sellers.s1.payout: in vertical auto, the highest bid it takes (bid_max 5.00) would pay this seller 4.00, under the vertical's floor of 4.50: none of its leads there could ever be quoted"],
        ),
        (
            &[("#VERTICAL", "bid_max = 5"), ("#SELLER", "reserve = 4")],
            &[],
        ),
        (
            &[("#VERTICAL", "bid_max = 5"), ("#SELLER", "reserve = 4.000001")],
            &["sellers.s1.reserve: in vertical auto, the highest bid it takes (bid_max 5.00) would pay this seller 4.00, under its reserve of 4.000001: none of its leads there could ever be quoted"],
        ),
        (
            &[("#VERTICAL", "floor = 1\nbid_max = 100"), ("#SELLER", "reserve = 80")],
            &[],
        ),
    ];
    for (edits, want) in cases {
        assert_eq!(errors(edits), want, "{edits:?}");
    }
    // A fixed margin that takes the whole highest bid pays the seller nothing.
    let margin = doc(&[("#VERTICAL", "bid_max = 5")]).replace(
        "payout = { model = \"revenue_share\", share_pct = 80 }",
        "payout = { model = \"fixed_margin\", margin = 5 }",
    );
    assert_eq!(
        load_str_with_env(&margin, &test_env).unwrap_err().0,
        ["sellers.s1.payout: in vertical auto, the highest bid it takes (bid_max 5.00) would pay this seller nothing: none of its leads there could ever be quoted"]
    );
    assert!(load_str_with_env(
        &margin.replace("margin = 5 }", "margin = 4.99 }"),
        &test_env
    )
    .is_ok());
    // A share of 0 % is the documented way to stop a seller: it loads.
    let stopped = doc(&[("#VERTICAL", "bid_max = 5")]).replace("share_pct = 80", "share_pct = 0");
    assert!(load_str_with_env(&stopped, &test_env).is_ok());
}

#[test]
fn secrets_are_checked_and_never_shown() {
    let run = |var: &str| {
        let text = doc(&[]).replace("\"ACME_SECRET\"", &format!("\"{var}\""));
        load_str_with_env(&text, &test_env).unwrap_err().0
    };
    assert_eq!(
        run("NOPE"),
        ["buyers.acme.secret_env: environment variable NOPE is not set"]
    );
    assert_eq!(
            run("BAD_SECRET"),
            ["buyers.acme.secret_env: environment variable BAD_SECRET does not hold a valid secret (empty, or not base64 after whsec_)"]
        );
    assert_eq!(
            run("EMPTY_SECRET"),
            ["buyers.acme.secret_env: environment variable EMPTY_SECRET does not hold a valid secret (empty, or not base64 after whsec_)"]
        );
    // Black-box round 49b: a one-character secret was accepted. Fewer than 16 key
    // bytes (the text itself, or the base64 after `whsec_`: 15 bytes here) are refused.
    for var in ["ONE_CHAR", "SHORT_SECRET", "SHORT_WHSEC"] {
        assert_eq!(
            run(var),
            [format!(
                "buyers.acme.secret_env: environment variable {var} holds a secret shorter \
                 than 16 bytes: a short key can be guessed; use at least 16 random bytes \
                 (`whsec_` and 24 to 64 bytes in base64, as Standard Webhooks suggests)"
            )],
        );
    }
    assert_eq!(
        run("A=B"),
        ["buyers.acme.secret_env: must be an environment variable name (ASCII letters, digits and _, not starting with a digit, and not _ alone, which the shell sets itself)"]
    );
    for e in run("BAD_SECRET")
        .iter()
        .chain(&run("NOPE"))
        .chain(&run("SHORT_SECRET"))
    {
        assert!(
            !e.contains("not-base64") && !e.contains("top-secret") && !e.contains("fifteen"),
            "{e}"
        );
    }
    // Debug of a loaded config does not show the secret either.
    assert!(!format!("{:?}", ok(&[])).contains("top-secret-value"));
}

#[test]
fn schedules() {
    let schedule = |s: &str| {
        load(&[("#BUYER", &format!("schedule = {s}"))]).map(|c| c.buyers[0].schedule.clone())
    };
    let r = |start, end| MinuteRange { start, end };
    let week = schedule("{ mon = [\"13:00-24:00\", \"08:00-12:30\"], sun = [] }")
        .unwrap()
        .unwrap();
    assert_eq!(week.days[0], [r(480, 750), r(780, 1440)]);
    assert!(week.days[1..].iter().all(Vec::is_empty));
    // Touching ranges do not overlap (they are half-open).
    assert!(schedule("{ fri = [\"08:00-12:00\", \"12:00-13:00\"] }").is_ok());
    assert_eq!(
        schedule("{}").unwrap().unwrap().days,
        <[Vec<MinuteRange>; 7]>::default()
    );

    let p = "buyers.acme.schedule";
    assert_eq!(
            schedule("{ tue = [\"08:00-12:00\", \"11:00-13:00\"], wed = \"08:00-09:00\", thu = [\"8:00-9:00\", \"24:00-24:00\", \"10:00-10:00\"] }").unwrap_err().0,
            [
                format!("{p}.tue: ranges 08:00-12:00 and 11:00-13:00 overlap"),
                format!("{p}.wed: must be a list of strings"),
                format!("{p}.thu[0]: \"8:00-9:00\" must be a range \"HH:MM-HH:MM\" such as \"08:00-20:00\""),
                format!("{p}.thu[1]: \"24:00-24:00\" must be a range \"HH:MM-HH:MM\" such as \"08:00-20:00\""),
                format!("{p}.thu[2]: \"10:00-10:00\" must end after it starts (split a range that crosses midnight in two)"),
            ]
        );
    assert_eq!(
        schedule("\"weekdays\"").unwrap_err().0,
        [format!(
            "{p}: must be a table of days such as {{ mon = [\"08:00-20:00\"] }}"
        )]
    );
}

#[test]
fn clock_and_range_parsing() {
    assert_eq!(parse_clock("00:00"), Some(0));
    assert_eq!(parse_clock("23:59"), Some(1439));
    assert_eq!(parse_clock("24:00"), Some(1440));
    for bad in [
        "24:01", "12:60", "1:00", "12:0", "ab:cd", "1200", "+1:00", "-1:00",
    ] {
        assert_eq!(parse_clock(bad), None, "{bad}");
    }
    assert_eq!(
        parse_range("08:00 - 20:00"),
        Ok(MinuteRange {
            start: 480,
            end: 1200
        })
    );
    assert!(parse_range("08:00").is_err());
    assert!(parse_range("08:00-20:00-21:00").is_err());
    // Plain spaces at either end too; no other white space (black-box round 100b).
    assert!(parse_range(" 08:00-20:00 ").is_ok());
    for bad in ["08:00\u{a0}-20:00", "\t08:00-20:00", "08:00-20:00\u{2003}"] {
        assert!(parse_range(bad).is_err(), "{bad:?}");
    }
    assert_eq!(
        show_range(MinuteRange {
            start: 65,
            end: 1440
        }),
        "01:05-24:00"
    );
}

/// A buyer moving to a new signing secret: `secret_env_next` signs every message too.
/// The same variable or the same key as `secret_env`, an unset or short one, are errors
/// naming the key, never the value; nor may the admin token be either secret.
#[test]
fn the_next_signing_secret_loads_and_refuses_bad_values() {
    let c = ok(&[("#BUYER", "secret_env_next = \"ACME_NEXT\"")]);
    let next = c.buyers[0].secret_next.as_ref().expect("the next secret");
    assert_eq!(
        next.sign("id", 1, b"x"),
        Secret::new("the-next-secret-value")
            .unwrap()
            .sign("id", 1, b"x")
    );
    let p = "buyers.acme.secret_env_next";
    for (value, says) in [
        ("ACME_SECRET", "names the variable secret_env names"),
        ("SAME_AS_ACME", "holds the same key as secret_env"),
        ("ACME_KEY_AS_WHSEC", "holds the same key as secret_env"),
        (
            "NOT_SET_ANYWHERE",
            "environment variable NOT_SET_ANYWHERE is not set",
        ),
        ("SHORT_SECRET", "holds a secret shorter than 16 bytes"),
        ("not a name", "must be an environment variable name"),
    ] {
        let e = errors(&[("#BUYER", &format!("secret_env_next = \"{value}\""))]);
        assert!(
            e.len() == 1 && e[0].starts_with(p) && e[0].contains(says),
            "{value}: {e:?}"
        );
        assert!(
            e.iter()
                .all(|m| !m.contains("top-secret-value") && !m.contains("fifteen")),
            "{e:?}"
        );
    }
    // The admin token may not be the next secret either.
    let e = errors(&[(
        "#BUYER",
        "secret_env_next = \"ACME_NEXT\"\n[admin]\ntoken_env = \"ACME_NEXT\"\nlisten = \"127.0.0.1:8081\"",
    )]);
    assert!(
        e.iter()
            .any(|m| m.contains("the variable buyers.acme.secret_env_next names too")),
        "{e:?}"
    );
}

/// Black-box round 169b: two buyers could sign with one key and nothing was said, so
/// each could forge the exchange's signed requests to the other. Buyers posting to
/// different hosts with one key (current or next) are warned of; on one host (one
/// business's campaigns), or with keys of their own, nothing is said.
#[test]
fn buyers_on_different_hosts_sharing_a_signing_key_are_warned_of() {
    use crate::config::shared_secret_warnings;
    let mut c = ok(&[]);
    let key = |text: &str| Secret::new(text).unwrap();
    c.buyers[0].secret = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    c.buyers[0].post_url = "https://one.example/post".into();
    c.buyers[0].ping_url = Some("https://one.example/ping".into());
    let first = c.buyers[0].id.clone();
    let mut second = c.buyers[0].clone();
    second.id = "b2".into();
    second.post_url = "https://ONE.example.:8443/other".into();
    second.ping_url = None;
    c.buyers.push(second);
    assert!(shared_secret_warnings(&c).is_empty(), "one host");
    // Round 172a: one host in two spellings is one host; a ping host is a host too.
    c.buyers[0].post_url = "http://127.0.0.1:9/post".into();
    c.buyers[0].ping_url = Some("http://[::ffff:127.0.0.1]:9/ping".into());
    c.buyers[1].post_url = "http://[::ffff:7f00:1]:9/post".into();
    assert!(
        shared_secret_warnings(&c).is_empty(),
        "one host, spelled three ways"
    );
    c.buyers[0].ping_url = Some("https://elsewhere.example/ping".into());
    assert_eq!(
        shared_secret_warnings(&c).len(),
        1,
        "a ping host of its own"
    );
    c.buyers[0].ping_url = None;
    c.buyers[0].post_url = "https://one.example/post".into();

    c.buyers[1].post_url = "https://two.example/post".into();
    let w = shared_secret_warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!("buyers {first}, b2 sign with one key"))
            && w[0].contains("go to more than one host"),
        "{w:?}"
    );
    // The same key written another way is the same key.
    c.buyers[1].secret = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    assert_eq!(shared_secret_warnings(&c).len(), 1);

    // Keys of their own: nothing, until one's next key is the other's key.
    c.buyers[1].secret = key("another secret of enough bytes");
    assert!(shared_secret_warnings(&c).is_empty(), "own keys");
    c.buyers[1].secret_next = Some(key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    let w = shared_secret_warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    // A buyer whose next key is its own current one is one holder, not two.
    c.buyers.truncate(1);
    c.buyers[0].secret_next = Some(key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    assert!(shared_secret_warnings(&c).is_empty(), "one buyer");
    // With another holder on another host, the one holding it twice is named once.
    let mut third = c.buyers[0].clone();
    third.id = "b3".into();
    third.secret_next = None;
    third.post_url = "https://three.example/post".into();
    c.buyers.push(third);
    let w = shared_secret_warnings(&c);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with(&format!("buyers {first}, b3 sign with one key")),
        "{w:?}"
    );
}

/// A `budget_daily` that leaves a buyer nothing it can buy (under the vertical's floor,
/// 0, or under its own fixed price) loads, with a warning naming the buyer and the
/// vertical (black-box round 198c: it passed `--check-config` without a word, while a
/// `fixed_price` of 0 is refused). A budget that can buy gives none.
#[test]
fn a_budget_that_can_buy_nothing_is_warned_of() {
    let two_buyers = |budget_acme: &str, floor: &str| {
        ok(&[
            ("#VERTICAL", &format!("floor = {floor}")),
            (
                "#BUYER",
                &format!(
                    "budget_daily = {budget_acme}\n[buyers.flat]\nfixed_price = 5\npost_url = \"http://127.0.0.1:9102/post\"\nsecret_env = \"ACME_NEXT\"\nverticals = [\"auto\"]\nbudget_daily = 3"
                ),
            ),
        ])
    };
    let c = two_buyers("1", "2");
    assert_eq!(
        crate::config::budget_warnings(&c),
        [
            "buyers.acme.budget_daily: 1.00 leaves this buyer nothing it can buy in auto (floor 2.00): no bid under a vertical's floor is quoted and a buyer pays its bid, so it is never pinged there (skipped as capped)",
            "buyers.flat.budget_daily: 3.00 is under its fixed_price of 5.00: this buyer can never buy a lead",
        ]
    );
    assert_eq!(crate::config::warnings(&c).len(), 2);
    let zero = two_buyers("0", "0");
    assert!(
        crate::config::budget_warnings(&zero)[0]
            .starts_with("buyers.acme.budget_daily: 0.00 leaves"),
        "{:?}",
        crate::config::budget_warnings(&zero)
    );
    // Budgets it can spend: no word of acme (the fixed-price buyer's stays).
    let fine = two_buyers("2", "2");
    assert_eq!(crate::config::budget_warnings(&fine).len(), 1);
    assert!(crate::config::budget_warnings(&fine)[0].starts_with("buyers.flat."));
}

/// Black-box round 244a: a cap over the cap of a longer window that holds it is warned
/// of (never reached); a weekly cap over the monthly one is not (a week may straddle two
/// months); an unknown cap key is told the four there are.
#[test]
fn a_cap_a_longer_window_s_cap_keeps_from_being_reached_is_warned_of() {
    let with = |caps: &str| ok(&[("#BUYER", &format!("caps = {{ {caps} }}"))]);
    assert_eq!(
        crate::config::cap_warnings(&with("hourly = 10, daily = 5")),
        ["buyers.acme.caps: hourly = 10 is over daily = 5: every hour is inside a day, so this buyer gets at most 5 leads in any hour and its hourly cap is never reached"]
    );
    // The lowest of the longer windows' caps under it is named, once per cap.
    assert_eq!(
        crate::config::cap_warnings(&with("hourly = 10, daily = 8, weekly = 20, monthly = 3")),
        [
            "buyers.acme.caps: hourly = 10 is over monthly = 3: every hour is inside a month, so this buyer gets at most 3 leads in any hour and its hourly cap is never reached",
            "buyers.acme.caps: daily = 8 is over monthly = 3: every day is inside a month, so this buyer gets at most 3 leads in any day and its daily cap is never reached",
        ]
    );
    assert_eq!(
        crate::config::warnings(&with("hourly = 10, daily = 5")).len(),
        1
    );
    for fine in [
        "hourly = 5, daily = 5",
        "hourly = 2, daily = 10, weekly = 50, monthly = 100",
        "weekly = 50, monthly = 40",
        "daily = 7",
    ] {
        assert!(
            crate::config::cap_warnings(&with(fine)).is_empty(),
            "{fine}: {:?}",
            crate::config::cap_warnings(&with(fine))
        );
    }
    let errs = errors(&[("#BUYER", "caps = { yearly = 100 }")]);
    assert_eq!(
        errs,
        ["buyers.acme.caps.yearly: unknown key (the caps are hourly, daily, weekly and monthly)"]
    );
}

/// `http` asking for HTTP/3 is told it is not implemented yet; any other wrong value is
/// told only the two it may be (black-box round 198a).
#[test]
fn http_3_is_told_it_is_not_there_yet() {
    let not_yet =
        "buyers.acme.http: must be \"1.1\" or \"2\" (HTTP/3 over QUIC is not implemented yet)";
    for v in ["\"h3\"", "\"HTTP/3\"", "\"quic\"", "3"] {
        assert_eq!(
            errors(&[("#BUYER", &format!("http = {v}"))]),
            [not_yet],
            "{v}"
        );
    }
    for v in ["\"h2\"", "2", "\"1.0\""] {
        assert_eq!(
            errors(&[("#BUYER", &format!("http = {v}"))]),
            ["buyers.acme.http: must be \"1.1\" or \"2\""],
            "{v}"
        );
    }
}
