//! Tests of the loader: shared helpers (a small base document and markers to splice
//! edits in), whole-file tests and cross-references; each section's tests are in tests/.

mod buyer_keys;
mod buyers;
mod features;
mod reader;
mod sellers;
mod server;
mod verticals;

use std::path::PathBuf;

use proto::schema::STRING_LEN_MAX_DEFAULT;
use proto::{FieldKind, Micros};
use sha2::{Digest, Sha256};

use super::server::default_listen;
use super::*;
use crate::config::{defaults, Caps, HttpVersion, PayoutModel};

const DEFAULT_TOML: &str = include_str!("../../../../config/default.toml");

fn demo_env(name: &str) -> Option<String> {
    name.strip_prefix("PINGPOST_DEMO_SECRET_")
        .map(|n| format!("demo-secret-of-buyer-{n}"))
}

const KEY: &str = "19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176";

/// A small valid configuration. Tests splice extra lines in at the `#SERVER`,
/// `#VERTICAL`, `#FIELD`, `#SELLER` and `#BUYER` markers.
const BASE: &str = r#"
[server]
#SERVER

[verticals.auto]
#VERTICAL
[verticals.auto.fields]
state = { type = "state", required = true, ping = true }
phone = { type = "phone", required = true, pii = true }
[verticals.auto.fields.extra]
#FIELD
[verticals.auto.fields.zip]
type = "zip"
ping = true

[sellers.s1]
key_sha256 = "19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176"
verticals = ["auto"]
payout = { model = "revenue_share", share_pct = 80 }
#SELLER

[buyers.acme]
ping_url = "http://127.0.0.1:9101/ping"
post_url = "http://127.0.0.1:9101/post"
secret_env = "ACME_SECRET"
verticals = ["auto"]
#BUYER
"#;

fn test_env(name: &str) -> Option<String> {
    match name {
        "ACME_SECRET" => Some("top-secret-value".into()),
        "ADMIN_TOKEN" => Some("admin-token-value-0123".into()),
        "SAME_AS_ACME" => Some("top-secret-value".into()),
        "ACME_KEY_AS_WHSEC" => Some("whsec_dG9wLXNlY3JldC12YWx1ZQ==".into()),
        "BAD_SECRET" => Some("whsec_!!!not-base64".into()),
        "EMPTY_SECRET" => Some(String::new()),
        "SHORT_SECRET" => Some("fifteen-chars-x".into()),
        "SHORT_WHSEC" => Some("whsec_MTIzNDU2Nzg5MDEyMzQ1".into()),
        "ONE_CHAR" => Some("x".into()),
        "ACME_NEXT" => Some("the-next-secret-value".into()),
        _ => None,
    }
}

/// BASE with `edits` spliced in; the extra field defaults to a plain string.
fn doc(edits: &[(&str, &str)]) -> String {
    let mut text = BASE.to_string();
    let field_set = edits.iter().any(|(m, _)| *m == "#FIELD");
    if !field_set {
        text = text.replace("#FIELD", "type = \"string\"");
    }
    for (marker, lines) in edits {
        text = text.replace(marker, lines);
    }
    text
}

fn load(edits: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    load_str_with_env(&doc(edits), &test_env)
}

