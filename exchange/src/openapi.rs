//! `GET /openapi.json`: an OpenAPI 3.1 document of this exchange's seller API, built from
//! the running configuration, so that a seller can generate a client for exactly this
//! deployment and a fuzzer's "valid" requests are the ones the exchange accepts.
//!
//! Each configured vertical gets its own request schemas: `vertical` is a constant, a ping
//! `lead` lists only the vertical's ping fields that are not PII, a full lead (post, direct
//! post) lists every field, both with `additionalProperties: false`, and each field's type,
//! bounds, pattern or enum is the validator's (proto::schema). An optional lead field may
//! be `null` (the validator reads `null` as absent); a required one may not. An
//! operator's pattern that ECMA-262 or Python's `re` cannot read as Rust does
//! ([`unportable_construct`]) is `x-pattern`, not a JSON Schema `pattern`, so every
//! standard tool can read the document.
//!
//! What it must never carry: secrets, key digests, buyer names or URLs, limits that say
//! more than the contract needs. It is public contract information (no authentication).

use proto::schema::{FieldKind, FieldSpec, LeadMode, VerticalSchema, US_STATES};
use proto::seller::{PING_ID_LEN_MAX, VERTICAL_LEN_MAX};
use serde_json::{json, Map, Value};

use crate::config::{Config, Vertical};
use crate::idempotency::KEY_LEN_MAX;

mod portable;
pub use portable::unportable_construct;

/// JSON-Schema pattern of the text a lead's strings, `source` and `consent` may hold: no
/// control character but a tab or a line break, no direction override or isolate
/// (`proto::error::has_unsafe_text`).
const SAFE_TEXT_PATTERN: &str =
    "^[^\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069]*$";

/// JSON-Schema pattern of an e-mail address as the validator accepts it: one `@`, a
/// non-empty local part, a domain with a dot that neither starts nor ends with one, no
/// white space or control character anywhere.
const EMAIL_PATTERN: &str = r#"^[^@\s"(),:;<>\[\]\\\x00-\x1f\x7f-\x9f\u202A-\u202E\u2066-\u2069\uFEFF]+@[^@\s.\u3002\uFF61\uFF0E"(),:;<>\[\]\\\x00-\x1f\x7f-\x9f\u202A-\u202E\u2066-\u2069\uFEFF]+(?:[.\u3002\uFF61\uFF0E][^@\s.\u3002\uFF61\uFF0E"(),:;<>\[\]\\\x00-\x1f\x7f-\x9f\u202A-\u202E\u2066-\u2069\uFEFF]+)+$"#;
/// Longest e-mail address the validator accepts.
const EMAIL_LEN_MAX: usize = 254;
/// An E.164 phone number: `+`, no leading zero, 8 to 15 digits.
const PHONE_PATTERN: &str = r"^\+[1-9][0-9]{7,14}$";
/// A calendar date from 1900-01-01 to 2200-12-31, leap days included.
const DATE_PATTERN: &str = concat!(
    r"^(((19[0-9]{2}|2[01][0-9]{2}|2200)-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])",
    r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8])))",
    r"|((19|2[01])(0[48]|[2468][048]|[13579][26])|2000)-02-29)$"
);
/// Most entries in `source`, `dedup` and `consent`, and their longest key and value.
const STRING_MAP_ENTRIES_MAX: usize = proto::json::STRING_MAP_ENTRIES_MAX;
const STRING_MAP_KEY_LEN_MAX: usize = proto::json::STRING_MAP_KEY_LEN_MAX;
const STRING_MAP_VALUE_LEN_MAX: usize = proto::json::STRING_MAP_VALUE_LEN_MAX;

/// The document, serialized.
pub fn document(config: &Config) -> Vec<u8> {
    serde_json::to_vec(&build(config)).unwrap_or_default()
}

