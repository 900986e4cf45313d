//! The synthetic XGBoost models `loadtest run p6-swap` swaps between: the exchange's
//! evaluator loads them with the expected shape, XGBoost 1.6.2 itself loads them and
//! predicts exactly what the evaluator does, and the two versions differ.

#![allow(clippy::unwrap_used)]

use loadtest::swap::{
    model_pair, xgboost_json, ModelSpec, FEATURE_RANGES, LEAD_SCORE_FEATURES, REALIZATION_FEATURES,
};
use pingpost_core::model::xgb::{Objective, XgbModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Rows within the features' ranges, about 10 % of the cells missing (NaN).
fn rows(n: usize, ncols: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(n * ncols);
    for _ in 0..n {
        for (lo, hi) in FEATURE_RANGES.iter().take(ncols) {
            x.push(if rng.gen_bool(0.1) {
                f32::NAN
            } else {
                rng.gen_range(*lo..=*hi)
            });
        }
    }
    x
}

#[test]
fn generated_models_load_with_the_expected_shape() {
    for (nf, seed) in [(REALIZATION_FEATURES, 1), (LEAD_SCORE_FEATURES, 2), (3, 3)] {
        let json = xgboost_json(&ModelSpec::standard(nf, seed)).unwrap();
        let m = XgbModel::from_json(json.as_bytes()).unwrap();
        assert_eq!(m.num_features(), nf);
        assert_eq!(m.num_trees(), 100);
        assert_eq!(m.objective(), Objective::Logistic);
        // The same spec gives the same bytes.
        assert_eq!(json, xgboost_json(&ModelSpec::standard(nf, seed)).unwrap());
    }
    let deep = ModelSpec {
        trees: 7,
        depth: 10,
        ..ModelSpec::standard(16, 9)
    };
    let m = XgbModel::from_json(xgboost_json(&deep).unwrap().as_bytes()).unwrap();
    assert_eq!((m.num_features(), m.num_trees()), (16, 7));
}

#[test]
fn versions_differ_and_predict_a_spread_of_probabilities() {
    let (ra, la) = model_pair(1).unwrap();
    let (rb, lb) = model_pair(2).unwrap();
    assert_ne!(ra, rb);
    assert_ne!(la, lb);
    let a = XgbModel::from_json(ra.as_bytes()).unwrap();
    let b = XgbModel::from_json(rb.as_bytes()).unwrap();
    assert_eq!(
        XgbModel::from_json(la.as_bytes()).unwrap().num_features(),
        LEAD_SCORE_FEATURES
    );
    let x = rows(500, REALIZATION_FEATURES, 5);
    let (mut pa, mut pb) = (vec![0f32; 500], vec![0f32; 500]);
    a.predict_many(&x, &mut pa);
    b.predict_many(&x, &mut pb);
    let differ = pa.iter().zip(&pb).filter(|(p, q)| p != q).count();
    assert!(differ > 450, "only {differ} of 500 predictions differ");
    let (lo, hi) = pa
        .iter()
        .fold((1f32, 0f32), |(lo, hi), p| (lo.min(*p), hi.max(*p)));
    assert!(lo > 0.0 && hi < 1.0 && hi - lo > 0.2, "range {lo}..{hi}");
}

#[test]
fn xgboost_itself_loads_them_and_agrees() {
    let json = xgboost_json(&ModelSpec::standard(REALIZATION_FEATURES, 11)).unwrap();
    let x = rows(300, REALIZATION_FEATURES, 12);
    let theirs =
        pingpost::ai::train::predict_with_xgboost(json.as_bytes(), &x, REALIZATION_FEATURES)
            .unwrap();
    let ours = XgbModel::from_json(json.as_bytes()).unwrap();
    let mut mine = vec![0f32; 300];
    ours.predict_many(&x, &mut mine);
    assert_eq!(theirs.len(), 300);
    for (i, (t, m)) in theirs.iter().zip(&mine).enumerate() {
        assert!((t - m).abs() <= 1e-6, "row {i}: xgboost {t}, evaluator {m}");
    }
}
