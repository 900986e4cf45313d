//! Prometheus metrics. A buyer's series are resolved the first time it is pinged or posted
//! to (then kept for the configuration), so the hot path only bumps pre-built counters
//! and a buyer that is never pinged costs no series: with 10,000 configured buyers the
//! series follow the buyers in use, not the configuration. Filter skips are counted per
//! reason, not per buyer.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds, from 100 µs up to 10 s.
pub const LATENCY_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of `pingpost_sale_after_accept_seconds`: fine around P8's 2 ms.
pub const SALE_AFTER_ACCEPT_BUCKETS_S: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.004,
    0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// What happened to one buyer in one auction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    Bid,
    NoBid,
    Timeout,
    /// Not pinged: the auction had no time left for it (a seller's request arrived or was
    /// read late). Not the buyer's doing, so not a `timeout`.
    NoTimeLeft,
    Error,
    /// Answered, but not a valid answer (garbage, wrong content type, non-200).
    Invalid,
    SkippedBreaker,
    /// Not pinged: the buyer held its `pings_in_flight_max` pings in flight.
    SkippedBusy,
    /// A bid above the vertical's `bid_max`: refused as a no-bid.
    BidAboveMax,
    /// A bid whose own expiry had passed by the award: it neither wins nor falls back.
    BidExpired,
}

impl PingOutcome {
    pub const ALL: [PingOutcome; 10] = [
        PingOutcome::Bid,
        PingOutcome::NoBid,
        PingOutcome::Timeout,
        PingOutcome::NoTimeLeft,
        PingOutcome::Error,
        PingOutcome::Invalid,
        PingOutcome::SkippedBreaker,
        PingOutcome::SkippedBusy,
        PingOutcome::BidAboveMax,
        PingOutcome::BidExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PingOutcome::Bid => "bid",
            PingOutcome::NoBid => "no_bid",
            PingOutcome::Timeout => "timeout",
            PingOutcome::NoTimeLeft => "no_time_left",
            PingOutcome::Error => "error",
            PingOutcome::Invalid => "invalid",
            PingOutcome::SkippedBreaker => "skipped_breaker",
            PingOutcome::SkippedBusy => "skipped_busy",
            PingOutcome::BidAboveMax => "bid_above_max",
            PingOutcome::BidExpired => "bid_expired",
        }
    }
}

/// What happened to one post attempt at one buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostOutcomeKind {
    Accepted,
    Rejected,
    Timeout,
    Error,
    Invalid,
    Capped,
    Busy,
}

impl PostOutcomeKind {
    pub const ALL: [PostOutcomeKind; 7] = [
        PostOutcomeKind::Accepted,
        PostOutcomeKind::Rejected,
        PostOutcomeKind::Timeout,
        PostOutcomeKind::Error,
        PostOutcomeKind::Invalid,
        PostOutcomeKind::Capped,
        PostOutcomeKind::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PostOutcomeKind::Accepted => "accepted",
            PostOutcomeKind::Rejected => "rejected",
            PostOutcomeKind::Timeout => "timeout",
            PostOutcomeKind::Error => "error",
            PostOutcomeKind::Invalid => "invalid",
            PostOutcomeKind::Capped => "capped",
            PostOutcomeKind::Busy => "busy",
        }
    }
}

/// One buyer's pre-resolved series.
#[derive(Debug, Clone)]
pub struct BuyerMetrics {
    pings: Vec<IntCounter>,
    posts: Vec<IntCounter>,
    pub ping_latency: Histogram,
    pub late_answers: IntCounter,
    pub late_calls_dropped: IntCounter,
    pub capped_at_award: IntCounter,
    /// Made with the buyer's other series (at 0), so the first late accept is an
    /// increase to Prometheus (black-box round 204a).
    pub late_accepts: IntCounter,
}

/// One seller's series, resolved once (see [`crate::state::Runtime::seller_metrics`]): its
/// requests answered `429` by each of its own limits.
#[derive(Debug, Clone)]
pub struct SellerMetrics {
    pub requests_in_flight: IntCounter,
    pub rate: IntCounter,
    pub quotes_open: IntCounter,
    pub idempotency_keys: IntCounter,
    pub connections: IntCounter,
}

