//! `GET /openapi.json` and operators' field patterns: a pattern only Rust's `regex` reads
//! (or reads its own way) is published as `x-pattern`, never as a JSON Schema `pattern`,
//! so every `pattern` in the document is one ECMA-262 (with and without the `u` flag),
//! Python's `re` and Rust read alike (an outside tester: `(?i)abc`, `\p{L}+` and the
//! like made the whole document unusable to spec validators, Python's `jsonschema` and
//! JavaScript). The exchange still checks them. And a `429` declares its `Retry-After`
//! as required. Real sockets on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use pingpost::openapi::unportable_construct;
use serde_json::{json, Value};

/// Patterns `--check-config` accepts that only Rust reads as written.
const RUST_ONLY: [&str; 12] = [
    r"(?i)abc",
    r"\p{L}+",
    r"\x{41}",
    r"(?P<n>a)",
    r"a\z",
    r"(?s:.)",
    r"\u{263a}",
    r"[[:digit:]]+",
    r"[a-z&&[^x]]+",
    r"\pN",
    r"\Aab",
    r"a(?-u:\w)",
];

/// Patterns every engine reads alike.
const PORTABLE: [&str; 4] = [
    r"[A-Z]{2}[0-9]+",
    r"[0-9]{3}-[0-9]{4}",
    r"(?:a|b)+",
    r"\d{5}(-\d{4})?",
];

/// The test configuration with a string field per pattern (`rust_N`, `portable_N`, all
/// ping fields), and a required one only Rust reads (`rust_required`).
async fn exchange_with_patterns() -> Exchange {
    let mut fields = String::new();
    for (i, p) in RUST_ONLY.iter().enumerate() {
        fields.push_str(&format!(
            "rust_{i} = {{ type = \"string\", pattern = '{p}', ping = true }}\n"
        ));
    }
    for (i, p) in PORTABLE.iter().enumerate() {
        fields.push_str(&format!(
            "portable_{i} = {{ type = \"string\", pattern = '{p}', ping = true }}\n"
        ));
    }
    fields.push_str(
        "rust_required = { type = \"string\", pattern = '(?i)[a-z]+', required = true, ping = true }\n",
    );
    TestConfig::new()
        .start_edited(|toml| {
            let at = "email = { type = \"email\", pii = true }\n";
            assert!(toml.contains(at));
            toml.replacen(at, &format!("{at}{fields}"), 1)
        })
        .await
}

/// Every `(path, value)` of a `pattern` key holding a string, anywhere in `v`.
fn patterns(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let here = format!("{path}/{k}");
                match (k.as_str(), x) {
                    ("pattern", Value::String(p)) => out.push((here, p.clone())),
                    _ => patterns(x, &here, out),
                }
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                patterns(x, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_published_pattern_is_one_every_engine_reads() {
    let ex = exchange_with_patterns().await;
    let r = ex.client.get("/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();

    // Every `pattern` compiles with Rust's regex and uses nothing only Rust reads.
    let mut found = Vec::new();
    patterns(&doc, "", &mut found);
    assert!(found.len() > 20, "{found:?}");
    for (path, p) in &found {
        regex::Regex::new(p).unwrap_or_else(|e| panic!("{path}: {p}: {e}"));
        assert_eq!(unportable_construct(p), None, "{path}: {p}");
    }

    let schemas = &doc["components"]["schemas"];
    for lead in ["PingLead_auto_insurance", "FullLead_auto_insurance"] {
        let props = &schemas[lead]["properties"];
        for (i, p) in RUST_ONLY.iter().enumerate() {
            let f = &props[format!("rust_{i}")];
            assert_eq!(f["x-pattern"], format!("^(?:{p})$"), "{lead}: {f}");
            assert_eq!(f["x-pattern-syntax"], "rust-regex", "{lead}: {f}");
            // What any text field holds, and nothing of the operator's pattern.
            assert_eq!(f["pattern"], props["rust_required"]["pattern"], "{f}");
            assert!(f.get("allOf").is_none(), "{lead}: {f}");
            let d = f["description"].as_str().unwrap();
            assert!(
                d.starts_with("allowed in a ping; optional; null counts as absent. ")
                    && d.contains("checks the value against `x-pattern`")
                    && d.contains("It is not a JSON Schema `pattern`: it uses "),
                "{lead}: {d}"
            );
        }
        for (i, p) in PORTABLE.iter().enumerate() {
            let f = &props[format!("portable_{i}")];
            assert_eq!(f["pattern"], format!("^(?:{p})$"), "{lead}: {f}");
            assert_eq!(f["x-pattern-syntax"], "rust-regex", "{lead}: {f}");
            assert!(f.get("x-pattern").is_none(), "{lead}: {f}");
            assert_eq!(f["allOf"].as_array().unwrap().len(), 1, "{lead}: {f}");
        }
        // A required one still carries the "says something" pattern in its `allOf`.
        let req = &props["rust_required"];
        assert_eq!(req["x-pattern"], "^(?:(?i)[a-z]+)$", "{req}");
        let all_of = req["allOf"].as_array().unwrap();
        assert_eq!(all_of.len(), 1, "{req}");
        assert!(
            all_of[0]["pattern"]
                .as_str()
                .unwrap()
                .starts_with("[^\\u0000-\\u001f"),
            "{req}"
        );
        assert!(schemas[lead]["required"]
            .as_array()
            .unwrap()
            .contains(&json!("rust_required")));
    }

    // The exchange checks an `x-pattern` as written.
    let ping = |extra: Value| {
        let mut lead = ping_lead("TX");
        lead["rust_required"] = json!("AbC");
        for (k, v) in extra.as_object().unwrap() {
            lead[k] = v.clone();
        }
        json!({"vertical": VERTICAL, "lead": lead})
    };
    let r = ex
        .client
        .post_json("/v1/ping", &ping(json!({"rust_0": "aBc"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = ex
        .client
        .post_json("/v1/ping", &ping(json!({"rust_0": "abd"})))
        .await;
    let e = r.assert_error(400, "invalid_request");
    assert!(e.to_string().contains("rust_0"), "{e}");
}

/// Every `429` carries `Retry-After`: its header is required; a `503` may lack it
/// (`unavailable`), so the 503's stays optional.
#[tokio::test]
async fn a_429_declares_its_retry_after_as_required() {
    let ex = TestConfig::new().start().await;
    let doc = ex.client.get("/openapi.json").await.json();
    let components = &doc["components"];
    let header = |response: &str| {
        let r = &components["responses"][response]["headers"]["Retry-After"]["$ref"];
        let name = r
            .as_str()
            .unwrap()
            .strip_prefix("#/components/headers/")
            .unwrap();
        components["headers"][name].clone()
    };
    assert_eq!(header("RateLimited")["required"], true);
    assert_eq!(header("Overloaded")["required"], false);
    assert_eq!(header("RateLimited")["schema"]["type"], "integer");
}
