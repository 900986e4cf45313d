//! The fuzz corpus, replayed: every file kept under `exchange/fuzz/corpus/<target>/` and
//! `exchange/fuzz/seeds/<target>/` goes through the same code as the cargo-fuzz target
//! (the harness file is shared), so a crash once found and added there stays fixed. Plus
//! property tests of seller and buyer parsing on arbitrary bytes and nested JSON.
//! See docs/FUZZING.md.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::PathBuf;

use proptest::prelude::*;
use proto::buyer::{parse_bid_answer, parse_post_answer, BidOutcome, PostOutcome};
use proto::json::{BUYER_ANSWER_DEPTH_MAX, SELLER_BODY_DEPTH_MAX};
use proto::seller::{parse_ping, PostEnvelope};
use proto::{ErrorCode, LeadMode};

/// A fuzz target's body.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("seller_request", harness::seller_request),
    ("buyer_answer", harness::buyer_answer),
    ("config_load", harness::config_load),
    ("signature_verify", harness::signature_verify),
];

fn files(dir: &str, target: &str) -> Vec<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_and_seed_file_replays_without_a_panic() {
    for (target, run) in TARGETS {
        let mut n = 0;
        for dir in ["seeds", "corpus"] {
            let list = files(dir, target);
            assert!(!list.is_empty(), "no {dir} files for {target}");
            for file in list {
                let data = std::fs::read(&file).unwrap();
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target}: {} panicked", file.display());
                n += 1;
            }
        }
        println!("{target}: {n} files replayed");
    }
}

/// `{…{[…[leaf]…]}…}`: `shape[i]` says whether level `i` is an array or an object.
fn nest(shape: &[bool], leaf: &str) -> String {
    let mut s = String::new();
    for &array in shape {
        s.push_str(if array { "[" } else { r#"{"k":"# });
    }
    s.push_str(leaf);
    for &array in shape.iter().rev() {
        s.push(if array { ']' } else { '}' });
    }
    s
}

/// Any JSON value, a few levels deep, with brackets and escapes in its strings.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[\\[\\]{}\"\\\\a-z0-9 ]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_\\[{\"]{1,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const DEPTH_MESSAGE: &str = "body: JSON nested deeper than 64 levels";

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the bytes, seller parsing answers a value or a well-formed contract error.
    #[test]
    fn seller_parsing_never_panics_on_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        harness::seller_request(&data);
    }

    /// A lead nested `shape.len()` levels deep (the body adds one): refused by the depth
    /// check exactly when the body is deeper than the limit, and never a panic.
    #[test]
    fn seller_nesting_is_refused_exactly_past_the_limit(
        shape in prop::collection::vec(any::<bool>(), 0..100),
        leaf in json_value(),
        post in any::<bool>(),
    ) {
        let lead = nest(&shape, &leaf.to_string());
        let leaf_depth = depth_of(&leaf);
        let body = if post {
            format!(r#"{{"ping_id":"pg_1","lead":{lead}}}"#)
        } else {
            format!(r#"{{"vertical":"auto_insurance","lead":{lead}}}"#)
        };
        harness::seller_request(body.as_bytes());
        let too_deep = 1 + shape.len() + leaf_depth > SELLER_BODY_DEPTH_MAX;
        let cfg = harness::default_config();
        let mut buf = body.into_bytes();
        let r = if post {
            PostEnvelope::parse(&mut buf).map(|_| ())
        } else {
            parse_ping(&mut buf, LeadMode::Ping, |v| cfg.vertical(v).map(|(_, x)| &*x.schema)).map(|_| ())
        };
        match r {
            Ok(()) => prop_assert!(!too_deep),
            Err(e) => {
                prop_assert_eq!(e.code == ErrorCode::InvalidRequest && e.message == DEPTH_MESSAGE, too_deep, "{:?}", e);
            }
        }
    }

    /// Whatever a buyer answers, reading it is a value, never a panic.
    #[test]
    fn buyer_answers_never_panic_on_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        harness::buyer_answer(&data);
    }

    /// A buyer answer nested past the buyer limit is `too_deep`; within it, never.
    #[test]
    fn buyer_nesting_is_invalid_exactly_past_the_limit(
        shape in prop::collection::vec(any::<bool>(), 0..60),
        leaf in json_value(),
    ) {
        let value = nest(&shape, &leaf.to_string());
        let too_deep = 1 + shape.len() + depth_of(&leaf) > BUYER_ANSWER_DEPTH_MAX;
        for body in [format!(r#"{{"bid":{value}}}"#), format!(r#"{{"accepted":{value},"no_bid":1}}"#)] {
            let mut head = vec![0u8];
            head.extend(body.as_bytes());
            harness::buyer_answer(&head);
            let json = Some("application/json");
            let bid = parse_bid_answer(200, json, &mut body.clone().into_bytes());
            prop_assert_eq!(bid == BidOutcome::Invalid("too_deep"), too_deep, "{:?}", bid);
            let post = parse_post_answer(200, json, &mut body.into_bytes());
            prop_assert_eq!(post == PostOutcome::Invalid("too_deep"), too_deep, "{:?}", post);
        }
    }
}

/// Nesting depth of a value (a scalar is 0).
fn depth_of(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}
