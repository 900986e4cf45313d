//! Configuration: the validated model the exchange runs on. The exchange's `config::load`
//! turns a TOML document into it, reporting every error at once with its key path.
//!
//! Architecture invariant: a `Config` value is always valid. Buyers, sellers and verticals
//! are addressed by index (`BuyerIdx`, ...) into the vectors here; indices are stable for
//! the life of one `Config` only: a reload may reorder, add or remove buyers and sellers.
//! State that outlives one configuration (caps, breakers, rate limits, quotes,
//! idempotency keys) is keyed by the stable [`BuyerKey`] / [`SellerKey`] instead, which
//! [`crate::ids::IdRegistry`] assigns from the party's configured `id` and never reuses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::buyer_index::EligibilityIndex;

use proto::{Micros, VerticalSchema};

/// Index of a buyer in `Config::buyers`.
pub type BuyerIdx = usize;
/// Index of a vertical in `Config::verticals`.
pub type VerticalIdx = usize;
/// Index of a seller in `Config::sellers`.
pub type SellerIdx = usize;

/// A buyer's stable key: the same for the same buyer `id` across every configuration the
/// process loads, never given to another id (see [`crate::ids::IdRegistry`]). Per-buyer
/// state (caps, budget, breaker, bids held by quotes) is keyed by it, never by position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BuyerKey(pub u32);

/// A seller's stable key, like [`BuyerKey`] (rate limits, quotes, idempotency keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SellerKey(pub u32);

impl BuyerKey {
    /// The key as an index into per-key tables.
    pub fn slot(self) -> usize {
        self.0 as usize
    }
}

impl SellerKey {
    /// The key as an index into per-key tables.
    pub fn slot(self) -> usize {
        self.0 as usize
    }
}

impl std::fmt::Display for BuyerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "buyer#{}", self.0)
    }
}

