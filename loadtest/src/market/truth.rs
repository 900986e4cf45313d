//! The market's ground truth: a tree ensemble in XGBoost 1.6.2's JSON model format over
//! the exchange's feature vector (AI-DESIGN.md), and the evaluator the simulated buyers
//! draw their realizations from. One source of truth: the oracle leg imports exactly the
//! JSON [`Ensemble::to_xgboost_json`] writes, and the buyers evaluate the same trees with
//! [`Ensemble::predict`].
//!
//! The truth uses lead features and the `buyer` feature only (never the context features
//! nor the buyer's live statistics): the exchange's clock runs in real time, so hour and
//! day of week are not part of the simulated world. Each term is one small tree that
//! isolates one buyer with two splits around its id hash (`buyer < h` goes left to a 0
//! leaf; `buyer < h + 1` goes left into the buyer's subtree; ids hash to integers below
//! 2^24, exact in f32) and then, for a [`Term::Split`], one split on a lead feature.

use serde_json::{json, Value};

/// `(fnv1a32(id) >> 8) as f32`: the `buyer`, `seller` and `sub_id` feature of AI-DESIGN.md
/// (FNV-1a 32-bit, offset 2166136261, prime 16777619). Below 2^24, so exact in f32.
pub fn id_hash(id: &str) -> f32 {
    let mut h: u32 = 2_166_136_261;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16_777_619);
    }
    (h >> 8) as f32
}

/// One regression tree in XGBoost's array layout: node `i` is a leaf when `left[i] == -1`,
/// and then `cond[i]` is its value; otherwise `x[feature[i]] < cond[i]` goes to `left[i]`,
/// else `right[i]`, and a missing (NaN) value goes left when `default_left[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// Split feature per node (0 for leaves).
    pub feature: Vec<u32>,
    /// Split threshold, or the leaf value.
    pub cond: Vec<f32>,
    /// Where a missing value goes.
    pub default_left: Vec<bool>,
    /// Left child, -1 for a leaf.
    pub left: Vec<i32>,
    /// Right child, -1 for a leaf.
    pub right: Vec<i32>,
}

/// The longest path walked: a guard against a malformed (cyclic) tree.
const WALK_STEPS_MAX: usize = 64;

impl Tree {
    /// The leaf value `row` reaches (a column past the row's end counts as missing).
    pub fn leaf(&self, row: &[f32]) -> f32 {
        let mut node = 0usize;
        for _ in 0..WALK_STEPS_MAX {
            let l = self.left.get(node).copied().unwrap_or(-1);
            if l < 0 {
                return self.cond.get(node).copied().unwrap_or(0.0);
            }
            let f = self.feature.get(node).copied().unwrap_or(0) as usize;
            let x = row.get(f).copied().unwrap_or(f32::NAN);
            let go_left = if x.is_nan() {
                self.default_left.get(node).copied().unwrap_or(true)
            } else {
                x < self.cond.get(node).copied().unwrap_or(0.0)
            };
            let next = if go_left {
                l
            } else {
                self.right.get(node).copied().unwrap_or(-1)
            };
            if next < 0 {
                return 0.0;
            }
            node = next as usize;
        }
        0.0
    }

    fn num_nodes(&self) -> usize {
        self.left.len()
    }

