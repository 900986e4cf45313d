//! Process samples read from `/proc`: CPU, memory, sockets, and TIME_WAIT counts.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most entries read from one `/proc/<pid>/task` or `/proc/<pid>/fd` directory.
pub const PROC_ENTRIES_MAX: usize = 1_000_000;
/// Most lines read from one `/proc/net/tcp*` file.
pub const PROC_NET_LINES_MAX: usize = 10_000_000;
/// A process at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcSample {
    /// Seconds since the scenario started.
    pub t_s: f64,
    /// CPU time used so far by all its threads, ns.
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    pub open_sockets: u64,
}

/// Samples process `pid`: CPU is the sum over its threads of the first field of
/// `/proc/<pid>/task/*/schedstat` (ns on CPU), memory is `VmRSS` from
/// `/proc/<pid>/status`, sockets are the `/proc/<pid>/fd` entries linking to `socket:`.
/// A thread that exits while being read is skipped.
pub fn proc_sample(pid: u32, t_s: f64) -> std::io::Result<ProcSample> {
    let base = Path::new("/proc").join(pid.to_string());
    let mut cpu_ns = 0u64;
    for entry in std::fs::read_dir(base.join("task"))?.take(PROC_ENTRIES_MAX) {
        let Ok(entry) = entry else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
        cpu_ns = cpu_ns.saturating_add(ns);
    }
    let status = std::fs::read_to_string(base.join("status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    let mut open_sockets = 0u64;
    for entry in std::fs::read_dir(base.join("fd"))?.take(PROC_ENTRIES_MAX) {
        let Ok(entry) = entry else { continue };
        if let Ok(link) = std::fs::read_link(entry.path()) {
            if link.to_string_lossy().starts_with("socket:") {
                open_sockets += 1;
            }
        }
    }
    Ok(ProcSample {
        t_s,
        cpu_ns,
        rss_bytes: rss_kb.saturating_mul(1024),
        open_sockets,
    })
}

/// [`proc_sample`] of a process that still runs once it has been read: `None` if it has
/// ended ([`crate::children::ended`]). A zombie (a killed exchange not yet reaped) still
/// reads, as 0 bytes, 0 sockets and only its main thread's CPU, and those figures were
/// reported as the target's (black-box round 82b). A process read while it exits, its
/// memory already released but not yet a zombie (no `VmRSS`), has ended too: its 0 bytes
/// were taken as a sample (a test of this failed once under a loaded machine).
pub fn live_sample(pid: u32, t_s: f64) -> Option<ProcSample> {
    let sample = proc_sample(pid, t_s).ok()?;
    if sample.rss_bytes == 0 || crate::children::ended(pid) {
        None
    } else {
        Some(sample)
    }
}

/// Most samples [`sample_until`] keeps.
pub const PROC_SAMPLES_MAX: usize = 100_000;

/// A process sampled over a run ([`sample_until`]).
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    /// Taken while it ran.
    pub samples: Vec<ProcSample>,
    /// When it was first seen ended, seconds since sampling started: it exited before
    /// the sampling was stopped.
    pub exited_at_s: Option<f64>,
}

/// Samples `pid` every `every` (the first at once) until `stop` fires (or its sender is
/// dropped) or the process ends; keeps the samples taken before it ended and stops
/// there, where sampling a zombie went on reading 0 MB and 0 sockets to the end of the
/// run (black-box round 82b).
pub async fn sample_until(
    pid: u32,
    every: std::time::Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Sampled {
    let t0 = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(every);
    let mut out = Sampled::default();
    while out.samples.len() < PROC_SAMPLES_MAX {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let t_s = t0.elapsed().as_secs_f64();
        match live_sample(pid, t_s) {
            Some(sample) => out.samples.push(sample),
            None => {
                out.exited_at_s = Some(t_s);
                break;
            }
        }
    }
    out
}

/// The soak's memory and sockets note: from the sample after warm-up (the 10th, or the
/// last if fewer) to the last; if the process exited during the run, the last is its last
/// sample alive, said so with when it was taken. `None` without samples.
pub fn memory_note(sampled: &Sampled) -> Option<String> {
    let samples = &sampled.samples;
    let first = samples.get(samples.len().min(10).saturating_sub(1))?;
    let last = samples.last()?;
    let end = match sampled.exited_at_s {
        None => "at the end".to_string(),
        Some(_) => format!("at its last sample ({:.0} s), before it exited", last.t_s),
    };
    Some(format!(
        "RSS {:.1} MB after warm-up -> {:.1} MB {end}; open sockets {} -> {}",
        first.rss_bytes as f64 / 1e6,
        last.rss_bytes as f64 / 1e6,
        first.open_sockets,
        last.open_sockets
    ))
}

/// The note for a target process that exited during its run (`at_s`: when it was first
/// seen ended, seconds into the run, if known; 0 or less: already ended when its run
/// began, as a relay killed during the direct leg is; black-box: that was "about 1 s into
/// it", the first check of its run).
pub fn exited_note(which: &str, pid: u32, at_s: Option<f64>) -> String {
    let when = at_s.map_or_else(
        || "before its end".to_string(),
        |t| {
            if t <= 0.0 {
                "before it began: during an earlier leg".to_string()
            } else {
                format!("about {t:.0} s into it (warm-up included)")
            }
        },
    );
    format!(
        "the {which} (pid {pid}) exited during its run, {when}: it was read no further, so its CPU is not given and its memory and sockets stop at its last sample; its requests from then on are its errors"
    )
}

/// Sockets in TIME_WAIT (state `06`) whose remote port is `port` (`None`: any), from
/// `/proc/net/tcp` and `/proc/net/tcp6` (a missing `tcp6` counts as none): the
/// connections this machine closed towards a server on `port`.
pub fn time_wait_sockets(port: Option<u16>) -> std::io::Result<u64> {
    let mut n = count_time_wait(&std::fs::read_to_string("/proc/net/tcp")?, port);
    match std::fs::read_to_string("/proc/net/tcp6") {
        Ok(text) => n += count_time_wait(&text, port),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(n)
}

/// Counts TIME_WAIT lines of a `/proc/net/tcp*` table with remote port `port` (`None`:
/// any).
pub(super) fn count_time_wait(table: &str, port: Option<u16>) -> u64 {
    table
        .lines()
        .skip(1)
        .take(PROC_NET_LINES_MAX)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (_sl, _local, remote, state) = (f.next(), f.next(), f.next(), f.next());
            let remote_port = remote
                .and_then(|r| r.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == Some("06") && (port.is_none() || remote_port == port)
        })
        .count() as u64
}
