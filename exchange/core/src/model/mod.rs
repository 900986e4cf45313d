//! AI routing in the core: the feature vector ([`features`]), award by expected value
//! with cold start and exploration ([`routing`]), model manifests ([`manifest`]).

pub mod features;
pub mod manifest;
pub mod routing;