impl BuyerMetrics {
    pub fn ping(&self, o: PingOutcome) {
        if let Some(c) = self.pings.get(o as usize) {
            c.inc();
        }
    }

    pub fn post(&self, o: PostOutcomeKind) {
        if let Some(c) = self.posts.get(o as usize) {
            c.inc();
        }
    }
}

/// Every metric the exchange exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Held while a counter is brought up to a total kept elsewhere ([`Metrics::catch_up`]).
    catch_up_lock: std::sync::Arc<std::sync::Mutex<()>>,
    pub auctions: IntCounterVec,
    pub posts: IntCounterVec,
    pub http_errors: IntCounterVec,
    pub request_latency: HistogramVec,
    pub buyer_pings: IntCounterVec,
    pub buyer_posts: IntCounterVec,
    pub buyer_ping_latency: HistogramVec,
    pub late_answers: IntCounterVec,
    /// Calls still running when their auction ended, dropped rather than heard out.
    pub late_calls_dropped: IntCounterVec,
    /// Bids refused at award for want of room in the buyer's cap or budget.
    pub capped_at_award: IntCounterVec,
    /// Deliveries a buyer accepted after its post timeout (not test leads): it has the
    /// lead, counted in its caps and budget, and nothing is billed.
    pub late_accepts: IntCounterVec,
    /// Seller requests answered `429` by the seller's own limit, by seller id and limit.
    pub seller_limited: IntCounterVec,
    /// Sold plus reserved over each cap, in percent (fractional: 3 of 600 is 0.5).
    pub cap_utilisation: GaugeVec,
    /// Money spent plus held by open quotes over `budget_daily`, in percent, per buyer.
    pub budget_utilisation: GaugeVec,
    /// Buyers not offered a lead because they failed a filter, by reason.
    pub eligibility_skips: IntCounterVec,
    /// Eligible buyers not pinged for the fan-out limit (one series, not per buyer).
    pub fanout_limited: IntCounter,
    /// Auctions whose buyers' answers were collected after their vertical's
    /// `auction_deadline_ms`, counted from the request's arrival (black-box round 219a: a
    /// host whose cores are busy runs the exchange's timers late).
    pub deadline_overruns: IntCounter,
    pub quotes_open: IntGauge,
    /// Idempotency keys held: the sellers' (pings, posts, direct posts), the buyers'
    /// (dispositions).
    pub idempotency_keys: IntGauge,
    pub disposition_keys: IntGauge,
    /// Dedup keys held (sold within a window, or being posted).
    pub dedup_keys: IntGauge,
    /// Hashes on the suppression list serving now.
    pub suppression_hashes: IntGauge,
    /// Sold dedup keys forgotten before their window ended (`server.dedup_keys_max`).
    pub dedup_evicted: IntCounter,
    /// Connections closed to make room for a new one, by listener (`seller`, `admin`): no
    /// head within their grace while every slot was taken (brought up to the listeners'
    /// counts at each scrape).
    pub connections_evicted: IntCounterVec,
    /// Connections closed because their client left answers unsent, by listener.
    pub connections_stalled: IntCounterVec,
    /// HTTP/2 connections the server ended with a GOAWAY for a protocol error, by listener.
    pub connections_protocol_errors: IntCounterVec,
    /// Connections closed at accept because their client's IP held its limit, by listener.
    pub connections_refused: IntCounterVec,
    /// Connections closed because a request head did not complete within the head budget,
    /// by listener.
    pub connections_head_timeouts: IntCounterVec,
    /// Connections holding a slot, by listener (set at each scrape).
    pub connections_open: IntGaugeVec,
    pub requests_in_flight: IntGauge,
    pub ledger_batch: Histogram,
    /// From a buyer's accept (its answer read) to the seller's `sold` answer ready, the
    /// sale's record on disk (P8).
    pub sale_after_accept: Histogram,
    /// The runtime generation serving now (1 at start, +1 per applied reload or model swap).
    pub config_generation: IntGauge,
    /// Reloads by result (`applied`, `refused`).
    pub reloads: IntCounterVec,
    /// Model swaps by result (`applied`, `refused`).
    pub model_swaps: IntCounterVec,
    /// Retrainings of continuous learning by vertical and outcome (see
    /// [`crate::models::learning::Outcome`]).
    pub retrainings: IntCounterVec,
    /// Pre-resolved series for the hot path (label lookups hash and lock).
    route_latency: Vec<(&'static str, Histogram)>,
    auction_outcomes: Vec<(&'static str, IntCounter)>,
    /// By [`pingpost_core::eligibility::SkipReason::ALL`] order.
    skip_reasons: Vec<IntCounter>,
}

/// Routes whose latency series are pre-resolved: those of the seller listener that are
/// observed (a probe answered at once is not; a probe with the wrong method, `405`, is
/// observed under its own route), each from the first scrape (black-box round 230a: the
/// probes' series appeared at their first `405`, which `increase()` then missed).
const ROUTES: [&str; 8] = [
    "ping",
    "post",
    "leads",
    "dispositions",
    "openapi",
    "unknown",
    "healthz",
    "readyz",
];
/// Auction outcomes whose counters are pre-resolved: `bid` and every no-bid reason.
const AUCTION_OUTCOMES: [&str; 9] = [
    "bid",
    "no_eligible_buyers",
    "no_bids",
    "below_reserve",
    "duplicate",
    "suppressed",
    "consent_required",
    "capped",
    "test",
];

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are fixed and unique in this file; registering can only fail on a duplicate.
    let _ = r.register(Box::new(c.clone()));
    c
}

