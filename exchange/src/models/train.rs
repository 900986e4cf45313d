//! `pingpost train`: both models of a vertical from what the ledger holds.
//!
//! Examples come from the ledger alone, with the features exactly as serving saw them
//! (every auction record carries its lead features `x` and each bid's buyer features
//! `bx`, under `features_version`):
//! - **realization**: one example per delivered post (the winner's or a fallback's):
//!   label 1 when the buyer accepted the lead and did not return it, 0 when it rejected
//!   the post (or timed out, failed, answered invalidly) or returned the lead. Features:
//!   the auction's `x`, then the buyer's `bx`.
//! - **lead score**: one example per auction that was posted (a quote posted, or a direct
//!   post): label 1 when the lead sold and was not returned. Features: `x`.
//!
//! An accepted lead counts as kept once a non-return disposition arrived or it is older
//! than `learning.kept_after_s`; until then it is not an example. Test leads and
//! auctions under another feature encoding are left out, and so are deliveries to bids
//! recorded without `bx` (under the reserve), counted in the notes.
//!
//! The newest `learning.heldout_pct` percent of each model's examples (by time) are held
//! out: the model is trained on the rest and evaluated on them (AUC, log loss and a
//! calibration table, written to the manifest). With fewer than `learning.min_rows`
//! training examples, or a held-out split or training split of one class, that model is
//! refused with the counts found and needed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::ai::metrics;
use crate::ai::train::{train_binary_weighted, Dataset, TrainParams};
use crate::config::{Config, LearningConfig, Vertical};
use crate::core::model::manifest::{
    valid_version, CalibrationBin, Evaluation, Manifest, ModelKind, ModelSource, Window,
    MANIFEST_FORMAT,
};
use crate::core::model::xgb::XgbModel;
use crate::core::record::rfc3339;
use crate::core::UnixMs;

/// The XGBoost version xgboost-rs builds (the evaluator follows its semantics).
pub const XGBOOST_VERSION: &str = "1.6.2";
/// Calibration bins in a manifest.
const CALIBRATION_BINS: usize = 10;
/// Fewest held-out examples accepted (or a quarter of `min_rows`, if more).
const HELDOUT_MIN: usize = 10;

/// One example.
#[derive(Debug, Clone)]
pub struct Example {
    pub at: UnixMs,
    pub x: Vec<f32>,
    pub y: f32,
}

/// What the ledger holds for one vertical, as examples.
#[derive(Debug, Default)]
pub struct Examples {
    lead: Vec<Example>,
    realization: Vec<Example>,
    /// Auctions read under the configured encoding (non-test).
    pub auctions: usize,
    /// Delivered posts whose outcome is not yet known (accepted, not yet kept).
    pub pending: usize,
    /// Auction records of the vertical and its encoding whose features cannot be read
    /// ([`LeftOut`]), left out.
    pub left_out: Option<LeftOut>,
    /// What the reading skipped and says: records of a format version newer than this
    /// pingpost reads (LEDGER.md: a reader skips and reports them).
    pub notes: Vec<String>,
}

/// Auction records of the vertical, under its feature encoding, whose features cannot be
/// used: `x` (or a bid's `bx`) missing where it must be, not a list of numbers, of
/// another length than the encoding's, or holding an infinite value (NaN, written
/// `null`, is a missing value and is used). The exchange writes none; one is damage or
/// an edit whose chain was recomputed. It is left out of training, counted and said,
/// never read as other features (black-box round 152b: they were dropped without a
/// word, and one infinite value refused the whole vertical's training).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeftOut {
    /// How many.
    pub auctions: usize,
    /// The first, `segment:line`.
    pub first: String,
}

/// The prefix of the error of a ledger that training cannot read (an unusable input,
/// exit 2): its chain does not verify, or it has lines that are not records.
pub const LEDGER_UNUSABLE: &str = "the ledger does not verify";

/// A ledger whose records do not reconcile, as `pingpost ledger verify` finds without a
/// configuration's payout checks (a lead or a ping sold twice, a sale at a price the
/// exchange never writes, money fields missing: its mismatches and malformed money), is
/// unusable for training (exit 2, as a chain that does not verify): its records are not
/// all the exchange's, and held-out figures that look excellent would win `--promote`
/// (black-box round 206a: every record written twice with the chain recomputed trained
/// with exit 0, its realization examples doubled and a held-out log loss of 0.0006).
/// `pingpost train` checks it once before any vertical, a background retraining once
/// before its first. A reconciliation that cannot be read at all is left to the read of the records,
/// which says why.
pub fn check_reconciles(dir: &Path) -> Result<(), String> {
    match unreconciled(dir) {
        Some(why) => Err(format!(
            "{LEDGER_UNUSABLE}: {why} (`pingpost ledger verify` shows what is wrong)"
        )),
        None => Ok(()),
    }
}

fn unreconciled(dir: &Path) -> Option<String> {
    let r = crate::finance::reconcile::reconcile(dir, None).ok()?;
    let problems = r.mismatches.len() + r.stats.malformed_money.len();
    let first = r.mismatches.first().or(r.stats.malformed_money.first())?;
    Some(format!(
        "its records do not reconcile: {problems} problem(s), the first: {}",
        proto::error::shown_text(first, 300)
    ))
}

/// The lead features `x` (or a bid's `bx`) of an auction record, when they are `len`
/// numbers (or `null`: missing) and none is infinite (`1e39` is infinite in `f32`).
fn features(v: Option<&Value>, len: usize) -> Option<Vec<f32>> {
    floats(v).filter(|f| f.len() == len && !f.iter().any(|x| x.is_infinite()))
}

#[derive(Debug)]
struct AuctionInfo {
    at: UnixMs,
    x: Vec<f32>,
    bx: HashMap<String, Vec<f32>>,
}

fn floats(v: Option<&Value>) -> Option<Vec<f32>> {
    v?.as_array()?
        .iter()
        .map(|x| match x {
            Value::Null => Some(f32::NAN),
            Value::Number(n) => n.as_f64().map(|f| f as f32),
            _ => None,
        })
        .collect()
}

