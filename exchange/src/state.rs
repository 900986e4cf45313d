//! Everything the request handlers share: the configuration (behind `ArcSwap`, so a later
//! issue can swap it without a restart), the core's books, the buyer client, the ledger,
//! metrics and limits.

use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::clock::Clock;
use crate::config::{Config, SellerIdx};
use crate::core::award::{PriceRanker, Ranker};
use crate::core::breaker::BreakerBook;
use crate::core::caps::CapBook;
use crate::core::quotes::QuoteBook;
use crate::core::UnixMs;
use crate::idempotency::IdempotencyStore;
use crate::ledger::Ledger;
use crate::metrics::{BuyerMetrics, Metrics};
use crate::scoring::{NoScore, Scorer};

/// A configuration with what is derived from it.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    /// Pre-resolved metric series, by buyer index.
    pub buyer_metrics: Vec<BuyerMetrics>,
}

/// A per-seller token bucket (requests per second, a burst of one second).
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Vec<Mutex<(f64, UnixMs)>>,
}

impl RateLimiter {
    fn new(n: usize, now: UnixMs) -> RateLimiter {
        RateLimiter {
            buckets: (0..n).map(|_| Mutex::new((f64::MAX, now))).collect(),
        }
    }

    /// Takes one token from `seller`'s bucket of `rate_per_s`; false when empty.
    pub fn allow(&self, seller: SellerIdx, rate_per_s: u32, now: UnixMs) -> bool {
        let Some(bucket) = self.buckets.get(seller) else {
            return true;
        };
        let mut b = bucket.lock();
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

/// Shared state of one running exchange.
#[derive(Debug)]
pub struct AppState {
    pub runtime: ArcSwap<Runtime>,
    pub caps: CapBook,
    pub quotes: QuoteBook,
    pub breakers: BreakerBook,
    /// Open connections across every worker, bounded by `server.connections_max` (taken
    /// before `accept`).
    pub connections: Arc<tokio::sync::Semaphore>,
    pub ledger: Ledger,
    pub metrics: Metrics,
    pub idempotency: IdempotencyStore,
    pub clock: Clock,
    pub ranker: Arc<dyn Ranker>,
    pub scorer: Arc<dyn Scorer>,
    pub rate_limits: RateLimiter,
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
}

impl AppState {
    pub fn new(config: Config, ledger: Ledger, metrics: Metrics, clock: Clock) -> AppState {
        let s = &config.server;
        let buyer_metrics = config.buyers.iter().map(|b| metrics.buyer(&b.id)).collect();
        let now = clock.now_ms();
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
            conn_gate,
            tls: None,
            buyer_tls: ArcSwap::from_pointee(buyer_tls),
            caps: CapBook::new(config.buyers.len()),
            quotes: QuoteBook::new(s.quotes_open_max, s.idempotency_ttl_ms),
            breakers: BreakerBook::new(config.buyers.len(), s.breaker),
            connections,
            idempotency: IdempotencyStore::new(s.idempotency_ttl_ms, s.idempotency_keys_max),
            rate_limits: RateLimiter::new(config.sellers.len(), now),
            in_flight: tokio::sync::Semaphore::new(s.requests_in_flight_max),
            ranker: Arc::new(PriceRanker),
            scorer: Arc::new(NoScore),
            runtime: ArcSwap::from_pointee(Runtime {
                config: Arc::new(config),
                buyer_metrics,
            }),
            ledger,
            metrics,
            clock,
        }
    }

    /// Releases expired quotes' reservations and forgets old idempotency keys. The shell
    /// calls this on a timer.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        for r in self.quotes.sweep(now) {
            self.caps.release(&r);
        }
        self.idempotency.sweep(now);
        self.metrics
            .quotes_open
            .set(self.quotes.open_count() as i64);
    }
}
