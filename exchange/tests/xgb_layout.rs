//! The two tree layouts of `pingpost_core::model::xgb::XgbModel`: the compact one (trees
//! of depth <= 6, 4-byte nodes compared on exact u16 bins of the split conditions) must
//! give bit-identical outputs to the general walk and to an independent reference walk
//! (XGBoost's rule: missing -> default direction, else left when `x < condition`, f32 sums
//! in tree order), on random complete and unbalanced forests, inputs equal to (and one ulp
//! around) split conditions, NaN, infinities, signed zeros, short rows; models the compact
//! layout cannot hold must fall back to the general walk and still be exact. Trained
//! models are also checked against XGBoost itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pingpost::ai::train::{predict_margin_with_xgboost, train_binary, Dataset, TrainParams};
use pingpost::core::model::xgb::{
    XgbModel, COMPACT_DEPTH_MAX, COMPACT_FEATURES_MAX, COMPACT_THRESHOLDS_MAX,
};

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
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A tree in XGBoost's arrays (children after parents, -1 for leaves).
#[derive(Default, Clone)]
struct Tree {
    left: Vec<i64>,
    right: Vec<i64>,
    feature: Vec<usize>,
    cond: Vec<f32>,
    default_left: Vec<bool>,
}

impl Tree {
    fn push(&mut self) -> usize {
        self.left.push(-1);
        self.right.push(-1);
        self.feature.push(0);
        self.cond.push(0.0);
        self.default_left.push(false);
        self.left.len() - 1
    }

    /// The reference walk.
    fn leaf(&self, row: &[f32]) -> f32 {
        let mut i = 0usize;
        while self.left[i] != -1 {
            let x = row.get(self.feature[i]).copied().unwrap_or(f32::NAN);
            let go_left = if x.is_nan() {
                self.default_left[i]
            } else {
                x < self.cond[i]
            };
            i = if go_left { self.left[i] } else { self.right[i] } as usize;
        }
        self.cond[i]
    }

    fn json(&self, nf: usize) -> String {
        let j = |v: Vec<String>| v.join(",");
        let n = self.left.len();
        format!(
            r#"{{"tree_param":{{"num_nodes":"{n}","num_feature":"{nf}","size_leaf_vector":"0","num_deleted":"0"}},
            "left_children":[{}],"right_children":[{}],"split_indices":[{}],
            "split_conditions":[{}],"default_left":[{}],"split_type":[{}]}}"#,
            j(self.left.iter().map(|x| x.to_string()).collect()),
            j(self.right.iter().map(|x| x.to_string()).collect()),
            j(self.feature.iter().map(|x| x.to_string()).collect()),
            j(self.cond.iter().map(|x| format!("{x:e}")).collect()),
            j(self
                .default_left
                .iter()
                .map(|&d| u8::from(d).to_string())
                .collect()),
            vec!["0"; n].join(","),
        )
    }
}

struct Forest {
    trees: Vec<Tree>,
    nf: usize,
    base_score: f32,
}

impl Forest {
    fn json(&self) -> Vec<u8> {
        let trees: Vec<String> = self.trees.iter().map(|t| t.json(self.nf)).collect();
        format!(
            r#"{{"learner":{{"learner_model_param":{{"base_score":"{:e}","num_class":"0","num_feature":"{}","num_target":"1"}},
            "objective":{{"name":"binary:logitraw"}},
            "gradient_booster":{{"name":"gbtree","model":{{"gbtree_model_param":{{"num_trees":"{}","size_leaf_vector":"0"}},
            "tree_info":[{}],"trees":[{}]}}}}}},"version":[1,6,2]}}"#,
            self.base_score,
            self.nf,
            self.trees.len(),
            vec!["0"; self.trees.len()].join(","),
            trees.join(",")
        )
        .into_bytes()
    }

    fn margin(&self, row: &[f32]) -> f32 {
        let mut sum = self.base_score;
        for t in &self.trees {
            sum += t.leaf(row);
        }
        sum
    }
}

/// Split conditions the rows also take as values, so `x == condition` happens often.
const POOL: [f32; 12] = [
    -0.0, 0.0, 1.0, -1.5, 0.1, 2.5, 1e-40, -1e-40, 3.0e38, -3.0e38, 7.0, -7.25,
];

fn condition(rng: &mut Rng) -> f32 {
    if rng.unit() < 0.5 {
        POOL[rng.below(POOL.len())]
    } else {
        ((rng.unit() * 20.0 - 10.0) as f32 * 8.0).round() / 8.0
    }
}

/// A random tree of depth <= `depth`: `p_leaf` is the chance a node above the bottom is
/// a leaf (0: complete).
fn random_tree(rng: &mut Rng, nf: usize, depth: usize, p_leaf: f64) -> Tree {
    let mut t = Tree::default();
    let root = t.push();
    let mut todo = vec![(root, 0usize)];
    while let Some((i, d)) = todo.pop() {
        if d == depth || (d > 0 && rng.unit() < p_leaf) {
            t.cond[i] = ((rng.unit() - 0.5) as f32 * 64.0).round() / 64.0;
            continue;
        }
        let (l, r) = (t.push(), t.push());
        t.left[i] = l as i64;
        t.right[i] = r as i64;
        t.feature[i] = rng.below(nf);
        t.cond[i] = condition(rng);
        t.default_left[i] = rng.unit() < 0.5;
        todo.push((r, d + 1));
        todo.push((l, d + 1));
    }
    t
}

