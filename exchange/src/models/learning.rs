//! Continuous learning: retrain on a schedule (`learning.retrain_every_s`) or after a
//! number of new dispositions (`learning.retrain_after_dispositions`), compare the
//! challenger with the serving champion on the newest held-out window, promote it only if
//! it wins, and record the decision in the ledger (`model_decision`).
//!
//! Training runs on one background thread under Linux's `SCHED_IDLE` policy (it only gets
//! a core no auction thread wants) with XGBoost on one OpenMP thread; the auction threads
//! never wait for it. It reads the ledger's segments from disk, as `pingpost train` does.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::core::record::{Head, ModelDecisionRecord, Record};
use crate::state::AppState;

/// How often the thread checks its triggers.
const TICK: Duration = Duration::from_millis(500);

/// How long a retraining waits for its decision's record to be on disk.
const DECISION_WAIT_MS: u64 = 30_000;

/// One retraining's outcome for one vertical.
#[derive(Debug, Clone)]
pub struct Decision {
    pub vertical: String,
    pub challenger: Option<String>,
    pub champion: Option<String>,
    pub promoted: bool,
    pub reason: String,
    pub outcome: Outcome,
}

/// How a retraining of one vertical ended (the `outcome` label of
/// `pingpost_retrainings_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The challenger won and serves.
    Promoted,
    /// The challenger was trained, written and compared, and the champion stays.
    Kept,
    /// Training refused for the data (too little, one class): nothing written.
    Refused,
    /// Training or writing the set failed (the ledger unreadable, the models directory
    /// unusable or full), or the new set does not load: the serving model stays.
    Failed,
    /// The ledger has failed (fail-stop): nothing could record a decision, so nothing is
    /// trained or promoted until a restart (black-box round 129a: a retraining promoted a
    /// model with no `model_decision` record).
    LedgerFailed,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Promoted,
        Outcome::Kept,
        Outcome::Refused,
        Outcome::Failed,
        Outcome::LedgerFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Promoted => "promoted",
            Outcome::Kept => "kept",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
            Outcome::LedgerFailed => "ledger_failed",
        }
    }
}

/// The reason given while the ledger has failed.
const LEDGER_FAILED: &str =
    "the ledger has failed: no decision can be recorded, so nothing is retrained or promoted until a restart";

/// Starts the learning thread if `[learning]` asks for retraining. It ends when the
/// exchange is dropped.
pub fn spawn(state: &Arc<AppState>) {
    let l = state.runtime.load().config.learning.clone();
    if !l.retrains() {
        return;
    }
    // Every vertical that trains shows each outcome from the start, at 0, so a dashboard
    // finds the series before the first retraining (black-box round 130a).
    show_series(state);
    let weak: Weak<AppState> = Arc::downgrade(state);
    let started = std::thread::Builder::new()
        .name("pingpost-learning".into())
        .spawn(move || {
            lower_priority();
            let mut last_ms = weak.upgrade().map_or(0, |s| s.clock.now_ms());
            loop {
                std::thread::sleep(TICK);
                let Some(state) = weak.upgrade() else { return };
                let l = state.runtime.load().config.learning.clone();
                let now = state.clock.now_ms();
                let due_time = l.retrain_every_s > 0
                    && now.saturating_sub(last_ms)
                        >= (l.retrain_every_s as i64).saturating_mul(1000);
                let due_count = l.retrain_after_dispositions > 0
                    && state.dispositions_since_train.load(Ordering::Relaxed)
                        >= l.retrain_after_dispositions;
                if due_time || due_count {
                    state.dispositions_since_train.store(0, Ordering::Relaxed);
                    last_ms = now;
                    retrain_once(&state);
                }
            }
        });
    if let Err(e) = started {
        tracing::error!(error = %e, "the learning thread did not start; retraining is off");
    }
}

/// Most jobs waiting for the loading thread; past it [`off_the_auction_path`] refuses
/// (`None`) rather than queue without bound.
pub const LOADER_QUEUE_MAX: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run to its result on the loading thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffPathError {
    /// [`LOADER_QUEUE_MAX`] jobs were already waiting: try again later.
    #[error("the model loader is busy ({LOADER_QUEUE_MAX} jobs waiting)")]
    Busy,
    /// The thread could not start, or the job panicked.
    #[error("the job failed inside the exchange")]
    Failed,
}

/// A thread under `SCHED_IDLE` that runs jobs one at a time from a bounded queue.
#[derive(Debug, Clone)]
struct Loader {
    queue: std::sync::mpsc::SyncSender<Job>,
}

