//! The processes a run starts (simulated buyers, the relay, the exchange, `pingpost`
//! commands), so that a signal to `loadtest` alone stops them too.
//!
//! A Ctrl-C in a terminal reaches the whole process group, but `kill -INT <pid>`,
//! `timeout`, a CI runner or a supervisor signals `loadtest` only. Its simulated buyers
//! and relay exit when their stdin closes with it; the exchange does not, and was left
//! running, listening and holding its ledger (black-box round 27). Every child is
//! registered here while it runs; [`stop_on_signal`] stops them all on SIGINT, SIGTERM
//! or SIGHUP, then exits with 128 + the signal's number.
//!
//! The exchange is stopped first, and waited for, before the rest: signalled all at
//! once, the simulated buyers exited while the exchange was still draining its auctions
//! in flight, and its ledger ended with a false auction where every buyer was `error`
//! (black-box round 82b).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What a registered child is: the exchange is stopped before the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An exchange: it drains its auctions in flight on SIGTERM, and needs its buyers
    /// (and relay) meanwhile.
    Exchange,
    /// Anything else: simulated buyers, the relay, `pingpost` commands.
    Other,
}

static RUNNING: Mutex<BTreeMap<u32, Kind>> = Mutex::new(BTreeMap::new());
/// The exit status a signal asked for (0: none yet).
static SIGNALLED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The exit status of the signal being handled, if one arrived: the run's own error
/// (a child it was waiting for has just been stopped) is then not the news.
pub fn signalled() -> Option<i32> {
    match SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        code => Some(code),
    }
}

/// How long the children get to stop after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A registered child: unregistered when dropped.
#[derive(Debug)]
pub struct Registered(u32);

/// Registers a child process by its pid until the returned value is dropped.
pub fn register(pid: u32) -> Registered {
    register_as(pid, Kind::Other)
}

/// Registers an exchange by its pid until the returned value is dropped: on a signal it
/// is stopped, and waited for, before the other children ([`stop_all`]).
pub fn register_exchange(pid: u32) -> Registered {
    register_as(pid, Kind::Exchange)
}

fn register_as(pid: u32, kind: Kind) -> Registered {
    if let Ok(mut r) = RUNNING.lock() {
        r.insert(pid, kind);
    }
    Registered(pid)
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut r) = RUNNING.lock() {
            r.remove(&self.0);
        }
    }
}

/// The children registered now.
pub fn running() -> Vec<u32> {
    registered().into_keys().collect()
}

fn registered() -> BTreeMap<u32, Kind> {
    RUNNING.lock().map(|r| r.clone()).unwrap_or_default()
}

/// Whether `pid` has ended: no longer in `/proc`, or a zombie waiting to be reaped.
pub fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Stops every registered child ([`stop`]): the exchanges first, then, once they have
/// ended (or been killed after `grace`), the others, with `grace` of their own. Returns
/// how many there were.
pub fn stop_all(grace: Duration) -> usize {
    stop_in_order(&registered(), grace)
}

/// [`stop_all`] for `children`.
fn stop_in_order(children: &BTreeMap<u32, Kind>, grace: Duration) -> usize {
    let (exchanges, others): (Vec<u32>, Vec<u32>) = children
        .keys()
        .partition(|pid| children.get(pid) == Some(&Kind::Exchange));
    // The buyers keep answering while the exchange drains its auctions in flight.
    stop(&exchanges, grace);
    stop(&others, grace);
    children.len()
}

