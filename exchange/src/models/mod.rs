//! The models the exchange serves, per vertical: loading a model set from the model
//! directory, checking it against the configuration, the champion pointer, and the
//! per-buyer statistics behind cold start ([`stats`]).
//!
//! A model set is `<models_dir>/<vertical>/<version>/` with `lead_score.json` and
//! `realization.json` (XGBoost JSON models; either may be absent) and each one's
//! `<kind>.manifest.json`. `<models_dir>/<vertical>/CHAMPION` names the version that
//! serves (empty: none); `HISTORY` lists every version that served, oldest first, so
//! `pingpost models rollback` can go back one.
//!
//! Never: serves a model whose manifest's features differ from the configuration's, or a
//! file over the size limit; a refused model leaves the serving one in place.

pub mod cli;
pub mod learning;
pub mod stats;
pub mod train;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::{LearningConfig, Vertical};
use crate::core::model::manifest::{valid_version, Manifest, ModelKind, MANIFEST_BYTES_MAX};
use crate::core::model::xgb::{Objective, XgbModel, MODEL_BYTES_MAX};

/// The file naming the serving version.
pub const CHAMPION: &str = "CHAMPION";
/// The versions that served, oldest first, one per line.
pub const HISTORY: &str = "HISTORY";
/// The new `HISTORY` of a swap, written before `CHAMPION` and moved into place after it.
const HISTORY_NEXT: &str = ".HISTORY.next";
/// Most lines `HISTORY` keeps.
pub const HISTORY_MAX: usize = 1_000;
/// Longest `HISTORY` file read.
pub const HISTORY_BYTES_MAX: usize = 1 << 20;

/// One loaded model and its manifest.
#[derive(Debug)]
pub struct Served {
    pub model: XgbModel,
    pub manifest: Manifest,
}

/// A vertical's models of one version.
#[derive(Debug)]
pub struct ModelSet {
    pub vertical: String,
    pub version: String,
    pub lead_score: Option<Served>,
    pub realization: Option<Served>,
}

impl ModelSet {
    pub fn get(&self, kind: ModelKind) -> Option<&Served> {
        match kind {
            ModelKind::LeadScore => self.lead_score.as_ref(),
            ModelKind::Realization => self.realization.as_ref(),
        }
    }

    /// The lead's 0-100 score from the lead-score model over `lead_x`: the output
    /// clamped to [0, 1] (`+inf` scores 100, `-inf` 0), then `round(100 p)`. A served
    /// model's output cannot be NaN ([`MARGIN_BOUND_MAX`] is checked at load); were it
    /// NaN anyway, the lead scores 0, so every buyer's `score_floor` above 0 keeps it out
    /// (never `None`, which would skip the floors).
    pub fn score(&self, lead_x: &[f32]) -> Option<u8> {
        let s = self.lead_score.as_ref()?;
        Some(score_of(s.model.predict(lead_x)))
    }

    /// Every way this set no longer fits `vertical` (after a configuration reload).
    pub fn mismatches(&self, vertical: &Vertical) -> Vec<String> {
        let Some(spec) = vertical.features.as_ref() else {
            return vec![format!(
                "model {} serves, but the vertical no longer declares [verticals.{}.features]",
                self.version, vertical.name
            )];
        };
        let mut out = Vec::new();
        for kind in ModelKind::ALL {
            if let Some(s) = self.get(kind) {
                for m in s.manifest.mismatches(kind, &vertical.name, spec) {
                    out.push(format!(
                        "the serving {} model {} {m}",
                        kind.as_str(),
                        self.version
                    ));
                }
            }
        }
        out
    }
}

/// The 0-100 score of a lead-score model's output (see [`ModelSet::score`]).
pub fn score_of(p: f32) -> u8 {
    if p.is_nan() {
        return 0;
    }
    (f64::from(p).clamp(0.0, 1.0) * 100.0).round() as u8
}

/// Why `model` cannot be a model of a set: both of a set's models are read as
/// probabilities (a lead's chance to sell and be kept, a buyer's to accept and keep it),
/// so a `binary:logitraw` model, whose output is the margin, is refused (black-box round
/// 152b: one was served, and its margins were cut to 1 ppm and 1,000,000 ppm).
pub fn not_a_probability(model: &XgbModel) -> Option<&'static str> {
    match model.objective() {
        Objective::Logistic => None,
        Objective::RawMargin => Some(
            "its objective is binary:logitraw, whose output is a margin, not a probability: \
             a set's models must be binary:logistic (or reg:logistic)",
        ),
    }
}

/// Largest [`XgbModel::margin_bound`] a served model may have: below it no input can make
/// the `f32` sum of its leaves overflow, so its output is always finite (never `±inf`,
/// never NaN). A model past it is refused at import, swap and start.
pub const MARGIN_BOUND_MAX: f64 = 1e37;

/// `<models_dir>/<vertical>`.
pub fn vertical_dir(learning: &LearningConfig, vertical: &str) -> PathBuf {
    learning.models_dir.join(vertical)
}

/// `<models_dir>/<vertical>/<version>`.
pub fn set_dir(learning: &LearningConfig, vertical: &str, version: &str) -> PathBuf {
    vertical_dir(learning, vertical).join(version)
}

/// `O_NONBLOCK`, for `OpenOptionsExt::custom_flags`: opening a FIFO never waits for
/// the other end.
fn nonblocking() -> i32 {
    i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0)
}

