//! Everything the request handlers share: the swappable [`Runtime`] (configuration,
//! models, generation, pre-resolved metrics) behind `ArcSwap`, the core's books, the id
//! registry, the buyer client, the ledger, metrics and limits.
//!
//! Architecture invariant: every per-party table here (caps, breakers, rate limits,
//! quotes, idempotency keys) is keyed by the stable [`BuyerKey`] / [`SellerKey`] from
//! [`IdRegistry`], never by a position in one configuration, so [`AppState::reload`] can
//! reorder, add or remove buyers and sellers without moving anyone's counts. A request
//! loads the runtime once and uses that one snapshot to the end; a reload swaps the whole
//! runtime at once, so no request ever sees half of two configurations.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use proto::FieldProblem;

use crate::buyers::Target;
use crate::clock::Clock;
use crate::config::{Config, ConfigErrors, SellerKey};
use crate::core::breaker::BreakerBook;
use crate::core::caps::CapBook;
use crate::core::ids::IdRegistry;
use crate::core::quotes::QuoteBook;
use crate::core::settlement::drop_hold;
use crate::core::slots::Slots;
use crate::core::UnixMs;
use crate::idempotency::IdempotencyStore;
use crate::ledger::Ledger;
use crate::metrics::{BuyerMetrics, Metrics, SellerMetrics};
use crate::models::stats::BuyerStats;
use crate::models::ModelSet;

/// One configuration with everything derived from it, swapped as one unit.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    /// 1 for the configuration the process started with, +1 per applied reload. Every
    /// auction record carries the generation it ran under.
    pub generation: u64,
    /// The model set serving each vertical (by position in `config.verticals`; `None`:
    /// no model, so no lead score and cold-start rates in the award).
    pub models: Vec<Option<Arc<ModelSet>>>,
    /// The drift guards' epoch for these models: the generation of the runtime whose model
    /// swap last started the guards again (0 at start). A reload keeps it.
    pub guard_epoch: u64,
    /// Metric series by position in `config.buyers`, resolved the first time the buyer is
    /// pinged or posted to (each series is labelled by the buyer's id, so a buyer keeps
    /// its series across reloads). A buyer never pinged has none.
    pub buyer_metrics: Vec<OnceLock<BuyerMetrics>>,
    /// The same for `config.sellers`, resolved at the seller's first request (its
    /// `pingpost_seller_limited_total` series then exist, at 0).
    pub seller_metrics: Vec<OnceLock<SellerMetrics>>,
    /// Each buyer's ping URL parsed, by position in `config.buyers`, on first use (boxed:
    /// ten thousand configured buyers cost a pointer each until they are pinged). Shared
    /// by the runtimes of one configuration (a model swap keeps them).
    pub ping_targets: Arc<Vec<OnceLock<Option<Box<Target>>>>>,
    /// `GET /openapi.json` for this configuration, made on first use and shared by every
    /// answer (one buffer, however many clients are slow to read it). Shared by the
    /// runtimes of one configuration (a model swap keeps it).
    pub openapi: Arc<OnceLock<bytes::Bytes>>,
}

impl Runtime {
    /// The seller API document of this runtime's configuration (see [`Runtime::openapi`]).
    pub fn openapi_document(&self) -> bytes::Bytes {
        self.openapi
            .get_or_init(|| bytes::Bytes::from(crate::openapi::document(&self.config)))
            .clone()
    }

    /// Buyer `idx`'s series, resolved on first use.
    pub fn buyer_metrics(&self, metrics: &Metrics, idx: usize) -> Option<&BuyerMetrics> {
        let slot = self.buyer_metrics.get(idx)?;
        let buyer = self.config.buyers.get(idx)?;
        Some(slot.get_or_init(|| metrics.buyer(&buyer.id)))
    }

    /// Seller `idx`'s series, resolved on first use.
    pub fn seller_metrics(&self, metrics: &Metrics, idx: usize) -> Option<&SellerMetrics> {
        let slot = self.seller_metrics.get(idx)?;
        let seller = self.config.sellers.get(idx)?;
        Some(slot.get_or_init(|| metrics.seller(&seller.id)))
    }

    /// Buyer `idx`'s ping URL, parsed on first use (`None`: no ping URL, or not a URL).
    pub fn ping_target(&self, idx: usize) -> Option<&Target> {
        let slot = self.ping_targets.get(idx)?;
        let buyer = self.config.buyers.get(idx)?;
        slot.get_or_init(|| {
            buyer
                .ping_url
                .as_deref()
                .and_then(Target::parse)
                .map(Box::new)
        })
        .as_deref()
    }
}

/// The old runtime's model sets for the new configuration, by vertical name; a set that
/// no longer fits its vertical refuses the reload.
fn carry_models(
    old: &Runtime,
    config: &Config,
) -> Result<Vec<Option<Arc<ModelSet>>>, Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let models = config
        .verticals
        .iter()
        .map(|v| {
            let set = old
                .config
                .vertical_by_name
                .get(&v.name)
                .and_then(|&i| old.models.get(i))
                .and_then(Clone::clone)?;
            for m in set.mismatches(v) {
                problems.push(FieldProblem::new(
                    format!("verticals.{}.features", v.name),
                    format!("{m}; serve another model (POST /admin/models) first"),
                ));
            }
            Some(set)
        })
        .collect();
    if problems.is_empty() {
        Ok(models)
    } else {
        Err(problems)
    }
}

/// One metrics slot per party of `ids` (the new configuration's buyer or seller ids, in
/// order): already resolved for one (by id) that `old` (the old configuration's ids with
/// their slots) had resolved, so a swap does not make the next requests resolve every
/// party's series again; empty for the others.
fn metric_slots<'a, T: Clone + 'a>(
    ids: impl Iterator<Item = &'a str>,
    old: impl Iterator<Item = (&'a str, &'a OnceLock<T>)>,
) -> Vec<OnceLock<T>> {
    let resolved: std::collections::HashMap<&str, &T> = old
        .filter_map(|(id, slot)| slot.get().map(|m| (id, m)))
        .collect();
    ids.map(|id| {
        let slot = OnceLock::new();
        if let Some(m) = resolved.get(id) {
            let _ = slot.set((*m).clone());
        }
        slot
    })
    .collect()
}

/// [`metric_slots`] of `config`'s buyers, carried from `old`'s.
fn buyer_slots(config: &Config, old: Option<&Runtime>) -> Vec<OnceLock<BuyerMetrics>> {
    let carried = old.into_iter().flat_map(|rt| {
        rt.config
            .buyers
            .iter()
            .map(|b| b.id.as_str())
            .zip(&rt.buyer_metrics)
    });
    metric_slots(config.buyers.iter().map(|b| b.id.as_str()), carried)
}

/// [`metric_slots`] of `config`'s sellers, carried from `old`'s.
fn seller_slots(config: &Config, old: Option<&Runtime>) -> Vec<OnceLock<SellerMetrics>> {
    let carried = old.into_iter().flat_map(|rt| {
        rt.config
            .sellers
            .iter()
            .map(|s| s.id.as_str())
            .zip(&rt.seller_metrics)
    });
    metric_slots(config.sellers.iter().map(|s| s.id.as_str()), carried)
}

fn target_slots(config: &Config) -> Arc<Vec<OnceLock<Option<Box<Target>>>>> {
    Arc::new(config.buyers.iter().map(|_| OnceLock::new()).collect())
}

