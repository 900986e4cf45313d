//! Simulated buyers: a fleet of bidder-SDK servers on loopback, each with its own latency
//! distribution, bid probability, price range and faults (hangs, 500s, garbage answers,
//! post rejects), counting what they saw; and the exchange configuration that points at
//! them.
//!
//! Each buyer draws from its own `StdRng`, seeded from the fleet's seed and its index, so
//! a run with the same seed and the same arrival order draws the same latencies, bids and
//! faults. Latency is the buyer's own behaviour: a `tokio::time::sleep` inside the bidder.
//!
//! Must never: listen anywhere but 127.0.0.1, sleep unboundedly (every latency is capped
//! at [`LATENCY_MS_MAX`]), or hold a request past the client's patience (a hang ends when
//! the client gives up or the fleet shuts down).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bidder_sdk::{
    BidReply, Bidder, Micros, PingAnswer, PingMessage, PostMessage, PostReply, Secret,
    ServeOptions, ServerHandle,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest simulated latency, in ms: bounds every sleep whatever the distribution draws.
pub const LATENCY_MS_MAX: f64 = 60_000.0;
/// Connections each simulated buyer serves at once. A hanging buyer under HTTP/1.1 holds
/// one connection per request in flight until the client times out and closes it.
pub const SIM_CONNECTIONS_MAX: usize = 8_192;
/// How long fleet shutdown waits for in-flight requests, in ms (hangs are released at once).
pub const SIM_DRAIN_TIMEOUT_MS: u64 = 2_000;
/// How long a simulated bid stays valid, in ms.
pub const SIM_BID_EXPIRES_IN_MS: u64 = 60_000;
/// The vertical every simulated buyer takes and [`exchange_config`] defines.
pub const VERTICAL: &str = "auto_insurance";
/// The seller id [`exchange_config`] defines.
pub const SELLER_ID: &str = "loadtest";
/// Prefix of the environment variables that carry the buyers' secrets to the exchange.
pub const SECRET_ENV_PREFIX: &str = "PINGPOST_SIM_SECRET_";

/// How long a simulated buyer takes to answer, before any [`Tail`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Latency {
    /// Always `ms`.
    Fixed {
        /// The latency, in ms.
        ms: f64,
    },
    /// Normal, cut at 0.
    Normal {
        /// Mean, in ms.
        mean_ms: f64,
        /// Standard deviation, in ms.
        sd_ms: f64,
    },
    /// Log-normal: `median_ms * exp(sigma * N(0, 1))`, a realistic long right tail.
    LogNormal {
        /// Median, in ms.
        median_ms: f64,
        /// Standard deviation of the logarithm.
        sigma: f64,
    },
}

/// Occasional extra delay on top of [`Latency`] (a GC pause, a slow database).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tail {
    /// Chance per request, 0 to 1.
    pub probability: f64,
    /// Added delay, in ms.
    pub extra_ms: f64,
}

/// One simulated buyer's behaviour. Fault fractions are chances per ping, drawn in the
/// order hang, error, garbage; together they are at most 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimBuyerSpec {
    /// Display name, also used (sanitized) in the buyer's id in [`exchange_config`].
    pub name: String,
    /// Time to answer a ping or a post.
    pub latency: Latency,
    /// Occasional extra delay.
    pub tail: Option<Tail>,
    /// Chance that a well-behaved answer is a bid rather than a pass, 0 to 1.
    pub bid_probability: f64,
    /// Lowest bid, in currency units.
    pub price_min: f64,
    /// Highest bid, in currency units (bids are uniform between, in whole cents).
    pub price_max: f64,
    /// Never answers (holds the request open until the client gives up).
    pub hang_fraction: f64,
    /// Answers 500.
    pub error_fraction: f64,
    /// Answers 200 with a body that is not JSON (half of them also with a wrong
    /// content type).
    pub garbage_fraction: f64,
    /// Chance that a post is rejected (`duplicate`), 0 to 1.
    pub post_reject_rate: f64,
    /// Whether the exchange should speak HTTP/2 to it (the server speaks both anyway).
    pub http2: bool,
}

