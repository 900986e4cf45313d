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
}
