//! The simulated world: the feature layout the market's exchanges are configured with,
//! the buyers (how they bid, what they truly keep), the lead stream, and every random
//! draw, each a pure function of `(seed, lead index, buyer index)`. The same lead gets
//! the same bids and the same realization draws on every leg (common random numbers), so
//! the legs differ only in how the exchange awards.

use bidder_sdk::Micros;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::Value;

use super::truth::{Ensemble, Term};
use crate::sim::buyer_id;

/// The lead features of the market vertical, in configured order:
/// `(field, kind, categories)`.
pub const LEAD_FEATURES: [(&str, &str, &[&str]); 4] = [
    ("age", "numeric", &[]),
    ("homeowner", "boolean", &[]),
    ("credit", "categorical", &CREDIT),
    ("insured", "boolean", &[]),
];
/// The credit categories, in the configured order (index = feature value).
pub const CREDIT: [&str; 4] = ["excellent", "good", "fair", "poor"];
/// The context features, in configured order (AI-DESIGN.md).
pub const CONTEXT_FEATURES: [&str; 4] = ["hour_of_day", "day_of_week", "seller", "sub_id"];
/// The buyer features, in configured order (AI-DESIGN.md).
pub const BUYER_FEATURES: [&str; 6] = [
    "buyer",
    "acceptance_rate",
    "return_rate",
    "response_ms",
    "cap_utilisation",
    "bid_ratio",
];
/// Length of the feature vector: lead, then context, then buyer.
pub const NUM_FEATURES: usize = LEAD_FEATURES.len() + CONTEXT_FEATURES.len() + BUYER_FEATURES.len();
/// Index of the `buyer` feature.
pub const BUYER_FEATURE: u32 = (LEAD_FEATURES.len() + CONTEXT_FEATURES.len()) as u32;
/// Feature indices of the lead features.
pub const F_AGE: u32 = 0;
/// `homeowner`: 1.0 / 0.0.
pub const F_HOMEOWNER: u32 = 1;
/// `credit`: index in [`CREDIT`].
pub const F_CREDIT: u32 = 2;
/// `insured`: 1.0 / 0.0.
pub const F_INSURED: u32 = 3;
/// The ping field that carries the lead's index to the simulated buyers (a plain string
/// field of the market vertical, allowed at ping, not PII, not a feature).
pub const LEAD_REF_FIELD: &str = "lead_ref";

/// `x[feature] < threshold` adds `below`, else `above` (missing: the `above` side).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TruthSplit {
    /// Feature index (a lead feature).
    pub feature: u32,
    /// Threshold.
    pub threshold: f32,
    /// Added to the margin below the threshold.
    pub below: f32,
    /// Added at or above it.
    pub above: f32,
}

/// One simulated buyer of the market.
#[derive(Debug, Clone, Serialize)]
pub struct BuyerProfile {
    /// Display name (its config id is `sim{index}_{name}`).
    pub name: &'static str,
    /// Chance to bid on a lead it takes at all.
    pub bid_probability: f64,
    /// Passes on `fair` and `poor` credit.
    pub good_credit_only: bool,
    /// Bid, in dollars: base...
    pub bid_base: f64,
    /// ...plus this for a homeowner...
    pub bid_homeowner: f64,
    /// ...plus this for `good` or `excellent` credit...
    pub bid_good_credit: f64,
    /// ...plus this under 25...
    pub bid_young: f64,
    /// ...plus normal noise with this standard deviation (at least $1.00 in all).
    pub bid_sd: f64,
    /// The truth: its base margin...
    pub truth_base: f32,
    /// ...plus these splits.
    pub truth_splits: Vec<TruthSplit>,
    /// Of the leads it does not keep, the share it accepts and later returns (the rest it
    /// rejects at the post).
    pub return_share: f64,
}

const fn split(feature: u32, threshold: f32, below: f32, above: f32) -> TruthSplit {
    TruthSplit {
        feature,
        threshold,
        below,
        above,
    }
}