/// Stops `pids`: SIGTERM, then SIGKILL for any still running after `grace`.
pub fn stop(pids: &[u32], grace: Duration) {
    for &pid in pids {
        signal(pid, "-TERM");
    }
    let polls = grace.as_millis() / 50;
    for _ in 0..polls {
        if pids.iter().all(|&p| ended(p)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids {
        if !ended(pid) {
            signal(pid, "-KILL");
        }
    }
}

/// A `loadtest orphan-guard` process watching one exchange: it stops that exchange if
/// `loadtest` dies without stopping it (a SIGKILL, an OOM kill), which no handler of
/// `loadtest`'s own can catch. Dropped, it tells the guard `done`, closes its stdin and
/// reaps it.
///
/// The guard is started *before* the exchange ([`OrphanGuard::start`]), the exchange is
/// started with the guard's mark in its environment ([`OrphanGuard::mark`]), and the
/// guard is told its pid once it runs ([`OrphanGuard::watch`]). Should `loadtest` die
/// before telling it, the guard finds the exchange by its mark. (Started after the
/// exchange, as before 2026-12-05, a SIGKILL of `loadtest` while the guard was being
/// started left the exchange running.)
#[derive(Debug)]
pub struct OrphanGuard(Option<std::process::Child>);

impl OrphanGuard {
    /// Starts `loadtest orphan-guard` (this binary) with this process's pid, ready to be
    /// told which exchange to watch. A guard that cannot start is reported on stderr and
    /// the run goes on without it (it only matters if `loadtest` is killed). None is
    /// started when this process is not the `loadtest` binary (a test that runs a
    /// scenario in-process).
    pub fn start() -> OrphanGuard {
        let exe = match std::env::current_exe() {
            Ok(exe) if exe.file_name().is_some_and(|n| n == "loadtest") => exe,
            _ => return OrphanGuard(None),
        };
        // In a process group of its own: a Ctrl-C at the terminal (SIGINT to the whole
        // foreground group) leaves it to do its work once `loadtest` has exited, stopping
        // what the exchange left running (black-box round 234a: it died with the rest,
        // and a process the exchange had started ran on under init).
        use std::os::unix::process::CommandExt as _;
        let spawned = std::process::Command::new(exe)
            .arg("orphan-guard")
            .args(["--parent", &std::process::id().to_string()])
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn();
        match spawned {
            Ok(child) => OrphanGuard(Some(child)),
            Err(e) => {
                eprintln!("loadtest: could not start the guard that stops the exchange if loadtest is killed: {e}");
                OrphanGuard(None)
            }
        }
    }

    /// The variable and value to set in the exchange's environment before it is
    /// spawned: the guard finds the exchange by it should `loadtest` die before
    /// [`OrphanGuard::watch`]. `None` without a guard.
    pub fn mark(&self) -> Option<(&'static str, String)> {
        self.0.as_ref().map(|c| (GUARD_MARK, c.id().to_string()))
    }

    /// Tells the guard the exchange to watch: `pid`, a child of this process just
    /// spawned, with its start time (read now: a child's pid cannot be reused before it
    /// is reaped); then, under `--wrap`, the exchange the command started as a process of
    /// its own, if it did. Without it, the guard exits when its stdin closes.
    pub fn watch(&mut self, pid: u32) {
        use std::io::Write;
        let Some(child) = self.0.as_mut() else {
            return;
        };
        let Some((_, _, started)) = stat_of(pid) else {
            return;
        };
        if let Some(stdin) = child.stdin.as_mut() {
            if let Err(e) = stdin.write_all(format!("{pid} {started}\n").as_bytes()) {
                eprintln!("loadtest: could not tell the guard which exchange (pid {pid}) to stop if loadtest is killed: {e}");
            }
        }
    }
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // `done`, then EOF: the guard exits. (EOF alone: `loadtest` died, and the
            // guard stops what carries its mark.)
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                let _ = stdin.write_all(b"done\n");
            }
            let _ = child.wait();
        }
    }
}

/// The variable put in the exchange's environment, set to its guard's pid
/// ([`OrphanGuard::mark`]), by which the guard finds it if `loadtest` died before
/// telling its pid.
pub const GUARD_MARK: &str = "LOADTEST_ORPHAN_GUARD";

/// The pid and start time of the process whose environment holds
/// `GUARD_MARK=<guard>`, from `/proc` (each environment read up to 1 MiB).
#[cfg(test)]
fn marked(guard: u32) -> Option<(u32, u64)> {
    find_marked(GUARD_MARK, &guard.to_string())
}