impl SimBuyerSpec {
    /// A well-behaved buyer: bids 90 % of the time, 5.00 to 25.00, no faults, accepts
    /// every post, HTTP/1.1.
    pub fn healthy(name: &str, latency: Latency) -> Self {
        SimBuyerSpec {
            name: name.to_string(),
            latency,
            tail: None,
            bid_probability: 0.9,
            price_min: 5.0,
            price_max: 25.0,
            hang_fraction: 0.0,
            error_fraction: 0.0,
            garbage_fraction: 0.0,
            post_reject_rate: 0.0,
            http2: false,
        }
    }

    /// Every problem with this spec, or none.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut probability = |what: &str, p: f64| {
            if !(0.0..=1.0).contains(&p) {
                problems.push(format!("{what} must be between 0 and 1, not {p}"));
            }
        };
        probability("bid_probability", self.bid_probability);
        probability("hang_fraction", self.hang_fraction);
        probability("error_fraction", self.error_fraction);
        probability("garbage_fraction", self.garbage_fraction);
        probability("post_reject_rate", self.post_reject_rate);
        if let Some(tail) = &self.tail {
            probability("tail.probability", tail.probability);
            if !(tail.extra_ms >= 0.0 && tail.extra_ms.is_finite()) {
                problems.push(format!("tail.extra_ms must be >= 0, not {}", tail.extra_ms));
            }
        }
        let faults = self.hang_fraction + self.error_fraction + self.garbage_fraction;
        if faults > 1.0 + 1e-9 {
            problems.push(format!("fault fractions add up to {faults}, more than 1"));
        }
        if !(self.price_min >= 0.0 && self.price_min <= self.price_max && self.price_max <= 1e6) {
            problems.push(format!(
                "prices must satisfy 0 <= price_min <= price_max <= 1000000, not {}..{}",
                self.price_min, self.price_max
            ));
        }
        if let Err(e) = LatencySampler::new(&self.latency) {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "sim buyer {:?}: {}",
                self.name,
                problems.join("; ")
            ))
        }
    }
}

/// Where a simulated buyer listens and how to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimBuyerInfo {
    /// The spec's name.
    pub name: String,
    /// Its address on 127.0.0.1; pings go to `/ping`, posts to `/post`.
    pub addr: SocketAddr,
    /// The secret it verifies signatures with (plain text, used as bytes).
    pub secret: String,
    /// Whether it should be spoken to over HTTP/2.
    pub http2: bool,
}

/// What one simulated buyer saw and did.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SimStats {
    /// The spec's name.
    pub name: String,
    /// Pings that passed the SDK's checks.
    pub pings: u64,
    /// Pings answered with a bid.
    pub bids: u64,
    /// Pings never answered.
    pub hangs: u64,
    /// Pings answered 500.
    pub errors: u64,
    /// Pings answered with garbage.
    pub garbage: u64,
    /// Posts received.
    pub posts: u64,
    /// Posts rejected.
    pub post_rejects: u64,
    /// TCP connections accepted.
    pub connections_accepted: u64,
}

/// A latency distribution, built once.
#[derive(Debug, Clone)]
enum LatencySampler {
    Fixed(f64),
    Normal(Normal<f64>),
    LogNormal(LogNormal<f64>),
}

impl LatencySampler {
    fn new(latency: &Latency) -> Result<LatencySampler, String> {
        match *latency {
            Latency::Fixed { ms } if ms >= 0.0 && ms.is_finite() => Ok(LatencySampler::Fixed(ms)),
            Latency::Fixed { ms } => Err(format!("latency ms must be >= 0, not {ms}")),
            Latency::Normal { mean_ms, sd_ms }
                if mean_ms.is_finite() && mean_ms >= 0.0 && sd_ms.is_finite() && sd_ms >= 0.0 =>
            {
                Normal::new(mean_ms, sd_ms)
                    .map(LatencySampler::Normal)
                    .map_err(|e| format!("latency: normal({mean_ms}, {sd_ms}): {e}"))
            }
            Latency::Normal { mean_ms, sd_ms } => Err(format!(
                "latency mean_ms and sd_ms must be >= 0, not {mean_ms} and {sd_ms}"
            )),
            Latency::LogNormal { median_ms, sigma }
                if median_ms > 0.0
                    && median_ms.is_finite()
                    && sigma.is_finite()
                    && sigma >= 0.0 =>
            {
                LogNormal::new(median_ms.ln(), sigma)
                    .map(LatencySampler::LogNormal)
                    .map_err(|e| format!("latency: lognormal({median_ms}, {sigma}): {e}"))
            }
            Latency::LogNormal { median_ms, sigma } => Err(format!(
                "latency median_ms must be > 0 and sigma >= 0, not {median_ms} and {sigma}"
            )),
        }
    }