fn errors(edits: &[(&str, &str)]) -> Vec<String> {
    match load(edits) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

fn ok(edits: &[(&str, &str)]) -> Config {
    match load(edits) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

#[test]
fn default_config_loads() {
    let config = load_str_with_env(DEFAULT_TOML, &demo_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.server.ledger_path, PathBuf::from("pingpost-ledger"));
    assert_eq!(config.server.ledger_segment_bytes_max, 64 << 20);

    let (vi, auto) = config.vertical("auto_insurance").unwrap();
    assert_eq!(vi, 0);
    assert_eq!(auto.auction_deadline_ms, 150);
    assert_eq!(auto.floor, Micros(1_000_000));
    assert_eq!(auto.currency, "USD");
    let names: Vec<_> = auto.schema.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "state",
            "zip",
            "age",
            "homeowner",
            "credit",
            "insured",
            "vehicle_year",
            "city",
            "first_name",
            "last_name",
            "phone",
            "email",
            "street_address",
            "birth_date"
        ]
    );
    for f in &auto.schema.fields {
        assert!(!(f.ping && f.pii), "{}", f.name);
    }
    assert!(matches!(
        auto.schema.field("age").unwrap().kind,
        FieldKind::Integer { min: 16, max: 120 }
    ));
    assert!(
        auto.schema.field("phone").unwrap().required && auto.schema.field("phone").unwrap().pii
    );

    let digest: [u8; 32] = Sha256::digest(b"demo-seller-key").into();
    let seller = &config.sellers[config.seller_by_key_sha256[&digest]];
    assert_eq!(seller.id, "demo");
    assert_eq!(seller.payout, PayoutModel::RevenueShare { share_bp: 8000 });

    assert_eq!(config.buyers.len(), 5);
    assert_eq!(config.buyers_by_vertical, vec![vec![0, 1, 2, 3, 4]]);
    let pinged: Vec<_> = config
        .buyers
        .iter()
        .filter(|b| b.ping_url.is_some())
        .collect();
    assert_eq!(pinged.len(), 4);
    assert!(pinged.iter().any(|b| b.http == HttpVersion::Http2));
    assert!(pinged.iter().any(|b| b.schedule.is_some()));
    let fixed: Vec<_> = config
        .buyers
        .iter()
        .filter(|b| b.fixed_price.is_some())
        .collect();
    assert_eq!(fixed.len(), 1);
    assert_eq!(fixed[0].fixed_price, Some(Micros(4_000_000)));
    assert_eq!(fixed[0].post_url, "http://127.0.0.1:9105/post");
    // The demo must always sell a TX lead: two pinged buyers that are always open for TX.
    let tx_always = pinged
        .iter()
        .filter(|b| b.schedule.is_none())
        .filter(|b| b.states_include.is_empty() || b.states_include.iter().any(|s| s == "TX"))
        .filter(|b| !b.states_exclude.iter().any(|s| s == "TX"))
        .filter(|b| b.zip_prefixes.is_empty())
        .count();
    assert!(tx_always >= 2);
    let zones: Vec<_> = config.buyers.iter().map(|b| b.timezone.name()).collect();
    for tz in [
        "America/Chicago",
        "America/New_York",
        "America/Los_Angeles",
        "UTC",
    ] {
        assert!(zones.contains(&tz), "{tz}");
    }
}

#[test]
fn default_config_without_secrets_names_each_variable() {
    let err = load_str_with_env(DEFAULT_TOML, &|_| None).unwrap_err();
    assert_eq!(err.0.len(), 5, "{err}");
    for (i, e) in err.0.iter().enumerate() {
        assert!(
            e.contains(".secret_env: environment variable PINGPOST_DEMO_SECRET_"),
            "{e}"
        );
        assert!(e.ends_with(&format!("_{} is not set", i + 1)), "{e}");
    }
}

#[test]
fn the_minimal_file_in_the_docs_loads() {
    let docs = include_str!("../../../../docs/CONFIGURATION.md");
    let after = docs.split("## A minimal file").nth(1).unwrap();
    let toml = after
        .split("```toml")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let env = |name: &str| (name == "ACME_WEBHOOK_SECRET").then(|| "s".repeat(32));
    let c = load_str_with_env(toml, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.verticals.len(), c.sellers.len(), c.buyers.len()),
        (1, 1, 1)
    );
}

#[test]
fn base_loads() {
    let c = ok(&[]);
    assert_eq!(c.server.body_bytes_max, defaults::BODY_BYTES_MAX);
    assert_eq!(c.server.breaker.failures, defaults::BREAKER_FAILURES);
    assert_eq!(c.verticals[0].currency, defaults::CURRENCY);
    assert_eq!(
        c.verticals[0].auction_deadline_ms,
        defaults::AUCTION_DEADLINE_MS
    );
    assert_eq!(c.verticals[0].floor, Micros::ZERO);
    let b = &c.buyers[0];
    assert_eq!(b.name, "acme");
    assert_eq!(b.http, HttpVersion::Http1);
    assert_eq!(b.timezone, chrono_tz::Tz::UTC);
    assert_eq!(b.ping_timeout_ms, defaults::PING_TIMEOUT_MS);
    assert_eq!(b.post_timeout_ms, defaults::POST_TIMEOUT_MS);
    assert_eq!(b.schedule, None);
    assert_eq!(b.caps, Caps::default());
    assert_eq!(c.sellers[0].name, "s1");
    assert!(matches!(
        c.verticals[0].schema.fields[2].kind,
        FieldKind::String {
            len_max: STRING_LEN_MAX_DEFAULT,
            pattern: None
        }
    ));
    assert!(default_listen() == defaults::LISTEN.parse().unwrap());
}

