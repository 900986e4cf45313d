//! # pingpost: the exchange
//!
//! `config` is the validated model; `core` is the deterministic, sans-IO auction (it takes
//! `now` and returns decisions); everything else is the shell that drives it with hyper,
//! buyer clients, timers and the ledger writer.

pub mod config;
pub mod core;