fn at_ms(v: &Value) -> Option<UnixMs> {
    let s = v.get("at")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Reads the examples of `vertical` from the ledger in `dir`. `now` decides which
/// accepted leads are old enough to count as kept.
pub fn read_examples(
    dir: &Path,
    vertical: &Vertical,
    learning: &LearningConfig,
    now: UnixMs,
) -> Result<Examples, String> {
    let Some(spec) = vertical.features.as_ref() else {
        return Err(format!(
            "vertical {} declares no [verticals.{}.features]: there is nothing to train on",
            vertical.name, vertical.name
        ));
    };
    let (lead_len, width) = (spec.lead_len(), spec.len());
    let mut auctions: HashMap<String, AuctionInfo> = HashMap::new();
    // (auction, buyer) -> accepted?, with the lead id of a sale.
    let mut delivered: Vec<(String, String, bool, UnixMs)> = Vec::new();
    let mut sale_of_lead: HashMap<String, (String, String)> = HashMap::new();
    let mut posted: HashMap<String, UnixMs> = HashMap::new();
    let mut sold_auction: HashMap<String, String> = HashMap::new();
    let mut returned: HashSet<String> = HashSet::new();
    let mut kept: HashSet<String> = HashSet::new();
    let mut left_out: Option<LeftOut> = None;
    // Deliveries sent (`post_sent`), and those with an outcome (a sale, or an attempt's):
    // the others' outcome is unknown (a stop or a ledger failure cut them off).
    let mut sent: HashSet<(String, String)> = HashSet::new();
    let mut answered: HashSet<(String, String)> = HashSet::new();
    let stats = crate::finance::for_each_ignoring_money(dir, |e| {
        let v = &e.value;
        match e.kind.as_str() {
            "auction" => {
                if e.str("vertical") != vertical.name
                    || e.bool("test")
                    || v.get("features_version").and_then(Value::as_u64)
                        != Some(u64::from(spec.version))
                {
                    return true;
                }
                let mut leave_out = || {
                    let n = left_out.get_or_insert_with(|| LeftOut {
                        auctions: 0,
                        first: format!("{}:{}", e.segment, e.line),
                    });
                    n.auctions += 1;
                };
                let (Some(x), Some(at)) = (features(v.get("x"), lead_len), at_ms(v)) else {
                    leave_out();
                    return true;
                };
                let mut bx = HashMap::new();
                // `buyers` is a list, when there: anything else is damage too.
                let mut bad_bx = v.get("buyers").is_some_and(|b| !b.is_array());
                for l in v
                    .get("buyers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    // A buyer without `bx` was not scored (no bid, a bid under the
                    // reserve, or one before features): not damage; a delivery to it is
                    // no example, and is counted in the notes.
                    let (Some(b), Some(raw)) = (
                        l.get("buyer").and_then(Value::as_str),
                        l.get("bx").filter(|v| !v.is_null()),
                    ) else {
                        continue;
                    };
                    match features(Some(raw), width - lead_len) {
                        Some(f) => {
                            bx.insert(b.to_string(), f);
                        }
                        None => bad_bx = true,
                    }
                }
                if bad_bx {
                    leave_out();
                    return true;
                }
                auctions.insert(e.str("auction_id").to_string(), AuctionInfo { at, x, bx });
            }
            "post_sent" => {
                sent.insert((e.str("auction_id").to_string(), e.str("buyer").to_string()));
            }
            "sale" => {
                let (a, b) = (e.str("auction_id").to_string(), e.str("buyer").to_string());
                answered.insert((a.clone(), b.clone()));
                let at = at_ms(v).unwrap_or(0);
                sale_of_lead.insert(e.str("lead_id").to_string(), (a.clone(), b.clone()));
                posted.insert(a.clone(), at);
                sold_auction.insert(a.clone(), e.str("lead_id").to_string());
                delivered.push((a, b, true, at));
            }
            "unsold" => {
                posted.insert(e.str("auction_id").to_string(), at_ms(v).unwrap_or(0));
            }
            "post_attempt" => {
                answered.insert((e.str("auction_id").to_string(), e.str("buyer").to_string()));
                if matches!(
                    e.str("outcome"),
                    "rejected" | "timeout" | "error" | "invalid"
                ) {
                    delivered.push((
                        e.str("auction_id").to_string(),
                        e.str("buyer").to_string(),
                        false,
                        at_ms(v).unwrap_or(0),
                    ));
                }
            }
            "disposition" => {
                let lead = e.str("lead_id").to_string();
                if e.str("outcome") == "returned" {
                    returned.insert(lead);
                } else {
                    kept.insert(lead);
                }
            }
            _ => {}
        }
        true
    })?;
    // Lines that are not records (damage, or an edit whose chain was recomputed) are what
    // `pingpost ledger verify` refuses: training refuses them too, never trains on what
    // is left (black-box round 152b: a record nested 5,000 deep was skipped, and the
    // training said "too little data").
    if let Some(first) = stats
        .malformed_lines
        .first()
        .or(stats.cut_short_sealed.first())
    {
        let more = stats.malformed_lines.len() + stats.cut_short_sealed.len() - 1;
        return Err(format!(
            "{LEDGER_UNUSABLE}: {first}{} (`pingpost ledger verify` shows what is wrong)",
            if more > 0 {
                format!(" (and {more} more)")
            } else {
                String::new()
            }
        ));
    }
    let kept_after_ms =
        i64::try_from(learning.kept_after_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    // Lead id by (auction, buyer), for the sales' dispositions.
    let lead_of: HashMap<(&str, &str), &str> = sale_of_lead
        .iter()
        .map(|(lead, (a, b))| ((a.as_str(), b.as_str()), lead.as_str()))
        .collect();
    // None: not known yet; Some(kept?).
    let fate = |lead: &str, at: UnixMs| -> Option<bool> {
        if returned.contains(lead) {
            Some(false)
        } else if kept.contains(lead) || now.saturating_sub(at) >= kept_after_ms {
            Some(true)
        } else {
            None
        }
    };
    let mut notes: Vec<String> = stats
        .newer
        .iter()
        .map(|(v, n)| {
            format!(
                "{n} record(s) of format version {v} skipped: this pingpost reads versions up to {} (upgrade it to train on them)",
                crate::core::record::RECORD_VERSION
            )
        })
        .collect();
    // Said, not trained on (black-box round 165a: they were left out without a word).
    let unknown = sent
        .iter()
        .filter(|k| !answered.contains(*k) && auctions.contains_key(&k.0))
        .count();
    if unknown > 0 {
        notes.push(format!(
            "{unknown} delivered post(s) whose outcome is unknown (still being delivered when the ledger was read, or cut off by a stop or a ledger failure: `pingpost ledger verify` lists the latter) left out: they have no label"
        ));
    }
    let mut out = Examples {
        auctions: auctions.len(),
        left_out,
        notes,
        ..Examples::default()
    };
    // Deliveries to bids recorded without buyer features (black-box round 233b: 41 sales
    // and 8 failed posts, to bids under the reserve tried as the last fallbacks, were
    // left out without a word).
    let mut unscored = 0usize;
    for (a, b, accepted, at) in &delivered {
        let Some(info) = auctions.get(a) else {
            continue;
        };
        let Some(bx) = info.bx.get(b) else {
            unscored += 1;
            continue;
        };
        let y = if *accepted {
            let Some(lead) = lead_of.get(&(a.as_str(), b.as_str())) else {
                continue;
            };
            match fate(lead, *at) {
                Some(k) => f32::from(u8::from(k)),
                None => {
                    out.pending += 1;
                    continue;
                }
            }
        } else {
            0.0
        };
        let mut x = info.x.clone();
        x.extend_from_slice(bx);
        out.realization.push(Example { at: info.at, x, y });
    }
    if unscored > 0 {
        out.notes.push(format!(
            "{unscored} delivered post(s) to bids recorded without buyer features (`bx`: bids under the reserve, tried as the last fallbacks, or made before features were configured) left out of the realization examples"
        ));
    }
    for (a, at) in &posted {
        let Some(info) = auctions.get(a) else {
            continue;
        };
        let y = match sold_auction.get(a) {
            None => 0.0,
            Some(lead) => match fate(lead, *at) {
                Some(k) => f32::from(u8::from(k)),
                None => continue,
            },
        };
        out.lead.push(Example {
            at: info.at,
            x: info.x.clone(),
            y,
        });
    }
    // A total order, so a training run over the same ledger is given the same rows in
    // the same order, whatever order the maps above were walked in (black-box round
    // 105c: posts of one millisecond came in a different order at every run, and the
    // lead-score model differed at every run): time, label, then the features; rows equal
    // in all three are the same row.
    for set in [&mut out.lead, &mut out.realization] {
        set.sort_by(|p, q| {
            p.at.cmp(&q.at)
                .then_with(|| p.y.total_cmp(&q.y))
                .then_with(|| {
                    p.x.iter()
                        .zip(&q.x)
                        .map(|(a, b)| a.total_cmp(b))
                        .find(|o| o.is_ne())
                        .unwrap_or_else(|| p.x.len().cmp(&q.x.len()))
                })
        });
    }
    Ok(out)
}

/// How one model was trained, or why not.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub kind: &'static str,
    pub examples: usize,
    pub train_rows: usize,
    pub heldout_rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logloss: Option<f64>,
    /// Why it was not trained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// A trained model that predicts its held-out rows no better than no model would:
    /// its log loss is not under that of a constant guess at the training rate, or its
    /// AUC is not over 0.5. The set is still written; serving it is the operator's call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The warning of a model whose held-out figures are no better than no model
/// ([`ModelReport::warning`]): `train_rate` is the training rows' positive share.
pub fn no_better_than_a_constant(
    train_rate: f64,
    heldout_y: &[f32],
    logloss: f64,
    auc: Option<f64>,
) -> Option<String> {
    let n = heldout_y.len();
    if n == 0 {
        return None;
    }
    let b = train_rate.clamp(1e-6, 1.0 - 1e-6);
    let constant = heldout_y
        .iter()
        .map(|&y| if y > 0.5 { -b.ln() } else { -(1.0 - b).ln() })
        .sum::<f64>()
        / n as f64;
    let mut why = Vec::new();
    if logloss >= constant {
        why.push(format!(
            "its held-out log loss {logloss:.4} is no better than {constant:.4}, a constant \
             guess at the training rate {train_rate:.4}"
        ));
    }
    if let Some(a) = auc.filter(|a| *a <= 0.5) {
        why.push(format!(
            "its held-out AUC {a:.4} is no better than chance (0.5)"
        ));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{}: this model predicts no better than no model; more or better data may help \
             (the set is written; a promotion refuses it when this is the model it compares: \
             the realization model, or the lead-score model of a set without one)",
            why.join(", and ")
        )
    })
}

