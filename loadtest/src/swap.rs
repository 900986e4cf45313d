//! P6, hot swap under load: the model sets a run swaps between, the exchange
//! configuration that lets it (features, `[learning]`, the admin listener), and the task
//! that swaps models (and reloads the configuration) on a fixed schedule while the load
//! runs, recording every answer.
//!
//! The models are synthetic XGBoost 1.6.2 JSON models ([`xgboost_json`]): full binary
//! trees of a given depth with seeded random splits over each feature's plausible range
//! and small leaf values, written with every field XGBoost itself writes. They are not
//! trained on anything; what matters here is that they are valid, the size and shape of
//! a real model (100 trees of depth 6 by default), and that two versions differ.
//!
//! Must never: talk to anything but loopback (the admin address is checked), run
//! unbounded (every schedule has at most [`SWAP_ACTIONS_MAX`] actions, every admin call
//! a timeout).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::sim::VERTICAL;

/// The model versions a run swaps between (A serves at start).
pub const VERSION_A: &str = "p6-a";
/// The second version.
pub const VERSION_B: &str = "p6-b";
/// The variable the exchange reads its admin token from in a p6 run.
pub const ADMIN_TOKEN_ENV: &str = "PINGPOST_LOADTEST_ADMIN_TOKEN";
/// Most admin actions one schedule may hold.
pub const SWAP_ACTIONS_MAX: usize = 100_000;
/// How long one admin call may take before it counts as failed.
pub const ADMIN_TIMEOUT_MS: u64 = 5_000;
/// Largest admin answer read.
const ADMIN_ANSWER_BYTES_MAX: usize = 64 * 1024;
/// XGBoost's "no parent" marker (the root's `parents` entry).
const NO_PARENT: i64 = 2_147_483_647;
/// Deepest tree [`xgboost_json`] writes (the evaluator accepts 64; 16 keeps files sane).
pub const TREE_DEPTH_MAX: u32 = 16;
/// Most trees [`xgboost_json`] writes.
pub const TREES_MAX: usize = 10_000;

/// The `auto_insurance` features a p6 run declares: the same as `config/default.toml`'s.
/// 6 lead + 4 context features (the lead-score model's), then 6 buyer features (the
/// realization model sees all 16).
pub const FEATURES_TOML: &str = r#"
[verticals.auto_insurance.features]
version = 1
lead = [
  { field = "age", kind = "numeric" },
  { field = "homeowner", kind = "boolean" },
  { field = "credit", kind = "categorical", categories = ["poor", "fair", "good", "excellent"] },
  { field = "insured", kind = "boolean" },
  { field = "vehicle_year", kind = "numeric" },
  { field = "state", kind = "categorical", categories = ["TX", "CA", "FL", "NY", "OK", "IL", "PA", "OH", "GA", "NC"] },
]
context = ["hour_of_day", "day_of_week", "seller", "sub_id"]
buyer = ["buyer", "acceptance_rate", "return_rate", "response_ms", "cap_utilisation", "bid_ratio"]
"#;

/// The value range of each feature of [`FEATURES_TOML`], in order: where the synthetic
/// models put their split conditions.
pub const FEATURE_RANGES: [(f32, f32); 16] = [
    (16.0, 90.0),        // age
    (0.0, 1.0),          // homeowner
    (0.0, 3.0),          // credit
    (0.0, 1.0),          // insured
    (1995.0, 2026.0),    // vehicle_year
    (0.0, 9.0),          // state
    (0.0, 23.0),         // hour_of_day
    (0.0, 6.0),          // day_of_week
    (0.0, 16_777_216.0), // seller (24-bit hash)
    (0.0, 16_777_216.0), // sub_id
    (0.0, 16_777_216.0), // buyer
    (0.0, 1.0),          // acceptance_rate
    (0.0, 1.0),          // return_rate
    (0.0, 50.0),         // response_ms
    (0.0, 1.0),          // cap_utilisation
    (0.0, 1.0),          // bid_ratio
];
/// Features the lead-score model takes (lead + context).
pub const LEAD_SCORE_FEATURES: usize = 10;
/// Features the realization model takes (lead + context + buyer).
pub const REALIZATION_FEATURES: usize = 16;