impl Loader {
    /// Starts the thread (`idle`: under `SCHED_IDLE`); `None` if it could not start.
    fn start(queue_max: usize, name: &str, idle: bool) -> Option<Loader> {
        let (queue, rx) = std::sync::mpsc::sync_channel::<Job>(queue_max);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if idle {
                    lower_priority();
                }
                while let Ok(job) = rx.recv() {
                    // A job that panics ends only itself: its result sender is dropped,
                    // so its caller gets `None`, and the thread takes the next job.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .ok()?;
        Some(Loader { queue })
    }

    /// Runs `f` on the thread: `Busy` if the queue is full, `Failed` if `f` panicked.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, OffPathError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        if self.queue.try_send(job).is_err() {
            tracing::warn!(job = what, "the loading thread is busy");
            return Err(OffPathError::Busy);
        }
        rx.await.map_err(|_| OffPathError::Failed)
    }
}

/// Runs `f` on the exchange's loading thread and returns its result: loading and
/// checking a model set (parsing megabytes of JSON) then takes only CPU the auctions
/// leave idle. The thread is started on first use and lives as long as the process, under
/// `SCHED_IDLE`, running jobs one at a time: one thread for every swap and directory
/// check rather than one per job, so a swap creates and tears down no thread (no stack to
/// map and unmap, no allocator cache or arena to warm while the auction threads serve).
/// [`OffPathError::Busy`] if [`LOADER_QUEUE_MAX`] jobs are already waiting,
/// [`OffPathError::Failed`] if the thread could not start or `f` panicked. `what` names
/// the job in the log.
pub async fn off_the_auction_path<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OffPathError> {
    static LOADER: std::sync::Mutex<Option<Loader>> = std::sync::Mutex::new(None);
    run_on(
        &LOADER,
        ("pingpost-loader", true),
        "the loading thread did not start (no thread could be made); the next job tries again",
        what,
        f,
    )
    .await
}

/// Runs a configuration reload (`f`: reading and checking the file blocks) on the
/// exchange's reload thread, at normal priority, one at a time, started on first use and
/// again after a start that failed, as the loading thread is. Not tokio's blocking pool:
/// where no thread could be made, its `spawn_blocking` panicked the caller and kept the
/// job queued, so a `POST /admin/reload` got no answer and was applied later by itself,
/// and the SIGHUP task died with every later SIGHUP ignored (black-box round 227a).
/// [`OffPathError::Failed`] (said in the log) if the thread could not start: nothing
/// was run, and nothing will be.
pub async fn on_the_reload_thread<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OffPathError> {
    static RELOADER: std::sync::Mutex<Option<Loader>> = std::sync::Mutex::new(None);
    run_on(
        &RELOADER,
        ("pingpost-reload", false),
        "the reload thread did not start (no thread could be made); nothing was reloaded, the next reload tries again",
        what,
        f,
    )
    .await
}

/// Runs `f` on the [`Loader`] in `slot`, started as `(name, idle)` when there is none
/// (see [`loader_in`]); `not_started` is logged, and `Failed` returned, when it could not
/// start.
async fn run_on<T: Send + 'static>(
    slot: &std::sync::Mutex<Option<Loader>>,
    (name, idle): (&str, bool),
    not_started: &str,
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, OffPathError> {
    let Some(loader) = loader_in(slot, || Loader::start(LOADER_QUEUE_MAX, name, idle)) else {
        tracing::error!(job = what, "{not_started}");
        return Err(OffPathError::Failed);
    };
    loader.run(what, f).await
}

/// The loader in `slot`, started by `start` when there is none yet: a start that failed
/// (no thread could be made) is tried again at the next job (black-box round 226a: one
/// failure just after the start left model swaps failing for the process's life).
fn loader_in(
    slot: &std::sync::Mutex<Option<Loader>>,
    start: impl FnOnce() -> Option<Loader>,
) -> Option<Loader> {
    let mut held = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if held.is_none() {
        *held = start();
    }
    held.clone()
}

/// `SCHED_IDLE` for this thread (Linux): it runs only when a core is otherwise idle.
pub fn lower_priority() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let r = set_thread_priority_and_policy(
        thread_native_id(),
        thread_priority::ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if let Err(e) = r {
        tracing::warn!(error = ?e, "could not lower the learning thread's priority");
    }
}

/// Makes the `pingpost_retrainings_total` series of every vertical with features, while
/// learning is on: at the start, and by each applied reload, so a vertical a reload adds
/// shows them at once (black-box round 131a: none until its first retraining).
pub fn show_series(state: &AppState) {
    let rt = state.runtime.load();
    if !rt.config.learning.retrains() {
        return;
    }
    for v in rt.config.verticals.iter().filter(|v| v.features.is_some()) {
        show_outcomes(state, &v.name);
    }
}