/// What a training run made.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub vertical: String,
    pub version: String,
    pub dir: PathBuf,
    pub models: Vec<ModelReport>,
    /// Auction records left out for their features ([`LeftOut`]); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_out: Option<LeftOut>,
    /// What the ledger's reading skipped ([`Examples::notes`]); absent when nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

fn dataset(rows: &[Example], ncols: usize) -> Dataset {
    let mut x = Vec::with_capacity(rows.len() * ncols);
    let mut y = Vec::with_capacity(rows.len());
    for r in rows {
        x.extend_from_slice(&r.x);
        y.push(r.y);
    }
    Dataset { ncols, x, y }
}

/// Evaluates `model` on `rows`.
pub fn evaluate(model: &XgbModel, rows: &[Example]) -> Evaluation {
    let ncols = model.num_features();
    let ds = dataset(rows, ncols);
    let mut p = vec![0f32; ds.rows()];
    model.predict_many(&ds.x, &mut p);
    Evaluation {
        rows: ds.rows() as u64,
        positives: ds.y.iter().filter(|y| **y > 0.5).count() as u64,
        auc: metrics::auc(&p, &ds.y),
        logloss: metrics::logloss(&p, &ds.y),
        calibration: metrics::calibration(&p, &ds.y, CALIBRATION_BINS)
            .into_iter()
            .map(|b| CalibrationBin {
                lo: b.lo,
                hi: b.hi,
                count: b.count,
                mean_predicted: b.mean_predicted,
                observed_rate: b.observed_rate,
            })
            .collect(),
    }
}

/// The split point: the newest `pct` percent are held out, but at most `max_rows` of them
/// (0: no cap) and, under a cap, at least `min_rows` (when there are that many).
pub fn split(n: usize, pct: u32, max_rows: usize, min_rows: usize) -> usize {
    let mut held = (n * pct as usize).div_ceil(100);
    if max_rows > 0 {
        held = held.min(max_rows.max(min_rows));
    }
    n - held.min(n)
}

/// Recency weights for `n` examples in time order: the newest weighs 1 and each
/// `half_life` examples back halve it (`half_life = 0`: none, every example weighs 1).
pub fn recency_weights(n: usize, half_life: usize) -> Vec<f32> {
    if half_life == 0 {
        return Vec::new();
    }
    let h = half_life as f64;
    (0..n)
        .map(|i| 0.5f64.powf((n - 1 - i) as f64 / h) as f32)
        .collect()
}

fn params(l: &LearningConfig) -> TrainParams {
    TrainParams {
        rounds: l.rounds,
        max_depth: l.max_depth,
        eta: l.eta,
        ..TrainParams::default()
    }
}

