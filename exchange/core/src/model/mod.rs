//! AI routing in the core, pure Rust and no I/O: the feature vector ([`features`]), award
//! by expected value with cold start and exploration ([`routing`]), model manifests
//! ([`manifest`]) and the XGBoost tree evaluator ([`xgb`]).

pub mod features;
pub mod manifest;
pub mod routing;
pub mod xgb;