/// Reads at most `max` bytes of `path`; a longer file is an error (never read whole), and
/// so is anything but a regular file (a symlink is followed to what it names). It is
/// opened without blocking, so a FIFO without a writer is refused at once rather than
/// holding the caller (black-box round 46: a model file that was a FIFO froze the model
/// loader, every admin request queued behind it, and the start).
pub fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblocking())
        .open(path)
        .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(path)))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(path)))?;
    if !meta.is_file() {
        return Err(format!(
            "{}: not a regular file (a FIFO, a device or a directory is not read)",
            crate::cli_out::Shown(path)
        ));
    }
    // Refused by its size before a byte is read (black-box round 88a: a 70 MB file was
    // read to the limit first, 0.46 s); the bounded read below still holds a file that
    // grows meanwhile.
    if meta.len() > max as u64 {
        return Err(format!(
            "{}: over the {max}-byte limit",
            crate::cli_out::Shown(path)
        ));
    }
    let mut buf = Vec::new();
    f.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(path)))?;
    if buf.len() > max {
        return Err(format!(
            "{}: over the {max}-byte limit",
            crate::cli_out::Shown(path)
        ));
    }
    Ok(buf)
}

/// Loads and checks `<kind>.json` with its manifest against `vertical`.
pub fn load_served(
    dir: &Path,
    kind: ModelKind,
    vertical: &Vertical,
    version: &str,
) -> Result<Option<Served>, Vec<String>> {
    let model_path = dir.join(format!("{}.json", kind.as_str()));
    let manifest_path = dir.join(format!("{}.manifest.json", kind.as_str()));
    // Present as a name, whatever it is: a symlink that loops or leads nowhere is read
    // (and refused with the system's reason), never taken for a missing file.
    let present = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let (has_model, has_manifest) = (present(&model_path), present(&manifest_path));
    if !has_model && !has_manifest {
        return Ok(None);
    }
    // Every check that does not depend on a failed one runs, so a refusal lists every
    // problem at once: a broken or missing model file does not hide its manifest's
    // mismatches, nor a broken or missing manifest the model's.
    let mut errors = Vec::new();
    let manifest = if has_manifest {
        read_bounded(&manifest_path, MANIFEST_BYTES_MAX).and_then(|b| {
            Manifest::from_json(&b)
                .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(&manifest_path)))
        })
    } else {
        Err(format!(
            "{}: missing (every model needs its manifest)",
            crate::cli_out::Shown(&manifest_path)
        ))
    };
    let model = if has_model {
        read_bounded(&model_path, MODEL_BYTES_MAX).and_then(|b| {
            XgbModel::from_json(&b)
                .map_err(|e| format!("{}: {e}", crate::cli_out::Shown(&model_path)))
        })
    } else {
        Err(format!("{}: missing", crate::cli_out::Shown(&model_path)))
    };
    let spec = vertical.features.as_ref();
    if spec.is_none() {
        errors.push(format!(
            "vertical {} declares no [verticals.{}.features], so no model can serve it",
            vertical.name, vertical.name
        ));
    }
    match &manifest {
        Ok(manifest) => {
            if let Some(spec) = spec {
                for m in manifest.mismatches(kind, &vertical.name, spec) {
                    errors.push(format!(
                        "{}: the model {m}",
                        crate::cli_out::Shown(&manifest_path)
                    ));
                }
            }
            if manifest.version != version {
                errors.push(format!(
                    "{}: names version {:?}, but lives in directory {version:?}",
                    crate::cli_out::Shown(&manifest_path),
                    manifest.version
                ));
            }
        }
        Err(e) => errors.push(e.clone()),
    }
    match &model {
        Ok(model) => {
            if let Some(spec) = spec {
                let want = kind.expected_features(spec).len();
                if model.num_features() != want {
                    errors.push(format!(
                        "{}: the model takes {} features, the configuration gives {want}",
                        crate::cli_out::Shown(&model_path),
                        model.num_features()
                    ));
                }
            }
            if let Some(why) = not_a_probability(model) {
                errors.push(format!("{}: {why}", crate::cli_out::Shown(&model_path)));
            }
            let bound = model.margin_bound();
            if bound.is_nan() || bound >= MARGIN_BOUND_MAX {
                errors.push(format!(
                    "{}: the leaf values are too large: the margin can reach {bound:e}, \
                     past {MARGIN_BOUND_MAX:e}, where the float sum could overflow to an \
                     infinite or NaN output",
                    crate::cli_out::Shown(&model_path)
                ));
            }
        }
        Err(e) => errors.push(e.clone()),
    }
    match (manifest, model, errors.is_empty()) {
        (Ok(manifest), Ok(model), true) => Ok(Some(Served { model, manifest })),
        _ => Err(errors),
    }
}

/// Loads model set `version` of `vertical` from the model directory, or every problem.
/// What a start of `cfg` would say of each vertical's champion model, for
/// `--check-config` (each line begins `warning:` or `note:`): one that cannot be read or would not load (the vertical would serve
/// no model, cold-start rates, and `/readyz` answer 503 until one is served), and a
/// `learning.models_dir` that does not exist while a vertical declares features (every
/// such vertical would serve no model; after a move, name the new directory).
pub fn champion_warnings(cfg: &crate::config::Config) -> Vec<String> {
    let learning = &cfg.learning;
    let mut out = Vec::new();
    if !learning.models_dir.exists() {
        if cfg.verticals.iter().any(|v| v.features.is_some()) {
            out.push(format!(
                "note: learning.models_dir: {} does not exist, so no vertical would serve a model (cold-start rates): as it should be before the first model is trained or imported; after moving the models, name their new directory",
                crate::cli_out::Shown(&learning.models_dir)
            ));
        }
        return out;
    }
    // Round 113a: a file there was told as each vertical's unreadable CHAMPION.
    if !learning.models_dir.is_dir() {
        out.push(format!(
            "warning: learning.models_dir: {} is not a directory: a start reads no CHAMPION there, its verticals serve no model and /readyz answers 503; name the models directory",
            crate::cli_out::Shown(&learning.models_dir)
        ));
        return out;
    }
    for v in &cfg.verticals {
        match read_champion_checked(learning, &v.name) {
            Ok(None) => {}
            Ok(Some(version)) => {
                if let Err(problems) = load_set(learning, v, &version) {
                    out.push(format!(
                        "warning: verticals.{}: the champion model {} would not load at start ({}): the vertical would serve no model (cold-start rates) and /readyz answer 503 until one is served",
                        v.name,
                        proto::error::printable_name(&version),
                        problems.join("; ")
                    ));
                }
            }
            Err(e) => out.push(format!(
                "warning: verticals.{}: its CHAMPION cannot be read ({e}): the vertical would serve no model and /readyz answer 503",
                v.name
            )),
        }
    }
    out
}

