//! Models served by the exchange: pure-Rust evaluation, no I/O.

pub mod xgb;