    fn sample_ms(&self, rng: &mut StdRng) -> f64 {
        match self {
            LatencySampler::Fixed(ms) => *ms,
            LatencySampler::Normal(d) => d.sample(rng),
            LatencySampler::LogNormal(d) => d.sample(rng),
        }
    }
}

/// What a ping drew.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Hang,
    Error,
    /// Garbage; `true` with a JSON content type (so the parser sees it), else text/html.
    Garbage(bool),
    Bid(Micros),
    Pass,
}

#[derive(Debug, Default)]
struct Counters {
    pings: AtomicU64,
    bids: AtomicU64,
    hangs: AtomicU64,
    errors: AtomicU64,
    garbage: AtomicU64,
    posts: AtomicU64,
    post_rejects: AtomicU64,
}

/// One simulated buyer: the SDK serves it, [`Bidder::answer_ping`] plays its part.
#[derive(Debug)]
struct SimBuyer {
    spec: SimBuyerSpec,
    latency: LatencySampler,
    rng: Mutex<StdRng>,
    counters: Counters,
}

const ERROR_BODY: &[u8] = br#"{"error":{"code":"internal","message":"simulated buyer failure"}}"#;
const GARBAGE_BODY: &[u8] = b"<html><body>502 Bad Gateway (simulated)</body></html>";
const PASS_REASON: &str = "outside_criteria";
const REJECT_REASON: &str = "duplicate";

impl SimBuyer {
    fn new(spec: SimBuyerSpec, seed: u64) -> Result<SimBuyer, String> {
        spec.validate()?;
        let latency = LatencySampler::new(&spec.latency)?;
        Ok(SimBuyer {
            spec,
            latency,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            counters: Counters::default(),
        })
    }

    /// The latency for one request, in ms, tail included, within `0..=LATENCY_MS_MAX`.
    fn draw_latency_ms(&self, rng: &mut StdRng) -> f64 {
        let mut ms = self.latency.sample_ms(rng);
        if let Some(tail) = &self.spec.tail {
            if rng.gen::<f64>() < tail.probability {
                ms += tail.extra_ms;
            }
        }
        if ms.is_finite() {
            ms.clamp(0.0, LATENCY_MS_MAX)
        } else {
            0.0
        }
    }

    /// Draws a ping's latency and fate, holding the lock only for the draws.
    fn draw_ping(&self) -> (Duration, Fate) {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let rng = &mut *rng;
        let latency_ms = self.draw_latency_ms(rng);
        let spec = &self.spec;
        let fault: f64 = rng.gen();
        let fate = if fault < spec.hang_fraction {
            Fate::Hang
        } else if fault < spec.hang_fraction + spec.error_fraction {
            Fate::Error
        } else if fault < spec.hang_fraction + spec.error_fraction + spec.garbage_fraction {
            Fate::Garbage(rng.gen())
        } else if rng.gen::<f64>() < spec.bid_probability {
            let units = if spec.price_max > spec.price_min {
                rng.gen_range(spec.price_min..=spec.price_max)
            } else {
                spec.price_min
            };
            // Whole cents, as a buyer's rate card would have them.
            let cents = (units * 100.0).round() as i64;
            Fate::Bid(Micros(cents.saturating_mul(10_000)))
        } else {
            Fate::Pass
        };
        (Duration::from_secs_f64(latency_ms / 1_000.0), fate)
    }

    fn draw_post(&self) -> (Duration, bool) {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let rng = &mut *rng;
        let latency_ms = self.draw_latency_ms(rng);
        let rejected = rng.gen::<f64>() < self.spec.post_reject_rate;
        (Duration::from_secs_f64(latency_ms / 1_000.0), rejected)
    }

