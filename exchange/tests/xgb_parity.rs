//! Parity: the pure-Rust evaluator (`pingpost_core::model::xgb::XgbModel`) against
//! XGBoost 1.6.2's own predictions (through xgboost-rs), on a seeded synthetic dataset
//! with missing values (NaN), exact zeros (values, not missing) and discrete features
//! (data values equal to split conditions), for binary:logistic with the default and a
//! non-default base_score, and for binary:logitraw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pingpost::ai::train::{
    predict_margin_with_xgboost, predict_with_xgboost, train_binary, train_binary_with, Dataset,
    TrainParams,
};
use pingpost::core::model::xgb::{Objective, XgbModel};

const NCOLS: usize = 10;
const TOLERANCE: f32 = 1e-6;

/// splitmix64: a tiny seeded generator, so the data never depends on a crate's version.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `rows` rows of 10 features: continuous, exact-zero-heavy and discrete columns, about
/// 15% NaN overall, and a label that depends non-linearly on them (and on missingness).
fn synthetic(rows: usize, seed: u64) -> Dataset {
    let mut rng = Rng(seed);
    let mut x = Vec::with_capacity(rows * NCOLS);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut row = [0f32; NCOLS];
        row[0] = rng.normal() as f32;
        row[1] = (rng.unit() * 4.0 - 2.0) as f32;
        row[2] = rng.normal() as f32 * 3.0;
        // exact zero 40% of the time
        row[3] = if rng.unit() < 0.4 {
            0.0
        } else {
            rng.unit() as f32
        };
        row[4] = (rng.unit() * 100.0) as f32;
        // discrete 0..=3: split conditions land on data values
        row[5] = (rng.next_u64() % 4) as f32;
        row[6] = rng.normal() as f32;
        // a binary flag, 0 or 1
        row[7] = (rng.next_u64() % 2) as f32;
        row[8] = (rng.unit() * 10.0 - 5.0) as f32;
        row[9] = rng.normal() as f32 * 0.01;
        for v in row.iter_mut() {
            if rng.unit() < 0.15 {
                *v = f32::NAN;
            }
        }
        let g = |v: f32, missing: f64| if v.is_nan() { missing } else { f64::from(v) };
        let mut logit = (3.0 * g(row[0], 0.3)).sin() * 1.5
            + g(row[1], 0.0) * g(row[2], 1.0) * 0.4
            + if row[3] == 0.0 { 1.2 } else { -0.6 }
            + if g(row[5], 0.0) >= 2.0 { 0.8 } else { -0.4 }
            + (g(row[4], 50.0) - 50.0) / 40.0
            + if row[7] == 1.0 { 0.5 } else { 0.0 }
            + if row[8].is_nan() { 1.0 } else { 0.0 }
            - 0.6;
        logit += g(row[6], 0.0).powi(2) * 0.3 - 0.3;
        let p = 1.0 / (1.0 + (-logit).exp());
        y.push(if rng.unit() < p { 1.0 } else { 0.0 });
        x.extend_from_slice(&row);
    }
    Dataset { ncols: NCOLS, x, y }
}