#[test]
fn every_mistake_is_reported_with_its_path() {
    let text = format!(
        r#"
[server]
listen = "localhost"
[server.breaker]
failures = 0

[verticals.auto]
currency = "usd"
[verticals.auto.fields]
state = {{ type = "state", required = true, ping = true }}
phone = {{ type = "phone", required = true, pii = true, ping = true }}

[sellers.s1]
key_sha256 = "{KEY}"
verticals = ["auto"]
payout = {{ model = "revenue_share", share_pct = 80 }}
colour = "red"

[buyers.acme]
ping_url = "ftp://127.0.0.1/ping"
post_url = "http://127.0.0.1:9101/post"
secret_env = "ACME_SECRET"
ping_timeout_ms = 0
verticals = ["auto", "boats"]
schedule = {{ mon = ["20:00-08:00"] }}
"#
    );
    let err = load_str_with_env(&text, &test_env).unwrap_err();
    assert_eq!(
            err.0,
            [
                "server.listen: must be a socket address such as \"127.0.0.1:8080\" (an IP address and a port: a host name such as localhost is not looked up)",
                "server.breaker.failures: must be a whole number between 1 and 10000",
                "verticals.auto.currency: must be three upper-case letters such as \"USD\"",
                "verticals.auto.fields.phone.ping: must be false for a PII field: personal data never travels in a ping",
                "sellers.s1.colour: unknown key",
                "buyers.acme.ping_url: must be an http:// or https:// URL such as \"https://buyer.example/ping\"",
                "buyers.acme.ping_timeout_ms: must be a whole number between 1 and 60000",
                "buyers.acme.verticals[1]: unknown vertical \"boats\"",
                "buyers.acme.schedule.mon[0]: \"20:00-08:00\" must end after it starts (split a range that crosses midnight in two)",
            ]
        );
    // Display: one problem a line.
    assert_eq!(err.to_string().lines().count(), 9);
}

#[test]
fn syntax_error_is_one_error_with_its_line() {
    let err = load_str_with_env(
        "[server]\nlisten = \"127.0.0.1:8080\"\nbody_bytes_max = = 3\n",
        &test_env,
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].starts_with("line 3, column "), "{}", err.0[0]);
    let err = load_str_with_env("a = 1\na = 2\n", &test_env).unwrap_err();
    assert!(err.0[0].starts_with("line 2"), "{}", err.0[0]);
    let err = load_str_with_env("x = [1,\n", &test_env).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(!err.0[0].contains('\n'), "{}", err.0[0]);
}

/// Black-box round 10: a number too large for 64 bits was a syntax error that did not
/// name its key.
#[test]
fn a_syntax_error_in_a_value_names_its_key() {
    let err = load_str_with_env(
        "[server]\nlisten = \"127.0.0.1:8080\"\nquote_ttl_ms = 99999999999999999999\n",
        &test_env,
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.0[0].starts_with("line 3, column 16 (at server.quote_ttl_ms): invalid TOML"),
        "{}",
        err.0[0]
    );
    let err = load_str_with_env("[buyers.acme.caps]\ndaily = 1e999999\n", &test_env).unwrap_err();
    assert!(
        err.0[0].contains("(at buyers.acme.caps.daily)"),
        "{}",
        err.0[0]
    );
    // A line that sets no simple key: the line and column alone.
    let err = load_str_with_env("[server\n", &test_env).unwrap_err();
    assert!(!err.0[0].contains("(at "), "{}", err.0[0]);
}

#[test]
fn missing_sections_and_keys() {
    assert_eq!(
        load_str_with_env("", &test_env).unwrap_err().0,
        ["verticals: is required: at least one [verticals.NAME] table"]
    );
    assert_eq!(
        load_str_with_env("verticals = {}", &test_env)
            .unwrap_err()
            .0,
        ["verticals: must define at least one vertical"]
    );
    assert_eq!(
        load_str_with_env("[verticals.auto]", &test_env)
            .unwrap_err()
            .0,
        ["verticals.auto.fields: is required: at least one [verticals.NAME.fields.FIELD] table"]
    );
    let text = r#"
[verticals.auto.fields]
state = { type = "state" }
[sellers.s1]
[buyers.b1]
"#;
    assert_eq!(
            load_str_with_env(text, &test_env).unwrap_err().0,
            [
                "sellers.s1.key_sha256: is required",
                "sellers.s1.verticals: is required",
                "sellers.s1.payout: is required",
                "buyers.b1.post_url: is required",
                "buyers.b1.secret_env: is required",
                "buyers.b1.verticals: is required",
                "buyers.b1.fixed_price: is required for a buyer without ping_url (a fixed-price buyer); a pinged buyer needs ping_url",
            ]
        );
}

