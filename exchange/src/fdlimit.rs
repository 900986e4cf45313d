//! The process's open-file limit. Every connection (a seller's, an admin's, one to a
//! buyer) and every ledger segment is a file descriptor. Many systems start a process
//! with a soft limit of 1,024 (and a far higher hard limit), under which an exchange with
//! `server.connections_max = 10000` could not accept its 1,025th connection. At start the
//! exchange raises its soft limit to the hard limit (it never lowers either), as Go's
//! runtime and most servers do, and says in the log when the result is still short of
//! what the configuration allows.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept beside the seller and admin connections: buyer connections (pooled
/// per worker and buyer host), ledger segments, listeners, the runtime's own.
pub const HEADROOM: u64 = 1_024;
/// The soft limit asked for when the hard limit is unlimited (Linux's default
/// `fs.nr_open`; setting more than that fails).
pub const UNLIMITED_TARGET: u64 = 1 << 20;

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit before (`None`: unlimited).
    pub before: Option<u64>,
    /// The soft limit now.
    pub after: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

impl OpenFiles {
    /// Says in the log that the soft limit was raised, when it was.
    fn say_raised(&self) {
        if self.before != self.after {
            tracing::info!(
                from = self.before,
                to = self.after,
                "open-file limit raised to the hard limit"
            );
        }
    }

    /// Is the soft limit now at least `need`?
    pub fn covers(&self, need: u64) -> bool {
        self.after.is_none_or(|a| a >= need)
    }
}

/// The soft limit to ask for: the hard limit ([`UNLIMITED_TARGET`] if it is unlimited),
/// never below the current soft limit.
pub fn target(current: Option<u64>, hard: Option<u64>) -> Option<u64> {
    let want = hard.unwrap_or(UNLIMITED_TARGET);
    match current {
        None => None,
        Some(c) if c >= want => Some(c),
        Some(_) => Some(want),
    }
}

/// Raises this process's soft open-file limit to its hard limit; an error if the kernel
/// refused (the limit is then unchanged).
pub fn raise() -> std::io::Result<OpenFiles> {
    let now = getrlimit(Resource::Nofile);
    let want = target(now.current, now.maximum);
    if want != now.current {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: want,
                maximum: now.maximum,
            },
        )?;
    }
    Ok(OpenFiles {
        before: now.current,
        after: getrlimit(Resource::Nofile).current,
        hard: now.maximum,
    })
}

/// Descriptors a configuration may use at once: `connections_max` seller connections,
/// `admin_max` admin connections, and [`HEADROOM`].
pub fn needed(connections_max: usize, admin_max: usize) -> u64 {
    (connections_max as u64)
        .saturating_add(admin_max as u64)
        .saturating_add(HEADROOM)
}

/// What a start would find short, without changing anything (for `--check-config`):
/// the soft limit the start would raise to (the hard limit) and the descriptors the
/// configuration needs, when the first is below the second.
pub fn shortfall_at_start(connections_max: usize, admin_max: usize) -> Option<(u64, u64)> {
    let now = getrlimit(Resource::Nofile);
    let need = needed(connections_max, admin_max);
    let would = OpenFiles {
        before: now.current,
        after: target(now.current, now.maximum),
        hard: now.maximum,
    };
    match would.after {
        Some(limit) if !would.covers(need) => Some((limit, need)),
        _ => None,
    }
}

/// [`raise`], then one log line: the raise (info), or what is short and how to fix it
/// (warn). Never fails the start: a low limit makes connections past it fail, not the
/// exchange.
pub fn raise_for(connections_max: usize, admin_max: usize) -> Option<OpenFiles> {
    let need = needed(connections_max, admin_max);
    match raise() {
        Ok(f) => {
            f.say_raised();
            if !f.covers(need) {
                tracing::warn!(
                    limit = f.after,
                    need,
                    connections_max,
                    "the open-file limit is below server.connections_max plus admin and buyer connections: connections past it will fail; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower server.connections_max"
                );
            }
            Some(f)
        }
        Err(e) => {
            tracing::warn!(error = %e, need, "could not raise the open-file limit");
            None
        }
    }
}

/// The fewest open files an exchange starts with: its runtimes, listeners, ledger
/// segment and key, and a few buyer connections. Under it a start failed with a bare
/// `Too many open files` and a backtrace, or `a worker thread died while starting`
/// (black-box round 225c, `prlimit --nofile=8` to `24`).
pub const OPEN_FILES_MIN: u64 = 64;
/// The least address space (`RLIMIT_AS`, `ulimit -v`) an exchange starts with. The
/// process reserves far more address space than it keeps resident (about 570 MB with two
/// workers at rest against 77 MB resident: the allocator's arenas, every thread's stack,
/// the buyer clients' pools), and an allocation past the limit aborts it: black-box round
/// 225c, under 500 MB it said it was ready and aborted within a second of traffic.
pub const ADDRESS_SPACE_MIN: u64 = 1 << 30;
/// Under this much address space a start warns: threads and buffers added under load may
/// reach the limit.
pub const ADDRESS_SPACE_WARN: u64 = 4 << 30;

