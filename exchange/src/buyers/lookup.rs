//! Host-name lookups for buyer URLs (a URL with an IP address needs none).
//!
//! `getaddrinfo` blocks, so each lookup runs on a thread of its own, one per name at a
//! time (calls that need the same name meanwhile wait for that lookup's answer), at most
//! [`LOOKUPS_MAX`] names at once. Not on tokio's blocking pool, as hyper's `GaiResolver`
//! does: where no thread could be made (a pids limit, no address space left), its
//! `spawn_blocking` panicked inside the buyer call, and the auction's seller got no
//! answer. Here that lookup fails, and the call is an `error` like any connect that
//! fails, said by the buyer-connect log line. One lookup per name means a name that
//! takes the resolver's whole timeout to fail holds one thread, not one per call, so it
//! cannot take the other buyers' room (black-box round 229a: with breakers off, an
//! unresolvable buyer's calls filled every slot, and other buyers' pings failed).

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Most names looked up at once; past it a lookup of another name fails at once.
pub const LOOKUPS_MAX: usize = 64;

/// A lookup's answer, as each of its waiters gets it.
type Found = Result<Vec<SocketAddr>, (std::io::ErrorKind, String)>;

/// The calls waiting for each name's lookup in flight.
type Waiting = Mutex<Option<HashMap<String, Vec<tokio::sync::oneshot::Sender<Found>>>>>;

/// Names whose last lookup failed, with when and why: calls within [`FAILED_FOR`] get
/// that answer at once.
type Failed = Mutex<Option<HashMap<String, (tokio::time::Instant, (std::io::ErrorKind, String))>>>;

/// How long a failed lookup's answer stands for the calls that need its name: a name that
/// does not resolve is looked up again at most once a second, not once a call
/// (black-box round 248a: at 50-100 pings a second to such a buyer, one query each, the
/// host's DNS server dropped some, glibc waited 5 s to ask again, and every call that
/// joined the stuck lookup waited out its ping timeout: `timeout`, not `error`).
pub const FAILED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Most names whose failure is kept ([`FAILED_FOR`]); past it, one more is not kept.
const FAILED_MAX: usize = 1_024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static WAITING: Waiting = Mutex::new(None);
static FAILED: Failed = Mutex::new(None);

/// The buyer connector's resolver (see the module).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lookup;

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for Lookup {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Addrs>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        Box::pin(look_up(
            host,
            &IN_FLIGHT,
            &WAITING,
            (&FAILED, FAILED_FOR),
            |job| {
                std::thread::Builder::new()
                    .name("pingpost-lookup".into())
                    .spawn(job)
                    .map(drop)
            },
        ))
    }
}

/// Looks `host` up (port 0: the connector sets the URL's): answers a name whose lookup
/// failed within `failed.1` ([`FAILED_FOR`]) with that failure (kept in `failed.0`),
/// joins the lookup of that name in flight, or starts one on a thread `spawn` makes,
/// counted in `in_flight`.
async fn look_up(
    host: String,
    in_flight: &'static AtomicUsize,
    waiting: &'static Waiting,
    (failed, failed_for): (&'static Failed, std::time::Duration),
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<()> + Send,
) -> std::io::Result<Addrs> {
    {
        let held = failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, (kind, e))) = held.as_ref().and_then(|m| m.get(&host)) {
            if at.elapsed() < failed_for {
                return Err(std::io::Error::new(*kind, e.clone()));
            }
        }
    }
    // The lookup's own answer (not a want of threads or of room) is kept when it failed,
    // and a success forgets an earlier failure.
    let remember = move |found: &Found, host: &str| {
        let mut held = failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = held.get_or_insert_with(HashMap::new);
        match found {
            Ok(_) => {
                map.remove(host);
            }
            Err(e) => {
                if map.len() >= FAILED_MAX {
                    map.retain(|_, (at, _)| at.elapsed() < failed_for);
                }
                if map.len() < FAILED_MAX || map.contains_key(host) {
                    map.insert(host.to_owned(), (tokio::time::Instant::now(), e.clone()));
                }
            }
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let answer = |found: Found, host: &str| {
        let waiters = waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .and_then(|m| m.remove(host));
        in_flight.fetch_sub(1, Ordering::AcqRel);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(found.clone());
        }
    };
    // Whether this call starts the name's lookup (`Some(true)`), joins one in flight
    // (`Some(false)`), or finds no room (`None`).
    let starts = {
        let mut held = waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = held.get_or_insert_with(HashMap::new);
        if let Some(list) = map.get_mut(&host) {
            list.push(tx);
            Some(false)
        } else if in_flight.fetch_add(1, Ordering::AcqRel) >= LOOKUPS_MAX {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            map.insert(host.clone(), vec![tx]);
            Some(true)
        }
    };
    match starts {
        Some(true) => {}
        Some(false) => return answered(rx).await,
        None => {
            return Err(std::io::Error::other(format!(
                "{LOOKUPS_MAX} host names are being looked up already"
            )))
        }
    }
    let name = host.clone();
    let spawned = spawn(Box::new(move || {
        let found = (name.as_str(), 0)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>)
            .map_err(|e| (e.kind(), e.to_string()));
        remember(&found, &name);
        answer(found, &name);
    }));
    if let Err(e) = spawned {
        // The job was dropped unrun: its waiters are answered here.
        answer(
            Err((
                e.kind(),
                format!("no thread could be made to look up the host name: {e}"),
            )),
            &host,
        );
    }
    answered(rx).await
}