#[test]
fn unknown_keys_at_every_level() {
    assert_eq!(
        errors(&[
            (
                "#SERVER",
                "colour = 1\nlisen = \"127.0.0.1:1\"\n[server.tsl]\ncert_path = \"x\"\n[server.breaker]\nfailure = 3"
            ),
            ("#VERTICAL", "flor = 1"),
            ("#FIELD", "type = \"string\"\nrequird = true"),
            ("#SELLER", "verticalz = []"),
            (
                "#BUYER",
                "caps = { daly = 3, dialy = 4 }\nschedule = { monday = [] }\nping_timout_ms = 5"
            ),
        ]),
        [
            "server.breaker.failure: unknown key (did you mean failures?)",
            "server.colour: unknown key",
            "server.lisen: unknown key (did you mean listen?)",
            "server.tsl: unknown key (did you mean tls?)",
            "verticals.auto.fields.extra.requird: unknown key (did you mean required?)",
            "verticals.auto.flor: unknown key (did you mean floor?)",
            "sellers.s1.verticalz: unknown key (did you mean verticals?)",
            "buyers.acme.schedule.monday: unknown key (days are mon, tue, wed, thu, fri, sat, sun)",
            "buyers.acme.caps.daly: unknown key (did you mean daily?)",
            "buyers.acme.caps.dialy: unknown key (did you mean daily?)",
            "buyers.acme.ping_timout_ms: unknown key (did you mean ping_timeout_ms?)",
        ]
    );
    assert_eq!(
        load_str_with_env(
            "[verticals.a.fields]\nx = { type = \"zip\" }\n[extra]",
            &test_env
        )
        .unwrap_err()
        .0,
        ["extra: unknown key"]
    );
    // A key cut short (a unit suffix left off) is pointed at the one key it starts
    // (black-box round 22); a stem of several keys is not guessed.
    assert_eq!(
        errors(&[
            ("#SERVER", "quote_ttl = 5000"),
            (
                "#BUYER",
                "caps = { hour = 3 }
ping_timeout = 5"
            ),
        ]),
        [
            "server.quote_ttl: unknown key (did you mean quote_ttl_ms?)",
            "buyers.acme.caps.hour: unknown key (did you mean hourly?)",
            "buyers.acme.ping_timeout: unknown key (did you mean ping_timeout_ms?)",
        ]
    );
}

#[test]
fn vertical_references() {
    let text = doc(&[]).replace(
        "verticals = [\"auto\"]\n#BUYER",
        "verticals = [\"auto\", \"auto\", 3, \"boats\"]\n",
    );
    assert_eq!(
        load_str_with_env(&text, &test_env).unwrap_err().0,
        [
            "buyers.acme.verticals[2]: must be a string",
            "buyers.acme.verticals[1]: \"auto\" is listed twice",
            "buyers.acme.verticals[3]: unknown vertical \"boats\"",
        ]
    );
    // A broken vertical does not make its users "unknown" too.
    let errs = errors(&[("#VERTICAL", "currency = 1")]);
    assert_eq!(errs, ["verticals.auto.currency: must be a string"]);
}

#[test]
fn buyers_by_vertical_is_ascending() {
    let text = r#"
[verticals.a.fields]
x = { type = "zip" }
[verticals.b.fields]
x = { type = "zip" }
[buyers.one]
post_url = "https://h/post"
fixed_price = 1
secret_env = "ACME_SECRET"
verticals = ["b"]
[buyers.two]
post_url = "https://h/post"
fixed_price = 1
secret_env = "ACME_SECRET"
verticals = ["b", "a"]
[buyers.three]
post_url = "https://h/post"
fixed_price = 1
secret_env = "ACME_SECRET"
verticals = ["a", "b"]
"#;
    let c = load_str_with_env(text, &test_env).unwrap();
    assert_eq!(c.buyers_by_vertical, [vec![1, 2], vec![0, 1, 2]]);
    assert_eq!(c.vertical_by_name["b"], 1);
    assert_eq!(c.buyers[1].verticals, [1, 0]);
}

/// A fixed-price buyer whose price is 0 could never buy (a bid of 0 is a pass): refused
/// (black-box round 92b: accepted, its 0 counted as a bid). One micro-unit is a price.
#[test]
fn a_fixed_price_of_zero_is_refused() {
    let text = |price: &str| {
        format!(
            r#"
[verticals.a.fields]
x = {{ type = "zip" }}
[buyers.one]
post_url = "https://h/post"
fixed_price = {price}
secret_env = "ACME_SECRET"
verticals = ["a"]
"#
        )
    };
    for zero in ["0", "0.0", "\"0.000000\""] {
        assert_eq!(
            load_str_with_env(&text(zero), &test_env).unwrap_err().0,
            ["buyers.one.fixed_price: must be more than 0: a bid of 0 is a pass, so this buyer could never buy"],
            "{zero}"
        );
    }
    assert!(load_str_with_env(&text("0.000001"), &test_env).is_ok());
}