/// The default market: six buyers whose bids only partly reflect what they keep.
/// - `apex` bids highest but keeps few `fair`/`poor` credit or young leads (returns most);
/// - `steady` bids modestly and keeps almost everything (the drift buyer by default);
/// - `premium` bids well on good credit only and keeps most of it;
/// - `volume` bids low and keeps nearly all;
/// - `flaky` bids above the middle and keeps under half (fewer uninsured);
/// - `youth` pays extra for drivers under 25 and keeps them.
pub fn default_buyers() -> Vec<BuyerProfile> {
    vec![
        BuyerProfile {
            name: "apex",
            bid_probability: 0.95,
            good_credit_only: false,
            bid_base: 27.0,
            bid_homeowner: 4.0,
            bid_good_credit: 2.0,
            bid_young: 0.0,
            bid_sd: 3.0,
            truth_base: 0.7,
            truth_splits: vec![
                split(F_CREDIT, 1.5, 0.0, -2.6),
                split(F_AGE, 25.0, -1.8, 0.0),
                split(F_HOMEOWNER, 0.5, -0.5, 0.0),
            ],
            return_share: 0.8,
        },
        BuyerProfile {
            name: "steady",
            bid_probability: 0.9,
            good_credit_only: false,
            bid_base: 15.0,
            bid_homeowner: 1.5,
            bid_good_credit: 0.0,
            bid_young: 0.0,
            bid_sd: 1.5,
            truth_base: 2.6,
            truth_splits: vec![split(F_CREDIT, 2.5, 0.0, -0.6)],
            return_share: 0.3,
        },
        BuyerProfile {
            name: "premium",
            bid_probability: 0.85,
            good_credit_only: true,
            bid_base: 21.0,
            bid_homeowner: 2.0,
            bid_good_credit: 0.0,
            bid_young: 0.0,
            bid_sd: 2.0,
            truth_base: 1.3,
            truth_splits: vec![split(F_AGE, 25.0, -1.2, 0.0)],
            return_share: 0.5,
        },
        BuyerProfile {
            name: "volume",
            bid_probability: 1.0,
            good_credit_only: false,
            bid_base: 11.0,
            bid_homeowner: 0.0,
            bid_good_credit: 0.0,
            bid_young: 0.0,
            bid_sd: 1.5,
            truth_base: 2.0,
            truth_splits: vec![],
            return_share: 0.2,
        },
        BuyerProfile {
            name: "flaky",
            bid_probability: 0.9,
            good_credit_only: false,
            bid_base: 20.0,
            bid_homeowner: 0.0,
            bid_good_credit: 1.0,
            bid_young: 0.0,
            bid_sd: 3.0,
            truth_base: -0.2,
            truth_splits: vec![split(F_INSURED, 0.5, -0.9, 0.0)],
            return_share: 0.6,
        },
        BuyerProfile {
            name: "youth",
            bid_probability: 0.9,
            good_credit_only: false,
            bid_base: 13.0,
            bid_homeowner: 0.0,
            bid_good_credit: 0.0,
            bid_young: 7.0,
            bid_sd: 2.0,
            truth_base: 1.0,
            truth_splits: vec![split(F_AGE, 25.0, 1.0, 0.0)],
            return_share: 0.4,
        },
    ]
}

/// The margin the drift buyer's base moves to at the drift (from `steady`'s 2.6: it
/// suddenly keeps about 18 % instead of 93 %).
pub const DRIFT_BASE_MARGIN: f32 = -1.5;

/// One lead of the stream.
#[derive(Debug, Clone)]
pub struct MarketLead {
    /// Its index in the whole run (learning leads first, then the held-out ones).
    pub index: u64,
    /// The ping's `lead` (no PII), with [`LEAD_REF_FIELD`].
    pub ping: Value,
    /// The post's `lead` (the ping fields and the PII).
    pub full: Value,
    /// The lead features, in [`LEAD_FEATURES`] order (NaN = missing).
    pub features: [f32; 4],
}

