//! Shared kit for the exchange's end-to-end tests: real sockets on 127.0.0.1:0, real
//! bidders from the bidder SDK, misbehaving raw buyers, a test configuration written as
//! TOML and loaded by the real loader, and a seller-side HTTP client.
//!
//! Nothing here sleeps to wait for something to happen: waits are on events (a bidder
//! saw a ping, a counter reached a value) with a generous upper bound, so a slow machine
//! makes a test slower, never wrong.

// Each test binary uses part of this kit. A helper failing is the test failing, so the
// kit panics with a message (clippy's test allowance only covers `#[test]` bodies).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bidder_sdk::{
    spawn, BidReply, Bidder, Micros, PingMessage, PostMessage, PostReply, Secret, ServeOptions,
    ServerHandle,
};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingpost::app::{self, Running};
use pingpost::clock::Clock;
use pingpost::config::Config;
use pingpost::state::AppState;
use proto::seller::{PingAnswer, PostAnswer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// The main seller's bearer key (the config holds only its SHA-256).
pub const SELLER_KEY: &str = "seller-main-key";
/// A seller that may sell only in the `solar` vertical (403 for auto_insurance).
pub const SOLAR_ONLY_KEY: &str = "seller-solar-only-key";
/// A seller limited to one request per second.
pub const THROTTLED_KEY: &str = "seller-throttled-key";
/// The admin bearer token of every test exchange (read from [`ADMIN_TOKEN_ENV`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The variable the test configuration names in `admin.token_env`.
pub const ADMIN_TOKEN_ENV: &str = "PINGPOST_TEST_ADMIN_TOKEN";
/// The vertical every test sells in.
pub const VERTICAL: &str = "auto_insurance";
/// Fields of `auto_insurance` that are PII: never in a ping, only in a post.
pub const PII_FIELDS: [&str; 4] = ["first_name", "last_name", "phone", "email"];
/// The seller gets this share of the winning bid (revenue share, percent).
pub const SHARE_PCT: i64 = 80;
/// Upper bound on any wait for an event in these tests. Events normally come in
/// milliseconds; this only turns a hang into a failure.
pub const EVENT_WAIT_MAX: Duration = Duration::from_secs(10);

/// Whole currency units as micros.
pub fn usd(units: f64) -> Micros {
    Micros::from_decimal_f64(units).expect("a valid amount")
}

/// The seller's price for a bid under the test payout (80 % revenue share).
pub fn seller_price(bid: Micros) -> Micros {
    Micros(bid.0 * SHARE_PCT / 100)
}

// ---------------------------------------------------------------------------------------
// Leads.

/// A ping lead (no PII) in `state`.
pub fn ping_lead(state: &str) -> Value {
    json!({"state": state, "zip": "76180", "age": 42, "credit": "good"})
}

/// The full lead matching [`ping_lead`].
pub fn full_lead(state: &str) -> Value {
    json!({
        "state": state, "zip": "76180", "age": 42, "credit": "good",
        "first_name": "Ana", "last_name": "Diaz", "phone": "+18175550123", "email": "ana@example.com"
    })
}

/// A `/v1/ping` body for a lead in `state`.
pub fn ping_body(state: &str) -> Value {
    json!({"vertical": VERTICAL, "lead": ping_lead(state)})
}

/// A `/v1/post` body for `ping_id` with the full lead in `state`.
pub fn post_body(ping_id: &str, state: &str) -> Value {
    json!({"ping_id": ping_id, "lead": full_lead(state), "consent": {"jornaya_leadid": "LL-1"}})
}

/// A `/v1/leads` (direct post) body.
pub fn direct_body(state: &str) -> Value {
    json!({"vertical": VERTICAL, "lead": full_lead(state)})
}

// ---------------------------------------------------------------------------------------
// A scripted bidder (served by the bidder SDK).

/// What a [`ScriptedBidder`] does; change it at any time with [`ScriptedBidder::set`].
#[derive(Debug, Clone)]
pub struct Script {
    /// `Some(price)` bids it; `None` passes.
    pub bid: Option<Micros>,
    /// The bid's own validity, sent as `expires_in_ms`.
    pub bid_expires_in_ms: Option<u64>,
    /// How long the buyer takes to answer a ping (its own behaviour, not a test wait).
    pub ping_delay: Duration,
    /// Whether posts are accepted.
    pub accept: bool,
}

/// A buyer whose answers the test decides, and which records what it received.
#[derive(Debug)]
pub struct ScriptedBidder {
    script: Mutex<Script>,
    pings: Mutex<Vec<PingMessage>>,
    posts: Mutex<Vec<PostMessage>>,
    ping_count: watch::Sender<u64>,
    post_count: watch::Sender<u64>,
    /// While closed (`false`), pings wait for it to open before answering.
    gate: watch::Sender<bool>,
}

impl ScriptedBidder {
    fn with(script: Script) -> Arc<ScriptedBidder> {
        Arc::new(ScriptedBidder {
            script: Mutex::new(script),
            pings: Mutex::new(Vec::new()),
            posts: Mutex::new(Vec::new()),
            ping_count: watch::Sender::new(0),
            post_count: watch::Sender::new(0),
            gate: watch::Sender::new(true),
        })
    }

    /// Bids `price` (in currency units) on every ping and accepts every post.
    pub fn bidding(price: f64) -> Arc<ScriptedBidder> {
        ScriptedBidder::with(Script {
            bid: Some(usd(price)),
            bid_expires_in_ms: None,
            ping_delay: Duration::ZERO,
            accept: true,
        })
    }

    /// Passes on every ping.
    pub fn passing() -> Arc<ScriptedBidder> {
        ScriptedBidder::with(Script {
            bid: None,
            bid_expires_in_ms: None,
            ping_delay: Duration::ZERO,
            accept: true,
        })
    }

    /// Changes the script.
    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }

    /// Builder form of [`ScriptedBidder::set`].
    pub fn scripted(self: Arc<Self>, f: impl FnOnce(&mut Script)) -> Arc<Self> {
        self.set(f);
        self
    }

    /// Holds every ping until [`ScriptedBidder::open`].
    pub fn close(&self) {
        self.gate.send_replace(false);
    }

    /// Lets held and future pings be answered.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    pub fn pings(&self) -> u64 {
        *self.ping_count.borrow()
    }

    pub fn posts(&self) -> u64 {
        *self.post_count.borrow()
    }

    /// Every ping received, in order.
    pub fn ping_log(&self) -> Vec<PingMessage> {
        self.pings.lock().unwrap().clone()
    }

    /// Every post received, in order.
    pub fn post_log(&self) -> Vec<PostMessage> {
        self.posts.lock().unwrap().clone()
    }

    /// Panics if any ping this buyer received carried a PII field.
    pub fn assert_no_pii_in_pings(&self) {
        for ping in self.ping_log() {
            for field in PII_FIELDS {
                assert!(
                    !ping.lead.contains_key(field),
                    "a ping carried PII field {field}: {:?}",
                    ping.lead
                );
            }
        }
    }

    /// Waits until this buyer has received at least `n` pings.
    pub async fn wait_pings(&self, n: u64) {
        let mut rx = self.ping_count.subscribe();
        tokio::time::timeout(EVENT_WAIT_MAX, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("bidder saw {} pings, waited for {n}", self.pings()))
            .expect("the bidder is alive");
    }

    /// Serves this bidder with the SDK on 127.0.0.1:0.
    pub async fn serve(self: &Arc<Self>, secret: &str) -> (SocketAddr, ServerHandle) {
        spawn(
            self.clone(),
            ServeOptions::new(Secret::new(secret).expect("a valid secret")),
        )
        .await
        .expect("bidder starts")
    }
}

