//! AI routing end to end, on real sockets: the award by expected value (cold start), a
//! model set served and swapped through `POST /admin/models` (and refused when broken),
//! training from the ledger (refused with too little data), and continuous learning
//! recording its decision in the ledger.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::*;
use pingpost::ai::train::{train_binary, Dataset, TrainParams};
use pingpost::core::model::manifest::ModelKind;
use pingpost::core::model::xgb::XgbModel;
use proto::seller::PostStatus;
use serde_json::{json, Value};

/// Lead features (age, credit) and context (hour, weekday, seller), then buyer features.
const FEATURES: &str = r#"
[verticals.auto_insurance.features]
version = 1
lead = [
  { field = "age", kind = "numeric" },
  { field = "credit", kind = "categorical", categories = ["poor", "fair", "good", "excellent"] },
]
context = ["hour_of_day", "day_of_week", "seller"]
buyer = ["buyer", "acceptance_rate", "return_rate", "bid_ratio"]

[verticals.auto_insurance.fields]"#;
const LEAD_LEN: usize = 5;
const ALL_LEN: usize = 9;

fn with_features(extra_learning: &'static str) -> impl FnOnce(String) -> String {
    move |t: String| {
        let t = t.replace("[verticals.auto_insurance.fields]", FEATURES);
        t.replace("[learning]\n", &format!("[learning]\n{extra_learning}\n"))
    }
}

/// Whether `/metrics` text `m` holds every outcome's `pingpost_retrainings_total` series
/// for `vertical`.
fn retraining_series_shown(m: &str, vertical: &str) -> bool {
    ["promoted", "kept", "refused", "failed", "ledger_failed"]
        .iter()
        .all(|outcome| {
            m.lines().any(|l| {
                l.starts_with("pingpost_retrainings_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && l.contains(&format!("vertical=\"{vertical}\""))
            })
        })
}

/// An exchange with features on and `learning` under `[learning]`, and its one buyer,
/// `fickle`, bidding 10.00 (keep the handle: it serves the buyer).
async fn fickle_with_features(
    learning: &'static str,
) -> (
    std::sync::Arc<ScriptedBidder>,
    Exchange,
    bidder_sdk::ServerHandle,
) {
    let fickle = ScriptedBidder::bidding(10.0);
    let (bf, handle) = serve("fickle", &fickle).await;
    let ex = TestConfig::new()
        .buyer(bf)
        .start_edited(with_features(learning))
        .await;
    (fickle, ex, handle)
}

/// A model over `ncols` features that learned p = f(column `col` > 0.5).
fn model_json(ncols: usize, col: usize) -> Vec<u8> {
    model_json_when(ncols, col, true)
}

/// A model that learned p = f(column `col` > 0.5) when `above`, else f(column < 0.5).
fn model_json_when(ncols: usize, col: usize, above: bool) -> Vec<u8> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..400 {
        for c in 0..ncols {
            x.push(((i * 7 + c * 3) % 11) as f32 / 10.0);
        }
        y.push(if (x[i * ncols + col] > 0.5) == above {
            1.0
        } else {
            0.0
        });
    }
    let params = TrainParams {
        rounds: 10,
        max_depth: 3,
        ..TrainParams::default()
    };
    train_binary(&Dataset { ncols, x, y }, &params).expect("trains")
}

/// 60 pings, each posted, the buyer rejecting every third post; the ledger flushed.
async fn sixty_posts_every_third_rejected(fickle: &ScriptedBidder, ex: &Exchange) {
    for i in 0..60 {
        fickle.set(|s| s.accept = i % 3 != 0);
        let q = ex.client.ping("TX").await;
        let _ = ex.client.post(&q.ping_id, "TX").await;
    }
    ex.state.ledger.flush().await.unwrap();
}

