//! The XGBoost-facing training primitive: a dense dataset in, an XGBoost 1.6.2 JSON model
//! out. It knows nothing of the ledger; the caller builds the [`Dataset`].
//!
//! Traps of xgboost-rs 0.3 this module avoids (see docs/AI.md, "Training primitive"):
//! - `Booster::train` always runs 16 rounds: we create the booster with
//!   `Booster::new_with_json_config` and call `update` exactly `rounds` times.
//! - `DMatrix::from_dense` treats every exact 0.0 as missing: we build the matrix with
//!   `DMatrix::from_col_major_f32` and byte strides (row-major data), missing = NaN.
//! - `new_with_json_config` ignores errors from setting a parameter, so every parameter
//!   is validated here first.
//! - A `Booster` is never cloned (its `Clone` copies a raw handle: a double free).
//! - `nthread = 1`: OpenMP with several threads on a loaded machine is up to 50x slower.

use std::collections::HashMap;

use xgboost_rs::{Booster, DMatrix};

use crate::core::model::xgb::{DEPTH_MAX, FEATURES_MAX, TREES_MAX};

/// Most rows one training run accepts.
pub const TRAIN_ROWS_MAX: usize = 10_000_000;
/// Most cells (rows x columns) one training run accepts (4 GB of f32).
pub const TRAIN_CELLS_MAX: usize = 1 << 30;

/// Training parameters (XGBoost names in brackets).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    /// Boosting rounds = trees in the model (1..=TREES_MAX).
    pub rounds: u32,
    /// `max_depth` (1..=DEPTH_MAX).
    pub max_depth: u32,
    /// Learning rate `eta`, in (0, 1].
    pub eta: f64,
    /// `min_child_weight`, >= 0.
    pub min_child_weight: f64,
    /// Row `subsample` per round, in (0, 1].
    pub subsample: f64,
    /// `seed` (XGBoost takes an int64: the top bit is dropped).
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            rounds: 100,
            max_depth: 6,
            eta: 0.1,
            min_child_weight: 1.0,
            subsample: 1.0,
            seed: 0,
        }
    }
}

/// A dense training set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dataset {
    /// Columns (features) per row.
    pub ncols: usize,
    /// Row-major cells, `y.len() * ncols` of them; NaN = missing (0.0 is a value).
    pub x: Vec<f32>,
    /// Labels, 0.0 or 1.0.
    pub y: Vec<f32>,
}

impl Dataset {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.y.len()
    }
}

/// Why training (or an XGBoost prediction) was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    #[error("the dataset is empty")]
    Empty,
    #[error("the dataset has {ncols} columns; it must have 1..={max}")]
    BadColumns { ncols: usize, max: usize },
    #[error("the dataset has {rows} rows, more than the {max} allowed")]
    TooManyRows { rows: usize, max: usize },
    #[error("x has {len} cells, but {rows} rows x {ncols} columns need {expected}")]
    ShapeMismatch {
        len: usize,
        rows: usize,
        ncols: usize,
        expected: usize,
    },
    #[error("label of row {row} is not 0 or 1")]
    BadLabel { row: usize },
    #[error("x holds an infinite value at row {row}, column {col} (NaN is allowed as missing, infinity is not)")]
    InfiniteValue { row: usize, col: usize },
    #[error("every label is {label}: training needs both classes ({positives} positives, {negatives} negatives)")]
    OneClass {
        label: u8,
        positives: usize,
        negatives: usize,
    },
    #[error("training parameter {name} = {value} is not valid: {why}")]
    BadParam {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("XGBoost failed: {0}")]
    Xgboost(String),
}

fn xgb_err(e: xgboost_rs::XGBError) -> TrainError {
    TrainError::Xgboost(e.to_string())
}

/// Trains a `binary:logistic` gbtree model for exactly `params.rounds` rounds and returns
/// XGBoost's JSON model bytes (loadable by [`crate::core::model::xgb::XgbModel::from_json`]).
pub fn train_binary(train: &Dataset, params: &TrainParams) -> Result<Vec<u8>, TrainError> {
    train_binary_with(train, params, &[])
}

