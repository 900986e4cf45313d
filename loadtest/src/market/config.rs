//! The exchange configuration of one market leg.
//!
//! Everything issue 8 adds to the configuration is written only for the pieces in
//! [`LegConfig::pieces`], in clearly marked blocks: `[verticals.V.routing]` and
//! `[verticals.V.features]` (routing), `[learning]` (learning) and the buyers'
//! `key_sha256` (dispositions). Without any, the file is one an exchange from before
//! issue 8 loads (its loader refuses unknown keys), and the leg can only be the
//! price-only one.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::world::{BUYER_FEATURES, CONTEXT_FEATURES, LEAD_FEATURES, LEAD_REF_FIELD};
use crate::sim::{SimBuyerInfo, SECRET_ENV_PREFIX, VERTICAL};

/// The seller of the market.
pub const MARKET_SELLER: &str = "market";
/// The variable that carries the admin token to the exchange (the loader's default).
pub const ADMIN_TOKEN_ENV: &str = "PINGPOST_ADMIN_TOKEN";
/// `buyers.ID.return_window_days` of every simulated buyer (returns outside a buyer's
/// window are refused by the exchange).
pub const RETURN_WINDOW_DAYS: u16 = 30;

/// How a leg's exchange awards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    /// `award = "price"`.
    Price,
    /// `award = "ev"`, models trained from its own ledger.
    Ev,
    /// `award = "ev"`, serving the truth (imported).
    Oracle,
}

impl Leg {
    /// Its name in reports and paths.
    pub fn name(self) -> &'static str {
        match self {
            Leg::Price => "price",
            Leg::Ev => "ev",
            Leg::Oracle => "oracle",
        }
    }
}

/// What [`leg_config`] writes.
#[derive(Debug, Clone)]
pub struct LegConfig<'a> {
    /// The leg.
    pub leg: Leg,
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `admin.listen`.
    pub admin_listen: SocketAddr,
    /// `server.ledger_path`.
    pub ledger_path: PathBuf,
    /// `learning.models_dir`.
    pub models_dir: PathBuf,
    /// The leg's buyers, in world order.
    pub buyers: &'a [SimBuyerInfo],
    /// Their config ids, in the same order.
    pub ids: &'a [String],
    /// Their bearer keys for `/v1/dispositions` (the config stores the SHA-256).
    pub buyer_keys: &'a [String],
    /// The seller's bearer key.
    pub seller_key: &'a str,
    /// Which issue-8 sections to write.
    pub pieces: super::Pieces,
    /// `[learning] retrain_after_dispositions` (EV leg only).
    pub retrain_after: Option<u64>,
    /// `routing.explore_share`.
    pub explore_share: f64,
    /// Every buyer's `ping_timeout_ms`; the deadline is 100 ms more.
    pub ping_timeout_ms: u64,
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// The `auto_insurance` field schema of `config/default.toml` plus [`LEAD_REF_FIELD`].
const FIELDS: &str = r#"[verticals.auto_insurance.fields]
state = { type = "state", required = true, ping = true }
zip = { type = "zip", required = true, ping = true }
age = { type = "integer", min = 16, max = 120, ping = true }
homeowner = { type = "boolean", ping = true }
credit = { type = "enum", values = ["poor", "fair", "good", "excellent"], ping = true }
insured = { type = "boolean", ping = true }
vehicle_year = { type = "integer", min = 1980, max = 2030, ping = true }
city = { type = "string", len_max = 64 }
first_name = { type = "string", len_max = 64, required = true, pii = true }
last_name = { type = "string", len_max = 64, required = true, pii = true }
phone = { type = "phone", required = true, pii = true }
email = { type = "email", pii = true }
street_address = { type = "string", len_max = 128, pii = true }
birth_date = { type = "date", pii = true }
"#;

