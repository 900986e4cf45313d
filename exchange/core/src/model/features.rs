//! The feature vector the models see, declared per vertical in the configuration
//! (`[verticals.NAME.features]`).
//!
//! Owns: the order and encoding of every feature. The vector is the `lead` features in
//! declared order, then `context`, then `buyer`. The lead-score model sees the first two
//! parts; the realization model sees all three.
//! - numeric: the value as `f32`; boolean: 1.0 or 0.0; categorical: the 0-based index of
//!   the value in the declared `categories` (encoding `version` names that list).
//! - `hour_of_day` (0-23) and `day_of_week` (0 Monday to 6) in the lead's own time zone,
//!   taken from its state ([`state_timezone`]).
//! - `seller`, `sub_id`, `buyer`: a stable hash of the id ([`id_hash`]), exact in `f32`.
//! - buyer signals: smoothed acceptance and return rates, recent response time, cap
//!   utilisation and the bid relative to the auction's highest bid ([`BuyerSignals`]).
//!
//! Never: turns a missing value into zero. An absent field, a category not in the list,
//! a state with no known time zone or an unknown signal is missing (`NaN`), which XGBoost
//! sends down each split's default branch. Encoding is deterministic: the same lead,
//! time, seller and buyer signals give the same bits.

use chrono::{Datelike, TimeZone, Timelike};
use proto::{FieldValue, Lead, VerticalSchema};
use serde::{Deserialize, Serialize};

use crate::UnixMs;

/// Most features one vertical may declare (all three parts together).
pub const FEATURES_MAX: usize = 256;
/// Most categories one categorical feature may list.
pub const CATEGORIES_MAX: usize = 1024;
/// The value a missing feature takes.
pub const MISSING: f32 = f32::NAN;

/// How a lead field becomes a number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeadKind {
    /// The field's number (integer or decimal field).
    Numeric,
    /// 1.0 for true, 0.0 for false (a boolean field).
    Boolean,
    /// The index of the value in `categories` (an enum, state, ZIP or string field).
    Categorical { categories: Vec<String> },
}

/// One lead feature: a field of the vertical's schema and its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadFeature {
    /// The lead field's name (also the feature's name).
    pub field: String,
    /// The field's position in the vertical's schema.
    pub field_idx: usize,
    pub kind: LeadKind,
}

/// A feature of the lead's context rather than its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextFeature {
    HourOfDay,
    DayOfWeek,
    Seller,
    SubId,
}

/// A feature of the buyer a bid came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuyerFeature {
    Buyer,
    AcceptanceRate,
    ReturnRate,
    ResponseMs,
    CapUtilisation,
    BidRatio,
}

impl ContextFeature {
    pub const ALL: [ContextFeature; 4] = [
        ContextFeature::HourOfDay,
        ContextFeature::DayOfWeek,
        ContextFeature::Seller,
        ContextFeature::SubId,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContextFeature::HourOfDay => "hour_of_day",
            ContextFeature::DayOfWeek => "day_of_week",
            ContextFeature::Seller => "seller",
            ContextFeature::SubId => "sub_id",
        }
    }

    pub fn parse(s: &str) -> Option<ContextFeature> {
        ContextFeature::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl BuyerFeature {
    pub const ALL: [BuyerFeature; 6] = [
        BuyerFeature::Buyer,
        BuyerFeature::AcceptanceRate,
        BuyerFeature::ReturnRate,
        BuyerFeature::ResponseMs,
        BuyerFeature::CapUtilisation,
        BuyerFeature::BidRatio,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BuyerFeature::Buyer => "buyer",
            BuyerFeature::AcceptanceRate => "acceptance_rate",
            BuyerFeature::ReturnRate => "return_rate",
            BuyerFeature::ResponseMs => "response_ms",
            BuyerFeature::CapUtilisation => "cap_utilisation",
            BuyerFeature::BidRatio => "bid_ratio",
        }
    }

    pub fn parse(s: &str) -> Option<BuyerFeature> {
        BuyerFeature::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// `[verticals.NAME.features]`: what the models of one vertical see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureSpec {
    /// The encoding version: bumped by the operator when categories change, so a model
    /// trained on another encoding is refused.
    pub version: u32,
    pub lead: Vec<LeadFeature>,
    pub context: Vec<ContextFeature>,
    pub buyer: Vec<BuyerFeature>,
}

/// One feature as a manifest lists it: name, part and encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureDesc {
    pub name: String,
    /// `lead`, `context` or `buyer`.
    pub part: String,
    /// For a lead feature: its encoding.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub kind: Option<LeadKind>,
}

