//! Test helpers for the core: a `Config` built directly (no loader), leads, times.

use std::collections::HashMap;

use chrono::TimeZone;
use proto::{FieldKind, FieldSpec, Lead, LeadMode, Micros, VerticalSchema};

use super::UnixMs;
use crate::config::{
    defaults, AdminConfig, BreakerConfig, Buyer, BuyerKey, Caps, Config, HttpVersion,
    ListenerSettings, PayoutModel, Seller, SellerKey, ServerConfig, Vertical,
};

/// Unix milliseconds of a UTC date and time.
pub(crate) fn utc_ms(y: i32, m: u32, d: u32, h: u32, min: u32) -> UnixMs {
    chrono::Utc
        .with_ymd_and_hms(y, m, d, h, min, 0)
        .single()
        .unwrap()
        .timestamp_millis()
}

/// A small auto-insurance schema: state, zip, age at ping; name and phone at post.
pub(crate) fn schema() -> VerticalSchema {
    let f = |name: &str, kind: FieldKind, required: bool, ping: bool, pii: bool| FieldSpec {
        name: name.into(),
        kind,
        required,
        ping,
        pii,
    };
    VerticalSchema {
        fields: vec![
            f("state", FieldKind::State, false, true, false),
            f("zip", FieldKind::Zip, false, true, false),
            f(
                "age",
                FieldKind::Integer { min: 16, max: 120 },
                false,
                true,
                false,
            ),
            f(
                "first_name",
                FieldKind::String {
                    len_max: 64,
                    pattern: None,
                },
                false,
                false,
                true,
            ),
            f("phone", FieldKind::Phone, false, false, true),
        ],
    }
}

/// A ping-time lead from JSON, validated against [`schema`].
pub(crate) fn lead(json: &str) -> Lead {
    let mut b = json.as_bytes().to_vec();
    let v = proto::json::parse_value(&mut b).unwrap();
    schema().validate(&v, LeadMode::Ping, "lead").unwrap()
}

/// A pinged buyer with no filters, caps or schedule, in UTC, taking vertical 0.
pub(crate) fn buyer(i: usize) -> Buyer {
    Buyer {
        id: format!("b{i}"),
        key: BuyerKey(i as u32),
        name: format!("Buyer {i}"),
        ping_url: Some(format!("http://127.0.0.1:9/b{i}/ping")),
        post_url: format!("http://127.0.0.1:9/b{i}/post"),
        http: HttpVersion::Http1,
        secret_env: format!("B{i}_SECRET"),
        secret: proto::signing::Secret::new("x").unwrap(),
        secret_next: None,
        ping_timeout_ms: defaults::PING_TIMEOUT_MS,
        post_timeout_ms: defaults::POST_TIMEOUT_MS,
        verticals: vec![0],
        states_include: Vec::new(),
        states_exclude: Vec::new(),
        zip_prefixes: Vec::new(),
        timezone: chrono_tz::Tz::UTC,
        schedule: None,
        score_floor: None,
        caps: Caps::default(),
        fixed_price: None,
        allow_plaintext: false,
        key_sha256: None,
        key_sha256_next: None,
        pings_in_flight_max: None,
        return_window_days: defaults::RETURN_WINDOW_DAYS,
    }
}

/// The default breaker settings.
pub(crate) fn breaker_cfg() -> BreakerConfig {
    BreakerConfig {
        enabled: true,
        failures: defaults::BREAKER_FAILURES,
        open_ms: defaults::BREAKER_OPEN_MS,
        probe_interval_ms: defaults::BREAKER_PROBE_INTERVAL_MS,
    }
}

/// A config with one vertical (`auto_insurance`, index 0), one seller, and `n` buyers
/// from [`buyer`], all in vertical 0.
pub(crate) fn config(n: usize) -> Config {
    config_with((0..n).map(buyer).collect())
}

