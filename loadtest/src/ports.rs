//! Loopback ports for the servers `loadtest` starts: the exchange's listeners (picked
//! before it starts, all of one configuration at once), the simulated buyers and the
//! relay. Picked by the kernel (bound to port 0), or, when [`PORTS_ENV`] is set (`loadtest
//! run --ports LO-HI` sets it for the run and the processes it starts), from that range
//! alone: for machines where each user or test keeps to ports of its own.

use std::io;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The environment variable that confines every listener `loadtest` starts, and those of
/// the processes it starts, to a range of loopback ports: `LO-HI` (both included).
pub const PORTS_ENV: &str = "LOADTEST_PORTS";

/// The fewest ports `--ports` may give: each of a run's listeners (the exchange's two,
/// each simulated buyer's, the relay's) takes one, so this suits the default eight
/// buyers; more buyers need a wider range.
pub const PORTS_MIN: u32 = 16;

/// Parses a port range, `LO-HI`: two whole numbers from 1 to 65535, `LO` at most `HI`,
/// at least [`PORTS_MIN`] ports.
pub fn parse_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let shape = || format!("a port range is LO-HI, such as 28500-28749 (got {text:?})");
    let (lo, hi) = text.trim().split_once('-').ok_or_else(shape)?;
    let port = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(0) => Err("a port range cannot include port 0".into()),
            Ok(p) => Ok(p),
            Err(_) => Err(format!(
                "{}: {:?} is not a port (1 to 65535)",
                shape(),
                t.trim()
            )),
        }
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!(
            "a port range's first port {lo} is above its last {hi}"
        ));
    }
    let len = u32::from(hi) - u32::from(lo) + 1;
    if len < PORTS_MIN {
        return Err(format!(
            "the port range {lo}-{hi} holds {len} ports; a run needs at least {PORTS_MIN}"
        ));
    }
    Ok(lo..=hi)
}

/// The range [`PORTS_ENV`] gives, read once per process; `None` when it is not set. A
/// value that is not a range is an `InvalidInput` error saying why.
pub fn range() -> io::Result<Option<RangeInclusive<u16>>> {
    static RANGE: OnceLock<Result<Option<RangeInclusive<u16>>, String>> = OnceLock::new();
    RANGE
        .get_or_init(|| match std::env::var(PORTS_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{PORTS_ENV} is not a port range: not UTF-8"))
            }
            Ok(text) => parse_range(&text)
                .map(Some)
                .map_err(|e| format!("{PORTS_ENV}: {e}")),
        })
        .clone()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A listener on 127.0.0.1: on a port the kernel picks, or the first free one of
/// [`range`] from where the last pick left off (each process starts at an offset of its
/// own, so the processes of a run seldom try the same ports). Ports another process holds
/// are skipped; with none free in the range, `AddrInUse` saying so.
pub fn bind_loopback() -> io::Result<TcpListener> {
    match range()? {
        None => TcpListener::bind("127.0.0.1:0"),
        Some(range) => bind_in(&range),
    }
}

/// [`bind_loopback`] for tokio. Must be called inside a tokio runtime.
pub fn bind_loopback_tokio() -> io::Result<tokio::net::TcpListener> {
    let listener = bind_loopback()?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

fn bind_in(range: &RangeInclusive<u16>) -> io::Result<TcpListener> {
    static CURSOR: OnceLock<AtomicU32> = OnceLock::new();
    let cursor = CURSOR.get_or_init(|| AtomicU32::new(std::process::id().wrapping_mul(7)));
    let (lo, hi) = (u32::from(*range.start()), u32::from(*range.end()));
    let len = hi - lo + 1;
    for _ in 0..len {
        let offset = cursor.fetch_add(1, Ordering::Relaxed) % len;
        let Ok(port) = u16::try_from(lo + offset) else {
            continue;
        };
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port left on 127.0.0.1 in {lo}-{hi} ({PORTS_ENV})"),
    ))
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago: each picked by
/// [`bind_loopback`] while every earlier probe is still bound, all released only once all
/// are picked, so no two are the same. (Black-box: picked one at a time, each released
/// before the next was picked, the exchange's admin and seller listeners got the same port
/// under a narrowed `ip_local_port_range`: `admin.listen: is the seller listener's port
/// too`.)
pub fn free_loopback_ports(n: usize) -> io::Result<Vec<u16>> {
    let probes = (0..n)
        .map(|_| bind_loopback())
        .collect::<io::Result<Vec<_>>>()?;
    probes
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Whether a server's message says it could not listen because the address was taken:
/// the kernel's `Address already in use`, or the exchange's own check that another process
/// is listening there.
pub fn says_address_in_use(message: &str) -> bool {
    message.contains("Address already in use")
        || message.contains("another process is listening there")
}

/// Whether `port` on 127.0.0.1 is taken now: binding it fails with `AddrInUse`.
pub fn in_use(port: u16) -> bool {
    matches!(
        TcpListener::bind(("127.0.0.1", port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ports_picked_together_are_distinct() {
        for _ in 0..50 {
            let mut ports = free_loopback_ports(8).unwrap();
            assert_eq!(ports.len(), 8);
            assert!(ports.iter().all(|p| *p != 0));
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 8, "{ports:?}");
        }
    }

    #[test]
    fn port_ranges_are_parsed_and_bad_ones_refused_saying_why() {
        assert_eq!(parse_range("28500-28749"), Ok(28500..=28749));
        assert_eq!(parse_range(" 1000 - 1015 "), Ok(1000..=1015));
        for (text, says) in [
            ("28500", "LO-HI"),
            ("28500:28749", "LO-HI"),
            ("a-b", "is not a port"),
            ("28500-70000", "is not a port"),
            ("-5-10", "is not a port"),
            ("0-100", "port 0"),
            ("2000-1000", "above its last"),
            ("2000-2009", "at least 16"),
        ] {
            let e = parse_range(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn binding_in_a_range_takes_its_free_ports_and_says_when_none_is_left() {
        // A range of ports this test holds, but for a few: only those are taken.
        let held: Vec<TcpListener> = (0..16)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        ports.sort_unstable();
        // Ports the kernel picks are not contiguous: bind in the range of the lowest and
        // check every port it gives is inside it and not one held.
        let range = ports[0]..=ports[0].saturating_add(40);
        let mut got = Vec::new();
        while let Ok(l) = bind_in(&range) {
            got.push(l);
            if got.len() > 41 {
                break;
            }
        }
        let held_in: usize = ports.iter().filter(|p| range.contains(p)).count();
        assert!(
            got.len() <= 41 - held_in,
            "{} bound, {held_in} held",
            got.len()
        );
        for l in &got {
            let p = l.local_addr().unwrap().port();
            assert!(range.contains(&p), "{p}");
            assert!(!ports.contains(&p), "{p} is held");
        }
        let e = bind_in(&range).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("no free port left"), "{e}");
    }

    /// Black-box: under a narrowed `ip_local_port_range`, a picked port was taken by
    /// another listener before the exchange bound it, and the run failed at start; the
    /// rig tells that from any other failure to start, and starts it again on new ports.
    #[test]
    fn a_taken_port_is_told_apart() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        assert!(in_use(port));
        assert!(says_address_in_use(&format!(
            "error: cannot listen on 127.0.0.1:{port} (admin.listen): Address already in use (os error 98)"
        )));
        assert!(says_address_in_use(&format!(
            "error: cannot listen on 127.0.0.1:{port} (server.listen): another process is listening there"
        )));
        assert!(!says_address_in_use(
            "error: [server] deadline_ms must be > 0"
        ));
    }
}