/// What a buyer looks like to the realization model at one auction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuyerSignals {
    /// [`id_hash`] of the buyer's id.
    pub buyer_hash: f32,
    /// Smoothed share of posts the buyer accepted.
    pub acceptance_rate: f32,
    /// Smoothed share of accepted leads the buyer returned.
    pub return_rate: f32,
    /// Recent ping response time in ms (missing before the first answer).
    pub response_ms: f32,
    /// The fullest cap window's used share, 0-1 (missing when uncapped).
    pub cap_utilisation: f32,
}

/// Where the lead came from and when, for the context features.
#[derive(Debug, Clone, Copy)]
pub struct LeadContext<'a> {
    pub seller_id: &'a str,
    pub sub_id: Option<&'a str>,
    /// The auction's time.
    pub at: UnixMs,
}

/// FNV-1a, 32 bits, shifted to 24 bits so it is exact in an `f32`: the encoding of the
/// `seller`, `sub_id` and `buyer` features.
pub fn id_hash(id: &str) -> f32 {
    let mut h: u32 = 2_166_136_261;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16_777_619);
    }
    (h >> 8) as f32
}

/// The main time zone of a US state or territory (the one most of its people live in).
pub fn state_timezone(state: &str) -> Option<chrono_tz::Tz> {
    use chrono_tz::America as A;
    use chrono_tz::Pacific as P;
    Some(match state {
        "CT" | "DE" | "DC" | "FL" | "GA" | "IN" | "KY" | "ME" | "MD" | "MA" | "MI" | "NH"
        | "NJ" | "NY" | "NC" | "OH" | "PA" | "RI" | "SC" | "VT" | "VA" | "WV" => A::New_York,
        "AL" | "AR" | "IL" | "IA" | "KS" | "LA" | "MN" | "MS" | "MO" | "NE" | "ND" | "OK"
        | "SD" | "TN" | "TX" | "WI" => A::Chicago,
        "CO" | "ID" | "MT" | "NM" | "UT" | "WY" => A::Denver,
        "AZ" => A::Phoenix,
        "CA" | "NV" | "OR" | "WA" => A::Los_Angeles,
        "AK" => A::Anchorage,
        "HI" => chrono_tz::Pacific::Honolulu,
        "PR" | "VI" => A::Puerto_Rico,
        "GU" | "MP" => P::Guam,
        "AS" => P::Pago_Pago,
        _ => return None,
    })
}

impl FeatureSpec {
    /// Lead and context features: what the lead-score model sees.
    pub fn lead_len(&self) -> usize {
        self.lead.len() + self.context.len()
    }