/// What [`xgboost_json`] generates.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// `num_feature`; splits use features `0..num_features`.
    pub num_features: usize,
    /// Number of trees (boosting rounds).
    pub trees: usize,
    /// Depth of every tree (edges from the root to each leaf): `2^(depth+1) - 1` nodes.
    pub depth: u32,
    /// Seed of every random draw: the same spec gives the same bytes.
    pub seed: u64,
    /// Each feature's (low, high) range for split conditions; a feature past the end of
    /// the list uses (0, 1).
    pub ranges: Vec<(f32, f32)>,
    /// Leaf values are drawn from `-leaf_max..leaf_max` (eta already applied).
    pub leaf_max: f32,
}

impl ModelSpec {
    /// 100 trees of depth 6 over `num_features` with [`FEATURE_RANGES`], leaves within
    /// +-0.1: the size of the models P5 is defined for.
    pub fn standard(num_features: usize, seed: u64) -> ModelSpec {
        ModelSpec {
            num_features,
            trees: 100,
            depth: 6,
            seed,
            ranges: FEATURE_RANGES.to_vec(),
            leaf_max: 0.1,
        }
    }
}

/// Why a spec cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model spec: {0}")]
pub struct SpecError(String);

/// The shortest decimal that reads back as `x`, as a JSON number that is never an
/// integer (XGBoost's reader refuses an integer where it expects a float: `2001.0`, not
/// `2001`).
fn num(out: &mut String, x: f32) {
    let x = if x.is_finite() { x } else { 0.0 };
    let start = out.len();
    let _ = write!(out, "{x}");
    if !out[start..].contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
}

fn list<T>(
    out: &mut String,
    items: impl IntoIterator<Item = T>,
    mut f: impl FnMut(&mut String, T),
) {
    out.push('[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        f(out, item);
    }
    out.push(']');
}