    /// XGBoost 1.6.2's JSON for this tree.
    fn to_json(&self, id: usize, num_feature: usize) -> Value {
        let n = self.num_nodes();
        let mut parents = vec![2_147_483_647_i64; n];
        for i in 0..n {
            for c in [self.left[i], self.right[i]] {
                if c >= 0 {
                    parents[c as usize] = i as i64;
                }
            }
        }
        let base_weights: Vec<f32> = (0..n)
            .map(|i| if self.left[i] < 0 { self.cond[i] } else { 0.0 })
            .collect();
        json!({
            "base_weights": base_weights,
            "categories": [],
            "categories_nodes": [],
            "categories_segments": [],
            "categories_sizes": [],
            "default_left": self.default_left.iter().map(|d| u8::from(*d)).collect::<Vec<_>>(),
            "id": id,
            "left_children": self.left,
            "loss_changes": vec![0.0_f32; n],
            "parents": parents,
            "right_children": self.right,
            "split_conditions": self.cond,
            "split_indices": self.feature,
            "split_type": vec![0_u8; n],
            "sum_hessian": vec![1.0_f32; n],
            "tree_param": {
                "num_deleted": "0",
                "num_feature": num_feature.to_string(),
                "num_nodes": n.to_string(),
                "size_leaf_vector": "0"
            }
        })
    }
}

/// A gbtree ensemble with objective `binary:logistic` and base_score 0.5 (margin 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Ensemble {
    /// Length of the feature vector (`num_feature`).
    pub num_feature: usize,
    /// The trees, summed in order.
    pub trees: Vec<Tree>,
}

/// One additive piece of a buyer's truth margin.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// The buyer's base margin.
    Base {
        /// The buyer's config id.
        buyer: String,
        /// Added to its margin on every lead.
        margin: f32,
    },
    /// `x[feature] < threshold` adds `below`, else `at_or_above`; missing adds `missing`'s
    /// side (`true` = the `below` side).
    Split {
        /// The buyer's config id.
        buyer: String,
        /// Index in the feature vector (a lead feature).
        feature: u32,
        /// The threshold.
        threshold: f32,
        /// Added when below.
        below: f32,
        /// Added when at or above.
        at_or_above: f32,
        /// A missing value goes to the `below` side.
        missing_below: bool,
    },
}

/// One term as a tree; `buyer_feature` is the index of the `buyer` feature (it depends on
/// the configured lists).
fn term_tree(term: &Term, buyer_feature: u32) -> Tree {
    let buyer = match term {
        Term::Base { buyer, .. } | Term::Split { buyer, .. } => buyer,
    };
    let h = id_hash(buyer);
    // 0: buyer < h -> 1 (leaf 0) else 2; 2: buyer < h + 1 -> 3 (the buyer) else 4 (leaf 0).
    let mut t = Tree {
        feature: vec![buyer_feature, 0, buyer_feature, 0, 0],
        cond: vec![h, 0.0, h + 1.0, 0.0, 0.0],
        default_left: vec![true; 5],
        left: vec![1, -1, 3, -1, -1],
        right: vec![2, -1, 4, -1, -1],
    };
    match term {
        Term::Base { margin, .. } => t.cond[3] = *margin,
        Term::Split {
            feature,
            threshold,
            below,
            at_or_above,
            missing_below,
            ..
        } => {
            // 3: x[feature] < threshold -> 5 (below) else 6 (at or above).
            t.feature[3] = *feature;
            t.cond[3] = *threshold;
            t.default_left[3] = *missing_below;
            t.left[3] = 5;
            t.right[3] = 6;
            t.feature.extend([0, 0]);
            t.cond.extend([*below, *at_or_above]);
            t.default_left.extend([true, true]);
            t.left.extend([-1, -1]);
            t.right.extend([-1, -1]);
        }
    }
    t
}

/// `1 / (1 + e^-m)`, in f32 as XGBoost computes it.
pub fn sigmoid(m: f32) -> f32 {
    1.0 / (1.0 + (-m).exp())
}

impl Ensemble {
    /// The ensemble of one tree per term.
    pub fn from_terms(terms: &[Term], num_feature: usize, buyer_feature: u32) -> Ensemble {
        Ensemble {
            num_feature,
            trees: terms.iter().map(|t| term_tree(t, buyer_feature)).collect(),
        }
    }

    /// The raw margin: logit(base_score 0.5) = 0 plus every tree's leaf, summed in f32 in
    /// tree order.
    pub fn predict_margin(&self, row: &[f32]) -> f32 {
        let mut m = 0.0_f32;
        for t in &self.trees {
            m += t.leaf(row);
        }
        m
    }