pub fn load_set(
    learning: &LearningConfig,
    vertical: &Vertical,
    version: &str,
) -> Result<ModelSet, Vec<String>> {
    if !valid_version(version) {
        return Err(vec![format!(
            "version {:?} is not a model version: {}",
            crate::server::truncate(version, 64),
            crate::core::model::manifest::VERSION_RULE
        )]);
    }
    let dir = set_dir(learning, &vertical.name, version);
    if !dir.is_dir() {
        return Err(vec![format!(
            "no model set at {}",
            crate::cli_out::Shown(&dir)
        )]);
    }
    let mut errors = Vec::new();
    let mut get = |kind| match load_served(&dir, kind, vertical, version) {
        Ok(s) => s,
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let lead_score = get(ModelKind::LeadScore);
    let realization = get(ModelKind::Realization);
    if errors.is_empty() && lead_score.is_none() && realization.is_none() {
        errors.push(format!(
            "{} holds neither lead_score.json nor realization.json",
            crate::cli_out::Shown(&dir)
        ));
    }
    if !errors.is_empty() {
        // One problem of the vertical (no features) is found for each model: once.
        let mut seen = std::collections::HashSet::new();
        errors.retain(|e| seen.insert(e.clone()));
        return Err(errors);
    }
    Ok(ModelSet {
        vertical: vertical.name.clone(),
        version: version.to_string(),
        lead_score,
        realization,
    })
}

/// Longest `CHAMPION` file read (a version name is at most 64 characters).
pub const CHAMPION_BYTES_MAX: usize = 4096;

/// The version `CHAMPION` names: `Ok(None)` when there is no file or it is empty (no
/// model, on purpose); `Err` when it exists but cannot be read as one (a directory, over
/// [`CHAMPION_BYTES_MAX`], unreadable), which is a failed champion, not "no model".
pub fn read_champion_checked(
    learning: &LearningConfig,
    vertical: &str,
) -> Result<Option<String>, String> {
    let path = vertical_dir(learning, vertical).join(CHAMPION);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", crate::cli_out::Shown(&path))),
        Ok(m) if m.is_dir() => {
            return Err(format!("{}: is a directory", crate::cli_out::Shown(&path)))
        }
        Ok(_) => {}
    }
    let text = read_bounded(&path, CHAMPION_BYTES_MAX)?;
    let v = String::from_utf8_lossy(&text).trim().to_string();
    Ok((!v.is_empty()).then_some(v))
}

/// Whether the vertical's `CHAMPION` file is there (as anything: a file, a symlink, a
/// directory), as opposed to removed.
pub fn champion_exists(learning: &LearningConfig, vertical: &str) -> bool {
    std::fs::symlink_metadata(vertical_dir(learning, vertical).join(CHAMPION)).is_ok()
}

