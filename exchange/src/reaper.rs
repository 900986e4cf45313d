//! Frees retired snapshots (runtimes, with their configuration and models) off the
//! auction threads.
//!
//! A swap replaces the runtime while requests still hold the old one; without this, the
//! last request to finish would free it, on its worker, in the middle of an auction: a
//! configuration with 10,000 buyers or a model of 1,000 trees is many thousands of
//! allocations. [`retire`] hands the swapped-out snapshot to one low-priority thread that
//! keeps it until nobody else holds it, then frees it there.

use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Most retirements waiting to reach the reaper; past it a snapshot is freed where it
/// was retired (as it would be without the reaper).
const QUEUE_MAX: usize = 256;
/// Most snapshots the reaper holds; past it, it waits for holders to finish before
/// taking more (a swap every second with requests of a few seconds holds a handful).
const HELD_MAX: usize = 4_096;
/// How often the reaper looks for snapshots nobody else holds any more.
const POLL: Duration = Duration::from_millis(50);

type Retired = Box<dyn Held>;

/// Something the reaper can hold and ask whether it is the last holder.
trait Held: Send {
    fn only_here(&self) -> bool;
}

impl<T: Send + Sync> Held for Arc<T> {
    fn only_here(&self) -> bool {
        Arc::strong_count(self) == 1
    }
}

fn sender() -> Option<&'static SyncSender<Retired>> {
    static TX: OnceLock<Option<SyncSender<Retired>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = sync_channel::<Retired>(QUEUE_MAX);
        let spawned = std::thread::Builder::new()
            .name("pingpost-reaper".into())
            .spawn(move || {
                crate::models::learning::lower_priority();
                let mut held: Vec<Retired> = Vec::new();
                loop {
                    if held.len() < HELD_MAX {
                        match rx.recv_timeout(POLL) {
                            Ok(r) => held.push(r),
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    } else {
                        std::thread::sleep(POLL);
                    }
                    // Dropped here, by this thread, when it is the last holder.
                    held.retain(|r| !r.only_here());
                }
            });
        spawned.ok().map(|_| tx)
    })
    .as_ref()
}

/// Hands `snapshot` to the reaper, which frees it once no request holds it any more.
/// If the reaper cannot take it, it is dropped here.
pub fn retire<T: Send + Sync + 'static>(snapshot: Arc<T>) {
    match sender() {
        // A full queue hands the snapshot back in the error, dropped here.
        Some(tx) => drop(tx.try_send(Box::new(snapshot))),
        None => drop(snapshot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its drops and says which thread dropped it.
    struct Probe(Arc<parking_lot::Mutex<Vec<String>>>);
    impl Drop for Probe {
        fn drop(&mut self) {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.0.lock().push(name);
        }
    }

    fn wait_for(log: &Arc<parking_lot::Mutex<Vec<String>>>, n: usize) -> Vec<String> {
        // Bounded: the reaper polls every 50 ms; give it 200 polls.
        for _ in 0..200 {
            if log.lock().len() >= n {
                break;
            }
            std::thread::sleep(POLL);
        }
        log.lock().clone()
    }

    #[test]
    fn a_retired_snapshot_is_freed_by_the_reaper_after_its_last_holder_lets_go() {
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let snapshot = Arc::new(Probe(Arc::clone(&log)));
        let request = Arc::clone(&snapshot);
        retire(snapshot);
        // A request still holds it: nothing is freed while it does.
        std::thread::sleep(POLL * 4);
        assert!(log.lock().is_empty(), "freed while a request held it");
        drop(request);
        let dropped = wait_for(&log, 1);
        assert_eq!(dropped, vec!["pingpost-reaper".to_string()]);
    }

    #[test]
    fn a_snapshot_nobody_holds_is_freed_once() {
        let log = Arc::new(parking_lot::Mutex::new(Vec::new()));
        retire(Arc::new(Probe(Arc::clone(&log))));
        let dropped = wait_for(&log, 1);
        assert_eq!(dropped.len(), 1);
        std::thread::sleep(POLL * 2);
        assert_eq!(log.lock().len(), 1, "freed twice");
    }
}