/// Asserts `pingpost_retrainings_total` of the test vertical for each `(outcome, n)`.
fn assert_retrainings(metrics: &str, want: &[(&str, f64)]) {
    for &(outcome, n) in want {
        assert_eq!(
            metric_value(
                metrics,
                "pingpost_retrainings_total",
                &[("vertical", VERTICAL), ("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
}

/// Imports a model set with `pingpost models import`'s code path.
fn import(
    ex: &Exchange,
    version: &str,
    realization: Option<Vec<u8>>,
    lead: Option<Vec<u8>>,
) -> i32 {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, b: &Option<Vec<u8>>| {
        b.as_ref().map(|b| {
            let p = dir.path().join(name);
            std::fs::write(&p, b).unwrap();
            p
        })
    };
    let r = write("r.json", &realization);
    let l = write("l.json", &lead);
    pingpost::models::cli::import(
        Some(&ex.config_path),
        None,
        VERTICAL,
        version,
        r.as_deref(),
        l.as_deref(),
    )
}

async fn swap(ex: &Exchange, body: Value) -> Reply {
    ex.admin
        .post_json_with("/admin/models", ADMIN_TOKEN, &[], &body)
        .await
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().map_or(f32::NAN, |f| f as f32))
        .collect()
}

async fn auctions(ex: &Exchange) -> Vec<Value> {
    ex.state.ledger.flush().await.unwrap();
    ex.ledger_of("auction")
}

#[tokio::test]
async fn cold_start_moves_the_award_to_the_buyer_that_keeps_its_leads() {
    // Greedy bids 20 and rejects every post; steady bids 15 and accepts. At the prior both
    // look alike and greedy's higher bid wins; each rejection lowers its smoothed
    // acceptance until its expected value falls below steady's.
    let greedy = ScriptedBidder::bidding(20.0).scripted(|s| s.accept = false);
    let steady = ScriptedBidder::bidding(15.0);
    let (bg, _hg) = serve("greedy", &greedy).await;
    let (bs, _hs) = serve("steady", &steady).await;
    let cfg = TestConfig::new().buyer(bg).buyer(bs);
    let mut ex = cfg.start().await;
    let mut winners = Vec::new();
    for _ in 0..12 {
        let q = ex.client.ping("TX").await;
        let ping_id = q.ping_id.clone();
        winners.push(q.price);
        let _ = ex.client.post(&ping_id, "TX").await;
    }
    let recs = auctions(&ex).await;
    assert_eq!(recs.len(), 12);
    let first = &recs[0];
    assert_eq!(first["winner"], "greedy", "{first}");
    let last = recs.last().unwrap();
    assert_eq!(last["winner"], "steady", "{last}");
    // Every bid line carries the probability the award used; greedy's fell.
    let p = |r: &Value, b: &str| {
        r["buyers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["buyer"] == b)
            .and_then(|l| l["p_ppm"].as_u64())
            .unwrap()
    };
    assert_eq!(p(first, "greedy"), p(first, "steady"));
    assert!(p(last, "greedy") < p(last, "steady"), "{last}");
    // `pingpost ledger replay` re-derives both awards from the recorded probabilities.
    let cfg_now = ex.state.runtime.load().config.clone();
    for r in [first, last] {
        let id = r["auction_id"].as_str().unwrap();
        let (a, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
        let rep = pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now));
        assert!(!rep.mismatch, "{}", rep.text);
        assert!(rep.text.contains("expected value"), "{}", rep.text);
    }
    // The quote follows the winner: steady's 15 at 80 %.
    assert_eq!(winners.last().copied().flatten(), Some(usd(12.0)));
    assert!(steady.posts() >= 1);

    // A restart on the same ledger rebuilds the rates from it: greedy stays low.
    let key = |st: &pingpost::state::AppState, id: &str| st.ids.buyer_key(id).unwrap();
    let before = ex.state.stats.outcomes(key(&ex.state, "greedy"));
    assert!(before.posts > 6.5 && before.accepts == 0.0, "{before:?}");
    let steady_before = ex.state.stats.outcomes(key(&ex.state, "steady"));
    ex.shutdown().await;
    // A copy of the ledger (the first exchange's state still holds its lock).
    let copy = tempfile::tempdir().unwrap();
    let ledger = copy.path().join("ledger");
    std::fs::create_dir_all(&ledger).unwrap();
    for f in std::fs::read_dir(&ex.ledger_path).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), ledger.join(f.file_name())).unwrap();
    }
    let config = cfg.load(&ledger);
    let again = tokio::time::timeout(EVENT_WAIT_MAX, async {
        loop {
            match pingpost::app::start(config.clone(), pingpost::clock::Clock::system()).await {
                Ok(r) => return r,
                Err(e) if e.to_string().contains("in use") => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    let after = again.state.stats.outcomes(key(&again.state, "greedy"));
    assert!(
        (after.posts - before.posts).abs() < 1e-9,
        "{after:?} vs {before:?}"
    );
    assert_eq!(after.accepts, 0.0);
    let steady_after = again.state.stats.outcomes(key(&again.state, "steady"));
    assert!((steady_after.accepts - steady_before.accepts).abs() < 1e-9);
}

#[tokio::test]
async fn a_buyer_that_leaves_its_posts_unaccepted_is_paused_and_a_restart_keeps_the_streak() {
    // Black-box round 25: a buyer bidding far above the others and rejecting every post
    // won lead after lead (no fallback covers its price) until its estimate fell, which
    // takes hundreds of posts. With `reject_streak_max = 3`, three in a row pause it.
    let greedy = ScriptedBidder::bidding(500.0).scripted(|s| s.accept = false);
    let steady = ScriptedBidder::bidding(10.0);
    let (bg, _hg) = serve("greedy", &greedy).await;
    let (bs, _hs) = serve("steady", &steady).await;
    let cfg = TestConfig::new().buyer(bg).buyer(bs);
    let ex = cfg
        .start_edited(|t| {
            t.replacen(
                "explore_share = 0\n",
                "explore_share = 0\nreject_streak_max = 3\n",
                1,
            )
        })
        .await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let q = ex.client.ping("TX").await;
        answers.push(ex.client.post(&q.ping_id, "TX").await);
    }
    assert_eq!(greedy.posts(), 3, "three rejections, then paused");
    for a in &answers[..3] {
        assert_eq!(a.status, PostStatus::Unsold, "{a:?}");
    }
    for a in &answers[3..] {
        assert_eq!(a.status, PostStatus::Sold, "{a:?}");
    }
    assert_eq!(steady.posts(), 2);
    let recs = auctions(&ex).await;
    let line = |r: &Value, b: &str| {
        r["buyers"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["buyer"] == b))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(recs[2]["winner"], "greedy");
    assert_eq!(recs[3]["winner"], "steady", "{}", recs[3]);
    assert_eq!(line(&recs[3], "greedy")["p_ppm"], 0, "{}", recs[3]);
    assert_eq!(line(&recs[3], "greedy")["outcome"], "bid");
    // The estimate the pause set aside is recorded beside it (black-box round 62a: a p
    // the award changed could not be told from an estimate); a p that is the estimate
    // has none.
    let est = line(&recs[3], "greedy")["p_est_ppm"].as_u64();
    assert!(est.is_some_and(|e| e > 0), "{}", recs[3]);
    assert!(
        line(&recs[3], "steady").get("p_est_ppm").is_none(),
        "{}",
        recs[3]
    );
    // The award replays from the recorded probabilities, and says why greedy's is 0.
    let cfg_now = ex.state.runtime.load().config.clone();
    let id = recs[3]["auction_id"].as_str().unwrap_or_default();
    let (a, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
    let rep = pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now));
    assert!(!rep.mismatch, "{}", rep.text);
    assert!(
        rep.text
            .contains("its buyer is paused for a streak of posts not accepted"),
        "{}",
        rep.text
    );

    // A restart rebuilds the streak from the ledger, with the time of its latest post.
    let key = |st: &pingpost::state::AppState, id: &str| st.ids.buyer_key(id).unwrap();
    let before = ex.state.stats.streak(key(&ex.state, "greedy"));
    assert_eq!(before.0, 3);
    assert!(before.1 > 0);
    assert_eq!(ex.state.stats.streak(key(&ex.state, "steady")).0, 0);
    let (_copy, again) = restart_on_copy(&cfg, &ex).await;
    assert_eq!(
        again.state.stats.streak(key(&again.state, "greedy")),
        before
    );
}

/// Starts a second exchange on a copy of `ex`'s ledger (the first still holds its lock).
async fn restart_on_copy(
    cfg: &TestConfig,
    ex: &Exchange,
) -> (tempfile::TempDir, pingpost::app::Running) {
    let copy = tempfile::tempdir().unwrap();
    let ledger = copy.path().join("ledger");
    std::fs::create_dir_all(&ledger).unwrap();
    for f in std::fs::read_dir(&ex.ledger_path).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), ledger.join(f.file_name())).unwrap();
    }
    let config = cfg.load(&ledger);
    let running = tokio::time::timeout(EVENT_WAIT_MAX, async {
        loop {
            match pingpost::app::start(config.clone(), pingpost::clock::Clock::system()).await {
                Ok(r) => return r,
                Err(e) if e.to_string().contains("in use") => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    (copy, running)
}

#[tokio::test]
async fn test_leads_never_move_the_buyer_statistics_and_a_restart_rebuilds_the_same() {
    // Mid bids 15, lo 12; both accept real leads at first.
    let mid = ScriptedBidder::bidding(15.0);
    let lo = ScriptedBidder::bidding(12.0);
    let (bm, _hm) = serve("mid", &mid).await;
    let (bl, _hl) = serve("lo", &lo).await;
    let cfg = TestConfig::new().buyer(bm).buyer(bl);
    let mut ex = cfg.start().await;
    let st = ex.state.clone();
    let key = |st: &pingpost::state::AppState, id: &str| st.ids.buyer_key(id).unwrap();
    let stats =
        |st: &pingpost::state::AppState| ["mid", "lo"].map(|b| st.stats.outcomes(key(st, b)));
    let test_lead = json!({"vertical": VERTICAL, "lead": full_lead("TX"), "test": true});
    let a = ex.client.direct("TX").await;
    assert_eq!(a.price, Some(usd(12.0)), "mid's 15 at 80 %");
    let before = stats(&st);
    assert!(before[0].accepts > 0.0, "{before:?}");

    // Mid rejects a test lead (lo takes it as the fallback), then lo takes nine more.
    mid.set(|s| s.accept = false);
    for _ in 0..10 {
        let r = ex.client.post_json("/v1/leads", &test_lead).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        mid.posts() >= 2 && lo.posts() >= 9,
        "the test leads were delivered"
    );
    assert_eq!(stats(&st), before, "test leads moved the live statistics");
    // The next real lead is still quoted on mid's 15.
    mid.set(|s| s.accept = true);
    let q = ex.client.ping("TX").await;
    assert_eq!(q.price, Some(usd(12.0)));

    // A mix of real posts (some rejected, one unsold) and test posts.
    for i in 0..8 {
        mid.set(|s| s.accept = i % 3 != 0);
        lo.set(|s| s.accept = i % 2 == 0);
        let _ = ex.client.direct("TX").await;
        let r = ex.client.post_json("/v1/leads", &test_lead).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    ex.state.ledger.flush().await.unwrap();
    let live = stats(&st);
    let live_priors = st.stats.priors();
    ex.shutdown().await;
    let (_copy, again) = restart_on_copy(&cfg, &ex).await;
    let rebuilt = stats(&again.state);
    for (l, r) in live.iter().zip(rebuilt.iter()) {
        assert!(
            (l.posts - r.posts).abs() < 1e-9
                && (l.accepts - r.accepts).abs() < 1e-9
                && (l.returns - r.returns).abs() < 1e-9,
            "live {live:?} != rebuilt {rebuilt:?}"
        );
    }
    let p = again.state.stats.priors();
    assert!(
        (p.acceptance - live_priors.acceptance).abs() < 1e-9
            && (p.return_rate - live_priors.return_rate).abs() < 1e-9,
        "{p:?} vs {live_priors:?}"
    );
}

#[tokio::test]
async fn a_served_model_decides_scores_and_is_recorded_and_swaps_refuse_broken_models() {
    let a = ScriptedBidder::bidding(10.0);
    let b = ScriptedBidder::bidding(12.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let (bb, _hb) = serve("bravo", &b).await;
    // Charlie takes only leads scoring 50 or more.
    let c = ScriptedBidder::bidding(30.0);
    let (bc, _hc) = serve("charlie", &c).await;
    let ex = TestConfig::new()
        .buyer(ba)
        .buyer(bb)
        .buyer(bc)
        .start_edited(|t| {
            with_features("watch_ms = 0")(t)
                .replace("[buyers.charlie]\n", "[buyers.charlie]\nscore_floor = 50\n")
        })
        .await;
    let gen0 = ex.state.generation();

    // No model yet: no score, cold start, features recorded.
    let q = ex.client.ping("TX").await;
    assert_eq!(q.score, None);
    assert_eq!(c.pings(), 1, "no score: the floor does not apply");
    let r = auctions(&ex).await.pop().unwrap();
    assert_eq!(floats(&r["x"]).len(), LEAD_LEN);
    assert_eq!(r["features_version"], 1);
    assert!(r.get("models").is_none());

    // A set with both models: served after the swap.
    let realization = model_json(ALL_LEN, LEAD_LEN + 3); // bid_ratio decides
                                                         // The lead score: high for a young lead, low for this one (age 42).
    let lead = model_json_when(LEAD_LEN, 0, false);
    assert_eq!(
        import(&ex, "m1", Some(realization.clone()), Some(lead.clone())),
        0
    );
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "m1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["generation"], gen0 + 1);
    assert_eq!(ex.state.generation(), gen0 + 1);
    let champion = std::fs::read_to_string(
        ex.ledger_path
            .with_file_name("models")
            .join(VERTICAL)
            .join("CHAMPION"),
    )
    .unwrap();
    assert_eq!(champion, "m1");

    let q = ex.client.ping("TX").await;
    let r = auctions(&ex).await.pop().unwrap();
    assert_eq!(
        r["models"],
        json!({"lead_score": "m1", "realization": "m1"})
    );
    assert_eq!(r["generation"], gen0 + 1);
    let x = floats(&r["x"]);
    let lm = XgbModel::from_json(&lead).unwrap();
    let want_score = (f64::from(lm.predict(&x)) * 100.0).round() as u8;
    assert_eq!(q.score, Some(want_score));
    assert_eq!(r["score"], want_score);
    // The buyers saw the score in the ping; charlie's floor kept it out.
    assert!(want_score < 50, "{want_score}");
    assert_eq!(b.ping_log().last().unwrap().score, Some(want_score));
    assert_eq!(c.pings(), 1, "below its score_floor: not pinged");
    assert_eq!(r["skipped"]["by_reason"]["score_floor"], 1, "{r}");
    // Each bid's probability is the model's on the recorded features.
    let rm = XgbModel::from_json(&realization).unwrap();
    for line in r["buyers"].as_array().unwrap() {
        let mut row = x.clone();
        row.extend(floats(&line["bx"]));
        assert_eq!(row.len(), ALL_LEN);
        let p = rm.predict(&row);
        let want = (f64::from(p).clamp(0.0, 1.0) * 1e6).round() as u64;
        assert_eq!(line["p_ppm"].as_u64(), Some(want), "{line}");
    }

    // Broken swaps: each refused with its reason; m1 keeps serving.
    let models_dir = ex.ledger_path.with_file_name("models").join(VERTICAL);
    let bad_dir = |name: &str| {
        let src = models_dir.join("m1");
        let dst = models_dir.join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for f in std::fs::read_dir(&src).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
        }
        dst
    };
    let refused = |reply: &Reply, needle: &str| {
        let body = reply.assert_error(400, "invalid_request");
        assert!(body.to_string().contains(needle), "{needle}: {body}");
    };
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "nope"})).await,
        "no model set",
    );
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "../../etc"})).await,
        "not a model version",
    );
    for reserved in ["CHAMPION", "HISTORY"] {
        refused(
            &swap(&ex, json!({"vertical": VERTICAL, "version": reserved})).await,
            "is not a model version: 1-64 of A-Z a-z 0-9 . _ -, not starting with a dot, not CHAMPION or HISTORY",
        );
    }
    refused(
        &swap(&ex, json!({"vertical": "mortgage", "version": "m1"})).await,
        "unknown vertical",
    );
    // A long name is shown cut, and says it is (black-box round 209a: 64 characters and
    // no `…`, like a name of exactly 64).
    let long = "z".repeat(300);
    refused(
        &swap(&ex, json!({"vertical": long, "version": long})).await,
        &format!("unknown vertical \\\"{}…\\\"", "z".repeat(64)),
    );
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": long})).await,
        &format!("version \\\"{}…\\\" is not a model version", "z".repeat(64)),
    );
    refused(
        &swap(&ex, json!({"vertical": VERTICAL})).await,
        "is required",
    );
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": 3})).await,
        "string or null",
    );
    // Sent as null, said so (black-box round 106a: "must be a string").
    refused(
        &swap(&ex, json!({"vertical": null, "version": "m1"})).await,
        "vertical: is required; null counts as not sent",
    );
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "m1", "x": 1})).await,
        "unknown field",
    );
    refused(&swap(&ex, json!([1])).await, "JSON object");
    // A set that loads, but whose champion cannot be recorded (`HISTORY` is a directory,
    // as a full disk would fail it): the exchange's failure, `500 internal`, not a
    // problem of the request (black-box round 90b: answered `400`); m1 keeps serving.
    let d = bad_dir("unrecorded");
    fix_manifest_version(&d, "unrecorded");
    let history = models_dir.join("HISTORY");
    let kept = std::fs::read(&history).ok();
    let _ = std::fs::remove_file(&history);
    std::fs::create_dir(&history).unwrap();
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "unrecorded"})).await;
    let body = reply.assert_error(500, "internal").to_string();
    assert!(body.contains("could not record the champion"), "{body}");
    std::fs::remove_dir(&history).unwrap();
    if let Some(k) = kept {
        std::fs::write(&history, k).unwrap();
    }
    assert_eq!(
        ex.state.runtime.load().models[0]
            .as_ref()
            .map(|m| m.version.clone()),
        Some("m1".to_string())
    );
    // Truncated model file.
    let d = bad_dir("truncated");
    let text = std::fs::read(d.join("realization.json")).unwrap();
    std::fs::write(d.join("realization.json"), &text[..text.len() / 2]).unwrap();
    fix_manifest_version(&d, "truncated");
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "truncated"})).await,
        "realization.json",
    );
    // A model file of no trees (black-box round 128b: swapped in, every buyer's p read
    // 0.5 and the award ranked by bid alone).
    let d = bad_dir("treeless");
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(d.join("realization.json")).unwrap()).unwrap();
    let gb = &mut m["learner"]["gradient_booster"]["model"];
    gb["trees"] = json!([]);
    gb["tree_info"] = json!([]);
    gb["gbtree_model_param"]["num_trees"] = json!("0");
    std::fs::write(d.join("realization.json"), m.to_string()).unwrap();
    fix_manifest_version(&d, "treeless");
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "treeless"})).await,
        "no trees",
    );
    // A truncated model file does not hide its manifest's problems: every one is listed.
    let d = bad_dir("many");
    let text = std::fs::read(d.join("realization.json")).unwrap();
    std::fs::write(d.join("realization.json"), &text[..text.len() / 2]).unwrap();
    fix_manifest_version(&d, "many");
    let mp = d.join("realization.manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    m["features_version"] = json!(7);
    m["vertical"] = json!("boats");
    std::fs::write(&mp, m.to_string()).unwrap();
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "many"})).await;
    let body = reply.assert_error(400, "invalid_request").to_string();
    for needle in ["realization.json", "encoding version 7", "boats"] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    // A missing manifest does not hide its model file's problem either.
    let d = bad_dir("nomanifest");
    std::fs::remove_file(d.join("lead_score.manifest.json")).unwrap();
    std::fs::write(d.join("lead_score.json"), b"{\"learner\":").unwrap();
    fix_manifest_version(&d, "nomanifest");
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "nomanifest"})).await;
    let body = reply.assert_error(400, "invalid_request").to_string();
    for needle in ["lead_score.manifest.json: missing", "lead_score.json: "] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    // An unknown field does not hide the set's own problems (black-box round 15: the
    // answer listed only the unknown field).
    let reply = swap(
        &ex,
        json!({"vertical": VERTICAL, "version": "many", "zz": 1}),
    )
    .await;
    let body = reply.assert_error(400, "invalid_request").to_string();
    for needle in ["zz", "realization.json", "encoding version 7", "boats"] {
        assert!(body.contains(needle), "{needle}: {body}");
    }
    // A name twice in one object is refused, as on every route, and serves nothing (before:
    // the last one counted, and the champion was rewritten to it).
    let reply = ex
        .admin
        .send(
            hyper::Method::POST,
            "/admin/models",
            Some(ADMIN_TOKEN),
            Some("application/json"),
            &[],
            format!(r#"{{"vertical":"{VERTICAL}","version":"nope","version":"m1"}}"#),
        )
        .await;
    let body = reply.assert_error(400, "invalid_request").to_string();
    assert!(body.contains("appears more than once"), "{body}");
    // A body with several problems lists each.
    let reply = swap(
        &ex,
        json!({"vertical": "boats", "version": "../etc", "extra": 1}),
    )
    .await;
    let body = reply.assert_error(400, "invalid_request");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    for f in ["extra", "vertical", "version"] {
        assert!(fields.contains(&f), "{f}: {body}");
    }
    // A control character in a version is echoed as `?`, never dropped (black-box round
    // 46: "v\u0000x" was echoed as "vx", a valid name), and at most 64 characters of it.
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "v\u{0}x"})).await;
    let body = reply.assert_error(400, "invalid_request").to_string();
    assert!(
        body.contains(r#"version \"v?x\" is not a model version"#),
        "{body}"
    );
    let reply = swap(
        &ex,
        json!({"vertical": VERTICAL, "version": "w".repeat(300)}),
    )
    .await;
    let body = reply.assert_error(400, "invalid_request").to_string();
    assert!(body.contains(&"w".repeat(64)), "{body}");
    assert!(!body.contains(&"w".repeat(65)), "{body}");
    // A lead-score model whose leaves can sum past a float's range (an infinite or NaN
    // score) is refused at swap and at import.
    let mut huge: Value = serde_json::from_slice(&lead).unwrap();
    for t in huge["learner"]["gradient_booster"]["model"]["trees"]
        .as_array_mut()
        .unwrap()
    {
        let left = t["left_children"].as_array().unwrap().clone();
        let conds = t["split_conditions"].as_array_mut().unwrap();
        for (i, l) in left.iter().enumerate() {
            if l.as_i64() == Some(-1) {
                conds[i] = json!(if i % 2 == 0 { 3e38 } else { -3e38 });
            }
        }
    }
    let huge = huge.to_string().into_bytes();
    let hm = XgbModel::from_json(&huge).unwrap();
    assert!(hm.margin_bound() > 1e38);
    let d = bad_dir("overflow");
    std::fs::write(d.join("lead_score.json"), &huge).unwrap();
    fix_manifest_version(&d, "overflow");
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "overflow"})).await,
        "too large",
    );
    assert_eq!(import(&ex, "m3", None, Some(huge)), 1);
    assert!(!models_dir.join("m3").exists());
    // Oversized model file (sparse: over the limit without writing it).
    let d = bad_dir("huge");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("lead_score.json"))
        .unwrap();
    f.set_len((pingpost::core::model::xgb::MODEL_BYTES_MAX + 10) as u64)
        .unwrap();
    fix_manifest_version(&d, "huge");
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "huge"})).await,
        "limit",
    );
    // A model whose features do not match: trained on one column too few.
    let d = bad_dir("narrow");
    std::fs::write(d.join("realization.json"), model_json(ALL_LEN - 1, 0)).unwrap();
    fix_manifest_version(&d, "narrow");
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "narrow"})).await,
        "takes 8 features",
    );
    // A manifest of another encoding version.
    let d = bad_dir("oldenc");
    fix_manifest_version(&d, "oldenc");
    let mp = d.join("realization.manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mp).unwrap()).unwrap();
    m["features_version"] = json!(7);
    std::fs::write(&mp, m.to_string()).unwrap();
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "oldenc"})).await,
        "encoding version 7",
    );
    // A model whose output is a margin, not a probability (black-box round 152b: served,
    // its margins cut to 1 and 1,000,000 ppm): refused by a swap and by import.
    let raw = String::from_utf8(model_json(ALL_LEN, 0))
        .unwrap()
        .replace("binary:logistic", "binary:logitraw");
    assert!(raw.contains("binary:logitraw"));
    assert_eq!(
        XgbModel::from_json(raw.as_bytes()).unwrap().objective(),
        pingpost::core::model::xgb::Objective::RawMargin
    );
    let d = bad_dir("logitraw");
    std::fs::write(d.join("realization.json"), &raw).unwrap();
    fix_manifest_version(&d, "logitraw");
    refused(
        &swap(&ex, json!({"vertical": VERTICAL, "version": "logitraw"})).await,
        "binary:logitraw",
    );
    assert_eq!(import(&ex, "m4", Some(raw.into_bytes()), None), 1);
    assert!(!models_dir.join("m4").exists());
    // Import refuses a model of the wrong width too, and writes nothing.
    assert_eq!(import(&ex, "m2", Some(model_json(3, 0)), None), 1);
    assert!(!models_dir.join("m2").exists());

    assert_eq!(ex.state.generation(), gen0 + 1, "refusals change nothing");
    let _ = ex.client.ping("TX").await;
    let r = auctions(&ex).await.pop().unwrap();
    assert_eq!(r["models"]["realization"], "m1");

    // A reload whose features no longer match the serving model is refused.
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    ex.write_config_text(&text.replace("version = 1\nlead", "version = 2\nlead"));
    let reply = ex.reload().await;
    refused(&reply, "features");
    assert_eq!(ex.state.generation(), gen0 + 1);
    // With a setting that needs a restart as well: both problems in the one answer.
    let both = text
        .replace("version = 1\nlead", "version = 2\nlead")
        .replace(
            "header_read_timeout_ms = 5000",
            "header_read_timeout_ms = 4000",
        );
    assert_ne!(both, text);
    ex.write_config_text(&both);
    let body = ex.reload().await.assert_error(400, "invalid_request");
    let fields: Vec<&str> = body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"server.header_read_timeout_ms")
            && fields.iter().any(|f| f.ends_with(".features")),
        "every problem at once: {body}"
    );
    assert_eq!(ex.state.generation(), gen0 + 1);

    // Version null: no model, cold start again.
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": null})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let q = ex.client.ping("TX").await;
    assert_eq!(q.score, None);
    let r = auctions(&ex).await.pop().unwrap();
    assert!(r.get("models").is_none());
}

