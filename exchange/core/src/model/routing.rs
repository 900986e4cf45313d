//! Award by expected value: EV = bid x P(the buyer accepts the post and keeps the lead).
//!
//! Owns: the realization probability of each bid of an auction, from the realization
//! model when one serves, else from the buyer's Bayesian-smoothed acceptance and return
//! rates (cold start); the exploration share, in which each bidder's acceptance is a
//! Thompson draw from its Beta posterior, so a new buyer gets enough posts to be learned;
//! and the buyer features the model saw, for the auction record (training reads them
//! back, so serving and training see the same bits).
//!
//! Never: lets a float touch money (EV is integer micros from a probability in parts per
//! million), or depends on anything but its inputs: the exploration draw is seeded by the
//! auction, so a replay ranks the same.

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use rand_distr::{Beta, Distribution};

use super::features::{BuyerSignals, FeatureSpec};
use crate::award::{expected_value, Ranked, Ranker};
use crate::config::BuyerKey;
use crate::UnixMs;

/// `routing.award`: what the award ranks by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AwardMode {
    /// Bid x P(realization): the default.
    #[default]
    ExpectedValue,
    /// The seller price alone (the classic price auction).
    Price,
}

/// `[verticals.NAME.routing]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub award: AwardMode,
    /// Share of auctions, in parts per million, ranked by Thompson draws (at most 50 %).
    pub explore_ppm: u32,
    /// Strength of the Beta prior, in posts: a buyer's smoothed rate is its own only after
    /// about this many posts.
    pub prior_weight: u32,
    /// The drift guard's threshold, in thousandths of a standard deviation (0: off): when a
    /// buyer's recent kept leads differ from what the estimates predicted for the same
    /// posts by more than this many standard deviations, its estimates are scaled by the
    /// observed / predicted ratio until a new model serves or the difference fades.
    pub drift_guard_milli: u32,
    /// A buyer that left this many delivered posts in a row unaccepted (rejected, timed
    /// out, failed) is paused: its bids are ranked at p = 0 for `reject_pause_ms` after
    /// the last of them (0: off). Black-box round 25: a buyer bidding `bid_max` and
    /// rejecting every post won a hundred leads in a row before its estimate fell enough.
    pub reject_streak_max: u32,
    /// How long a pause lasts after the streak's latest post.
    pub reject_pause_ms: u64,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing {
            award: AwardMode::ExpectedValue,
            explore_ppm: 30_000,
            prior_weight: 20,
            drift_guard_milli: 3_000,
            reject_streak_max: 20,
            reject_pause_ms: 300_000,
        }
    }
}

impl Routing {
    /// Whether a buyer whose latest `streak` delivered posts were all unaccepted, the last
    /// of them at `last_at`, is paused at `now`: ranked at p = 0 (it wins only when no
    /// other bid stands). After the pause it may win again; one more unaccepted post
    /// pauses it again, and an accepted one ends the streak.
    pub fn paused(&self, streak: u32, last_at: UnixMs, now: UnixMs) -> bool {
        self.reject_streak_max > 0
            && streak >= self.reject_streak_max
            && now < last_at.saturating_add(i64::try_from(self.reject_pause_ms).unwrap_or(i64::MAX))
    }
}

/// What the drift guard knows of one buyer: over its recent posts that carried an
/// estimate (decayed counts), how many leads it kept and how many the estimates predicted.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Guard {
    /// Posts with an estimate.
    pub posts: f64,
    /// The sum of their estimates (the kept leads expected).
    pub predicted: f64,
    /// The sum of `p (1 - p)` of their estimates (the variance of the kept count).
    pub variance: f64,
    /// Leads accepted and not (yet) returned among them.
    pub kept: f64,
}

/// The least chance a buyer not paused is given (1 ppm): the award's floor, and what
/// the drift guard counts an estimate under it as.
pub const P_FLOOR: f64 = 1e-6;