/// [`train_binary`] with one weight per row (XGBoost's instance weights: a row of weight
/// 0.5 counts as half a row in every gradient and in `min_child_weight`). Empty `weights`:
/// every row weighs 1. Weights must be finite and non-negative, one per row.
pub fn train_binary_weighted(
    train: &Dataset,
    weights: &[f32],
    params: &TrainParams,
) -> Result<Vec<u8>, TrainError> {
    if !weights.is_empty()
        && (weights.len() != train.rows() || weights.iter().any(|w| !w.is_finite() || *w < 0.0))
    {
        return Err(TrainError::BadParam {
            name: "weights",
            value: weights.len().to_string(),
            why: "one finite, non-negative weight per row",
        });
    }
    train_inner(train, weights, params, &[])
}

/// [`train_binary`] with extra XGBoost parameters set after ours (they override them),
/// e.g. `("base_score", "0.3")` or `("objective", "binary:logitraw")`. XGBoost silently
/// ignores a parameter it cannot set, so these are for tests and experiments; production
/// code calls [`train_binary`].
pub fn train_binary_with(
    train: &Dataset,
    params: &TrainParams,
    extra: &[(&str, &str)],
) -> Result<Vec<u8>, TrainError> {
    train_inner(train, &[], params, extra)
}

fn train_inner(
    train: &Dataset,
    weights: &[f32],
    params: &TrainParams,
    extra: &[(&str, &str)],
) -> Result<Vec<u8>, TrainError> {
    check_params(params)?;
    check_dataset(train)?;
    let mut dtrain = dense_matrix(&train.x, train.rows(), train.ncols)?;
    dtrain.set_labels(&train.y).map_err(xgb_err)?;
    if !weights.is_empty() {
        dtrain.set_weights(weights).map_err(xgb_err)?;
    }

    let mut config: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, v: String| {
        config.insert(k.to_string(), v);
    };
    set("booster", "gbtree".into());
    set("objective", "binary:logistic".into());
    set("tree_method", "hist".into());
    set("max_depth", params.max_depth.to_string());
    set("eta", params.eta.to_string());
    set("min_child_weight", params.min_child_weight.to_string());
    set("subsample", params.subsample.to_string());
    set("seed", (params.seed & i64::MAX as u64).to_string());
    set("nthread", "1".into());
    set("verbosity", "0".into());
    for (k, v) in extra {
        set(k, (*v).to_string());
    }

    // One booster, owned here and dropped here: never cloned.
    let mut booster = Booster::new_with_json_config(&[&dtrain], config).map_err(xgb_err)?;
    for round in 0..params.rounds {
        let round = i32::try_from(round).map_err(|_| TrainError::BadParam {
            name: "rounds",
            value: params.rounds.to_string(),
            why: "too many rounds",
        })?;
        booster.update(&dtrain, round).map_err(xgb_err)?;
    }
    let json = booster
        .save_to_buffer("json".to_string())
        .map_err(xgb_err)?;
    Ok(json.into_bytes())
}

/// XGBoost's own predictions (probabilities for binary:logistic) for row-major `x`:
/// the reference the pure-Rust evaluator is tested against.
pub fn predict_with_xgboost(
    model_json: &[u8],
    x: &[f32],
    ncols: usize,
) -> Result<Vec<f32>, TrainError> {
    let (booster, dmat) = load_for_predict(model_json, x, ncols)?;
    booster.predict(&dmat).map_err(xgb_err)
}

/// XGBoost's own raw margins for row-major `x`.
pub fn predict_margin_with_xgboost(
    model_json: &[u8],
    x: &[f32],
    ncols: usize,
) -> Result<Vec<f32>, TrainError> {
    let (booster, dmat) = load_for_predict(model_json, x, ncols)?;
    booster.predict_margin(&dmat).map_err(xgb_err)
}

fn load_for_predict(
    model_json: &[u8],
    x: &[f32],
    ncols: usize,
) -> Result<(Booster, DMatrix), TrainError> {
    if ncols == 0 || ncols > FEATURES_MAX {
        return Err(TrainError::BadColumns {
            ncols,
            max: FEATURES_MAX,
        });
    }
    if x.is_empty() {
        return Err(TrainError::Empty);
    }
    if !x.len().is_multiple_of(ncols) {
        return Err(TrainError::ShapeMismatch {
            len: x.len(),
            rows: x.len() / ncols,
            ncols,
            expected: (x.len() / ncols + 1) * ncols,
        });
    }
    let rows = x.len() / ncols;
    check_finite_or_nan(x, ncols)?;
    let dmat = dense_matrix(x, rows, ncols)?;
    let booster = Booster::load_buffer(model_json).map_err(xgb_err)?;
    Ok((booster, dmat))
}