/// A new version name: the UTC time to the millisecond.
pub fn new_version(now: UnixMs) -> String {
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now).unwrap_or_default();
    format!("v{}", t.format("%Y%m%dT%H%M%S%3fZ"))
}

/// The held-out examples of the newest window, for champion-challenger comparisons.
#[derive(Debug, Default)]
pub struct Heldout {
    pub lead: Vec<Example>,
    pub realization: Vec<Example>,
}

/// The inputs of a training of `vertical` that are unusable whatever the ledger holds:
/// an unknown vertical or one without features, a version name that is not a plain name
/// or already exists, a ledger directory that is missing or cannot be read. `pingpost
/// train` exits 2 on these (a bad argument), and 1 only when training itself is refused.
pub fn check_inputs(
    config: &Config,
    ledger_dir: &Path,
    vertical: &str,
    version: Option<&str>,
) -> Result<(), String> {
    let Some(&vi) = config.vertical_by_name.get(vertical) else {
        return Err(format!("unknown vertical {vertical:?}"));
    };
    if config.verticals[vi].features.is_none() {
        return Err(format!(
            "vertical {vertical} declares no [verticals.{vertical}.features]: there is nothing to train on"
        ));
    }
    // The set is written under `<models_dir>/<vertical>/`: one of them there as a file (or
    // anything but a directory) can never take it (black-box round 128b: the vertical's a
    // file gave "File exists (os error 17)", exit 1, after training).
    // Every part of the path counts: a file above `models_dir`, or a symbolic link to
    // nothing at either, is as unusable (black-box round 131a: trained in full, then
    // "File exists", exit 1).
    let vertical_dir = crate::models::vertical_dir(&config.learning, vertical);
    for dir in vertical_dir
        .ancestors()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let unusable = match (std::fs::metadata(dir), std::fs::symlink_metadata(dir)) {
            (Ok(meta), _) if !meta.is_dir() => Some("is not a directory"),
            (Err(_), Ok(link)) if link.file_type().is_symlink() => {
                Some("is a symbolic link to nothing")
            }
            _ => None,
        };
        if let Some(why) = unusable {
            return Err(format!(
                "{} {why}: the model sets are written under learning.models_dir/<vertical>/",
                crate::cli_out::Shown(dir)
            ));
        }
    }
    if let Some(version) = version {
        if !valid_version(version) {
            return Err(format!(
                "{:?} is not a model version name ({})",
                crate::server::truncate(version, 64),
                crate::core::model::manifest::VERSION_RULE
            ));
        }
        let dir = crate::models::set_dir(&config.learning, vertical, version);
        if dir.exists() {
            return Err(format!("{} already exists", crate::cli_out::Shown(&dir)));
        }
    }
    let entries = std::fs::read_dir(ledger_dir).map_err(|e| {
        format!(
            "the ledger directory {}: {e}",
            crate::cli_out::Shown(ledger_dir)
        )
    })?;
    for entry in entries {
        let path = entry
            .map_err(|e| {
                format!(
                    "the ledger directory {}: {e}",
                    crate::cli_out::Shown(ledger_dir)
                )
            })?
            .path();
        if path.is_file() {
            std::fs::File::open(&path)
                .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(&path)))?;
        }
    }
    // A directory with no segment is not a ledger (a mistyped --ledger): an unusable
    // input, exit 2, not "too little data" (black-box round 88a: exit 1).
    if let Some(why) = crate::finance::no_ledger_in_for(ledger_dir, "--ledger") {
        return Err(why);
    }
    // A ledger that does not verify (a changed line, a missing segment, records removed
    // from its end) is an unusable input, not too little data: waiting for more would
    // never help (black-box round 88b: records removed, which HEAD tells, exited 1). The
    // head is read before the segments, as the ledger tools read it: what it names was
    // synced before they are read, so a running exchange's appends are not taken for it.
    let refuse = |p: &dyn std::fmt::Display| {
        format!("{LEDGER_UNUSABLE}: {p} (`pingpost ledger verify` shows what is wrong)")
    };
    let head = crate::ledger::head::read(ledger_dir);
    let check = crate::ledger::segments::verify(ledger_dir)
        .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(ledger_dir)))?;
    if let Some(p) = check
        .problem
        .as_ref()
        .filter(|p| !p.is_torn_tail(ledger_dir))
    {
        return Err(refuse(p));
    }
    let said = head.map_err(|why| refuse(&why))?;
    if let Some(why) = crate::ledger::head::removed(ledger_dir, said, check.last_seq) {
        return Err(refuse(&why));
    }
    Ok(())
}

/// How the error of a training refused for its data begins (too little data, one class),
/// as against one that failed (the ledger unreadable, the set not written).
pub const REFUSED: &str = "training refused";