/// Fewest recent posts with an estimate before the drift guard may act.
pub const GUARD_MIN_POSTS: f64 = 10.0;

impl Guard {
    /// The factor the buyer's estimates are scaled by: `kept / predicted` when the two
    /// differ by more than `z` standard deviations (`sqrt(variance)`, at least 1 lead)
    /// over at least [`GUARD_MIN_POSTS`] posts; otherwise 1. Never NaN, never negative.
    pub fn factor(&self, z: f64) -> f64 {
        let usable = z > 0.0
            && self.posts.is_finite()
            && self.posts >= GUARD_MIN_POSTS
            && self.predicted.is_finite()
            && self.predicted > 0.0
            && self.kept.is_finite()
            && self.variance.is_finite();
        if !usable {
            return 1.0;
        }
        let sd = self.variance.max(1.0).sqrt();
        let kept = self.kept.max(0.0);
        if (kept - self.predicted).abs() > z * sd {
            kept / self.predicted
        } else {
            1.0
        }
    }
}

/// A buyer's recent post outcomes, as (decayed) counts.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Outcomes {
    /// Posts delivered to the buyer (accepted, rejected, timed out, failed).
    pub posts: f64,
    /// Posts the buyer accepted.
    pub accepts: f64,
    /// Accepted leads the buyer later returned.
    pub returns: f64,
}

/// Rates smoothed towards a prior: `(k + w * mean) / (n + w)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Priors {
    pub acceptance: f64,
    pub return_rate: f64,
}

impl Default for Priors {
    fn default() -> Priors {
        Priors {
            acceptance: 0.5,
            return_rate: 0.1,
        }
    }
}

impl Outcomes {
    /// The smoothed acceptance rate.
    pub fn acceptance(&self, prior: &Priors, w: f64) -> f64 {
        clamp01((self.accepts + w * prior.acceptance) / (self.posts + w))
    }

    /// The smoothed return rate (of accepted leads).
    pub fn return_rate(&self, prior: &Priors, w: f64) -> f64 {
        clamp01((self.returns + w * prior.return_rate) / (self.accepts + w))
    }

    /// Cold start: P(accept) x P(keep | accepted), both smoothed.
    pub fn realization(&self, prior: &Priors, w: f64) -> f64 {
        self.acceptance(prior, w) * (1.0 - self.return_rate(prior, w))
    }
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// What the shell knows about one buyer right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuyerView {
    pub outcomes: Outcomes,
    pub signals: BuyerSignals,
    /// The drift guard's recent counts.
    pub guard: Guard,
    /// Paused for a streak of unaccepted posts ([`Routing::paused`]): ranked at p = 0.
    pub paused: bool,
}

/// The shell's per-buyer statistics, read once per bid.
pub trait SignalSource: Send + Sync {
    fn view(&self, buyer: BuyerKey) -> BuyerView;
    /// The pooled rates of the vertical: the prior every buyer is smoothed towards.
    fn priors(&self) -> Priors;
}

/// A model that scores rows of the feature vector (the tree evaluator; a test double).
pub trait Predictor: Send + Sync + std::fmt::Debug {
    fn num_features(&self) -> usize;
    /// `rows` is row-major with `out.len()` rows; probabilities out.
    fn predict_many(&self, rows: &[f32], out: &mut [f32]);
}

impl Predictor for super::xgb::XgbModel {
    fn num_features(&self) -> usize {
        super::xgb::XgbModel::num_features(self)
    }

    fn predict_many(&self, rows: &[f32], out: &mut [f32]) {
        super::xgb::XgbModel::predict_many(self, rows, out);
    }
}

/// The per-auction expected-value ranker.
pub struct EvRanker<'a> {
    pub spec: Option<&'a FeatureSpec>,
    /// The realization model, if one serves (it sees `lead_x` then the buyer features).
    pub model: Option<&'a dyn Predictor>,
    /// The lead and context features of this lead (`spec.lead_len()` values).
    pub lead_x: &'a [f32],
    pub source: &'a dyn SignalSource,
    pub routing: Routing,
    /// Seeds the exploration choice and draws (a hash of the auction id).
    pub seed: u64,
    /// Filled by `rank_values`: each bid's buyer features, for the record.
    seen: Mutex<Vec<(BuyerKey, Vec<f32>)>>,
}

