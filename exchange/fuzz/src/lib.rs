//! The bodies of the fuzz targets, as plain functions of the input bytes.
//!
//! Shared verbatim with the CI replay (`exchange/tests/fuzz_corpus.rs` includes this file
//! with `#[path]`), so the corpus kept in the repository is run through exactly the code
//! the fuzzer ran. Each function panics (a fuzz crash, a failed test) when an invariant
//! breaks; otherwise it returns quietly, whatever the bytes.

use std::sync::OnceLock;

use pingpost::config::Config;
use proto::buyer::{
    parse_bid_answer, parse_post_answer, BidOutcome, PingMessage, PostMessage, PostOutcome,
    BUYER_ID_LEN_MAX, BUYER_REASON_LEN_MAX,
};
use proto::json::{check_depth, BUYER_ANSWER_DEPTH_MAX, SELLER_BODY_DEPTH_MAX};
use proto::seller::{parse_ping, PostEnvelope};
use proto::signing::{Secret, SignatureError, TIMESTAMP_DIGITS_MAX};
use proto::{ApiError, ErrorCode, LeadMode, Micros};

/// The embedded default configuration (its verticals' schemas are what sellers meet).
pub const DEFAULT_CONFIG: &str = include_str!("../../../config/default.toml");

/// The default configuration, loaded once with every buyer secret set.
pub fn default_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        // A value per variable: the admin token may not be a buyer's signing secret.
        match pingpost::config::load_str_with_env(DEFAULT_CONFIG, &|name: &str| {
            Some(format!("fuzz-secret-of-at-least-16-chars-{name}"))
        }) {
            Ok(c) => c,
            Err(e) => panic!("config/default.toml does not load: {e}"),
        }
    })
}

/// Panics unless `e` is a contract error a seller may get for a body: 400,
/// `invalid_request` or `pii_in_ping`, a message, and a body of the contract's shape.
pub fn assert_seller_rejection(e: &ApiError) {
    assert!(
        matches!(e.code, ErrorCode::InvalidRequest | ErrorCode::PiiInPing),
        "unexpected code {e:?}"
    );
    assert_eq!(e.status(), 400, "{e:?}");
    assert!(!e.message.is_empty(), "{e:?}");
    let body: serde_json::Value = match serde_json::from_slice(&e.to_json()) {
        Ok(v) => v,
        Err(err) => panic!("error body is not JSON ({err}): {e:?}"),
    };
    let inner = &body["error"];
    assert_eq!(inner["code"], e.code.as_str(), "{body}");
    assert!(inner["message"].is_string(), "{body}");
    if let Some(fields) = inner.get("fields") {
        let Some(fields) = fields.as_array() else {
            panic!("fields is not a list: {body}")
        };
        assert!(!fields.is_empty(), "{body}");
        for f in fields {
            assert!(f["field"].is_string() && f["problem"].is_string(), "{body}");
        }
    }
}

/// `seller_request`: the bytes as a `/v1/ping` body, a `/v1/leads` body and a `/v1/post`
/// body (envelope, then the lead against every vertical of the default configuration).
pub fn seller_request(data: &[u8]) {
    let cfg = default_config();
    let too_deep = check_depth(data, SELLER_BODY_DEPTH_MAX).is_err();
    for mode in [LeadMode::Ping, LeadMode::Full] {
        let mut buf = data.to_vec();
        match parse_ping(&mut buf, mode, |v| cfg.vertical(v).map(|(_, x)| &*x.schema)) {
            Ok(req) => {
                assert!(!too_deep, "a too-deep body parsed");
                let Some((_, vertical)) = cfg.vertical(&req.vertical) else {
                    panic!("parsed a ping for an unknown vertical {:?}", req.vertical)
                };
                if mode == LeadMode::Ping {
                    // A ping that parsed carries no PII field.
                    for (name, _) in req.lead.iter(&vertical.schema) {
                        let pii = vertical
                            .schema
                            .fields
                            .iter()
                            .any(|f| f.name == name && f.pii);
                        assert!(!pii, "PII field {name} accepted in a ping");
                    }
                }
                if let Some(p) = req.min_price {
                    assert!(p >= Micros::ZERO, "negative min_price {p:?}");
                }
            }
            Err(e) => {
                assert_seller_rejection(&e);
                if too_deep {
                    assert_too_deep(&e);
                }
            }
        }
    }
    let mut buf = data.to_vec();
    match PostEnvelope::parse(&mut buf) {
        Ok(env) => {
            assert!(!too_deep, "a too-deep post parsed");
            for v in &cfg.verticals {
                if let Err(e) = env.validate_lead(&v.schema) {
                    assert_seller_rejection(&e);
                }
            }
        }
        Err(e) => {
            assert_seller_rejection(&e);
            if too_deep {
                assert_too_deep(&e);
            }
        }
    }
}

/// Panics unless `e` is the refusal of a body nested past [`SELLER_BODY_DEPTH_MAX`].
fn assert_too_deep(e: &ApiError) {
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert_eq!(
        e.message,
        format!("body: JSON nested deeper than {SELLER_BODY_DEPTH_MAX} levels")
    );
    assert_eq!(e.fields.len(), 1, "{e:?}");
    assert_eq!(e.fields[0].field, "body", "{e:?}");
}