/// Defaults, each a named constant with its unit.
pub mod defaults {
    pub const LISTEN: &str = "127.0.0.1:8080";
    pub const BODY_BYTES_MAX: usize = 64 * 1024;
    pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
    pub const REQUESTS_IN_FLIGHT_MAX: usize = 4_096;
    pub const CONNECTIONS_MAX: usize = 10_000;
    /// 0: one worker thread per available core.
    pub const WORKER_THREADS: usize = 0;
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    pub const QUOTE_TTL_MS: u64 = 60_000;
    /// A bid must hold at least this long to win a ping's quote (`server.quote_min_ms`).
    pub const QUOTE_MIN_MS: u64 = 10_000;
    /// Deliveries of one buyer heard out after their timeout at which it is sent no more
    /// (`server.late_posts_per_buyer_max`).
    pub const LATE_POSTS_PER_BUYER_MAX: u32 = 256;
    pub const QUOTES_OPEN_MAX: usize = 1_000_000;
    /// Dedup keys remembered at once (`server.dedup_keys_max`): two keys a sale for a
    /// million sales a window, about 200 MB when full (about 100 B a key).
    pub const DEDUP_KEYS_MAX: usize = 2_000_000;
    pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;
    pub const IDEMPOTENCY_KEYS_MAX: usize = 1_000_000;
    /// Keys one seller may hold at once unless `sellers.ID.idempotency_keys_max` says
    /// otherwise: a tenth of the shared store, so one seller cannot lock out the others.
    pub const IDEMPOTENCY_KEYS_PER_SELLER_MAX: usize = 100_000;
    /// The ledger directory (segment files inside), relative to the working directory.
    pub const LEDGER_PATH: &str = "pingpost-ledger";
    /// A ledger segment is sealed and a new one started before it would pass this size.
    pub const LEDGER_SEGMENT_BYTES_MAX: u64 = 64 << 20;
    pub const AUCTION_DEADLINE_MS: u64 = 150;
    pub const RESPONSE_RESERVE_MS: u64 = 2;
    pub const PING_TIMEOUT_MS: u64 = 100;
    pub const POST_TIMEOUT_MS: u64 = 2_000;
    pub const BUYERS_PER_AUCTION_MAX: usize = 64;
    pub const BREAKER_FAILURES: u32 = 5;
    pub const BREAKER_OPEN_MS: u64 = 5_000;
    pub const BREAKER_PROBE_INTERVAL_MS: u64 = 1_000;
    pub const POST_ATTEMPTS_MAX: usize = 5;
    pub const CURRENCY: &str = "USD";
    /// One post, every fallback included, ends within this (ms).
    pub const POST_DEADLINE_MS: u64 = 5_000;
    /// Sold leads the exchange remembers for dispositions (about 75 bytes each, reserved at
    /// start).
    pub const SOLD_LEADS_MAX: usize = 500_000;
    /// A buyer's return window unless `buyers.ID.return_window_days` says otherwise: 0,
    /// returns are refused (`409`, nothing recorded) until a window is agreed.
    pub const RETURN_WINDOW_DAYS: u16 = 0;
    /// Open quotes (bids not yet posted or expired) one seller may hold at once.
    pub const SELLER_QUOTES_OPEN_MAX: usize = 1_000;
    /// The admin listener (metrics, reload, probes): loopback only by default.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:8081";
    /// The environment variable holding the admin bearer token.
    pub const ADMIN_TOKEN_ENV: &str = "PINGPOST_ADMIN_TOKEN";
    /// 0 would mean no per-IP limit.
    pub const CONNECTIONS_PER_IP_MAX: usize = 512;
    pub const CONNECTIONS_PER_IP_EXEMPT_LOOPBACK: bool = true;
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    pub const H2_KEEPALIVE_INTERVAL_MS: u64 = 20_000;
    pub const H2_KEEPALIVE_TIMEOUT_MS: u64 = 10_000;
    pub const HEADER_BYTES_MAX: usize = 16 * 1024;
    pub const HEADERS_MAX: usize = 100;
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub verticals: Vec<Vertical>,
    pub sellers: Vec<Seller>,
    pub buyers: Vec<Buyer>,
    /// Vertical name to index.
    pub vertical_by_name: HashMap<String, VerticalIdx>,
    /// SHA-256 of a seller key to the seller.
    pub seller_by_key_sha256: HashMap<[u8; 32], SellerIdx>,
    /// Buyer bearer key digests (`key_sha256` and `key_sha256_next`) to buyer position.
    pub buyer_by_key_sha256: HashMap<[u8; 32], BuyerIdx>,
    /// For each vertical, the buyers that take it, ascending.
    pub buyers_by_vertical: Vec<Vec<BuyerIdx>>,
    /// The eligibility index over `buyers` (built with `buyers_by_vertical` by
    /// [`Config::index_buyers`]; shared by clones of this value).
    pub index: Arc<EligibilityIndex>,
    /// Stable key to position (see [`Config::set_keys`]).
    pub buyer_by_key: HashMap<BuyerKey, BuyerIdx>,
    /// Stable key to position.
    pub seller_by_key: HashMap<SellerKey, SellerIdx>,
    /// `[admin]`: the admin listener.
    pub admin: AdminConfig,
    /// `[learning]`: where models live and when they are retrained.
    pub learning: LearningConfig,
    /// `[suppression]`: the do-not-contact list (shared by clones; empty and off without
    /// the table).
    pub suppression: Arc<crate::dedup::Suppression>,
}

/// `[learning]`: the model directory, training parameters and continuous retraining.
#[derive(Debug, Clone, PartialEq)]
pub struct LearningConfig {
    /// Model sets live under `<models_dir>/<vertical>/<version>/`.
    pub models_dir: std::path::PathBuf,
    /// Serve whatever `<models_dir>/<vertical>/CHAMPION` names, checking it this often
    /// (0: only at start and on `POST /admin/models`).
    pub watch_ms: u64,
    /// Retrain this often (0: never on a schedule).
    pub retrain_every_s: u64,
    /// Retrain after this many new dispositions (0: never on a count).
    pub retrain_after_dispositions: u64,
    /// Training refuses with fewer examples than this in either split, per model.
    pub min_rows: usize,
    /// The newest share of examples held out for evaluation, in percent.
    pub heldout_pct: u32,
    /// ... but at most this many examples (0: no cap), so the model trains on all but the
    /// newest few hundred examples however long the ledger grows.
    pub heldout_max_rows: usize,
    /// Recency weighting of training examples: an example this many (newer) examples older
    /// than the newest training example weighs half as much (0: every example weighs 1).
    pub half_life_rows: usize,
    /// Boosting rounds (trees).
    pub rounds: u32,
    pub max_depth: u32,
    /// Learning rate.
    pub eta: f64,
    /// An accepted lead counts as kept once this old without a `returned` disposition
    /// (until then it is not a training example).
    pub kept_after_s: u64,
}

