//! The test configuration: buyers and server settings, written as TOML and loaded by
//! the real loader.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use pingpost::config::Config;
use sha2::{Digest, Sha256};

use super::{ADMIN_TOKEN, ADMIN_TOKEN_ENV, SELLER_KEY, SHARE_PCT, SOLAR_ONLY_KEY, THROTTLED_KEY};

/// One buyer of the test configuration.
#[derive(Debug, Clone)]
pub struct TestBuyer {
    pub id: String,
    pub addr: SocketAddr,
    pub secret: String,
    /// The next signing secret (`secret_env_next`), if any.
    pub secret_next: Option<String>,
    pub http2: bool,
    pub states: Vec<String>,
    pub ping_timeout_ms: u64,
    pub post_timeout_ms: u64,
    pub caps_daily: Option<u32>,
    pub caps_hourly: Option<u32>,
}

impl TestBuyer {
    /// A buyer at `addr` taking TX and OK leads, with short timeouts.
    pub fn new(id: &str, addr: SocketAddr) -> TestBuyer {
        TestBuyer {
            id: id.to_string(),
            addr,
            secret: format!("secret-of-buyer-{id}"),
            secret_next: None,
            http2: false,
            states: vec!["TX".into(), "OK".into()],
            ping_timeout_ms: 150,
            post_timeout_ms: 1_000,
            caps_daily: None,
            caps_hourly: None,
        }
    }

    pub fn ping_timeout_ms(mut self, ms: u64) -> Self {
        self.ping_timeout_ms = ms;
        self
    }

    pub fn post_timeout_ms(mut self, ms: u64) -> Self {
        self.post_timeout_ms = ms;
        self
    }

    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    pub fn caps_daily(mut self, n: u32) -> Self {
        self.caps_daily = Some(n);
        self
    }

    pub fn caps_hourly(mut self, n: u32) -> Self {
        self.caps_hourly = Some(n);
        self
    }

    /// The display name the exchange returns on `sold`.
    pub fn name(&self) -> String {
        format!("Buyer {}", self.id)
    }

    fn secret_env(&self) -> String {
        format!(
            "PINGPOST_TEST_SECRET_{}",
            self.id.to_uppercase().replace('-', "_")
        )
    }

    /// Signs with `next` as well (`secret_env_next`).
    pub fn secret_next(mut self, next: &str) -> Self {
        self.secret_next = Some(next.to_string());
        self
    }

    fn secret_env_next(&self) -> String {
        format!("{}_NEXT", self.secret_env())
    }
}

/// A test configuration: everything small and fast, one `auto_insurance` vertical (plus
/// `solar`, only so a seller can be refused with 403), three sellers, and the buyers given.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub buyers: Vec<TestBuyer>,
    pub auction_deadline_ms: u64,
    pub floor: f64,
    pub quote_ttl_ms: u64,
    pub header_read_timeout_ms: u64,
    pub requests_in_flight_max: usize,
    pub body_bytes_max: usize,
    pub shutdown_grace_ms: u64,
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
    pub breaker_probe_interval_ms: u64,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            buyers: Vec::new(),
            auction_deadline_ms: 400,
            floor: 1.0,
            quote_ttl_ms: 60_000,
            header_read_timeout_ms: 5_000,
            requests_in_flight_max: 4_096,
            body_bytes_max: 64 * 1024,
            shutdown_grace_ms: 5_000,
            breaker_failures: 1_000,
            breaker_open_ms: 60_000,
            breaker_probe_interval_ms: 60_000,
        }
    }
}

fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    pub fn buyer(mut self, b: TestBuyer) -> Self {
        self.buyers.push(b);
        self
    }

    pub fn with(mut self, f: impl FnOnce(&mut TestConfig)) -> Self {
        f(&mut self);
        self
    }

    /// The TOML document, with `ledger_path` for the ledger.
    pub fn toml(&self, ledger_path: &std::path::Path) -> String {
        let mut t = format!(
            r#"
[server]
listen = "127.0.0.1:0"
ledger_path = {ledger:?}
header_read_timeout_ms = {hrt}
requests_in_flight_max = {rif}
body_bytes_max = {bbm}
shutdown_grace_ms = {grace}
quote_ttl_ms = {ttl}
response_reserve_ms = 2

[server.breaker]
failures = {bf}
open_ms = {bo}
probe_interval_ms = {bp}

[admin]
listen = "127.0.0.1:0"
token_env = "{admin_env}"

[learning]
models_dir = {models:?}

[verticals.auto_insurance]
auction_deadline_ms = {deadline}
floor = {floor}

# No exploration: tests decide who wins.
[verticals.auto_insurance.routing]
explore_share = 0

[verticals.auto_insurance.fields]
state = {{ type = "state", required = true, ping = true }}
zip = {{ type = "zip", required = true, ping = true }}
age = {{ type = "integer", min = 18, max = 100, ping = true }}
credit = {{ type = "enum", values = ["poor", "fair", "good", "excellent"], ping = true }}
first_name = {{ type = "string", len_max = 64, required = true, pii = true }}
last_name = {{ type = "string", len_max = 64, required = true, pii = true }}
phone = {{ type = "phone", required = true, pii = true }}
email = {{ type = "email", pii = true }}

[verticals.solar.fields]
zip = {{ type = "zip", required = true, ping = true }}

[sellers.main]
name = "Main Seller"
key_sha256 = "{main}"
verticals = ["auto_insurance"]
payout = {{ model = "revenue_share", share_pct = {share} }}

[sellers.solar_only]
key_sha256 = "{solar}"
verticals = ["solar"]
payout = {{ model = "revenue_share", share_pct = {share} }}

[sellers.throttled]
key_sha256 = "{throttled}"
verticals = ["auto_insurance"]
payout = {{ model = "revenue_share", share_pct = {share} }}
rate_per_s = 1
"#,
            ledger = ledger_path.display().to_string(),
            models = ledger_path.with_file_name("models").display().to_string(),
            hrt = self.header_read_timeout_ms,
            rif = self.requests_in_flight_max,
            bbm = self.body_bytes_max,
            grace = self.shutdown_grace_ms,
            ttl = self.quote_ttl_ms,
            bf = self.breaker_failures,
            bo = self.breaker_open_ms,
            bp = self.breaker_probe_interval_ms,
            deadline = self.auction_deadline_ms,
            floor = self.floor,
            main = key_sha256(SELLER_KEY),
            solar = key_sha256(SOLAR_ONLY_KEY),
            throttled = key_sha256(THROTTLED_KEY),
            share = SHARE_PCT,
            admin_env = ADMIN_TOKEN_ENV,
        );
        for b in &self.buyers {
            let states: Vec<String> = b.states.iter().map(|s| format!("{s:?}")).collect();
            t.push_str(&format!(
                r#"
[buyers.{id}]
name = "{name}"
ping_url = "http://{addr}/ping"
post_url = "http://{addr}/post"
http = "{http}"
secret_env = "{env}"
ping_timeout_ms = {pt}
post_timeout_ms = {post}
verticals = ["auto_insurance"]
states_include = [{states}]
"#,
                id = b.id,
                name = b.name(),
                addr = b.addr,
                http = if b.http2 { "2" } else { "1.1" },
                env = b.secret_env(),
                pt = b.ping_timeout_ms,
                post = b.post_timeout_ms,
                states = states.join(", "),
            ));
            if b.secret_next.is_some() {
                t.push_str(&format!("secret_env_next = \"{}\"\n", b.secret_env_next()));
            }
            let caps: Vec<String> = [("daily", b.caps_daily), ("hourly", b.caps_hourly)]
                .into_iter()
                .filter_map(|(name, n)| Some(format!("{name} = {}", n?)))
                .collect();
            if !caps.is_empty() {
                t.push_str(&format!("caps = {{ {} }}\n", caps.join(", ")));
            }
        }
        t
    }

    /// Loads the TOML with the real loader; buyer secrets come from an env closure.
    pub fn load(&self, ledger_path: &std::path::Path) -> Config {
        self.load_edited(ledger_path, |toml| toml)
    }

    /// [`load`](TestConfig::load) with the TOML document edited first (for keys the kit
    /// does not model).
    pub fn load_edited(
        &self,
        ledger_path: &std::path::Path,
        edit: impl FnOnce(String) -> String,
    ) -> Config {
        let text = edit(self.toml(ledger_path));
        pingpost::config::load_str_with_env(&text, &self.env())
            .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n{text}"))
    }

    /// The environment the test configuration is loaded with: buyer secrets and the
    /// admin token.
    pub fn env(&self) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let vars = self.env_vars();
        move |name: &str| vars.get(name).cloned()
    }

    /// The environment variables of [`TestConfig::env`] (buyer secrets, admin token).
    pub fn env_vars(&self) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = self
            .buyers
            .iter()
            .map(|b| (b.secret_env(), b.secret.clone()))
            .collect();
        for b in &self.buyers {
            if let Some(next) = &b.secret_next {
                vars.insert(b.secret_env_next(), next.clone());
            }
        }
        vars.insert(ADMIN_TOKEN_ENV.into(), ADMIN_TOKEN.into());
        vars
    }
}