/// `buyer_answer`: the first byte picks the HTTP status and `Content-Type`; the rest is a
/// buyer's answer, read as a ping answer and a post answer by the exchange, and as a ping
/// and a post message by the bidder SDK.
pub fn buyer_answer(data: &[u8]) {
    let (head, body) = match data.split_first() {
        Some((h, b)) => (*h, b),
        None => (0, data),
    };
    let status = match head & 0x3 {
        0 | 1 => 200,
        2 => 204,
        _ => 500 + u16::from(head >> 4),
    };
    let content_type = match (head >> 2) & 0x3 {
        0 | 1 => Some("application/json"),
        2 => Some("text/html; charset=utf-8"),
        _ => None,
    };
    let json_200 = status == 200 && content_type == Some("application/json");
    let too_deep = check_depth(body, BUYER_ANSWER_DEPTH_MAX).is_err();

    match parse_bid_answer(status, content_type, &mut body.to_vec()) {
        BidOutcome::Bid {
            price,
            bid_id,
            expires_in_ms: _,
            currency: _,
        } => {
            assert!(!too_deep, "a too-deep answer was a bid");
            assert!(price > Micros::ZERO, "bid {price:?}");
            assert!(bid_id.is_none_or(|b| b.chars().count() <= BUYER_ID_LEN_MAX));
        }
        BidOutcome::NoBid { reason } => {
            assert!(!too_deep || status == 204, "a too-deep answer was a no-bid");
            assert!(reason.is_none_or(|r| r.chars().count() <= BUYER_REASON_LEN_MAX));
        }
        BidOutcome::Invalid(why) => {
            if json_200 && too_deep {
                assert_eq!(why, "too_deep");
            }
        }
    }
    match parse_post_answer(status, content_type, &mut body.to_vec()) {
        PostOutcome::Accepted { buyer_lead_id } => {
            assert!(!too_deep, "a too-deep answer was accepted");
            assert!(buyer_lead_id.is_none_or(|b| b.chars().count() <= BUYER_ID_LEN_MAX));
        }
        PostOutcome::Rejected { reason } => {
            assert!(!too_deep, "a too-deep answer was a rejection");
            assert!(reason.is_none_or(|r| r.chars().count() <= BUYER_REASON_LEN_MAX));
        }
        PostOutcome::Invalid(why) => {
            if json_200 && too_deep {
                assert_eq!(why, "too_deep");
            }
        }
    }
    // The bidder SDK's side: what it parses from the exchange.
    let deep_for_sdk = check_depth(body, proto::json::EXCHANGE_MESSAGE_DEPTH_MAX).is_err();
    let ping = PingMessage::from_json(&mut body.to_vec());
    let post = PostMessage::from_json(&mut body.to_vec());
    if deep_for_sdk {
        assert!(ping.is_err() && post.is_err(), "a too-deep message parsed");
    }
}

/// `config_load`: the bytes, if UTF-8, as a configuration document.
pub fn config_load(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| {
        name.len()
            .is_multiple_of(2)
            .then(|| format!("secret-{name}"))
    };
    match pingpost::config::load_str_with_env(text, &env) {
        Ok(cfg) => {
            // A loaded config is usable: every vertical is found by its own name.
            for v in &cfg.verticals {
                assert!(cfg.vertical(&v.name).is_some(), "vertical {}", v.name);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an empty config error"),
    }
}

/// Splits `data` at `0xFF` bytes (never part of UTF-8) into at most `n` parts.
fn split_fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0xFF).collect()
}

/// `signature_verify`: 8 bytes of `now`, then secret, id, timestamp, signature and body
/// separated by `0xFF`. Verifies the message as given, and checks that signing then
/// verifying round-trips for any timestamp.
pub fn signature_verify(data: &[u8]) {
    let (now_bytes, rest) = data.split_at(data.len().min(8));
    let mut now = [0u8; 8];
    now[..now_bytes.len()].copy_from_slice(now_bytes);
    let now_s = i64::from_le_bytes(now);
    let parts = split_fields(rest, 5);
    let part = |i: usize| parts.get(i).copied();
    let text = |i: usize| part(i).and_then(|p| std::str::from_utf8(p).ok());
    let Ok(secret) = Secret::new(text(0).unwrap_or("fuzz")) else {
        return;
    };
    let body = part(4).unwrap_or_default();
    let r = secret.verify(text(1), text(2), text(3), body, now_s);
    if let Some(ts_text) = text(2) {
        // A timestamp is 1 to TIMESTAMP_DIGITS_MAX ASCII digits, nothing else.
        let digits = !ts_text.is_empty()
            && ts_text.len() <= TIMESTAMP_DIGITS_MAX
            && ts_text.bytes().all(|b| b.is_ascii_digit());
        match ts_text.parse::<i64>().ok().filter(|_| digits) {
            None => {
                if text(1).is_some() && text(3).is_some() {
                    assert_eq!(r, Err(SignatureError::BadTimestamp));
                }
            }
            Some(ts) => {
                if r.is_ok() {
                    assert!(now_s.abs_diff(ts) <= 300, "accepted {ts} at {now_s}");
                }
                let id = text(1).filter(|i| !i.is_empty()).unwrap_or("msg");
                let sig = secret.sign(id, ts, body);
                assert_eq!(
                    secret.verify(Some(id), Some(&ts.to_string()), Some(&sig), body, ts),
                    Ok(()),
                    "round trip at {ts}"
                );
                let far = ts.saturating_add(301);
                if far != ts.saturating_add(300) {
                    assert_eq!(
                        secret.verify(Some(id), Some(&ts.to_string()), Some(&sig), body, far),
                        Err(SignatureError::TimestampOutOfTolerance)
                    );
                }
            }
        }
    }
}