impl LearningConfig {
    /// Is continuous retraining on (a schedule or a disposition count)?
    pub fn retrains(&self) -> bool {
        self.retrain_every_s > 0 || self.retrain_after_dispositions > 0
    }
}

impl Default for LearningConfig {
    fn default() -> LearningConfig {
        LearningConfig {
            models_dir: "pingpost-models".into(),
            watch_ms: 5_000,
            retrain_every_s: 0,
            retrain_after_dispositions: 0,
            min_rows: 200,
            heldout_pct: 20,
            heldout_max_rows: 500,
            half_life_rows: 2_000,
            rounds: 100,
            max_depth: 4,
            eta: 0.1,
            kept_after_s: 0,
        }
    }
}

/// `[admin]`: the admin listener (`/metrics`, `/admin/reload`, probes), with its own
/// address and bearer token.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where the admin listener binds (loopback by default).
    pub listen: SocketAddr,
    /// Name of the environment variable that holds the bearer token.
    pub token_env: String,
    /// The token read from `token_env` at load; `None` when the variable is unset or
    /// empty (then the admin listener does not start: see docs/OPERATIONS.md).
    pub token: Option<AdminToken>,
}

/// The admin bearer token. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// Wraps a token read from the environment.
    pub fn new(token: String) -> AdminToken {
        AdminToken(token)
    }

    /// The token's bytes, for a constant-time comparison.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// `[server]`: where and how the exchange listens, and its limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Bodies larger than this are refused with 413 before they are read.
    pub body_bytes_max: usize,
    /// A client must send its request head within this time (slowloris).
    pub header_read_timeout_ms: u64,
    /// Past this many requests in flight the exchange answers 503 instead of queueing.
    pub requests_in_flight_max: usize,
    /// Connection slots; when all are taken, a new connection evicts the oldest without a
    /// request head past a quarter of `header_read_timeout_ms`, else the longest idle,
    /// or waits in the accept queue.
    pub connections_max: usize,
    /// Worker threads, each with its own event loop, listener (SO_REUSEPORT) and buyer
    /// connection pools; 0 means one per available core.
    pub worker_threads: usize,
    /// On shutdown, in-flight auctions get this long to finish.
    pub shutdown_grace_ms: u64,
    /// How long a quote (a `bid` answer) stays firm, unless the winning bid expires sooner.
    pub quote_ttl_ms: u64,
    /// A ping's bid whose `expires_in_ms` is shorter than this (or than `quote_ttl_ms`,
    /// whichever is less) cannot win: its quote would expire before the seller could post
    /// (black-box round 26: a high bid that expires at once made every quote expire).
    pub quote_min_ms: u64,
    /// Most quotes held at once; past it pings are answered 503.
    pub quotes_open_max: usize,
    /// Most dedup keys remembered at once (sold within a window, or being posted); past
    /// it the oldest sales are forgotten first. Read at start.
    pub dedup_keys_max: usize,
    /// How long an `Idempotency-Key` and a finished post are remembered.
    pub idempotency_ttl_ms: u64,
    /// Keys held at once by all sellers together (past it: 503 `overloaded`).
    pub idempotency_keys_max: usize,
    /// Keys one seller may hold at once unless its own `idempotency_keys_max` is set
    /// (past it: 429 `rate_limited` for that seller only).
    pub idempotency_keys_per_seller_max: usize,
    /// The append-only ledger: a directory of segment files (one JSON line per event).
    pub ledger_path: std::path::PathBuf,
    /// A segment is sealed and the next one started before it would grow past this.
    pub ledger_segment_bytes_max: u64,
    /// Set by the command line (`--new-fingerprint-key`), never by the file: this start
    /// may begin a new fingerprint key beside a ledger whose runs used another one.
    pub new_fingerprint_key: bool,
    /// Most buyers pinged in one auction (the fan-out limit).
    pub buyers_per_auction_max: usize,
    /// Time kept back from the auction deadline to answer the seller.
    pub response_reserve_ms: u64,
    /// Buyers tried at most per post (winner plus fallbacks).
    pub post_attempts_max: usize,
    /// One post (winner and every fallback) ends within this many ms; each attempt's
    /// timeout is the buyer's `post_timeout_ms` or what is left, whichever is less.
    pub post_deadline_ms: u64,
    /// Sold leads remembered for `POST /v1/dispositions` (oldest forgotten first).
    pub sold_leads_max: usize,
    /// A buyer with this many deliveries still heard out after their post timeout is sent
    /// no more leads (skipped as `busy`) until some of them are settled.
    pub late_posts_per_buyer_max: u32,
    pub breaker: BreakerConfig,
    /// Connection limits and TLS of the seller listener (flat keys in `[server]`).
    pub listener: ListenerSettings,
}