    /// The whole vector: what the realization model sees.
    pub fn len(&self) -> usize {
        self.lead_len() + self.buyer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every feature in vector order, as a manifest lists them.
    pub fn describe(&self) -> Vec<FeatureDesc> {
        let mut out = Vec::with_capacity(self.len());
        for f in &self.lead {
            out.push(FeatureDesc {
                name: f.field.clone(),
                part: "lead".into(),
                kind: Some(f.kind.clone()),
            });
        }
        for f in &self.context {
            out.push(FeatureDesc {
                name: f.as_str().into(),
                part: "context".into(),
                kind: None,
            });
        }
        for f in &self.buyer {
            out.push(FeatureDesc {
                name: f.as_str().into(),
                part: "buyer".into(),
                kind: None,
            });
        }
        out
    }

    /// Appends the lead and context features of `lead` (validated against `schema`) to
    /// `out`: [`FeatureSpec::lead_len`] values.
    pub fn encode_lead(
        &self,
        schema: &VerticalSchema,
        lead: &Lead,
        ctx: &LeadContext<'_>,
        out: &mut Vec<f32>,
    ) {
        for f in &self.lead {
            let v = schema
                .fields
                .get(f.field_idx)
                .and_then(|spec| lead.get(schema, &spec.name));
            out.push(encode_value(&f.kind, v));
        }
        let local = if self
            .context
            .iter()
            .any(|c| matches!(c, ContextFeature::HourOfDay | ContextFeature::DayOfWeek))
        {
            lead.get(schema, "state")
                .and_then(FieldValue::as_str)
                .and_then(state_timezone)
                .and_then(|tz| tz.timestamp_millis_opt(ctx.at).single())
        } else {
            None
        };
        for c in &self.context {
            out.push(match c {
                ContextFeature::HourOfDay => local.map_or(MISSING, |t| t.hour() as f32),
                ContextFeature::DayOfWeek => {
                    local.map_or(MISSING, |t| t.weekday().num_days_from_monday() as f32)
                }
                ContextFeature::Seller => id_hash(ctx.seller_id),
                ContextFeature::SubId => ctx.sub_id.map_or(MISSING, id_hash),
            });
        }
    }

    /// Appends the buyer features of one bid to `out`: `bid_ratio` is the bid over the
    /// auction's highest bid.
    pub fn encode_buyer(&self, s: &BuyerSignals, bid_ratio: f32, out: &mut Vec<f32>) {
        for f in &self.buyer {
            out.push(match f {
                BuyerFeature::Buyer => s.buyer_hash,
                BuyerFeature::AcceptanceRate => s.acceptance_rate,
                BuyerFeature::ReturnRate => s.return_rate,
                BuyerFeature::ResponseMs => s.response_ms,
                BuyerFeature::CapUtilisation => s.cap_utilisation,
                BuyerFeature::BidRatio => bid_ratio,
            });
        }
    }
}

/// One lead field's value as a feature (`NaN` when absent or not encodable).
fn encode_value(kind: &LeadKind, v: Option<&FieldValue>) -> f32 {
    let Some(v) = v else {
        return MISSING;
    };
    let x = match (kind, v) {
        (LeadKind::Numeric, FieldValue::Int(i)) => *i as f32,
        (LeadKind::Numeric, FieldValue::Num(n)) => *n as f32,
        (LeadKind::Boolean, FieldValue::Bool(b)) => f32::from(u8::from(*b)),
        (LeadKind::Categorical { categories }, FieldValue::Str(s)) => categories
            .iter()
            .position(|c| c == s)
            .map_or(MISSING, |i| i as f32),
        _ => MISSING,
    };
    // The loader only accepts numeric features whose field range fits an f32, so this
    // never fires for a validated lead; a value that is not finite is missing, never
    // an infinity handed to a model.
    if x.is_finite() {
        x
    } else {
        MISSING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_hash_is_fnv1a_shifted() {
        // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c.
        assert_eq!(id_hash(""), (2_166_136_261u32 >> 8) as f32);
        assert_eq!(id_hash("a"), (0xe40c_292cu32 >> 8) as f32);
        assert_ne!(id_hash("acme"), id_hash("acmf"));
        assert!(id_hash("zzzzzzzz") < 16_777_216.0);
    }

    #[test]
    fn every_state_has_a_zone_and_unknowns_do_not() {
        for s in [
            "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL",
            "IN", "IA", "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE",
            "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD",
            "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
        ] {
            assert!(state_timezone(s).is_some(), "{s}");
        }
        assert!(state_timezone("XX").is_none());
        assert!(state_timezone("tx").is_none());
    }

    #[test]
    fn values_encode_and_mismatches_are_missing() {
        let cat = LeadKind::Categorical {
            categories: vec!["good".into(), "poor".into()],
        };
        assert_eq!(
            encode_value(&cat, Some(&FieldValue::Str("poor".into()))),
            1.0
        );
        assert_eq!(
            encode_value(&cat, Some(&FieldValue::Str("good".into()))),
            0.0
        );
        assert!(encode_value(&cat, Some(&FieldValue::Str("fair".into()))).is_nan());
        assert!(encode_value(&cat, None).is_nan());
        assert_eq!(
            encode_value(&LeadKind::Boolean, Some(&FieldValue::Bool(false))),
            0.0
        );
        assert_eq!(
            encode_value(&LeadKind::Numeric, Some(&FieldValue::Int(0))),
            0.0
        );
        assert_eq!(
            encode_value(&LeadKind::Numeric, Some(&FieldValue::Num(42.5))),
            42.5
        );
        assert!(encode_value(&LeadKind::Numeric, Some(&FieldValue::Num(1e300))).is_nan());
        assert!(encode_value(&LeadKind::Numeric, Some(&FieldValue::Bool(true))).is_nan());
    }
}