/// The variable put in the environment of a process started under `--wrap`, set to a
/// value of its own ([`target_mark`]): a wrapper that runs it as its own child
/// (`timeout`, `perf record`, `setsid -f`) has another pid than the target, and the
/// target is found by it ([`find_marked`]).
pub const TARGET_MARK: &str = "LOADTEST_TARGET";

/// The value of [`TARGET_MARK`] for the target `name` of this `loadtest` process.
pub fn target_mark(name: &str) -> String {
    format!("{}.{name}", std::process::id())
}

/// The pid and start time of the first process (in `/proc`'s order) whose environment
/// holds `var=value`, if there is one.
pub fn find_marked(var: &str, value: &str) -> Option<(u32, u64)> {
    all_marked(var, value).into_iter().next()
}

/// The pid and start time of every running process whose environment holds
/// `var=value`, from `/proc` (each environment read up to 1 MiB).
pub fn all_marked(var: &str, value: &str) -> Vec<(u32, u64)> {
    use std::io::Read;
    let want = format!("{var}={value}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let mut env = Vec::new();
        let Ok(file) = std::fs::File::open(entry.path().join("environ")) else {
            continue;
        };
        if file.take(1 << 20).read_to_end(&mut env).is_err() {
            continue;
        }
        if env.split(|&b| b == 0).any(|var| var == want.as_bytes()) {
            if let Some((state, _, started)) = stat_of(pid) {
                if state != "Z" && state != "X" {
                    found.push((pid, started));
                }
            }
        }
    }
    found
}

/// Whether the process `pid` runs `program`: its `/proc/<pid>/exe`, or, when that cannot
/// be read, its `argv[0]` (resolved against its working directory, or `PATH` when it has
/// no `/`).
pub fn runs_program(pid: u32, program: &std::path::Path) -> bool {
    let Ok(program) = std::fs::canonicalize(program) else {
        return false;
    };
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe == program,
        Err(_) => cmdline_of(pid)
            .first()
            .and_then(|argv0| resolved(pid, argv0, true))
            .is_some_and(|p| p == program),
    }
}

/// Whether the command line of `pid` names `program` past its `argv[0]` (each argument
/// resolved against its working directory): a process that runs the program under a
/// tool of its own, in its own process (valgrind: its exe is the tool's, e.g.
/// `callgrind-amd64-linux`, and its command line `valgrind … <program> …`).
pub fn names_program(pid: u32, program: &std::path::Path) -> bool {
    let Ok(program) = std::fs::canonicalize(program) else {
        return false;
    };
    cmdline_of(pid)
        .iter()
        .skip(1)
        .any(|arg| resolved(pid, arg, false).is_some_and(|p| p == program))
}

/// The arguments of `pid`'s command line (none once it is gone).
fn cmdline_of(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `arg`, a path in the process `pid`'s command line, made canonical: relative to that
/// process's working directory; a bare name (no `/`) is looked for in `PATH` when
/// `search`, and else not taken as a path.
fn resolved(pid: u32, arg: &str, search: bool) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(arg);
    if !arg.contains('/') {
        if !search {
            return None;
        }
        let paths = std::env::var_os("PATH")?;
        return std::env::split_paths(&paths)
            .map(|dir| dir.join(path))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok());
    }
    let full = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()?
            .join(path)
    };
    std::fs::canonicalize(full).ok()
}

/// Every process descended from `pid` (its children, theirs, …), from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| Some((p, stat_of(p)?.1)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for (p, _) in parents.iter().filter(|(p, pp)| *pp == parent && *p != pid) {
            if !found.contains(p) {
                found.push(*p);
            }
        }
        i += 1;
    }
    found.remove(0);
    found
}