/// Trains both models of `vertical` and writes the model set (not yet serving). Errors
/// when neither model could be trained, with every count.
pub fn train_vertical(
    config: &Config,
    ledger_dir: &Path,
    vertical: &str,
    now: UnixMs,
    version: Option<&str>,
) -> Result<(TrainOutcome, Heldout), String> {
    let Some(&vi) = config.vertical_by_name.get(vertical) else {
        return Err(format!("unknown vertical {vertical:?}"));
    };
    let v = &config.verticals[vi];
    let learning = &config.learning;
    let ex = read_examples(ledger_dir, v, learning, now)?;
    let version = version.map_or_else(|| new_version(now), String::from);
    if !valid_version(&version) {
        return Err(format!(
            "{version:?} is not a model version name ({})",
            crate::core::model::manifest::VERSION_RULE
        ));
    }
    let dir = crate::models::set_dir(learning, vertical, &version);
    if dir.exists() {
        return Err(format!("{} already exists", crate::cli_out::Shown(&dir)));
    }
    let Some(spec) = v.features.as_ref() else {
        return Err(format!("vertical {vertical} declares no features"));
    };
    let mut reports = Vec::new();
    let mut made: Vec<(ModelKind, Vec<u8>, Manifest)> = Vec::new();
    let mut heldout = Heldout::default();
    let heldout_min = HELDOUT_MIN.max(learning.min_rows / 4);
    for (kind, rows) in [
        (ModelKind::LeadScore, &ex.lead),
        (ModelKind::Realization, &ex.realization),
    ] {
        let cut = split(
            rows.len(),
            learning.heldout_pct,
            learning.heldout_max_rows,
            heldout_min,
        );
        let (train, test) = rows.split_at(cut);
        let pos = |r: &[Example]| r.iter().filter(|e| e.y > 0.5).count();
        let mut report = ModelReport {
            kind: kind.as_str(),
            examples: rows.len(),
            train_rows: train.len(),
            heldout_rows: test.len(),
            auc: None,
            logloss: None,
            refused: None,
            warning: None,
        };
        let refuse = if train.len() < learning.min_rows || test.len() < heldout_min {
            Some(format!(
                "too little data: {} examples ({} to train on, {} held out); it needs at least {} to train on and {} held out (learning.min_rows, learning.heldout_pct){}",
                rows.len(),
                train.len(),
                test.len(),
                learning.min_rows,
                heldout_min,
                if ex.pending > 0 && kind == ModelKind::Realization {
                    format!("; {} accepted posts wait to count as kept", ex.pending)
                } else {
                    String::new()
                }
            ))
        } else if pos(train) == 0 || pos(train) == train.len() {
            Some(format!(
                "the {} training examples are all of one class ({} positive): nothing to learn \
                 (a model needs leads kept and leads not kept: wait for rejected posts, or \
                 record returns with `returned` dispositions)",
                train.len(),
                pos(train)
            ))
        } else {
            None
        };
        if let Some(why) = refuse {
            report.refused = Some(why);
            reports.push(report);
            continue;
        }
        let ncols = if kind == ModelKind::LeadScore {
            spec.lead_len()
        } else {
            spec.len()
        };
        let weights = recency_weights(train.len(), learning.half_life_rows);
        let json = train_binary_weighted(&dataset(train, ncols), &weights, &params(learning))
            .map_err(|e| format!("{}: training failed: {e}", kind.as_str()))?;
        let model = XgbModel::from_json(&json)
            .map_err(|e| format!("{}: the trained model does not load: {e}", kind.as_str()))?;
        let eval = evaluate(&model, test);
        report.auc = eval.auc;
        report.logloss = Some(eval.logloss);
        let heldout_y: Vec<f32> = test.iter().map(|e| e.y).collect();
        report.warning = no_better_than_a_constant(
            pos(train) as f64 / train.len() as f64,
            &heldout_y,
            eval.logloss,
            eval.auc,
        );
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            kind,
            vertical: vertical.to_string(),
            version: version.clone(),
            features_version: spec.version,
            features: kind.expected_features(spec),
            source: ModelSource::Trained,
            created_at: rfc3339(now),
            window: Some(Window {
                from: rfc3339(train.first().map_or(0, |e| e.at)),
                heldout_from: rfc3339(test.first().map_or(0, |e| e.at)),
                to: rfc3339(test.last().map_or(0, |e| e.at)),
            }),
            train_rows: Some(train.len() as u64),
            heldout: Some(eval),
            xgboost: Some(XGBOOST_VERSION.into()),
            params: serde_json::to_value(serde_json::json!({
                "rounds": learning.rounds, "max_depth": learning.max_depth, "eta": learning.eta,
                "heldout_pct": learning.heldout_pct, "heldout_max_rows": learning.heldout_max_rows, "half_life_rows": learning.half_life_rows, "objective": "binary:logistic",
            }))
            .ok(),
        };
        match kind {
            ModelKind::LeadScore => heldout.lead = test.to_vec(),
            ModelKind::Realization => heldout.realization = test.to_vec(),
        }
        made.push((kind, json, manifest));
        reports.push(report);
    }
    if made.is_empty() {
        let why: Vec<String> = reports
            .iter()
            .map(|r| format!("{}: {}", r.kind, r.refused.as_deref().unwrap_or("")))
            .collect();
        // What the reading left out is said with the refusal too (black-box round 166a:
        // a refused run never said its deliveries of unknown outcome).
        let notes: String = ex.notes.iter().map(|n| format!("; {n}")).collect();
        return Err(format!(
            "{REFUSED} for vertical {vertical} ({} auctions read{}{notes}): {}",
            ex.auctions,
            ex.left_out
                .as_ref()
                .map(|l| format!(
                    ", {} left out for features that cannot be used, first {}",
                    l.auctions, l.first
                ))
                .unwrap_or_default(),
            why.join("; ")
        ));
    }
    write_set(&dir, &made)?;
    Ok((
        TrainOutcome {
            vertical: vertical.to_string(),
            version,
            dir,
            models: reports,
            left_out: ex.left_out,
            notes: ex.notes,
        },
        heldout,
    ))
}

/// Writes a model set's files into a new directory (a temporary one renamed into place,
/// so a half-written set is never seen).
pub fn write_set(dir: &Path, made: &[(ModelKind, Vec<u8>, Manifest)]) -> Result<(), String> {
    let parent = dir.parent().ok_or("no parent directory")?;
    std::fs::create_dir_all(parent).map_err(|e| {
        // `create_dir_all` says "File exists" for a file in its way (black-box round
        // 129a): name the path that is not a directory.
        let in_the_way = parent
            .ancestors()
            .find(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()));
        match in_the_way {
            Some(p) => format!("{} is not a directory", crate::cli_out::Shown(p)),
            // Said as the directory it could not make (black-box round 199b: under
            // `/proc`, "No such file or directory" read as a wrong path).
            None => format!(
                "cannot create the model set's directory {} (learning.models_dir/<vertical>): {e}",
                crate::cli_out::Shown(parent)
            ),
        }
    })?;
    let tmp = parent.join(format!(
        ".tmp-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("set")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", crate::cli_out::Shown(&tmp)))?;
    let written = (|| {
        for (kind, json, manifest) in made {
            let m = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
            for (name, bytes) in [
                (format!("{}.json", kind.as_str()), json.as_slice()),
                (format!("{}.manifest.json", kind.as_str()), m.as_slice()),
            ] {
                let path = tmp.join(&name);
                std::fs::write(&path, bytes).map_err(|e| {
                    format!(
                        "writing {} of model set {}: {e}",
                        crate::cli_out::Shown(&path),
                        crate::cli_out::Shown(dir)
                    )
                })?;
            }
        }
        std::fs::rename(&tmp, dir).map_err(|e| {
            format!(
                "moving {} into place as {}: {e}",
                crate::cli_out::Shown(&tmp),
                crate::cli_out::Shown(dir)
            )
        })
    })();
    // A set that could not be written whole leaves nothing behind (black-box round 90b:
    // on a full disk, each failed train left its half-written `.tmp-*` directory, holding
    // space on the disk that was already full).
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written
}