fn random_forest(rng: &mut Rng, trees: usize, nf: usize, depth: usize, p_leaf: f64) -> Forest {
    Forest {
        trees: (0..trees)
            .map(|_| random_tree(rng, nf, depth, p_leaf))
            .collect(),
        nf,
        base_score: 0.25,
    }
}

/// Rows of values from the pool, one ulp around it, NaN, infinities and random.
fn rows(rng: &mut Rng, n: usize, nf: usize) -> Vec<f32> {
    (0..n * nf)
        .map(|_| match rng.below(8) {
            0 => f32::NAN,
            1 => POOL[rng.below(POOL.len())],
            2 => {
                let p = POOL[rng.below(POOL.len())];
                let bits = p.to_bits();
                // one ulp either way (away from or toward zero)
                f32::from_bits(if rng.unit() < 0.5 || bits & 0x7fff_ffff == 0 {
                    bits + 1
                } else {
                    bits - 1
                })
            }
            3 => [f32::INFINITY, f32::NEG_INFINITY][rng.below(2)],
            4 => condition(rng),
            _ => (rng.unit() * 30.0 - 15.0) as f32,
        })
        .collect()
}

/// Compact, general and reference margins agree bit for bit, row by row and through
/// predict_many (with short rows too); returns the model.
fn assert_exact(forest: &Forest, rows: &[f32], compact: bool, what: &str) -> XgbModel {
    let model = XgbModel::from_json(&forest.json()).unwrap();
    assert_eq!(model.uses_compact_layout(), compact, "{what}: layout");
    let general = model.clone().into_general_layout();
    assert!(!general.uses_compact_layout());
    let nf = forest.nf;
    for row in rows.chunks(nf) {
        let want = forest.margin(row);
        let got = model.predict_margin(row);
        assert_eq!(got.to_bits(), want.to_bits(), "{what}: {row:?}");
        assert_eq!(general.predict_margin(row).to_bits(), want.to_bits());
        assert_eq!(model.predict(row).to_bits(), general.predict(row).to_bits());
        // a short row: the cut columns are missing
        let short = &row[..row.len() / 2];
        assert_eq!(
            model.predict_margin(short).to_bits(),
            forest.margin(short).to_bits(),
            "{what}: short {short:?}"
        );
    }
    let n = rows.len() / nf;
    let mut many = vec![0f32; n];
    model.predict_many(rows, &mut many);
    let mut many_general = vec![0f32; n];
    general.predict_many(rows, &mut many_general);
    for (r, (a, b)) in many.iter().zip(&many_general).enumerate() {
        let one = model.predict(&rows[r * nf..(r + 1) * nf]);
        assert_eq!(a.to_bits(), one.to_bits(), "{what}: predict_many row {r}");
        assert_eq!(
            b.to_bits(),
            one.to_bits(),
            "{what}: general predict_many row {r}"
        );
    }
    // predict_many with the rows cut short: the missing cells are missing values
    let cut = &rows[..rows.len() - nf / 2 - 1];
    model.predict_many(cut, &mut many);
    general.predict_many(cut, &mut many_general);
    assert_eq!(
        many.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        many_general.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    model
}

#[test]
fn complete_forests_are_exact() {
    let mut rng = Rng(1);
    // tree counts on and off a multiple of the walk's group of 8
    for (trees, nf, depth) in [(1, 3, 6), (8, 10, 6), (13, 10, 6), (100, 10, 6), (37, 5, 3)] {
        let f = random_forest(&mut rng, trees, nf, depth, 0.0);
        let x = rows(&mut rng, 400, nf);
        assert_exact(&f, &x, true, &format!("complete {trees}x{depth}"));
    }
}

#[test]
fn unbalanced_forests_are_exact() {
    let mut rng = Rng(2);
    for (trees, nf, depth, p_leaf) in [
        (50, 10, 6, 0.3),
        (9, 4, 6, 0.6),
        (64, 10, 5, 0.2),
        (7, 2, 2, 0.5),
        (20, 10, 1, 0.0),
    ] {
        let f = random_forest(&mut rng, trees, nf, depth, p_leaf);
        let x = rows(&mut rng, 400, nf);
        assert_exact(&f, &x, true, &format!("unbalanced {trees}x{depth}"));
    }
    // one tree of depth 6 among single leaves: the leaves are pushed down six levels
    let mut f = random_forest(&mut rng, 11, 6, 0, 0.0);
    f.trees[5] = random_tree(&mut rng, 6, 6, 0.0);
    let x = rows(&mut rng, 300, 6);
    assert_exact(&f, &x, true, "leaves and one deep tree");
    // only single-leaf trees: depth 0
    let f = random_forest(&mut rng, 10, 3, 0, 0.0);
    let x = rows(&mut rng, 20, 3);
    assert_exact(&f, &x, true, "stumps");
}

#[test]
fn deeper_trees_fall_back_and_are_exact() {
    let mut rng = Rng(3);
    let mut f = random_forest(&mut rng, 30, 10, COMPACT_DEPTH_MAX, 0.2);
    // one tree one level deeper than the compact layout holds
    f.trees[17] = random_tree(&mut rng, 10, COMPACT_DEPTH_MAX + 1, 0.0);
    let x = rows(&mut rng, 300, 10);
    assert_exact(&f, &x, false, "depth 7");
    let f = random_forest(&mut rng, 20, 10, 10, 0.3);
    assert_exact(&f, &x, false, "depth 10");
}

#[test]
fn many_features_fall_back_and_are_exact() {
    let mut rng = Rng(4);
    // num_feature above the limit, even if the trees use few of them
    for (nf, compact) in [
        (COMPACT_FEATURES_MAX, true),
        (COMPACT_FEATURES_MAX + 1, false),
    ] {
        let f = random_forest(&mut rng, 20, nf, 6, 0.1);
        let x = rows(&mut rng, 100, nf);
        assert_exact(&f, &x, compact, &format!("{nf} features"));
    }
}

/// Complete depth-6 trees on 2 features, feature 0's split conditions all distinct:
/// `distinct` of them (then repeats).
fn many_conditions(distinct: usize) -> Forest {
    let per_tree = 63;
    let trees = distinct.div_ceil(per_tree);
    let mut k = 0usize;
    let mut out = Vec::new();
    for t in 0..trees {
        let mut tree = Tree::default();
        for i in 0..127 {
            tree.push();
            if i < 63 {
                tree.left[i] = (2 * i + 1) as i64;
                tree.right[i] = (2 * i + 2) as i64;
                // distinct conditions k = 0, 1, ..., in a tree-order that mixes them
                tree.cond[i] = (k.min(distinct - 1) as f32) * 0.5 - 10_000.0;
                tree.default_left[i] = (i + t) % 3 == 0;
                k += 1;
            } else {
                tree.cond[i] = ((i * 7 + t) % 13) as f32 / 64.0 - 0.1;
            }
        }
        out.push(tree);
    }
    Forest {
        trees: out,
        nf: 2,
        base_score: 0.0,
    }
}

#[test]
fn too_many_distinct_conditions_fall_back_and_are_exact() {
    let mut rng = Rng(5);
    let probe = |rng: &mut Rng, distinct: usize| {
        // values on, between and around the conditions, plus the usual specials
        let mut x = rows(rng, 200, 2);
        for r in 0..200 {
            let c = rng.below(distinct + 2) as f32 * 0.5 - 10_000.5;
            x[r * 2] = if r % 3 == 0 { c + 0.25 } else { c };
        }
        x
    };
    let at = COMPACT_THRESHOLDS_MAX;
    let f = many_conditions(at);
    let x = probe(&mut rng, at);
    assert_exact(&f, &x, true, "at the limit");
    let f = many_conditions(at + 1);
    let x = probe(&mut rng, at + 1);
    assert_exact(&f, &x, false, "over the limit");
}

#[test]
fn trained_models_match_xgboost_in_both_layouts() {
    const NCOLS: usize = 10;
    let mut rng = Rng(6);
    let mut data = |n: usize| {
        let mut x = Vec::with_capacity(n * NCOLS);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let mut row = [0f32; NCOLS];
            for (j, v) in row.iter_mut().enumerate() {
                *v = match j % 3 {
                    0 => (rng.unit() * 2.0 - 1.0) as f32,
                    1 => rng.below(5) as f32,
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
                + if row[3].is_nan() { 0.7 } else { -0.2 };
            let p = 1.0 / (1.0 + (-logit).exp());
            y.push(if rng.unit() < p { 1.0 } else { 0.0 });
            x.extend_from_slice(&row);
        }
        Dataset { ncols: NCOLS, x, y }
    };
    let train = data(3000);
    let test = data(1000);
    for (max_depth, compact) in [(6, true), (9, false)] {
        let params = TrainParams {
            rounds: 60,
            max_depth,
            eta: 0.1,
            min_child_weight: 0.0,
            subsample: 1.0,
            seed: 1,
        };
        let json = train_binary(&train, &params).unwrap();
        let model = XgbModel::from_json(&json).unwrap();
        assert_eq!(model.uses_compact_layout(), compact, "depth {max_depth}");
        let general = model.clone().into_general_layout();
        let theirs = predict_margin_with_xgboost(&json, &test.x, NCOLS).unwrap();
        for (r, t) in theirs.iter().enumerate() {
            let row = &test.x[r * NCOLS..(r + 1) * NCOLS];
            let mine = model.predict_margin(row);
            assert!((mine - t).abs() <= 1e-6, "depth {max_depth} row {r}");
            assert_eq!(mine.to_bits(), general.predict_margin(row).to_bits());
        }
    }
}