/// The target a `--wrap` command (`wrapper`) started, among the wrapper itself, its
/// descendants and the processes with one of `marks` (`var=value`) in their environment
/// (a wrapper may detach it, `setsid -f`): the one running `program` (its exe: another
/// than the wrapper first, the first started of them, else the wrapper, when it ran the
/// target in its own process, as `env` and `exec` do); failing that, one whose command
/// line names `program` (the wrapper first: valgrind runs it in its own process, under
/// its tool). `None` when no process is either: what else the wrapper started (a
/// `sleep` beside the target) is never taken for it (black-box: a wrapper script that
/// started `sleep &` before `exec "$@"` had the `sleep` measured as the exchange).
pub fn wrapped_target(
    wrapper: u32,
    marks: &[(&str, &str)],
    program: &std::path::Path,
) -> Option<(u32, u64)> {
    let mut others: Vec<(u32, u64)> = Vec::new();
    let running = |p: u32| {
        stat_of(p)
            .filter(|(state, _, _)| state != "Z" && state != "X")
            .map(|(_, _, started)| (p, started))
    };
    let marked = marks.iter().flat_map(|(var, value)| all_marked(var, value));
    for (p, started) in descendants(wrapper)
        .into_iter()
        .filter_map(running)
        .chain(marked)
    {
        if p != wrapper && !others.iter().any(|(o, _)| *o == p) {
            others.push((p, started));
        }
    }
    others.sort_by_key(|(p, started)| (*started, *p));
    let wrapper = running(wrapper);
    let first = |test: fn(u32, &std::path::Path) -> bool| {
        others
            .iter()
            .copied()
            .find(|(p, _)| test(*p, program))
            .or_else(|| wrapper.filter(|(p, _)| test(*p, program)))
    };
    first(runs_program).or_else(|| {
        wrapper
            .filter(|(p, _)| names_program(*p, program))
            .or_else(|| {
                others
                    .iter()
                    .copied()
                    .find(|(p, _)| names_program(*p, program))
            })
    })
}

/// Whether the process `pid` that started at `started` (clock ticks since boot) still
/// runs (not ended, not a zombie, and not another process under a reused pid).
pub fn still_runs(pid: u32, started: u64) -> bool {
    matches!(stat_of(pid), Some((state, _, start)) if start == started && state != "Z" && state != "X")
}

/// The `<pid> <start time>` line the guard is told, if whole.
#[cfg(test)]
fn told(said: &[u8]) -> Option<(u32, u64)> {
    told_all(said).into_iter().next()
}

/// Every whole `<pid> <start time>` line the guard is told, in order: the exchange (or
/// the `--wrap` command that runs it) first, then the exchange that command started as
/// a process of its own, if any ([`OrphanGuard::watch_target`]).
fn told_all(said: &[u8]) -> Vec<(u32, u64)> {
    let Ok(text) = std::str::from_utf8(said) else {
        return Vec::new();
    };
    let whole = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    whole
        .split('\n')
        .map_while(|line| {
            let (pid, started) = line.split_once(' ')?;
            Some((pid.parse().ok()?, started.parse().ok()?))
        })
        .collect()
}

/// How long the guard, once `loadtest` died, goes on looking for processes with its
/// mark (one may still be starting).
const ORPHAN_WAIT: Duration = Duration::from_secs(2);

/// The state, parent pid and start time (in clock ticks since boot) of `pid`, from
/// `/proc/<pid>/stat`; `None` once it is gone.
fn stat_of(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields follow the command name's closing parenthesis: state (3), ppid (4), …,
    // starttime (22).
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((
        (*rest.first()?).to_string(),
        rest.get(1)?.parse().ok()?,
        rest.get(19)?.parse().ok()?,
    ))
}