/// A fixed-price buyer whose price no seller of its vertical could be quoted on (under
/// the floor, or paying every seller less than the floor or its reserve after its payout)
/// is refused at its `fixed_price` (black-box round 203a: 0.50 under a floor of 1.00
/// passed, and every lead was `below_reserve`). A seller with a share of 0 (paused) is
/// not one that could sell.
#[test]
fn a_fixed_price_no_seller_could_be_quoted_on_is_refused() {
    let text = |price: &str, sellers: &str| {
        format!(
            r#"
[verticals.a]
floor = 1.00
[verticals.a.fields]
x = {{ type = "zip" }}
{sellers}
[buyers.one]
post_url = "https://h/post"
fixed_price = {price}
secret_env = "ACME_SECRET"
verticals = ["a"]
"#
        )
    };
    let seller = |id: &str, key: &str, payout: &str, extra: &str| {
        format!(
            "[sellers.{id}]\nkey_sha256 = \"{key}\"\nverticals = [\"a\"]\npayout = {payout}\n{extra}\n"
        )
    };
    let k1 = "19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176";
    let k2 = "29891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176";
    let share = |id: &str, key: &str, pct: u32| {
        seller(
            id,
            key,
            &format!("{{ model = \"revenue_share\", share_pct = {pct} }}"),
            "",
        )
    };
    let errs =
        |price: &str, sellers: &str| match load_str_with_env(&text(price, sellers), &test_env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
    // Under the floor, whatever the sellers.
    assert_eq!(
        errs("0.50", ""),
        ["buyers.one.fixed_price: 0.50 is under verticals.a.floor (1.00): no bid under the floor is quoted, so this buyer could never buy there"]
    );
    // 80 % of 1.20 is 0.96, under the floor: no seller could be quoted on it.
    assert_eq!(
        errs("1.20", &share("s1", k1, 80)),
        ["buyers.one.fixed_price: 1.20 would pay no seller of vertical a enough to be quoted (after each seller's payout, under the floor of 1.00 or the seller's reserve), so this buyer could never buy there"]
    );
    // One seller that could be quoted on it is enough; a paused seller (share 0) is none.
    assert_eq!(
        errs(
            "1.20",
            &format!("{}{}", share("s1", k1, 80), share("s2", k2, 90))
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        errs(
            "1.20",
            &format!("{}{}", share("s1", k1, 80), share("s2", k2, 0))
        )
        .len(),
        1
    );
    // A seller's reserve counts too.
    assert_eq!(
        errs(
            "2.00",
            &seller(
                "s1",
                k1,
                "{ model = \"revenue_share\", share_pct = 80 }",
                "reserve = 1.80"
            )
        )
        .len(),
        1
    );
    assert_eq!(errs("1.25", &share("s1", k1, 80)), Vec::<String>::new());
}

#[test]
fn load_file_reports_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = load_file_with_env(&missing, &test_env).unwrap_err();
    assert!(err.0[0].starts_with(&format!("cannot read {}: ", missing.display())));
    // A relative name is not taken for a key path: the reload answers it under `config`.
    assert_eq!(
        crate::state::field_problem("cannot read live.toml: No such file or directory").field,
        "config"
    );
    let bad = dir.path().join("latin1.toml");
    std::fs::write(&bad, b"# caf\xe9\n").unwrap();
    let err = load_file_with_env(&bad, &test_env).unwrap_err();
    assert_eq!(
        err.0,
        [format!(
            "cannot read {}: it is not UTF-8 text",
            bad.display()
        )]
    );
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, doc(&[])).unwrap();
    assert!(load_file_with_env(&path, &test_env).is_ok());
}

/// Black-box round 94b: a buyer named `total` could not be told from the total line of
/// `ledger report` (CSV and table). The name is reserved for buyers, sellers and
/// verticals, in any case; a lead field may still be called so.
#[test]
fn total_is_no_party_name() {
    for (from, to, path) in [
        ("[buyers.acme]", "[buyers.total]", "buyers.total"),
        ("[sellers.s1]", "[sellers.Total]", "sellers.Total"),
    ] {
        let text = doc(&[]).replace(from, to);
        let e = load_str_with_env(&text, &test_env).unwrap_err().0;
        assert!(
            e.contains(&format!(
                "{path}: the name total is reserved (the total line of `pingpost ledger report`): choose another"
            )),
            "{e:?}"
        );
    }
    let text = doc(&[]).replace(
        "[verticals.auto.fields.zip]",
        "[verticals.auto.fields.total]",
    );
    assert!(load_str_with_env(&text, &test_env).is_ok());
}