impl Bidder for ScriptedBidder {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        self.pings.lock().unwrap().push(ping);
        self.ping_count.send_modify(|c| *c += 1);
        let script = self.script.lock().unwrap().clone();
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        if !script.ping_delay.is_zero() {
            tokio::time::sleep(script.ping_delay).await;
        }
        match script.bid {
            Some(bid) => BidReply::Bid {
                bid,
                bid_id: Some(format!("bid-{}", self.pings())),
                expires_in_ms: script.bid_expires_in_ms,
            },
            None => BidReply::NoBid {
                no_bid: "outside_criteria".into(),
            },
        }
    }

    async fn post(&self, post: PostMessage) -> PostReply {
        self.posts.lock().unwrap().push(post);
        self.post_count.send_modify(|c| *c += 1);
        if self.script.lock().unwrap().accept {
            PostReply {
                accepted: true,
                buyer_lead_id: Some(format!("crm-{}", self.posts())),
                reason: None,
            }
        } else {
            PostReply {
                accepted: false,
                buyer_lead_id: None,
                reason: Some("duplicate".into()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A raw buyer that misbehaves on purpose (plain hyper or plain TCP, no SDK).

/// How a [`RawBuyer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 application/json` with a body that is not JSON.
    Garbage,
    /// `200 text/html` with a page.
    Html,
    /// `500` with a JSON error.
    ServerError,
    /// Reads the request, then closes the connection without a word.
    Close,
    /// Reads the request and never answers.
    Hang,
    /// A well-behaved buyer: bids this many micros on `/ping`, accepts on `/post`.
    Bid(i64),
}

/// A buyer on a raw socket, counting requests and recording their HTTP versions.
#[derive(Debug)]
pub struct RawBuyer {
    pub addr: SocketAddr,
    requests: Arc<watch::Sender<u64>>,
    versions: Arc<Mutex<Vec<Version>>>,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBuyer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBuyer {
    pub async fn start(behaviour: Behaviour) -> RawBuyer {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(watch::Sender::new(0u64));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (r, v, p) = (requests.clone(), versions.clone(), paths.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, v, p) = (r.clone(), v.clone(), p.clone());
                tokio::spawn(async move {
                    if behaviour == Behaviour::Close {
                        // Read the head, then hang up without answering.
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut seen = Vec::new();
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            seen.extend_from_slice(&buf[..n]);
                            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                r.send_modify(|c| *c += 1);
                                break;
                            }
                        }
                        drop(stream);
                        return;
                    }
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (r, v, p) = (r.clone(), v.clone(), p.clone());
                        async move {
                            v.lock().unwrap().push(req.version());
                            p.lock().unwrap().push(req.uri().path().to_string());
                            let path = req.uri().path().to_string();
                            let _ = req.into_body().collect().await;
                            r.send_modify(|c| *c += 1);
                            Ok::<_, std::convert::Infallible>(raw_answer(behaviour, &path).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RawBuyer {
            addr,
            requests,
            versions,
            paths,
            task,
        }
    }

    pub fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    pub fn versions(&self) -> Vec<Version> {
        self.versions.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: u64) {
        let mut rx = self.requests.subscribe();
        tokio::time::timeout(EVENT_WAIT_MAX, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!("raw buyer saw {} requests, waited for {n}", self.requests())
            })
            .expect("the buyer is alive");
    }
}

async fn raw_answer(behaviour: Behaviour, path: &str) -> http::Response<Full<Bytes>> {
    let (status, content_type, body): (u16, &str, Vec<u8>) = match behaviour {
        Behaviour::Garbage => (
            200,
            "application/json",
            b"{\"bid\": 12.5, oops not json".to_vec(),
        ),
        Behaviour::Html => (
            200,
            "text/html",
            b"<html><body>{\"bid\": 50}</body></html>".to_vec(),
        ),
        Behaviour::ServerError => (500, "application/json", br#"{"error":"boom"}"#.to_vec()),
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Close => unreachable!("answered on the socket"),
        Behaviour::Bid(micros) if path.ends_with("/ping") => (
            200,
            "application/json",
            serde_json::to_vec(&json!({"bid": Micros(micros), "bid_id": "raw-1"})).unwrap(),
        ),
        Behaviour::Bid(_) => (
            200,
            "application/json",
            br#"{"accepted": true, "buyer_lead_id": "raw-crm"}"#.to_vec(),
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    resp
}

// ---------------------------------------------------------------------------------------
// The test configuration.

/// One buyer of the test configuration.
#[derive(Debug, Clone)]
pub struct TestBuyer {
    pub id: String,
    pub addr: SocketAddr,
    pub secret: String,
    pub http2: bool,
    pub states: Vec<String>,
    pub ping_timeout_ms: u64,
    pub post_timeout_ms: u64,
    pub caps_daily: Option<u32>,
}

impl TestBuyer {
    /// A buyer at `addr` taking TX and OK leads, with short timeouts.
    pub fn new(id: &str, addr: SocketAddr) -> TestBuyer {
        TestBuyer {
            id: id.to_string(),
            addr,
            secret: format!("secret-of-{id}"),
            http2: false,
            states: vec!["TX".into(), "OK".into()],
            ping_timeout_ms: 150,
            post_timeout_ms: 1_000,
            caps_daily: None,
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

[admin]
listen = "127.0.0.1:0"
token_env = "{admin_env}"

[server.breaker]
failures = {bf}
open_ms = {bo}
probe_interval_ms = {bp}

[verticals.auto_insurance]
auction_deadline_ms = {deadline}
floor = {floor}

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
            if let Some(daily) = b.caps_daily {
                t.push_str(&format!("caps = {{ daily = {daily} }}\n"));
            }
        }
        t
    }

    /// Loads the TOML with the real loader; buyer secrets come from an env closure.
    pub fn load(&self, ledger_path: &std::path::Path) -> Config {
        let text = self.toml(ledger_path);
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
        vars.insert(ADMIN_TOKEN_ENV.into(), ADMIN_TOKEN.into());
        vars
    }

    /// Starts an exchange with this configuration and a fresh ledger in a temp dir.
    ///
    /// The configuration is written to `config.toml` in the temp dir and the exchange is
    /// started from that file, so [`Exchange::write_config`] plus a reload changes it.
    pub async fn start(&self) -> Exchange {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger_path = dir.path().join("ledger.jsonl");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, self.toml(&ledger_path)).expect("write config");
        let env_vars = Arc::new(Mutex::new(self.env_vars()));
        let (path, vars) = (config_path.clone(), env_vars.clone());
        let source = move || {
            let vars = vars.lock().unwrap().clone();
            pingpost::config::load_file_with_env(&path, &move |n: &str| vars.get(n).cloned())
        };
        let running = app::start_with_source(Box::new(source), Clock::system())
            .await
            .expect("exchange starts");
        Exchange {
            addr: running.addr,
            admin_addr: running.admin_addr.expect("the admin listener started"),
            state: running.state.clone(),
            client: SellerClient::new(running.addr),
            admin: SellerClient::new(running.admin_addr.expect("the admin listener started")),
            running: Some(running),
            ledger_path,
            config_path,
            env_vars,
            buyer_ids: self.buyers.iter().map(|b| b.id.clone()).collect(),
            _dir: dir,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The running exchange and a seller client.

/// A running exchange with its temp dir (kept alive as long as this).
#[derive(Debug)]
pub struct Exchange {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/admin/reload`).
    pub admin_addr: SocketAddr,
    pub state: Arc<AppState>,
    pub client: SellerClient,
    /// A client of the admin listener (send [`ADMIN_TOKEN`] with it).
    pub admin: SellerClient,
    pub running: Option<Running>,
    pub ledger_path: PathBuf,
    /// The file the exchange (re)loads its configuration from.
    pub config_path: PathBuf,
    env_vars: Arc<Mutex<BTreeMap<String, String>>>,
    buyer_ids: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Exchange {
    /// Every ledger record so far (what is on disk now).
    pub fn ledger(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.ledger_path).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("ledger line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Ledger records of one `type`.
    pub fn ledger_of(&self, kind: &str) -> Vec<Value> {
        self.ledger()
            .into_iter()
            .filter(|r| r["type"] == kind)
            .collect()
    }

    /// The index of a buyer in the configuration.
    pub fn buyer_idx(&self, id: &str) -> usize {
        self.buyer_ids
            .iter()
            .position(|b| b == id)
            .unwrap_or_else(|| panic!("no buyer {id}"))
    }

    /// Rewrites the configuration file (same ledger) and the environment for `cfg`; a
    /// reload then applies it.
    pub fn write_config(&self, cfg: &TestConfig) {
        std::fs::write(&self.config_path, cfg.toml(&self.ledger_path)).expect("write config");
        *self.env_vars.lock().unwrap() = cfg.env_vars();
    }

    /// Writes raw text as the configuration file.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// A buyer's cap usage now, found by id in the configuration serving now.
    pub fn usage(&self, id: &str) -> pingpost::core::caps::Usage {
        let rt = self.state.runtime.load();
        let buyer = rt
            .config
            .buyers
            .iter()
            .find(|b| b.id == id)
            .unwrap_or_else(|| panic!("no buyer {id} in the running configuration"));
        self.state
            .caps
            .usage(buyer.key, buyer, self.state.clock.now_ms())
    }

    /// Reservations held for a buyer right now (firm quotes not yet posted or expired).
    pub fn reserved(&self, id: &str) -> u32 {
        let usage = self.usage(id);
        let key = self.state.ids.buyer_key(id).expect("a keyed buyer");
        assert_eq!(
            usage.reserved as usize,
            self.state.caps.outstanding(key),
            "reserved count and outstanding reservations disagree for {id}"
        );
        usage.reserved
    }

    /// Leads sold to a buyer today (its daily cap window).
    pub fn sold_today(&self, id: &str) -> u32 {
        self.usage(id).sold_day
    }

    /// A GET on the admin listener with the admin token.
    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin
            .send(
                Method::GET,
                path,
                Some(ADMIN_TOKEN),
                None,
                &[],
                Bytes::new(),
            )
            .await
    }

    /// `POST /admin/reload` with the admin token.
    pub async fn reload(&self) -> Reply {
        self.admin
            .send(
                Method::POST,
                "/admin/reload",
                Some(ADMIN_TOKEN),
                None,
                &[],
                Bytes::new(),
            )
            .await
    }

    pub fn quotes_open(&self) -> usize {
        self.state.quotes.open_count()
    }

    /// `GET /metrics` (admin listener), as text.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200, "metrics: {}", r.text());
        r.text()
    }

    /// One sample of `/metrics` (0 when the series is absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    /// Waits until `metric(name, labels) >= at_least` and returns its value.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let deadline = Instant::now() + EVENT_WAIT_MAX;
        loop {
            let v = self.metric(name, labels).await;
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed at {v}, waited for {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the exchange gracefully.
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }
}

/// The value of one Prometheus sample in `text` whose labels include `labels` (0 if none).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")))
        {
            return value
                .parse()
                .unwrap_or_else(|_| panic!("bad sample: {line}"));
        }
    }
    0.0
}

/// An HTTP answer, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text()))
    }

    /// Checks the contract's error body (`{"error": {"code", "message", ...}}`) with
    /// `status` and `code` and an `application/json` type, and returns the `error` object.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got: {}",
            self.text()
        );
        let ct = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "content type {ct:?} for {}",
            self.text()
        );
        let v = self.json();
        let e = &v["error"];
        assert_eq!(e["code"], code, "{v}");
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {v}"
        );
        if let Some(fields) = e.get("fields") {
            for f in fields.as_array().expect("fields is a list") {
                assert!(
                    f["field"].is_string() && f["problem"].is_string(),
                    "bad field entry: {f}"
                );
            }
        }
        e.clone()
    }

    pub fn ping_answer(&self) -> PingAnswer {
        assert_eq!(self.status, 200, "ping answer: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a ping answer ({e}): {}", self.text()))
    }

    pub fn post_answer(&self) -> PostAnswer {
        assert_eq!(self.status, 200, "post answer: {}", self.text());
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a post answer ({e}): {}", self.text()))
    }
}

/// A seller's HTTP/1.1 client (hyper-util legacy). No pooling: each request has its own
/// connection, so nothing a test does to one request's connection leaks into the next.
#[derive(Debug, Clone)]
pub struct SellerClient {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl SellerClient {
    pub fn new(addr: SocketAddr) -> SellerClient {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        SellerClient { addr, client }
    }

    /// Sends a request; `key` is the bearer key, `content_type` the body's type.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .expect("the exchange answers");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("whole body")
                .to_bytes();
            Reply {
                status,
                headers,
                body,
            }
        };
        tokio::time::timeout(EVENT_WAIT_MAX, call)
            .await
            .expect("the exchange answers in time")
    }

    /// POSTs JSON with the main seller's key.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post_json_with(path, SELLER_KEY, &[], body).await
    }

    pub async fn post_json_with(
        &self,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Reply {
        self.send(
            Method::POST,
            path,
            Some(key),
            Some("application/json"),
            headers,
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None, None, &[], Bytes::new())
            .await
    }

    /// `/v1/ping` for a lead in `state`, expecting a 200 answer.
    pub async fn ping(&self, state: &str) -> PingAnswer {
        self.post_json("/v1/ping", &ping_body(state))
            .await
            .ping_answer()
    }

    /// `/v1/post` of the full lead for `ping_id`, expecting a 200 answer.
    pub async fn post(&self, ping_id: &str, state: &str) -> PostAnswer {
        self.post_json("/v1/post", &post_body(ping_id, state))
            .await
            .post_answer()
    }

    /// `/v1/leads` (direct post), expecting a 200 answer.
    pub async fn direct(&self, state: &str) -> PostAnswer {
        self.post_json("/v1/leads", &direct_body(state))
            .await
            .post_answer()
    }
}

/// Writes `request` on a fresh connection and reads until a whole answer has arrived
/// (head and `Content-Length` body), the server closes the connection, or `wait` passes.
/// Returns what was read and whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let mut closed = false;
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return;
                }
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if is_complete_answer(&answer) {
                return;
            }
        }
    })
    .await;
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

fn is_complete_answer(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    len.is_some_and(|len| bytes.len() >= head_end + 4 + len)
}

/// Waits until nothing accepts connections at `addr` any more (the listener is closed).
pub async fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + EVENT_WAIT_MAX;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves `bidder` with the SDK and returns its configuration entry (id, address,
/// secret) and the server handle (keep it alive for the test).
pub async fn serve(id: &str, bidder: &Arc<ScriptedBidder>) -> (TestBuyer, ServerHandle) {
    let probe = TestBuyer::new(id, SocketAddr::from(([127, 0, 0, 1], 0)));
    let (addr, handle) = bidder.serve(&probe.secret).await;
    (TestBuyer { addr, ..probe }, handle)
}