/// The document as a JSON value.
pub fn build(config: &Config) -> Value {
    let mut schemas = Map::new();
    for (name, schema) in base_schemas().into_iter().chain(disposition_schemas()) {
        schemas.insert(name.into(), schema);
    }
    let mut ping_variants = Vec::new();
    let mut direct_variants = Vec::new();
    let mut full_leads = Vec::new();
    for v in &config.verticals {
        let id = schema_id(&v.name);
        let ping_lead = format!("PingLead_{id}");
        let full_lead = format!("FullLead_{id}");
        let ping_req = format!("PingRequest_{id}");
        let direct_req = format!("DirectPostRequest_{id}");
        schemas.insert(
            ping_lead.clone(),
            lead_schema(&v.schema, LeadMode::Ping, &v.name),
        );
        schemas.insert(
            full_lead.clone(),
            lead_schema(&v.schema, LeadMode::Full, &v.name),
        );
        schemas.insert(
            ping_req.clone(),
            envelope(
                v,
                config.suppression.is_on(),
                &ping_lead,
                "Ping fields only; no PII (`pii_in_ping`).",
            ),
        );
        schemas.insert(
            direct_req.clone(),
            envelope(
                v,
                config.suppression.is_on(),
                &full_lead,
                "The full lead, PII included.",
            ),
        );
        ping_variants.push(reference(&ping_req));
        direct_variants.push(reference(&direct_req));
        full_leads.push(reference(&full_lead));
    }
    let mapping = |prefix: &str| -> Value {
        config
            .verticals
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    json!(format!(
                        "#/components/schemas/{prefix}_{}",
                        schema_id(&v.name)
                    )),
                )
            })
            .collect::<Map<_, _>>()
            .into()
    };
    schemas.insert(
        "PingRequest".into(),
        json!({
            "description": "A ping: one schema per configured vertical, chosen by `vertical`.",
            "oneOf": ping_variants,
            "discriminator": {"propertyName": "vertical", "mapping": mapping("PingRequest")},
        }),
    );
    schemas.insert(
        "DirectPostRequest".into(),
        json!({
            "description": "A direct post: one schema per configured vertical, chosen by `vertical`.",
            "oneOf": direct_variants,
            "discriminator": {"propertyName": "vertical", "mapping": mapping("DirectPostRequest")},
        }),
    );
    schemas.insert(
        "PostRequest".into(),
        json!({
            "type": "object",
            "required": ["ping_id", "lead"],
            "additionalProperties": false,
            "properties": {
                "ping_id": {"type": "string", "minLength": 1, "maxLength": PING_ID_LEN_MAX},
                "lead": {
                    "description": "The full lead of the ping's vertical, PII included; ping fields must equal the ping's.",
                    "anyOf": full_leads,
                },
                "consent": {"$ref": "#/components/schemas/StringMap", "description": "Forwarded to the buyer with the post. A vertical's `consent_required` keys must be here (non-blank): a post without one is answered 400 `invalid_request` naming it, and the quote stays open."},
            },
        }),
    );

    let verticals: Vec<&str> = config.verticals.iter().map(|v| v.name.as_str()).collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pingpost seller API (this exchange)",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "The seller API of this exchange, generated from its running configuration: \
                 the configured verticals ({}) with their lead field schemas. The generic \
                 contract is docs/openapi.yaml; this document is the exact one for this \
                 deployment. Money is a JSON number with at most 6 decimals.",
                verticals.join(", ")
            ),
        },
        "security": [{"sellerKey": []}],
        "paths": paths(),
        "components": {
            "securitySchemes": {
                "sellerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <seller key>`.",
                },
                "buyerKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <buyer key>` (`POST /v1/dispositions` only; the buyer's `key_sha256`).",
                },
            },
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": false,
                    "description": "Makes the request safe to retry (docs/API.md): the same key with the same body returns the stored answer, even after a disconnect; with a different body, or while the first is in flight, 409.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": KEY_LEN_MAX, "pattern": "^[\\x21-\\x7e]+$"},
                },
            },
            "headers": {
                // Every 429 carries it (`server::error_response`), so it is required
                // there; a 503 `unavailable` does not, so the 503's stays optional (it
                // was optional for both).
                "RetryAfterRequired": {
                    "description": "Seconds to wait before retrying: on every `429 rate_limited`.",
                    "required": true,
                    "schema": {"type": "integer", "minimum": 0},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before retrying: always on `503 overloaded`, never on `503 unavailable`; on a `409 conflict` that ends by itself (a request of the same key, a post of the same `ping_id` or of the same consumer, or the same disposition, still in flight: retry the same request after it), never on one that does not (a key reused with a different body or on another route once its first request was answered, a repeated disposition: it never succeeds).",
                    "required": false,
                    "schema": {"type": "integer", "minimum": 0},
                },
                "WwwAuthenticate": {
                    "description": "The scheme to authenticate with: always `Bearer`.",
                    "required": true,
                    "schema": {"type": "string", "const": "Bearer"},
                },
                "Allow": {
                    "description": "The methods the route takes (`POST`, or `GET, HEAD`).",
                    "required": true,
                    "schema": {"type": "string"},
                },
            },
            "responses": responses(),
            "schemas": schemas,
        },
    })
}

/// A name usable in a `$ref` (component names are `^[a-zA-Z0-9._-]+$`).
fn schema_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn envelope(v: &Vertical, suppression_on: bool, lead: &str, lead_description: &str) -> Value {
    let vertical = v.name.as_str();
    // A request without a required consent key is still valid: it is answered `no_bid`
    // (`unsold` for a direct post) with the reason `consent_required`.
    let consent = if v.consent_required.is_empty() {
        json!({"$ref": "#/components/schemas/StringMap"})
    } else {
        json!({
            "$ref": "#/components/schemas/StringMap",
            "description": format!(
                "This vertical requires the consent keys {} (non-blank): without them the answer is `consent_required` and no buyer is pinged.",
                v.consent_required.join(", ")
            ),
        })
    };
    // The dedup keys the vertical names must each hold a SHA-256 (or nothing).
    let dedup = match (&v.dedup, suppression_on) {
        (None, false) => json!({"$ref": "#/components/schemas/StringMap"}),
        (d, _) => {
            let keys: Map<String, Value> = v
                .dedup_keys
                .iter()
                .map(|k| {
                    (
                        k.name.clone(),
                        json!({"type": "string", "maxLength": 64, "pattern": "^([0-9a-fA-F]{64})?$"}),
                    )
                })
                .collect();
            let names: Vec<&str> = v.dedup_keys.iter().map(|k| k.name.as_str()).collect();
            let mut what = Vec::new();
            if let Some(d) = d {
                what.push(format!(
                    "a consumer {} sold within {} days is answered `duplicate`{}",
                    if d.ping_scope_all {
                        "any seller"
                    } else {
                        "this seller"
                    },
                    d.window_ms / crate::core::dedup::DAY_MS,
                    if d.ping_scope_all {
                        ""
                    } else {
                        " (another seller's sale is found at the post: ping_scope \"seller\")"
                    }
                ));
            }
            if suppression_on {
                what.push("one on the suppression list `suppressed`".to_string());
            }
            json!({
                "allOf": [
                    {"$ref": "#/components/schemas/StringMap"},
                    {"type": "object", "properties": keys},
                ],
                "description": format!(
                    "{} each hold the SHA-256 of the consumer's normalized value as 64 hex digits (or \"\"): {}, and no buyer is pinged.",
                    names.join(", "),
                    what.join("; ")
                ),
            })
        }
    };
    json!({
        "type": "object",
        "required": ["vertical", "lead"],
        "additionalProperties": false,
        "properties": {
            "vertical": {"type": "string", "const": vertical, "maxLength": VERTICAL_LEN_MAX},
            "lead": {"$ref": format!("#/components/schemas/{lead}"), "description": lead_description},
            "source": {"$ref": "#/components/schemas/StringMap"},
            "dedup": dedup,
            "consent": consent,
            "min_price": {"$ref": "#/components/schemas/Money", "description": "The least the seller takes for this lead, after margin."},
            "test": {"type": "boolean", "default": false},
        },
    })
}