/// The windows `pingpost_cap_utilisation_percent` is labelled by, each with its cap in
/// `caps` (none for a buyer not configured): the scrape computes the capped ones, and a
/// reload drops the series of the others.
pub fn cap_windows(caps: Option<&crate::core::config::Caps>) -> [(&'static str, Option<u32>); 4] {
    [
        ("hour", caps.and_then(|c| c.hourly)),
        ("day", caps.and_then(|c| c.daily)),
        ("week", caps.and_then(|c| c.weekly)),
        ("month", caps.and_then(|c| c.monthly)),
    ]
}

impl Metrics {
    /// Brings the dedup gauges up to the book.
    pub fn dedup_gauges(&self, book: &crate::core::dedup::DedupBook) {
        self.dedup_keys.set(book.len() as i64);
        self.catch_up(&self.dedup_evicted, book.evicted());
    }

    /// Brings `counter` up to `total`, a count kept elsewhere: one caller at a time, so
    /// two that read the same old value cannot both add the difference (two scrapes at
    /// once, or two sales, counted an eviction twice, for good).
    pub fn catch_up(&self, counter: &IntCounter, total: u64) {
        let _one = self
            .catch_up_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|_| unreachable!("static metric {name}"))
        };
        let hist_vec = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_S.to_vec()),
                labels,
            )
            .unwrap_or_else(|_| unreachable!("static metric {name}"))
        };
        Metrics {
            catch_up_lock: std::sync::Arc::new(std::sync::Mutex::new(())),
            auctions: reg(
                &r,
                counter_vec(
                    "pingpost_auctions_total",
                    "Auctions by outcome (bid or the no-bid reason).",
                    &["outcome"],
                ),
            ),
            posts: reg(
                &r,
                counter_vec(
                    "pingpost_posts_total",
                    "Posts and direct posts by answer status.",
                    &["status"],
                ),
            ),
            http_errors: reg(
                &r,
                counter_vec(
                    "pingpost_http_errors_total",
                    "Error answers by contract code.",
                    &["code"],
                ),
            ),
            request_latency: reg(
                &r,
                hist_vec(
                    "pingpost_request_duration_seconds",
                    "Seller request latency by route.",
                    &["route"],
                ),
            ),
            buyer_pings: reg(
                &r,
                counter_vec(
                    "pingpost_buyer_pings_total",
                    "Per-buyer ping outcomes.",
                    &["buyer", "outcome"],
                ),
            ),
            buyer_posts: reg(
                &r,
                counter_vec(
                    "pingpost_buyer_posts_total",
                    "Per-buyer post outcomes.",
                    &["buyer", "outcome"],
                ),
            ),
            buyer_ping_latency: reg(
                &r,
                hist_vec(
                    "pingpost_buyer_ping_duration_seconds",
                    "Buyer ping round trip (answers in time).",
                    &["buyer"],
                ),
            ),
            late_answers: reg(
                &r,
                counter_vec(
                    "pingpost_buyer_late_answers_total",
                    "Answers that arrived after the buyer's deadline (never used); a call that failed after it without an answer is not counted.",
                    &["buyer"],
                ),
            ),
            late_calls_dropped: reg(
                &r,
                counter_vec(
                    "pingpost_buyer_late_calls_dropped_total",
                    "Calls still running when their auction ended that were dropped (connection closed) rather than heard out: the buyer or the exchange already had as many late calls as it hears out at once.",
                    &["buyer"],
                ),
            ),
            capped_at_award: reg(
                &r,
                counter_vec(
                    "pingpost_buyer_capped_at_award_total",
                    "Bids that ranked above the winner's but found no room in the buyer's cap or budget at award (capped_at_award).",
                    &["buyer"],
                ),
            ),
            late_accepts: reg(
                &r,
                counter_vec(
                    "pingpost_buyer_late_accepts_total",
                    "Deliveries the buyer accepted after its post timeout (test leads aside): it has the lead, counted in its caps and budget, and no sale is billed (settle it with the buyer; ledger verify lists them).",
                    &["buyer"],
                ),
            ),
            seller_limited: reg(
                &r,
                counter_vec(
                    "pingpost_seller_limited_total",
                    "Seller requests answered 429 by the seller's own limit, by seller id and limit (requests_in_flight, rate, quotes_open, idempotency_keys, connections).",
                    &["seller", "limit"],
                ),
            ),
            cap_utilisation: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "pingpost_cap_utilisation_percent",
                        "Sold plus reserved as a percentage of each cap, per window.",
                    ),
                    &["buyer", "window"],
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            budget_utilisation: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "pingpost_budget_utilisation_percent",
                        "Money spent plus held by open quotes in the buyer's local day, as a percentage of its budget_daily.",
                    ),
                    &["buyer"],
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            eligibility_skips: reg(
                &r,
                counter_vec(
                    "pingpost_eligibility_skips_total",
                    "Buyers not offered a lead because they failed a filter, by the first filter failed (state, zip, schedule, score_floor, capped).",
                    &["reason"],
                ),
            ),
            fanout_limited: reg(
                &r,
                IntCounter::new(
                    "pingpost_fanout_limited_total",
                    "Eligible buyers not pinged because their auction had pinged server.buyers_per_auction_max buyers already.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            deadline_overruns: reg(
                &r,
                IntCounter::new(
                    "pingpost_auction_deadline_overruns_total",
                    "Auctions that ended (their answers collected, the award made) after their vertical's auction_deadline_ms, counted from the request's arrival: the seller's answer was late.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            idempotency_keys: reg(
                &r,
                IntGauge::new(
                    "pingpost_idempotency_keys",
                    "Sellers' Idempotency-Keys held (pings, posts, direct posts), each kept server.idempotency_ttl_ms; at most server.idempotency_keys_max.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            disposition_keys: reg(
                &r,
                IntGauge::new(
                    "pingpost_disposition_idempotency_keys",
                    "Buyers' Idempotency-Keys held (POST /v1/dispositions), each kept server.idempotency_ttl_ms; at most server.idempotency_keys_max.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            quotes_open: reg(
                &r,
                IntGauge::new(
                    "pingpost_quotes_open",
                    "Firm quotes not yet posted or expired.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            dedup_keys: reg(
                &r,
                IntGauge::new(
                    "pingpost_dedup_keys",
                    "Dedup keys held: consumers sold within their vertical's window, or being posted.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            suppression_hashes: reg(
                &r,
                IntGauge::new(
                    "pingpost_suppression_hashes",
                    "Hashes on the suppression list ([suppression] path) serving now: read at start and at every reload.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            dedup_evicted: reg(
                &r,
                IntCounter::new(
                    "pingpost_dedup_keys_evicted_total",
                    "Sold dedup keys forgotten before their window ended because server.dedup_keys_max was reached.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            connections_evicted: reg(
                &r,
                counter_vec(
                    "pingpost_connections_evicted_total",
                    "Connections closed to make room for a new one, by listener (seller, admin): every slot (server.connections_max; the admin listener's 64) was taken and they had sent no complete request head within a quarter of server.header_read_timeout_ms, or, with none such, their requests in flight had all been receiving their bodies for longer than that, or, with none such, they had been idle the longest.",
                    &["listener"],
                ),
            ),
            connections_stalled: reg(
                &r,
                counter_vec(
                    "pingpost_connections_stalled_total",
                    "HTTP/2 connections closed because their client stalled them, by listener (seller, admin): more than 32 answers unsent, or any with no progress for server.header_read_timeout_ms (a flow-control window the client never opens); or more than 32 request bodies still coming, none arriving for 1 s; or more HTTP/2 control frames than the connection's allowance.",
                    &["listener"],
                ),
            ),
            connections_protocol_errors: reg(
                &r,
                counter_vec(
                    "pingpost_connections_protocol_errors_total",
                    "HTTP/2 connections the server ended with a GOAWAY carrying an error code, by listener (seller, admin): h2's own guards (a rapid reset flood, ENHANCE_YOUR_CALM; a CONTINUATION flood) or a frame that breaks the protocol.",
                    &["listener"],
                ),
            ),
            connections_refused: reg(
                &r,
                counter_vec(
                    "pingpost_connections_refused_total",
                    "Connections closed at accept, unanswered, because their client's IP already held server.connections_per_ip_max of the listener's slots, by listener (seller, admin).",
                    &["listener"],
                ),
            ),
            connections_head_timeouts: reg(
                &r,
                counter_vec(
                    "pingpost_connections_head_timeouts_total",
                    "Connections closed because a request head did not complete within server.header_read_timeout_ms (the first from accept, TLS handshake included; a later HTTP/1.1 one from its first bytes), by listener (seller, admin).",
                    &["listener"],
                ),
            ),
            connections_open: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "pingpost_connections_open",
                        "Connections holding one of the listener's slots (server.connections_max; the admin listener's 64), by listener (seller, admin).",
                    ),
                    &["listener"],
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            requests_in_flight: reg(
                &r,
                IntGauge::new(
                    "pingpost_requests_in_flight",
                    "Seller-listener requests being processed: sellers' pings and posts, and buyers' dispositions.",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            ledger_batch: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pingpost_ledger_batch_records",
                        "Records per ledger fsync (group commit).",
                    )
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            sale_after_accept: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "pingpost_sale_after_accept_seconds",
                        "From a buyer's accept to the seller's sold answer, the sale on disk.",
                    )
                    .buckets(SALE_AFTER_ACCEPT_BUCKETS_S.to_vec()),
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            config_generation: reg(
                &r,
                IntGauge::new(
                    "pingpost_config_generation",
                    "The runtime generation serving now (1 at start, +1 per applied reload or model swap).",
                )
                .unwrap_or_else(|_| unreachable!()),
            ),
            reloads: reg(
                &r,
                counter_vec(
                    "pingpost_reloads_total",
                    "Configuration reloads by result (applied, refused).",
                    &["result"],
                ),
            ),
            model_swaps: reg(
                &r,
                counter_vec(
                    "pingpost_model_swaps_total",
                    "Model swaps asked for by POST /admin/models, by result (applied, refused); the model directory watch logs its own.",
                    &["result"],
                ),
            ),
            retrainings: reg(
                &r,
                counter_vec(
                    "pingpost_retrainings_total",
                    "Retrainings of continuous learning by vertical and outcome (promoted, kept, refused, failed, ledger_failed).",
                    &["vertical", "outcome"],
                ),
            ),
            route_latency: Vec::new(),
            auction_outcomes: Vec::new(),
            skip_reasons: Vec::new(),
            registry: r,
        }
        .resolved()
    }

    fn resolved(mut self) -> Metrics {
        self.route_latency = ROUTES
            .iter()
            .map(|r| (*r, self.request_latency.with_label_values(&[r])))
            .collect();
        // Every error code's series from the first scrape, at 0, so the first error of
        // each is an `increase()` (black-box round 230a: each appeared at its first).
        for code in proto::error::ErrorCode::ALL {
            self.http_errors.with_label_values(&[code.as_str()]);
        }
        self.auction_outcomes = AUCTION_OUTCOMES
            .iter()
            .map(|o| (*o, self.auctions.with_label_values(&[o])))
            .collect();
        self.skip_reasons = pingpost_core::eligibility::SkipReason::ALL
            .iter()
            .map(|r| self.eligibility_skips.with_label_values(&[r.as_str()]))
            .collect();
        // Counters a dashboard sums are there at 0 from the start, not from their first
        // event (a rate of a missing series is no data, not zero).
        for status in [
            "sold",
            "unsold",
            "expired",
            "mismatch",
            "duplicate",
            "suppressed",
        ] {
            self.posts.with_label_values(&[status]);
        }
        for result in ["applied", "refused"] {
            self.reloads.with_label_values(&[result]);
            self.model_swaps.with_label_values(&[result]);
        }
        self.config_generation.set(1);
        self
    }

    /// Counts one auction's filter skips (`counts` in `SkipReason::ALL` order).
    pub fn count_skips(&self, counts: &[u32; 5]) {
        for (c, n) in self.skip_reasons.iter().zip(counts) {
            if *n > 0 {
                c.inc_by(u64::from(*n));
            }
        }
    }

    /// Counts one auction's buyers not pinged for the fan-out limit.
    pub fn count_fanout_limited(&self, count: u32) {
        self.fanout_limited.inc_by(u64::from(count));
    }

    /// Records a seller request's latency.
    pub fn observe_route(&self, route: &str, seconds: f64) {
        match self.route_latency.iter().find(|(r, _)| *r == route) {
            Some((_, h)) => h.observe(seconds),
            None => self
                .request_latency
                .with_label_values(&[route])
                .observe(seconds),
        }
    }

    /// Counts one auction by outcome (`bid` or the no-bid reason).
    pub fn count_auction(&self, outcome: &str) {
        match self.auction_outcomes.iter().find(|(o, _)| *o == outcome) {
            Some((_, c)) => c.inc(),
            None => self.auctions.with_label_values(&[outcome]).inc(),
        }
    }

    /// Pre-resolves one seller's series, at 0 (a series that first appears at 1 is no
    /// `increase()` to Prometheus: black-box round 204a, an alert on it missed the first
    /// refusal).
    pub fn seller(&self, id: &str) -> SellerMetrics {
        let limited = |limit: &str| self.seller_limited.with_label_values(&[id, limit]);
        SellerMetrics {
            requests_in_flight: limited("requests_in_flight"),
            rate: limited("rate"),
            quotes_open: limited("quotes_open"),
            idempotency_keys: limited("idempotency_keys"),
            connections: limited("connections"),
        }
    }

    /// Pre-resolves one buyer's series.
    pub fn buyer(&self, id: &str) -> BuyerMetrics {
        BuyerMetrics {
            pings: PingOutcome::ALL
                .iter()
                .map(|o| self.buyer_pings.with_label_values(&[id, o.as_str()]))
                .collect(),
            posts: PostOutcomeKind::ALL
                .iter()
                .map(|o| self.buyer_posts.with_label_values(&[id, o.as_str()]))
                .collect(),
            ping_latency: self.buyer_ping_latency.with_label_values(&[id]),
            late_answers: self.late_answers.with_label_values(&[id]),
            late_calls_dropped: self.late_calls_dropped.with_label_values(&[id]),
            capped_at_award: self.capped_at_award.with_label_values(&[id]),
            late_accepts: self.late_accepts.with_label_values(&[id]),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers at once bring a counter up to its total, never past it (two scrapes at
    /// once could each add the same difference).
    #[test]
    fn a_counter_caught_up_by_many_at_once_reads_its_total() {
        let m = Metrics::new();
        for total in (1..=100u64).map(|t| t * 7) {
            let start = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        start.wait();
                        m.catch_up(&m.fanout_limited, total);
                    });
                }
            });
            assert_eq!(m.fanout_limited.get(), total);
        }
    }

    #[test]
    fn every_family_renders() {
        let m = Metrics::new();
        m.sale_after_accept.observe(0.0007);
        let mut out = Vec::new();
        let r = TextEncoder::new().encode(&m.registry.gather(), &mut out);
        assert!(r.is_ok(), "{r:?}");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("pingpost_sale_after_accept_seconds_count 1"),
            "{text}"
        );
        // Every error code's series, and every route's latency, before any request.
        for code in proto::error::ErrorCode::ALL {
            let series = format!("pingpost_http_errors_total{{code=\"{}\"}} 0", code.as_str());
            assert!(text.contains(&series), "{series}");
        }
        for route in ROUTES {
            let series = format!("pingpost_request_duration_seconds_count{{route=\"{route}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
    }
}