/// Row-major dense f32 with NaN as missing (exact zeros stay values).
fn dense_matrix(x: &[f32], rows: usize, ncols: usize) -> Result<DMatrix, TrainError> {
    let cell = std::mem::size_of::<f32>();
    DMatrix::from_col_major_f32(x, cell * ncols, cell, rows, ncols, 1, f32::NAN).map_err(xgb_err)
}

fn check_params(p: &TrainParams) -> Result<(), TrainError> {
    let bad = |name: &'static str, value: String, why: &'static str| {
        Err(TrainError::BadParam { name, value, why })
    };
    if p.rounds == 0 || p.rounds as usize > TREES_MAX {
        return bad("rounds", p.rounds.to_string(), "must be in 1..=10000");
    }
    if p.max_depth == 0 || p.max_depth as usize > DEPTH_MAX {
        return bad("max_depth", p.max_depth.to_string(), "must be in 1..=64");
    }
    if !(p.eta.is_finite() && p.eta > 0.0 && p.eta <= 1.0) {
        return bad("eta", p.eta.to_string(), "must be in (0, 1]");
    }
    if !(p.min_child_weight.is_finite() && p.min_child_weight >= 0.0) {
        return bad(
            "min_child_weight",
            p.min_child_weight.to_string(),
            "must be finite and >= 0",
        );
    }
    if !(p.subsample.is_finite() && p.subsample > 0.0 && p.subsample <= 1.0) {
        return bad("subsample", p.subsample.to_string(), "must be in (0, 1]");
    }
    Ok(())
}

fn check_dataset(d: &Dataset) -> Result<(), TrainError> {
    if d.ncols == 0 || d.ncols > FEATURES_MAX {
        return Err(TrainError::BadColumns {
            ncols: d.ncols,
            max: FEATURES_MAX,
        });
    }
    let rows = d.rows();
    if rows == 0 {
        return Err(TrainError::Empty);
    }
    if rows > TRAIN_ROWS_MAX {
        return Err(TrainError::TooManyRows {
            rows,
            max: TRAIN_ROWS_MAX,
        });
    }
    let expected = rows.saturating_mul(d.ncols);
    if d.x.len() != expected || expected > TRAIN_CELLS_MAX {
        return Err(TrainError::ShapeMismatch {
            len: d.x.len(),
            rows,
            ncols: d.ncols,
            expected,
        });
    }
    let (mut positives, mut negatives) = (0usize, 0usize);
    for (row, &label) in d.y.iter().enumerate() {
        if label == 1.0 {
            positives += 1;
        } else if label == 0.0 {
            negatives += 1;
        } else {
            return Err(TrainError::BadLabel { row });
        }
    }
    if positives == 0 || negatives == 0 {
        return Err(TrainError::OneClass {
            label: u8::from(positives > 0),
            positives,
            negatives,
        });
    }
    check_finite_or_nan(&d.x, d.ncols)
}