/// What the limits a start would run under say: `Err` why it cannot start, `Ok` with a
/// warning or none. `open_files` and `address_space` are the soft limits once raised to
/// the hard ones (`None`: unlimited).
pub fn start_verdict(
    open_files: Option<u64>,
    address_space: Option<u64>,
) -> Result<Option<String>, String> {
    let mib = |b: u64| b >> 20;
    if let Some(n) = open_files.filter(|&n| n < OPEN_FILES_MIN) {
        return Err(format!(
            "the open-file limit is {n} (ulimit -n, systemd LimitNOFILE=), under the {OPEN_FILES_MIN} descriptors the exchange needs to start (its runtimes, listeners, ledger and buyer connections): raise it"
        ));
    }
    match address_space {
        Some(b) if b < ADDRESS_SPACE_MIN => Err(format!(
            "the address-space limit is {} MiB (ulimit -v, RLIMIT_AS), under the {} MiB the exchange needs: it reserves far more address space than it keeps resident (about 570 MB with two workers at rest, against under 100 MB resident: the allocator's arenas and every thread's stack), and an allocation past the limit aborts the process. Remove it (ulimit -v unlimited) and bound memory with a cgroup instead (memory.max, systemd MemoryMax=), which counts resident memory",
            mib(b),
            mib(ADDRESS_SPACE_MIN)
        )),
        Some(b) if b < ADDRESS_SPACE_WARN => Ok(Some(format!(
            "the address-space limit is {} MiB (ulimit -v, RLIMIT_AS): the threads and buffers load adds may reach it, and an allocation past it aborts the process; remove it and bound memory with a cgroup instead (memory.max, systemd MemoryMax=)",
            mib(b)
        ))),
        _ => Ok(None),
    }
}

/// Raises the soft open-file and address-space limits to the hard ones (never lowers
/// either) and says what a start under them would find ([`start_verdict`]).
pub fn start_limits() -> Result<Option<String>, String> {
    let open_files = match raise() {
        Ok(f) => {
            f.say_raised();
            f.after
        }
        Err(_) => getrlimit(Resource::Nofile).current,
    };
    let now = getrlimit(Resource::As);
    if now.current != now.maximum {
        let _ = setrlimit(
            Resource::As,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    start_verdict(open_files, getrlimit(Resource::As).current)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Black-box round 225c: under a few open files, or under 1 GiB of address space, a
    /// start failed with a bare error or said it was ready and aborted under traffic; it
    /// is refused, saying which limit and what to do, and warned of under 4 GiB.
    #[test]
    fn a_start_under_too_few_files_or_too_little_address_space_is_refused() {
        assert_eq!(start_verdict(None, None), Ok(None));
        assert_eq!(start_verdict(Some(1_024), Some(8 << 30)), Ok(None));
        let e = start_verdict(Some(63), None).unwrap_err();
        assert!(e.starts_with("the open-file limit is 63 "), "{e}");
        assert!(start_verdict(Some(64), None).is_ok());
        let e = start_verdict(Some(1_024), Some(500 << 20)).unwrap_err();
        assert!(e.starts_with("the address-space limit is 500 MiB"), "{e}");
        assert!(e.contains("memory.max"), "{e}");
        let w = start_verdict(Some(1_024), Some(1 << 30)).unwrap().unwrap();
        assert!(w.starts_with("the address-space limit is 1024 MiB"), "{w}");
        assert_eq!(start_verdict(Some(1_024), Some(4 << 30)), Ok(None));
    }

    #[test]
    fn the_target_is_the_hard_limit_and_never_lower_than_now() {
        assert_eq!(target(Some(1_024), Some(524_288)), Some(524_288));
        assert_eq!(target(Some(1_024), None), Some(UNLIMITED_TARGET));
        // Already at or above: unchanged (never lowered).
        assert_eq!(target(Some(524_288), Some(524_288)), Some(524_288));
        assert_eq!(target(Some(2_000_000), None), Some(2_000_000));
        assert_eq!(target(None, None), None);
    }

    #[test]
    fn the_need_counts_sellers_admins_and_headroom() {
        assert_eq!(needed(10_000, 64), 10_000 + 64 + HEADROOM);
        assert_eq!(needed(usize::MAX, 64), u64::MAX);
        let f = OpenFiles {
            before: Some(1_024),
            after: Some(1_024),
            hard: Some(1_024),
        };
        assert!(!f.covers(needed(10_000, 64)));
        assert!(f.covers(1_024));
        assert!(OpenFiles { after: None, ..f }.covers(u64::MAX));
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let f = raise().expect("raising to the hard limit is always allowed");
        assert_eq!(f.after, target(f.before, f.hard));
        assert_eq!(getrlimit(Resource::Nofile).current, f.after);
        // A second raise changes nothing.
        let again = raise().expect("again");
        assert_eq!(again.before, again.after);
    }
}