/// `loadtest orphan-guard --parent <loadtest>`: reads `<pid> <start time>` lines of the
/// processes to watch from its stdin (the exchange or its `--wrap` command, then the
/// exchange that command started), until its stdin closes (when `loadtest`, its parent,
/// drops the guard or dies). `done` before the close: `loadtest` let it go, having
/// stopped them, and the guard exits. Without it, `loadtest` died: the guard stops
/// ([`stop`]) every process told that still runs (the same process: its start time) and
/// every process with its mark, looking for those during [`ORPHAN_WAIT`].
pub fn orphan_guard_main(loadtest: u32) {
    let mut said = Vec::new();
    let mut stdin = std::io::stdin().lock();
    let mut scratch = [0u8; 64];
    // Bounded: a few short lines are expected, and anything past 256 bytes is ignored.
    while let Ok(n) = std::io::Read::read(&mut stdin, &mut scratch) {
        if n == 0 {
            break;
        }
        if said.len() < 256 {
            said.extend_from_slice(&scratch[..n]);
        }
    }
    // `loadtest` says `done` when it lets the guard go: it has stopped what it started.
    if said.split(|b| *b == b'\n').any(|line| line == DONE) {
        return;
    }
    // Its stdin closed without `done`: `loadtest` died (a SIGKILL, an OOM kill) or
    // exited on a signal. Every process told, and every process with the guard's mark
    // (the exchange, the `--wrap` command that runs it, and what that command started),
    // is stopped. Marks are looked for during `ORPHAN_WAIT`: a process `loadtest` had
    // not found yet may still be starting (black-box round 145a: a wrapper that forked
    // the exchange after a moment left it running when `loadtest` was killed at once),
    // and right after its exec the kernel may not have laid out its environment yet
    // (`/proc/PID/environ` reads empty for a moment; a loaded full run caught one look
    // missing it).
    let told = told_all(&said);
    let mark = std::process::id().to_string();
    let mut signalled: Vec<u32> = Vec::new();
    for look in 0..=ORPHAN_WAIT.as_millis() / 20 {
        if look > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let running = told
            .iter()
            .copied()
            .filter(|(pid, started)| still_runs(*pid, *started))
            .chain(all_marked(GUARD_MARK, &mark));
        for (pid, _) in running {
            if signalled.contains(&pid) {
                continue;
            }
            eprintln!(
                "loadtest orphan-guard: loadtest (pid {loadtest}) ended without stopping the exchange it started, or what that left running (pid {pid}: the exchange, a process of its --wrap command, or one the exchange started); stopping it"
            );
            signal(pid, "-TERM");
            signalled.push(pid);
        }
    }
    // SIGTERM again, then SIGKILL for any still running after the grace.
    stop(&signalled, STOP_GRACE);
}

/// What `loadtest` tells its guard when it lets it go, having stopped what it started.
const DONE: &[u8] = b"done";

/// Installs the handlers for SIGINT, SIGTERM and SIGHUP at once (so no signal is missed
/// once it returns) and gives the task to spawn on the run's runtime: on the first of
/// them it stops every registered child and exits with 128 + the signal's number (130,
/// 143, 129). Call it from within the runtime.
pub fn stop_on_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move { stop_when_signalled(&mut int, &mut term, &mut hup).await })
}