/// The versions that served, oldest first.
pub fn history(learning: &LearningConfig, vertical: &str) -> Vec<String> {
    read_bounded(
        &vertical_dir(learning, vertical).join(HISTORY),
        HISTORY_BYTES_MAX,
    )
    .map(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// The lock file of a vertical's model directory (see [`lock_vertical`]).
pub const LOCK: &str = ".lock";

/// Takes the vertical's model-directory lock (an exclusive `flock` on `LOCK`, released
/// when the file is dropped): every read-modify-write of `CHAMPION` and `HISTORY` (a
/// swap, a promotion, a rollback, by the exchange or a command) holds it, so two never
/// interleave (black-box round 21: a rollback racing `POST /admin/models` left
/// `CHAMPION` naming another version than the one the answer said, and two rollbacks
/// both went back the same one step).
fn lock_vertical(dir: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK);
    let at = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{}: {e}", crate::cli_out::Shown(&path)))
    };
    std::fs::create_dir_all(dir)?;
    // Opened without blocking and only as a regular file, as `HISTORY` is read: a `.lock`
    // that is a FIFO would otherwise hold the opener until a reader came.
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(nonblocking())
        .open(&path)
        .map_err(at)?;
    if !f.metadata().map_err(at)?.is_file() {
        return Err(at(std::io::Error::other("not a regular file")));
    }
    // Another swap, rollback or promotion holds it for milliseconds; a holder that keeps
    // it longer (any process that can open the file can lock it) gets the caller an error
    // after `LOCK_WAIT_MS`, not a wait without end (black-box round 48: a `flock` held
    // from outside stalled every swap, and the swap applied after its caller had gone).
    for _ in 0..LOCK_WAIT_MS / LOCK_RETRY_MS {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => {
                std::thread::sleep(std::time::Duration::from_millis(LOCK_RETRY_MS));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(at(e)),
        }
    }
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(at(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            format!(
                "held by another process for over {} s (another swap, rollback or promotion, or a lock taken from outside)",
                LOCK_WAIT_MS / 1000
            ),
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(at(e)),
    }
}

/// How long a swap, rollback or promotion waits for the vertical's `.lock`.
pub const LOCK_WAIT_MS: u64 = 5_000;
/// How often it looks again meanwhile.
const LOCK_RETRY_MS: u64 = 20;

/// Writes `file` atomically (a temporary file of this process and call, fsynced, renamed
/// over it: two writers never share a temporary file).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // No temporary file is left behind (black-box round 47).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(parent) = path.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Makes `version` (or none) the champion: `CHAMPION` names it, and `HISTORY` gains it
/// (unless it already ends with it).
pub fn write_champion(
    learning: &LearningConfig,
    vertical: &str,
    version: Option<&str>,
) -> std::io::Result<()> {
    let held = lock_champion(learning, vertical)?;
    held.write(learning, vertical, version)
}

/// The vertical's `.lock`, held: a decision to promote reads `CHAMPION`, compares and
/// writes it with no other process's swap, rollback or promotion in between (the
/// exchange's retraining and `pingpost train --promote` both hold it across the three;
/// before, a promotion by one within the other's milliseconds was overwritten).
/// Released when dropped.
#[derive(Debug)]
pub struct ChampionLock(#[allow(dead_code)] std::fs::File);

/// Takes the vertical's `.lock` (waiting up to [`LOCK_WAIT_MS`] for another holder).
pub fn lock_champion(learning: &LearningConfig, vertical: &str) -> std::io::Result<ChampionLock> {
    lock_vertical(&vertical_dir(learning, vertical)).map(ChampionLock)
}

/// Whether no one holds the vertical's `.lock` at this instant (one attempt, no wait).
pub fn champion_lock_free(learning: &LearningConfig, vertical: &str) -> bool {
    let path = vertical_dir(learning, vertical).join(LOCK);
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map(|f| f.try_lock().is_ok())
        .unwrap_or(true)
}

impl ChampionLock {
    /// [`write_champion`] under this lock.
    pub fn write(
        &self,
        learning: &LearningConfig,
        vertical: &str,
        version: Option<&str>,
    ) -> std::io::Result<()> {
        write_champion_held(learning, vertical, version)
    }
}

fn write_champion_held(
    learning: &LearningConfig,
    vertical: &str,
    version: Option<&str>,
) -> std::io::Result<()> {
    let dir = vertical_dir(learning, vertical);
    // The new `HISTORY` is written aside first (`.HISTORY.next`): if it cannot be
    // written, `CHAMPION` is left as it was, so the directory watch never serves a swap
    // that was refused (black-box round 46: with `HISTORY` made a directory, the refused
    // swap's `CHAMPION` was served 2 s later). Then `CHAMPION`, then the new `HISTORY`
    // replaces the old: a swap killed on the way never leaves in `HISTORY` a version that
    // did not serve (black-box rounds 179b and 184a: one killed between the two writes
    // did, and a rollback could go to it). If `CHAMPION` cannot be written, the new
    // `HISTORY` is dropped; if it then cannot replace the old, `CHAMPION` is put back.
    settle_history(learning, vertical, &dir);
    let next = dir.join(HISTORY_NEXT);
    let current = read_champion_checked(learning, vertical);
    let mut staged = false;
    // Read without blocking: a `HISTORY` that is a FIFO or a directory refuses a swap
    // here (black-box round 47: a FIFO held the loader thread for good). Switching the
    // model off appends nothing and is never refused for `HISTORY`.
    let readable = match version {
        Some(_) => read_history_file(&dir).map(|_| true)?,
        None => read_history_file(&dir).is_ok(),
    };
    if readable {
        let mut h = history(learning, vertical);
        let read = h.len();
        // Entries after the champion's last one never served (a `CHAMPION` set back by
        // hand, or a swap of an earlier build killed between its two writes): dropped,
        // so a rollback goes to what served before.
        if let Ok(Some(champ)) = &current {
            if let Some(p) = h.iter().rposition(|x| x == champ) {
                h.truncate(p + 1);
            }
        }
        let cut = h.len() < read;
        let append = version.filter(|v| h.last().map(String::as_str) != Some(*v));
        if cut || append.is_some() {
            if let Some(v) = append {
                h.push(v.to_string());
            }
            if h.len() > HISTORY_MAX {
                h.drain(..h.len() - HISTORY_MAX);
            }
            let mut text = h.join("\n");
            text.push('\n');
            // A switch-off's staged history ends with a blank line: what its `CHAMPION`
            // names (nothing), so [`settle_history`] finishes one killed after it
            // (black-box round 186a: it was removed, and the never-served entries it
            // dropped came back for a rollback). `history` skips blank lines.
            if version.is_none() {
                text.push('\n');
            }
            match write_atomic(&next, text.as_bytes()) {
                Ok(()) => staged = true,
                Err(e) if version.is_some() => return Err(named(HISTORY, e)),
                // A switch-off goes on: its `HISTORY` keeps the stray entries, which a
                // rollback from it names (`rollback_target`).
                Err(_) => {}
            }
        }
    }
    // A swap whose history cannot be moved into place is undone; a switch-off goes on.
    let undo = version.and(current.ok()).map(Option::unwrap_or_default);
    match commit_change(&dir, version.unwrap_or(""), staged, undo.as_deref()) {
        Err((HISTORY, _)) if version.is_none() => Ok(()),
        done => done.map_err(|(file, e)| named(file, e)),
    }
}

/// The last two steps of a swap, switch-off or rollback: `CHAMPION` written, then the
/// staged `.HISTORY.next` (when `staged`) moved into place. A `CHAMPION` that cannot be
/// written drops the staged history; a history that cannot be moved is dropped too, and
/// `CHAMPION` is put back to `undo` when there is one. The error names the file.
fn commit_change(
    dir: &Path,
    champion: &str,
    staged: bool,
    undo: Option<&str>,
) -> Result<(), (&'static str, std::io::Error)> {
    let next = dir.join(HISTORY_NEXT);
    if let Err(e) = write_atomic(&dir.join(CHAMPION), champion.as_bytes()) {
        if staged {
            let _ = std::fs::remove_file(&next);
        }
        return Err((CHAMPION, e));
    }
    if staged {
        if let Err(e) = std::fs::rename(&next, dir.join(HISTORY)) {
            let _ = std::fs::remove_file(&next);
            if let Some(was) = undo {
                let _ = write_atomic(&dir.join(CHAMPION), was.as_bytes());
            }
            return Err((HISTORY, e));
        }
    }
    Ok(())
}

/// Finishes or undoes what a swap, switch-off or rollback killed midway left: a
/// `.HISTORY.next` whose last line is what `CHAMPION` names (a blank line for a
/// switch-off: nothing) was that change's history, its `CHAMPION` written (black-box
/// round 185a: killed before the move, the version that served before it was out of
/// reach of a rollback): it is moved into place; any other was a change that never took
/// effect: it is removed. So are the temporary files of `CHAMPION` and `HISTORY` a kill
/// left (black-box round 186a: `CHAMPION.tmp.PID.N` piled up). Called with the
/// vertical's lock held: no write of theirs is under way.
fn settle_history(learning: &LearningConfig, vertical: &str, dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let temporary = ["CHAMPION.tmp.", "HISTORY.tmp.", ".HISTORY.tmp."]
                .iter()
                .any(|p| name.starts_with(p));
            if temporary && e.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let next = dir.join(HISTORY_NEXT);
    let Ok(meta) = std::fs::symlink_metadata(&next) else {
        return;
    };
    let staged_last = meta
        .is_file()
        .then(|| read_bounded(&next, HISTORY_BYTES_MAX).ok())
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.lines().last().map(str::to_string));
    let champion = read_champion_checked(learning, vertical).map(Option::unwrap_or_default);
    match (champion, staged_last) {
        (Ok(champion), Some(last)) if champion == last => {
            if std::fs::rename(&next, dir.join(HISTORY)).is_err() {
                let _ = std::fs::remove_file(&next);
            }
        }
        _ => {
            let _ = std::fs::remove_file(&next);
        }
    }
}

/// `HISTORY`'s bytes (`None`: there is none), read as [`read_bounded`] reads: never
/// waiting on a FIFO; anything but a regular file is an error naming it.
fn read_history_file(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let path = dir.join(HISTORY);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(named(HISTORY, e)),
        Ok(_) => read_bounded(&path, HISTORY_BYTES_MAX)
            .map(Some)
            .map_err(|e| named(HISTORY, std::io::Error::other(e))),
    }
}

