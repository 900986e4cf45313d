//! Loopback ports for the servers `loadtest` configures before they start (the
//! exchange's listeners): picked by the kernel (bound to port 0), all of one
//! configuration at once.

use std::net::TcpListener;

/// `n` distinct ports on 127.0.0.1 that were free a moment ago: each picked by binding
/// port 0 while every earlier probe is still bound, all released only once all are
/// picked, so no two are the same. (Black-box: picked one at a time, each released before
/// the next was picked, the exchange's admin and seller listeners got the same port under
/// a narrowed `ip_local_port_range`: `admin.listen: is the seller listener's port too`.)
pub fn free_loopback_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let probes = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
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
