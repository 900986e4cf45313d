//! A running exchange started from a [`TestConfig`], and what tests read from it: the
//! ledger, caps, quotes and metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;

use pingpost::app::{self, Running};
use pingpost::clock::Clock;
use pingpost::state::AppState;
use serde_json::Value;
use tokio::time::Instant;

use super::{Reply, SellerClient, TestConfig, ADMIN_TOKEN, EVENT_WAIT_MAX};

/// Every record of the ledger directory `dir` (none while it has no segment).
pub fn ledger_at(dir: &std::path::Path) -> Vec<Value> {
    let text = pingpost::ledger::segments::read_all(dir).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("ledger line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The records of one `type` in the ledger directory `dir`.
pub fn ledger_at_of(dir: &std::path::Path, kind: &str) -> Vec<Value> {
    ledger_at(dir)
        .into_iter()
        .filter(|r| r["type"] == kind)
        .collect()
}

impl TestConfig {
    /// Starts an exchange with this configuration and a fresh ledger in a temp dir.
    pub async fn start(&self) -> Exchange {
        self.start_edited(|toml| toml).await
    }

    /// [`start`](TestConfig::start) with the TOML document edited first (for keys the
    /// kit does not model).
    ///
    /// The configuration is written to `config.toml` in the temp dir and the exchange is
    /// started from that file, so [`Exchange::write_config`] plus a reload changes it.
    pub async fn start_edited(&self, edit: impl FnOnce(String) -> String) -> Exchange {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger_path = dir.path().join("ledger");
        let config_path = dir.path().join("config.toml");
        let text = edit(self.toml(&ledger_path));
        // Fail here, with the text, rather than inside the exchange's start.
        pingpost::config::load_str_with_env(&text, &self.env())
            .unwrap_or_else(|e| panic!("test config does not load:\n{e}\n{text}"));
        std::fs::write(&config_path, &text).expect("write config");
        let env_vars = Arc::new(Mutex::new(self.env_vars()));
        let (path, vars) = (config_path.clone(), env_vars.clone());
        let source = move || {
            let vars = vars.lock().unwrap().clone();
            pingpost::config::load_file_with_env(&path, &move |n: &str| vars.get(n).cloned())
        };
        let running = app::start_with_source(Box::new(source), Clock::system())
            .await
            .expect("exchange starts");
        let admin_addr = running.admin_addr.expect("the admin listener started");
        Exchange {
            addr: running.addr,
            admin_addr,
            state: running.state.clone(),
            client: SellerClient::new(running.addr),
            admin: SellerClient::new(admin_addr),
            running: Some(running),
            ledger_path,
            config_path,
            env_vars,
            buyer_ids: self.buyers.iter().map(|b| b.id.clone()).collect(),
            _dir: dir,
        }
    }
}

/// Starts an exchange on `config` with `clock` (a restart when its ledger holds records),
/// waiting while the previous exchange's ledger writer still holds the directory.
pub async fn start_config(config: pingpost::config::Config, clock: Clock) -> Running {
    tokio::time::timeout(EVENT_WAIT_MAX, async {
        loop {
            match app::start(config.clone(), clock.clone()).await {
                Ok(r) => return r,
                Err(e) if e.to_string().contains("in use") => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the exchange starts")
}

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
        ledger_at(&self.ledger_path)
    }

    /// Ledger records of one `type`.
    pub fn ledger_of(&self, kind: &str) -> Vec<Value> {
        self.ledger()
            .into_iter()
            .filter(|r| r["type"] == kind)
            .collect()
    }

    /// `pingpost ledger replay AUCTION_ID` on this exchange's ledger (with its
    /// configuration file when `with_config`): what it printed, once it exited 0.
    pub fn replay(&self, auction_id: &str, with_config: bool) -> String {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pingpost"));
        cmd.args(["ledger", "replay", auction_id, "--dir"])
            .arg(&self.ledger_path)
            .envs(TestConfig::new().env_vars());
        if with_config {
            cmd.arg("--config").arg(&self.config_path);
        }
        let out = cmd.output().expect("pingpost ledger replay");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
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

    /// Stops the exchange gracefully: cleanly, or with the ledger's failure as its error
    /// when the ledger has failed (the process then exits 1).
    pub async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            let failed = self.state.ledger.failure();
            match (r.shutdown().await, failed) {
                (Ok(()), None) => {}
                (Err(e), Some(_)) => {
                    assert!(e.to_string().starts_with("the ledger has failed"), "{e}")
                }
                (stopped, failed) => {
                    panic!("the stop gave {stopped:?} with the ledger's failure {failed:?}")
                }
            }
        }
    }
}

/// A copy of the ledger directory as it is now on disk: what a restart after a SIGKILL
/// at this moment would find.
pub fn crash_copy(ledger: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir(to).unwrap();
    for entry in std::fs::read_dir(ledger).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
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