async fn stop_when_signalled(
    int: &mut tokio::signal::unix::Signal,
    term: &mut tokio::signal::unix::Signal,
    hup: &mut tokio::signal::unix::Signal,
) {
    let code = tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
        _ = hup.recv() => 129,
    };
    SIGNALLED.store(code, std::sync::atomic::Ordering::SeqCst);
    // Stopped and exited on a blocking thread: the runtime, if the run ends meanwhile,
    // waits for it instead of cancelling it.
    let _ = tokio::task::spawn_blocking(move || {
        let n = stop_all(STOP_GRACE);
        // On a line of its own: a progress line may be on the terminal, without its end.
        eprintln!("\nloadtest: interrupted; stopped the {n} process(es) it had started");
        std::process::exit(code);
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_takes_only_a_whole_pid_line() {
        assert_eq!(told(b"4242 987654\n"), Some((4242, 987_654)));
        assert_eq!(told(b"4242 987654\nmore"), Some((4242, 987_654)));
        // The exchange a --wrap command started, told after the command.
        assert_eq!(
            told_all(b"4242 987654\n4245 987660\n"),
            vec![(4242, 987_654), (4245, 987_660)]
        );
        assert_eq!(told_all(b"4242 987654\n4245 98"), vec![(4242, 987_654)]);
        for bad in [
            &b""[..],
            b"4242 987654",
            b"4242\n",
            b"x 1\n",
            b"1 -2\n",
            b"\xff 1\n",
        ] {
            assert_eq!(told(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_wrapper_s_target_is_found_beside_the_wrapper() {
        let mark = format!("{}.wrap-test", std::process::id());
        // The wrapper (a shell) runs the target (another shell) as its own child, and
        // the target says its pid once its own code runs (see the test below), then
        // waits for its stdin (the wrapper's) to close.
        let mut wrapper = std::process::Command::new("/bin/sh")
            .args(["-c", "/bin/sh -c 'echo $$; read line'; true"])
            .env(TARGET_MARK, &mark)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(wrapper.stdout.take().expect("its stdout")),
            &mut said,
        )
        .expect("its line");
        let target: u32 = said.trim().parse().expect("the target's pid");
        let found = wrapped_target(
            wrapper.id(),
            &[(TARGET_MARK, &mark)],
            std::path::Path::new("/bin/sh"),
        );
        // Found as the wrapper's descendant too, without the mark.
        let unmarked = wrapped_target(
            wrapper.id(),
            &[(TARGET_MARK, &format!("{mark}-other"))],
            std::path::Path::new("/bin/sh"),
        );
        // Nothing runs or names this program.
        let none = wrapped_target(
            wrapper.id(),
            &[(TARGET_MARK, &mark)],
            std::path::Path::new("/nonexistent/program"),
        );
        let started = stat_of(target).map(|(_, _, s)| s).expect("running");
        let runs = still_runs(target, started);
        drop(wrapper.stdin.take());
        let _ = wrapper.wait();
        assert_ne!(target, wrapper.id());
        assert_eq!(found, Some((target, started)));
        assert_eq!(unmarked, Some((target, started)));
        assert!(runs);
        assert_eq!(none, None);
        // The wrapper waited for it: ended.
        assert!(!still_runs(target, started));
    }

    /// A shell running `script` (with `args`) under `TARGET_MARK=mark`, once it said
    /// `lines` lines (read here): the lines, and the shell.
    fn said_by(
        script: &str,
        args: &[&str],
        mark: &str,
        lines: usize,
    ) -> (Vec<String>, std::process::Child) {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", script, "sh"])
            .args(args)
            .env(TARGET_MARK, mark)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("its stdout"));
        let said = (0..lines)
            .map(|_| {
                let mut line = String::new();
                std::io::BufRead::read_line(&mut out, &mut line).expect("its line");
                line.trim().to_string()
            })
            .collect();
        (said, child)
    }

    /// A wrapper that starts a helper (`sleep`) in the background, then `exec`s the
    /// target: the target is the wrapper's own process, not the helper, which carries the
    /// mark too (black-box: the helper was measured as the exchange).
    #[test]
    fn a_helper_beside_an_execed_target_is_not_the_target() {
        let mark = format!("{}.helper-test", std::process::id());
        // The wrapper starts the helper and says its pid, then its process runs the
        // target (bash, not the wrapper's `sh` nor the helper's until it runs `sleep`: it
        // says it runs, then waits for its stdin to close).
        let (said, mut wrapper) = said_by(
            "sleep 30 >/dev/null & echo $!; exec bash -c 'echo ready; read line'",
            &[],
            &mark,
            2,
        );
        let helper: u32 = said[0].parse().expect("the helper's pid");
        let found = wrapped_target(wrapper.id(), &[(TARGET_MARK, &mark)], &which("bash"));
        drop(wrapper.stdin.take());
        let _ = wrapper.wait();
        signal(helper, "-KILL");
        assert_eq!(said[1], "ready");
        assert_eq!(found.map(|(p, _)| p), Some(wrapper.id()), "helper {helper}");
    }

    /// valgrind runs the target in its own process under its tool: no process runs the
    /// program, and the wrapper, whose command line names it, is the target.
    #[test]
    fn a_wrapper_that_names_the_program_runs_it_in_its_own_process() {
        let mark = format!("{}.names-test", std::process::id());
        let program = which("true");
        let arg = program.to_string_lossy().into_owned();
        // A helper beside it, which neither runs nor names the program.
        let (said, mut wrapper) = said_by("sleep 30 & echo $!; read line", &[&arg], &mark, 1);
        let helper: u32 = said[0].parse().expect("the helper's pid");
        let found = wrapped_target(wrapper.id(), &[(TARGET_MARK, &mark)], &program);
        drop(wrapper.stdin.take());
        let _ = wrapper.wait();
        signal(helper, "-KILL");
        assert_eq!(found.map(|(p, _)| p), Some(wrapper.id()));
    }

    /// `name`'s path, from `PATH`.
    fn which(name: &str) -> std::path::PathBuf {
        let paths = std::env::var_os("PATH").expect("PATH");
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .expect(name)
    }

    #[test]
    fn the_guard_finds_the_exchange_by_its_mark() {
        // A guard pid no process can have (above the kernel's pid limit).
        let guard = 4_000_000_000 + std::process::id() % 1_000_000;
        // A shell that says it runs once its own code runs, then waits (no other exec):
        // by then the kernel has laid out its environment (`/proc/PID/environ` reads
        // empty for a moment after an exec; a full run on a loaded machine caught that).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo ready; read line"])
            .env(GUARD_MARK, guard.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("its stdout")),
            &mut ready,
        )
        .expect("its line");
        assert_eq!(ready, "ready\n");
        let found = marked(guard);
        let other = marked(guard + 1);
        let started = stat_of(child.id()).map(|(_, _, s)| s);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some((child.id(), started.expect("running"))));
        assert_eq!(other, None);
    }

    #[test]
    fn registered_children_are_stopped_and_unregistered_ones_left_alone() {
        let mut kept = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("sleep");
        let mut stopped = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("sleep");
        let gone = register(stopped.id());
        {
            let _dropped = register(kept.id());
        }
        // Other tests of this process may register children of their own.
        assert!(running().contains(&stopped.id()));
        assert!(!running().contains(&kept.id()));
        stop(&[stopped.id()], STOP_GRACE);
        let status = stopped.wait().expect("wait");
        assert!(!status.success(), "{status:?}");
        assert!(!ended(kept.id()), "an unregistered child is left alone");
        let _ = kept.kill();
        let _ = kept.wait();
        let pid = stopped.id();
        drop(gone);
        assert!(!running().contains(&pid));
        assert!(ended(u32::MAX), "no such process");
    }

    /// A shell child that says `ready` on stdout once its TERM trap is set, then waits
    /// (30 s at most) until signalled.
    fn trapping(trap: &str, args: &[&std::path::Path]) -> std::process::Child {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap '{trap}' TERM; echo ready; sleep 30 >/dev/null & wait"
            ))
            .arg("sh")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready");
        child
    }

    /// Black-box round 82b: the simulated buyers are signalled only once the exchange has
    /// drained and exited, not at the same time.
    #[test]
    fn the_exchange_is_stopped_and_waited_for_before_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let drained = dir.path().join("drained");
        let seen = dir.path().join("seen");
        // The "exchange" drains for 0.2 s on SIGTERM, then says so and exits.
        let mut exchange = trapping(
            r#"kill $! 2>/dev/null; sleep 0.2; touch "$1"; exit 0"#,
            &[&drained],
        );
        // A "buyer" records, on SIGTERM, whether the exchange had finished draining.
        let mut buyer = trapping(
            r#"if [ -e "$1" ]; then echo drained > "$2"; else echo early > "$2"; fi; kill $! 2>/dev/null; exit 0"#,
            &[&drained, &seen],
        );
        let _buyer = register(buyer.id());
        let _exchange = register_exchange(exchange.id());
        // Other tests of this process may register children of their own.
        let ours: BTreeMap<u32, Kind> = registered()
            .into_iter()
            .filter(|(pid, _)| [exchange.id(), buyer.id()].contains(pid))
            .collect();
        assert_eq!(ours.len(), 2);
        assert_eq!(stop_in_order(&ours, STOP_GRACE), 2);
        let (ex, by) = (exchange.wait().expect("wait"), buyer.wait().expect("wait"));
        assert!(ex.success() && by.success(), "{ex:?} {by:?}");
        assert_eq!(
            std::fs::read_to_string(&seen).expect("seen").trim(),
            "drained",
            "the buyer was signalled while the exchange was still draining"
        );
    }
}