/// A lead of one vertical in `mode`: exactly the fields the validator lets through.
fn lead_schema(schema: &VerticalSchema, mode: LeadMode, vertical: &str) -> Value {
    let allowed = |f: &&FieldSpec| match mode {
        LeadMode::Ping => f.ping && !f.pii,
        LeadMode::Full => true,
    };
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in schema.fields.iter().filter(allowed) {
        let needed = f.required;
        let mut s = field_schema(&f.kind, !needed);
        if needed && matches!(f.kind, FieldKind::String { .. }) {
            // A required text must say something (`proto::error::says_nothing`).
            let all_of = s
                .as_object_mut()
                .map(|o| o.entry("allOf").or_insert_with(|| json!([])));
            if let Some(Value::Array(all_of)) = all_of {
                all_of.push(json!({"pattern": says_something_pattern()}));
            }
        }
        if let Value::Object(o) = &mut s {
            let mut notes = Vec::new();
            if f.pii {
                notes.push("personal data (never in a ping)");
            } else if f.ping {
                notes.push("allowed in a ping");
            } else {
                notes.push("post only");
            }
            if !needed {
                notes.push("optional; null counts as absent");
            }
            // A field's own description (an `x-pattern`'s) follows the notes.
            let mut description = notes.join("; ");
            if let Some(Value::String(own)) = o.get("description") {
                description = format!("{description}. {own}");
            }
            o.insert("description".into(), json!(description));
        }
        if needed {
            required.push(f.name.clone());
        }
        properties.insert(f.name.clone(), s);
    }
    let what = match mode {
        LeadMode::Ping => "A ping lead",
        LeadMode::Full => "A full lead",
    };
    let mut out = json!({
        "type": "object",
        "description": format!("{what} of vertical {vertical}."),
        "additionalProperties": false,
        "properties": properties,
    });
    if !required.is_empty() {
        out["required"] = json!(required);
    }
    out
}

/// One field's JSON Schema, as `proto::schema::check_value` checks it.
fn field_schema(kind: &FieldKind, nullable: bool) -> Value {
    let (ty, mut s) = match kind {
        FieldKind::String { len_max, pattern } => {
            let mut s = json!({"maxLength": len_max, "pattern": SAFE_TEXT_PATTERN});
            if let Some(re) = pattern {
                // The operator's pattern is Rust `regex` syntax, which JSON Schema's
                // ECMA-262 reads differently in places (`\d` and `\w` are Unicode-wide):
                // said, for generators (black-box round 141a).
                s["x-pattern-syntax"] = json!("rust-regex");
                match unportable_construct(re.as_str()) {
                    None => {
                        // The loader anchors patterns as `^(?:...)$`; the value must match
                        // both (JSON Schema has one `pattern` per schema).
                        s["pattern"] = json!(re.as_str());
                        s["allOf"] = json!([{"pattern": SAFE_TEXT_PATTERN}]);
                    }
                    Some(what) => {
                        // One that ECMA-262 or Python's `re` cannot read made the whole
                        // document unusable (a spec validator refused it, `jsonschema`
                        // raised, JavaScript threw): published beside the schema instead.
                        s["x-pattern"] = json!(re.as_str());
                        s["description"] = json!(format!(
                            "The exchange also checks the value against `x-pattern` (Rust `regex` syntax, anchored; a value outside it is `400 invalid_request`). It is not a JSON Schema `pattern`: it uses {what}, which JSON Schema's ECMA-262 regular expressions (with or without the `u` flag) or Python's `re` do not read as Rust does, so validators and generated clients do not check it."
                        ));
                    }
                }
            }
            ("string", s)
        }
        FieldKind::Integer { min, max } => ("integer", json!({"minimum": min, "maximum": max})),
        FieldKind::Number { min, max } => ("number", json!({"minimum": min, "maximum": max})),
        FieldKind::Boolean => ("boolean", json!({})),
        FieldKind::Enum(values) => ("string", json!({"enum": values})),
        FieldKind::State => ("string", json!({"enum": US_STATES})),
        FieldKind::Zip => ("string", json!({"pattern": "^[0-9]{5}$"})),
        FieldKind::Email => (
            "string",
            json!({"pattern": EMAIL_PATTERN, "maxLength": EMAIL_LEN_MAX}),
        ),
        FieldKind::Phone => ("string", json!({"pattern": PHONE_PATTERN})),
        FieldKind::Date => ("string", json!({"pattern": DATE_PATTERN})),
    };
    if nullable {
        s["type"] = json!([ty, "null"]);
        if let Some(Value::Array(values)) = s.get_mut("enum") {
            values.push(Value::Null);
        }
    } else {
        s["type"] = json!(ty);
    }
    s
}