fn params() -> TrainParams {
    TrainParams {
        rounds: 100,
        max_depth: 6,
        eta: 0.3,
        min_child_weight: 1.0,
        subsample: 0.8,
        seed: 7,
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

fn ours(model: &XgbModel, x: &[f32], margin: bool) -> Vec<f32> {
    x.chunks(NCOLS)
        .map(|row| {
            if margin {
                model.predict_margin(row)
            } else {
                model.predict(row)
            }
        })
        .collect()
}

/// Compares predictions and margins of `json` on `test`, row by row and with
/// predict_many; returns the model.
fn assert_parity(json: &[u8], test: &Dataset, what: &str) -> XgbModel {
    let model = XgbModel::from_json(json).unwrap();
    assert_eq!(model.num_features(), NCOLS);

    let theirs = predict_with_xgboost(json, &test.x, NCOLS).unwrap();
    let mine = ours(&model, &test.x, false);
    let d = max_abs_diff(&mine, &theirs);
    println!(
        "{what}: predict max |diff| = {d:e} over {} rows",
        mine.len()
    );
    assert!(d <= TOLERANCE, "{what}: predict max |diff| {d}");

    let theirs_m = predict_margin_with_xgboost(json, &test.x, NCOLS).unwrap();
    let mine_m = ours(&model, &test.x, true);
    let dm = max_abs_diff(&mine_m, &theirs_m);
    println!("{what}: margin max |diff| = {dm:e}");
    assert!(dm <= TOLERANCE, "{what}: margin max |diff| {dm}");

    let mut many = vec![0f32; test.rows()];
    model.predict_many(&test.x, &mut many);
    assert_eq!(many, mine, "{what}: predict_many differs from predict");
    model
}

#[test]
fn logistic_parity_100_trees_depth_6() {
    let train = synthetic(3000, 1);
    let test = synthetic(1500, 2);
    let nan = test.x.iter().filter(|v| v.is_nan()).count() as f64 / test.x.len() as f64;
    assert!((0.12..0.18).contains(&nan), "NaN share {nan}");
    assert!(test.x.iter().filter(|v| **v == 0.0).count() > 1000);

    let json = train_binary(&train, &params()).unwrap();
    let model = assert_parity(&json, &test, "binary:logistic");
    assert_eq!(model.objective(), Objective::Logistic);
    assert_eq!(model.num_trees(), 100);
    assert_eq!(model.base_score(), 0.5);

    // The model learned something (so the comparison is not between constants).
    let p = ours(&model, &test.x, false);
    let auc = pingpost::ai::metrics::auc(&p, &test.y).unwrap();
    assert!(auc > 0.7, "held-out AUC {auc}");

    // Exact zeros are values, not missing: turning them into NaN changes predictions
    // (in XGBoost's own output too, so training saw them as values).
    let nanned: Vec<f32> = test
        .x
        .iter()
        .map(|&v| if v == 0.0 { f32::NAN } else { v })
        .collect();
    let theirs_nanned = predict_with_xgboost(&json, &nanned, NCOLS).unwrap();
    let theirs = predict_with_xgboost(&json, &test.x, NCOLS).unwrap();
    assert!(max_abs_diff(&theirs, &theirs_nanned) > 0.01);
    let mine_nanned = ours(&model, &nanned, false);
    assert!(max_abs_diff(&mine_nanned, &theirs_nanned) <= TOLERANCE);

    // Every missing path is exercised: rows that are all NaN, and short rows.
    let all_missing = vec![f32::NAN; NCOLS * 3];
    let theirs = predict_with_xgboost(&json, &all_missing, NCOLS).unwrap();
    for (r, t) in theirs.iter().enumerate() {
        assert!((model.predict(&all_missing[r * NCOLS..(r + 1) * NCOLS]) - t).abs() <= TOLERANCE);
        assert!((model.predict(&[]) - t).abs() <= TOLERANCE);
    }
}

#[test]
fn logistic_parity_non_default_base_score() {
    let train = synthetic(2500, 3);
    let test = synthetic(1200, 4);
    let p = TrainParams {
        rounds: 40,
        max_depth: 4,
        ..params()
    };
    let json = train_binary_with(&train, &p, &[("base_score", "0.2")]).unwrap();
    let model = assert_parity(&json, &test, "binary:logistic base_score=0.2");
    assert_eq!(model.base_score(), 0.2);
    assert_eq!(model.base_margin(), -((1.0f32 / 0.2f32 - 1.0f32).ln()));
}

#[test]
fn logitraw_parity_base_score_is_not_transformed() {
    let train = synthetic(2500, 5);
    let test = synthetic(1200, 6);
    let p = TrainParams {
        rounds: 60,
        max_depth: 6,
        ..params()
    };
    let json = train_binary_with(
        &train,
        &p,
        &[("objective", "binary:logitraw"), ("base_score", "0.3")],
    )
    .unwrap();
    let model = assert_parity(&json, &test, "binary:logitraw base_score=0.3");
    assert_eq!(model.objective(), Objective::RawMargin);
    assert_eq!(model.base_margin(), 0.3);
}