/// splitmix64 step.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform in [0, 1) from `(seed, lead, buyer, salt)`.
pub fn unit(seed: u64, lead: u64, buyer: u64, salt: u64) -> f64 {
    let h = mix64(mix64(mix64(mix64(seed) ^ lead) ^ buyer.wrapping_mul(0x1000_0001)) ^ salt);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

const SALT_LEAD: u64 = 1;
const SALT_BIDS: u64 = 2;
const SALT_NOISE_A: u64 = 3;
const SALT_NOISE_B: u64 = 4;
const SALT_REALIZE: u64 = 5;
const SALT_RETURN: u64 = 6;

/// Lead `index` of the stream of `seed`: a realistic auto-insurance lead (the load
/// generator's own distribution) plus its [`LEAD_REF_FIELD`].
pub fn lead(seed: u64, index: u64) -> MarketLead {
    let mut rng = StdRng::seed_from_u64(mix64(seed ^ mix64(index ^ SALT_LEAD.rotate_left(40))));
    let (mut ping, mut full) = crate::gen::auto_insurance_lead(&mut rng);
    let r = Value::String(format!("m{index}"));
    for v in [&mut ping, &mut full] {
        if let Value::Object(m) = v {
            m.insert(LEAD_REF_FIELD.into(), r.clone());
        }
    }
    let features = lead_features(&ping);
    MarketLead {
        index,
        ping,
        full,
        features,
    }
}

/// The lead features of a ping's lead, encoded as AI-DESIGN.md says (numeric: the value;
/// boolean 1/0; categorical: index; otherwise missing).
pub fn lead_features(lead: &Value) -> [f32; 4] {
    let num = |k: &str| lead[k].as_f64().map_or(f32::NAN, |x| x as f32);
    let boolean = |k: &str| {
        lead[k]
            .as_bool()
            .map_or(f32::NAN, |b| if b { 1.0 } else { 0.0 })
    };
    let credit = lead["credit"]
        .as_str()
        .and_then(|c| CREDIT.iter().position(|x| *x == c))
        .map_or(f32::NAN, |i| i as f32);
    [num("age"), boolean("homeowner"), credit, boolean("insured")]
}

/// The lead index in a ping or post's lead (`"m<index>"`).
pub fn lead_ref(lead: &std::collections::BTreeMap<String, Value>) -> Option<u64> {
    lead.get(LEAD_REF_FIELD)?
        .as_str()?
        .strip_prefix('m')?
        .parse()
        .ok()
}

/// The whole world: buyers, their truths, the drift.
#[derive(Debug, Clone)]
pub struct World {
    /// The run's seed.
    pub seed: u64,
    /// The buyers, in config order.
    pub buyers: Vec<BuyerProfile>,
    /// Their config ids, `sim{index}_{name}`.
    pub ids: Vec<String>,
    /// The truth before the drift.
    pub truth: Ensemble,
    /// The truth from lead `drift_at` on (the drift buyer's base margin moved).
    pub truth_drifted: Ensemble,
    /// The first lead index (whole run) of the drifted truth; `None`: no drift.
    pub drift_at: Option<u64>,
    /// Which buyer drifts.
    pub drift_buyer: usize,
}

/// The ensemble of a set of buyers; `drift`: `(buyer, new base margin)`.
pub fn truth_of(buyers: &[BuyerProfile], ids: &[String], drift: Option<(usize, f32)>) -> Ensemble {
    let mut terms = Vec::new();
    for (k, (b, id)) in buyers.iter().zip(ids).enumerate() {
        let margin = match drift {
            Some((d, m)) if d == k => m,
            _ => b.truth_base,
        };
        terms.push(Term::Base {
            buyer: id.clone(),
            margin,
        });
        for s in &b.truth_splits {
            terms.push(Term::Split {
                buyer: id.clone(),
                feature: s.feature,
                threshold: s.threshold,
                below: s.below,
                at_or_above: s.above,
                missing_below: false,
            });
        }
    }
    Ensemble::from_terms(&terms, NUM_FEATURES, BUYER_FEATURE)
}

/// What buyer `k` does with lead `i` if it is posted to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Realization {
    /// The true probability of keeping it.
    pub p: f32,
    /// Keeps it (accepts, never returns).
    pub kept: bool,
    /// Not kept: accepts and returns it (else rejects the post).
    pub returns: bool,
}

