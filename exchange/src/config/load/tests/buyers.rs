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

    let p = "buyers.acme";
    assert_eq!(
            errors(&[(
                "#BUYER",
                "http = \"3\"\npost_timeout_ms = 60001\nstates_include = [\"TX\", \"tx\", \"TX\"]\nstates_exclude = [\"TX\", \"CA\"]\n\
                 zip_prefixes = [\"7618a\", \"\", \"123456\"]\ntimezone = \"Mars/Olympus\"\nscore_floor = 101\n\
                 caps = { hourly = 0, daily = -1 }\nbudget_daily = 0.0000001"
            )]),
            [
                format!("{p}.http: must be \"1.1\" or \"2\""),
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
                format!("{p}.budget_daily: must have at most 6 decimal places"),
            ]
        );
    // Exclusions alone are fine.
    assert_eq!(
        ok(&[("#BUYER", "states_exclude = [\"CA\"]")]).buyers[0].states_exclude,
        ["CA"]
    );
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
    assert_eq!(
        run("A=B"),
        ["buyers.acme.secret_env: must be an environment variable name (letters, digits and _)"]
    );
    for e in run("BAD_SECRET").iter().chain(&run("NOPE")) {
        assert!(
            !e.contains("not-base64") && !e.contains("top-secret"),
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
    assert_eq!(
        show_range(MinuteRange {
            start: 65,
            end: 1440
        }),
        "01:05-24:00"
    );
}