fn check_finite_or_nan(x: &[f32], ncols: usize) -> Result<(), TrainError> {
    match x.iter().position(|v| v.is_infinite()) {
        Some(i) => Err(TrainError::InfiniteValue {
            row: i / ncols,
            col: i % ncols,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Dataset {
        // 40 rows, 2 columns; the label is x0 > 0.5, with a zero and NaNs.
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..40 {
            let a = (i as f32) / 40.0;
            x.push(a);
            x.push(if i % 5 == 0 { f32::NAN } else { 0.0 });
            y.push(if a > 0.5 { 1.0 } else { 0.0 });
        }
        Dataset { ncols: 2, x, y }
    }

    fn quick() -> TrainParams {
        TrainParams {
            rounds: 3,
            max_depth: 2,
            ..TrainParams::default()
        }
    }

    #[test]
    fn refuses_bad_datasets() {
        let p = quick();
        let empty = Dataset {
            ncols: 2,
            ..Dataset::default()
        };
        assert_eq!(train_binary(&empty, &p), Err(TrainError::Empty));
        let mut d = small();
        d.ncols = 0;
        assert!(matches!(
            train_binary(&d, &p),
            Err(TrainError::BadColumns { .. })
        ));
        let mut d = small();
        d.x.pop();
        assert!(matches!(
            train_binary(&d, &p),
            Err(TrainError::ShapeMismatch { .. })
        ));
        let mut d = small();
        d.y[7] = f32::NAN;
        assert_eq!(train_binary(&d, &p), Err(TrainError::BadLabel { row: 7 }));
        let mut d = small();
        d.y[3] = f32::INFINITY;
        assert_eq!(train_binary(&d, &p), Err(TrainError::BadLabel { row: 3 }));
        let mut d = small();
        d.y[3] = 0.5;
        assert_eq!(train_binary(&d, &p), Err(TrainError::BadLabel { row: 3 }));
        let mut d = small();
        d.y.iter_mut().for_each(|v| *v = 1.0);
        let e = train_binary(&d, &p).unwrap_err();
        assert_eq!(
            e,
            TrainError::OneClass {
                label: 1,
                positives: 40,
                negatives: 0
            }
        );
        assert!(e.to_string().contains("40 positives, 0 negatives"));
        let mut d = small();
        d.x[5] = f32::NEG_INFINITY;
        assert_eq!(
            train_binary(&d, &p),
            Err(TrainError::InfiniteValue { row: 2, col: 1 })
        );
    }

    #[test]
    fn weights_count_rows_and_bad_weights_are_refused() {
        // The same point labelled 0 (the older half) and 1 (the newer half).
        let mut d = Dataset {
            ncols: 1,
            ..Dataset::default()
        };
        for i in 0..40 {
            d.x.push(1.0);
            d.y.push(if i < 20 { 0.0 } else { 1.0 });
        }
        let p = TrainParams {
            rounds: 20,
            max_depth: 1,
            eta: 0.3,
            ..TrainParams::default()
        };
        let predict = |json: &[u8]| predict_with_xgboost(json, &[1.0], 1).unwrap()[0];
        let even = predict(&train_binary_weighted(&d, &[], &p).unwrap());
        assert!((even - 0.5).abs() < 0.01, "{even}");
        let w: Vec<f32> = (0..40).map(|i| if i < 20 { 0.25 } else { 1.0 }).collect();
        let recent = predict(&train_binary_weighted(&d, &w, &p).unwrap());
        assert!(recent > 0.7, "the newer rows weigh more: {recent}");
        for bad in [
            vec![1.0; 39],
            {
                let mut v = vec![1.0; 40];
                v[3] = -1.0;
                v
            },
            {
                let mut v = vec![1.0; 40];
                v[3] = f32::NAN;
                v
            },
        ] {
            assert!(matches!(
                train_binary_weighted(&d, &bad, &p),
                Err(TrainError::BadParam {
                    name: "weights",
                    ..
                })
            ));
        }
    }

    #[test]
    fn refuses_bad_params() {
        let d = small();
        for p in [
            TrainParams {
                rounds: 0,
                ..quick()
            },
            TrainParams {
                rounds: 10_001,
                ..quick()
            },
            TrainParams {
                max_depth: 0,
                ..quick()
            },
            TrainParams {
                max_depth: 65,
                ..quick()
            },
            TrainParams {
                eta: 0.0,
                ..quick()
            },
            TrainParams {
                eta: f64::NAN,
                ..quick()
            },
            TrainParams {
                min_child_weight: -1.0,
                ..quick()
            },
            TrainParams {
                subsample: 1.5,
                ..quick()
            },
        ] {
            assert!(
                matches!(train_binary(&d, &p), Err(TrainError::BadParam { .. })),
                "{p:?}"
            );
        }
    }

    #[test]
    fn trains_exactly_the_rounds_asked() {
        let d = small();
        let json = train_binary(&d, &quick()).unwrap();
        let m = crate::core::model::xgb::XgbModel::from_json(&json).unwrap();
        assert_eq!(m.num_trees(), 3);
        assert_eq!(m.num_features(), 2);
        // deterministic: same data, same params, same bytes
        assert_eq!(json, train_binary(&d, &quick()).unwrap());
        let p = predict_with_xgboost(&json, &d.x, 2).unwrap();
        assert_eq!(p.len(), 40);
        assert!(p[39] > p[0]);
        assert!(matches!(
            predict_with_xgboost(&json, &d.x[..3], 2),
            Err(TrainError::ShapeMismatch { .. })
        ));
    }
}