/// Where a reload reads the configuration from: the same source the process started
/// from (the `--config` file, or the embedded default text), with the same command-line
/// overrides and environment.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, ConfigErrors> + Send + Sync>;

/// What the model directory watch last saw of a `CHAMPION` that names another version
/// than the one serving ([`AppState::sync_champions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChampionSeen {
    /// The file is gone while a model serves: the model stays (said once).
    Removed,
    /// The version it named (`None`: empty): served if it names the same at the next look.
    Read(Option<String>),
}

/// The version a [`ChampionFailure`] names when `CHAMPION` itself cannot be read.
pub const UNREADABLE_CHAMPION: &str = "(CHAMPION unreadable)";

/// A vertical's `CHAMPION` that could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChampionFailure {
    /// The version `CHAMPION` names.
    pub version: String,
    /// Every problem, as logged.
    pub problems: Vec<String>,
}

/// Why a reload was refused (the old runtime keeps serving).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadError {
    /// The exchange was started from a `Config` value, not a source it can read again.
    NoSource,
    /// Every problem with the new configuration (the loader's, and settings that cannot
    /// change without a restart), as key path and problem.
    Invalid(Vec<FieldProblem>),
    /// The exchange itself failed (a file it must write, a task that ended): nothing in
    /// the request was wrong, and nothing changed (`500 internal`; black-box round 90b: a
    /// full disk was answered `400`, a request problem).
    Failed(String),
}

/// A reload refused because [`crate::models::learning::LOADER_QUEUE_MAX`] reloads wait
/// for the reload thread already: nothing was read or changed.
pub const RELOADS_WAITING: &str = "16 reloads are waiting for the reload thread already; nothing was reloaded; send it again once they are done";

/// A reload that could not run (no thread for it, or it failed inside the exchange).
pub const RELOAD_NOT_RUN: &str = "the reload could not run inside the exchange (no thread could be made for it, or it failed); nothing was reloaded and the running configuration stays; send it again";

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::NoSource => f.write_str("no configuration source to reload from"),
            ReloadError::Invalid(problems) => Problems(problems).fmt(f),
            ReloadError::Failed(why) => f.write_str(why),
        }
    }
}

/// Every problem of a refused reload or model swap, for its log line: "N problem(s):
/// field: problem; ..." (SIGHUP's, the model directory's and the admin routes' alike; the
/// line says which was refused: black-box round 35, a model swap's said "the
/// configuration has").
#[derive(Debug, Clone, Copy)]
pub struct Problems<'a>(pub &'a [FieldProblem]);

