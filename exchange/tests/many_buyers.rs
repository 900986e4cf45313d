//! Ten thousand buyers on one node: a configuration with 10,000 buyers serves an auction
//! over real sockets with the one buyer that takes the lead; the auction record's skip
//! summary stays bounded; metric series exist only for buyers in use; a file with more
//! buyers than the limit is refused with the limit; 100,000 buyers load and index.

mod common;

use std::fmt::Write as _;

use common::*;
use proto::seller::PingStatus;

/// `n` filler buyers, each taking one state other than Texas, reading its secret from
/// `secret_env` (a variable the test configuration already has).
fn fillers(n: usize, secret_env: &str) -> String {
    let mut t = String::with_capacity(n * 240);
    for i in 0..n {
        let state = pingpost::synthetic::OTHER_STATES[i % pingpost::synthetic::OTHER_STATES.len()];
        let _ = write!(
            t,
            "\n[buyers.filler{i}]\nping_url = \"http://127.0.0.1:9/ping\"\npost_url = \"http://127.0.0.1:9/post\"\nsecret_env = \"{secret_env}\"\nverticals = [\"auto_insurance\"]\nstates_include = [\"{state}\"]\n"
        );
        if i % 2 == 0 {
            t.push_str("caps = { daily = 100 }\n");
        }
    }
    t
}

#[tokio::test]
async fn ten_thousand_configured_buyers_one_eligible_over_real_sockets() {
    let texan = ScriptedBidder::bidding(25.0);
    let (tb, _h) = serve("texan", &texan).await;
    let cfg = TestConfig::new().buyer(tb.clone());
    let secret_env = "PINGPOST_TEST_SECRET_TEXAN";
    let ex = cfg
        .start_edited(|toml| toml + &fillers(9_999, secret_env))
        .await;
    assert_eq!(ex.state.runtime.load().config.buyers.len(), 10_000);

    let q = ex.client.ping("TX").await;
    assert_eq!(q.status, PingStatus::Bid, "{q:?}");
    assert_eq!(texan.pings(), 1);

    // Auction records are not waited for: a flush puts everything before it on disk.
    ex.state.ledger.flush().await.expect("ledger flush");
    let record = ex
        .ledger_of("auction")
        .into_iter()
        .find(|r| r["ping_id"] == q.ping_id)
        .expect("the auction record");
    assert_eq!(record["skipped"]["total"], 9_999, "{}", record["skipped"]);
    assert_eq!(record["skipped"]["by_reason"]["state"], 9_999);
    let first = record["skipped"]["first"].as_array().expect("first");
    assert_eq!(first.len(), pingpost::core::eligibility::SKIP_NAMES_MAX);
    assert_eq!(first[0]["buyer"], "filler0");
    assert_eq!(first[0]["reason"], "state");
    let lines = record["buyers"].as_array().expect("buyers");
    assert_eq!(
        lines.len(),
        1,
        "only the pinged buyer has a line: {lines:?}"
    );
    assert_eq!(lines[0]["buyer"], "texan");

    // Series only for the buyer in use: none for the 9,999 never pinged, and the cap
    // gauges only for windows with something sold or held.
    let scrape = ex.metrics().await;
    assert!(scrape.contains("pingpost_buyer_pings_total{buyer=\"texan\",outcome=\"bid\"} 1"));
    assert!(
        !scrape.contains("buyer=\"filler"),
        "a filler buyer has a series"
    );
    assert_eq!(
        metric_value(
            &scrape,
            "pingpost_eligibility_skips_total",
            &[("reason", "state")]
        ),
        9_999.0
    );
}

#[test]
fn a_file_with_more_buyers_than_the_limit_is_refused_with_the_limit() {
    let max = pingpost::config::BUYERS_MAX;
    let mut t = String::from(
        "[verticals.v]\ncurrency = \"USD\"\n[verticals.v.fields]\nstate = { type = \"state\", ping = true }\n",
    );
    for i in 0..=max {
        let _ = writeln!(t, "[buyers.b{i}]");
    }
    let err = pingpost::config::load_str_with_env(&t, &|_| None).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "buyers: {} buyers configured; at most {max}",
            max + 1
        )),
        "{text}"
    );
    // One line: the buyers themselves were never read.
    assert_eq!(err.0.len(), 1, "{text}");
}

/// Sellers have the same limit as buyers, refused the same way (black-box round 147a:
/// 100,002 sellers passed `--check-config` and a start, and every ping was answered
/// `capped`). 100,000 are taken.
#[test]
fn a_file_with_more_sellers_than_the_limit_is_refused_with_the_limit() {
    let max = pingpost::config::SELLERS_MAX;
    let file = |sellers: usize| {
        let mut t = String::from(
            "[verticals.v]\ncurrency = \"USD\"\n[verticals.v.fields]\nstate = { type = \"state\", ping = true }\n",
        );
        for i in 0..sellers {
            let _ = writeln!(
                t,
                "[sellers.s{i}]\nkey_sha256 = \"{i:064x}\"\nverticals = [\"v\"]\npayout = {{ model = \"revenue_share\", share_pct = 80 }}"
            );
        }
        t
    };
    let err = pingpost::config::load_str_with_env(&file(max + 1), &|_| None).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "sellers: {} sellers configured; at most {max}",
            max + 1
        )),
        "{text}"
    );
    assert_eq!(err.0.len(), 1, "{text}");
    // Over both limits, both are said (black-box round 148a: only the sellers').
    let mut both = file(max + 1);
    for i in 0..=pingpost::config::BUYERS_MAX {
        let _ = writeln!(both, "[buyers.b{i}]");
    }
    let err = pingpost::config::load_str_with_env(&both, &|_| None).expect_err("refused");
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(
        err.0[0].starts_with("sellers: 100001 sellers configured"),
        "{err}"
    );
    assert!(
        err.0[1].starts_with("buyers: 100001 buyers configured"),
        "{err}"
    );
    let cfg = pingpost::config::load_str_with_env(&file(max), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.sellers.len(), max);
}

#[test]
fn one_hundred_thousand_buyers_load_and_the_index_finds_the_one_texan() {
    let toml = pingpost::synthetic::many_buyers_toml(&pingpost::synthetic::ManyBuyers {
        total: 100_000,
        texas: 1,
        secret_env: "SYNTH".into(),
    });
    let cfg = pingpost::config::load_str_with_env(&toml, &|name: &str| {
        Some(format!("synthetic-secret-{name}"))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.buyers.len(), 100_000);
    let caps = pingpost::core::caps::CapBook::new(cfg.buyers.len());
    let mut json = br#"{"state":"TX","zip":"76180"}"#.to_vec();
    let value = proto::json::parse_value(&mut json).unwrap();
    let lead = cfg.verticals[0]
        .schema
        .validate(&value, proto::LeadMode::Ping, "lead")
        .unwrap();
    let e = pingpost::core::eligibility::select(&cfg, 0, &lead, None, 0, &caps);
    assert_eq!(e.ping, [0]);
    assert_eq!(e.skipped.total(), 99_999);
    assert_eq!(
        e,
        pingpost::core::eligibility::select_scan(&cfg, 0, &lead, None, 0, &caps)
    );
}