    fn stats(&self, connections_accepted: u64) -> SimStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            name: self.spec.name.clone(),
            pings: load(&c.pings),
            bids: load(&c.bids),
            hangs: load(&c.hangs),
            errors: load(&c.errors),
            garbage: load(&c.garbage),
            posts: load(&c.posts),
            post_rejects: load(&c.post_rejects),
            connections_accepted,
        }
    }
}

async fn sleep_unless_zero(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

impl Bidder for SimBuyer {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        // Only reached through `answer_ping`'s default, which this buyer overrides; kept
        // meaningful anyway: a well-behaved answer.
        match self.answer_ping(ping).await {
            PingAnswer::Reply(reply) => reply,
            _ => BidReply::NoBid {
                no_bid: PASS_REASON.to_string(),
            },
        }
    }

    async fn answer_ping(&self, _ping: PingMessage) -> PingAnswer {
        let c = &self.counters;
        c.pings.fetch_add(1, Ordering::Relaxed);
        let (latency, fate) = self.draw_ping();
        if let Fate::Hang = fate {
            c.hangs.fetch_add(1, Ordering::Relaxed);
            return PingAnswer::Hang;
        }
        sleep_unless_zero(latency).await;
        match fate {
            Fate::Hang => PingAnswer::Hang,
            Fate::Error => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                PingAnswer::Raw {
                    status: 500,
                    content_type: "application/json".to_string(),
                    body: Bytes::from_static(ERROR_BODY),
                }
            }
            Fate::Garbage(json_content_type) => {
                c.garbage.fetch_add(1, Ordering::Relaxed);
                let content_type = if json_content_type {
                    "application/json"
                } else {
                    "text/html"
                };
                PingAnswer::Raw {
                    status: 200,
                    content_type: content_type.to_string(),
                    body: Bytes::from_static(GARBAGE_BODY),
                }
            }
            Fate::Bid(bid) => {
                c.bids.fetch_add(1, Ordering::Relaxed);
                PingAnswer::Reply(BidReply::Bid {
                    bid,
                    bid_id: None,
                    expires_in_ms: Some(SIM_BID_EXPIRES_IN_MS),
                })
            }
            Fate::Pass => PingAnswer::Reply(BidReply::NoBid {
                no_bid: PASS_REASON.to_string(),
            }),
        }
    }

    async fn post(&self, _post: PostMessage) -> PostReply {
        let c = &self.counters;
        c.posts.fetch_add(1, Ordering::Relaxed);
        let (latency, rejected) = self.draw_post();
        sleep_unless_zero(latency).await;
        if rejected {
            c.post_rejects.fetch_add(1, Ordering::Relaxed);
            PostReply {
                accepted: false,
                buyer_lead_id: None,
                reason: Some(REJECT_REASON.to_string()),
            }
        } else {
            PostReply {
                accepted: true,
                buyer_lead_id: None,
                reason: None,
            }
        }
    }
}

/// A running fleet of simulated buyers. Stop it with [`Fleet::shutdown`]; dropping it
/// leaves the servers running until the runtime stops.
#[derive(Debug)]
pub struct Fleet {
    buyers: Vec<SimBuyerInfo>,
    sims: Vec<(Arc<SimBuyer>, Arc<AtomicU64>)>,
    handles: Vec<ServerHandle>,
}

/// A per-buyer seed: splitmix64 of the fleet seed and the index, so neighbouring
/// buyers' streams are unrelated.
fn buyer_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Starts one simulated buyer per spec, each on a loopback port of its own
/// ([`crate::ports::bind_loopback`]) with its own random secret. Fails on an invalid
/// spec (`InvalidInput`, every problem listed) or a socket error, stopping whatever it had
/// started.
pub async fn start_fleet(specs: &[SimBuyerSpec], seed: u64) -> io::Result<Fleet> {
    let problems: Vec<String> = specs
        .iter()
        .filter_map(|spec| spec.validate().err())
        .collect();
    if !problems.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            problems.join("\n"),
        ));
    }
    let mut fleet = Fleet {
        buyers: Vec::with_capacity(specs.len()),
        sims: Vec::with_capacity(specs.len()),
        handles: Vec::with_capacity(specs.len()),
    };
    for (index, spec) in specs.iter().enumerate() {
        match start_one(spec, buyer_seed(seed, index)).await {
            Ok((info, sim, accepted, handle)) => {
                fleet.buyers.push(info);
                fleet.sims.push((sim, accepted));
                fleet.handles.push(handle);
            }
            Err(e) => {
                fleet.shutdown().await;
                return Err(e);
            }
        }
    }
    Ok(fleet)
}

