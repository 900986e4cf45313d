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
            if f.before != f.after {
                tracing::info!(
                    from = f.before,
                    to = f.after,
                    "open-file limit raised to the hard limit"
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
