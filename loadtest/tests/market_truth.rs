//! The market's truth: the XGBoost JSON it writes has the 1.6.2 shape, reads back to the
//! same trees, isolates each buyer, and XGBoost itself predicts what the buyers' own
//! walker draws from (within 1e-6, on rows with missing values).

use loadtest::market::truth::{id_hash, sigmoid, Ensemble, Term};
use loadtest::market::world::{default_buyers, lead, World, BUYER_FEATURE, NUM_FEATURES};
use xgboost_rs::{Booster, DMatrix};

fn world() -> World {
    World::new(7, default_buyers(), Some(100), 1)
}

#[test]
fn fnv_hash_matches_the_design() {
    // FNV-1a 32 of "" is the offset basis; of "a" is 0xe40c292c.
    assert_eq!(id_hash(""), (2_166_136_261_u32 >> 8) as f32);
    assert_eq!(id_hash("a"), (0xe40c_292c_u32 >> 8) as f32);
    let h = id_hash("sim0_apex");
    assert!(h < 16_777_216.0 && h.fract() == 0.0);
    assert_eq!(h + 1.0 - h, 1.0, "h + 1 is exact in f32");
}

#[test]
fn json_has_the_xgboost_1_6_2_shape() {
    let w = world();
    let v = w.truth.to_xgboost_json();
    let learner = &v["learner"];
    assert_eq!(v["version"], serde_json::json!([1, 6, 2]));
    assert_eq!(learner["objective"]["name"], "binary:logistic");
    assert_eq!(learner["learner_model_param"]["base_score"], "5E-1");
    assert_eq!(
        learner["learner_model_param"]["num_feature"],
        NUM_FEATURES.to_string()
    );
    assert_eq!(learner["gradient_booster"]["name"], "gbtree");
    let model = &learner["gradient_booster"]["model"];
    let trees = model["trees"].as_array().unwrap();
    assert_eq!(
        model["gbtree_model_param"]["num_trees"],
        trees.len().to_string()
    );
    assert_eq!(model["tree_info"].as_array().unwrap().len(), trees.len());
    // One base tree per buyer plus one per split.
    let terms: usize = w.buyers.iter().map(|b| 1 + b.truth_splits.len()).sum();
    assert_eq!(trees.len(), terms);
    for (i, t) in trees.iter().enumerate() {
        assert_eq!(t["id"], i);
        let n: usize = t["tree_param"]["num_nodes"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        for k in [
            "split_indices",
            "split_conditions",
            "default_left",
            "left_children",
            "right_children",
            "base_weights",
            "parents",
            "sum_hessian",
            "loss_changes",
            "split_type",
        ] {
            assert_eq!(t[k].as_array().unwrap().len(), n, "tree {i} {k}");
        }
        // The root splits on the buyer feature; no tree reads a context or buyer-statistic
        // feature.
        assert_eq!(t["split_indices"][0], BUYER_FEATURE);
        for (node, f) in t["split_indices"].as_array().unwrap().iter().enumerate() {
            let f = f.as_u64().unwrap() as u32;
            let leaf = t["left_children"][node] == -1;
            assert!(
                leaf || f < 4 || f == BUYER_FEATURE,
                "tree {i} node {node} feature {f}"
            );
        }
        assert_eq!(t["parents"][0], 2_147_483_647_i64);
    }
    let back = Ensemble::from_xgboost_json(&v).unwrap();
    assert_eq!(back, w.truth);
}

#[test]
fn each_term_reaches_only_its_buyer() {
    let terms = [
        Term::Base {
            buyer: "b1".into(),
            margin: 1.5,
        },
        Term::Split {
            buyer: "b2".into(),
            feature: 0,
            threshold: 25.0,
            below: -2.0,
            at_or_above: 0.5,
            missing_below: false,
        },
    ];
    let e = Ensemble::from_terms(&terms, NUM_FEATURES, BUYER_FEATURE);
    let row = |age: f32, buyer: &str| {
        let mut r = [f32::NAN; NUM_FEATURES];
        r[0] = age;
        r[BUYER_FEATURE as usize] = id_hash(buyer);
        r
    };
    assert_eq!(e.predict_margin(&row(30.0, "b1")), 1.5);
    assert_eq!(e.predict_margin(&row(20.0, "b2")), -2.0);
    assert_eq!(e.predict_margin(&row(30.0, "b2")), 0.5);
    assert_eq!(
        e.predict_margin(&row(f32::NAN, "b2")),
        0.5,
        "missing goes right"
    );
    assert_eq!(e.predict_margin(&row(30.0, "other")), 0.0);
    let mut no_buyer = row(30.0, "b1");
    no_buyer[BUYER_FEATURE as usize] = f32::NAN;
    assert_eq!(e.predict_margin(&no_buyer), 0.0);
    // A row shorter than the features: the rest is missing, no panic.
    assert_eq!(e.predict_margin(&[30.0]), 0.0);
    assert!((e.predict(&row(30.0, "b1")) - sigmoid(1.5)).abs() < 1e-7);
}

#[test]
fn drift_changes_only_the_drift_buyer() {
    let w = world();
    for i in 0..200 {
        let f = lead(w.seed, i).features;
        for k in 0..w.buyers.len() {
            let a = w.truth.predict(&w.row(&f, k));
            let b = w.truth_drifted.predict(&w.row(&f, k));
            if k == w.drift_buyer {
                assert!(b < a, "lead {i}: drift lowers {k}: {a} -> {b}");
            } else {
                assert_eq!(a, b);
            }
        }
    }
}

#[test]
fn xgboost_itself_predicts_what_the_buyers_draw_from() {
    let w = world();
    for truth in [&w.truth, &w.truth_drifted] {
        let json = serde_json::to_vec(&truth.to_xgboost_json()).unwrap();
        let booster = Booster::load_buffer(&json).expect("XGBoost loads the truth");
        // 1,200 rows: every buyer on 200 leads, some features knocked out (missing), and
        // one unknown buyer.
        let mut x = Vec::new();
        let mut rows = 0usize;
        for i in 0..200u64 {
            let mut f = lead(w.seed, i).features;
            if i % 7 == 0 {
                f[(i as usize / 7) % 4] = f32::NAN;
            }
            for k in 0..=w.buyers.len() {
                let mut r = w.row(&f, k);
                if k == w.buyers.len() {
                    r[BUYER_FEATURE as usize] = id_hash("not-a-buyer");
                }
                x.extend_from_slice(&r);
                rows += 1;
            }
        }
        let d =
            DMatrix::from_col_major_f32(&x, 4 * NUM_FEATURES, 4, rows, NUM_FEATURES, 1, f32::NAN)
                .unwrap();
        let theirs = booster.predict(&d).unwrap();
        assert_eq!(theirs.len(), rows);
        let mut worst = 0.0_f32;
        for (r, p) in x.chunks(NUM_FEATURES).zip(&theirs) {
            worst = worst.max((truth.predict(r) - p).abs());
        }
        assert!(worst <= 1e-6, "max |ours - xgboost| = {worst}");
    }
}