/// The seller listener's connection limits and TLS. Their keys sit directly in `[server]`
/// (`server.idle_timeout_ms`, `server.tls.cert_path`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    /// Connections one client IP may hold at once; 0 for no limit.
    pub connections_per_ip_max: usize,
    /// Whether loopback clients (127.0.0.0/8, ::1) are exempt from the per-IP limit.
    pub connections_per_ip_exempt_loopback: bool,
    /// A connection with no request in flight and no new one for this long is closed.
    pub idle_timeout_ms: u64,
    /// Interval between HTTP/2 keep-alive PINGs; 0 sends none.
    pub h2_keepalive_interval_ms: u64,
    /// Time a keep-alive PING has to be acknowledged.
    pub h2_keepalive_timeout_ms: u64,
    /// Largest request head in bytes; past it 431.
    pub header_bytes_max: usize,
    /// Most header fields per request; past it 431.
    pub headers_max: usize,
    /// `[server.tls]`: serve HTTPS with this certificate and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Extra CA certificates (PEM) trusted for buyer `https://` URLs, on top of the
    /// WebPKI roots.
    pub buyer_ca_path: Option<std::path::PathBuf>,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        ListenerSettings {
            connections_per_ip_max: defaults::CONNECTIONS_PER_IP_MAX,
            connections_per_ip_exempt_loopback: defaults::CONNECTIONS_PER_IP_EXEMPT_LOOPBACK,
            idle_timeout_ms: defaults::IDLE_TIMEOUT_MS,
            h2_keepalive_interval_ms: defaults::H2_KEEPALIVE_INTERVAL_MS,
            h2_keepalive_timeout_ms: defaults::H2_KEEPALIVE_TIMEOUT_MS,
            header_bytes_max: defaults::HEADER_BYTES_MAX,
            headers_max: defaults::HEADERS_MAX,
            tls: None,
            buyer_ca_path: None,
        }
    }
}

/// `[server.tls]`: PEM files of the seller listener's certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
}

/// `[server.breaker]`: when to stop pinging a failing buyer and how to probe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Off only for measurements that must see every ping of a failing buyer (P3).
    pub enabled: bool,
    /// Consecutive timeouts or errors that open the breaker.
    pub failures: u32,
    /// How long an open breaker skips the buyer before probing.
    pub open_ms: u64,
    /// While open, one probe ping is let through at most this often.
    pub probe_interval_ms: u64,
}

/// `[verticals.NAME]`: a lead type with its field schema.
#[derive(Debug, Clone)]
pub struct Vertical {
    pub name: String,
    pub currency: String,
    /// The whole auction, from request arrival to answer.
    pub auction_deadline_ms: u64,
    /// No bid below this (after margin) is ever quoted.
    pub floor: Micros,
    /// A bid above this is refused as a no-bid (`bid_above_max`): a guard against a buyer
    /// answering in cents or with a typo. `None`: no ceiling.
    pub bid_max: Option<Micros>,
    /// Shared: an open quote keeps the schema it was made under, so a post after a
    /// reload compares the ping fields by name as they were then.
    pub schema: Arc<VerticalSchema>,
    /// `[verticals.NAME.features]`: what the models see (`None`: no model can serve).
    pub features: Option<crate::model::features::FeatureSpec>,
    /// `[verticals.NAME.routing]`: what the award ranks by.
    pub routing: crate::model::routing::Routing,
    /// `consent_required`: the `consent` keys every ping, direct post and post of this
    /// vertical must carry with a non-blank value (a TrustedForm certificate, a Jornaya
    /// LeadiD). A ping without one is answered `no_bid` `consent_required` and pings no
    /// buyer ([`Vertical::consent_missing`]).
    pub consent_required: Vec<String>,
    /// `[verticals.NAME.dedup]`: de-duplication of sold leads (`None`: off).
    pub dedup: Option<crate::dedup::DedupConfig>,
    /// The keys that identify a consumer (`[verticals.NAME.dedup] keys`, or every phone
    /// and e-mail field): what de-duplication and the suppression list look at.
    pub dedup_keys: Vec<crate::dedup::DedupKeySpec>,
}