/// JSON-Schema pattern (unanchored) of a text that says something: a character that is
/// neither white space, a control character nor one of `proto::error::INVISIBLE_RANGES`
/// (`proto::error::says_nothing` is false). Only code points up to U+FFFF are named, each
/// as a `\uXXXX` escape, the one form ECMA-262 (with or without its `u` flag), Python's
/// `re` and Rust's `regex` all read alike (round 192a: `\x{...}` for the ones past it
/// broke Python's `jsonschema` and JavaScript on every lead): in the document a code point
/// past U+FFFF always says something, where the exchange refuses a value of only the
/// invisible ones among them (tag characters and the like) and blanks.
fn says_something_pattern() -> String {
    // `char::is_white_space`'s characters past the controls (U+0009-U+000D and U+0085
    // are control characters).
    const SPACES: &[(char, char)] = &[
        (' ', ' '),
        ('\u{00A0}', '\u{00A0}'),
        ('\u{1680}', '\u{1680}'),
        ('\u{2000}', '\u{200A}'),
        ('\u{2028}', '\u{2029}'),
        ('\u{202F}', '\u{202F}'),
        ('\u{205F}', '\u{205F}'),
        ('\u{3000}', '\u{3000}'),
    ];
    let mut class = String::from("[^\\u0000-\\u001f\\u007f-\\u009f");
    for &(lo, hi) in SPACES.iter().chain(proto::error::INVISIBLE_RANGES) {
        let (lo, hi) = (u32::from(lo), u32::from(hi));
        if hi > 0xFFFF {
            continue;
        }
        class.push_str(&format!("\\u{lo:04x}"));
        if hi != lo {
            class.push_str(&format!("-\\u{hi:04x}"));
        }
    }
    class.push(']');
    class
}

/// Each post answer's `status` and the schema that describes it.
const POST_ANSWER_VARIANTS: [(&str, &str); 6] = [
    ("sold", "PostAnswerSold"),
    ("unsold", "PostAnswerUnsold"),
    ("expired", "PostAnswerExpired"),
    ("mismatch", "PostAnswerMismatch"),
    ("duplicate", "PostAnswerDuplicate"),
    ("suppressed", "PostAnswerSuppressed"),
];

/// A post answer refused before delivery: its `status`, its one `reason`, and (for a
/// mismatch) the changed fields.
fn refused_post(status: &str, reason: &str, changed: bool) -> Value {
    let mut v = json!({
        "type": "object",
        "required": ["ping_id", "status", "reason"],
        "properties": {
            "status": {"type": "string", "const": status},
            "ping_id": {"type": "string"},
            "reason": {"type": "string", "const": reason},
        },
    });
    if changed {
        if let Some(r) = v["required"].as_array_mut() {
            r.push(json!("changed_fields"));
        }
        v["properties"]["changed_fields"] =
            json!({"type": "array", "minItems": 1, "items": {"type": "string"}});
    }
    v
}

