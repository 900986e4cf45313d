//! # pingpost: the exchange
//!
//! `config` is the validated model; `core` is the deterministic, sans-IO auction (it takes
//! `now` and returns decisions); everything else is the shell that drives it with hyper,
//! buyer clients, timers and the ledger writer. `app` puts them together for `main` and
//! the tests.

pub mod ai;
pub mod app;
pub mod auction;
pub mod buyers;
pub mod cert_bound;
pub mod cli_out;
pub mod clock;
pub mod config;
pub mod deadline;
pub use pingpost_core as core;
pub mod demo;
pub mod dispositions;
pub mod effects;
pub mod fdlimit;
pub mod finance;
pub mod fingerprint;
pub mod idempotency;
pub mod late;
pub mod ledger;
pub mod metrics;
pub mod models;
pub mod openapi;
pub mod reaper;
pub mod recovery;
pub mod server;
pub mod state;
pub mod synthetic;
pub mod tls;