impl Vertical {
    /// The first required consent key that `consent` lacks, or holds only blanks.
    pub fn consent_missing<'a>(
        &'a self,
        consent: &'a std::collections::BTreeMap<String, String>,
    ) -> Option<&'a str> {
        self.consents_missing(consent).next()
    }

    /// Every required consent key that `consent` lacks, or holds only blanks, in the
    /// configuration's order (a post's `400` names them all at once).
    pub fn consents_missing<'a>(
        &'a self,
        consent: &'a std::collections::BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.consent_required
            .iter()
            .filter(|k| consent.get(k.as_str()).is_none_or(|v| says_nothing(v)))
            .map(String::as_str)
    }
}

/// Whether a value says nothing, and whether a character prints as nothing: in `proto`,
/// where a lead's required fields are checked with them too.
pub use proto::error::{invisible, says_nothing};

/// How the exchange takes its margin from a winning bid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayoutModel {
    /// The seller gets `share_bp` basis points of the bid (8000 = 80 %).
    RevenueShare { share_bp: u32 },
    /// The seller gets the bid less a fixed amount.
    FixedMargin { margin: Micros },
}

impl PayoutModel {
    /// What the seller is paid for a bid of `bid`.
    pub fn seller_price(self, bid: Micros) -> Micros {
        match self {
            PayoutModel::RevenueShare { share_bp } => bid.share_bp(share_bp),
            PayoutModel::FixedMargin { margin } => bid.saturating_sub(margin),
        }
    }
}

/// `[sellers.ID]`: a lead source.
#[derive(Debug, Clone)]
pub struct Seller {
    pub id: String,
    /// Stable key (assigned by [`crate::ids::IdRegistry`]; the loader sets the position).
    pub key: SellerKey,
    pub name: String,
    /// SHA-256 of the bearer key; the key itself is never stored.
    pub key_sha256: [u8; 32],
    /// SHA-256 of a second valid key, for rotation: both work until the old one is removed.
    pub key_sha256_next: Option<[u8; 32]>,
    /// Verticals this seller may sell in (indices).
    pub verticals: Vec<VerticalIdx>,
    pub payout: PayoutModel,
    /// The least this seller takes for any lead (after margin), on top of `min_price`.
    pub reserve: Option<Micros>,
    /// Requests per second allowed (token bucket, burst of one second); `None` is unlimited.
    pub rate_per_s: Option<u32>,
    /// Most open quotes (bids not yet posted or expired) this seller may hold; past it a
    /// ping is answered 429 `rate_limited` and reserves nothing.
    pub quotes_open_max: usize,
    /// Idempotency keys this seller may hold at once; `None` takes
    /// `server.idempotency_keys_per_seller_max`.
    pub idempotency_keys_max: Option<usize>,
    /// Most of this seller's requests being processed at once (of the server's
    /// `requests_in_flight_max`); past it, `429 rate_limited`. `None`: only the server's
    /// limit, shared by every seller.
    pub requests_in_flight_max: Option<usize>,
    /// Most connections this seller's requests may hold open at once (of the server's
    /// `connections_max`); a request on a further connection is `429 rate_limited` and
    /// closes it. `None`: half of the server's when there are several sellers, else no
    /// limit of its own.
    pub connections_max: Option<usize>,
}

/// Whether the buyer's endpoints speak HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (prior knowledge for `http://`).
    Http2,
}