async fn start_one(
    spec: &SimBuyerSpec,
    seed: u64,
) -> io::Result<(SimBuyerInfo, Arc<SimBuyer>, Arc<AtomicU64>, ServerHandle)> {
    let sim = SimBuyer::new(spec.clone(), seed)
        .map(Arc::new)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // Secrets are random, not seeded: the seed is for behaviour, and may be published.
    let secret_text = format!("sim-{:032x}", rand::random::<u128>());
    let secret =
        Secret::new(&secret_text).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let accepted = Arc::new(AtomicU64::new(0));
    let mut options = ServeOptions::new(secret);
    options.connections_max = SIM_CONNECTIONS_MAX;
    options.drain_timeout_ms = SIM_DRAIN_TIMEOUT_MS;
    options.connections_accepted = Some(Arc::clone(&accepted));
    let listener = crate::ports::bind_loopback_tokio()?;
    let (addr, handle) = bidder_sdk::spawn_on(listener, Arc::clone(&sim), options).await?;
    let info = SimBuyerInfo {
        name: spec.name.clone(),
        addr,
        secret: secret_text,
        http2: spec.http2,
    };
    Ok((info, sim, accepted, handle))
}

impl Fleet {
    /// The running buyers, in spec order.
    pub fn buyers(&self) -> &[SimBuyerInfo] {
        &self.buyers
    }

    /// What each buyer saw so far, in spec order.
    pub fn stats(&self) -> Vec<SimStats> {
        self.sims
            .iter()
            .map(|(sim, accepted)| sim.stats(accepted.load(Ordering::Relaxed)))
            .collect()
    }

    /// Stops every buyer (hanging requests are dropped, others get up to
    /// [`SIM_DRAIN_TIMEOUT_MS`] to finish).
    pub async fn shutdown(self) {
        let _ = self.shutdown_with_stats().await;
    }

    /// [`Fleet::shutdown`], then the final counts.
    pub async fn shutdown_with_stats(self) -> Vec<SimStats> {
        let Fleet {
            buyers,
            sims,
            handles,
        } = self;
        let stopped = futures_util::future::join_all(handles.into_iter().map(|h| h.shutdown()));
        for (result, buyer) in stopped.await.into_iter().zip(&buyers) {
            if let Err(e) = result {
                tracing::warn!(buyer = %buyer.name, error = %e, "sim buyer stopped with an error");
            }
        }
        let fleet = Fleet {
            buyers,
            sims,
            handles: Vec::new(),
        };
        fleet.stats()
    }
}

/// Options of the exchange configuration [`exchange_config`] writes.
#[derive(Debug, Clone)]
pub struct ExchangeOpts {
    /// `server.listen`.
    pub listen: SocketAddr,
    /// `server.ledger_path`.
    pub ledger_path: PathBuf,
    /// The vertical's `auction_deadline_ms`.
    pub deadline_ms: u64,
    /// Every buyer's `ping_timeout_ms`.
    pub ping_timeout_ms: u64,
    /// Every buyer's `post_timeout_ms`.
    pub post_timeout_ms: u64,
    /// The seller's bearer key (the config stores its SHA-256).
    pub seller_key: String,
    /// `server.requests_in_flight_max`.
    pub requests_in_flight_max: usize,
    /// `server.breaker.failures`.
    pub breaker_failures: u32,
    /// `server.breaker.open_ms`.
    pub breaker_open_ms: u64,
    /// `server.breaker.probe_interval_ms`.
    pub breaker_probe_interval_ms: u64,
    /// Buyers configured beside the simulated ones that never see a generated lead: each
    /// takes one state the lead generator never picks (some with ZIP prefixes, schedules
    /// and caps), so the eligible set stays the simulated buyers whatever their number.
    pub filler_buyers: usize,
}

