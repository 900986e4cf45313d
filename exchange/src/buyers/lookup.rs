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

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static WAITING: Waiting = Mutex::new(None);

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
        Box::pin(look_up(host, &IN_FLIGHT, &WAITING, |job| {
            std::thread::Builder::new()
                .name("pingpost-lookup".into())
                .spawn(job)
                .map(drop)
        }))
    }
}

/// Looks `host` up (port 0: the connector sets the URL's): joins the lookup of that name
/// in flight, or starts one on a thread `spawn` makes, counted in `in_flight`.
async fn look_up(
    host: String,
    in_flight: &'static AtomicUsize,
    waiting: &'static Waiting,
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<()> + Send,
) -> std::io::Result<Addrs> {
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
        let refused = look_up("localhost".into(), &COUNTED, &WAITS, |_job| {
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
        let unknown = look_up("no-such-host.invalid".into(), &COUNTED, &WAITS, |job| {
            std::thread::spawn(job);
            Ok(())
        })
        .await;
        assert!(unknown.is_err(), "{unknown:?}");
        assert_eq!(COUNTED.load(Ordering::Acquire), 0);
        // Past the bound, a lookup of another name fails at once, without a thread.
        COUNTED.store(LOOKUPS_MAX, Ordering::Release);
        let full = look_up("localhost".into(), &COUNTED, &WAITS, |_job| {
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
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let first = tokio::spawn(look_up("localhost".into(), &COUNTED, &WAITS, move |job| {
            jobs_tx.send(job).unwrap();
            Ok(())
        }));
        let job = tokio::task::spawn_blocking(move || jobs_rx.recv().unwrap())
            .await
            .unwrap();
        let mut joined = Vec::new();
        for _ in 0..5 {
            joined.push(tokio::spawn(look_up(
                "localhost".into(),
                &COUNTED,
                &WAITS,
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
}
