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

use crate::core::effect::Effect;
use crate::core::record::{Head, ModelDecisionRecord, Record};
use crate::state::AppState;

/// How often the thread checks its triggers.
const TICK: Duration = Duration::from_millis(500);

/// One retraining's outcome for one vertical.
#[derive(Debug, Clone)]
pub struct Decision {
    pub vertical: String,
    pub challenger: Option<String>,
    pub champion: Option<String>,
    pub promoted: bool,
    pub reason: String,
}

/// Starts the learning thread if `[learning]` asks for retraining. It ends when the
/// exchange is dropped.
pub fn spawn(state: &Arc<AppState>) {
    let l = state.runtime.load().config.learning.clone();
    if l.retrain_every_s == 0 && l.retrain_after_dispositions == 0 {
        return;
    }
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

/// Runs `f` on a new thread under `SCHED_IDLE` and returns its result: loading and
/// checking a model set (parsing megabytes of JSON) then takes only CPU the auctions
/// leave idle. `None` if the thread could not start or panicked.
pub async fn off_the_auction_path<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
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

/// Retrains every vertical with features now, and promotes each challenger that beats its
/// champion. Blocking (trains): never call it on an auction thread.
pub fn retrain_once(state: &AppState) -> Vec<Decision> {
    let rt = state.runtime.load_full();
    let cfg = rt.config.clone();
    let mut out = Vec::new();
    for (vi, v) in cfg.verticals.iter().enumerate() {
        if v.features.is_none() {
            continue;
        }
        let now = state.clock.now_ms();
        let champion = state.runtime.load().models.get(vi).cloned().flatten();
        let trained =
            crate::models::train::train_vertical(&cfg, &cfg.server.ledger_path, &v.name, now, None);
        let (outcome, heldout) = match trained {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(vertical = %v.name, reason = %e, "retraining skipped");
                out.push(Decision {
                    vertical: v.name.clone(),
                    challenger: None,
                    champion: champion.as_ref().map(|c| c.version.clone()),
                    promoted: false,
                    reason: e,
                });
                continue;
            }
        };
        let challenger = match crate::models::load_set(&cfg.learning, v, &outcome.version) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(vertical = %v.name, errors = ?e, "the retrained model does not load");
                continue;
            }
        };
        let (wins, reason) =
            crate::models::train::challenger_wins(champion.as_deref(), &challenger, &heldout);
        let mut promoted = false;
        if wins {
            match state.swap_models(&v.name, Some(&outcome.version)) {
                Ok(_) => promoted = true,
                Err(e) => tracing::error!(vertical = %v.name, error = %e, "promotion refused"),
            }
        }
        let champion_version = champion.as_ref().map(|c| c.version.clone());
        let generation = state.generation();
        let record = Record::ModelDecision(ModelDecisionRecord {
            head: Head::new(generation, state.clock.now_ms()),
            vertical: &v.name,
            challenger: &outcome.version,
            champion: champion_version.as_deref(),
            promoted,
            reason: &reason,
        });
        crate::effects::execute_now(state, std::iter::once(Effect::Record(record)));
        tracing::info!(vertical = %v.name, challenger = %outcome.version, promoted, reason = %reason, "retrained");
        out.push(Decision {
            vertical: v.name.clone(),
            challenger: Some(outcome.version),
            champion: champion_version,
            promoted,
            reason,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use thread_priority::unix::{
        thread_schedule_policy, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
    };

    #[tokio::test]
    async fn work_off_the_auction_path_runs_under_sched_idle() {
        let policy =
            super::off_the_auction_path("pingpost-test-idle", || thread_schedule_policy().ok())
                .await
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
}