impl std::fmt::Display for Problems<'_> {
    /// The first [`proto::error::FIELDS_LISTED_MAX`] problems, as the `400` lists them,
    /// and how many more: a log line stays bounded (black-box round 133a: 75,167
    /// problems made one line of 4 MB, which log shippers cut or drop).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} problem(s):", self.0.len())?;
        for p in self.0.iter().take(proto::error::FIELDS_LISTED_MAX) {
            write!(f, " {}: {};", p.field, p.problem)?;
        }
        if let Some(more) = self.0.len().checked_sub(proto::error::FIELDS_LISTED_MAX) {
            if more > 0 {
                write!(
                    f,
                    " ... and {more} more (the first {} listed)",
                    proto::error::FIELDS_LISTED_MAX
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ReloadError {}

/// A configuration problem as a reload tells it: a variable that is not set is read
/// from the environment the exchange started with, which a reload cannot change
/// (black-box round 74b: the message read as if exporting it and reloading would do).
fn in_reload(message: &str) -> std::borrow::Cow<'_, str> {
    if message.contains(": environment variable ") && message.ends_with(" is not set") {
        format!(
            "{message} in the exchange's environment, which is the one it started with: \
             a reload cannot add a variable; set it and restart"
        )
        .into()
    } else {
        message.into()
    }
}

/// A loader message `path: problem` as a field problem, with the same key path as at
/// start (a message without a path is put under `config`). The path is read as the loader
/// writes it: dotted keys, each bare or quoted as a Rust string (`buyers."bad name"`, with
/// `\"` and `\\` escaped), each followed by any `[N]` indexes; a quoted key may hold a
/// space or `: ` (black-box round 86b: such a problem was put under `config`).
pub fn field_problem(message: &str) -> FieldProblem {
    match key_path_len(message) {
        Some(n) => FieldProblem::new(&message[..n], &message[n + 2..]),
        None => FieldProblem::new("config", message),
    }
}

/// A loader message as one bounded line, `path: problem` with each part cut as
/// [`field_problem`] cuts it (a message without a path cut as a problem): what start and
/// `--check-config` print (black-box round 147a: a seller id of 5,000,000 characters made a
/// 5 MB line there, while the reload's answer and log were cut).
pub fn bounded_problem_line(message: &str) -> String {
    let p = field_problem(message);
    if key_path_len(message).is_some() {
        format!("{}: {}", p.field, p.problem)
    } else {
        p.problem
    }
}

/// The length of the key path that `message` starts with, if it starts with one followed
/// by `: `.
fn key_path_len(message: &str) -> Option<usize> {
    let b = message.as_bytes();
    let mut i = 0;
    loop {
        // One key, bare or quoted.
        if b.get(i) == Some(&b'"') {
            i += 1;
            loop {
                match b.get(i)? {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            i += 1;
        } else {
            let start = i;
            while b
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
            {
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        // Its indexes.
        while b.get(i) == Some(&b'[') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start || b.get(i) != Some(&b']') {
                return None;
            }
            i += 1;
        }
        match (b.get(i), b.get(i + 1)) {
            (Some(b'.'), _) => i += 1,
            (Some(b':'), Some(b' ')) => return Some(i),
            _ => return None,
        }
    }
}

/// A per-seller token bucket (requests per second, a burst of one second), by seller key.
/// A bucket is `None` until its seller's first request (then full).
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Slots<Mutex<Option<(f64, UnixMs)>>>,
}

impl RateLimiter {
    fn new(n: usize) -> RateLimiter {
        RateLimiter {
            buckets: Slots::with_len(n),
        }
    }

    /// Makes room for seller keys `0..n`; never shrinks.
    fn grow(&self, n: usize) {
        self.buckets.grow(n);
    }

    /// Takes one token from `seller`'s bucket of `rate_per_s`; false when empty.
    pub fn allow(&self, seller: SellerKey, rate_per_s: u32, now: UnixMs) -> bool {
        let Some(bucket) = self.buckets.get(seller.slot()) else {
            return true;
        };
        let mut guard = bucket.lock();
        let b = guard.get_or_insert((f64::MAX, now));
        let rate = f64::from(rate_per_s);
        let elapsed_s = (now - b.1).max(0) as f64 / 1000.0;
        b.0 = (b.0.min(rate) + elapsed_s * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Background tasks that must end before the exchange does (the late-post watches): a
/// count and a wake-up, so shutdown can wait for the last one (on whichever worker's event
/// loop each runs) without holding their handles.
#[derive(Debug, Default)]
pub struct BackgroundTasks {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One counted task; the count drops when it ends, also when it is aborted or panics.
struct Counted(Arc<BackgroundTasks>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self
            .0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// A place among the running tasks of a [`BackgroundTasks`], held by a task spawned
/// elsewhere ([`BackgroundTasks::hold`]); given back when dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] Counted);

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Counted")
    }
}

impl BackgroundTasks {
    /// Counts a task spawned by the caller until the returned place is dropped (move it
    /// into the task: it is dropped when the task ends, is aborted or panics).
    pub fn hold(self: &Arc<Self>) -> Held {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Held(Counted(Arc::clone(self)))
    }

    /// Spawns `task` on the current event loop, counted until it ends.
    pub fn spawn<F>(self: &Arc<Self>, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.running
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let counted = Counted(Arc::clone(self));
        tokio::spawn(async move {
            let _counted = counted;
            task.await;
        });
    }

    /// How many are running.
    pub fn running(&self) -> usize {
        self.running.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until none is running (one spawned meanwhile is waited for too), or `bound`
    /// has passed; returns how many are still running.
    pub async fn wait_idle(&self, bound: std::time::Duration) -> usize {
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.running() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(bound, idle).await;
        self.running()
    }
}

/// Shared state of one running exchange.
/// The least time the dedup book keeps a sale, whatever is configured: the default
/// window, so a start (or reload) with de-duplication paused does not forget the
/// history a later reload turns back on (black-box round 31: a start with every window at
/// 0 forgot it, and the consumers sold again).
pub const DEDUP_KEEP_MIN_MS: u64 = 30 * crate::core::dedup::DAY_MS;

/// How long the dedup book keeps a sale: the longest window of any vertical, and at
/// least [`DEDUP_KEEP_MIN_MS`].
pub fn dedup_keep_ms(config: &Config) -> u64 {
    config
        .verticals
        .iter()
        .filter_map(|v| v.dedup.as_ref().map(|d| d.window_ms))
        .max()
        .unwrap_or(0)
        .max(DEDUP_KEEP_MIN_MS)
}

pub struct AppState {
    pub runtime: ArcSwap<Runtime>,
    /// What each buyer did lately: the cold-start rates and buyer features.
    pub stats: BuyerStats,
    /// The key of the lead fingerprint in every auction record (kept in the ledger
    /// directory; see [`crate::fingerprint`]).
    pub fingerprint: crate::fingerprint::Fingerprinter,
    /// What the buyer trust store (`buyer_tls`) was built from ([`crate::tls::TrustSource`]).
    pub buyer_trust: Mutex<crate::tls::TrustSource>,
    /// Dispositions recorded since the last retraining (the count trigger).
    pub dispositions_since_train: std::sync::atomic::AtomicU64,
    /// A champion that failed to load, by vertical, so the watch does not retry (and log)
    /// the same broken version every tick, and `/readyz` can say so. Cleared when a swap
    /// of that vertical succeeds or its `CHAMPION` names what serves again.
    champion_failures: Mutex<std::collections::HashMap<String, ChampionFailure>>,
    /// The watch's last look at a vertical whose `CHAMPION` names another version than
    /// the one serving ([`AppState::sync_champions`]): removed while a model serves (said
    /// once, the model stays), or what it read (served when the next look reads the same).
    champion_seen: Mutex<std::collections::HashMap<String, ChampionSeen>>,
    /// Stable buyer and seller keys (never reused while the process lives).
    pub ids: IdRegistry,
    pub caps: CapBook,
    pub quotes: QuoteBook,
    /// The consumers sold within their vertical's dedup window, and those being posted.
    pub dedup: crate::core::dedup::DedupBook,
    pub breakers: BreakerBook,
    /// Buyer calls still heard out after their auction ended, per buyer and in all.
    pub late_calls: Arc<crate::late::LateCalls>,
    /// Deliveries still heard out after their post timeout, per buyer: a buyer with
    /// `server.late_posts_per_buyer_max` of them is sent no more leads (`busy`).
    pub late_posts: Arc<crate::late::LateCalls>,
    /// Open connections across every worker, bounded by `server.connections_max` (one
    /// permit per accepted connection).
    pub connections: Arc<tokio::sync::Semaphore>,
    pub ledger: Ledger,
    pub metrics: Metrics,
    pub idempotency: IdempotencyStore,
    pub clock: Clock,
    pub rate_limits: RateLimiter,
    /// Each seller's requests being processed, for `sellers.ID.requests_in_flight_max`.
    pub seller_in_flight: crate::core::slots::Slots<std::sync::atomic::AtomicUsize>,
    /// Each seller's connections, by stable key, for `sellers.ID.connections_max`: a
    /// connection counts for the first party (seller or buyer) whose key it carries, until
    /// it closes ([`crate::server::PartyConnection`]).
    pub seller_connections: Arc<crate::core::slots::Slots<std::sync::atomic::AtomicUsize>>,
    /// Each buyer's connections, by stable key, for
    /// [`crate::dispositions::connections_per_buyer_max`], as `seller_connections`.
    pub buyer_connections: Arc<crate::core::slots::Slots<std::sync::atomic::AtomicUsize>>,
    /// Each buyer's dispositions in flight, by stable key, of at most
    /// [`crate::dispositions::in_flight_per_buyer_max`].
    pub buyer_in_flight: crate::core::slots::Slots<std::sync::atomic::AtomicUsize>,
    /// Each buyer's pings in flight (late ones being heard out included), by stable key,
    /// for `buyers.ID.pings_in_flight_max`: counted for every buyer, so that a limit a
    /// reload sets finds the pings already in flight.
    pub pings_in_flight: Arc<crate::late::LateCalls>,
    /// Every buyer's dispositions in flight together, of at most
    /// [`crate::dispositions::in_flight_all_buyers_max`].
    pub dispositions_in_flight: std::sync::atomic::AtomicUsize,
    /// Requests being processed, bounded by `server.requests_in_flight_max`.
    pub in_flight: tokio::sync::Semaphore,
    /// The connection slots (`connections`) with the per-IP limit, shared by every
    /// worker's accept loop.
    pub conn_gate: Arc<bidder_sdk::listener::ConnectionGate>,
    /// The seller listener's certificate (`[server.tls]`), `None` for cleartext;
    /// swapped by [`crate::tls::reload_tls`].
    pub tls: Option<bidder_sdk::listener::TlsAcceptor>,
    /// What buyer `https://` calls trust (WebPKI roots plus `server.buyer_ca_path`);
    /// swapped by [`crate::tls::reload_tls`].
    pub buyer_tls: ArcSwap<rustls::ClientConfig>,
    /// The admin listener's connection slots (its own bound, so sellers can never crowd it
    /// out; no per-IP limit).
    pub admin_gate: Arc<bidder_sdk::listener::ConnectionGate>,
    /// Admin requests being processed.
    pub admin_in_flight: tokio::sync::Semaphore,
    /// Every sale by lead id, for `POST /v1/dispositions` (bounded by
    /// `server.sold_leads_max`; rebuilt from the ledger at start).
    pub sold_leads: crate::dispositions::SoldLeads,
    /// Per-buyer bound on disposition requests.
    pub disposition_rate: crate::dispositions::BuyerRate,
    /// Buyers' `Idempotency-Key`s on `POST /v1/dispositions` (the seller routes' TTL and
    /// global bound; `idempotency_keys_per_seller_max` keys per buyer); swept with the
    /// sellers' keys, restored from `disposition` records at start.
    pub disposition_keys: IdempotencyStore<crate::config::BuyerKey>,
    /// The late-post watches still hearing a buyer out ([`crate::auction::LATE_POST_WAIT_MS`]):
    /// shutdown waits for them before the ledger's tail is made durable, so a late accept
    /// the buyer already has is recorded and counted.
    pub late_watches: Arc<BackgroundTasks>,
    /// The seller and buyer requests' tasks (pings, posts, direct posts, dispositions),
    /// which run to the end when their client goes: shutdown waits for them within
    /// `server.shutdown_grace_ms`, so a post whose HTTP/2 client went (its connection
    /// closed, so not waited for by the listener's drain) is still finished and
    /// recorded (black-box round 248c: the stop came 5 ms after the signal, the post
    /// at its first buyer, and the fallback never tried).
    pub requests: Arc<BackgroundTasks>,
    /// Request tasks still running when the stop's grace ran out (the stop's last log
    /// line says how many).
    pub requests_dropped_at_stop: std::sync::atomic::AtomicU64,
    /// Serializes reloads: one at a time, in arrival order.
    reload_lock: Mutex<()>,
    /// Whether retraining was on at start (the learning thread runs only then; a reload
    /// may pause it and turn it on again, but not start it).
    retrains_at_start: bool,
    /// What [`AppState::reload`] reads.
    source: Mutex<Option<Arc<ConfigSource>>>,
    /// Connections the listeners dropped at a stop because `server.shutdown_grace_ms` ran
    /// out with requests still running (the stop's last log line says how many).
    pub connections_dropped_at_stop: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("generation", &self.runtime.load().generation)
            .finish_non_exhaustive()
    }
}

/// Most admin connections open at once.
pub const ADMIN_CONNECTIONS_MAX: usize = 64;
/// Most admin requests processed at once (503 past it).
pub const ADMIN_REQUESTS_IN_FLIGHT_MAX: usize = 16;

/// Settings read once at start (listeners, thread and table sizes, the ledger file): a
/// reload that changes one is refused with one problem per setting.
fn fixed_setting_changes(old: &Config, new: &Config, retrains_at_start: bool) -> Vec<FieldProblem> {
    let (o, n) = (&old.server, &new.server);
    let mut out = Vec::new();
    let mut check = |changed: bool, path: &str| {
        if changed {
            out.push(FieldProblem::new(
                path,
                "cannot change while the exchange runs; restart to apply it",
            ));
        }
    };
    check(o.listen != n.listen, "server.listen");
    check(
        o.worker_threads != n.worker_threads,
        "server.worker_threads",
    );
    check(
        o.connections_max != n.connections_max,
        "server.connections_max",
    );
    check(
        o.requests_in_flight_max != n.requests_in_flight_max,
        "server.requests_in_flight_max",
    );
    check(
        o.header_read_timeout_ms != n.header_read_timeout_ms,
        "server.header_read_timeout_ms",
    );
    check(
        o.shutdown_grace_ms != n.shutdown_grace_ms,
        "server.shutdown_grace_ms",
    );
    check(
        o.quotes_open_max != n.quotes_open_max,
        "server.quotes_open_max",
    );
    check(
        o.idempotency_ttl_ms != n.idempotency_ttl_ms,
        "server.idempotency_ttl_ms",
    );
    check(
        o.idempotency_keys_max != n.idempotency_keys_max,
        "server.idempotency_keys_max",
    );
    check(o.ledger_path != n.ledger_path, "server.ledger_path");
    check(
        o.ledger_segment_bytes_max != n.ledger_segment_bytes_max,
        "server.ledger_segment_bytes_max",
    );
    // Each breaker key by its own path (they are read at start into every buyer's breaker).
    let (ob, nb) = (&o.breaker, &n.breaker);
    check(ob.enabled != nb.enabled, "server.breaker.enabled");
    check(ob.failures != nb.failures, "server.breaker.failures");
    check(ob.open_ms != nb.open_ms, "server.breaker.open_ms");
    check(
        ob.probe_interval_ms != nb.probe_interval_ms,
        "server.breaker.probe_interval_ms",
    );
    check(
        o.sold_leads_max != n.sold_leads_max,
        "server.sold_leads_max",
    );
    check(
        o.dedup_keys_max != n.dedup_keys_max,
        "server.dedup_keys_max",
    );
    // The listeners' limits are read when they start; certificates and the buyer CA
    // bundle are re-read by every reload.
    let (ol, nl) = (&o.listener, &n.listener);
    check(
        ol.connections_per_ip_max != nl.connections_per_ip_max,
        "server.connections_per_ip_max",
    );
    check(
        ol.connections_per_ip_exempt_loopback != nl.connections_per_ip_exempt_loopback,
        "server.connections_per_ip_exempt_loopback",
    );
    check(
        ol.idle_timeout_ms != nl.idle_timeout_ms,
        "server.idle_timeout_ms",
    );
    check(
        ol.h2_keepalive_interval_ms != nl.h2_keepalive_interval_ms,
        "server.h2_keepalive_interval_ms",
    );
    check(
        ol.h2_keepalive_timeout_ms != nl.h2_keepalive_timeout_ms,
        "server.h2_keepalive_timeout_ms",
    );
    check(
        ol.header_bytes_max != nl.header_bytes_max,
        "server.header_bytes_max",
    );
    check(ol.headers_max != nl.headers_max, "server.headers_max");
    check(ol.tls.is_some() != nl.tls.is_some(), "server.tls");
    check(old.admin.listen != new.admin.listen, "admin.listen");
    check(
        old.admin.token_env != new.admin.token_env,
        "admin.token_env",
    );
    check(old.admin.token != new.admin.token, "admin.token_env");
    // The model-directory watch takes its period when it starts, and the retraining
    // thread is started only if a trigger was on at start (changing the triggers of a
    // running thread applies live).
    let (ol, nl) = (&old.learning, &new.learning);
    check(ol.watch_ms != nl.watch_ms, "learning.watch_ms");
    // Against the start, not the running configuration: a reload that paused retraining
    // (0 and 0) may resume it (black-box round 10 found that refused).
    if !retrains_at_start && nl.retrains() {
        let path = if nl.retrain_every_s > 0 {
            "learning.retrain_every_s"
        } else {
            "learning.retrain_after_dispositions"
        };
        out.push(FieldProblem::new(
            path,
            "retraining was off at start and cannot be switched on while the exchange runs; restart to apply it",
        ));
    }
    out.dedup_by(|a, b| a.field == b.field);
    out
}

impl AppState {
    /// Makes the memory the finished pings' ring and the sold-lead index reserved at start
    /// resident now (writes each page, keeping what they hold): the process's memory then
    /// stays flat as they fill (P10). The thread-per-core server calls it before serving;
    /// in-process tests need not.
    pub fn prefault_memory(&self) {
        self.quotes.prefault();
        self.sold_leads.prefault();
    }

    pub fn new(mut config: Config, ledger: Ledger, metrics: Metrics, clock: Clock) -> AppState {
        let ids = IdRegistry::new();
        // Cannot fail: a fresh registry takes `KEYS_MAX` ids of each kind, and a config
        // lists at most `BUYERS_MAX` buyers and `SELLERS_MAX` sellers (the same number).
        if let Err(e) = ids.assign(&mut config) {
            tracing::error!(error = %e, "stable keys");
        }
        let retrains_at_start = config.learning.retrains();
        let s = &config.server;
        let buyer_metrics = buyer_slots(&config, None);
        let seller_metrics = seller_slots(&config, None);
        metrics
            .suppression_hashes
            .set(config.suppression.len() as i64);
        let ping_targets = target_slots(&config);
        let vertical_count = config.verticals.len();
        let connections = Arc::new(tokio::sync::Semaphore::new(s.connections_max));
        let conn_gate = bidder_sdk::listener::ConnectionGate::with_permits(
            Arc::clone(&connections),
            s.listener.connections_per_ip_max,
            s.listener.connections_per_ip_exempt_loopback,
        );
        // WebPKI roots only; `tls::install` adds `server.buyer_ca_path` at start.
        let buyer_tls = crate::tls::buyer_client_config(None).unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|_| unreachable!("ring supports TLS 1.3"))
        });
        AppState {
            connections_dropped_at_stop: Arc::default(),
            conn_gate,
            tls: None,
            buyer_tls: ArcSwap::from_pointee(buyer_tls),
            caps: CapBook::new(ids.buyer_count()),
            quotes: QuoteBook::new(s.quotes_open_max, s.idempotency_ttl_ms)
                .with_sellers(ids.seller_count()),
            dedup: crate::core::dedup::DedupBook::new(s.dedup_keys_max, dedup_keep_ms(&config)),
            breakers: BreakerBook::new(ids.buyer_count(), s.breaker),
            late_calls: crate::late::LateCalls::new(ids.buyer_count()),
            late_posts: crate::late::LateCalls::counting(ids.buyer_count()),
            connections,
            idempotency: IdempotencyStore::new(s.idempotency_ttl_ms, s.idempotency_keys_max),
            rate_limits: RateLimiter::new(ids.seller_count()),
            seller_in_flight: crate::core::slots::Slots::with_len(ids.seller_count()),
            seller_connections: Arc::new(crate::core::slots::Slots::with_len(ids.seller_count())),
            buyer_connections: Arc::new(crate::core::slots::Slots::with_len(ids.buyer_count())),
            buyer_in_flight: crate::core::slots::Slots::with_len(ids.buyer_count()),
            dispositions_in_flight: std::sync::atomic::AtomicUsize::new(0),
            pings_in_flight: crate::late::LateCalls::counting(ids.buyer_count()),
            sold_leads: crate::dispositions::SoldLeads::new(s.sold_leads_max),
            disposition_rate: crate::dispositions::BuyerRate::default(),
            disposition_keys: IdempotencyStore::new(s.idempotency_ttl_ms, s.idempotency_keys_max),
            in_flight: tokio::sync::Semaphore::new(s.requests_in_flight_max),
            admin_gate: bidder_sdk::listener::ConnectionGate::with_permits(
                Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS_MAX)),
                0,
                true,
            ),
            admin_in_flight: tokio::sync::Semaphore::new(ADMIN_REQUESTS_IN_FLIGHT_MAX),
            runtime: ArcSwap::from_pointee(Runtime {
                config: Arc::new(config),
                generation: 1,
                models: vec![None; vertical_count],
                guard_epoch: 0,
                buyer_metrics,
                seller_metrics,
                ping_targets,
                openapi: Arc::default(),
            }),
            ids,
            ledger,
            metrics,
            clock,
            reload_lock: Mutex::new(()),
            retrains_at_start,
            stats: BuyerStats::new(),
            buyer_trust: Mutex::new([0; 32]),
            fingerprint: crate::fingerprint::Fingerprinter::ephemeral(),
            dispositions_since_train: std::sync::atomic::AtomicU64::new(0),
            late_watches: Arc::new(BackgroundTasks::default()),
            requests: Arc::new(BackgroundTasks::default()),
            requests_dropped_at_stop: std::sync::atomic::AtomicU64::new(0),
            champion_failures: Mutex::new(std::collections::HashMap::new()),
            champion_seen: Mutex::new(std::collections::HashMap::new()),
            source: Mutex::new(None),
        }
    }

    /// Sets where [`AppState::reload`] reads the configuration from.
    pub fn set_config_source(&self, source: ConfigSource) {
        *self.source.lock() = Some(Arc::new(source));
    }

    /// The generation serving now.
    pub fn generation(&self) -> u64 {
        self.runtime.load().generation
    }

    /// Loads the `CHAMPION` of each vertical of `new` that `old` does not have (by name)
    /// into its slot of `models`, and returns the (vertical, version) pairs loaded. One
    /// that cannot be read or loaded leaves its vertical without a model, is logged and
    /// remembered as the directory watch does (which then does not try it again), and
    /// does not refuse the reload. Blocking (reads files).
    fn added_champions(
        &self,
        old: &Config,
        new: &Config,
        models: &mut [Option<Arc<ModelSet>>],
    ) -> Vec<(String, String)> {
        let mut loaded = Vec::new();
        for (vi, v) in new.verticals.iter().enumerate() {
            if v.features.is_none() || old.vertical_by_name.contains_key(&v.name) {
                continue;
            }
            let version = match crate::models::read_champion_checked(&new.learning, &v.name) {
                Ok(Some(version)) => version,
                Ok(None) => continue,
                Err(problem) => {
                    tracing::error!(
                        vertical = %v.name,
                        error = %problem,
                        "CHAMPION cannot be read; the vertical the reload added serves no \
                         model (cold-start rates)"
                    );
                    self.champion_failures.lock().insert(
                        v.name.clone(),
                        ChampionFailure {
                            version: UNREADABLE_CHAMPION.into(),
                            problems: vec![problem],
                        },
                    );
                    continue;
                }
            };
            match crate::models::load_set(&new.learning, v, &version) {
                Ok(set) => {
                    if let Some(slot) = models.get_mut(vi) {
                        *slot = Some(Arc::new(set));
                    }
                    self.champion_failures.lock().remove(&v.name);
                    loaded.push((v.name.clone(), version));
                }
                Err(problems) => {
                    tracing::error!(
                        vertical = %v.name,
                        version = %version,
                        error = %problems.join("; "),
                        "the champion model failed to load; the vertical the reload added \
                         serves no model (cold-start rates) and /readyz answers 503 until a \
                         model is served"
                    );
                    self.champion_failures
                        .lock()
                        .insert(v.name.clone(), ChampionFailure { version, problems });
                }
            }
        }
        loaded
    }

    /// Reads the configuration again from its source and applies it
    /// ([`AppState::apply_config`]). Blocking (reads a file): call it off the event loop.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock();
        self.reload_locked()
    }

    /// [`AppState::reload`] for `by` (`SIGHUP`, `POST /admin/reload`), its outcome logged
    /// before another reload can run: the log says reloads in the order they were
    /// applied, and a refusal names the generation that stays (black-box round 114c: two
    /// callers at once logged generation 693 before 692).
    pub fn reload_by(&self, by: &'static str) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock();
        let result = self.reload_locked();
        match &result {
            Ok(generation) => {
                tracing::info!(generation, "{by}: configuration reloaded");
                warn_of_config(&self.runtime.load().config);
                crate::models::learning::show_series(self);
            }
            Err(ReloadError::Invalid(fields)) => tracing::warn!(
                problems = fields.len(),
                generation = self.generation(),
                error = %Problems(fields),
                "{by}: configuration reload refused; the running configuration stays"
            ),
            Err(e) => tracing::error!(
                generation = self.generation(),
                error = %e,
                "{by}: configuration reload refused; the running configuration stays"
            ),
        }
        result
    }

    fn reload_locked(&self) -> Result<u64, ReloadError> {
        let source = self.source.lock().clone().ok_or(ReloadError::NoSource)?;
        let config = source().map_err(|e| {
            ReloadError::Invalid(e.0.iter().map(|m| field_problem(&in_reload(m))).collect())
        })?;
        self.apply_locked(config)
    }

    /// Validates `config` against what cannot change live, gives its parties their stable
    /// keys, and swaps in a new runtime (generation + 1) with the same models. On any
    /// problem nothing changes and every problem is returned. Requests already running
    /// finish on the runtime they started with.
    pub fn apply_config(&self, config: Config) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock();
        self.apply_locked(config)
    }

    fn apply_locked(&self, mut config: Config) -> Result<u64, ReloadError> {
        let old = self.runtime.load_full();
        // Every problem at once: settings that need a restart, the TLS files and the
        // models the new configuration would carry. Nothing has changed yet.
        let mut problems = fixed_setting_changes(&old.config, &config, self.retrains_at_start);
        // Certificate, key and buyer CA files are read now: a broken one changes nothing.
        // (TLS switched on or off is already the restart problem at `server.tls`.)
        let tls = if problems.iter().any(|p| p.field == "server.tls") {
            Err(())
        } else {
            crate::tls::TlsReload::prepare(self, &config.server.listener).map_err(|errors| {
                // Each at the key it names (`server.tls.key_path: …`), else `server.tls`.
                problems.extend(errors.iter().map(|m| match field_problem(m) {
                    p if p.field == "config" => FieldProblem::new("server.tls", m.as_str()),
                    p => p,
                }))
            })
        };
        let models = carry_models(&old, &config).map_err(|mut more| problems.append(&mut more));
        let (Ok(tls), Ok(mut models), true) = (tls, models, problems.is_empty()) else {
            return Err(ReloadError::Invalid(problems));
        };
        self.ids.assign(&mut config).map_err(|e| {
            ReloadError::Invalid(vec![FieldProblem::new(
                if e.kind == "buyer" {
                    "buyers"
                } else {
                    "sellers"
                },
                e.to_string(),
            )])
        })?;
        // A vertical the reload adds (or puts back) serves its `CHAMPION` from this
        // generation on, as a start would (black-box round 79b: it served no model until
        // the directory watch's next look, up to `learning.watch_ms` later). Read once
        // nothing can refuse the reload any more, so a refused one records nothing.
        let champions = self.added_champions(&old.config, &config, &mut models);
        // New keys get their slots before any request can see the new runtime.
        self.caps.grow(self.ids.buyer_count());
        self.breakers.grow(self.ids.buyer_count());
        self.late_calls.grow(self.ids.buyer_count());
        self.late_posts.grow(self.ids.buyer_count());
        self.rate_limits.grow(self.ids.seller_count());
        self.seller_in_flight.grow(self.ids.seller_count());
        self.seller_connections.grow(self.ids.seller_count());
        self.buyer_connections.grow(self.ids.buyer_count());
        self.buyer_in_flight.grow(self.ids.buyer_count());
        self.pings_in_flight.grow(self.ids.buyer_count());
        self.quotes.grow_sellers(self.ids.seller_count());
        let buyer_metrics = buyer_slots(&config, Some(&old));
        let seller_metrics = seller_slots(&config, Some(&old));
        // The cap and budget gauges of a removed buyer, or of a window (or budget) a kept
        // buyer no longer caps,
        // would otherwise show their last utilisation until a restart (a scrape computes
        // only the windows configured now; black-box round 81a); counters stay (they only
        // ever count what happened).
        for was in old.config.buyers.iter() {
            let now_caps = config.buyer_by_key(was.key).map(|(_, b)| &b.caps);
            if now_caps.and_then(|c| c.budget_daily).is_none() {
                let _ = self
                    .metrics
                    .budget_utilisation
                    .remove_label_values(&[&was.id]);
            }
            for (window, cap) in crate::metrics::cap_windows(now_caps) {
                if cap.is_none() {
                    let _ = self
                        .metrics
                        .cap_utilisation
                        .remove_label_values(&[&was.id, window]);
                }
            }
        }
        let generation = old.generation.saturating_add(1);
        self.dedup.set_keep_ms(dedup_keep_ms(&config));
        self.metrics
            .suppression_hashes
            .set(config.suppression.len() as i64);
        self.runtime.store(Arc::new(Runtime {
            ping_targets: target_slots(&config),
            config: Arc::new(config),
            generation,
            models,
            // A model that starts serving starts every drift guard again, as a swap does.
            guard_epoch: if champions.is_empty() {
                old.guard_epoch
            } else {
                generation
            },
            buyer_metrics,
            seller_metrics,
            openapi: Arc::default(),
        }));
        if !champions.is_empty() {
            self.stats.reset_guards(generation);
        }
        for (vertical, version) in &champions {
            tracing::info!(
                generation,
                vertical = %vertical,
                version = %version,
                "models swapped (the vertical the reload added serves its CHAMPION)"
            );
        }
        tls.apply(self);
        self.metrics.config_generation.set(generation as i64);
        // Freed off the auction threads once the requests running on it finish.
        crate::reaper::retire(old);
        Ok(generation)
    }

    /// Serves model set `version` of `vertical` (`None`: no model), read from the model
    /// directory and checked against the configuration; on success it becomes the
    /// vertical's champion on disk too, so a restart (and the directory watch) keep it.
    /// A new runtime (generation + 1) carries it; on any problem nothing changes and every
    /// problem is returned. Blocking (reads files): call it off the event loop.
    /// The problems of model set `version` of `vertical`, read as a swap would read it,
    /// without serving it or writing anything: for an admin request refused for another
    /// reason, so that its answer lists these too.
    pub fn model_set_problems(&self, vertical: &str, version: &str) -> Vec<FieldProblem> {
        let rt = self.runtime.load_full();
        let cfg = &rt.config;
        let Some(&vi) = cfg.vertical_by_name.get(vertical) else {
            return Vec::new();
        };
        match crate::models::load_set(&cfg.learning, &cfg.verticals[vi], version) {
            Ok(_) => Vec::new(),
            Err(errs) => errs
                .into_iter()
                .map(|e| FieldProblem::new("version", e))
                .collect(),
        }
    }

    pub fn swap_models(&self, vertical: &str, version: Option<&str>) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock();
        self.swap_models_locked(vertical, version, Champion::Write, true)
    }

    /// A retraining's decision: `decide` gets the model set serving `vertical` now (none
    /// when nothing serves, or the vertical is gone) and whether the vertical's `.lock`
    /// was taken (why not, if not), and says which version to swap in,
    /// if any; the swap is made at once. All under the reload lock, so no swap, reload or
    /// `CHAMPION` pick-up comes between the comparison and the promotion (black-box round
    /// 224a: a retraining compared its challenger with the champion serving when it
    /// began, and replaced a model promoted meanwhile without comparing them).
    pub fn decide_and_swap<T>(
        &self,
        vertical: &str,
        decide: impl FnOnce(Option<Arc<ModelSet>>, Result<(), String>) -> (Option<String>, T),
    ) -> (T, Option<Result<u64, ReloadError>>) {
        let _one_at_a_time = self.reload_lock.lock();
        let rt = self.runtime.load();
        let serving = rt
            .config
            .vertical_by_name
            .get(vertical)
            .and_then(|&vi| rt.models.get(vi).cloned().flatten());
        // The vertical's `.lock` too, from before `decide` reads `CHAMPION` to after the
        // swap writes it: another process (`pingpost train --promote`, a second
        // exchange on the directory) cannot promote in between and be overwritten.
        // `decide` is told when it could not be taken: it then decides nothing.
        let held = crate::models::lock_champion(&rt.config.learning, vertical);
        let locked = held.as_ref().map(drop).map_err(ToString::to_string);
        let (swap_to, decided) = decide(serving, locked);
        let swapped = swap_to.map(|v| match &held {
            Ok(lock) => self.swap_models_locked(vertical, Some(&v), Champion::Held(lock), true),
            Err(e) => Err(ReloadError::Failed(champion_not_recorded(
                &rt.config.learning,
                vertical,
                &e.to_string(),
            ))),
        });
        (decided, swapped)
    }

    fn swap_models_locked(
        &self,
        vertical: &str,
        version: Option<&str>,
        champion: Champion<'_>,
        next_generation: bool,
    ) -> Result<u64, ReloadError> {
        let old = self.runtime.load_full();
        let cfg = &old.config;
        let Some(&vi) = cfg.vertical_by_name.get(vertical) else {
            return Err(ReloadError::Invalid(vec![FieldProblem::new(
                "vertical",
                format!(
                    "unknown vertical {:?}",
                    crate::server::truncate(vertical, 64)
                ),
            )]));
        };
        let v = &cfg.verticals[vi];
        let set = match version {
            None => None,
            Some(ver) => Some(Arc::new(
                crate::models::load_set(&cfg.learning, v, ver).map_err(|errs| {
                    ReloadError::Invalid(
                        errs.into_iter()
                            .map(|e| FieldProblem::new("version", e))
                            .collect(),
                    )
                })?,
            )),
        };
        let written = match champion {
            Champion::Leave => Ok(()),
            Champion::Write => crate::models::write_champion(&cfg.learning, vertical, version),
            Champion::Held(lock) => lock.write(&cfg.learning, vertical, version),
        };
        written.map_err(|e| {
            ReloadError::Failed(champion_not_recorded(
                &cfg.learning,
                vertical,
                &e.to_string(),
            ))
        })?;
        let mut models = old.models.clone();
        if let Some(slot) = models.get_mut(vi) {
            *slot = set;
        }
        // The models the start serves are part of its first generation: nothing has been
        // served under the runtime without them (black-box round 15: a start with a
        // `CHAMPION` began at generation 2).
        let generation = if next_generation {
            old.generation.saturating_add(1)
        } else {
            old.generation
        };
        self.runtime.store(Arc::new(Runtime {
            config: old.config.clone(),
            generation,
            models,
            guard_epoch: generation,
            buyer_metrics: buyer_slots(&old.config, Some(&old)),
            seller_metrics: seller_slots(&old.config, Some(&old)),
            ping_targets: Arc::clone(&old.ping_targets),
            openapi: Arc::clone(&old.openapi),
        }));
        self.metrics.config_generation.set(generation as i64);
        // Whatever failed to load for this vertical before no longer matters: it serves
        // what it was just asked to.
        self.champion_failures.lock().remove(vertical);
        // The drift guard compared the old model's estimates: it starts again.
        self.stats.reset_guards(generation);
        tracing::info!(
            generation,
            vertical,
            version = version.unwrap_or("none"),
            "models swapped"
        );
        // The old models are freed off the auction threads once no request holds them.
        crate::reaper::retire(old);
        Ok(generation)
    }

    /// Serves each vertical's champion if it differs from what serves (the model
    /// directory watch, and the start). Problems are logged, and the serving model stays.
    pub fn sync_champions(&self) -> Vec<(String, Result<u64, ReloadError>)> {
        self.sync_champions_as(true)
    }

    /// [`AppState::sync_champions`] at the start, before anything is served: the models
    /// loaded join generation 1 instead of making a new one each.
    pub fn sync_champions_at_start(&self) -> Vec<(String, Result<u64, ReloadError>)> {
        self.sync_champions_as(false)
    }

    fn sync_champions_as(&self, next_generation: bool) -> Vec<(String, Result<u64, ReloadError>)> {
        let _one_at_a_time = self.reload_lock.lock();
        let rt = self.runtime.load_full();
        let mut out = Vec::new();
        for (vi, v) in rt.config.verticals.iter().enumerate() {
            if v.features.is_none() {
                continue;
            }
            let want = match crate::models::read_champion_checked(&rt.config.learning, &v.name) {
                Ok(want) => want,
                Err(problem) => {
                    // Not "no model": the operator named something that cannot be read.
                    let mut failures = self.champion_failures.lock();
                    // Said once per reason: a second, different one is said too (round
                    // 101b: a file made a directory after being unreadable went unsaid).
                    let known = failures.get(&v.name).is_some_and(|f| {
                        f.version == UNREADABLE_CHAMPION
                            && f.problems.as_slice() == std::slice::from_ref(&problem)
                    });
                    if !known {
                        tracing::error!(
                            vertical = %v.name,
                            error = %problem,
                            "CHAMPION cannot be read; what serves stays (no model at the \
                             start: cold-start rates, and /readyz answers 503 until a model \
                             is served)"
                        );
                        failures.insert(
                            v.name.clone(),
                            ChampionFailure {
                                version: UNREADABLE_CHAMPION.into(),
                                problems: vec![problem],
                            },
                        );
                    }
                    continue;
                }
            };
            let have = rt
                .models
                .get(vi)
                .and_then(|m| m.as_ref())
                .map(|m| m.version.clone());
            // The watch finds `CHAMPION` changed. Removed while a model serves: the model
            // stays (black-box round 101b: a stray `rm` switched the routing off with one
            // INFO line, `/readyz` ready). Anything else is served once it reads the same
            // at two looks in a row: a rewrite with `>` empties the file first, and a slow
            // writer's file was read empty (round 101b) or half written (round 102a: `m1`
            // of `m10`, a set of its own, scored 11 auctions).
            if next_generation && want != have {
                let removed = want.is_none()
                    && have.is_some()
                    && !crate::models::champion_exists(&rt.config.learning, &v.name);
                let seen = if removed {
                    ChampionSeen::Removed
                } else {
                    ChampionSeen::Read(want.clone())
                };
                let before = self
                    .champion_seen
                    .lock()
                    .insert(v.name.clone(), seen.clone());
                if removed {
                    if before != Some(ChampionSeen::Removed) {
                        tracing::warn!(
                            vertical = %v.name,
                            serving = have.as_deref().unwrap_or(""),
                            "CHAMPION was removed: the serving model stays (to serve no model, \
                             empty the file, or POST /admin/models with \"version\": null)"
                        );
                    }
                    continue;
                }
                if before != Some(seen) {
                    continue;
                }
            }
            self.champion_seen.lock().remove(&v.name);
            if want == have {
                // `CHAMPION` names what serves: an earlier failure no longer matters.
                self.champion_failures.lock().remove(&v.name);
                continue;
            }
            let tried = self
                .champion_failures
                .lock()
                .get(&v.name)
                .map(|f| f.version.clone());
            if want.is_some() && tried == want {
                continue;
            }
            // On success this clears the vertical's failure.
            let r =
                self.swap_models_locked(&v.name, want.as_deref(), Champion::Leave, next_generation);
            if let Err(e) = &r {
                let problems = match e {
                    ReloadError::Invalid(fields) => {
                        fields.iter().map(|f| f.problem.clone()).collect()
                    }
                    other => vec![other.to_string()],
                };
                // As the message names it: cut, control characters shown (black-box round
                // 172a: a 4,000-character CHAMPION was logged whole).
                let version = proto::error::printable_name(want.as_deref().unwrap_or(""));
                match &have {
                    // At the start (or while nothing served): no model serves this
                    // vertical, and `/readyz` says not ready until one is served.
                    None => tracing::error!(
                        vertical = %v.name,
                        version = %version,
                        error = %e,
                        "the champion model failed to load; the vertical serves no model \
                         (cold-start rates) and /readyz answers 503 until a model is served"
                    ),
                    Some(serving) => tracing::error!(
                        vertical = %v.name,
                        version = %version,
                        serving = %serving,
                        error = %e,
                        "the champion model was refused; the serving model stays"
                    ),
                }
                if let Some(w) = want {
                    self.champion_failures.lock().insert(
                        v.name.clone(),
                        ChampionFailure {
                            version: w,
                            problems,
                        },
                    );
                }
            }
            out.push((v.name.clone(), r));
        }
        out
    }

    /// The verticals whose `CHAMPION` failed to load while no model serves them (at the
    /// start, or after `"version": null`): what `/readyz` reports as not ready.
    pub fn unserved_champions(&self) -> Vec<(String, ChampionFailure)> {
        let rt = self.runtime.load();
        let failed = self.champion_failures.lock();
        let mut out: Vec<(String, ChampionFailure)> = rt
            .config
            .verticals
            .iter()
            .enumerate()
            .filter(|(i, v)| v.features.is_some() && rt.models.get(*i).is_some_and(|m| m.is_none()))
            .filter_map(|(_, v)| failed.get(&v.name).map(|f| (v.name.clone(), f.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Releases expired quotes' reservations and forgets old idempotency keys. The shell
    /// calls this on a timer.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        let expired = self.quotes.sweep_named(now);
        if !expired.is_empty() {
            let rt = self.runtime.load();
            for (r, ping_id) in expired {
                let former = self.ids.buyer_id(r.buyer);
                let drop = drop_hold(
                    &rt.config,
                    rt.generation,
                    r,
                    Some(&ping_id),
                    None,
                    former.as_deref(),
                    now,
                );
                crate::effects::execute_now(self, drop.into_iter());
            }
        }
        self.idempotency.sweep(now);
        self.disposition_keys.sweep(now);
        self.metrics
            .quotes_open
            .set(self.quotes.open_count() as i64);
    }
}

/// Logs [`crate::config::warnings`] of `cfg` (at a start and a reload).
pub fn warn_of_config(cfg: &crate::config::Config) {
    for w in crate::config::warnings(cfg) {
        tracing::warn!("{w}");
    }
}

/// What a model swap does with `CHAMPION`.
enum Champion<'a> {
    /// Leaves it (the swap serves what it names).
    Leave,
    /// Writes it, taking the vertical's `.lock` for the write.
    Write,
    /// Writes it under a `.lock` the caller already holds.
    Held(&'a crate::models::ChampionLock),
}

/// Why a swap could not record its champion, with the vertical's directory, and what to
/// do when it is not the exchange's user's to write (black-box round 235b: a `models_dir`
/// left to root made `POST /admin/models` a bare "Permission denied (os error 13)").
fn champion_not_recorded(
    learning: &crate::config::LearningConfig,
    vertical: &str,
    e: &str,
) -> String {
    let dir = crate::models::vertical_dir(learning, vertical);
    let hint = if e.contains("os error 13") || e.contains("ermission denied") {
        ": the exchange's user must be able to write learning.models_dir and its vertical directories (it writes CHAMPION, HISTORY and .lock there)"
    } else {
        ""
    };
    format!(
        "could not record the champion in {}, so the serving model stays: {e}{hint}",
        crate::cli_out::Shown(&dir)
    )
}

#[cfg(test)]
mod tests {

    /// Black-box round 235b: a models directory the exchange's user could not write made
    /// `POST /admin/models` a bare "Permission denied (os error 13)", naming no path.
    #[test]
    fn a_champion_not_recorded_names_its_directory_and_what_to_do() {
        let learning = crate::config::LearningConfig::default();
        let denied =
            super::champion_not_recorded(&learning, "auto", "Permission denied (os error 13)");
        let dir = crate::models::vertical_dir(&learning, "auto");
        assert!(
            denied.starts_with(&format!(
                "could not record the champion in {}, so the serving model stays: Permission denied",
                dir.display()
            )) && denied.contains("must be able to write learning.models_dir"),
            "{denied}"
        );
        let full = super::champion_not_recorded(&learning, "auto", "No space left on device");
        assert!(!full.contains("must be able to write"), "{full}");
    }

    use super::field_problem;

    /// The busy reload's message names the reload thread's real queue bound.
    #[test]
    fn the_busy_reload_message_names_the_queue_bound() {
        assert!(super::RELOADS_WAITING.starts_with(&format!(
            "{} reloads are waiting",
            crate::models::learning::LOADER_QUEUE_MAX
        )));
    }

    /// A refusal's log line lists the first 100 problems and counts the rest, as the
    /// `400` does (black-box round 133a: 75,167 problems made one 4 MB line).
    #[test]
    fn a_refusal_logs_the_first_problems_and_counts_the_rest() {
        use proto::error::{FieldProblem, FIELDS_LISTED_MAX};
        let many: Vec<FieldProblem> = (0..FIELDS_LISTED_MAX + 5)
            .map(|i| FieldProblem::new(format!("buyers.b{i}.zip_prefixes"), "listed twice"))
            .collect();
        let text = super::Problems(&many).to_string();
        assert!(
            text.starts_with("105 problem(s): buyers.b0.zip_prefixes"),
            "{text}"
        );
        assert!(text.contains("buyers.b99.zip_prefixes"), "{text}");
        assert!(!text.contains("buyers.b100."), "{text}");
        assert!(
            text.ends_with("... and 5 more (the first 100 listed)"),
            "{text}"
        );
        let few = &many[..3];
        let text = super::Problems(few).to_string();
        assert!(!text.contains("more"), "{text}");
        assert_eq!(text.matches("listed twice").count(), 3, "{text}");
    }

    fn split(message: &str) -> (String, String) {
        let p = field_problem(message);
        (p.field.to_string(), p.problem.to_string())
    }

    #[test]
    fn a_problem_keeps_its_key_path_quoted_keys_and_indexes_included() {
        let cases = [
            (
                "server.listen: not an address",
                "server.listen",
                "not an address",
            ),
            (
                "buyers.\"bad name\": the name must be 1 to 64 ASCII letters",
                "buyers.\"bad name\"",
                "the name must be 1 to 64 ASCII letters",
            ),
            (
                "verticals.auto.fields.\"a: b\".type: unknown",
                "verticals.auto.fields.\"a: b\".type",
                "unknown",
            ),
            (
                "sellers.\"s \\\" 1\".key: too short",
                "sellers.\"s \\\" 1\".key",
                "too short",
            ),
            (
                "buyers.b1.verticals[0]: unknown vertical",
                "buyers.b1.verticals[0]",
                "unknown vertical",
            ),
            ("buyers.b1: a: b", "buyers.b1", "a: b"),
        ];
        for (message, field, problem) in cases {
            assert_eq!(split(message), (field.into(), problem.into()), "{message}");
        }
    }

    #[test]
    fn a_message_without_a_key_path_goes_under_config() {
        for message in [
            "reading /etc/x.toml: No such file or directory",
            "TOML parse error at line 3: expected `=`",
            "buyers.\"unterminated: oops",
            "buyers.b1[x]: bad index",
            "buyers..b1: empty key",
            ": nothing before",
            "no colon at all",
            "",
        ] {
            let p = field_problem(message);
            assert_eq!(
                (p.field.to_string(), p.problem.to_string()),
                ("config".to_string(), message.to_string()),
                "{message:?}"
            );
        }
    }
}