    /// P(realization) = sigmoid(margin).
    pub fn predict(&self, row: &[f32]) -> f32 {
        sigmoid(self.predict_margin(row))
    }

    /// The model as XGBoost 1.6.2 writes it with `save_model("x.json")`: gbtree,
    /// `binary:logistic`, base_score `"5E-1"`.
    pub fn to_xgboost_json(&self) -> Value {
        let nf = self.num_feature;
        json!({
            "learner": {
                "attributes": {},
                "feature_names": [],
                "feature_types": [],
                "gradient_booster": {
                    "model": {
                        "gbtree_model_param": {
                            "num_parallel_tree": "1",
                            "num_trees": self.trees.len().to_string(),
                            "size_leaf_vector": "0"
                        },
                        "tree_info": vec![0_u8; self.trees.len()],
                        "trees": self.trees.iter().enumerate().map(|(i, t)| t.to_json(i, nf)).collect::<Vec<_>>()
                    },
                    "name": "gbtree"
                },
                "learner_model_param": {
                    "base_score": "5E-1",
                    "num_class": "0",
                    "num_feature": nf.to_string(),
                    "num_target": "1"
                },
                "objective": {
                    "name": "binary:logistic",
                    "reg_loss_param": {"scale_pos_weight": "1"}
                }
            },
            "version": [1, 6, 2]
        })
    }

    /// Reads back what [`to_xgboost_json`](Self::to_xgboost_json) writes (and any
    /// XGBoost 1.6.2 gbtree JSON without categorical splits). For tests and for the
    /// report's cross-checks.
    pub fn from_xgboost_json(v: &Value) -> Result<Ensemble, String> {
        let learner = &v["learner"];
        let nf: usize = learner["learner_model_param"]["num_feature"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or("learner_model_param.num_feature")?;
        let base = learner["learner_model_param"]["base_score"]
            .as_str()
            .and_then(|s| s.parse::<f32>().ok())
            .ok_or("base_score")?;
        if (base - 0.5).abs() > 0.0 {
            return Err(format!("base_score {base}: only 0.5 is read"));
        }
        let trees = learner["gradient_booster"]["model"]["trees"]
            .as_array()
            .ok_or("trees")?;
        let mut out = Vec::with_capacity(trees.len());
        for t in trees {
            let ints = |k: &str| -> Result<Vec<i64>, String> {
                t[k].as_array()
                    .ok_or_else(|| k.to_string())?
                    .iter()
                    .map(|x| x.as_i64().ok_or(format!("{k}: not an integer")))
                    .collect()
            };
            let floats = |k: &str| -> Result<Vec<f32>, String> {
                t[k].as_array()
                    .ok_or_else(|| k.to_string())?
                    .iter()
                    .map(|x| {
                        x.as_f64()
                            .map(|f| f as f32)
                            .ok_or(format!("{k}: not a number"))
                    })
                    .collect()
            };
            let tree = Tree {
                feature: ints("split_indices")?
                    .into_iter()
                    .map(|x| x as u32)
                    .collect(),
                cond: floats("split_conditions")?,
                default_left: ints("default_left")?.into_iter().map(|x| x != 0).collect(),
                left: ints("left_children")?
                    .into_iter()
                    .map(|x| x as i32)
                    .collect(),
                right: ints("right_children")?
                    .into_iter()
                    .map(|x| x as i32)
                    .collect(),
            };
            let n = tree.left.len();
            if [
                tree.feature.len(),
                tree.cond.len(),
                tree.default_left.len(),
                tree.right.len(),
            ]
            .iter()
            .any(|l| *l != n)
            {
                return Err("tree arrays of different lengths".into());
            }
            out.push(tree);
        }
        Ok(Ensemble {
            num_feature: nf,
            trees: out,
        })
    }
}
