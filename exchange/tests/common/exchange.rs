//! A running exchange started from a [`TestConfig`], and what tests read from it: the
//! ledger, caps, quotes and metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pingpost::app::{self, Running};
use pingpost::clock::Clock;
use pingpost::state::AppState;
use serde_json::Value;
use tokio::time::Instant;

use super::{SellerClient, TestConfig, EVENT_WAIT_MAX};

impl TestConfig {
    /// Starts an exchange with this configuration and a fresh ledger in a temp dir.
    pub async fn start(&self) -> Exchange {
        self.start_edited(|toml| toml).await
    }

    /// [`start`](TestConfig::start) with the TOML document edited first (for keys the
    /// kit does not model).
    pub async fn start_edited(&self, edit: impl FnOnce(String) -> String) -> Exchange {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger_path = dir.path().join("ledger.jsonl");
        let config = self.load_edited(&ledger_path, edit);
        let running = app::start(config, Clock::system())
            .await
            .expect("exchange starts");
        Exchange {
            addr: running.addr,
            state: running.state.clone(),
            client: SellerClient::new(running.addr),
            running: Some(running),
            ledger_path,
            buyer_ids: self.buyers.iter().map(|b| b.id.clone()).collect(),
            _dir: dir,
        }
    }
}

/// A running exchange with its temp dir (kept alive as long as this).
#[derive(Debug)]
pub struct Exchange {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub client: SellerClient,
    pub running: Option<Running>,
    pub ledger_path: PathBuf,
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

    /// Reservations held for a buyer right now (firm quotes not yet posted or expired).
    pub fn reserved(&self, id: &str) -> u32 {
        let idx = self.buyer_idx(id);
        let rt = self.state.runtime.load();
        let buyer = &rt.config.buyers[idx];
        let usage = self.state.caps.usage(idx, buyer, self.state.clock.now_ms());
        assert_eq!(
            usage.reserved as usize,
            self.state.caps.outstanding(idx),
            "reserved count and outstanding reservations disagree for {id}"
        );
        usage.reserved
    }

    /// Leads sold to a buyer today (its daily cap window).
    pub fn sold_today(&self, id: &str) -> u32 {
        let idx = self.buyer_idx(id);
        let rt = self.state.runtime.load();
        self.state
            .caps
            .usage(idx, &rt.config.buyers[idx], self.state.clock.now_ms())
            .sold_day
    }

    pub fn quotes_open(&self) -> usize {
        self.state.quotes.open_count()
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        let r = self.client.get("/metrics").await;
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