/// Champion or challenger: the challenger serves if its realization model (or, without
/// one, its lead-score model) has a lower log loss on the newest held-out window than the
/// champion's on the same examples. Returns (challenger wins, a one-line reason).
/// Whether a freshly trained set should serve: never when the model the decision compares
/// (the realization model, or the lead-score model when no realization model was trained)
/// predicts no better than no model ([`ModelReport::warning`]), otherwise
/// [`challenger_wins`]. A warning on the other model is printed, not a veto.
pub fn promotion(
    reports: &[ModelReport],
    champion: Option<&crate::models::ModelSet>,
    challenger: &crate::models::ModelSet,
    heldout: &Heldout,
) -> (bool, String) {
    let trained = |kind: &str| {
        reports
            .iter()
            .find(|r| r.kind == kind && r.refused.is_none())
    };
    let compared =
        trained(ModelKind::Realization.as_str()).or_else(|| trained(ModelKind::LeadScore.as_str()));
    if let Some(r) = compared.filter(|r| r.warning.is_some()) {
        return (
            false,
            format!(
                "the challenger's {} model predicts its held-out rows no better than no model",
                r.kind
            ),
        );
    }
    challenger_wins(champion, challenger, heldout)
}

pub fn challenger_wins(
    champion: Option<&crate::models::ModelSet>,
    challenger: &crate::models::ModelSet,
    heldout: &Heldout,
) -> (bool, String) {
    let Some(champion) = champion else {
        return (true, "no champion serves".into());
    };
    for (kind, rows) in [
        (ModelKind::Realization, &heldout.realization),
        (ModelKind::LeadScore, &heldout.lead),
    ] {
        let Some(new) = challenger.get(kind) else {
            continue;
        };
        let Some(old) = champion.get(kind) else {
            return (true, format!("the champion has no {} model", kind.as_str()));
        };
        if old.model.num_features() != new.model.num_features() {
            return (
                true,
                format!("the champion's {} model sees other features", kind.as_str()),
            );
        }
        let a = evaluate(&new.model, rows).logloss;
        let b = evaluate(&old.model, rows).logloss;
        let why = format!(
            "{} log loss on the newest {} held-out examples: challenger {a:.5}, champion {b:.5}",
            kind.as_str(),
            rows.len()
        );
        return (a < b, why);
    }
    (false, "the challenger has no model to compare".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default configuration, its buyer secrets made up.
    fn demo_config() -> crate::config::Config {
        crate::config::load_str_with_env(crate::app::DEFAULT_CONFIG, &|n: &str| {
            Some(format!("demo-test-secret-{n}"))
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A vertical's `x` and `bx` as JSON lists of 0.5, of its encoding's lengths.
    fn feature_lists(vertical: &crate::config::Vertical) -> (String, String) {
        let spec = vertical.features.as_ref().unwrap();
        let nums = |n: usize| serde_json::to_string(&vec![0.5_f32; n]).unwrap();
        (nums(spec.lead_len()), nums(spec.len() - spec.lead_len()))
    }

    /// A ledger directory holding `records` as its first segment.
    fn one_segment(records: &[String]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(crate::ledger::segments::segment_name(1)),
            crate::ledger::segments::frame_all(records),
        )
        .unwrap();
        dir
    }

    /// Training rows come in one order whatever order the ledger's maps are walked in
    /// (black-box round 105c: posts of one millisecond came in a new order at every run,
    /// and `pingpost train` made a different lead-score model each time over the same
    /// ledger): rows of one time and label are in the order of their features.
    #[test]
    fn examples_of_one_instant_come_in_one_order_at_every_read() {
        // The default configuration's vertical declares features.
        let cfg = crate::config::load_str_with_env(crate::app::DEFAULT_CONFIG, &|n: &str| {
            Some(format!("demo-test-secret-{n}"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let vertical = &cfg.verticals[0];
        let lead_len = vertical.features.as_ref().unwrap().lead_len();
        let at = "2026-11-29T10:00:00.000Z";
        let mut records = Vec::new();
        for i in 0..40 {
            let mut x = vec![0.0_f32; lead_len];
            x[0] = ((i * 17) % 40) as f32;
            records.push(format!(
                r#"{{"type":"auction","v":5,"at":"{at}","auction_id":"au_{i}","vertical":"auto_insurance","test":false,"features_version":1,"x":{},"buyers":[]}}"#,
                serde_json::to_string(&x).unwrap()
            ));
            records.push(if i % 2 == 0 {
                format!(r#"{{"type":"unsold","v":5,"at":"{at}","auction_id":"au_{i}"}}"#)
            } else {
                format!(
                    r#"{{"type":"sale","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"b","lead_id":"ld_{i}"}}"#
                )
            });
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(crate::ledger::segments::segment_name(1)),
            crate::ledger::segments::frame_all(&records),
        )
        .unwrap();
        // Long after: every sale counts as kept.
        let now = 4_000_000_000_000;
        let first = read_examples(dir.path(), vertical, &cfg.learning, now).unwrap();
        assert_eq!(first.lead.len(), 40);
        let order = |e: &Examples| e.lead.iter().map(|r| (r.y, r.x[0])).collect::<Vec<_>>();
        let mut sorted = order(&first);
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        assert_eq!(order(&first), sorted, "label, then features");
        for _ in 0..5 {
            let again = read_examples(dir.path(), vertical, &cfg.learning, now).unwrap();
            assert_eq!(order(&again), order(&first));
        }
    }

    /// Auction records whose features cannot be used (forged, the chain recomputed) are
    /// left out, counted and located, and the rest trains; a line that is not a record at
    /// all makes the ledger unusable, as `ledger verify` says (black-box round 152b: both
    /// were skipped without a word, and one infinite value failed the whole training).
    #[test]
    fn unusable_features_are_left_out_and_counted_and_unreadable_lines_refuse_the_ledger() {
        let cfg = crate::config::load_str_with_env(crate::app::DEFAULT_CONFIG, &|n: &str| {
            Some(format!("demo-test-secret-{n}"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let vertical = &cfg.verticals[0];
        let spec = vertical.features.as_ref().unwrap();
        let (lead_len, bx_len) = (spec.lead_len(), spec.len() - spec.lead_len());
        let at = "2026-11-29T10:00:00.000Z";
        let auction = |i: usize, x: &str, bx: &str| {
            format!(
                r#"{{"type":"auction","v":5,"at":"{at}","auction_id":"au_{i}","vertical":"auto_insurance","test":false,"features_version":1,"x":{x},"buyers":[{{"buyer":"b","outcome":"bid","bx":{bx}}}]}}"#
            )
        };
        let nums = |n: usize| serde_json::to_string(&vec![0.5_f32; n]).unwrap();
        let (x, bx) = (nums(lead_len), nums(bx_len));
        let mut infinite = vec![0.5_f64; lead_len];
        infinite[0] = 1e39;
        let forged = [
            auction(100, "\"a string\"", &bx),
            auction(101, &nums(lead_len + 1), &bx),
            auction(102, &serde_json::to_string(&infinite).unwrap(), &bx),
            auction(103, &x, "[\"a\"]"),
            auction(104, &x, &nums(bx_len + 3)),
            auction(105, &x, &bx).replace(r#""buyers":["#, r#""buyers":"zz","was":["#),
        ];
        let mut records = Vec::new();
        for (n, f) in forged.iter().enumerate() {
            records.push(f.clone());
            records.push(format!(
                r#"{{"type":"unsold","v":5,"at":"{at}","auction_id":"au_{}"}}"#,
                100 + n
            ));
        }
        // A record of a newer format version: skipped, and said.
        records.push(auction(300, &x, &bx).replace(r#""v":5"#, r#""v":6"#));
        for i in 0..10 {
            records.push(auction(i, &x, &bx));
            records.push(format!(
                r#"{{"type":"unsold","v":5,"at":"{at}","auction_id":"au_{i}"}}"#
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(crate::ledger::segments::segment_name(1));
        std::fs::write(&seg, crate::ledger::segments::frame_all(&records)).unwrap();
        let ex = read_examples(dir.path(), vertical, &cfg.learning, 4_000_000_000_000).unwrap();
        assert_eq!(ex.lead.len(), 10, "only the usable auctions are examples");
        assert_eq!(
            ex.left_out,
            Some(LeftOut {
                auctions: 6,
                first: "seg-00000001.jsonl:1".into()
            })
        );
        assert_eq!(ex.notes.len(), 1, "{:?}", ex.notes);
        assert!(ex.notes[0].starts_with("1 record(s) of format version 6 skipped"));
        // The same ledger with one line nested past what a record can be: refused.
        let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
        records.insert(2, auction(200, &deep, &bx));
        std::fs::write(&seg, crate::ledger::segments::frame_all(&records)).unwrap();
        let e = read_examples(dir.path(), vertical, &cfg.learning, 4_000_000_000_000).unwrap_err();
        assert!(e.starts_with(LEDGER_UNUSABLE), "{e}");
        assert!(
            e.contains("seg-00000001.jsonl:3: not a readable record"),
            "{e}"
        );
    }

    /// Black-box round 233b: deliveries to bids recorded without `bx` (under the reserve,
    /// tried as the last fallbacks) were left out of the realization examples without a
    /// word. Still no example (the features the model would need were not recorded), and
    /// the notes say how many.
    #[test]
    fn deliveries_to_bids_without_buyer_features_are_left_out_and_said() {
        let cfg = demo_config();
        let vertical = &cfg.verticals[0];
        let (x, bx) = feature_lists(vertical);
        let at = "2026-11-29T10:00:00.000Z";
        let mut records = Vec::new();
        for i in 0..5 {
            // `b` scored, `c` under the reserve: no `bx`.
            records.push(format!(
                r#"{{"type":"auction","v":5,"at":"{at}","auction_id":"au_{i}","vertical":"auto_insurance","test":false,"features_version":1,"x":{x},"buyers":[{{"buyer":"b","outcome":"bid","bx":{bx}}},{{"buyer":"c","outcome":"bid"}}]}}"#
            ));
            // The first two sell to `c` after `b` rejects; the others to `b`.
            let to_c = i < 2;
            records.push(format!(
                r#"{{"type":"post_sent","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"b","lead_id":"ld_{i}","attempt":0}}"#
            ));
            if to_c {
                records.push(format!(
                    r#"{{"type":"post_attempt","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"b","lead_id":"ld_{i}","attempt":0,"outcome":"rejected"}}"#
                ));
                records.push(format!(
                    r#"{{"type":"post_sent","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"c","lead_id":"ld_{i}","attempt":1}}"#
                ));
            }
            let buyer = if to_c { "c" } else { "b" };
            records.push(format!(
                r#"{{"type":"sale","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"{buyer}","lead_id":"ld_{i}"}}"#
            ));
        }
        let dir = one_segment(&records);
        let ex = read_examples(dir.path(), vertical, &cfg.learning, 4_000_000_000_000).unwrap();
        // b's five deliveries (two rejected, three sold); c's two sales have no features.
        assert_eq!(ex.realization.len(), 5);
        assert_eq!(ex.notes.len(), 1, "{:?}", ex.notes);
        assert!(
            ex.notes[0].starts_with("2 delivered post(s) to bids recorded without buyer features"),
            "{:?}",
            ex.notes
        );
    }

    /// Black-box round 165a: delivered posts whose outcome is unknown (a `post_sent` with
    /// neither a sale nor an attempt after it) were left out of training without a word.
    /// They are still no example (no label), and the notes say how many; a delivery with
    /// an outcome, or another vertical's, is not counted.
    #[test]
    fn deliveries_whose_outcome_is_unknown_are_left_out_and_said() {
        let cfg = demo_config();
        let vertical = &cfg.verticals[0];
        let (x, bx) = feature_lists(vertical);
        let at = "2026-11-29T10:00:00.000Z";
        let mut records = Vec::new();
        for i in 0..6 {
            records.push(format!(
                r#"{{"type":"auction","v":5,"at":"{at}","auction_id":"au_{i}","vertical":"auto_insurance","test":false,"features_version":1,"x":{x},"buyers":[{{"buyer":"b","outcome":"bid","bx":{bx}}}]}}"#
            ));
            records.push(format!(
                r#"{{"type":"post_sent","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"b","lead_id":"ld_{i}","attempt":0}}"#
            ));
            // Two of them are cut off: no outcome.
            match i {
                0 | 1 => {}
                2 => records.push(format!(
                    r#"{{"type":"post_attempt","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"b","lead_id":"ld_{i}","attempt":0,"outcome":"rejected"}}"#
                )),
                _ => records.push(format!(
                    r#"{{"type":"sale","v":5,"at":"{at}","auction_id":"au_{i}","buyer":"b","lead_id":"ld_{i}"}}"#
                )),
            }
        }
        // Another vertical's cut-off delivery is not this one's to count.
        records.push(format!(
            r#"{{"type":"post_sent","v":5,"at":"{at}","auction_id":"au_other","buyer":"b","lead_id":"ld_o","attempt":0}}"#
        ));
        let dir = one_segment(&records);
        let ex = read_examples(dir.path(), vertical, &cfg.learning, 4_000_000_000_000).unwrap();
        assert_eq!(ex.realization.len(), 4, "the four with an outcome");
        assert_eq!(ex.notes.len(), 1, "{:?}", ex.notes);
        assert!(
            ex.notes[0].starts_with("2 delivered post(s) whose outcome is unknown"),
            "{:?}",
            ex.notes
        );
        // A run refused for too little data says them too (round 166a).
        let e = train_vertical(
            &cfg,
            dir.path(),
            "auto_insurance",
            4_000_000_000_000,
            Some("v-unknown-test"),
        )
        .unwrap_err();
        assert!(e.starts_with(REFUSED), "{e}");
        assert!(
            e.contains("; 2 delivered post(s) whose outcome is unknown"),
            "{e}"
        );
    }

    /// A set that cannot be written whole leaves no temporary directory behind, and the
    /// error names the set (black-box round 90b: a full disk left `.tmp-*` directories).
    #[test]
    fn a_model_set_that_cannot_be_written_leaves_nothing_behind() {
        let root = tempfile::tempdir().unwrap();
        let manifest = Manifest {
            format: 1,
            kind: ModelKind::LeadScore,
            vertical: "v".into(),
            version: "v1".into(),
            features_version: 1,
            features: Vec::new(),
            source: ModelSource::Trained,
            created_at: "2026-12-04T00:00:00Z".into(),
            window: None,
            train_rows: None,
            heldout: None,
            xgboost: None,
            params: None,
        };
        let made = [(ModelKind::LeadScore, b"{}".to_vec(), manifest)];
        // The set's name is taken by a directory that is not empty: the rename fails.
        let dir = root.path().join("v").join("v1");
        std::fs::create_dir_all(dir.join("taken")).unwrap();
        let e = write_set(&dir, &made).unwrap_err();
        assert!(e.contains(&crate::cli_out::Shown(&dir).to_string()), "{e}");
        let left: Vec<_> = std::fs::read_dir(root.path().join("v"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["v1"], "no temporary directory is left");
        // A file where the vertical's directory (or the models directory) should be: the
        // error names it as not a directory (black-box round 129a: "File exists").
        let file = root.path().join("w");
        std::fs::write(&file, b"").unwrap();
        for dir in [file.join("v1"), file.join("deeper").join("v1")] {
            let e = write_set(&dir, &made).unwrap_err();
            assert_eq!(
                e,
                format!("{} is not a directory", crate::cli_out::Shown(&file))
            );
        }
        // A directory that cannot be made is said as such (black-box round 199b).
        let e = write_set(Path::new("/proc/pingpost-no-such/v/v1"), &made).unwrap_err();
        assert!(
            e.starts_with("cannot create the model set's directory /proc/pingpost-no-such/v (learning.models_dir/<vertical>): "),
            "{e}"
        );
        // The same set written where nothing is in the way: whole, and no temporary left.
        let dir2 = root.path().join("v").join("v2");
        write_set(&dir2, &made).unwrap();
        assert!(dir2.join("lead_score.json").is_file());
        assert!(dir2.join("lead_score.manifest.json").is_file());
        let mut left: Vec<_> = std::fs::read_dir(root.path().join("v"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["v1", "v2"]);
    }

    #[test]
    fn a_model_no_better_than_a_constant_is_warned_about_and_never_promoted() {
        let y = [1.0, 0.0, 1.0, 0.0];
        // A constant 0.5 scores ln 2 = 0.6931 on these rows.
        let w = no_better_than_a_constant(0.5, &y, 0.80, Some(0.7)).unwrap_or_default();
        assert!(
            w.contains("log loss 0.8000 is no better than 0.6931"),
            "{w}"
        );
        assert!(!w.contains("AUC"), "{w}");
        let w = no_better_than_a_constant(0.5, &y, 0.50, Some(0.45)).unwrap_or_default();
        assert!(w.contains("AUC 0.4500 is no better than chance"), "{w}");
        assert!(!w.contains("log loss"), "{w}");
        assert_eq!(no_better_than_a_constant(0.5, &y, 0.50, Some(0.8)), None);
        assert_eq!(no_better_than_a_constant(0.5, &y, 0.50, None), None);
        assert_eq!(no_better_than_a_constant(0.5, &[], 9.0, Some(0.1)), None);
        // A training rate of 0 or 1 is clamped: the constant's loss stays finite.
        let w = no_better_than_a_constant(0.0, &y, 50.0, None).unwrap_or_default();
        assert!(w.contains("constant"), "{w}");

        let warned = ModelReport {
            kind: "realization",
            examples: 4,
            train_rows: 2,
            heldout_rows: 2,
            auc: Some(0.4),
            logloss: Some(0.8),
            refused: None,
            warning: Some("no better".into()),
        };
        let empty = crate::models::ModelSet {
            vertical: "v".into(),
            version: "v1".into(),
            lead_score: None,
            realization: None,
        };
        let (wins, why) = promotion(
            std::slice::from_ref(&warned),
            None,
            &empty,
            &Heldout::default(),
        );
        assert!(!wins, "{why}");
        assert!(why.contains("realization model predicts"), "{why}");
        // A useless lead-score model beside a good realization model is no veto.
        let good = ModelReport {
            warning: None,
            ..warned.clone()
        };
        let weak_score = ModelReport {
            kind: "lead_score",
            ..warned
        };
        let (wins, why) = promotion(&[weak_score, good], None, &empty, &Heldout::default());
        assert!(wins, "{why}");
    }

    #[test]
    fn the_held_out_window_is_a_share_capped_in_rows() {
        // 20 % of 1,000 is 200, under the cap.
        assert_eq!(split(1_000, 20, 500, 50), 800);
        // 20 % of 10,000 is 2,000: capped at 500.
        assert_eq!(split(10_000, 20, 500, 50), 9_500);
        // No cap.
        assert_eq!(split(10_000, 20, 0, 50), 8_000);
        // A cap below the least held out is raised to it.
        assert_eq!(split(10_000, 20, 5, 50), 9_950);
        // Never more than there is.
        assert_eq!(split(0, 20, 500, 50), 0);
        assert_eq!(split(3, 50, 500, 50), 1);
    }

    #[test]
    fn recency_weights_halve_every_half_life() {
        assert!(recency_weights(5, 0).is_empty());
        let w = recency_weights(5, 2);
        assert_eq!(w.len(), 5);
        assert_eq!(w[4], 1.0);
        assert!((w[2] - 0.5).abs() < 1e-6);
        assert!((w[0] - 0.25).abs() < 1e-6);
        assert!(w.windows(2).all(|p| p[0] < p[1]));
        assert!(recency_weights(0, 10).is_empty());
    }
}