/// Makes `vertical`'s series of `pingpost_retrainings_total`, each outcome at its count
/// (0 when new).
fn show_outcomes(state: &AppState, vertical: &str) {
    for o in Outcome::ALL {
        let _ = state
            .metrics
            .retrainings
            .with_label_values(&[vertical, o.as_str()]);
    }
}

/// Retrains every vertical with features now, and promotes each challenger that beats its
/// champion. Blocking (trains): never call it on an auction thread.
/// Each model of a trained set that predicts no better than no model, as a retraining
/// says it: `its lead_score model: <the warning>`.
fn model_warnings(models: &[crate::models::train::ModelReport]) -> Vec<String> {
    models
        .iter()
        .filter_map(|m| Some(format!("its {} model: {}", m.kind, m.warning.as_deref()?)))
        .collect()
}

pub fn retrain_once(state: &AppState) -> Vec<Decision> {
    let rt = state.runtime.load_full();
    let cfg = rt.config.clone();
    let mut out = Vec::new();
    // Whether the ledger's records reconcile, read once per retraining (at the first
    // vertical that trains), not once per vertical.
    let mut reconciled: Option<Result<(), String>> = None;
    for (vi, v) in cfg.verticals.iter().enumerate() {
        if v.features.is_none() {
            continue;
        }
        let now = state.clock.now_ms();
        let champion = state.runtime.load().models.get(vi).cloned().flatten();
        let champion_version = champion.as_ref().map(|c| c.version.clone());
        let decided = |challenger: Option<String>, promoted, reason: String, outcome: Outcome| {
            state
                .metrics
                .retrainings
                .with_label_values(&[v.name.as_str(), outcome.as_str()])
                .inc();
            Decision {
                vertical: v.name.clone(),
                challenger,
                champion: champion_version.clone(),
                promoted,
                reason,
                outcome,
            }
        };
        if !state.ledger.is_healthy() {
            tracing::warn!(vertical = %v.name, reason = LEDGER_FAILED, "retraining skipped");
            out.push(decided(
                None,
                false,
                LEDGER_FAILED.into(),
                Outcome::LedgerFailed,
            ));
            continue;
        }
        let check = reconciled
            .get_or_insert_with(|| crate::models::train::check_reconciles(&cfg.server.ledger_path));
        if let Err(e) = check.clone() {
            tracing::warn!(vertical = %v.name, error = %e, "retraining failed; the serving model stays");
            out.push(decided(None, false, e, Outcome::Failed));
            continue;
        }
        let trained =
            crate::models::train::train_vertical(&cfg, &cfg.server.ledger_path, &v.name, now, None);
        let (outcome, heldout) = match trained {
            Ok(t) => {
                // What the reading skipped, said as `pingpost train` says it (black-box
                // round 153a: only a manual training showed it).
                if let Some(l) = &t.0.left_out {
                    tracing::warn!(
                        vertical = %v.name,
                        auctions = l.auctions,
                        first = %l.first,
                        "retraining left out auction records whose features cannot be used"
                    );
                }
                for note in &t.0.notes {
                    tracing::warn!(vertical = %v.name, note = %note, "retraining skipped records");
                }
                t
            }
            Err(e) if e.starts_with(crate::models::train::REFUSED) => {
                tracing::info!(vertical = %v.name, reason = %e, "retraining skipped");
                out.push(decided(None, false, e, Outcome::Refused));
                continue;
            }
            Err(e) => {
                tracing::warn!(vertical = %v.name, error = %e, "retraining failed; the serving model stays");
                out.push(decided(None, false, e, Outcome::Failed));
                continue;
            }
        };
        let challenger = match crate::models::load_set(&cfg.learning, v, &outcome.version) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(vertical = %v.name, errors = ?e, "the retrained model does not load");
                let why = format!("the retrained model does not load: {}", e.join("; "));
                out.push(decided(Some(outcome.version), false, why, Outcome::Failed));
                continue;
            }
        };
        // A model of the set that predicts no better than no model is said, as `pingpost
        // train` says it, and named in the decision when the set is promoted anyway (on
        // its other model): black-box round 176b, a lead-score model of AUC 0.31 was
        // promoted with the set and set the sellers' scores without a word.
        let warned = model_warnings(&outcome.models);
        for w in &warned {
            tracing::warn!(vertical = %v.name, challenger = %outcome.version, warning = %w, "retrained model");
        }
        let ledger_failed = |out: &mut Vec<Decision>| {
            tracing::warn!(vertical = %v.name, challenger = %outcome.version, reason = LEDGER_FAILED, "not promoted");
            out.push(decided(
                Some(outcome.version.clone()),
                false,
                LEDGER_FAILED.into(),
                Outcome::LedgerFailed,
            ));
        };
        // The ledger may have failed while this trained: a promotion nothing can record
        // is not made.
        if !state.ledger.is_healthy() {
            ledger_failed(&mut out);
            continue;
        }
        // Compared with the champion serving at the decision, not the one that served
        // when this began, and swapped in with no swap between (black-box round 224a: a
        // model promoted meanwhile, by `pingpost train --promote` or `POST
        // /admin/models`, was replaced uncompared, or kept with a record naming the other).
        let learning = cfg.learning.clone();
        let ((wins, mut reason, champion_version, unlocked), swapped) =
            state.decide_and_swap(&v.name, |serving, locked| {
                let serving_version = serving.as_ref().map(|c| c.version.clone());
                // Without the vertical's `.lock`, `CHAMPION` may change under the
                // comparison: nothing is compared (black-box round 228a: a retraining
                // compared and recorded `kept` without a word of the lock).
                if let Err(e) = locked {
                    let why = format!("not compared: {e}");
                    return (None, (false, why, serving_version, true));
                }
                // `CHAMPION` names a set the exchange does not serve yet: another
                // process promoted it, and the watch has not swapped it in. The
                // challenger is neither compared with it nor promoted over it.
                if let Ok(Some(named)) = crate::models::read_champion_checked(&learning, &v.name)
                {
                    if Some(&named) != serving_version.as_ref() {
                        let why = format!(
                            "not compared: CHAMPION names {named}, written while this trained and not served yet; the next retraining compares with it"
                        );
                        // The record's champion is what serves (black-box round 225a:
                        // it named the set CHAMPION named, which neither served nor was
                        // compared).
                        return (None, (false, why, serving_version, false));
                    }
                }
                let (wins, reason) = crate::models::train::promotion(
                    &outcome.models,
                    serving.as_deref(),
                    &challenger,
                    &heldout,
                );
                let swap = (wins && state.ledger.is_healthy()).then(|| outcome.version.clone());
                (swap, (wins, reason, serving_version, false))
            });
        let mut promoted = false;
        // A challenger that won but could not be swapped in (`CHAMPION` a directory, the
        // models directory read-only or full) is a failure of continuous learning, not a
        // champion kept on its merits (black-box round 153a: counted `kept` at every
        // retraining while nothing could ever be promoted).
        let mut swap_failed = unlocked;
        if unlocked {
            tracing::error!(vertical = %v.name, challenger = %outcome.version, reason = %reason, "retraining not compared");
        }
        match swapped {
            Some(Ok(_)) => {
                promoted = true;
                for w in &warned {
                    reason = format!("{reason}; promoted although {w}");
                }
            }
            Some(Err(e)) => {
                tracing::error!(vertical = %v.name, error = %e, "promotion refused");
                reason = format!("{reason}; not promoted: {e}");
                swap_failed = true;
            }
            // It won, and the ledger failed as it was decided.
            None if wins => {
                ledger_failed(&mut out);
                continue;
            }
            None => {}
        }
        let generation = state.generation();
        // On disk before the decision is returned or counted (a test read the ledger
        // right after and, on a loaded host, found the record still queued), and waited
        // for on this thread: the learning thread has no runtime to hand a full queue to
        // (`effects::execute_now` spawned a tokio task for it there).
        let written = state.ledger.write_on_this_thread(
            &Record::ModelDecision(ModelDecisionRecord {
                head: Head::new(generation, state.clock.now_ms()),
                vertical: &v.name,
                challenger: &outcome.version,
                champion: champion_version.as_deref(),
                promoted,
                reason: &reason,
            }),
            DECISION_WAIT_MS,
            "the decision's record",
        );
        if let Err(e) = written {
            tracing::error!(vertical = %v.name, challenger = %outcome.version, error = %e, "the decision's record was not written");
            reason = format!("{reason}; its record was not written: {e}");
        }
        tracing::info!(vertical = %v.name, challenger = %outcome.version, champion = ?champion_version, promoted, reason = %reason, "retrained");
        let how = if promoted {
            Outcome::Promoted
        } else if swap_failed {
            Outcome::Failed
        } else {
            Outcome::Kept
        };
        out.push(Decision {
            champion: champion_version,
            ..decided(Some(outcome.version), promoted, reason, how)
        });
    }
    out
}