/// Points a copied set's manifests at its own directory name.
/// A copy of the ledger files in `from` (one level, files only), each passed through
/// `edit` (its file name, its bytes) on the way.
fn copy_ledger(from: &Path, edit: impl Fn(&str, &mut Vec<u8>)) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let mut bytes = std::fs::read(&path).unwrap();
            edit(&name, &mut bytes);
            std::fs::write(to.path().join(&name), bytes).unwrap();
        }
    }
    to
}

fn fix_manifest_version(dir: &Path, version: &str) {
    for kind in ModelKind::ALL {
        let p = dir.join(format!("{}.manifest.json", kind.as_str()));
        if let Ok(b) = std::fs::read(&p) {
            let mut m: Value = serde_json::from_slice(&b).unwrap();
            m["version"] = json!(version);
            std::fs::write(&p, m.to_string()).unwrap();
        }
    }
}

#[tokio::test]
async fn training_refuses_too_little_data_then_trains_from_the_ledger() {
    let (fickle, ex, _hf) = fickle_with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5").await;
    let cfg = ex.state.runtime.load().config.clone();
    let now = || chrono::Utc::now().timestamp_millis();
    let e = pingpost::models::train::train_vertical(&cfg, &ex.ledger_path, VERTICAL, now(), None)
        .unwrap_err();
    assert!(e.contains("too little data: 0 examples"), "{e}");
    assert!(e.contains("at least 10"), "{e}");

    // Posts accepted and rejected in turn: both classes.
    sixty_posts_every_third_rejected(&fickle, &ex).await;
    let (out, heldout) =
        pingpost::models::train::train_vertical(&cfg, &ex.ledger_path, VERTICAL, now(), Some("t1"))
            .unwrap();
    let real = out.models.iter().find(|m| m.kind == "realization").unwrap();
    assert_eq!(real.examples, 60);
    assert_eq!(real.train_rows + real.heldout_rows, 60);
    assert!(real.logloss.is_some(), "{out:?}");
    assert_eq!(heldout.realization.len(), real.heldout_rows);
    // The set loads under the configuration and its manifest names the window.
    let v = &cfg.verticals[0];
    let set = pingpost::models::load_set(&cfg.learning, v, "t1").unwrap();
    let m = &set.realization.as_ref().unwrap().manifest;
    assert_eq!(m.train_rows, Some(real.train_rows as u64));
    assert!(m.window.is_some());
    let h = m.heldout.as_ref().unwrap();
    assert_eq!(h.rows, real.heldout_rows as u64);
    assert!(!h.calibration.is_empty());
    // A second run under the same name is refused rather than overwriting it.
    let e =
        pingpost::models::train::train_vertical(&cfg, &ex.ledger_path, VERTICAL, now(), Some("t1"))
            .unwrap_err();
    assert!(e.contains("already exists"), "{e}");
}

