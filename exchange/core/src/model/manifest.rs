//! A model's manifest: what it was trained on and how well it did, written next to the
//! XGBoost JSON model file. A model is served only if its manifest's features are exactly
//! the vertical's configured features (names, parts, encodings and encoding version).

use serde::{Deserialize, Serialize};

use super::features::{FeatureDesc, FeatureSpec};

/// The manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;
/// Longest model version name.
pub const VERSION_LEN_MAX: usize = 64;
/// Largest manifest file accepted.
pub const MANIFEST_BYTES_MAX: usize = 1 << 20;

/// Which of a vertical's two models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// P(the lead is sold and kept), served as the 0-100 lead score.
    LeadScore,
    /// P(this buyer accepts the post and keeps the lead), the EV award's probability.
    Realization,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::LeadScore, ModelKind::Realization];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::LeadScore => "lead_score",
            ModelKind::Realization => "realization",
        }
    }

    /// The features this model sees under `spec`.
    pub fn expected_features(self, spec: &FeatureSpec) -> Vec<FeatureDesc> {
        let mut all = spec.describe();
        if self == ModelKind::LeadScore {
            all.truncate(spec.lead_len());
        }
        all
    }
}

/// Where a model set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// Made by `pingpost train` (or background retraining).
    Trained,
    /// Brought in by `pingpost models import`.
    Imported,
}

impl ModelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelSource::Trained => "trained",
            ModelSource::Imported => "imported",
        }
    }
}

/// The training window, as RFC 3339 times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// The first training example's time.
    pub from: String,
    /// Where the held-out split starts (examples at or after it were held out).
    pub heldout_from: String,
    /// The last example's time.
    pub to: String,
}

/// One bin of a calibration table: predictions in `[lo, hi)` and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub lo: f64,
    pub hi: f64,
    pub count: u64,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// How the model did on the held-out split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub rows: u64,
    pub positives: u64,
    /// `None` when the split held one class only.
    pub auc: Option<f64>,
    pub logloss: f64,
    pub calibration: Vec<CalibrationBin>,
}

/// `<kind>.manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub kind: ModelKind,
    pub vertical: String,
    pub version: String,
    /// `features.version` of the configuration it was trained under.
    pub features_version: u32,
    /// Every feature the model sees, in vector order, with its encoding.
    pub features: Vec<FeatureDesc>,
    /// `trained` by `pingpost train`, or `imported` by `pingpost models import`; any
    /// other text is refused (black-box round 167a: free text was printed raw by
    /// `pingpost models`, terminal escapes included).
    pub source: ModelSource,
    /// When it was made (RFC 3339).
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout: Option<Evaluation>,
    /// The XGBoost version that trained it (the evaluator follows its semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xgboost: Option<String>,
    /// Training parameters, for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// The names of a vertical's own files beside its model sets (`CHAMPION`, `HISTORY`): no
/// version may take one (black-box round 214c: `pingpost train --version CHAMPION` made a
/// directory of that name, and every later promotion failed on it).
pub const VERSION_NAMES_RESERVED: [&str; 2] = ["CHAMPION", "HISTORY"];

/// What [`valid_version`] takes, as error messages say it.
pub const VERSION_RULE: &str =
    "1-64 of A-Z a-z 0-9 . _ -, not starting with a dot, not CHAMPION or HISTORY";

