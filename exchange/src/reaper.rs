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
/// Most snapshots the reaper holds (a swap every second with requests of a few seconds
/// holds a handful); past it, one more is let go at once, so whoever holds it last frees
/// it, as without the reaper.
const HELD_MAX: usize = 4_096;
/// How often the reaper looks for snapshots nobody else holds any more.
const POLL: Duration = Duration::from_millis(50);

type Retired = Box<dyn Shared>;

/// Something the reaper can hold and ask whether it is the last holder.
trait Shared: Send {
    fn only_here(&self) -> bool;
}

impl<T: Send + Sync> Shared for Arc<T> {
    fn only_here(&self) -> bool {
        Arc::strong_count(self) == 1
    }
}

/// What the reaper holds, and its one decision: free what nobody else holds.
#[derive(Default)]
struct Held(Vec<Retired>);

impl Held {
    fn take(&mut self, r: Retired) {
        if self.0.len() < HELD_MAX {
            self.0.push(r);
        }
    }

    /// Frees, on the calling thread, every snapshot it is the last holder of.
    fn sweep(&mut self) {
        self.0.retain(|r| !r.only_here());
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
                let mut held = Held::default();
                loop {
                    match rx.recv_timeout(POLL) {
                        Ok(r) => held.take(r),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    held.sweep();
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
    use std::sync::mpsc::{channel, Sender};

    /// Says which thread dropped it.
    struct Probe(Sender<String>);
    impl Drop for Probe {
        fn drop(&mut self) {
            let name = std::thread::current().name().unwrap_or("").to_string();
            let _ = self.0.send(name);
        }
    }

    #[test]
    fn a_sweep_frees_only_what_no_request_holds_any_more() {
        let (tx, rx) = channel();
        let mut held = Held::default();
        let snapshot = Arc::new(Probe(tx));
        let request = Arc::clone(&snapshot);
        held.take(Box::new(snapshot));
        held.sweep();
        assert!(rx.try_recv().is_err(), "freed while a request held it");
        drop(request);
        assert!(rx.try_recv().is_err(), "the request's drop freed it");
        held.sweep();
        assert!(rx.try_recv().is_ok(), "the sweep freed it");
        held.sweep();
        assert!(rx.try_recv().is_err(), "freed twice");
    }

    #[test]
    fn a_retired_snapshot_is_freed_on_the_reaper_thread() {
        let (tx, rx) = channel();
        let snapshot = Arc::new(Probe(tx));
        let request = Arc::clone(&snapshot);
        retire(snapshot);
        drop(request);
        let by = rx.recv_timeout(Duration::from_secs(30)).expect("freed");
        assert_eq!(by, "pingpost-reaper");
    }
}