/// States (and DC) the lead generator never picks: the filler buyers take these.
pub const FILLER_STATES: [&str; 20] = [
    "AK", "AR", "DC", "DE", "HI", "IA", "ID", "KS", "ME", "MS", "MT", "ND", "NE", "NH", "NM", "RI",
    "SD", "VT", "WV", "WY",
];

/// The variable all filler buyers read their (never used) secret from.
pub const FILLER_SECRET_ENV: &str = "PINGPOST_SIM_FILLER_SECRET";

/// The fan-out limit written: at least the exchange's default (64), enough for every
/// buyer, at most the loader's limit (1024).
const BUYERS_PER_AUCTION_MAX_FLOOR: usize = 64;
const BUYERS_PER_AUCTION_MAX_CEILING: usize = 1_024;
/// Longest buyer id the config accepts (a "name": letters, digits, `_`, `-`).
const ID_LEN_MAX: usize = 64;
/// Longest display name the config accepts.
const DISPLAY_NAME_LEN_MAX: usize = 200;

/// The `auto_insurance` field schema of `config/default.toml`, so leads that the default
/// configuration accepts are accepted here too.
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

/// A TOML basic string: JSON's escapes (`\"`, `\\`, `\n`, `\uXXXX`) are all valid TOML.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// A config id for buyer `index`: `sim{index}_` and the name's letters, digits, `_` and
/// `-` (others become `_`), at most 64 characters. Unique by its index.
pub fn buyer_id(index: usize, name: &str) -> String {
    let mut id = format!("sim{index}");
    let sanitized: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !sanitized.is_empty() {
        id.push('_');
        id.push_str(&sanitized);
    }
    id.truncate(ID_LEN_MAX);
    id
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first line of every exchange configuration loadtest writes: an `--out` directory
/// whose `exchange.toml` starts with it holds an earlier run's files, which a run may
/// replace.
pub const EXCHANGE_CONFIG_HEADER: &str =
    "# Generated by loadtest for a run against simulated buyers on loopback.";

/// A complete exchange config (TOML, in the format of `config/default.toml`) with one
/// `auto_insurance` vertical, one seller whose key is `opts.seller_key` (stored as its
/// SHA-256), and one buyer per simulated buyer (pings to `http://addr/ping`, posts to
/// `/post`, `http = "2"` where the sim speaks HTTP/2, every state, no caps, always open),
/// plus the environment the exchange needs for the buyers' secrets: `(variable, secret)`,
/// one per buyer, named `PINGPOST_SIM_SECRET_<index>`.
pub fn exchange_config(
    buyers: &[SimBuyerInfo],
    opts: &ExchangeOpts,
) -> (String, Vec<(String, String)>) {
    use std::fmt::Write as _;

    let buyers_per_auction_max = buyers
        .len()
        .clamp(BUYERS_PER_AUCTION_MAX_FLOOR, BUYERS_PER_AUCTION_MAX_CEILING);
    let mut toml = String::with_capacity(2_048 + 512 * buyers.len());
    let mut env = Vec::with_capacity(buyers.len());
    // `write!` to a String cannot fail.
    toml.push_str(EXCHANGE_CONFIG_HEADER);
    let _ = write!(
        toml,
        r#"

[server]
listen = {listen}
ledger_path = {ledger}
requests_in_flight_max = {in_flight}
buyers_per_auction_max = {buyers_per_auction_max}

[server.breaker]
failures = {failures}
open_ms = {open_ms}
probe_interval_ms = {probe_ms}

[verticals.{VERTICAL}]
currency = "USD"
auction_deadline_ms = {deadline}
floor = 0

{FIELDS}
[sellers.{SELLER_ID}]
name = "Load test"
key_sha256 = "{key_sha256}"
verticals = ["{VERTICAL}"]
payout = {{ model = "revenue_share", share_pct = 80 }}
# Every bid is an open quote for quote_ttl_ms (60 s): at 2,000/s that is 120,000 quotes,
# far past the per-seller default of 1,000 (which would answer 429).
quotes_open_max = 1000000
"#,
        listen = toml_string(&opts.listen.to_string()),
        ledger = toml_string(&opts.ledger_path.to_string_lossy()),
        in_flight = opts.requests_in_flight_max,
        failures = opts.breaker_failures,
        open_ms = opts.breaker_open_ms,
        probe_ms = opts.breaker_probe_interval_ms,
        deadline = opts.deadline_ms,
        key_sha256 = sha256_hex(&opts.seller_key),
    );
    for (index, buyer) in buyers.iter().enumerate() {
        let id = buyer_id(index, &buyer.name);
        let secret_env = format!("{SECRET_ENV_PREFIX}{index}");
        let name: String = if buyer.name.trim().is_empty() {
            id.clone()
        } else {
            buyer.name.chars().take(DISPLAY_NAME_LEN_MAX).collect()
        };
        let _ = write!(
            toml,
            r#"
[buyers.{id}]
name = {name}
ping_url = "http://{addr}/ping"
post_url = "http://{addr}/post"
http = "{http}"
secret_env = "{secret_env}"
ping_timeout_ms = {ping_timeout}
post_timeout_ms = {post_timeout}
verticals = ["{VERTICAL}"]
timezone = "UTC"
"#,
            name = toml_string(&name),
            addr = buyer.addr,
            http = if buyer.http2 { "2" } else { "1.1" },
            ping_timeout = opts.ping_timeout_ms,
            post_timeout = opts.post_timeout_ms,
        );
        env.push((secret_env, buyer.secret.clone()));
    }
    if opts.filler_buyers > 0 {
        env.push((FILLER_SECRET_ENV.into(), "filler-buyer-secret".into()));
    }
    for i in 0..opts.filler_buyers {
        // Port 9 (discard) on loopback: a filler buyer is never pinged.
        let _ = write!(
            toml,
            "\n[buyers.filler{i}]\nping_url = \"http://127.0.0.1:9/ping\"\npost_url = \"http://127.0.0.1:9/post\"\nsecret_env = \"{FILLER_SECRET_ENV}\"\nverticals = [\"{VERTICAL}\"]\nstates_include = [\"{}\"]\ntimezone = \"America/Chicago\"\n",
            FILLER_STATES[i % FILLER_STATES.len()]
        );
        if i % 3 == 0 {
            let _ = writeln!(toml, "zip_prefixes = [\"{:03}\"]", i % 1000);
        }
        if i % 4 == 0 {
            toml.push_str("schedule = { mon = [\"08:00-20:00\"], tue = [\"08:00-20:00\"], wed = [\"08:00-20:00\"], thu = [\"08:00-20:00\"], fri = [\"08:00-18:00\"] }\n");
        }
        if i % 2 == 0 {
            toml.push_str("caps = { hourly = 50, daily = 400 }\n");
        }
    }
    (toml, env)
}

/// Resolves when stdin reaches EOF (or fails), or on SIGTERM or SIGINT: how a child
/// process learns that its parent wants it to stop.
pub(crate) async fn stdin_eof_or_signal() {
    // A plain thread, not `tokio::io::stdin`: tokio's blocking read would keep the
    // runtime from shutting down after a signal while stdin stays open. The thread is
    // detached and dies with the process.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    let watcher = std::thread::Builder::new()
        .name("stdin-eof".into())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = io::stdin().lock();
            let mut scratch = [0_u8; 256];
            // Bounded by the parent's input: whatever it writes is discarded until EOF.
            loop {
                match stdin.read(&mut scratch) {
                    Ok(0) => break,
                    Err(e) if e.kind() != io::ErrorKind::Interrupted => break,
                    _ => {}
                }
            }
            let _ = closed.send(());
        });
    let stdin_closed = async {
        match watcher {
            // Sent or dropped: either way the watcher is done.
            Ok(_) => {
                let _ = stdin_closed.await;
            }
            // No thread: rely on the signals.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let terminated = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            // No handler: rely on stdin and Ctrl-C.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = stdin_closed => {}
        () = terminated => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Writes one line of JSON to stdout and flushes it (a parent reads it line by line).
pub(crate) fn print_json_line(value: &impl Serialize) -> anyhow::Result<()> {
    let line = serde_json::to_string(value)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// The `loadtest sims` child process: starts the fleet, prints one line of JSON (the
/// `Vec<SimBuyerInfo>`), serves until stdin reaches EOF or SIGTERM, then stops the fleet,
/// prints one line of JSON (the `Vec<SimStats>`) and returns.
pub async fn run_fleet_process(specs: Vec<SimBuyerSpec>, seed: u64) -> anyhow::Result<()> {
    let fleet = start_fleet(&specs, seed).await?;
    if let Err(e) = print_json_line(&fleet.buyers()) {
        fleet.shutdown().await;
        return Err(e);
    }
    stdin_eof_or_signal().await;
    let stats = fleet.shutdown_with_stats().await;
    // The stats are for the loadtest that started this fleet: when it died (a SIGKILL),
    // the pipe is closed and nobody reads them, which is no error (black-box round
    // 125b: "loadtest: Broken pipe (os error 32)" after every SIGKILL).
    match print_json_line(&stats) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        done => done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SimBuyerSpec {
        SimBuyerSpec::healthy("a", Latency::Fixed { ms: 0.0 })
    }

    #[test]
    fn validation_lists_every_problem() {
        assert_eq!(spec().validate(), Ok(()));
        let bad = SimBuyerSpec {
            bid_probability: 1.5,
            hang_fraction: 0.6,
            error_fraction: 0.6,
            price_min: 30.0,
            latency: Latency::LogNormal {
                median_ms: 0.0,
                sigma: 1.0,
            },
            ..spec()
        };
        let e = bad.validate().unwrap_err();
        for what in ["bid_probability", "fault fractions", "prices", "median_ms"] {
            assert!(e.contains(what), "{what} in {e}");
        }
        let negative_sd = SimBuyerSpec {
            latency: Latency::Normal {
                mean_ms: 5.0,
                sd_ms: -1.0,
            },
            ..spec()
        };
        assert!(negative_sd.validate().is_err());
    }

    #[test]
    fn draws_are_reproducible_and_in_range() {
        let spec = SimBuyerSpec {
            latency: Latency::LogNormal {
                median_ms: 10.0,
                sigma: 0.5,
            },
            tail: Some(Tail {
                probability: 0.1,
                extra_ms: 100.0,
            }),
            error_fraction: 0.1,
            ..spec()
        };
        let draws = |seed| {
            let sim = SimBuyer::new(spec.clone(), seed).unwrap();
            (0..500).map(|_| sim.draw_ping()).collect::<Vec<_>>()
        };
        let a = draws(7);
        let b = draws(7);
        let c = draws(8);
        let key = |d: &Vec<(Duration, Fate)>| {
            d.iter()
                .map(|(l, f)| format!("{l:?}{f:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        assert_ne!(key(&a), key(&c));
        let mut bids = 0;
        let mut errors = 0;
        for (latency, fate) in &a {
            assert!(*latency <= Duration::from_millis(60_000));
            match fate {
                Fate::Bid(Micros(m)) => {
                    bids += 1;
                    assert!((5_000_000..=25_000_000).contains(m), "{m}");
                    assert_eq!(m % 10_000, 0, "whole cents");
                }
                Fate::Error => errors += 1,
                Fate::Pass => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // 500 draws: 10 % errors, 90 % of the rest bid; wide margins.
        assert!((20..=90).contains(&errors), "{errors}");
        assert!((340..=470).contains(&bids), "{bids}");
        let mut sorted: Vec<f64> = a.iter().map(|(l, _)| l.as_secs_f64() * 1e3).collect();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        assert!((8.0..=13.0).contains(&median), "median {median}");
    }

    #[test]
    fn seeds_differ_per_buyer() {
        assert_ne!(buyer_seed(1, 0), buyer_seed(1, 1));
        assert_ne!(buyer_seed(1, 0), buyer_seed(2, 0));
    }

    #[test]
    fn ids_are_config_names() {
        assert_eq!(buyer_id(3, "fast buyer #1"), "sim3_fast_buyer__1");
        assert_eq!(buyer_id(0, ""), "sim0");
        assert_eq!(buyer_id(12, &"x".repeat(100)).len(), 64);
        assert_eq!(toml_string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(
            sha256_hex("demo-seller-key"),
            "19891756889929907bf4eafa27a6b8e079b36eb8a2c2e30804dde40332c27176"
        );
    }
}