/// Whether `v` may name a model version (it becomes a directory name): 1 to
/// [`VERSION_LEN_MAX`] of `A-Z a-z 0-9 . _ -`, not starting with a dot, and none of
/// [`VERSION_NAMES_RESERVED`].
pub fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= VERSION_LEN_MAX
        && !v.starts_with('.')
        && !VERSION_NAMES_RESERVED.contains(&v)
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Manifest {
    /// Parses a manifest, refusing an oversized or malformed one.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(format!(
                "manifest is {} bytes, over the {MANIFEST_BYTES_MAX}-byte limit",
                bytes.len()
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "manifest is not valid: {}",
                super::shorten_quotes(&e.to_string())
            )
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not supported (this build reads format {MANIFEST_FORMAT})",
                m.format
            ));
        }
        if !valid_version(&m.version) {
            return Err(format!("manifest version must be {VERSION_RULE}"));
        }
        Ok(m)
    }

    /// Every way this manifest disagrees with what `vertical`'s configuration expects of
    /// a `kind` model (empty when it matches).
    pub fn mismatches(&self, kind: ModelKind, vertical: &str, spec: &FeatureSpec) -> Vec<String> {
        let mut out = Vec::new();
        if self.kind != kind {
            out.push(format!(
                "is a {} model, expected {}",
                self.kind.as_str(),
                kind.as_str()
            ));
        }
        if self.vertical != vertical {
            out.push(format!(
                "was trained for vertical {:?}, not {vertical:?}",
                super::excerpt(&self.vertical)
            ));
        }
        if self.features_version != spec.version {
            out.push(format!(
                "uses feature encoding version {}, the configuration has version {}",
                self.features_version, spec.version
            ));
        }
        let want = kind.expected_features(spec);
        if self.features != want {
            // Each name cut to 40 characters, at most 64 of them (the file's side may
            // hold anything).
            let names = |f: &[FeatureDesc]| {
                let mut s = f
                    .iter()
                    .take(64)
                    .map(|d| super::excerpt(&d.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                if f.len() > 64 {
                    s.push_str(&format!(", and {} more", f.len() - 64));
                }
                s
            };
            if self.features.len() != want.len()
                || self
                    .features
                    .iter()
                    .zip(&want)
                    .any(|(a, b)| a.name != b.name)
            {
                out.push(format!(
                    "sees features [{}], the configuration declares [{}]",
                    names(&self.features),
                    names(&want)
                ));
            } else {
                let differ: Vec<String> = self
                    .features
                    .iter()
                    .zip(&want)
                    .filter(|(a, b)| a != b)
                    .map(|(a, _)| super::excerpt(&a.name))
                    .collect();
                out.push(format!(
                    "encodes features [{}] differently from the configuration",
                    differ.join(", ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::features::{BuyerFeature, ContextFeature, LeadFeature, LeadKind};

    fn spec() -> FeatureSpec {
        FeatureSpec {
            version: 2,
            lead: vec![LeadFeature {
                field: "credit".into(),
                field_idx: 0,
                kind: LeadKind::Categorical {
                    categories: vec!["good".into(), "poor".into()],
                },
            }],
            context: vec![ContextFeature::HourOfDay],
            buyer: vec![BuyerFeature::Buyer],
        }
    }

    fn manifest(kind: ModelKind, s: &FeatureSpec) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            kind,
            vertical: "auto".into(),
            version: "v1".into(),
            features_version: s.version,
            features: kind.expected_features(s),
            source: ModelSource::Trained,
            created_at: "2026-11-30T00:00:00Z".into(),
            window: None,
            train_rows: None,
            heldout: None,
            xgboost: None,
            params: None,
        }
    }

    #[test]
    fn a_matching_manifest_round_trips_and_matches() {
        let s = spec();
        for kind in ModelKind::ALL {
            let m = manifest(kind, &s);
            let text = serde_json::to_vec(&m).unwrap_or_default();
            let back = Manifest::from_json(&text);
            assert_eq!(back.as_ref().ok(), Some(&m));
            assert!(m.mismatches(kind, "auto", &s).is_empty());
        }
        assert_eq!(ModelKind::LeadScore.expected_features(&s).len(), 2);
        assert_eq!(ModelKind::Realization.expected_features(&s).len(), 3);
    }

    #[test]
    fn every_mismatch_is_named() {
        let s = spec();
        let m = manifest(ModelKind::Realization, &s);
        let mut other = s.clone();
        other.version = 3;
        assert!(m.mismatches(ModelKind::Realization, "auto", &other)[0].contains("version 2"));
        let mut other = s.clone();
        other.lead[0].kind = LeadKind::Categorical {
            categories: vec!["poor".into(), "good".into()],
        };
        let e = m.mismatches(ModelKind::Realization, "auto", &other);
        assert!(
            e[0].contains("encodes features [credit] differently"),
            "{e:?}"
        );
        let mut other = s.clone();
        other.buyer.push(BuyerFeature::BidRatio);
        let e = m.mismatches(ModelKind::Realization, "auto", &other);
        assert!(e[0].contains("bid_ratio"), "{e:?}");
        let e = m.mismatches(ModelKind::LeadScore, "home", &s);
        assert_eq!(e.len(), 3, "{e:?}");
    }

    #[test]
    fn bad_manifests_are_refused() {
        assert!(Manifest::from_json(b"{").is_err());
        assert!(Manifest::from_json(&vec![b' '; MANIFEST_BYTES_MAX + 1]).is_err());
        let mut m = manifest(ModelKind::LeadScore, &spec());
        m.version = "../etc".into();
        let text = serde_json::to_vec(&m).unwrap_or_default();
        assert!(Manifest::from_json(&text).unwrap_err().contains("version"));
        let mut v =
            serde_json::to_value(manifest(ModelKind::LeadScore, &spec())).unwrap_or_default();
        v["extra"] = serde_json::json!(1);
        assert!(Manifest::from_json(v.to_string().as_bytes()).is_err());
        // The source is one of two words, not free text a listing would print
        // (black-box round 167a: terminal escapes reached `pingpost models`).
        for (source, ok) in [
            ("trained", true),
            ("imported", true),
            ("\u{1b}[2Jtrained", false),
            ("Trained", false),
            ("", false),
        ] {
            let mut v =
                serde_json::to_value(manifest(ModelKind::LeadScore, &spec())).unwrap_or_default();
            v["source"] = serde_json::json!(source);
            let got = Manifest::from_json(v.to_string().as_bytes());
            assert_eq!(got.is_ok(), ok, "{source:?}: {got:?}");
            if !ok {
                let e = got.unwrap_err();
                assert!(e.contains("unknown variant"), "{e}");
                assert!(!e.contains('\u{1b}'), "{e:?}");
            }
        }
        for ok in ["v1", "20261130T0100Z-ab.3", "a_b"] {
            assert!(valid_version(ok), "{ok}");
        }
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_version(bad), "{bad}");
        }
    }
}
