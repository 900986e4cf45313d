//! # The market simulation (issue 8, item 8: proof of lift)
//!
//! A seeded market of simulated buyers whose bids only partly reflect what they keep,
//! fed to three exchanges side by side: price-only (`award = "price"`), EV (models
//! trained by `pingpost train` from its own learning period, retrained continuously) and
//! oracle (serving the true realization model, imported with `pingpost models import`).
//! The report gives realized revenue per lead (bid prices of leads accepted and not
//! returned, over leads offered) per leg, the ratios against the targets (EV >= 1.25x
//! price-only, >= 0.95x oracle), and how fast EV recovers after one buyer's truth
//! drifts.
//!
//! - [`truth`]: the XGBoost-format truth and its evaluator (one source of truth).
//! - [`world`]: buyers, leads and every draw, pure functions of the seed.
//! - [`buyers`]: the bidder-SDK servers that play the buyers.
//! - [`config`]: each leg's exchange configuration (issue-8 sections isolated).
//! - [`accounting`]: revenue, rolling series, recovery, the idealized replay.
//! - [`run`]: the orchestration (child processes, phases).
//! - [`report`]: JSON, markdown and SVG.

pub mod accounting;
pub mod buyers;
pub mod config;
pub mod report;
pub mod run;
pub mod truth;
pub mod world;

use std::path::PathBuf;

/// The most leads a run may offer (learning plus held-out), a bound on time and memory.
pub const LEADS_MAX: u64 = 1_000_000;

/// Everything `loadtest run market` takes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MarketOpts {
    /// Seeds the leads, bids and realizations (and nothing else).
    pub seed: u64,
    /// Days of the learning period (EV exchange without a model).
    pub learn_days: u64,
    /// Held-out days (all three legs).
    pub test_days: u64,
    /// Leads per simulated day.
    pub leads_per_day: u64,
    /// Where in the held-out stream (0-based lead) one buyer's truth drifts; `None`: no
    /// drift.
    pub drift_at_lead: Option<u64>,
    /// Which buyer drifts (index in the buyer list).
    pub drift_buyer: usize,
    /// `[learning] retrain_after_dispositions` of the EV exchange (0: not set).
    pub retrain_after: u64,
    /// Rolling window of the picture and of the recovery, leads.
    pub window: usize,
    /// The EV leg's `routing.explore_share`.
    pub explore_share: f64,
    /// Every buyer's `ping_timeout_ms`.
    pub ping_timeout_ms: u64,
    /// Which issue-8 pieces the exchange under test has (the rest is left out).
    pub pieces: Pieces,
    /// The `pingpost` binary.
    pub exchange_bin: PathBuf,
    /// Where the files go.
    pub out: PathBuf,
}

/// The issue-8 pieces of the exchange the run drives. Each one the exchange lacks is left
/// out of the configuration and of the run, and what it would have measured is not
/// measured (the report says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pieces {
    /// `[verticals.V.routing]` (`award = "price" | "ev"`) and `[verticals.V.features]`.
    /// Without it the exchange is configured as before issue 8 and only the price leg
    /// runs (an exchange whose default award is EV is then NOT price-only).
    pub routing: bool,
    /// `[learning]` (`models_dir`, `retrain_after_dispositions`), `pingpost train`,
    /// `pingpost models import` and `POST /admin/models`. Without it the EV leg runs on
    /// the cold-start rates and the oracle leg does not run.
    pub learning: bool,
    /// Per-buyer `key_sha256` and `POST /v1/dispositions`. Without it no disposition is
    /// reported (returns are still counted by the simulation).
    pub dispositions: bool,
}

impl Pieces {
    /// Every piece.
    pub const ALL: Pieces = Pieces {
        routing: true,
        learning: true,
        dispositions: true,
    };
    /// None: an exchange from before issue 8.
    pub const NONE: Pieces = Pieces {
        routing: false,
        learning: false,
        dispositions: false,
    };

    /// Parses `routing,learning,dispositions` (any subset; `none` or empty: none; `all`).
    pub fn parse(list: &[String]) -> Result<Pieces, String> {
        let mut p = Pieces::NONE;
        for item in list {
            match item.trim() {
                "routing" => p.routing = true,
                "learning" => p.learning = true,
                "dispositions" => p.dispositions = true,
                "all" => p = Pieces::ALL,
                "none" | "" => {}
                other => {
                    return Err(format!(
                        "unknown piece {other:?}: routing, learning, dispositions, all or none"
                    ))
                }
            }
        }
        Ok(p)
    }
}

impl MarketOpts {
    /// Leads of the learning period.
    pub fn learn_leads(&self) -> u64 {
        self.learn_days * self.leads_per_day
    }

    /// Leads of the held-out period.
    pub fn test_leads(&self) -> u64 {
        self.test_days * self.leads_per_day
    }

    /// The drift as a lead index of the whole run.
    pub fn drift_global(&self) -> Option<u64> {
        self.drift_at_lead.map(|d| self.learn_leads() + d)
    }

    /// Every problem with these options, or none.
    pub fn validate(&self, buyers: usize) -> Result<(), String> {
        let mut p = Vec::new();
        if self.leads_per_day == 0 || self.leads_per_day > 100_000 {
            p.push(format!(
                "--leads-per-day must be 1..=100000, not {}",
                self.leads_per_day
            ));
        }
        if self.test_days == 0 || self.test_days > 365 || self.learn_days > 365 {
            p.push("--test-days must be 1..=365 and --learn-days 0..=365".to_string());
        }
        let total = (self.learn_days + self.test_days).saturating_mul(self.leads_per_day);
        if total > LEADS_MAX {
            p.push(format!("{total} leads in all: at most {LEADS_MAX}"));
        }
        // The held-out leads' bounds, only once their count is right (black-box round
        // 232b: `--leads-per-day 0` was also told of a --drift-at-lead and a --window it
        // had not been given).
        let sized = p.is_empty();
        if let Some(d) = self.drift_at_lead.filter(|_| sized) {
            if d >= self.test_leads() {
                p.push(format!(
                    "--drift-at-lead {d} must be within the {} held-out leads",
                    self.test_leads()
                ));
            }
        }
        if self.drift_buyer >= buyers {
            p.push(format!(
                "--drift-buyer {} must be below {buyers}",
                self.drift_buyer
            ));
        }
        if sized && (self.window < 10 || self.window as u64 > self.test_leads().max(10)) {
            p.push(format!(
                "--window {} must be 10..=held-out leads",
                self.window
            ));
        }
        if !(0.0..=0.5).contains(&self.explore_share) {
            p.push(format!(
                "--explore-share {} must be 0..=0.5",
                self.explore_share
            ));
        }
        if self.ping_timeout_ms == 0 || self.ping_timeout_ms > 5_000 {
            p.push(format!(
                "--ping-timeout-ms {} must be 1..=5000",
                self.ping_timeout_ms
            ));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(p.join("; "))
        }
    }
}