impl World {
    /// The default buyers with `seed`, drifting `drift_buyer` at lead `drift_at`.
    pub fn new(
        seed: u64,
        buyers: Vec<BuyerProfile>,
        drift_at: Option<u64>,
        drift_buyer: usize,
    ) -> World {
        let ids: Vec<String> = buyers
            .iter()
            .enumerate()
            .map(|(i, b)| buyer_id(i, b.name))
            .collect();
        let truth = truth_of(&buyers, &ids, None);
        let truth_drifted = truth_of(&buyers, &ids, Some((drift_buyer, DRIFT_BASE_MARGIN)));
        World {
            seed,
            buyers,
            ids,
            truth,
            truth_drifted,
            drift_at,
            drift_buyer,
        }
    }

    /// The truth in force for lead `i`.
    pub fn truth_for(&self, i: u64) -> &Ensemble {
        match self.drift_at {
            Some(d) if i >= d => &self.truth_drifted,
            _ => &self.truth,
        }
    }

    /// The feature row the truth sees for `(lead, buyer k)`: the lead features, the
    /// buyer's id hash, everything else missing.
    pub fn row(&self, features: &[f32; 4], k: usize) -> [f32; NUM_FEATURES] {
        let mut row = [f32::NAN; NUM_FEATURES];
        row[..4].copy_from_slice(features);
        row[BUYER_FEATURE as usize] = self
            .ids
            .get(k)
            .map_or(f32::NAN, |id| super::truth::id_hash(id));
        row
    }

    /// Buyer `k`'s bid on lead `i` with these features, or `None` (a pass). Whole cents,
    /// at least $1.00.
    pub fn bid(&self, i: u64, features: &[f32; 4], k: usize) -> Option<Micros> {
        let b = self.buyers.get(k)?;
        let kk = k as u64;
        if unit(self.seed, i, kk, SALT_BIDS) >= b.bid_probability {
            return None;
        }
        let credit = features[F_CREDIT as usize];
        let good = credit < 1.5; // excellent (0) or good (1); NaN is not good
        if b.good_credit_only && !good {
            return None;
        }
        let mut dollars = b.bid_base;
        if features[F_HOMEOWNER as usize] == 1.0 {
            dollars += b.bid_homeowner;
        }
        if good {
            dollars += b.bid_good_credit;
        }
        if features[F_AGE as usize] < 25.0 {
            dollars += b.bid_young;
        }
        // Box-Muller from two draws of this (lead, buyer).
        let u1 = unit(self.seed, i, kk, SALT_NOISE_A).max(1e-12);
        let u2 = unit(self.seed, i, kk, SALT_NOISE_B);
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        dollars += b.bid_sd * z;
        let cents = (dollars.max(1.0) * 100.0).round() as i64;
        Some(Micros(cents * 10_000))
    }

    /// What buyer `k` does with lead `i` if it is posted to it.
    pub fn realize(&self, i: u64, features: &[f32; 4], k: usize) -> Realization {
        let p = self.truth_for(i).predict(&self.row(features, k));
        let kk = k as u64;
        let kept = unit(self.seed, i, kk, SALT_REALIZE) < f64::from(p);
        let share = self.buyers.get(k).map_or(0.0, |b| b.return_share);
        let returns = !kept && unit(self.seed, i, kk, SALT_RETURN) < share;
        Realization { p, kept, returns }
    }
}