/// `e`, saying which file of the vertical's model directory it is about.
fn named(file: &str, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{file}: {e}"))
}

/// Where a rollback goes: the version before the champion in `HISTORY`, the history it
/// leaves (without the champion's entry, nor any after it), and what it has to say when
/// `HISTORY` and `CHAMPION` disagree (edited by hand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTarget {
    pub target: String,
    pub history: Vec<String>,
    pub note: Option<String>,
}

/// The version before the champion in `HISTORY` (what a rollback goes back to), and the
/// history without the champion's last entry; `Err` when `CHAMPION` cannot be read (a
/// FIFO, a directory): what serves is not known, so neither is what came before it. A
/// `HISTORY` that does not end with the champion (edited by hand) is said to, and the
/// rollback goes back from the champion's last entry in it, dropping the entries after
/// it (black-box round 101b: it went to `HISTORY`'s last line, which could be forward of
/// what served, without a word); a champion not in it goes to its last line, saying so.
pub fn rollback_target(
    learning: &LearningConfig,
    vertical: &str,
) -> Result<Option<RollbackTarget>, String> {
    let mut h = history(learning, vertical);
    let champion = read_champion_checked(learning, vertical)?;
    let mut note = None;
    if let (None, Some(last)) = (champion.as_ref(), h.last()) {
        // Serving no model (`"version": null`) is not in HISTORY: going back undoes it
        // (black-box round 110c: nothing said that the version switched off came back).
        note = Some(format!(
            "no model is served (CHAMPION is empty: switched off): going back to HISTORY's last entry, {} (the last version the exchange promoted or swapped in; a CHAMPION written by hand is not in HISTORY)",
            proto::error::printable_name(last)
        ));
    }
    if let Some(champ) = champion.as_ref() {
        // Names from files an operator edits: printed as safe text.
        let c = proto::error::printable_name(champ);
        match h.iter().rposition(|v| v == champ) {
            Some(p) if p + 1 == h.len() => {
                h.pop();
            }
            Some(p) => {
                let dropped = h.split_off(p);
                note = Some(format!(
                    "HISTORY does not end with the champion {c} (edited by hand?): going back from its last entry of {c}, and dropping the {} entr{} after it ({})",
                    dropped.len() - 1,
                    if dropped.len() == 2 { "y" } else { "ies" },
                    dropped
                        .get(1..)
                        .unwrap_or_default()
                        .iter()
                        .map(|v| proto::error::printable_name(v))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            None => {
                note = Some(format!(
                    "the champion {c} is not in HISTORY (edited by hand?): going back to HISTORY's last entry"
                ));
            }
        }
    }
    Ok(h.last().cloned().map(|target| RollbackTarget {
        target,
        history: h,
        note,
    }))
}

/// Goes back one version: the previous entry of `HISTORY` becomes the champion and the
/// current one leaves the history. Returns the version now serving, and a note when
/// `HISTORY` and `CHAMPION` disagreed ([`rollback_target`]).
pub fn rollback(
    learning: &LearningConfig,
    vertical: &Vertical,
) -> Result<(String, Option<String>), Vec<String>> {
    let dir = vertical_dir(learning, &vertical.name);
    // Nothing to go back to, and nothing made to say so (black-box round 111a: the
    // directory and its `.lock` were created for a refusal that "changes nothing").
    if !dir.exists() {
        return Err(vec![format!(
            "vertical {}: no earlier model version: {} does not exist (no version was ever swapped in or promoted)",
            vertical.name,
            crate::cli_out::Shown(&dir)
        )]);
    }
    // Held from reading HISTORY to writing CHAMPION: a concurrent swap or rollback
    // waits, then reads what this one wrote.
    let _lock = lock_vertical(&dir)
        // The error names the file already (black-box round 228a: named twice).
        .map_err(|e| vec![e.to_string()])?;
    settle_history(learning, &vertical.name, &dir);
    // A `HISTORY` that cannot be read says so (black-box round 47: a FIFO or a directory
    // read as "no earlier model version").
    read_history_file(&dir).map_err(|e| {
        vec![format!(
            "vertical {}: {} cannot be read: {e}",
            vertical.name,
            crate::cli_out::Shown(&dir)
        )]
    })?;
    let target = rollback_target(learning, &vertical.name).map_err(|e| {
        vec![format!(
            "vertical {}: the serving version is not known, so neither is the one before it: {e}",
            vertical.name
        )]
    })?;
    let Some(RollbackTarget {
        target,
        history: h,
        note,
    }) = target
    else {
        let history = dir.join(HISTORY);
        let missing = if history.exists() {
            ""
        } else {
            " (it does not exist: no version was ever swapped in or promoted)"
        };
        return Err(vec![format!(
            "vertical {}: no earlier model version in {}{missing}",
            vertical.name,
            crate::cli_out::Shown(&history)
        )]);
    };
    // The target must still load under today's configuration. A refusal says too that
    // HISTORY and CHAMPION disagreed (black-box round 106a: only the load's problem).
    load_set(learning, vertical, &target).map_err(|mut e| {
        if let Some(n) = &note {
            // Nothing was changed: said, as the note reads as done (round 107a).
            e.insert(
                0,
                format!(
                    "vertical {}: {n} (not done: nothing was changed, the version it would go back to does not load)",
                    vertical.name
                ),
            );
        }
        e
    })?;
    let mut text = h.join("\n");
    text.push('\n');
    let name = |f: &str| crate::cli_out::Shown(&dir.join(f)).to_string();
    // As a swap: the new `HISTORY` aside, `CHAMPION`, then `HISTORY` moved into place
    // (black-box round 185a: killed between its two writes, the version serving was
    // gone from `HISTORY`); [`settle_history`] finishes or undoes one killed midway.
    let next = dir.join(HISTORY_NEXT);
    let was = read_champion_checked(learning, &vertical.name);
    write_atomic(&next, text.as_bytes()).map_err(|e| vec![format!("{}: {e}", name(HISTORY))])?;
    // A failed rollback changes nothing (black-box round 47: `HISTORY` lost the version
    // `CHAMPION` still named).
    let undo = was.ok().map(Option::unwrap_or_default);
    commit_change(&dir, &target, true, undo.as_deref())
        .map_err(|(file, e)| vec![format!("{}: {e}", name(file))])?;
    Ok((target, note))
}

/// The versions present for `vertical`, sorted by name.
pub fn list_versions(learning: &LearningConfig, vertical: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(vertical_dir(learning, vertical)) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .filter(|v| valid_version(v) && v != CHAMPION && v != HISTORY)
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learning_in(dir: &Path) -> LearningConfig {
        LearningConfig {
            models_dir: dir.to_path_buf(),
            ..LearningConfig::default()
        }
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    /// `f`'s result, run on a thread of its own, or `None` if it took longer than
    /// `ms` (a call that waits without end fails the test rather than hangs it).
    fn within<T: Send + 'static>(ms: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_millis(ms)).ok()
    }

    /// Makes `version` the champion of vertical `auto` within `ms`.
    fn swap_within(
        learning: &LearningConfig,
        version: &'static str,
        ms: u64,
    ) -> Option<Result<(), String>> {
        let l = learning.clone();
        within(ms, move || {
            write_champion(&l, "auto", Some(version)).map_err(|e| e.to_string())
        })
    }

    /// A rollback goes back from the champion, wherever `HISTORY` has it, and says when
    /// the two disagree (black-box round 101b: a hand-edited `HISTORY` that did not end
    /// with the champion was followed to its last line, forward of what served, silently).
    #[test]
    fn a_rollback_goes_back_from_the_champion_and_says_when_history_disagrees() {
        let dir = tempfile::tempdir().unwrap();
        let learning = learning_in(dir.path());
        let vdir = vertical_dir(&learning, "auto");
        std::fs::create_dir_all(&vdir).unwrap();
        let set = |champion: &str, history: &str| {
            std::fs::write(vdir.join(CHAMPION), champion).unwrap();
            std::fs::write(vdir.join(HISTORY), history).unwrap();
            rollback_target(&learning, "auto").unwrap()
        };
        let t = |target: &str, history: &[&str], note: Option<&str>| {
            Some(RollbackTarget {
                target: target.into(),
                history: history.iter().map(|v| v.to_string()).collect(),
                note: note.map(String::from),
            })
        };
        // As written by swaps: the champion last.
        assert_eq!(set("c", "a\nb\nc\n"), t("b", &["a", "b"], None));
        // Edited: the champion is not last; back from it, the entries after it dropped.
        assert_eq!(
            set("b", "a\nb\nc\nd\n"),
            t(
                "a",
                &["a"],
                Some("HISTORY does not end with the champion b (edited by hand?): going back from its last entry of b, and dropping the 2 entries after it (c, d)")
            )
        );
        assert_eq!(
            set("b", "a\nb\nc\n").and_then(|r| r.note),
            Some("HISTORY does not end with the champion b (edited by hand?): going back from its last entry of b, and dropping the 1 entry after it (c)".into())
        );
        // The champion is not in it at all: its last line, said.
        assert_eq!(
            set("x", "a\nb\n"),
            t(
                "b",
                &["a", "b"],
                Some("the champion x is not in HISTORY (edited by hand?): going back to HISTORY's last entry")
            )
        );
        // Nothing before the champion: nothing to go back to.
        assert_eq!(set("a", "a\nb\n").map(|r| r.target), None);
        // No model served (switched off): back to the version served before, said
        // (black-box round 110c: it came back silently); HISTORY is kept, so a second
        // rollback goes on to the one before.
        assert_eq!(
            set("", "a\nb\n"),
            t(
                "b",
                &["a", "b"],
                Some("no model is served (CHAMPION is empty: switched off): going back to HISTORY's last entry, b (the last version the exchange promoted or swapped in; a CHAMPION written by hand is not in HISTORY)")
            )
        );
        assert_eq!(set("", "").map(|r| r.target), None);
    }

    /// Black-box round 179b: a swap killed after writing `HISTORY` and before `CHAMPION`
    /// left a version in `HISTORY` that never served; the next swap appended after it
    /// (`va vb va`), and a rollback from `va` went to `vb`. A swap drops the entries
    /// after the champion's last one first.
    #[test]
    fn a_swap_drops_history_entries_that_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let learning = learning_in(dir.path());
        let vdir = vertical_dir(&learning, "auto");
        std::fs::create_dir_all(&vdir).unwrap();
        let history_after = |champion: &str, history: &str, swap: &'static str| {
            std::fs::write(vdir.join(CHAMPION), champion).unwrap();
            std::fs::write(vdir.join(HISTORY), history).unwrap();
            write_champion(&learning, "auto", Some(swap)).unwrap();
            std::fs::read_to_string(vdir.join(HISTORY)).unwrap()
        };
        // The cut-off swap's `vb` goes; the one that serves is appended.
        assert_eq!(history_after("va", "va\nvb\n", "vc"), "va\nvc\n");
        // Serving the champion again writes the history without the stray entry.
        assert_eq!(history_after("va", "va\nvb\n", "va"), "va\n");
        // A rollback from there goes to what served before, not to `vb`.
        assert_eq!(history_after("va", "v0\nva\nvb\n", "vc"), "v0\nva\nvc\n");
        assert_eq!(
            rollback_target(&learning, "auto").unwrap().unwrap().target,
            "va"
        );
        // A swap writes its `HISTORY` aside first and moves it into place after
        // `CHAMPION`: none is left aside, and one left by a swap killed before its
        // `CHAMPION` (black-box round 184a: `m1 m2` with no model serving, and a rollback
        // went to `m2`) is no part of the history: the next swap replaces it.
        std::fs::write(vdir.join(CHAMPION), "").unwrap();
        std::fs::write(vdir.join(HISTORY), "m1\n").unwrap();
        std::fs::write(vdir.join(HISTORY_NEXT), "m1\nm2\n").unwrap();
        assert_eq!(
            rollback_target(&learning, "auto").unwrap().unwrap().target,
            "m1"
        );
        write_champion(&learning, "auto", Some("m3")).unwrap();
        assert_eq!(
            std::fs::read_to_string(vdir.join(HISTORY)).unwrap(),
            "m1\nm3\n"
        );
        assert!(!vdir.join(HISTORY_NEXT).exists());
        // One killed after its `CHAMPION` and before the move is finished by the next
        // change (black-box round 185a: `m1 m2` then a swap to `m1` killed there, and
        // `m2`, which served, was out of reach of a rollback).
        std::fs::write(vdir.join(CHAMPION), "m1").unwrap();
        std::fs::write(vdir.join(HISTORY), "m1\nm2\n").unwrap();
        std::fs::write(vdir.join(HISTORY_NEXT), "m1\nm2\nm1\n").unwrap();
        settle_history(&learning, "auto", &vdir);
        assert_eq!(
            std::fs::read_to_string(vdir.join(HISTORY)).unwrap(),
            "m1\nm2\nm1\n"
        );
        assert_eq!(
            rollback_target(&learning, "auto").unwrap().unwrap().target,
            "m2"
        );
        std::fs::write(vdir.join(HISTORY), "m1\nm2\n").unwrap();
        std::fs::write(vdir.join(HISTORY_NEXT), "m1\nm2\nm1\n").unwrap();
        write_champion(&learning, "auto", Some("m3")).unwrap();
        assert_eq!(
            std::fs::read_to_string(vdir.join(HISTORY)).unwrap(),
            "m1\nm2\nm1\nm3\n"
        );
        // A rollback killed before its `CHAMPION` (its staged history ends with its
        // target, not with what serves) is undone.
        std::fs::write(vdir.join(HISTORY_NEXT), "m1\nm2\n").unwrap();
        settle_history(&learning, "auto", &vdir);
        assert!(!vdir.join(HISTORY_NEXT).exists());
        assert_eq!(
            std::fs::read_to_string(vdir.join(HISTORY)).unwrap(),
            "m1\nm2\nm1\nm3\n"
        );
        // A switch-off killed after its `CHAMPION` is finished too (black-box round
        // 186a: its staged history was removed, `m4`, which never served, came back, and
        // a rollback went to it); one killed before is undone.
        std::fs::write(vdir.join(CHAMPION), "").unwrap();
        std::fs::write(vdir.join(HISTORY), "m1\nm2\nm4\n").unwrap();
        std::fs::write(vdir.join(HISTORY_NEXT), "m1\nm2\n\n").unwrap();
        std::fs::write(vdir.join("CHAMPION.tmp.1.2"), "m9").unwrap();
        std::fs::write(vdir.join(".HISTORY.tmp.1.3"), "m9\n").unwrap();
        settle_history(&learning, "auto", &vdir);
        assert_eq!(history(&learning, "auto"), ["m1", "m2"]);
        assert_eq!(
            rollback_target(&learning, "auto").unwrap().unwrap().target,
            "m2"
        );
        assert!(!vdir.join("CHAMPION.tmp.1.2").exists());
        assert!(!vdir.join(".HISTORY.tmp.1.3").exists());
        std::fs::write(vdir.join(CHAMPION), "m2").unwrap();
        std::fs::write(vdir.join(HISTORY), "m1\nm2\n").unwrap();
        std::fs::write(vdir.join(HISTORY_NEXT), "m1\n\n").unwrap();
        settle_history(&learning, "auto", &vdir);
        assert_eq!(history(&learning, "auto"), ["m1", "m2"]);
        assert!(!vdir.join(HISTORY_NEXT).exists());
        // A switch-off drops them too: a rollback from it goes to what served before.
        std::fs::write(vdir.join(CHAMPION), "m1").unwrap();
        std::fs::write(vdir.join(HISTORY), "m0\nm1\nm2\n").unwrap();
        write_champion(&learning, "auto", None).unwrap();
        // (The blank line that marks a switch-off's history stays; `history` skips it.)
        assert_eq!(
            std::fs::read_to_string(vdir.join(HISTORY)).unwrap(),
            "m0\nm1\n\n"
        );
        assert_eq!(history(&learning, "auto"), ["m0", "m1"]);
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "");
        assert_eq!(
            rollback_target(&learning, "auto").unwrap().unwrap().target,
            "m1"
        );
        // Nothing is dropped when the history ends with the champion, when none serves
        // (switched off: its last entry is what served before), or when the champion is
        // not in it (written by hand).
        assert_eq!(history_after("vb", "va\nvb\n", "vc"), "va\nvb\nvc\n");
        assert_eq!(history_after("", "va\nvb\n", "vc"), "va\nvb\nvc\n");
        assert_eq!(history_after("x", "va\nvb\n", "vc"), "va\nvb\nvc\n");
    }

    /// Black-box round 46: a model file that is a FIFO with no writer is refused at
    /// once (not a regular file), never waited on; so is a directory.
    #[test]
    fn a_fifo_or_a_directory_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("realization.json");
        mkfifo(&fifo);
        let path = fifo.clone();
        let e = within(10_000, move || read_bounded(&path, 1024))
            .expect("reading a FIFO waited for a writer")
            .unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_bounded(dir.path(), 1024).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        // A regular file is read, and a symlink to one.
        let file = dir.path().join("m.json");
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(read_bounded(&file, 1024).unwrap(), b"{}");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_bounded(&link, 1024).unwrap(), b"{}");
    }

    /// Black-box round 47: a `HISTORY` that is a FIFO refuses the swap at once, naming
    /// it (it held the loader thread for good: a blocking read of the FIFO), with
    /// `CHAMPION` as it was and no temporary file left behind.
    #[test]
    fn a_history_that_is_a_fifo_refuses_the_swap_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let learning = learning_in(dir.path());
        write_champion(&learning, "auto", Some("v1")).unwrap();
        let vdir = vertical_dir(&learning, "auto");
        std::fs::remove_file(vdir.join(HISTORY)).unwrap();
        mkfifo(&vdir.join(HISTORY));
        let e = swap_within(&learning, "v2", 10_000)
            .expect("the swap waited on the FIFO")
            .unwrap_err();
        assert!(
            e.starts_with("HISTORY: ") && e.contains("not a regular file"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v1");
        let left: Vec<String> = std::fs::read_dir(&vdir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(!list_versions(&learning, "auto").contains(&HISTORY.to_string()));
        // A `.lock` that is a FIFO is refused at once too, never waited on.
        std::fs::remove_file(vdir.join(HISTORY)).unwrap();
        std::fs::remove_file(vdir.join(LOCK)).unwrap();
        mkfifo(&vdir.join(LOCK));
        let e = swap_within(&learning, "v2", 10_000)
            .expect("the swap waited on the FIFO lock")
            .unwrap_err();
        assert!(e.contains(".lock") || e.contains("No such device"), "{e}");
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v1");
    }

    /// Black-box round 48: a `.lock` held by another holder (any process that can open
    /// it) makes a swap fail after `LOCK_WAIT_MS`, naming the file, rather than wait
    /// without end; `CHAMPION` stays as it was.
    #[test]
    fn a_lock_held_elsewhere_fails_the_swap_after_a_bounded_wait() {
        let dir = tempfile::tempdir().unwrap();
        let learning = learning_in(dir.path());
        write_champion(&learning, "auto", Some("v1")).unwrap();
        let vdir = vertical_dir(&learning, "auto");
        // Another open of the file: flock locks belong to the open file, so this one
        // conflicts with the swap's own open, as another process's would.
        let holder = std::fs::File::open(vdir.join(LOCK)).unwrap();
        holder.lock_shared().unwrap();
        let e = swap_within(&learning, "v2", LOCK_WAIT_MS * 4)
            .expect("the swap waited on the lock without end")
            .unwrap_err();
        assert!(
            e.contains(".lock") && e.contains("held by another process"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v1");
        drop(holder);
        write_champion(&learning, "auto", Some("v2")).unwrap();
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v2");
    }

    /// Black-box round 46: a swap whose `HISTORY` cannot be written (here a directory)
    /// fails without touching `CHAMPION`, so the directory watch never serves it; the
    /// error names the file.
    #[test]
    fn a_champion_that_cannot_be_recorded_leaves_champion_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let learning = learning_in(dir.path());
        write_champion(&learning, "auto", Some("v1")).unwrap();
        let vdir = vertical_dir(&learning, "auto");
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v1");
        std::fs::remove_file(vdir.join(HISTORY)).unwrap();
        std::fs::create_dir(vdir.join(HISTORY)).unwrap();
        let e = write_champion(&learning, "auto", Some("v2")).unwrap_err();
        assert!(e.to_string().starts_with("HISTORY: "), "{e}");
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v1");
        // No temporary file left behind (black-box round 47), and `HISTORY`, a
        // directory, is not listed as a version.
        assert!(
            !std::fs::read_dir(&vdir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp.")),
            "a temporary file was left"
        );
        assert!(!list_versions(&learning, "auto").contains(&HISTORY.to_string()));
        // Put right, the swap goes through and both files say so.
        std::fs::remove_dir(vdir.join(HISTORY)).unwrap();
        write_champion(&learning, "auto", Some("v2")).unwrap();
        assert_eq!(std::fs::read_to_string(vdir.join(CHAMPION)).unwrap(), "v2");
        assert_eq!(history(&learning, "auto"), ["v2"]);
    }

    #[test]
    fn a_score_is_clamped_and_never_dropped() {
        assert_eq!(score_of(0.424), 42);
        // Out of range (a raw-margin model): clamped, infinities included.
        assert_eq!(score_of(50.0), 100);
        assert_eq!(score_of(f32::INFINITY), 100);
        assert_eq!(score_of(-2.0), 0);
        assert_eq!(score_of(f32::NEG_INFINITY), 0);
        // NaN (refused at load, see MARGIN_BOUND_MAX) would fail every floor above 0.
        assert_eq!(score_of(f32::NAN), 0);
    }
}