fn base_schemas() -> Vec<(&'static str, Value)> {
    let error_codes = [
        "invalid_request",
        "pii_in_ping",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "conflict",
        "payload_too_large",
        "unsupported_media_type",
        "rate_limited",
        "overloaded",
        "unavailable",
        "internal",
        "headers_too_large",
    ];
    vec![
        (
            "Money",
            json!({
                "type": "number",
                "minimum": 0,
                "maximum": 1_000_000_000,
                // Not `multipleOf: 0.000001`: validators test it in floating point and
                // refuse ordinary prices such as 1.1 (black-box round 23).
                "x-decimal-places": 6,
                "description": "An amount in the vertical's currency, at most 6 decimals (more is `400 invalid_request`). The bound is `x-decimal-places`, not a JSON Schema `multipleOf`, which validators check in floating point and would refuse ordinary prices such as 1.1 with.",
            }),
        ),
        (
            "StringMap",
            json!({
                "type": "object",
                "maxProperties": STRING_MAP_ENTRIES_MAX,
                "propertyNames": {"maxLength": STRING_MAP_KEY_LEN_MAX, "pattern": SAFE_TEXT_PATTERN},
                "additionalProperties": {"type": "string", "maxLength": STRING_MAP_VALUE_LEN_MAX, "pattern": SAFE_TEXT_PATTERN},
            }),
        ),
        (
            "NoBidReason",
            json!({
                "type": "string",
                "description": "Why a ping got no bid (API.md). `test` is reserved by the contract and not answered today. More may be added, each documented.",
                "enum": [
                    "no_eligible_buyers", "no_bids", "below_reserve", "duplicate",
                    "suppressed", "consent_required", "capped", "test"
                ],
            }),
        ),
        (
            "PingAnswer",
            json!({
                "description": "The answer to a ping, by `status`: `bid` carries the quote (`price`, `currency`, `expires_at`), `no_bid` its `reason`.",
                "oneOf": [reference("PingAnswerBid"), reference("PingAnswerNoBid")],
                "discriminator": {"propertyName": "status", "mapping": {
                    "bid": "#/components/schemas/PingAnswerBid",
                    "no_bid": "#/components/schemas/PingAnswerNoBid",
                }},
            }),
        ),
        (
            "PingAnswerBid",
            json!({
                "type": "object",
                "required": ["ping_id", "status", "price", "currency", "expires_at"],
                "properties": {
                    "ping_id": {"type": "string"},
                    "status": {"type": "string", "const": "bid"},
                    "price": {"$ref": "#/components/schemas/Money"},
                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "expires_at": {"type": "string", "format": "date-time"},
                    "score": {"type": "integer", "minimum": 0, "maximum": 100},
                },
            }),
        ),
        (
            "PingAnswerNoBid",
            json!({
                "type": "object",
                "required": ["ping_id", "status", "reason"],
                "properties": {
                    "ping_id": {"type": "string"},
                    "status": {"type": "string", "const": "no_bid"},
                    "reason": reference("NoBidReason"),
                    "score": {"type": "integer", "minimum": 0, "maximum": 100},
                },
            }),
        ),
        (
            "PostAnswer",
            json!({
                "description": "The answer to a post or a direct post, by `status`: `sold` carries the sale (`lead_id`, `price`, `currency`, `buyer`), every other status its `reason` (and `mismatch` its `changed_fields`). `ping_id` is in every one.",
                "oneOf": POST_ANSWER_VARIANTS.iter().map(|(_, name)| reference(name)).collect::<Vec<_>>(),
                "discriminator": {"propertyName": "status", "mapping": POST_ANSWER_VARIANTS
                    .iter()
                    .map(|(status, name)| ((*status).to_string(), json!(format!("#/components/schemas/{name}"))))
                    .collect::<Map<_, _>>()},
            }),
        ),
        (
            "PostAnswerSold",
            json!({
                "type": "object",
                // `ping_id` is in every post answer, as API.md says (black-box round 104a:
                // this schema made it optional for generated clients).
                "required": ["ping_id", "status", "lead_id", "price", "currency", "buyer"],
                "properties": {
                    "status": {"type": "string", "const": "sold"},
                    "lead_id": {"type": "string"},
                    "ping_id": {"type": "string"},
                    "price": {"$ref": "#/components/schemas/Money"},
                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                    "buyer": {"type": "string"},
                },
            }),
        ),
        (
            "PostAnswerUnsold",
            json!({
                "type": "object",
                "required": ["ping_id", "status", "reason"],
                "properties": {
                    "status": {"type": "string", "const": "unsold"},
                    "lead_id": {"type": "string", "description": "When the lead was sent to a buyer."},
                    "ping_id": {"type": "string"},
                    "reason": {"type": "string", "description": "Such as `all_buyers_rejected`, `no_buyer_available`, `post_deadline`, `buyer_removed`, `vertical_removed`, or (a direct post without a winner) a no-bid reason; API.md lists them all."},
                },
            }),
        ),
        (
            "PostAnswerExpired",
            refused_post("expired", "quote_expired", false),
        ),
        (
            "PostAnswerMismatch",
            refused_post("mismatch", "ping_fields_changed", true),
        ),
        (
            "PostAnswerDuplicate",
            refused_post("duplicate", "sold_within_window", false),
        ),
        (
            "PostAnswerSuppressed",
            refused_post("suppressed", "suppression_list", false),
        ),
        (
            "Error",
            json!({
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "enum": error_codes},
                            "message": {"type": "string"},
                            "fields": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["field", "problem"],
                                    "properties": {
                                        "field": {"type": "string"},
                                        "problem": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                },
            }),
        ),
        (
            "Health",
            json!({
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "ready", "not_ready"]},
                    "reason": {"type": "string"},
                    "generation": {"type": "integer", "minimum": 1},
                    "models": {
                        "type": "object",
                        "description": "The model version serving each vertical that declares features (null: none yet; the award uses the cold-start rates).",
                        "additionalProperties": {"type": ["string", "null"]},
                    },
                },
            }),
        ),
    ]
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

