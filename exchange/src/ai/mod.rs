//! AI routing, shell side: training models with XGBoost (through xgboost-rs) and the
//! metrics that judge them. Serving is pure Rust in [`crate::core::model`].

pub mod metrics;
pub mod train;