#[tokio::test]
async fn continuous_learning_retrains_promotes_and_records_its_decision() {
    let (fickle, ex, _hf) =
        fickle_with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5\nretrain_every_s = 1").await;
    // With learning on, every outcome's series is there from the start (black-box round
    // 130a: none until the first retraining).
    let m = ex.metrics().await;
    assert!(retraining_series_shown(&m, VERTICAL), "{m}");
    sixty_posts_every_third_rejected(&fickle, &ex).await;
    // The learning thread retrains within a few seconds; bounded wait on the record.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let decision = loop {
        ex.state.ledger.flush().await.unwrap();
        if let Some(d) = ex.ledger_of("model_decision").into_iter().next() {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no model_decision within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(decision["vertical"], VERTICAL);
    assert_eq!(decision["promoted"], true, "{decision}");
    assert!(
        decision.get("champion").is_none(),
        "no champion before: {decision}"
    );
    let version = decision["challenger"].as_str().unwrap().to_string();
    // It serves: the runtime carries it and auctions record it.
    let rt = ex.state.runtime.load();
    assert_eq!(
        rt.models[0].as_ref().map(|m| m.version.clone()),
        Some(version.clone())
    );
    let _ = ex.client.ping("TX").await;
    let r = auctions(&ex).await.pop().unwrap();
    assert_eq!(r["models"]["realization"], version);
}

#[tokio::test]
async fn the_binary_trains_lists_imports_and_rolls_back() {
    let (fickle, ex, _hf) = fickle_with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5").await;
    let bin = env!("CARGO_BIN_EXE_pingpost");
    let cfg = ex.config_path.to_string_lossy().to_string();
    let ledger = ex.ledger_path.to_string_lossy().to_string();
    let env = TestConfig::new().env_vars();
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(args)
            .envs(env.clone())
            .output()
            .unwrap()
    };
    // An unusable input: exit 2, with what stderr says.
    let refused = |dir: &Path| {
        let out = run(&["train", "--config", &cfg, "--ledger", dir.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        err
    };
    // Nothing to roll back to yet: exit 1, and nothing made to say so (black-box round
    // 111a: the vertical's directory and its `.lock` were created).
    let vertical_dir = ex.ledger_path.with_file_name("models").join(VERTICAL);
    assert!(!vertical_dir.exists());
    let out = run(&[
        "models",
        "rollback",
        "--config",
        &cfg,
        "--vertical",
        VERTICAL,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no earlier model version") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!vertical_dir.exists(), "a refused rollback made nothing");
    // Too little data: exit 1 with the counts.
    let out = run(&["train", "--config", &cfg, "--ledger", &ledger]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too little data: 0 examples"), "{err}");
    // stdout says so too, one JSON line for the vertical.
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line on stdout");
    assert_eq!(line["vertical"], VERTICAL, "{line}");
    assert!(
        line["refused"]
            .as_str()
            .is_some_and(|r| r.contains("too little data: 0 examples")),
        "{line}"
    );
    // A bad argument or an unusable input: exit 2 (1 is only for too little data).
    let out = run(&["train", "--config", &cfg, "--vertical", "mortgage"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&[
        "train",
        "--config",
        &cfg,
        "--ledger",
        &ledger,
        "--version",
        "../evil",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = format!("{ledger}/no-such-dir");
    let out = run(&["train", "--config", &cfg, "--ledger", &missing]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A directory that holds no ledger is an unusable input too, and the way out names
    // train's own flag (black-box round 88a: exit 1, and `--dir`).
    let empty = tempfile::tempdir().unwrap();
    let err = refused(empty.path());
    assert!(
        err.contains("holds no ledger") && err.contains("with --ledger DIR"),
        "{err}"
    );
    assert!(!err.contains("--dir"), "{err}");

    sixty_posts_every_third_rejected(&fickle, &ex).await;
    // The vertical's directory under models_dir is a file: an unusable input, said
    // before training, and nothing made (black-box round 128b: "File exists (os error
    // 17)", exit 1, after training).
    std::fs::create_dir_all(vertical_dir.parent().unwrap()).unwrap();
    std::fs::write(&vertical_dir, b"not a directory").unwrap();
    let out = run(&["train", "--config", &cfg, "--ledger", &ledger]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{} is not a directory", vertical_dir.display())),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(vertical_dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        [std::ffi::OsString::from(VERTICAL)],
        "nothing else made"
    );
    std::fs::remove_file(&vertical_dir).unwrap();
    // A symbolic link to nothing there, or a file in place of the models directory above
    // it: the same, before training (black-box round 131a: trained, then "File exists",
    // exit 1).
    std::os::unix::fs::symlink("/nonexistent-pingpost-models", &vertical_dir).unwrap();
    let out = run(&["train", "--config", &cfg, "--ledger", &ledger]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{} is a symbolic link to nothing",
            vertical_dir.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&vertical_dir).unwrap();
    let models_dir = vertical_dir.parent().unwrap();
    std::fs::remove_dir(models_dir).unwrap();
    std::fs::write(models_dir, b"not a directory").unwrap();
    let out = run(&["train", "--config", &cfg, "--ledger", &ledger]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{} is not a directory", models_dir.display())),
        "{err}"
    );
    std::fs::remove_file(models_dir).unwrap();
    let mut versions = Vec::new();
    for v in ["b1", "b2"] {
        let out = run(&[
            "train",
            "--config",
            &cfg,
            "--ledger",
            &ledger,
            "--version",
            v,
            "--promote",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["version"], v);
        versions.push(line);
    }
    // An existing version is a bad argument too.
    let out = run(&[
        "train",
        "--config",
        &cfg,
        "--ledger",
        &ledger,
        "--version",
        "b1",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // The vertical's own files' names are no version (black-box round 214c: `--version
    // CHAMPION` made a directory of that name, and every later promotion failed on it).
    for v in ["CHAMPION", "HISTORY"] {
        let out = run(&[
            "train",
            "--config",
            &cfg,
            "--ledger",
            &ledger,
            "--version",
            v,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{v}: {err}");
        assert!(
            err.contains("is not a model version name") && err.contains("not CHAMPION or HISTORY"),
            "{v}: {err}"
        );
    }
    let champion = vertical_dir.join("CHAMPION");
    assert!(champion.is_file(), "{}", champion.display());
    // A ledger that does not verify (one changed byte) is unusable, not too little data.
    let changed = copy_ledger(&ex.ledger_path, |_, bytes| {
        let text = String::from_utf8_lossy(bytes).to_string();
        if let Some(at) = text.find(r#""type":"auction""#) {
            bytes[at + 14] = b'N'; // "auctioN": same length, another checksum
        }
    });
    let err = refused(changed.path());
    assert!(err.contains("does not verify"), "{err}");
    // Records removed from the end, which only HEAD tells (the chain that is left
    // verifies): unusable too (black-box round 88b: exit 1, as if too little data).
    let cut = copy_ledger(&ex.ledger_path, |name, bytes| {
        if name.starts_with("seg-") {
            let half = bytes.iter().filter(|b| **b == b'\n').count() / 2;
            let keep = bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(half)
                .map(|(i, _)| i + 1)
                .unwrap();
            bytes.truncate(keep);
        }
    });
    let err = refused(cut.path());
    assert!(
        err.contains("does not verify") && err.contains("HEAD"),
        "{err}"
    );
    // A line that is not a record, its chain computed as the exchange computes it
    // (black-box round 152b: it was skipped, and the training said "too little data",
    // exit 1, where `ledger verify` fails the ledger): unusable.
    let forged = tempfile::tempdir().unwrap();
    let deep = format!(
        r#"{{"type":"auction","v":5,"vertical":"{VERTICAL}","x":{}1{}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    std::fs::write(
        forged
            .path()
            .join(pingpost::ledger::segments::segment_name(1)),
        pingpost::ledger::segments::frame_all([deep]),
    )
    .unwrap();
    let err = refused(forged.path());
    assert!(
        err.contains("does not verify")
            && err.contains("seg-00000001.jsonl:1: not a readable record"),
        "{err}"
    );
    // Every record written twice, the chain computed as the exchange computes it: the
    // chain verifies, the records do not reconcile (each lead sold twice), and training
    // refuses it as `ledger verify` fails it (black-box round 206a: it trained, exit 0,
    // on doubled realization examples with a held-out log loss of 0.0006).
    let doubled = tempfile::tempdir().unwrap();
    let mut records = Vec::new();
    for seg in pingpost::ledger::segments::list(&ex.ledger_path).unwrap() {
        for line in std::fs::read_to_string(&seg.1).unwrap().lines() {
            let body = &line[..line.rfind(r#","seq":"#).unwrap()];
            records.push(format!("{body}}}"));
            records.push(format!("{body}}}"));
        }
    }
    std::fs::write(
        doubled
            .path()
            .join(pingpost::ledger::segments::segment_name(1)),
        pingpost::ledger::segments::frame_all(&records),
    )
    .unwrap();
    let err = refused(doubled.path());
    assert!(
        err.contains("does not verify")
            && err.contains("its records do not reconcile")
            && err.contains("sold twice"),
        "{err}"
    );
    // The first became the champion (none served); the second only if it beat it.
    assert_eq!(versions[0]["promoted"], true, "{}", versions[0]);
    let champion_file = ex
        .ledger_path
        .with_file_name("models")
        .join(VERTICAL)
        .join("CHAMPION");
    let champion = std::fs::read_to_string(&champion_file).unwrap();
    let promoted_second = versions[1]["promoted"] == true;
    assert_eq!(champion, if promoted_second { "b2" } else { "b1" });
    // `--promote` takes the vertical's `.lock` before it reads `CHAMPION` and holds it to
    // the write, so no other process promotes in between (the exchange's retraining
    // holds it too): with the lock held elsewhere past the wait, nothing is compared or
    // written (before, it read and compared, and only its write waited).
    {
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(champion_file.with_file_name(".lock"))
            .unwrap();
        lock.lock().unwrap();
        let out = run(&[
            "train",
            "--config",
            &cfg,
            "--ledger",
            &ledger,
            "--version",
            "blocked",
            "--promote",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("not promoted: the vertical's lock cannot be taken")
                && err.contains("held by another process"),
            "{err}"
        );
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["promoted"], false, "{line}");
        assert_eq!(std::fs::read_to_string(&champion_file).unwrap(), champion);
        // A rollback waits as long, then names the file once (black-box round 228a:
        // twice).
        let out = run(&[
            "models",
            "rollback",
            "--config",
            &cfg,
            "--vertical",
            VERTICAL,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches(".lock").count(), 1, "{err}");
        assert!(err.contains("held by another process"), "{err}");
        assert_eq!(std::fs::read_to_string(&champion_file).unwrap(), champion);
    }
    // `--check-config` loads the champion as a start would (black-box round 112b: a
    // feature change the champion cannot take passed it, and the start served no model).
    let check = |config: &str| {
        std::process::Command::new(bin)
            .args(["--config", config, "--check-config"])
            .envs(env.clone())
            .env("PINGPOST_TEST_SECRET_FICKLE", "secret-of-buyer-fickle")
            .output()
            .unwrap()
    };
    let out = check(&cfg);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("would not load"), "{err}");
    let changed = ex.config_path.with_file_name("changed.toml");
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    let edited = text.replace(
        r#"categories = ["poor", "fair", "good", "excellent"]"#,
        r#"categories = ["excellent", "good", "fair", "poor"]"#,
    );
    assert_ne!(edited, text);
    std::fs::write(&changed, edited).unwrap();
    // A models directory that is a file is named as such (round 113a: told as an
    // unreadable CHAMPION).
    let file = ex.config_path.with_file_name("models-is-a-file");
    std::fs::write(&file, "hi").unwrap();
    let models_line = text
        .lines()
        .find(|l| l.starts_with("models_dir = "))
        .expect("the test configuration names its models directory");
    let at_file = ex.config_path.with_file_name("at-file.toml");
    std::fs::write(
        &at_file,
        text.replace(
            models_line,
            &format!("models_dir = {:?}", file.to_str().unwrap()),
        ),
    )
    .unwrap();
    let out = check(at_file.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("warning: learning.models_dir: ") && err.contains("is not a directory"),
        "{err}"
    );
    let out = check(changed.to_str().unwrap());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains(&format!(
            "warning: verticals.{VERTICAL}: the champion model {champion} would not load at start"
        )),
        "{err}"
    );
    // Import a third and make it the champion by the admin API, then roll back.
    let realization = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(realization.path(), model_json(ALL_LEN, 0)).unwrap();
    let realization_path = realization.path().to_string_lossy().into_owned();
    let import_args = |version: &'static str| {
        [
            "models",
            "import",
            "--config",
            cfg.as_str(),
            "--vertical",
            VERTICAL,
            "--version",
            version,
            "--realization",
            realization_path.as_str(),
        ]
    };
    let out = run(&import_args("b3"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Under `umask 000` (black-box round 124a: a model set was made world-writable, as
    // were `CHAMPION` and `HISTORY`): nothing the binary makes is writable by others.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_pingpost"))
        .args(import_args("b4-umask"))
        .envs(env.clone())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let set = champion_file.with_file_name("b4-umask");
    let mut made = vec![set.clone()];
    made.extend(std::fs::read_dir(&set).unwrap().map(|e| e.unwrap().path()));
    for p in made {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o022, 0, "{}: {mode:o}", p.display());
    }
    std::fs::remove_dir_all(&set).unwrap();
    // The same version again is a bad argument (exit 2), as `train --version` of one.
    let again = run(&import_args("b3"));
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "b3"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let out = run(&["models", "list", "--config", &cfg]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("champion b3"), "{list}");
    assert!(list.contains("* b3"), "{list}");
    let b3 = list
        .lines()
        .find(|l| l.contains("* b3 "))
        .unwrap_or_default();
    assert!(
        b3.contains("logloss -, - train rows"),
        "imported: rows unknown: {b3}"
    );
    assert!(list.contains("b1") && list.contains("auc"), "{list}");
    assert!(!list.contains("DOES NOT LOAD"), "{list}");
    // A set whose model file is broken is listed as one that cannot serve (black-box
    // round 31: it was listed like a good one).
    let sets = champion_file.parent().unwrap();
    std::fs::create_dir(sets.join("b9")).unwrap();
    for entry in std::fs::read_dir(sets.join("b3")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), sets.join("b9").join(entry.file_name())).unwrap();
    }
    std::fs::write(sets.join("b9").join("realization.json"), "{\"learner\": 7}").unwrap();
    let out = run(&["models", "list", "--config", &cfg]);
    let list = String::from_utf8_lossy(&out.stdout);
    let b9 = list
        .lines()
        .find(|l| l.contains(" b9 "))
        .unwrap_or_default();
    assert!(b9.contains("DOES NOT LOAD: "), "{list}");
    // A model's file that is a symlink to itself is refused with the system's reason,
    // never reported as missing (round 47a).
    let manifest = sets.join("b9").join("realization.manifest.json");
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink("realization.manifest.json", &manifest).unwrap();
    let out = run(&["models", "list", "--config", &cfg]);
    let list = String::from_utf8_lossy(&out.stdout);
    let b9 = list
        .lines()
        .find(|l| l.contains(" b9 "))
        .unwrap_or_default();
    assert!(
        b9.contains("DOES NOT LOAD: ") && b9.contains("symbolic links") && !b9.contains("missing"),
        "{list}"
    );
    assert_eq!(out.status.code(), Some(0), "a set that is not the champion");
    // The champion's set broken (round 119a: listed with exit 0): said, exit 1.
    let champion_was = std::fs::read(&champion_file).unwrap();
    std::fs::write(&champion_file, b"b9\n").unwrap();
    let out = run(&["models", "list", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the champion b9 does not load") && err.contains("will not serve it"),
        "{err}"
    );
    std::fs::write(&champion_file, champion_was).unwrap();
    std::fs::remove_dir_all(sets.join("b9")).unwrap();
    let out = run(&[
        "models",
        "rollback",
        "--config",
        &cfg,
        "--vertical",
        VERTICAL,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = std::fs::read_to_string(&champion_file).unwrap();
    assert_eq!(back, champion, "rollback goes back one");
    // The exchange serves it at its next directory check.
    // Two looks: the watch serves what CHAMPION names once it reads the same twice.
    ex.state.sync_champions();
    ex.state.sync_champions();
    let rt = ex.state.runtime.load();
    assert_eq!(
        rt.models[0].as_ref().map(|m| m.version.clone()),
        Some(back.clone())
    );
    // Rolling back again goes further back (never forward to b3), until nothing is older.
    let history = champion_file.with_file_name("HISTORY");
    let mut seen = vec![back];
    loop {
        let out = run(&[
            "models",
            "rollback",
            "--config",
            &cfg,
            "--vertical",
            VERTICAL,
        ]);
        let now = std::fs::read_to_string(&champion_file).unwrap();
        if out.status.code() != Some(0) {
            assert_eq!(out.status.code(), Some(1));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("no earlier model version"), "{err}");
            assert_eq!(
                &now,
                seen.last().unwrap(),
                "a refused rollback changes nothing"
            );
            break;
        }
        // Two looks: the watch serves what CHAMPION names once it reads the same twice.
        ex.state.sync_champions();
        ex.state.sync_champions();
        assert!(!seen.contains(&now) && now != "b3", "{now} after {seen:?}");
        seen.push(now);
        let h = std::fs::read_to_string(&history).unwrap();
        assert_eq!(h.lines().last(), seen.last().map(String::as_str), "{h}");
        assert!(seen.len() <= 3, "{seen:?}");
    }
    // A broken import writes nothing and says why.
    std::fs::write(realization.path(), b"{\"learner\":").unwrap();
    let out = run(&[
        "models",
        "import",
        "--config",
        &cfg,
        "--vertical",
        VERTICAL,
        "--version",
        "b4",
        "--realization",
        &realization.path().to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!ex
        .ledger_path
        .with_file_name("models")
        .join(VERTICAL)
        .join("b4")
        .exists());
    // A `CHAMPION` that cannot be read (a directory) is said by the listing (exit 1), not
    // shown as "none"; a rollback refuses, changing nothing (round 48: it "went back"
    // to HISTORY's last entry, the version already serving).
    let history_before = std::fs::read_to_string(&history).unwrap();
    std::fs::remove_file(&champion_file).unwrap();
    std::fs::create_dir(&champion_file).unwrap();
    let out = run(&["models", "list", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("champion UNREADABLE"), "{list}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CHAMPION cannot be read"), "{err}");
    let out = run(&[
        "models",
        "rollback",
        "--config",
        &cfg,
        "--vertical",
        VERTICAL,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serving version is not known"), "{err}");
    assert!(champion_file.is_dir());
    assert_eq!(std::fs::read_to_string(&history).unwrap(), history_before);
    // A `CHAMPION` naming no set here is said too, with exit 1 (round 57b: it was
    // listed as if it were fine, exit 0, though the exchange refuses to serve it).
    std::fs::remove_dir(&champion_file).unwrap();
    std::fs::write(&champion_file, "ghost\n").unwrap();
    let out = run(&["models", "list", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(1));
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("champion ghost MISSING"), "{list}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CHAMPION names ghost, which is not a model set"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_keeps_the_buyer_client_when_the_trust_store_is_unchanged() {
    // A new trust store would make every worker open new connections to every buyer at
    // once (P6 measured a 60 ms p99 spike per reload before this).
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let ex = TestConfig::new().buyer(ba).start().await;
    let before = ex.state.buyer_tls.load_full();
    let reply = ex.reload().await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let after = ex.state.buyer_tls.load_full();
    assert!(std::sync::Arc::ptr_eq(&before, &after));
    assert_eq!(
        ex.client.ping("TX").await.status,
        proto::seller::PingStatus::Bid
    );
}

#[tokio::test]
async fn auction_records_carry_a_keyed_lead_fingerprint() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let cfg = TestConfig::new().buyer(ba);
    let one = cfg.start().await;
    let two = cfg.start().await;
    for ex in [&one, &two] {
        let _ = ex.client.ping("TX").await;
        let _ = ex.client.ping("TX").await;
        let _ = ex.client.ping("OK").await;
    }
    let fps = |recs: Vec<Value>| -> Vec<String> {
        recs.iter()
            .map(|r| r["lead_fingerprint"].as_str().unwrap().to_string())
            .collect()
    };
    let f1 = fps(auctions(&one).await);
    let f2 = fps(auctions(&two).await);
    assert_eq!(f1[0].len(), 32);
    assert_eq!(f1[0], f1[1], "the same lead, the same fingerprint");
    assert_ne!(f1[0], f1[2], "another lead, another fingerprint");
    assert_ne!(f1[0], f2[0], "another exchange's key, another fingerprint");
    // The key is kept beside the ledger, owner-only.
    let key = one.ledger_path.join(pingpost::fingerprint::KEY_FILE);
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.len(), 64);
    assert!(!f1[0].contains("TX") && !f1[0].contains("76180"));
}

#[tokio::test]
async fn a_champion_that_fails_to_load_at_start_makes_readyz_not_ready_until_a_model_is_served() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let cfg = TestConfig::new().buyer(ba);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let champion = dir.path().join("models").join(VERTICAL).join("CHAMPION");
    std::fs::create_dir_all(champion.parent().unwrap()).unwrap();
    std::fs::write(&champion, "nope").unwrap();
    let config = cfg.load_edited(&ledger, with_features("watch_ms = 0"));
    let running = pingpost::app::start(config, pingpost::clock::Clock::system())
        .await
        .unwrap();
    let client = SellerClient::new(running.addr);
    let admin = SellerClient::new(running.admin_addr.unwrap());
    let not_ready = |r: &Reply| {
        assert_eq!(r.status, 503, "{}", r.text());
        let j = r.json();
        assert_eq!(j["status"], "not_ready");
        assert_eq!(j["models_failed"][VERTICAL], "nope", "{j}");
        let reason = j["reason"].as_str().unwrap();
        assert!(
            reason.contains(VERTICAL) && reason.contains("nope"),
            "{reason}"
        );
        assert!(!reason.contains('/') || reason.contains("POST /admin/models"));
        // In API.md's order (round 81b: a `json!` map wrote them alphabetically).
        let text = r.text();
        assert!(
            text.starts_with("{\"status\":\"not_ready\",\"reason\":")
                && text.ends_with(&format!(",\"models_failed\":{{\"{VERTICAL}\":\"nope\"}}}}")),
            "{text}"
        );
    };
    not_ready(&client.get("/readyz").await);
    not_ready(&admin.get("/readyz").await);
    // The lead is still sold on the cold-start rates.
    assert_eq!(client.ping("TX").await.price, Some(usd(8.0)));

    // CHAMPION emptied: what it names (none) serves, so ready again.
    std::fs::write(&champion, "").unwrap();
    // Two looks: the watch serves what CHAMPION names once it reads the same twice.
    running.state.sync_champions();
    running.state.sync_champions();
    assert_eq!(client.get("/readyz").await.status, 200);
    // Broken again while nothing serves: not ready; a model (here none, on purpose)
    // served through the admin API makes it ready.
    std::fs::write(&champion, "nope").unwrap();
    // Two looks: the watch serves what CHAMPION names once it reads the same twice.
    running.state.sync_champions();
    running.state.sync_champions();
    not_ready(&client.get("/readyz").await);
    let r = admin
        .post_json_with(
            "/admin/models",
            ADMIN_TOKEN,
            &[],
            &json!({"vertical": VERTICAL, "version": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Byte for byte as API.md shows it (round 81b: the keys came alphabetically).
    let generation = r.json()["generation"].as_u64().unwrap();
    assert_eq!(
        r.text(),
        format!("{{\"generation\":{generation},\"vertical\":\"{VERTICAL}\",\"version\":null}}")
    );
    let r = client.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"][VERTICAL], Value::Null);
    assert_eq!(
        r.text(),
        format!(
            "{{\"status\":\"ready\",\"generation\":{generation},\"models\":{{\"{VERTICAL}\":null}}}}"
        )
    );

    // A CHAMPION that exists but cannot be read (over its 4 KiB bound, or a directory)
    // is a failed champion too, never "no model". Each reason is logged once, and a second,
    // different one too (round 101b: only the first was).
    let log = CapturedLog::default();
    let dispatch = log.dispatch();
    let said = |log: &CapturedLog| {
        log.text()
            .lines()
            .filter(|l| l.contains("CHAMPION cannot be read"))
            .count()
    };
    for (n, unreadable) in ["too big", "a directory"].into_iter().enumerate() {
        if unreadable == "too big" {
            std::fs::write(&champion, format!("nope{}", " ".repeat(5_000))).unwrap();
        } else {
            std::fs::remove_file(&champion).unwrap();
            std::fs::create_dir(&champion).unwrap();
        }
        // Two looks: the watch serves what CHAMPION names once it reads the same twice.
        tracing::dispatcher::with_default(&dispatch, || {
            running.state.sync_champions();
            running.state.sync_champions();
        });
        assert_eq!(said(&log), n + 1, "{unreadable}: said once per reason");
        let r = client.get("/readyz").await;
        assert_eq!(r.status, 503, "{unreadable}: {}", r.text());
        assert_eq!(
            r.json()["models_failed"][VERTICAL],
            pingpost::state::UNREADABLE_CHAMPION,
            "{unreadable}"
        );
    }
    std::fs::remove_dir(&champion).unwrap();
    // Two looks: the watch serves what CHAMPION names once it reads the same twice.
    running.state.sync_champions();
    running.state.sync_champions();
    assert_eq!(client.get("/readyz").await.status, 200);
}

/// A start that serves a `CHAMPION` serves it in generation 1, as documented ("1 at
/// start"): the models a start loads join its first runtime (black-box round 15: the
/// start's load was a swap, and the first auctions said generation 2).
#[tokio::test]
async fn a_start_with_a_champion_serves_it_in_generation_1() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let cfg = TestConfig::new().buyer(ba);
    let ex = cfg.start_edited(with_features("watch_ms = 0")).await;
    assert_eq!(import(&ex, "m1", Some(model_json(ALL_LEN, 0)), None), 0);
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "m1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        ex.state.generation(),
        2,
        "a swap while serving is a new generation"
    );
    // Another exchange on a copy of that model directory (its CHAMPION names m1).
    let models = ex.ledger_path.with_file_name("models");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("models").join(VERTICAL);
    std::fs::create_dir_all(&copy).unwrap();
    let mut stack = vec![(models.join(VERTICAL), copy)];
    while let Some((from, to)) = stack.pop() {
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), to.join(e.file_name())));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let config = cfg.load_edited(&dir.path().join("ledger"), with_features("watch_ms = 0"));
    let running = pingpost::app::start(config, pingpost::clock::Clock::system())
        .await
        .unwrap();
    assert_eq!(running.state.generation(), 1);
    let client = SellerClient::new(running.addr);
    client.ping("TX").await;
    running.state.ledger.flush().await.unwrap();
    let text = pingpost::ledger::segments::read_all(&dir.path().join("ledger")).unwrap();
    let auction: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["type"] == "auction")
        .expect("an auction record");
    assert_eq!(auction["generation"], 1, "{auction}");
    assert_eq!(auction["models"]["realization"], "m1", "{auction}");
    running.shutdown().await.unwrap();
}

/// The model directory watch, while a model serves, and `CHAMPION` naming none (black-box
/// round 101b): a removed file leaves the serving model in place (a stray `rm` switched
/// the routing off, logged at INFO, `/readyz` ready); an emptied one is served as "none"
/// only when still empty at the next look (a rewrite with `>` empties the file first, and
/// a slow writer's was read empty in between).
#[tokio::test]
async fn a_removed_champion_keeps_the_model_and_an_emptied_one_is_read_twice() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let ex = TestConfig::new()
        .buyer(ba)
        .start_edited(with_features("watch_ms = 0"))
        .await;
    assert_eq!(import(&ex, "m1", Some(model_json(ALL_LEN, 0)), None), 0);
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "m1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let serving = || {
        ex.state.runtime.load().models[0]
            .as_ref()
            .map(|m| m.version.clone())
    };
    let generation = ex.state.generation();
    let champion = ex
        .ledger_path
        .with_file_name("models")
        .join(VERTICAL)
        .join("CHAMPION");
    std::fs::remove_file(&champion).unwrap();
    for _ in 0..3 {
        ex.state.sync_champions();
        assert_eq!(serving().as_deref(), Some("m1"), "a removed CHAMPION");
        assert_eq!(ex.state.generation(), generation);
    }
    assert_eq!(ex.client.get("/readyz").await.status, 200);
    // Emptied: the first look waits, the second serves none.
    std::fs::write(&champion, "").unwrap();
    ex.state.sync_champions();
    assert_eq!(
        serving().as_deref(),
        Some("m1"),
        "one look at an empty CHAMPION"
    );
    ex.state.sync_champions();
    assert_eq!(serving(), None, "still empty at the next look");
    assert_eq!(ex.state.generation(), generation + 1);
    // And back, the same: served when the next look reads the same name (a slow writer's
    // half-written name, round 102a, is read once and changes before the next look).
    std::fs::write(&champion, "m").unwrap();
    ex.state.sync_champions();
    std::fs::write(&champion, "m1").unwrap();
    ex.state.sync_champions();
    assert_eq!(serving(), None, "one look at m1 (the look before read m)");
    ex.state.sync_champions();
    assert_eq!(serving().as_deref(), Some("m1"));

    // `ledger replay` names the set that scored an auction, and says when it is gone
    // (black-box round 101b: it named neither).
    ex.client.ping("TX").await;
    ex.state.ledger.flush().await.unwrap();
    let scored = auctions(&ex)
        .await
        .into_iter()
        .rfind(|r| r["models"]["realization"] == "m1")
        .expect("an auction scored by m1");
    let id = scored["auction_id"].as_str().unwrap();
    let cfg_now = ex.state.runtime.load().config.clone();
    let replayed = || {
        let (a, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
        pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now)).text
    };
    let text = replayed();
    assert!(
        text.contains("scored by the model sets: realization m1;"),
        "{text}"
    );
    let set = champion.with_file_name("m1");
    std::fs::rename(&set, set.with_file_name("m1-moved")).unwrap();
    let text = replayed();
    assert!(
        text.contains("realization m1 (no longer in learning.models_dir)"),
        "{text}"
    );
    // A name that is no model version (an altered record) is said to be one, and never
    // looked up as a path (black-box round 102a: `/root` and `..` were, and printed as
    // present).
    let (mut a, posts) = pingpost::finance::replay::find(&ex.ledger_path, id).unwrap();
    for odd in ["/root", "..", "m1/../m2"] {
        a.value["models"]["realization"] = json!(odd);
        let text = pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now)).text;
        assert!(
            text.contains(&format!(
                "realization {odd} (not a model version name: the record was altered)"
            )),
            "{odd}: {text}"
        );
    }
    // A `models` field no ledger writes is said to be altered (round 102a: an empty name,
    // a number or `{}` read as an auction no model scored, without a word); the one
    // written is not.
    assert!(!replayed().contains("malformed"), "{}", replayed());
    for (odd, why) in [
        (json!({}), "an empty object"),
        (json!(7), "not an object"),
        (json!("m1"), "not an object"),
        (
            json!({"realization": ""}),
            "a version that is not a non-empty string",
        ),
        (
            json!({"realization": 3}),
            "a version that is not a non-empty string",
        ),
        (
            json!({"champion": "m1"}),
            "a field other than realization and lead_score",
        ),
    ] {
        a.value["models"] = odd.clone();
        let text = pingpost::finance::replay::replay(&a, &posts, Some(&cfg_now)).text;
        assert!(
            text.contains(&format!(
                "the record's models field is malformed ({why}): the record was altered"
            )),
            "{odd}: {text}"
        );
    }
}

/// Rollbacks run at once by separate processes, beside a swap: each rollback goes back
/// its own step (the model directory's lock orders them), none fails on another's
/// temporary file, and `CHAMPION` ends naming what `HISTORY` ends with (black-box round
/// 21: two rollbacks both went back the same one step, or one failed with a bare ENOENT
/// and still changed `CHAMPION`).
#[tokio::test]
async fn concurrent_rollbacks_each_go_back_one_step() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let ex = TestConfig::new()
        .buyer(ba)
        .start_edited(with_features("watch_ms = 0"))
        .await;
    let versions = ["m1", "m2", "m3", "m4", "m5", "m6"];
    for v in versions {
        assert_eq!(import(&ex, v, Some(model_json(ALL_LEN, 0)), None), 0);
        let reply = swap(&ex, json!({"vertical": VERTICAL, "version": v})).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let dir = ex.ledger_path.with_file_name("models").join(VERTICAL);
    let bin = env!("CARGO_BIN_EXE_pingpost");
    let cfg = ex.config_path.to_string_lossy().to_string();
    let env = TestConfig::new().env_vars();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(bin)
                .args([
                    "models",
                    "rollback",
                    "--config",
                    &cfg,
                    "--vertical",
                    VERTICAL,
                ])
                .envs(env.clone())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut now_serving = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let said = String::from_utf8_lossy(&out.stdout);
        let v = said
            .split("champion is now ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        now_serving.push(v);
    }
    now_serving.sort();
    assert_eq!(
        now_serving,
        ["m2", "m3", "m4", "m5"],
        "each went back its own step"
    );
    let champion = std::fs::read_to_string(dir.join("CHAMPION")).unwrap();
    assert_eq!(champion, "m2");
    let history = std::fs::read_to_string(dir.join("HISTORY")).unwrap();
    assert_eq!(history.lines().collect::<Vec<_>>(), ["m1", "m2"]);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A vertical ranked by price (`routing.award = "price"`) still records each bid's
/// buyer features (`bx`, and no `p_ppm`), so its ledger trains a realization model for
/// a later switch to `ev` (black-box round 21: 0 examples from 32 deliveries).
#[tokio::test]
async fn a_price_ranked_vertical_records_buyer_features_and_trains_a_realization_model() {
    let greedy = ScriptedBidder::bidding(20.0).scripted(|s| s.accept = false);
    let steady = ScriptedBidder::bidding(19.0);
    let (bg, _hg) = serve("greedy", &greedy).await;
    let (bs, _hs) = serve("steady", &steady).await;
    let ex = TestConfig::new()
        .buyer(bg)
        .buyer(bs)
        .start_edited(|t| {
            with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5")(t)
                .replace("explore_share = 0", "explore_share = 0\naward = \"price\"")
        })
        .await;
    for _ in 0..30 {
        let q = ex.client.ping("TX").await;
        // Greedy's higher bid always wins by price; it rejects, and steady's bid covers
        // the seller's quote (80 % of 20), so it takes the lead.
        assert_eq!(
            ex.client.post(&q.ping_id, "TX").await.buyer.as_deref(),
            Some("Buyer steady")
        );
    }
    let recs = auctions(&ex).await;
    assert_eq!(recs.len(), 30);
    for r in &recs {
        assert_eq!(r["winner"], "greedy", "{r}");
        for line in r["buyers"].as_array().unwrap() {
            assert!(line.get("p_ppm").is_none(), "ranked by price: {line}");
            assert_eq!(
                line["bx"].as_array().map(Vec::len),
                Some(4),
                "the buyer features it would be ranked with: {line}"
            );
        }
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args(["train", "--config"])
        .arg(&ex.config_path)
        .arg("--ledger")
        .arg(&ex.ledger_path)
        .envs(TestConfig::new().env_vars())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let realization = line["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == "realization")
        .expect("a realization model")
        .clone();
    assert_eq!(realization["examples"], 60, "{line}");
    assert!(realization.get("refused").is_none(), "{line}");
}

/// Black-box round 76c: a post of an auction scored by the old model, settled after a
/// model swap, counted its old estimate in the new model's drift guard (which then acted
/// after 6 posts of its own, and changed a winner). Such an outcome now teaches the
/// cold-start rates but not the new guard; a post of an auction scored by the serving
/// model counts in its guard, however soon after the swap it started (round 78a: judged
/// by milliseconds, an auction in the swap's own millisecond counted in neither guard;
/// this test waited for the next millisecond then).
#[tokio::test]
async fn a_post_settled_after_a_model_swap_does_not_count_in_the_new_models_guard() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let ex = TestConfig::new()
        .buyer(ba)
        .start_edited(with_features("watch_ms = 0"))
        .await;
    let realization = model_json(ALL_LEN, LEAD_LEN + 3);
    for version in ["m1", "m2"] {
        assert_eq!(import(&ex, version, Some(realization.clone()), None), 0);
    }
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "m1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let alpha = ex.state.runtime.load().config.buyers[0].key;
    let guard_posts = || ex.state.stats.guard(alpha).posts;
    let posts = || ex.state.stats.outcomes(alpha).posts;

    // Scored by m1, posted while m1 serves: its estimate counts in m1's guard.
    let q = ex.client.ping("TX").await;
    let sold = ex.client.post(&q.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold);
    assert!((guard_posts() - 1.0).abs() < 1e-9, "{}", guard_posts());
    let auction = auctions(&ex).await.pop().unwrap();
    assert!(auction["buyers"][0]["p_ppm"].is_u64(), "{auction}");

    // Scored by m1, posted after the swap to m2: the outcome teaches the rates, but m2's
    // guard judges m2's estimates only.
    let q = ex.client.ping("TX").await;
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "m2"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let before = posts();
    let sold = ex.client.post(&q.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold);
    assert!(posts() > before, "the cold-start rates learn from it");
    assert_eq!(guard_posts(), 0.0, "m2's guard counted m1's estimate");

    // Scored by m2 and posted under it: counted.
    let q = ex.client.ping("TX").await;
    let sold = ex.client.post(&q.ping_id, "TX").await;
    assert_eq!(sold.status, PostStatus::Sold);
    assert!((guard_posts() - 1.0).abs() < 1e-9, "{}", guard_posts());
}

/// Black-box round 79b: a vertical that a reload put back (or added) served no model until
/// the directory watch's next look, though its `CHAMPION` named one; auctions in between
/// ranked on the cold-start rates. The reload now serves it in its own generation, and the
/// drift guards start again as with any model that starts serving.
#[tokio::test]
async fn a_vertical_a_reload_adds_serves_its_champion_from_that_generation() {
    let a = ScriptedBidder::bidding(10.0);
    let (ba, _ha) = serve("alpha", &a).await;
    // No directory watch: only the reload can serve the model.
    let ex = TestConfig::new()
        .buyer(ba)
        .start_edited(with_features("watch_ms = 0"))
        .await;
    assert_eq!(
        import(&ex, "m1", Some(model_json(ALL_LEN, LEAD_LEN + 3)), None),
        0
    );
    let reply = swap(&ex, json!({"vertical": VERTICAL, "version": "m1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let serving = |ex: &Exchange| {
        let rt = ex.state.runtime.load();
        let vi = rt.config.vertical_by_name.get(VERTICAL).copied();
        let version = vi
            .and_then(|vi| rt.models.get(vi).cloned().flatten())
            .map(|m| m.version.clone());
        (rt.generation, rt.guard_epoch, version)
    };
    let original = std::fs::read_to_string(&ex.config_path).unwrap();

    // Renamed away: the vertical is gone, its CHAMPION stays on disk. The new name's
    // CHAMPION names a model that is not there: the reload applies, the vertical serves
    // no model, and /readyz says why (as at a start).
    let learning = ex.state.runtime.load().config.learning.clone();
    let renamed = pingpost::models::vertical_dir(&learning, "auto_renamed");
    std::fs::create_dir_all(&renamed).unwrap();
    std::fs::write(renamed.join(pingpost::models::CHAMPION), "missing\n").unwrap();
    ex.write_config_text(&original.replace(VERTICAL, "auto_renamed"));
    let reply = ex.reload().await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (gone_at, epoch_before, none) = serving(&ex);
    assert_eq!(none, None);
    assert!(epoch_before < gone_at, "nothing started serving");
    let ready = ex.admin_get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(ready.text().contains("missing"), "{}", ready.text());

    // Put back: served by the reload's own generation, and /readyz says so.
    ex.write_config_text(&original);
    let reply = ex.reload().await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (generation, epoch, version) = serving(&ex);
    assert_eq!(generation, gone_at + 1);
    assert_eq!(version.as_deref(), Some("m1"));
    assert_eq!(
        epoch, generation,
        "a model that starts serving starts the guards again"
    );
    let ready = ex.admin_get("/readyz").await;
    assert_eq!(ready.json()["models"][VERTICAL], "m1", "{}", ready.text());
    ex.client.ping("TX").await;
    let auction = auctions(&ex).await.pop().unwrap();
    assert_eq!(auction["models"]["realization"], "m1", "{auction}");

    // A reload that keeps the vertical changes nothing of its model or guards.
    let reply = ex.reload().await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let (_, kept_epoch, kept) = serving(&ex);
    assert_eq!((kept_epoch, kept.as_deref()), (epoch, Some("m1")));
}

/// Black-box round 79a: `ledger verify` began a new run at every generation, model swaps
/// included, so after 185 swaps (and no reload) it re-checked the payouts of 3 sales of
/// 9,503. Generations that model swaps joined are one run; a reload still begins one.
#[tokio::test]
async fn verify_rechecks_payouts_across_model_swaps_and_starts_a_run_at_a_reload() {
    let a = ScriptedBidder::bidding(20.0);
    let (ba, _ha) = serve("alpha", &a).await;
    let mut ex = TestConfig::new()
        .buyer(ba)
        .start_edited(with_features("watch_ms = 0"))
        .await;
    let realization = model_json(ALL_LEN, LEAD_LEN + 3);
    for version in ["m1", "m2"] {
        assert_eq!(import(&ex, version, Some(realization.clone()), None), 0);
    }
    let sell = |ex: &Exchange| {
        let ex = ex.client.clone();
        async move {
            let q = ex.ping("TX").await;
            assert_eq!(ex.post(&q.ping_id, "TX").await.status, PostStatus::Sold);
        }
    };
    // Generation 1 (no model), 2 (m1), 3 (m2), 4 (m1 again): one sale each.
    sell(&ex).await;
    for version in ["m1", "m2", "m1"] {
        let reply = swap(&ex, json!({"vertical": VERTICAL, "version": version})).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        sell(&ex).await;
    }
    let original = std::fs::read_to_string(&ex.config_path).unwrap();
    let changed = ex.config_path.with_file_name("share-70.toml");
    assert!(original.contains("share_pct = 80"));
    std::fs::write(
        &changed,
        original.replace("share_pct = 80", "share_pct = 70"),
    )
    .unwrap();
    let verify = |config: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pingpost"))
            .args(["ledger", "verify", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), out)
    };
    // On disk, under the serving generation (as a shutdown's flush is written).
    let generation = ex.state.runtime.load().generation;
    assert_eq!(generation, 4);
    let now = ex.state.clock.now_ms();
    ex.state.ledger.flush_at(generation, now).await.unwrap();
    // Every sale is of the latest run: each fails against the changed rule.
    let (code, out) = verify(&changed);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("latest run, generations 1 to 4 (model swaps only between them) from"),
        "{out}"
    );
    let payout_mismatches = |out: &str| {
        out.lines()
            .filter(|l| l.starts_with("MISMATCH: ") && l.contains("payout model"))
            .count()
    };
    assert_eq!(payout_mismatches(&out), 4, "{out}");
    assert!(!out.contains("PAYOUT NOT RE-CHECKED"), "{out}");
    assert_eq!(verify(&ex.config_path).0, Some(0));

    // A reload (generation 5) begins a run: the sales before it are listed, not failed.
    let reply = ex.reload().await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    sell(&ex).await;
    ex.shutdown().await;
    let (code, out) = verify(&changed);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("latest run, generation 5 from"), "{out}");
    assert_eq!(payout_mismatches(&out), 1, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("PAYOUT NOT RE-CHECKED: "))
            .count(),
        4,
        "{out}"
    );
}

/// Black-box round 113a: a start whose `learning.models_dir` does not exist (the models
/// moved away) served the cold-start rates and said nothing in its log; only
/// `--check-config` told. The start says so once, and says nothing when it exists.
#[test]
fn a_start_without_its_models_directory_says_so_in_its_log() {
    let said_on_start = |make_models_dir: bool| {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        if make_models_dir {
            std::fs::create_dir_all(dir.path().join("models")).unwrap();
        }
        let config = TestConfig::new().load_edited(&ledger, with_features("watch_ms = 0"));
        let log = CapturedLog::default();
        let state = log.during(|| {
            pingpost::app::build_state(config, pingpost::clock::Clock::system()).unwrap()
        });
        drop(state);
        log.text()
    };
    let missing = said_on_start(false);
    let lines: Vec<&str> = missing
        .lines()
        .filter(|l| l.contains("learning.models_dir does not exist"))
        .collect();
    assert_eq!(lines.len(), 1, "{missing}");
    assert!(lines[0].contains("cold-start"), "{}", lines[0]);
    let present = said_on_start(true);
    assert!(
        !present.contains("learning.models_dir does not exist"),
        "{present}"
    );
}

/// A retraining while the ledger has failed trains and promotes nothing: no decision
/// could be recorded (black-box round 129a: a retraining promoted a model, rewrote
/// `CHAMPION` and served it with no `model_decision` record). Each outcome is counted in
/// `pingpost_retrainings_total`.
#[tokio::test]
async fn retraining_while_the_ledger_has_failed_promotes_nothing() {
    let (fickle, ex, _hf) = fickle_with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5").await;
    let retrain = |ex: &Exchange| {
        let state = ex.state.clone();
        tokio::task::spawn_blocking(move || pingpost::models::learning::retrain_once(&state))
    };
    // Too little data: refused, counted, nothing recorded.
    let d = retrain(&ex).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].outcome.as_str(), "refused", "{d:?}");
    sixty_posts_every_third_rejected(&fickle, &ex).await;
    // Another process changes the newest segment's modification time: fail-stop.
    let mut segs: Vec<_> = std::fs::read_dir(&ex.ledger_path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segs.sort();
    let newest = segs.last().expect("a segment");
    std::fs::File::options()
        .append(true)
        .open(newest)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000))
        .unwrap();
    for _ in 0..50 {
        if !ex.state.ledger.is_healthy() {
            break;
        }
        let _ = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
    }
    assert!(!ex.state.ledger.is_healthy(), "the ledger saw the change");
    let models_dir = ex.ledger_path.with_file_name("models");
    let d = retrain(&ex).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].outcome.as_str(), "ledger_failed", "{d:?}");
    assert!(!d[0].promoted && d[0].challenger.is_none(), "{d:?}");
    assert!(d[0].reason.contains("ledger has failed"), "{d:?}");
    assert!(
        ex.state.runtime.load().models[0].is_none(),
        "nothing serves"
    );
    assert!(
        !models_dir.join(VERTICAL).join("CHAMPION").exists(),
        "no champion written"
    );
    let sets = std::fs::read_dir(models_dir.join(VERTICAL))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(sets, 0, "no set trained");
    let m = ex.metrics().await;
    assert_retrainings(
        &m,
        &[("refused", 1.0), ("ledger_failed", 1.0), ("promoted", 0.0)],
    );
}

/// Black-box round 224a: a retraining compared its challenger with the set that served
/// when it began, and a set promoted while it trained was replaced without being
/// compared. It decides against what serves at the decision, and a `CHAMPION` another
/// process wrote that the exchange has not served yet is not promoted over (nor compared
/// with: the next retraining is).
#[tokio::test]
async fn a_retraining_decides_against_the_champion_of_the_moment() {
    let (fickle, ex, _hf) = fickle_with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5").await;
    sixty_posts_every_third_rejected(&fickle, &ex).await;
    let retrain = |ex: &Exchange| {
        let state = ex.state.clone();
        tokio::task::spawn_blocking(move || pingpost::models::learning::retrain_once(&state))
    };
    let champion_file = ex
        .ledger_path
        .with_file_name("models")
        .join(VERTICAL)
        .join("CHAMPION");
    let first = retrain(&ex).await.unwrap();
    assert!(first[0].promoted, "{first:?}");
    let v1 = first[0].challenger.clone().unwrap();
    let named_v1 = std::fs::read(&champion_file).unwrap();
    // Nothing serves now; then another process names v1 in CHAMPION (the watch is off:
    // not served).
    ex.state.swap_models(VERTICAL, None).unwrap();
    std::fs::write(&champion_file, &named_v1).unwrap();
    let d = retrain(&ex).await.unwrap();
    assert!(!d[0].promoted, "{d:?}");
    assert_eq!(d[0].outcome.as_str(), "kept", "{d:?}");
    assert_eq!(
        d[0].champion, None,
        "what serves, not what CHAMPION names: {d:?}"
    );
    assert!(
        d[0].reason
            .starts_with(&format!("not compared: CHAMPION names {v1}")),
        "{d:?}"
    );
    assert_eq!(
        std::fs::read(&champion_file).unwrap(),
        named_v1,
        "left as named"
    );
    assert!(
        ex.state.runtime.load().models[0].is_none(),
        "nothing swapped in"
    );
    // v1 served again: the next retraining is compared with it, and its record says so.
    ex.state.swap_models(VERTICAL, Some(&v1)).unwrap();
    let d = retrain(&ex).await.unwrap();
    assert_eq!(d[0].champion.as_deref(), Some(v1.as_str()), "{d:?}");
    assert!(d[0].reason.contains("champion"), "{d:?}");
    let decisions = ex.ledger_of("model_decision");
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    assert!(
        decisions[1].get("champion").is_none_or(|c| c.is_null()),
        "{decisions:?}"
    );
    assert_eq!(decisions[2]["champion"], v1.as_str());
    // The vertical's `.lock` is held from the decision's read of `CHAMPION` to the swap's
    // write of it: another process's promotion cannot come between and be overwritten.
    let learning = ex.state.runtime.load().config.learning.clone();
    let ((taken, held_inside), swapped) = ex.state.decide_and_swap(VERTICAL, |_, locked| {
        (
            None,
            (
                locked.is_ok(),
                !pingpost::models::champion_lock_free(&learning, VERTICAL),
            ),
        )
    });
    assert!(taken && held_inside, "the lock is held while deciding");
    assert!(swapped.is_none());
    assert!(pingpost::models::champion_lock_free(&learning, VERTICAL));
    // Held elsewhere past the wait: nothing is compared, and the decision says why
    // (black-box round 228a: it compared and recorded `kept` without a word of it).
    let holder = std::fs::File::open(champion_file.with_file_name(".lock")).unwrap();
    holder.lock().unwrap();
    let d = retrain(&ex).await.unwrap();
    drop(holder);
    assert!(!d[0].promoted, "{d:?}");
    assert_eq!(d[0].outcome.as_str(), "failed", "{d:?}");
    assert!(
        d[0].reason.starts_with("not compared: ")
            && d[0].reason.contains(".lock")
            && d[0].reason.contains("held by another process"),
        "{d:?}"
    );
    assert_eq!(d[0].champion.as_deref(), Some(v1.as_str()), "{d:?}");
    let decisions = ex.ledger_of("model_decision");
    assert_eq!(decisions.len(), 4, "{decisions:?}");
    assert_eq!(decisions[3]["promoted"], false);
}

/// A challenger that wins but cannot be swapped in (`CHAMPION` a directory, which a
/// promotion cannot replace) is counted `failed`, not `kept` (black-box round 153a:
/// `kept` grew at every retraining while no promotion could ever be written).
#[tokio::test]
async fn a_promotion_that_cannot_be_written_is_counted_as_failed() {
    let (fickle, ex, _hf) = fickle_with_features("watch_ms = 0\nmin_rows = 10\nrounds = 5").await;
    sixty_posts_every_third_rejected(&fickle, &ex).await;
    let champion = ex
        .ledger_path
        .with_file_name("models")
        .join(VERTICAL)
        .join("CHAMPION");
    std::fs::create_dir_all(&champion).unwrap();
    let state = ex.state.clone();
    let d = tokio::task::spawn_blocking(move || pingpost::models::learning::retrain_once(&state))
        .await
        .unwrap();
    assert_eq!(d.len(), 1);
    assert!(
        d[0].reason.contains("not promoted") && d[0].reason.contains("CHAMPION"),
        "the challenger won and its swap failed: {d:?}"
    );
    assert_eq!(d[0].outcome.as_str(), "failed", "{d:?}");
    assert!(!d[0].promoted);
    assert!(champion.is_dir(), "the directory is left as it was");
    let m = ex.metrics().await;
    assert_retrainings(&m, &[("failed", 1.0), ("kept", 0.0), ("promoted", 0.0)]);
}

/// `pingpost_retrainings_total` shows a vertical a reload gives features as the reload
/// applies, before any retraining is due (black-box round 131a: only after
/// its first retraining, which a disposition threshold may put off for long).
#[tokio::test]
async fn a_vertical_a_reload_gives_features_shows_its_retraining_series_at_once() {
    let (_fickle, ex, _hf) = fickle_with_features(
        "watch_ms = 0\nmin_rows = 10\nrounds = 5\nretrain_after_dispositions = 1000000",
    )
    .await;
    let m = ex.metrics().await;
    assert!(retraining_series_shown(&m, VERTICAL), "{m}");
    assert!(
        !m.contains("vertical=\"solar\""),
        "solar has no features: {m}"
    );
    // A vertical a reload gives features shows them as the reload applies (black-box
    // round 131a: only after its first retraining).
    let text = std::fs::read_to_string(&ex.config_path).unwrap();
    let solar = "[verticals.solar.features]\nversion = 1\ncontext = [\"hour_of_day\"]\n\n[verticals.solar.fields]";
    ex.write_config_text(&text.replace("[verticals.solar.fields]", solar));
    assert_eq!(ex.reload().await.status, 200);
    assert!(
        retraining_series_shown(&ex.metrics().await, "solar"),
        "the reload made them"
    );
}
