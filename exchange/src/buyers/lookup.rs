//! Host-name lookups for buyer URLs (a URL with an IP address needs none).
//!
//! `getaddrinfo` blocks, so each lookup runs on a thread of its own, at most
//! [`LOOKUPS_MAX`] at once. Not on tokio's blocking pool, as hyper's `GaiResolver` does:
//! where no thread could be made (a pids limit, no address space left), its
//! `spawn_blocking` panicked inside the buyer call, and the auction's seller got no
//! answer. Here that lookup fails, and the call is an `error` like any connect that
//! fails, said by the buyer-connect log line.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Most lookups in flight at once; past it a lookup fails at once.
pub const LOOKUPS_MAX: usize = 64;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

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
        Box::pin(look_up(host, &IN_FLIGHT, |job| {
            std::thread::Builder::new()
                .name("pingpost-lookup".into())
                .spawn(job)
                .map(drop)
        }))
    }
}

/// Looks `host` up on a thread `spawn` makes (port 0: the connector sets the URL's),
/// counted in `in_flight`.
async fn look_up(
    host: String,
    in_flight: &'static AtomicUsize,
    spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<()>,
) -> std::io::Result<Addrs> {
    if in_flight.fetch_add(1, Ordering::AcqRel) >= LOOKUPS_MAX {
        in_flight.fetch_sub(1, Ordering::AcqRel);
        return Err(std::io::Error::other(format!(
            "{LOOKUPS_MAX} host-name lookups are in flight already"
        )));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = spawn(Box::new(move || {
        let found = (host.as_str(), 0)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>);
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let _ = tx.send(found);
    }));
    if let Err(e) = spawned {
        // The job was dropped unrun: its slot is given back here.
        in_flight.fetch_sub(1, Ordering::AcqRel);
        return Err(std::io::Error::new(
            e.kind(),
            format!("no thread could be made to look up the host name: {e}"),
        ));
    }
    rx.await
        .map_err(|_| std::io::Error::other("the host-name lookup ended without an answer"))?
        .map(Vec::into_iter)
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
        let refused = look_up("localhost".into(), &COUNTED, |_job| {
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
        let unknown = look_up("no-such-host.invalid".into(), &COUNTED, |job| {
            std::thread::spawn(job);
            Ok(())
        })
        .await;
        assert!(unknown.is_err(), "{unknown:?}");
        assert_eq!(COUNTED.load(Ordering::Acquire), 0);
        // Past the bound, a lookup fails at once, without a thread.
        COUNTED.store(LOOKUPS_MAX, Ordering::Release);
        let full = look_up("localhost".into(), &COUNTED, |_job| {
            panic!("no thread is asked for past the bound")
        })
        .await
        .unwrap_err();
        assert!(
            full.to_string().contains("lookups are in flight already"),
            "{full}"
        );
        assert_eq!(COUNTED.load(Ordering::Acquire), LOOKUPS_MAX);
    }
}