#[cfg(test)]
mod tests {
    /// Black-box round 176b: a set promoted on its realization model with a lead-score
    /// model no better than no model said nothing of it. Each warned model is named.
    #[test]
    fn a_warned_model_of_a_set_is_named() {
        let report =
            |kind: &'static str, warning: Option<&str>| crate::models::train::ModelReport {
                kind,
                examples: 100,
                train_rows: 80,
                heldout_rows: 20,
                auc: Some(0.31),
                logloss: Some(0.7),
                refused: None,
                warning: warning.map(str::to_string),
            };
        let w = super::model_warnings(&[
            report(
                "lead_score",
                Some("its held-out AUC 0.3100 is no better than chance (0.5)"),
            ),
            report("realization", None),
        ]);
        assert_eq!(
            w,
            ["its lead_score model: its held-out AUC 0.3100 is no better than chance (0.5)"]
        );
        assert!(super::model_warnings(&[report("realization", None)]).is_empty());
    }

    use thread_priority::unix::{
        thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };

    #[tokio::test]
    async fn work_off_the_auction_path_runs_under_sched_idle() {
        let policy =
            super::off_the_auction_path("pingpost-test-idle", || thread_schedule_policy().ok())
                .await
                .ok()
                .flatten();
        assert_eq!(
            policy,
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            ))
        );
        // The calling thread keeps its own policy.
        assert_ne!(
            thread_schedule_policy().ok(),
            Some(ThreadSchedulePolicy::Normal(
                NormalThreadSchedulePolicy::Idle
            ))
        );
    }

    #[tokio::test]
    async fn every_job_runs_on_the_one_loading_thread_and_a_panic_ends_only_its_job() {
        let name = || std::thread::current().name().map(str::to_string);
        let first = super::off_the_auction_path("test-first", name)
            .await
            .ok()
            .flatten();
        assert_eq!(first.as_deref(), Some("pingpost-loader"));
        let panicked: Result<(), _> =
            super::off_the_auction_path("test-panic", || panic!("a job that fails")).await;
        assert_eq!(
            panicked,
            Err(super::OffPathError::Failed),
            "a panicking job fails only itself"
        );
        let after = super::off_the_auction_path("test-after", move || {
            (name(), std::thread::current().id())
        })
        .await;
        let again = super::off_the_auction_path("test-id", || std::thread::current().id())
            .await
            .ok();
        let (after_name, after_id) = after.expect("the thread survived the panic");
        assert_eq!(after_name.as_deref(), Some("pingpost-loader"));
        assert_eq!(Some(after_id), again, "one thread, not one per job");
    }

    /// Black-box round 226a: the loading thread could not start once (no thread could be
    /// made just after the start), and every later job failed for the process's life. A
    /// failed start is tried again at the next job, and a started loader is kept.
    #[tokio::test]
    async fn a_loader_that_could_not_start_is_started_at_the_next_job() {
        let slot = std::sync::Mutex::new(None);
        assert!(super::loader_in(&slot, || None).is_none());
        let first = super::loader_in(&slot, || super::Loader::start(4, "pingpost-loader", true))
            .expect("started");
        let kept = super::loader_in(&slot, || panic!("not started again")).expect("kept");
        let on = |l: super::Loader| async move {
            l.run("test", || std::thread::current().id()).await.unwrap()
        };
        assert_eq!(on(first).await, on(kept).await, "one thread");
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_not_grown() {
        // Hold the loading thread on a job until the queue behind it is full.
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let loader =
            std::sync::Arc::new(super::Loader::start(4, "pingpost-loader", true).expect("thread"));
        let l = loader.clone();
        let blocker = tokio::spawn(async move {
            l.run("test-hold", move || {
                let _ = started_tx.send(());
                let _ = hold_rx.recv();
            })
            .await
        });
        started_rx.await.expect("the holding job started");
        let mut queued = Vec::new();
        for _ in 0..4 {
            let l = loader.clone();
            queued.push(tokio::spawn(
                async move { l.run("test-queued", || 1).await },
            ));
        }
        // Each spawned task enqueues when first polled: wait until all have.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let refused = loader.run("test-over", || 2).await;
        assert_eq!(
            refused,
            Err(super::OffPathError::Busy),
            "a job past the queue's bound is refused"
        );
        drop(hold_tx);
        assert_eq!(blocker.await.ok(), Some(Ok(())));
        for q in queued {
            assert_eq!(q.await.ok(), Some(Ok(1)), "every queued job ran");
        }
    }
}