impl std::fmt::Debug for EvRanker<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvRanker")
            .field("model", &self.model.is_some())
            .field("routing", &self.routing)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl<'a> EvRanker<'a> {
    pub fn new(
        spec: Option<&'a FeatureSpec>,
        model: Option<&'a dyn Predictor>,
        lead_x: &'a [f32],
        source: &'a dyn SignalSource,
        routing: Routing,
        seed: u64,
    ) -> EvRanker<'a> {
        EvRanker {
            spec,
            model,
            lead_x,
            source,
            routing,
            seed,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Whether this auction explores (ranks by Thompson draws): decided by the seed alone.
    pub fn explores(&self) -> bool {
        (splitmix(self.seed) % 1_000_000) < u64::from(self.routing.explore_ppm.min(500_000))
    }

    /// The buyer features each bid was ranked with (empty without a feature spec).
    pub fn take_seen(&self) -> Vec<(BuyerKey, Vec<f32>)> {
        std::mem::take(&mut *self.seen.lock())
    }

    /// Each bid's model row: the lead's features, then its buyer's (empty without a
    /// feature spec).
    fn rows(&self, bids: &[Ranked], views: &[BuyerView]) -> Vec<f32> {
        let Some(spec) = self.spec else {
            return Vec::new();
        };
        let top = bids.iter().map(|r| r.bid.price.0).max().unwrap_or(0);
        let mut rows: Vec<f32> = Vec::with_capacity(spec.len() * bids.len());
        for (r, v) in bids.iter().zip(views) {
            rows.extend_from_slice(self.lead_x);
            rows.resize(rows.len() - self.lead_x.len() + spec.lead_len(), f32::NAN);
            let ratio = if top > 0 {
                (r.bid.price.0 as f64 / top as f64) as f32
            } else {
                f32::NAN
            };
            spec.encode_buyer(&v.signals, ratio, &mut rows);
        }
        rows
    }

    /// Keeps each bid's buyer features for the record ([`Ranker::buyer_features`]).
    fn remember(&self, bids: &[Ranked], rows: &[f32]) {
        let Some(spec) = self.spec else {
            return;
        };
        let width = spec.len();
        let mut seen = self.seen.lock();
        seen.clear();
        for (i, r) in bids.iter().enumerate() {
            let buyer_part = rows
                .get(i * width + spec.lead_len()..(i + 1) * width)
                .unwrap_or(&[]);
            seen.push((r.bid.buyer, buyer_part.to_vec()));
        }
    }
}

/// A 64-bit mix (SplitMix64's finalizer): spreads a seed over all bits.
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A probability as parts per million (NaN and out-of-range values clamped).
pub fn to_ppm(p: f64) -> u32 {
    (clamp01(p) * 1_000_000.0).round() as u32
}

impl Ranker for EvRanker<'_> {
    fn rank_values(&self, bids: &mut [Ranked], _score: Option<u8>) {
        let views = |bids: &[Ranked]| -> Vec<BuyerView> {
            bids.iter().map(|r| self.source.view(r.bid.buyer)).collect()
        };
        if self.routing.award == AwardMode::Price {
            // Ranked by price alone, but the record still carries each bid's buyer
            // features, so a ledger of price auctions trains a realization model for a
            // later switch to `ev` (black-box round 21: it had 0 examples). Without a
            // feature spec there are none, and the buyers' signals are not read.
            crate::award::PriceRanker.rank_values(bids, None);
            if self.spec.is_some() {
                let rows = self.rows(bids, &views(bids));
                self.remember(bids, &rows);
            }
            return;
        }
        let views = views(bids);
        // The buyer features of every bid, for the model and the record.
        let rows = self.rows(bids, &views);
        let prior = self.source.priors();
        let w = f64::from(self.routing.prior_weight);
        let mut p: Vec<f64> = views
            .iter()
            .map(|v| v.outcomes.realization(&prior, w))
            .collect();
        if let (Some(model), Some(spec)) = (self.model, self.spec) {
            if model.num_features() == spec.len() && !bids.is_empty() {
                let mut out = vec![0f32; bids.len()];
                model.predict_many(&rows, &mut out);
                for (pi, o) in p.iter_mut().zip(out) {
                    *pi = f64::from(o);
                }
            }
        }
        // The estimates themselves, for the drift guard's bookkeeping.
        let estimates: Vec<u32> = p.iter().map(|x| to_ppm(*x)).collect();
        let z = f64::from(self.routing.drift_guard_milli) / 1000.0;
        if z > 0.0 {
            for (pi, v) in p.iter_mut().zip(&views) {
                let f = v.guard.factor(z);
                // An estimate under the 1 ppm floor is taken at the floor, as the award
                // takes it and as the guard counted it (black-box round 68b: estimates
                // that rounded to 0 ppm predicted nothing, and the guard never acted).
                if (f - 1.0).abs() > f64::EPSILON {
                    *pi = clamp01(pi.max(P_FLOOR) * f);
                }
            }
        }
        if self.explores() {
            for (i, (pi, v)) in p.iter_mut().zip(&views).enumerate() {
                let o = &v.outcomes;
                let a = o.accepts + w * prior.acceptance;
                let b = (o.posts - o.accepts).max(0.0) + w * (1.0 - prior.acceptance);
                let mut rng = SmallRng::seed_from_u64(splitmix(self.seed ^ splitmix(i as u64 + 1)));
                let draw = Beta::new(a.max(1e-6), b.max(1e-6))
                    .map(|d| d.sample(&mut rng))
                    .unwrap_or(prior.acceptance);
                *pi = draw * (1.0 - o.return_rate(&prior, w));
            }
        }
        // A buyer paused for a streak of unaccepted posts wins only when no other bid
        // stands, exploring or not.
        for (pi, v) in p.iter_mut().zip(&views) {
            if v.paused {
                *pi = 0.0;
            }
        }
        for (((r, pi), est), v) in bids.iter_mut().zip(&p).zip(&estimates).zip(&views) {
            // A buyer not paused has at least 1 ppm, however small its chance: p_ppm 0
            // is a paused buyer's alone, and the rank order puts it after every bid of
            // the same (zero) value (black-box round 46: a model that gave the only
            // other bid about 2e-9 made both 0, and the paused buyer won on its higher
            // bid).
            let ppm = if v.paused { 0 } else { to_ppm(*pi).max(1) };
            r.p_ppm = Some(ppm);
            r.p_model_ppm = Some(*est);
            r.value = expected_value(r.bid.price, ppm);
        }
        self.remember(bids, &rows);
    }

    fn explored(&self) -> bool {
        self.routing.award == AwardMode::ExpectedValue && self.explores()
    }

    fn buyer_features(&self, buyer: BuyerKey) -> Option<Vec<f32>> {
        self.seen
            .lock()
            .iter()
            .find(|(k, _)| *k == buyer)
            .map(|(_, x)| x.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proto::Micros;

    use super::*;
    use crate::award::{rank, Bid};
    use crate::config::PayoutModel;
    use crate::model::features::{BuyerFeature, ContextFeature};

    #[derive(Debug, Default)]
    struct Stats(
        HashMap<u32, Outcomes>,
        HashMap<u32, Guard>,
        std::collections::HashSet<u32>,
    );
    impl SignalSource for Stats {
        fn view(&self, buyer: BuyerKey) -> BuyerView {
            BuyerView {
                outcomes: self.0.get(&buyer.0).copied().unwrap_or_default(),
                signals: BuyerSignals {
                    buyer_hash: buyer.0 as f32,
                    acceptance_rate: 0.5,
                    return_rate: 0.1,
                    response_ms: f32::NAN,
                    cap_utilisation: f32::NAN,
                },
                guard: self.1.get(&buyer.0).copied().unwrap_or_default(),
                paused: self.2.contains(&buyer.0),
            }
        }
        fn priors(&self) -> Priors {
            Priors::default()
        }
    }

    /// A model whose probability is the `buyer` feature / 10.
    #[derive(Debug)]
    struct ByBuyer(usize);
    impl Predictor for ByBuyer {
        fn num_features(&self) -> usize {
            self.0
        }
        fn predict_many(&self, rows: &[f32], out: &mut [f32]) {
            for (i, o) in out.iter_mut().enumerate() {
                *o = rows[i * self.0 + self.0 - 1] / 10.0;
            }
        }
    }

    fn bid(buyer: u32, units: i64) -> Bid {
        Bid {
            buyer: BuyerKey(buyer),
            price: Micros(units * 1_000_000),
            bid_id: None,
            expires_in_ms: None,
            fixed: false,
        }
    }

    fn order(r: &crate::award::Ranking) -> Vec<u32> {
        r.ranked.iter().map(|x| x.bid.buyer.0).collect()
    }

    const PAYOUT: PayoutModel = PayoutModel::RevenueShare { share_bp: 8000 };

    fn no_explore() -> Routing {
        Routing {
            explore_ppm: 0,
            drift_guard_milli: 0,
            ..Routing::default()
        }
    }

    #[test]
    fn a_buyer_paused_for_unaccepted_posts_ranks_last_even_when_exploring() {
        let r = Routing::default();
        // 20 unaccepted in a row, the last at 1,000: paused for 300 s after it.
        assert!(!r.paused(19, 1_000, 1_001));
        assert!(r.paused(20, 1_000, 1_001));
        assert!(r.paused(25, 1_000, 300_999));
        assert!(!r.paused(25, 1_000, 301_000), "the pause ends");
        let off = Routing {
            reject_streak_max: 0,
            ..r
        };
        assert!(!off.paused(1_000, 1_000, 1_001));
        assert!(!r.paused(u32::MAX, i64::MAX, i64::MAX), "no overflow");

        // Buyer 1 bids 50 times buyer 2 and is paused: it ranks last, at p = 0, and
        // still stands behind the others (it wins when nobody else bids).
        let mut stats = Stats::default();
        stats.2.insert(1);
        for routing in [
            no_explore(),
            Routing {
                explore_ppm: 500_000,
                ..no_explore()
            },
        ] {
            for seed in 0..20 {
                let ranker = EvRanker::new(None, None, &[], &stats, routing, seed);
                let ranked = rank(
                    vec![bid(1, 500), bid(2, 10)],
                    PAYOUT,
                    Micros::ZERO,
                    &ranker,
                    None,
                );
                assert_eq!(order(&ranked), [2, 1], "seed {seed}");
                assert_eq!(ranked.ranked[1].p_ppm, Some(0));
            }
        }
        let ranker = EvRanker::new(None, None, &[], &stats, no_explore(), 7);
        let alone = rank(vec![bid(1, 500)], PAYOUT, Micros::ZERO, &ranker, None);
        assert_eq!(order(&alone), [1]);
    }

    /// Black-box round 46: a buyer the rates (or a model) give next to no chance is
    /// still ranked at 1 ppm, never 0, so a paused buyer's higher bid (also value 0)
    /// does not win the tie; the paused buyer stands behind it.
    #[test]
    fn a_paused_buyer_loses_the_tie_to_a_bid_with_next_to_no_chance() {
        let mut stats = Stats::default();
        stats.2.insert(1);
        stats.0.insert(
            2,
            Outcomes {
                posts: 1e12,
                accepts: 0.0,
                returns: 0.0,
            },
        );
        for seed in 0..5 {
            let ranker = EvRanker::new(None, None, &[], &stats, no_explore(), seed);
            let ranked = rank(
                vec![bid(1, 30), bid(2, 10)],
                PAYOUT,
                Micros::ZERO,
                &ranker,
                None,
            );
            assert_eq!(order(&ranked), [2, 1], "seed {seed}: {ranked:?}");
            assert_eq!(ranked.ranked[0].p_ppm, Some(1), "at least 1 ppm");
            assert_eq!(ranked.ranked[1].p_ppm, Some(0), "paused");
        }
    }

    #[test]
    fn cold_start_ranks_the_reliable_buyer_above_the_higher_bid() {
        let mut stats = Stats::default();
        // Buyer 1 bids 20 but accepted 10 of 100 posts; buyer 2 bids 15 and took 95 of 100.
        stats.0.insert(
            1,
            Outcomes {
                posts: 100.0,
                accepts: 10.0,
                returns: 0.0,
            },
        );
        stats.0.insert(
            2,
            Outcomes {
                posts: 100.0,
                accepts: 95.0,
                returns: 5.0,
            },
        );
        let ranker = EvRanker::new(None, None, &[], &stats, no_explore(), 7);
        let r = rank(
            vec![bid(1, 20), bid(2, 15)],
            PAYOUT,
            Micros::ZERO,
            &ranker,
            None,
        );
        assert_eq!(order(&r), [2, 1]);
        // EV is the bid times the probability, exactly, in micros.
        let w = f64::from(no_explore().prior_weight);
        let p2 = stats.0[&2].realization(&Priors::default(), w);
        assert_eq!(r.ranked[0].p_ppm, Some(to_ppm(p2)));
        assert_eq!(
            r.ranked[0].value,
            expected_value(Micros(15_000_000), to_ppm(p2))
        );
        // The price ranker would have put buyer 1 first.
        let price = rank(
            vec![bid(1, 20), bid(2, 15)],
            PAYOUT,
            Micros::ZERO,
            &crate::award::PriceRanker,
            None,
        );
        assert_eq!(order(&price), [1, 2]);
        let as_price = EvRanker::new(
            None,
            None,
            &[],
            &stats,
            Routing {
                award: AwardMode::Price,
                ..no_explore()
            },
            7,
        );
        let r = rank(
            vec![bid(1, 20), bid(2, 15)],
            PAYOUT,
            Micros::ZERO,
            &as_price,
            None,
        );
        assert_eq!(order(&r), [1, 2]);
        assert_eq!(r.ranked[0].p_ppm, None);
    }

    #[test]
    fn a_new_buyer_sits_at_the_prior() {
        let o = Outcomes::default();
        let p = Priors::default();
        assert!((o.realization(&p, 20.0) - 0.5 * 0.9).abs() < 1e-12);
        // Data moves it away from the prior, more with more posts.
        let few = Outcomes {
            posts: 4.0,
            accepts: 4.0,
            returns: 0.0,
        };
        let many = Outcomes {
            posts: 400.0,
            accepts: 400.0,
            returns: 0.0,
        };
        assert!(few.acceptance(&p, 20.0) > 0.5);
        assert!(many.acceptance(&p, 20.0) > few.acceptance(&p, 20.0));
        assert!(many.acceptance(&p, 20.0) <= 1.0);
    }

    #[test]
    fn the_model_sees_lead_then_buyer_features_and_sets_the_order() {
        let spec = FeatureSpec {
            version: 1,
            lead: Vec::new(),
            context: vec![ContextFeature::Seller],
            buyer: vec![BuyerFeature::BidRatio, BuyerFeature::Buyer],
        };
        let stats = Stats::default();
        let model = ByBuyer(spec.len());
        let lead_x = [42.0f32];
        let ranker = EvRanker::new(Some(&spec), Some(&model), &lead_x, &stats, no_explore(), 1);
        // p = buyer/10: buyer 9 (p .9) bidding 10 beats buyer 2 (p .2) bidding 30.
        let r = rank(
            vec![bid(2, 30), bid(9, 10)],
            PAYOUT,
            Micros::ZERO,
            &ranker,
            None,
        );
        assert_eq!(order(&r), [9, 2]);
        assert_eq!(r.ranked[0].p_ppm, Some(900_000));
        assert_eq!(r.ranked[1].p_ppm, Some(200_000));
        let seen = ranker.buyer_features(BuyerKey(2)).unwrap_or_default();
        assert_eq!(seen, vec![1.0, 2.0]);
        let seen = ranker.buyer_features(BuyerKey(9)).unwrap_or_default();
        assert_eq!(seen, vec![10.0 / 30.0, 9.0]);
    }

    #[test]
    fn exploration_is_bounded_seeded_and_reproducible() {
        let stats = Stats::default();
        let routing = Routing {
            explore_ppm: 100_000,
            ..Routing::default()
        };
        let explored = (0..20_000u64)
            .filter(|s| EvRanker::new(None, None, &[], &stats, routing, *s).explores())
            .count();
        // 10 % of auctions, within sampling noise.
        assert!((1_600..=2_400).contains(&explored), "{explored}");
        let wide = Routing {
            explore_ppm: 1_000_000,
            ..Routing::default()
        };
        let explored = (0..2_000u64)
            .filter(|s| EvRanker::new(None, None, &[], &stats, wide, *s).explores())
            .count();
        assert!(
            explored <= 1_200,
            "explore share is capped at 50 %: {explored}"
        );
        // The same seed draws the same values.
        let seed = (0..u64::MAX)
            .find(|s| EvRanker::new(None, None, &[], &stats, routing, *s).explores())
            .unwrap_or(0);
        let a = EvRanker::new(None, None, &[], &stats, routing, seed);
        let b = EvRanker::new(None, None, &[], &stats, routing, seed);
        let ra = rank(vec![bid(1, 10), bid(2, 10)], PAYOUT, Micros::ZERO, &a, None);
        let rb = rank(vec![bid(1, 10), bid(2, 10)], PAYOUT, Micros::ZERO, &b, None);
        assert_eq!(ra, rb);
        assert!(a.explored());
    }

    /// Black-box round 68b: the guard scales an estimate under the 1 ppm floor from the
    /// floor (a model that says about 0 for a buyer that keeps a fifth of its leads).
    #[test]
    fn the_drift_guard_scales_an_estimate_under_the_floor_from_the_floor() {
        let spec = FeatureSpec {
            version: 1,
            lead: Vec::new(),
            context: Vec::new(),
            buyer: vec![BuyerFeature::Buyer],
        };
        // p = buyer / 10: buyer 0's estimate is 0.
        let model = ByBuyer(spec.len());
        let routing = Routing {
            explore_ppm: 0,
            ..Routing::default()
        };
        let rank_0 = |guard: Guard| {
            let mut stats = Stats::default();
            stats.1.insert(0, guard);
            let ranker = EvRanker::new(Some(&spec), Some(&model), &[], &stats, routing, 1);
            let r = rank(vec![bid(0, 10)], PAYOUT, Micros::ZERO, &ranker, None);
            (r.ranked[0].p_ppm, r.ranked[0].p_model_ppm)
        };
        // No drift: the floor.
        assert_eq!(rank_0(Guard::default()), (Some(1), Some(0)));
        // 110 posts counted at the floor, 20 kept: scaled from the floor.
        let (p, est) = rank_0(Guard {
            posts: 110.0,
            predicted: 110e-6,
            variance: 110e-6,
            kept: 20.0,
        });
        assert_eq!(est, Some(0));
        assert!(p.is_some_and(|p| p > 100_000), "{p:?}");
    }

    #[test]
    fn the_drift_guard_acts_only_on_a_clear_difference() {
        let z = 3.0;
        // Too few posts: no say, however far off.
        let few = Guard {
            posts: 9.0,
            predicted: 8.1,
            variance: 0.81,
            kept: 0.0,
        };
        assert_eq!(few.factor(z), 1.0);
        // 100 posts predicted at 0.9 each (90 kept expected, sd 3): 82 kept is within 3 sd.
        let noise = Guard {
            posts: 100.0,
            predicted: 90.0,
            variance: 9.0,
            kept: 82.0,
        };
        assert_eq!(noise.factor(z), 1.0);
        // 20 kept is a drift: estimates are scaled by 20/90.
        let drift = Guard {
            kept: 20.0,
            ..noise
        };
        assert!((drift.factor(z) - 20.0 / 90.0).abs() < 1e-12);
        // Better than predicted scales up, too.
        let better = Guard {
            posts: 100.0,
            predicted: 30.0,
            variance: 21.0,
            kept: 60.0,
        };
        assert!((better.factor(z) - 2.0).abs() < 1e-12);
        // Off, or nonsense counts: 1.
        assert_eq!(drift.factor(0.0), 1.0);
        let nan = Guard {
            predicted: f64::NAN,
            ..drift
        };
        assert_eq!(nan.factor(z), 1.0);
        let none = Guard {
            predicted: 0.0,
            ..drift
        };
        assert_eq!(none.factor(z), 1.0);
    }

    #[test]
    fn a_drifted_buyer_is_ranked_on_what_it_keeps_and_the_estimate_is_kept_apart() {
        let spec = FeatureSpec {
            version: 1,
            lead: Vec::new(),
            context: vec![ContextFeature::Seller],
            buyer: vec![BuyerFeature::BidRatio, BuyerFeature::Buyer],
        };
        let model = ByBuyer(spec.len());
        let lead_x = [42.0f32];
        let mut stats = Stats::default();
        // The model says buyer 9 keeps 90 %; lately it kept 20 of the 90 leads predicted.
        stats.1.insert(
            9,
            Guard {
                posts: 100.0,
                predicted: 90.0,
                variance: 9.0,
                kept: 20.0,
            },
        );
        let guarded = Routing {
            explore_ppm: 0,
            ..Routing::default()
        };
        let bids = || vec![bid(5, 15), bid(9, 10)];
        // Without the guard: 10 x .9 = 9 beats 15 x .5 = 7.5.
        let off = EvRanker::new(Some(&spec), Some(&model), &lead_x, &stats, no_explore(), 1);
        let r = rank(bids(), PAYOUT, Micros::ZERO, &off, None);
        assert_eq!(order(&r), [9, 5]);
        assert_eq!(r.ranked[0].p_ppm, Some(900_000));
        // With it: buyer 9 is worth 10 x .9 x 20/90 = 2, below buyer 5.
        let on = EvRanker::new(Some(&spec), Some(&model), &lead_x, &stats, guarded, 1);
        let r = rank(bids(), PAYOUT, Micros::ZERO, &on, None);
        assert_eq!(order(&r), [5, 9]);
        assert_eq!(r.ranked[0].p_ppm, Some(500_000));
        assert_eq!(r.ranked[1].p_ppm, Some(200_000));
        assert_eq!(
            r.ranked[1].value,
            expected_value(Micros(10_000_000), 200_000)
        );
        // The model's own estimate travels with the bid, for the guard's bookkeeping.
        assert_eq!(r.ranked[1].p_model_ppm, Some(900_000));
        assert_eq!(r.ranked[0].p_model_ppm, Some(500_000));
    }

    #[test]
    fn nan_and_out_of_range_probabilities_never_reach_money() {
        assert_eq!(to_ppm(f64::NAN), 0);
        assert_eq!(to_ppm(2.0), 1_000_000);
        assert_eq!(to_ppm(-1.0), 0);
        assert_eq!(expected_value(Micros(i64::MAX), 1_000_000), i64::MAX);
    }
}