fn responses() -> Value {
    let mut r = Map::new();
    let plain = [
        ("InvalidRequest", "`invalid_request` (or `pii_in_ping` on a ping): malformed JSON, wrong types, missing, unknown or invalid fields, unknown vertical; every problem listed at once. Or a request that cannot be read as HTTP, as for MalformedRequest (no `Host` header or two, a bad `Content-Length` or chunk)."),
        ("Unauthorized", "`unauthorized`: missing or unknown seller key (on `/v1/dispositions`: buyer key)."),
        ("Forbidden", "`forbidden`: the key is valid but not for this vertical or endpoint (a seller may not sell in the vertical; a buyer's key on the seller API, a seller's key on `/v1/dispositions`; a disposition for a lead sold to another buyer)."),
        ("NotFound", "`not_found`: unknown route or unknown `ping_id`."),
        ("MethodNotAllowed", "`method_not_allowed`: a known route with the wrong method (`Allow` names the right one)."),
        ("Conflict", "`conflict`: an Idempotency-Key reused with a different body or on another route once its first request was answered (no `Retry-After`: it never succeeds), or its first request still in flight, whatever the body; a post for this `ping_id` still in flight; a post or direct post of a consumer (a dedup key in common) another post is delivering now, or a direct post of it in its auction; on `/v1/dispositions`, the same disposition still being recorded, a repeated (lead, outcome) or a refused return (no `Retry-After`). The ones that end by themselves carry `Retry-After`: retry the same request after it."),
        ("PayloadTooLarge", "`payload_too_large`: body over the configured limit (refused without buffering it)."),
        ("UnsupportedMediaType", "`unsupported_media_type`: not `application/json`, more than one `Content-Type` header, a charset other than UTF-8, or a `Content-Encoding` other than `identity`."),
        ("Internal", "`internal`: the request could not be finished safely (a delivery whose outcome could not be recorded: no sale is recorded, and a buyer may have the lead)."),
    ];
    for (name, d) in plain {
        let mut e = error_response(d);
        // The headers these answers always carry (black-box round 137a: sent, not declared).
        match name {
            "Unauthorized" => {
                e["headers"] =
                    json!({"WWW-Authenticate": {"$ref": "#/components/headers/WwwAuthenticate"}});
            }
            "MethodNotAllowed" => {
                e["headers"] = json!({"Allow": {"$ref": "#/components/headers/Allow"}});
            }
            // On the conflicts that end by themselves (black-box round 210a).
            "Conflict" => {
                e["headers"] = json!({"Retry-After": {"$ref": "#/components/headers/RetryAfter"}});
            }
            _ => {}
        }
        r.insert(name.into(), e);
    }
    for (name, header, d) in [
        (
            "RateLimited",
            "RetryAfterRequired",
            "`rate_limited`: the seller (on `/v1/dispositions`: the buyer) is over its request rate (`Retry-After: 1`), holds its limit of requests in flight (`Retry-After: 1`; on `/v1/dispositions`: its own, 32 or a quarter of `server.requests_in_flight_max`, or the buyers' together, half of it), on `/v1/ping` already holds its `sellers.ID.quotes_open_max` open quotes (`Retry-After: 1`), or holds its idempotency key quota (`Retry-After: 60`).",
        ),
        (
            "Overloaded",
            "RetryAfter",
            "`overloaded`: too many requests in flight, open quotes (pings still in their auction counted) or idempotency keys (with `Retry-After`); or `unavailable`: the exchange cannot record sales and sells nothing until it is restarted (no `Retry-After`).",
        ),
    ] {
        let mut e = error_response(d);
        e["headers"] =
            json!({"Retry-After": {"$ref": format!("#/components/headers/{header}")}});
        r.insert(name.into(), e);
    }
    // What any route answers to a request that is not well-formed HTTP (black-box round
    // 89a: `/openapi.json` answered 400 for a missing `Host` and listed no 400).
    r.insert(
        "MalformedRequest".into(),
        error_response(
            "`invalid_request`: the request itself cannot be read as HTTP (a malformed head, a body whose framing is refused), on any route; on every route but the probes, also an HTTP/1.1 request without a `Host` header or with two.",
        ),
    );
    r.insert(
        "HeadersTooLarge".into(),
        error_response(
            "`headers_too_large`: request headers over the server's size or count limit.",
        ),
    );
    r.into()
}

fn seller_operation(id: &str, summary: &str, request: &str, answer: &str) -> Value {
    let resp = |name: &str| json!({"$ref": format!("#/components/responses/{name}")});
    let mut op = json!({
        "operationId": id,
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
        "requestBody": {
            "required": true,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{request}")}}},
        },
        "responses": {
            "200": {
                "description": if id == "ping" { "The ping was processed (a bid or not)." } else { "The lead was processed (sold or not)." },
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{answer}")}}},
            },
            "400": resp("InvalidRequest"),
            "401": resp("Unauthorized"),
            "403": resp("Forbidden"),
            "404": resp("NotFound"),
            "405": resp("MethodNotAllowed"),
            "409": resp("Conflict"),
            "413": resp("PayloadTooLarge"),
            "415": resp("UnsupportedMediaType"),
            "429": resp("RateLimited"),
            "431": resp("HeadersTooLarge"),
            "500": resp("Internal"),
            "503": resp("Overloaded"),
        },
    });
    // Only a post (an unknown `ping_id`) and a disposition (an unknown lead) can be 404 on
    // their own route (black-box round 15: the ping and the direct post said they could).
    if !matches!(id, "post" | "disposition") {
        if let Some(responses) = op["responses"].as_object_mut() {
            responses.remove("404");
        }
    }
    op
}

/// `POST /v1/dispositions`: the buyer key and the same optional Idempotency-Key (a
/// keyless repeat is `409`).
fn disposition_operation() -> Value {
    let mut op = seller_operation(
        "disposition",
        "Report what became of a lead (the buyer that bought it)",
        "DispositionRequest",
        "DispositionAnswer",
    );
    op["security"] = json!([{"buyerKey": []}]);
    op["description"] = json!(
        "One disposition per (lead, outcome): a repeat is 409 and changes nothing; with an \
         `Idempotency-Key` (per buyer, quota `server.idempotency_keys_per_seller_max` per buyer, \
         kept across restarts) a retry with the same key and body gets the first 200 again, byte \
         for byte, and records nothing. A `returned` \
         inside the buyer's `return_window_days` refunds the sale's bid to the buyer and claws \
         back the seller's price (`refund`); outside the window (or with no window) it is 409 and \
         nothing is recorded; a test lead's is recorded with `refund` null and `no_refund`. \
         401 for a key that is not a buyer's, 403 for a lead sold to another buyer, 404 for an \
         unknown lead."
    );
    op["responses"]["200"]["description"] = json!("Recorded (on disk before the answer).");
    op
}