/// `[buyers.ID]`: a lead buyer.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub id: String,
    /// Stable key (assigned by [`crate::ids::IdRegistry`]; the loader sets the position).
    pub key: BuyerKey,
    /// Display name, returned to the seller on `sold`.
    pub name: String,
    /// `None` for a fixed-price buyer (never pinged).
    pub ping_url: Option<String>,
    pub post_url: String,
    pub http: HttpVersion,
    /// Name of the environment variable that held the signing secret.
    pub secret_env: String,
    pub secret: proto::signing::Secret,
    /// The next signing secret, while the buyer moves to it (`secret_env_next`): every
    /// message is signed with both, so the buyer can switch its verification at any time,
    /// and the operator then makes it `secret_env` and drops this.
    pub secret_next: Option<proto::signing::Secret>,
    pub ping_timeout_ms: u64,
    pub post_timeout_ms: u64,
    /// The most of this buyer's pings in flight at once (late ones still being heard out
    /// included); past it the buyer is skipped (`pings_in_flight_full`), not pinged.
    /// `None`: no limit.
    pub pings_in_flight_max: Option<u32>,
    pub verticals: Vec<VerticalIdx>,
    /// Empty means every state.
    pub states_include: Vec<String>,
    pub states_exclude: Vec<String>,
    /// ZIP prefixes (1 to 5 digits) the buyer takes; empty means every ZIP.
    pub zip_prefixes: Vec<String>,
    pub timezone: chrono_tz::Tz,
    /// `None` means always open.
    pub schedule: Option<WeeklySchedule>,
    /// Leads scoring below this are not offered (when a score exists).
    pub score_floor: Option<u8>,
    pub caps: Caps,
    /// A buyer that takes posts at this price without a ping.
    pub fixed_price: Option<Micros>,
    /// Whether `http://` URLs to a host other than loopback are allowed (full leads then
    /// travel in cleartext).
    pub allow_plaintext: bool,
    /// SHA-256 of the buyer's bearer key for `POST /v1/dispositions`; `None`: this buyer
    /// cannot report dispositions (401). The key itself is never stored.
    pub key_sha256: Option<[u8; 32]>,
    /// SHA-256 of a second valid key, for rotation.
    pub key_sha256_next: Option<[u8; 32]>,
    /// Days after a sale within which a `returned` disposition refunds the buyer and
    /// claws back the seller's payout; 0: a `returned` is refused (`409`, nothing recorded).
    pub return_window_days: u16,
}

/// Lead caps and budget, counted in the buyer's own time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    /// Most money spent per local day.
    pub budget_daily: Option<Micros>,
}

/// Open hours per weekday, in the buyer's time zone. Index 0 is Monday.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeeklySchedule {
    pub days: [Vec<MinuteRange>; 7],
}

/// `[start, end)` in minutes after local midnight; `end` may be 1440.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteRange {
    pub start: u16,
    pub end: u16,
}

impl Config {
    /// The buyer with stable key `key`, if this configuration has it.
    pub fn buyer_by_key(&self, key: BuyerKey) -> Option<(BuyerIdx, &Buyer)> {
        let idx = *self.buyer_by_key.get(&key)?;
        Some((idx, self.buyers.get(idx)?))
    }

    /// The seller with stable key `key`, if this configuration has it.
    pub fn seller_by_key(&self, key: SellerKey) -> Option<(SellerIdx, &Seller)> {
        let idx = *self.seller_by_key.get(&key)?;
        Some((idx, self.sellers.get(idx)?))
    }

    /// Sets every buyer's and seller's key from `buyer_key(id)` / `seller_key(id)` and
    /// rebuilds the key indices. The loader calls it with positions (so a `Config` is
    /// consistent on its own); the exchange calls it with its [`crate::ids::IdRegistry`].
    pub fn set_keys(
        &mut self,
        mut buyer_key: impl FnMut(&str) -> BuyerKey,
        mut seller_key: impl FnMut(&str) -> SellerKey,
    ) {
        for b in &mut self.buyers {
            b.key = buyer_key(&b.id);
        }
        for s in &mut self.sellers {
            s.key = seller_key(&s.id);
        }
        self.buyer_by_key = self
            .buyers
            .iter()
            .enumerate()
            .map(|(i, b)| (b.key, i))
            .collect();
        self.seller_by_key = self
            .sellers
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key, i))
            .collect();
    }

    /// Builds `buyers_by_vertical` and the eligibility index from `buyers` and
    /// `verticals`. The loader calls it once; code that changes a buyer's verticals or
    /// filters afterwards must call it again.
    pub fn index_buyers(&mut self) {
        let (index, by_vertical) = EligibilityIndex::build(self.verticals.len(), &self.buyers);
        self.index = Arc::new(index);
        self.buyers_by_vertical = by_vertical;
    }

    /// How many idempotency keys `seller` may hold at once.
    pub fn idempotency_keys_max_of(&self, seller: SellerIdx) -> usize {
        self.sellers
            .get(seller)
            .and_then(|s| s.idempotency_keys_max)
            .unwrap_or(self.server.idempotency_keys_per_seller_max)
    }

    pub fn vertical(&self, name: &str) -> Option<(VerticalIdx, &Vertical)> {
        let idx = *self.vertical_by_name.get(name)?;
        Some((idx, &self.verticals[idx]))
    }
}