/// A config with one vertical and these buyers; `buyers_by_vertical` is derived from
/// each buyer's `verticals`, as the loader does.
pub(crate) fn config_with(buyers: Vec<Buyer>) -> Config {
    let vertical = Vertical {
        name: "auto_insurance".into(),
        currency: defaults::CURRENCY.into(),
        auction_deadline_ms: defaults::AUCTION_DEADLINE_MS,
        floor: Micros(1_000_000),
        bid_max: None,
        schema: std::sync::Arc::new(schema()),
        features: None,
        routing: Default::default(),
        consent_required: Vec::new(),
        dedup: None,
        dedup_keys: Vec::new(),
    };
    let seller = Seller {
        id: "s0".into(),
        key: SellerKey(0),
        name: "Seller 0".into(),
        key_sha256: [0; 32],
        key_sha256_next: None,
        verticals: vec![0],
        payout: PayoutModel::RevenueShare { share_bp: 8000 },
        reserve: None,
        rate_per_s: None,
        quotes_open_max: defaults::SELLER_QUOTES_OPEN_MAX,
        idempotency_keys_max: None,
        requests_in_flight_max: None,
        connections_max: None,
    };
    let mut cfg = Config {
        server: ServerConfig {
            listen: defaults::LISTEN.parse().unwrap(),
            body_bytes_max: defaults::BODY_BYTES_MAX,
            header_read_timeout_ms: defaults::HEADER_READ_TIMEOUT_MS,
            requests_in_flight_max: defaults::REQUESTS_IN_FLIGHT_MAX,
            connections_max: defaults::CONNECTIONS_MAX,
            worker_threads: 1,
            shutdown_grace_ms: defaults::SHUTDOWN_GRACE_MS,
            quote_ttl_ms: defaults::QUOTE_TTL_MS,
            quote_min_ms: defaults::QUOTE_MIN_MS,
            quotes_open_max: defaults::QUOTES_OPEN_MAX,
            dedup_keys_max: defaults::DEDUP_KEYS_MAX,
            idempotency_ttl_ms: defaults::IDEMPOTENCY_TTL_MS,
            idempotency_keys_max: defaults::IDEMPOTENCY_KEYS_MAX,
            idempotency_keys_per_seller_max: defaults::IDEMPOTENCY_KEYS_PER_SELLER_MAX,
            ledger_path: defaults::LEDGER_PATH.into(),
            ledger_segment_bytes_max: defaults::LEDGER_SEGMENT_BYTES_MAX,
            new_fingerprint_key: false,
            buyers_per_auction_max: defaults::BUYERS_PER_AUCTION_MAX,
            response_reserve_ms: defaults::RESPONSE_RESERVE_MS,
            post_attempts_max: defaults::POST_ATTEMPTS_MAX,
            post_deadline_ms: defaults::POST_DEADLINE_MS,
            sold_leads_max: defaults::SOLD_LEADS_MAX,
            late_posts_per_buyer_max: defaults::LATE_POSTS_PER_BUYER_MAX,
            breaker: breaker_cfg(),
            listener: ListenerSettings::default(),
        },
        verticals: vec![vertical],
        sellers: vec![seller],
        buyers,
        vertical_by_name: HashMap::from([("auto_insurance".to_string(), 0)]),
        seller_by_key_sha256: HashMap::from([([0; 32], 0)]),
        buyer_by_key_sha256: HashMap::new(),
        buyers_by_vertical: Vec::new(),
        index: Default::default(),
        buyer_by_key: HashMap::new(),
        seller_by_key: HashMap::new(),
        admin: AdminConfig {
            listen: defaults::ADMIN_LISTEN.parse().unwrap(),
            token_env: defaults::ADMIN_TOKEN_ENV.into(),
            token: None,
        },
        learning: Default::default(),
        suppression: Default::default(),
    };
    cfg.index_buyers();
    cfg.set_keys(
        |id| BuyerKey(id.trim_start_matches('b').parse().unwrap_or(0)),
        |_| SellerKey(0),
    );
    cfg
}