/// The request and answer of `POST /v1/dispositions`.
fn disposition_schemas() -> Vec<(&'static str, Value)> {
    use crate::dispositions::{LEAD_ID_LEN_MAX, OUTCOMES, REASON_LEN_MAX};
    vec![
        (
            "DispositionRequest",
            json!({
                "type": "object",
                "required": ["lead_id", "outcome"],
                "additionalProperties": false,
                "properties": {
                    "lead_id": {"type": "string", "minLength": 4, "maxLength": LEAD_ID_LEN_MAX, "pattern": "^ld_[A-Za-z0-9_-]+$"},
                    "outcome": {"type": "string", "enum": OUTCOMES},
                    "reason": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": REASON_LEN_MAX,
                        "pattern": "^[A-Za-z_.-]*([0-9][A-Za-z_.-]*){0,4}$",
                        "description": "A reason code (letters, `_`, `-`, `.`, at most 4 digits), never free text.",
                    },
                },
            }),
        ),
        (
            "DispositionAnswer",
            json!({
                "type": "object",
                "required": ["lead_id", "outcome", "recorded", "refund"],
                "properties": {
                    "lead_id": {"type": "string"},
                    "outcome": {"type": "string", "enum": OUTCOMES},
                    "recorded": {"type": "boolean"},
                    "refund": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": ["currency", "buyer_refund", "seller_clawback"],
                                "properties": {
                                    "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                                    "buyer_refund": {"$ref": "#/components/schemas/Money"},
                                    "seller_clawback": {"$ref": "#/components/schemas/Money"},
                                },
                            },
                        ],
                    },
                    "no_refund": {"type": "string", "enum": ["test_lead"]},
                },
            }),
        ),
    ]
}

/// What a probe or `/openapi.json` can answer with `503`: `/healthz` never does (it is
/// never shed and has nothing to be unready about).
#[derive(Clone, Copy)]
enum Unavailable {
    Never,
    NotReady,
    Overloaded,
}

fn probe(id: &str, summary: &str, schema: Value, unavailable: Unavailable) -> Value {
    let mut responses = json!({
        "200": {"description": "OK.", "content": {"application/json": {"schema": schema.clone()}}},
        "400": {"$ref": "#/components/responses/MalformedRequest"},
        "405": {"$ref": "#/components/responses/MethodNotAllowed"},
        "431": {"$ref": "#/components/responses/HeadersTooLarge"},
    });
    let unavailable = match unavailable {
        Unavailable::Never => None,
        Unavailable::NotReady => Some(json!({
            "description": "Not ready: the body says what is missing (never shed by the in-flight limit).",
            "content": {"application/json": {"schema": schema}},
        })),
        Unavailable::Overloaded => Some(json!({"$ref": "#/components/responses/Overloaded"})),
    };
    if let (Some(map), Some(u)) = (responses.as_object_mut(), unavailable) {
        map.insert("503".into(), u);
    }
    json!({
        "get": {
            "operationId": id,
            "summary": summary,
            "description": HEAD_TOO,
            "security": [],
            "responses": responses,
        },
    })
}

/// What a probe's description says of `HEAD` (black-box round 138a: answered, and named
/// in `Allow`, but in neither document).
const HEAD_TOO: &str = "`HEAD` is answered too: the `GET`'s status and headers (its `Content-Length` included) and no body.";