/// A `binary:logistic` gbtree model in XGBoost 1.6.2's JSON model format (the file
/// `save_model("x.json")` writes), with every field XGBoost writes: full binary trees of
/// `spec.depth`, nodes numbered breadth-first (node `i`'s children are `2i+1` and
/// `2i+2`), seeded random split features, conditions within each feature's range and
/// default directions, and leaf values within `+-spec.leaf_max`.
pub fn xgboost_json(spec: &ModelSpec) -> Result<String, SpecError> {
    if spec.num_features == 0 || spec.num_features > 65_536 {
        return Err(SpecError(format!(
            "num_features must be in 1..=65536, not {}",
            spec.num_features
        )));
    }
    if spec.trees == 0 || spec.trees > TREES_MAX {
        return Err(SpecError(format!(
            "trees must be in 1..={TREES_MAX}, not {}",
            spec.trees
        )));
    }
    if spec.depth > TREE_DEPTH_MAX {
        return Err(SpecError(format!(
            "depth must be at most {TREE_DEPTH_MAX}, not {}",
            spec.depth
        )));
    }
    if !(spec.leaf_max.is_finite() && spec.leaf_max > 0.0) {
        return Err(SpecError(format!(
            "leaf_max must be finite and > 0, not {}",
            spec.leaf_max
        )));
    }
    for (i, (lo, hi)) in spec.ranges.iter().enumerate() {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(SpecError(format!("range {i} is not finite low <= high")));
        }
    }
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let nodes = (1usize << (spec.depth + 1)) - 1;
    let internal = (1usize << spec.depth) - 1;
    let nf = spec.num_features;
    let mut out = String::with_capacity(spec.trees * nodes * 90 + 1_024);
    out.push_str(r#"{"learner":{"attributes":{},"feature_names":[],"feature_types":[],"#);
    let _ = write!(
        out,
        r#""gradient_booster":{{"model":{{"gbtree_model_param":{{"num_parallel_tree":"1","num_trees":"{}","size_leaf_vector":"0"}},"tree_info":"#,
        spec.trees
    );
    list(&mut out, 0..spec.trees, |o, _| o.push('0'));
    out.push_str(r#","trees":["#);
    for t in 0..spec.trees {
        if t > 0 {
            out.push(',');
        }
        // Draw the tree first: feature, condition, default direction, weight per node.
        let mut feature = vec![0usize; nodes];
        let mut cond = vec![0f32; nodes];
        let mut default_left = vec![false; nodes];
        let mut weight = vec![0f32; nodes];
        for i in 0..nodes {
            if i < internal {
                let f = rng.gen_range(0..nf);
                let (lo, hi) = spec.ranges.get(f).copied().unwrap_or((0.0, 1.0));
                feature[i] = f;
                cond[i] = if hi > lo { rng.gen_range(lo..hi) } else { lo };
                default_left[i] = rng.gen_bool(0.5);
                weight[i] = rng.gen_range(-spec.leaf_max..spec.leaf_max) * 0.5;
            } else {
                let leaf = rng.gen_range(-spec.leaf_max..spec.leaf_max);
                cond[i] = leaf;
                weight[i] = leaf;
            }
        }
        // The depth of node i (breadth-first numbering) is floor(log2(i + 1)).
        let depth_of = |i: usize| (usize::BITS - 1 - (i + 1).leading_zeros()) as i32;
        out.push_str(r#"{"base_weights":"#);
        list(&mut out, &weight, |o, w| num(o, *w));
        out.push_str(r#","categories":[],"categories_nodes":[],"categories_segments":[],"categories_sizes":[],"default_left":"#);
        list(&mut out, &default_left, |o, d| {
            o.push(if *d { '1' } else { '0' })
        });
        let _ = write!(out, r#","id":{t},"left_children":"#);
        list(&mut out, 0..nodes, |o, i| {
            let _ = if i < internal {
                write!(o, "{}", 2 * i + 1)
            } else {
                write!(o, "-1")
            };
        });
        out.push_str(r#","loss_changes":"#);
        list(&mut out, 0..nodes, |o, i| {
            if i < internal {
                num(o, 64.0 / (1 << depth_of(i)) as f32);
            } else {
                num(o, 0.0);
            }
        });
        out.push_str(r#","parents":"#);
        list(&mut out, 0..nodes, |o, i| {
            let _ = if i == 0 {
                write!(o, "{NO_PARENT}")
            } else {
                write!(o, "{}", (i - 1) / 2)
            };
        });
        out.push_str(r#","right_children":"#);
        list(&mut out, 0..nodes, |o, i| {
            let _ = if i < internal {
                write!(o, "{}", 2 * i + 2)
            } else {
                write!(o, "-1")
            };
        });
        out.push_str(r#","split_conditions":"#);
        list(&mut out, &cond, |o, c| num(o, *c));
        out.push_str(r#","split_indices":"#);
        list(&mut out, &feature, |o, f| {
            let _ = write!(o, "{f}");
        });
        out.push_str(r#","split_type":"#);
        list(&mut out, 0..nodes, |o, _| o.push('0'));
        out.push_str(r#","sum_hessian":"#);
        list(&mut out, 0..nodes, |o, i| {
            num(o, 1_000.0 / (1 << depth_of(i)) as f32);
        });
        let _ = write!(
            out,
            r#","tree_param":{{"num_deleted":"0","num_feature":"{nf}","num_nodes":"{nodes}","size_leaf_vector":"0"}}}}"#
        );
    }
    let _ = write!(
        out,
        r#"]}},"name":"gbtree"}},"learner_model_param":{{"base_score":"5E-1","num_class":"0","num_feature":"{nf}","num_target":"1"}},"objective":{{"name":"binary:logistic","reg_loss_param":{{"scale_pos_weight":"1"}}}}}},"version":[1,6,2]}}"#
    );
    Ok(out)
}

/// The model files of one version: `(realization, lead_score)` XGBoost JSON, both
/// [`ModelSpec::standard`], seeded from `seed` (two seeds give two different sets).
pub fn model_pair(seed: u64) -> Result<(String, String), SpecError> {
    let realization = xgboost_json(&ModelSpec::standard(
        REALIZATION_FEATURES,
        seed.wrapping_mul(2),
    ))?;
    let lead_score = xgboost_json(&ModelSpec::standard(
        LEAD_SCORE_FEATURES,
        seed.wrapping_mul(2).wrapping_add(1),
    ))?;
    Ok((realization, lead_score))
}

/// What a p6 run appends to [`crate::sim::exchange_config`]'s output: the vertical's
/// features, `[learning]` (models in `models_dir`, no directory watch, so only the admin
/// calls swap) and `[admin]` on `admin_listen` with its token in [`ADMIN_TOKEN_ENV`].
pub fn exchange_config_extra(models_dir: &Path, admin_listen: SocketAddr) -> String {
    let toml_string = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        "{FEATURES_TOML}\n[learning]\nmodels_dir = {}\nwatch_ms = 0\n\n[admin]\nlisten = {}\ntoken_env = \"{ADMIN_TOKEN_ENV}\"\n",
        toml_string(&models_dir.to_string_lossy()),
        toml_string(&admin_listen.to_string()),
    )
}

/// One admin action of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwapAction {
    /// `POST /admin/models` serving this version of [`VERTICAL`].
    Models(String),
    /// `POST /admin/reload`.
    Reload,
}

/// When the admin task acts, relative to its start.
#[derive(Debug, Clone)]
pub struct SwapSchedule {
    /// `(offset, action)`, in time order.
    pub actions: Vec<(Duration, SwapAction)>,
}

impl SwapSchedule {
    /// Over `window` starting `start` after the task starts: a model swap every `every`
    /// (at `start`, `start + every`, ...), alternating `versions[0]`, `versions[1]`; with
    /// `reload`, a configuration reload half-way between every second pair of swaps (after
    /// the 1st, 3rd, 5th ... swap). At most [`SWAP_ACTIONS_MAX`] actions.
    pub fn alternating(
        start: Duration,
        window: Duration,
        every: Duration,
        versions: [&str; 2],
        reload: bool,
    ) -> SwapSchedule {
        let mut actions = Vec::new();
        if every.is_zero() {
            return SwapSchedule { actions };
        }
        let mut i = 0u32;
        loop {
            let at = every.saturating_mul(i);
            if at >= window || actions.len() >= SWAP_ACTIONS_MAX {
                break;
            }
            actions.push((
                start + at,
                SwapAction::Models(versions[(i % 2) as usize].to_string()),
            ));
            let half = at + every / 2;
            if reload && i.is_multiple_of(2) && half < window && actions.len() < SWAP_ACTIONS_MAX {
                actions.push((start + half, SwapAction::Reload));
            }
            i += 1;
        }
        SwapSchedule { actions }
    }
}

/// What one admin call answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwapAnswer {
    /// When it was sent, seconds after the task started.
    pub at_s: f64,
    /// What was asked.
    pub action: SwapAction,
    /// The HTTP status (none: no answer in time, or a transport error).
    pub status: Option<u16>,
    /// The answer's `generation`.
    pub generation: Option<u64>,
    /// How long the call took, in ms.
    pub ms: f64,
    /// The transport error, or the body of a non-200 answer (at most 300 characters).
    pub error: Option<String>,
}

impl SwapAnswer {
    /// A 200 with a generation.
    pub fn applied(&self) -> bool {
        self.status == Some(200) && self.generation.is_some()
    }
}

/// Talks to the exchange's admin listener.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    /// A client for the admin listener at `addr` (loopback only).
    pub fn new(addr: SocketAddr, token: &str) -> anyhow::Result<AdminClient> {
        if !addr.ip().is_loopback() {
            anyhow::bail!("the admin address {addr} is not loopback");
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Ok(AdminClient {
            addr,
            token: token.to_string(),
            client: Client::builder(TokioExecutor::new()).build(http),
        })
    }

    /// `POST path` with `body`: the status and the answer's body, within
    /// [`ADMIN_TIMEOUT_MS`].
    pub async fn post(&self, path: &str, body: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `GET path`: the status and the answer's body, within [`ADMIN_TIMEOUT_MS`].
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.send(Method::GET, path, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let uri: Uri = format!("http://{}{path}", self.addr).parse()?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_string())))?;
        let call = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), ADMIN_ANSWER_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                .to_bytes();
            anyhow::Ok((status, bytes))
        };
        tokio::time::timeout(Duration::from_millis(ADMIN_TIMEOUT_MS), call)
            .await
            .map_err(|_| anyhow::anyhow!("no answer in {ADMIN_TIMEOUT_MS} ms"))?
    }

    /// Performs one action and records its answer (`t0`: the schedule's start).
    pub async fn act(&self, action: &SwapAction, t0: Instant) -> SwapAnswer {
        let sent = Instant::now();
        let result = match action {
            SwapAction::Models(version) => {
                let body = serde_json::json!({"vertical": VERTICAL, "version": version});
                self.post("/admin/models", &body.to_string()).await
            }
            SwapAction::Reload => self.post("/admin/reload", "").await,
        };
        let ms = sent.elapsed().as_secs_f64() * 1e3;
        let at_s = sent.duration_since(t0).as_secs_f64();
        match result {
            Ok((status, body)) => {
                let generation = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("generation").and_then(serde_json::Value::as_u64));
                let error = (status != 200)
                    .then(|| String::from_utf8_lossy(&body).chars().take(300).collect());
                SwapAnswer {
                    at_s,
                    action: action.clone(),
                    status: Some(status),
                    generation,
                    ms,
                    error,
                }
            }
            Err(e) => SwapAnswer {
                at_s,
                action: action.clone(),
                status: None,
                generation: None,
                ms,
                error: Some(format!("{e:#}").chars().take(300).collect()),
            },
        }
    }

    /// Runs `schedule` from now: each action at its offset (or at once, if the previous
    /// call ran past it), one at a time. Returns every answer in order.
    pub async fn run_schedule(&self, schedule: &SwapSchedule) -> Vec<SwapAnswer> {
        let t0 = Instant::now();
        let mut answers = Vec::with_capacity(schedule.actions.len());
        for (offset, action) in schedule.actions.iter().take(SWAP_ACTIONS_MAX) {
            tokio::time::sleep_until(t0 + *offset).await;
            answers.push(self.act(action, t0).await);
        }
        answers
    }
}

/// A summary of a schedule's answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwapTally {
    /// Model swaps asked for.
    pub swaps: u64,
    /// Model swaps answered 200 with a generation.
    pub swaps_applied: u64,
    /// Configuration reloads asked for.
    pub reloads: u64,
    /// Reloads answered 200 with a generation.
    pub reloads_applied: u64,
    /// Slowest admin answer, in ms.
    pub slowest_ms: f64,
    /// Whether the generations strictly increased, call after call.
    pub generations_increase: bool,
}

impl SwapTally {
    /// Tallies `answers`.
    pub fn of(answers: &[SwapAnswer]) -> SwapTally {
        let mut t = SwapTally {
            generations_increase: true,
            ..SwapTally::default()
        };
        let mut last = 0u64;
        for a in answers {
            match a.action {
                SwapAction::Models(_) => {
                    t.swaps += 1;
                    t.swaps_applied += u64::from(a.applied());
                }
                SwapAction::Reload => {
                    t.reloads += 1;
                    t.reloads_applied += u64::from(a.applied());
                }
            }
            t.slowest_ms = t.slowest_ms.max(a.ms);
            if let Some(g) = a.generation {
                if g <= last {
                    t.generations_increase = false;
                }
                last = g;
            }
        }
        t
    }

    /// Every call answered 200.
    pub fn all_applied(&self) -> bool {
        self.swaps_applied == self.swaps && self.reloads_applied == self.reloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_alternates_and_is_bounded() {
        let s = SwapSchedule::alternating(
            Duration::from_secs(2),
            Duration::from_secs(4),
            Duration::from_secs(1),
            ["a", "b"],
            true,
        );
        let kinds: Vec<String> = s
            .actions
            .iter()
            .map(|(at, a)| format!("{}:{a:?}", at.as_millis()))
            .collect();
        assert_eq!(
            kinds,
            [
                "2000:Models(\"a\")",
                "2500:Reload",
                "3000:Models(\"b\")",
                "4000:Models(\"a\")",
                "4500:Reload",
                "5000:Models(\"b\")",
            ]
        );
        let none = SwapSchedule::alternating(
            Duration::ZERO,
            Duration::from_secs(3),
            Duration::ZERO,
            ["a", "b"],
            false,
        );
        assert!(none.actions.is_empty());
        let many = SwapSchedule::alternating(
            Duration::ZERO,
            Duration::from_secs(1_000_000),
            Duration::from_millis(1),
            ["a", "b"],
            true,
        );
        assert_eq!(many.actions.len(), SWAP_ACTIONS_MAX);
    }

    #[test]
    fn tally_counts_and_checks_generations() {
        let answer =
            |action: SwapAction, status: Option<u16>, generation: Option<u64>| SwapAnswer {
                at_s: 0.0,
                action,
                status,
                generation,
                ms: 1.0,
                error: None,
            };
        let answers = vec![
            answer(SwapAction::Models("a".into()), Some(200), Some(2)),
            answer(SwapAction::Reload, Some(200), Some(3)),
            answer(SwapAction::Models("b".into()), Some(400), None),
            answer(SwapAction::Models("a".into()), None, None),
        ];
        let t = SwapTally::of(&answers);
        assert_eq!(
            (t.swaps, t.swaps_applied, t.reloads, t.reloads_applied),
            (3, 1, 1, 1)
        );
        assert!(t.generations_increase);
        assert!(!t.all_applied());
    }

    #[test]
    fn bad_specs_are_refused() {
        let ok = ModelSpec::standard(16, 1);
        assert!(xgboost_json(&ModelSpec {
            num_features: 0,
            ..ok.clone()
        })
        .is_err());
        assert!(xgboost_json(&ModelSpec {
            trees: 0,
            ..ok.clone()
        })
        .is_err());
        assert!(xgboost_json(&ModelSpec {
            depth: 17,
            ..ok.clone()
        })
        .is_err());
        assert!(xgboost_json(&ModelSpec {
            leaf_max: f32::NAN,
            ..ok.clone()
        })
        .is_err());
        assert!(xgboost_json(&ModelSpec {
            ranges: vec![(1.0, 0.0)],
            ..ok
        })
        .is_err());
    }

    #[test]
    fn config_extra_names_dir_admin_and_features() {
        let extra = exchange_config_extra(
            Path::new("/tmp/run/models"),
            "127.0.0.1:4567".parse().unwrap(),
        );
        assert!(extra.contains("models_dir = \"/tmp/run/models\""));
        assert!(extra.contains("watch_ms = 0"));
        assert!(extra.contains("listen = \"127.0.0.1:4567\""));
        assert!(extra.contains(ADMIN_TOKEN_ENV));
        assert!(extra.contains("[verticals.auto_insurance.features]"));
    }
}