/// What a waiter of a lookup was answered.
async fn answered(rx: tokio::sync::oneshot::Receiver<Found>) -> std::io::Result<Addrs> {
    match rx.await {
        Ok(Ok(addrs)) => Ok(addrs.into_iter()),
        Ok(Err((kind, e))) => Err(std::io::Error::new(kind, e)),
        Err(_) => Err(std::io::Error::other(
            "the host-name lookup ended without an answer",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name is looked up on a thread of its own; where no thread could be made the
    /// lookup fails with an error saying so (black-box round 227a's starved process:
    /// tokio's `spawn_blocking` panicked instead), and the slot is given back either way.
    #[tokio::test]
    async fn a_lookup_runs_on_its_own_thread_or_fails_for_want_of_one() {
        let mut lookup = Lookup;
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = tower_service::Service::call(&mut lookup, name)
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
        static COUNTED: AtomicUsize = AtomicUsize::new(0);
        static WAITS: Waiting = Mutex::new(None);
        static NONE_KEPT: Failed = Mutex::new(None);
        let keep = (&NONE_KEPT, std::time::Duration::ZERO);
        let refused = look_up("localhost".into(), &COUNTED, &WAITS, keep, |_job| {
            Err(std::io::Error::from_raw_os_error(11))
        })
        .await
        .unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("no thread could be made to look up the host name"),
            "{refused}"
        );
        assert_eq!(refused.kind(), std::io::ErrorKind::WouldBlock);
        assert_eq!(COUNTED.load(Ordering::Acquire), 0);
        let unknown = look_up(
            "no-such-host.invalid".into(),
            &COUNTED,
            &WAITS,
            keep,
            |job| {
                std::thread::spawn(job);
                Ok(())
            },
        )
        .await;
        assert!(unknown.is_err(), "{unknown:?}");
        assert_eq!(COUNTED.load(Ordering::Acquire), 0);
        // Past the bound, a lookup of another name fails at once, without a thread.
        COUNTED.store(LOOKUPS_MAX, Ordering::Release);
        let full = look_up("localhost".into(), &COUNTED, &WAITS, keep, |_job| {
            panic!("no thread is asked for past the bound")
        })
        .await
        .unwrap_err();
        assert!(
            full.to_string().contains("being looked up already"),
            "{full}"
        );
        assert_eq!(COUNTED.load(Ordering::Acquire), LOOKUPS_MAX);
    }

    /// Calls that need a name while its lookup is in flight wait for that lookup: one
    /// thread per name, however many calls (black-box round 229a: a name that never
    /// resolved took a thread and a slot per call, and the other buyers' calls failed).
    #[tokio::test]
    async fn calls_needing_a_name_share_its_lookup_in_flight() {
        static COUNTED: AtomicUsize = AtomicUsize::new(0);
        static WAITS: Waiting = Mutex::new(None);
        static NONE_KEPT: Failed = Mutex::new(None);
        let keep = (&NONE_KEPT, std::time::Duration::ZERO);
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let first = tokio::spawn(look_up(
            "localhost".into(),
            &COUNTED,
            &WAITS,
            keep,
            move |job| {
                jobs_tx.send(job).unwrap();
                Ok(())
            },
        ));
        let job = tokio::task::spawn_blocking(move || jobs_rx.recv().unwrap())
            .await
            .unwrap();
        let mut joined = Vec::new();
        for _ in 0..5 {
            joined.push(tokio::spawn(look_up(
                "localhost".into(),
                &COUNTED,
                &WAITS,
                keep,
                |_job| panic!("a second lookup of a name in flight"),
            )));
        }
        // Every joiner registered before the lookup answers.
        while WAITS
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|m| m.get("localhost"))
            .map_or(0, Vec::len)
            < 6
        {
            tokio::task::yield_now().await;
        }
        assert_eq!(COUNTED.load(Ordering::Acquire), 1);
        job();
        for h in std::iter::once(first).chain(joined) {
            let addrs: Vec<SocketAddr> = h.await.unwrap().unwrap().collect();
            assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");
        }
        assert_eq!(COUNTED.load(Ordering::Acquire), 0);
    }

    /// Black-box round 248a: a name that does not resolve was looked up again for every
    /// call (100 a second), and when the host's DNS server dropped a query every call
    /// joining that lookup waited out its timeout. A failed lookup's answer stands for
    /// the calls within `FAILED_FOR`, without a thread; not a want of threads; a later
    /// lookup that succeeds forgets it.
    #[tokio::test]
    async fn a_failed_lookup_answers_the_calls_after_it_for_a_while() {
        static COUNTED: AtomicUsize = AtomicUsize::new(0);
        static WAITS: Waiting = Mutex::new(None);
        static KEPT: Failed = Mutex::new(None);
        let hour = (&KEPT, std::time::Duration::from_secs(3_600));
        let run = |job: Box<dyn FnOnce() + Send>| {
            std::thread::spawn(job);
            Ok(())
        };
        let first = look_up("no-such-host.invalid".into(), &COUNTED, &WAITS, hour, run)
            .await
            .unwrap_err();
        let again = look_up(
            "no-such-host.invalid".into(),
            &COUNTED,
            &WAITS,
            hour,
            |_job| panic!("no lookup while the failure stands"),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (again.kind(), again.to_string()),
            (first.kind(), first.to_string())
        );
        // Other names are looked up as before.
        let other: Vec<SocketAddr> = look_up("localhost".into(), &COUNTED, &WAITS, hour, run)
            .await
            .unwrap()
            .collect();
        assert!(other.iter().any(|a| a.ip().is_loopback()), "{other:?}");
        // Once it has stood its time, the name is looked up again.
        let past = (&KEPT, std::time::Duration::ZERO);
        let looked = std::sync::atomic::AtomicBool::new(false);
        let _ = look_up(
            "no-such-host.invalid".into(),
            &COUNTED,
            &WAITS,
            past,
            |job| {
                looked.store(true, Ordering::Release);
                std::thread::spawn(job);
                Ok(())
            },
        )
        .await;
        assert!(looked.load(Ordering::Acquire), "looked up again");
        // A want of threads is not kept: the next call tries again.
        let no_thread = look_up("localhost.invalid".into(), &COUNTED, &WAITS, hour, |_job| {
            Err(std::io::Error::from_raw_os_error(11))
        })
        .await
        .unwrap_err();
        assert_eq!(no_thread.kind(), std::io::ErrorKind::WouldBlock);
        let tried = std::sync::atomic::AtomicBool::new(false);
        let _ = look_up("localhost.invalid".into(), &COUNTED, &WAITS, hour, |job| {
            tried.store(true, Ordering::Release);
            std::thread::spawn(job);
            Ok(())
        })
        .await;
        assert!(tried.load(Ordering::Acquire), "tried again");
        // A success (the failure having stood its time) forgets the failure kept.
        KEPT.lock().unwrap().as_mut().unwrap().insert(
            "localhost".into(),
            (
                tokio::time::Instant::now(),
                (std::io::ErrorKind::Other, "old".into()),
            ),
        );
        look_up("localhost".into(), &COUNTED, &WAITS, past, run)
            .await
            .unwrap();
        assert!(!KEPT
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .contains_key("localhost"));
        assert_eq!(COUNTED.load(Ordering::Acquire), 0);
    }
}
