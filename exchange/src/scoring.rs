//! The seam where lead scoring plugs in. Until the scoring issue lands, no score exists:
//! buyers' score floors are not applied and pings carry no `score`.

use proto::Lead;

use crate::config::Vertical;

/// Gives a lead a 0-100 quality score, or none.
pub trait Scorer: Send + Sync + std::fmt::Debug {
    fn score(&self, vertical: &Vertical, lead: &Lead) -> Option<u8>;
}

/// The scorer used until a model is configured: no score.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoScore;

impl Scorer for NoScore {
    fn score(&self, _vertical: &Vertical, _lead: &Lead) -> Option<u8> {
        None
    }
}
