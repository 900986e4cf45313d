//! P5: scoring one (lead, buyer) pair with the pure-Rust XGBoost evaluator (target <= 2 µs
//! p99 for 100 trees of depth 6, <= 20 µs for 1000 trees), and `predict_many` for the 50
//! buyers of one auction in one pass. Criterion gives the mean; a plain loop after it gives
//! p50/p99/p99.9 of single `predict` calls from an HDR histogram
//! (run: `cargo bench -p pingpost --bench model`; `-- --test` runs each benchmark once as a
//! smoke test and skips the timing loop).
//!
//! Two kinds of model, each with 100 and 1000 trees of max depth 6, 10 features:
//! - "trained": trained with `pingpost::ai::train::train_binary` (eta 0.1,
//!   min_child_weight 0) on 4,000 rows of seeded synthetic data (about 15% NaN, exact
//!   zeros, discrete columns, a non-linear label): realistic trees, some shallower than 6;
//! - "full": generated JSON of complete depth-6 trees (127 nodes, every leaf at depth 6,
//!   random features, thresholds and default directions): the worst case for the walk.
//!
//! Rows are drawn in turn from 256 held-out rows (with their NaNs), so the branch
//! predictor cannot learn one path.

// A benchmark: it times single calls on the real clock, and a broken setup should stop it.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use pingpost::ai::train::{train_binary, Dataset, TrainParams};
use pingpost::core::model::xgb::XgbModel;

const NCOLS: usize = 10;
const ROWS: usize = 256;

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn synthetic(rows: usize, seed: u64) -> Dataset {
    let mut rng = Rng(seed);
    let mut x = Vec::with_capacity(rows * NCOLS);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mut row = [0f32; NCOLS];
        for (j, v) in row.iter_mut().enumerate() {
            *v = match j % 3 {
                0 => (rng.unit() * 2.0 - 1.0) as f32,
                1 => (rng.next_u64() % 5) as f32,
                _ => {
                    if rng.unit() < 0.4 {
                        0.0
                    } else {
                        rng.unit() as f32
                    }
                }
            };
            if rng.unit() < 0.15 {
                *v = f32::NAN;
            }
        }
        let g = |v: f32| if v.is_nan() { 0.0 } else { f64::from(v) };
        let logit = (3.0 * g(row[0])).sin() + g(row[1]) * g(row[2]) - 0.5 * g(row[4])
            + if row[3].is_nan() { 0.7 } else { -0.2 }
            + g(row[6]) * g(row[6])
            + g(row[7]) * 0.3
            - 0.5;
        let p = 1.0 / (1.0 + (-logit).exp());
        y.push(if rng.unit() < p { 1.0 } else { 0.0 });
        x.extend_from_slice(&row);
    }
    Dataset { ncols: NCOLS, x, y }
}

fn trained(trees: u32) -> XgbModel {
    let params = TrainParams {
        rounds: trees,
        max_depth: 6,
        eta: 0.1,
        min_child_weight: 0.0,
        subsample: 1.0,
        seed: 1,
    };
    let json = train_binary(&synthetic(4000, 11), &params).unwrap();
    XgbModel::from_json(&json).unwrap()
}

/// `trees` complete trees of depth 6 in XGBoost 1.6.2's JSON.
fn full(trees: usize) -> XgbModel {
    let mut rng = Rng(99);
    let n = 127;
    let mut out = String::new();
    for t in 0..trees {
        let (mut l, mut r, mut f, mut c, mut d) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..n {
            if i < 63 {
                l.push((2 * i + 1) as i64);
                r.push((2 * i + 2) as i64);
                f.push((rng.next_u64() % NCOLS as u64) as i64);
                c.push(format!("{}", (rng.unit() * 2.0 - 0.5) as f32));
            } else {
                l.push(-1);
                r.push(-1);
                f.push(0);
                c.push(format!("{}", ((rng.unit() - 0.5) * 0.1) as f32));
            }
            d.push(rng.next_u64() % 2);
        }
        let j = |v: &[i64]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        if t > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"tree_param":{{"num_nodes":"{n}","num_feature":"{NCOLS}","size_leaf_vector":"0","num_deleted":"0"}},
            "left_children":[{}],"right_children":[{}],"split_indices":[{}],
            "split_conditions":[{}],"default_left":[{}],"split_type":[{}]}}"#,
            j(&l),
            j(&r),
            j(&f),
            c.join(","),
            d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","),
            vec!["0"; n].join(","),
        ));
    }
    let json = format!(
        r#"{{"learner":{{"learner_model_param":{{"base_score":"5E-1","num_class":"0","num_feature":"{NCOLS}","num_target":"1"}},
        "objective":{{"name":"binary:logistic"}},
        "gradient_booster":{{"name":"gbtree","model":{{"gbtree_model_param":{{"num_trees":"{trees}","size_leaf_vector":"0"}},
        "tree_info":[{}],"trees":[{out}]}}}}}},"version":[1,6,2]}}"#,
        vec!["0"; trees].join(",")
    );
    XgbModel::from_json(json.as_bytes()).unwrap()
}

fn models() -> Vec<(String, XgbModel)> {
    vec![
        ("trained 100 trees depth 6".into(), trained(100)),
        ("trained 1000 trees depth 6".into(), trained(1000)),
        ("full 100 trees depth 6".into(), full(100)),
        ("full 1000 trees depth 6".into(), full(1000)),
    ]
}

fn bench(c: &mut Criterion) {
    let rows = synthetic(ROWS, 12).x;
    for (name, model) in models() {
        let mut i = 0usize;
        c.bench_function(&format!("P5 predict one pair: {name}"), |b| {
            b.iter(|| {
                i = (i + 1) % ROWS;
                model.predict(black_box(&rows[i * NCOLS..(i + 1) * NCOLS]))
            })
        });
        let mut out = vec![0f32; 50];
        let mut k = 0usize;
        c.bench_function(&format!("predict_many 50 rows: {name}"), |b| {
            b.iter(|| {
                k = (k + 50) % (ROWS - 50);
                model.predict_many(black_box(&rows[k * NCOLS..(k + 50) * NCOLS]), &mut out);
                black_box(out[0])
            })
        });
    }
}

/// Single-call percentiles (the target is a p99), 200,000 calls after 20,000 warm-up.
fn percentiles() {
    let rows = synthetic(ROWS, 12).x;
    for (name, model) in models() {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for i in 0..220_000usize {
            let r = i % ROWS;
            let t0 = Instant::now();
            let p = model.predict(black_box(&rows[r * NCOLS..(r + 1) * NCOLS]));
            let ns = t0.elapsed().as_nanos() as u64;
            black_box(p);
            if i >= 20_000 {
                let _ = h.record(ns);
            }
        }
        println!(
            "P5 predict one pair, {name}: p50 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs ({} calls)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `--test` (criterion's smoke mode: every benchmark once) skips the timing loop.
    if !std::env::args().any(|a| a == "--test") {
        percentiles();
    }
}