/// The `[verticals.auto_insurance.features]` block (AI-DESIGN.md's names and order).
pub fn features_toml() -> String {
    let mut t = String::from("[verticals.auto_insurance.features]\nversion = 1\nlead = [\n");
    for (field, kind, cats) in LEAD_FEATURES {
        let _ = write!(t, "  {{ field = \"{field}\", kind = \"{kind}\"");
        if !cats.is_empty() {
            let list: Vec<String> = cats.iter().map(|c| format!("\"{c}\"")).collect();
            let _ = write!(t, ", categories = [{}]", list.join(", "));
        }
        t.push_str(" },\n");
    }
    let list = |v: &[&str]| {
        v.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        t,
        "]\ncontext = [{}]\nbuyer = [{}]\n",
        list(&CONTEXT_FEATURES),
        list(&BUYER_FEATURES)
    );
    t
}

/// The leg's config (TOML) and the environment it needs (buyer secrets; the admin
/// token is added by the caller).
pub fn leg_config(c: &LegConfig<'_>) -> (String, Vec<(String, String)>) {
    let mut t = String::with_capacity(8_192);
    let mut env = Vec::new();
    let _ = write!(
        t,
        r#"# Generated by `loadtest run market` for the {leg} leg (loopback only).

[server]
listen = {listen}
ledger_path = {ledger}

[admin]
listen = {admin}

[verticals.{VERTICAL}]
currency = "USD"
auction_deadline_ms = {deadline}
floor = 0

{FIELDS}{LEAD_REF_FIELD} = {{ type = "string", len_max = 32, ping = true }}
"#,
        leg = c.leg.name(),
        listen = toml_string(&c.listen.to_string()),
        ledger = toml_string(&c.ledger_path.to_string_lossy()),
        admin = toml_string(&c.admin_listen.to_string()),
        deadline = c.ping_timeout_ms + 100,
    );
    if c.pieces.routing {
        // ---- issue 8 (AI routing): needs the features/EV award pieces ----
        let award = match c.leg {
            Leg::Price => "price",
            Leg::Ev | Leg::Oracle => "ev",
        };
        let explore = match c.leg {
            Leg::Ev => c.explore_share,
            // The oracle knows the truth: nothing to explore.
            Leg::Price | Leg::Oracle => 0.0,
        };
        let _ = write!(
            t,
            "\n# issue 8\n[verticals.{VERTICAL}.routing]\naward = \"{award}\"\nexplore_share = {explore}\nprior_weight = 20\n\n{}",
            features_toml()
        );
        if c.leg != Leg::Price && c.pieces.learning {
            // ---- issue 8: needs the `[learning]` piece ----
            let _ = write!(
                t,
                "\n# issue 8\n[learning]\nmodels_dir = {}\n",
                toml_string(&c.models_dir.to_string_lossy())
            );
            if let Some(n) = c.retrain_after {
                let _ = writeln!(t, "retrain_after_dispositions = {n}");
            }
        }
    }
    let _ = write!(
        t,
        r#"
[sellers.{MARKET_SELLER}]
name = "Market simulation"
key_sha256 = "{key}"
verticals = ["{VERTICAL}"]
payout = {{ model = "revenue_share", share_pct = {share} }}
"#,
        key = sha256_hex(c.seller_key),
        share = super::accounting::SELLER_SHARE_PCT,
    );
    for (index, (buyer, id)) in c.buyers.iter().zip(c.ids).enumerate() {
        let secret_env = format!("{SECRET_ENV_PREFIX}{index}");
        let _ = write!(
            t,
            r#"
[buyers.{id}]
name = {name}
ping_url = "http://{addr}/ping"
post_url = "http://{addr}/post"
secret_env = "{secret_env}"
ping_timeout_ms = {ping}
post_timeout_ms = 2000
verticals = ["{VERTICAL}"]
timezone = "UTC"
"#,
            name = toml_string(&buyer.name),
            addr = buyer.addr,
            ping = c.ping_timeout_ms,
        );
        if c.pieces.dispositions {
            if let Some(key) = c.buyer_keys.get(index) {
                // issue 8: needs the dispositions branch (per-buyer key digest)
                let _ = writeln!(t, "key_sha256 = \"{}\"", sha256_hex(key));
                // Returns are accepted (and refunded) only inside a buyer's window; the
                // simulated buyers return within seconds.
                let _ = writeln!(t, "return_window_days = {RETURN_WINDOW_DAYS}");
            }
        }
        env.push((secret_env, buyer.secret.clone()));
    }
    (t, env)
}