fn paths() -> Value {
    let health = json!({"$ref": "#/components/schemas/Health"});
    json!({
        "/v1/ping": {"post": seller_operation("ping", "Quote a lead without PII", "PingRequest", "PingAnswer")},
        "/v1/post": {"post": seller_operation("post", "Sell a quoted lead", "PostRequest", "PostAnswer")},
        "/v1/leads": {"post": seller_operation("directPost", "Direct post (ping, award and post in one call)", "DirectPostRequest", "PostAnswer")},
        "/v1/dispositions": {"post": disposition_operation()},
        "/healthz": probe("healthz", "The process is alive", health.clone(), Unavailable::Never),
        "/readyz": probe("readyz", "Ready to take traffic", health, Unavailable::NotReady),
        "/openapi.json": probe("openapi", "This document", json!({"type": "object"}), Unavailable::Overloaded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_config() -> Config {
        crate::config::load_str_with_env(crate::app::DEFAULT_CONFIG, &crate::demo::demo_secret)
            .unwrap()
    }

    #[test]
    fn one_schema_per_vertical_and_every_route() {
        let config = default_config();
        let doc = build(&config);
        let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
        assert_eq!(paths.len(), 7, "{paths:?}");
        let schemas = &doc["components"]["schemas"];
        let ping_variants = schemas["PingRequest"]["oneOf"].as_array().unwrap();
        assert_eq!(ping_variants.len(), config.verticals.len());
        for v in &config.verticals {
            let ping = &schemas[format!("PingLead_{}", schema_id(&v.name))];
            for f in &v.schema.fields {
                let listed = ping["properties"].get(&f.name).is_some();
                assert_eq!(listed, f.ping && !f.pii, "{} at ping", f.name);
                let full = &schemas[format!("FullLead_{}", schema_id(&v.name))];
                assert!(full["properties"].get(&f.name).is_some());
            }
        }
        // It serializes, and names no buyer.
        let text = String::from_utf8(document(&config)).unwrap();
        for b in &config.buyers {
            assert!(!text.contains(&b.name), "{}", b.name);
            assert!(!text.contains(&b.post_url), "{}", b.post_url);
        }
    }

    /// Round 141a: an operator's pattern is Rust `regex` syntax, published as written and
    /// marked so; the exchange's own patterns are not marked.
    #[test]
    fn an_operators_pattern_is_marked_as_rust_regex() {
        let kind = proto::schema::FieldKind::String {
            len_max: 8,
            pattern: Some(regex::Regex::new(r"^(?:\d+)$").unwrap()),
        };
        let s = field_schema(&kind, false);
        assert_eq!(s["pattern"], r"^(?:\d+)$", "{s}");
        assert_eq!(s["x-pattern-syntax"], "rust-regex", "{s}");
        let plain = proto::schema::FieldKind::String {
            len_max: 8,
            pattern: None,
        };
        assert!(field_schema(&plain, false)
            .get("x-pattern-syntax")
            .is_none());
        assert!(field_schema(&proto::schema::FieldKind::Zip, false)
            .get("x-pattern-syntax")
            .is_none());
    }

    /// A pattern only Rust reads is published as `x-pattern`, beside a schema every tool
    /// reads; the description says why.
    #[test]
    fn a_rust_only_pattern_is_published_as_x_pattern() {
        let re = regex::Regex::new(r"^(?:(?i)[a-z]+)$").unwrap();
        let kind = proto::schema::FieldKind::String {
            len_max: 8,
            pattern: Some(re),
        };
        let s = field_schema(&kind, false);
        assert_eq!(s["x-pattern"], r"^(?:(?i)[a-z]+)$", "{s}");
        assert_eq!(s["x-pattern-syntax"], "rust-regex", "{s}");
        assert_eq!(s["pattern"], SAFE_TEXT_PATTERN, "{s}");
        assert!(s.get("allOf").is_none(), "{s}");
        let d = s["description"].as_str().unwrap();
        assert!(
            d.contains("checks the value against `x-pattern`") && d.contains("`(?i)`"),
            "{d}"
        );
    }

    /// Round 191b: a required text field's schema says what the validator says of a blank
    /// value: the pattern finds a character in a text exactly when
    /// `proto::error::says_nothing` is false, for every code point.
    #[test]
    fn a_required_text_must_say_something_as_the_validator_says() {
        let re = regex::Regex::new(&says_something_pattern()).unwrap();
        for c in (0..=0x10FFFF_u32).filter_map(char::from_u32) {
            assert_eq!(
                re.is_match(c.encode_utf8(&mut [0; 4])),
                !proto::error::invisible(c) || u32::from(c) > 0xFFFF,
                "U+{:04X}",
                u32::from(c)
            );
        }
        assert!(!re.is_match(" \u{200B}\t\u{FEFF}\u{3000}"));
        assert!(re.is_match(" \u{200B}A "));
        // Only `\uXXXX` escapes (round 192a): no `\x{...}`, nothing past U+FFFF.
        let pattern = says_something_pattern();
        assert!(pattern.is_ascii() && !pattern.contains("\\x"), "{pattern}");

        let doc = build(&default_config());
        let full = &doc["components"]["schemas"]["FullLead_auto_insurance"]["properties"];
        let blank = json!({"pattern": says_something_pattern()});
        let all_of = |f: &str| full[f]["allOf"].as_array().cloned().unwrap_or_default();
        assert!(
            all_of("first_name").contains(&blank),
            "{}",
            full["first_name"]
        );
        assert!(
            !all_of("city").contains(&blank),
            "optional: {}",
            full["city"]
        );
    }

    #[test]
    fn date_pattern_matches_the_validator() {
        let re = regex::Regex::new(DATE_PATTERN).unwrap();
        for ok in [
            "1900-01-01",
            "2000-02-29",
            "2024-02-29",
            "2200-12-31",
            "2023-04-30",
        ] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in [
            "1899-12-31",
            "1900-02-29",
            "2100-02-29",
            "2023-02-29",
            "2023-04-31",
            "2201-01-01",
            "2023-13-01",
            "2023-1-01",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
        let email = regex::Regex::new(EMAIL_PATTERN).unwrap();
        for ok in [
            "a@b.co",
            "ana.diaz@example.com",
            "x@a.b.c",
            "x@ex\u{e4}mple\u{3002}com",
        ] {
            assert!(email.is_match(ok), "{ok}");
        }
        for bad in [
            "a@b",
            "@b.co",
            "a@.b.co",
            "a@b.co.",
            "a b@c.de",
            "a@b@c.de",
            "x@a..b",
            "x@a.\u{ff0e}b",
        ] {
            assert!(!email.is_match(bad), "{bad}");
        }
        // The pattern and the validator agree on what ECMA-262's `\s` (the served
        // schema's) holds beyond Rust's: U+FEFF (black-box round 36: the validator took
        // it, the schema refused it).
        let schema = proto::schema::VerticalSchema {
            fields: vec![proto::schema::FieldSpec {
                name: "email".into(),
                kind: proto::schema::FieldKind::Email,
                required: true,
                ping: false,
                pii: true,
            }],
        };
        for v in [
            "a\u{feff}@b.com",
            "a@b\u{feff}.com",
            "\u{feff}a@b.com",
            "a@b.co",
            "jos\u{e9}@b.co",
            "a\u{a0}@b.co",
            // Round 159b: quoted local parts, comments and domain literals.
            "\"blocked\"@example.com",
            "\"bl\\ocked\"@example.com",
            "bob(x)@example.com",
            "zed@[mail.example.com]",
            "a,b@c.com",
            "a;b@c.com",
            "a:b@c.com",
            "<a@c.com>",
            "a\\b@c.com",
            "ana+x@example.com",
            // Round 160a: an ideographic full stop as the only dot; direction overrides.
            "x@ex\u{e4}mple\u{3002}com",
            "x@ex\u{e4}mple\u{ff61}com",
            "x@ex\u{e4}mple\u{ff0e}com",
            "x@\u{3002}com",
            "x@com\u{3002}",
            "d\u{202e}@x.com",
            "d\u{2066}@x.com",
            // Round 162a: empty labels.
            "x@example..com",
            "x@example.\u{3002}com",
            "x@a.b.c",
        ] {
            let mut body = format!("{{\"email\":{}}}", serde_json::json!(v)).into_bytes();
            let json = simd_json::to_owned_value(&mut body).unwrap();
            let valid = schema
                .validate(&json, proto::schema::LeadMode::Full, "lead")
                .is_ok();
            assert_eq!(email.is_match(v), valid, "{v:?}");
        }
    }
}
