//! A signal to `loadtest` alone (`kill -INT <pid>`, `timeout`, a CI runner) stops the
//! processes it started (black-box round 27: the exchange was left running, listening
//! and holding its ledger, when only loadtest's own pid was signalled).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one case may take before the watchdog ends it (it never waits this long
/// when loadtest behaves). Past a leg's wait for `TIME_WAIT` sockets to expire (up to
/// 65 s when the rest of a test suite left more than 1,000; session 56: a case was ended
/// at 30 s while loadtest waited, and failed).
const CASE_MAX: Duration = Duration::from_secs(120);

/// Bounds a case: runs `on_timeout` (kill what hangs, unblock a FIFO) if the case has not
/// called [`Watchdog::stop`] within [`CASE_MAX`].
struct Watchdog {
    done: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Watchdog {
    fn start(on_timeout: impl FnOnce() + Send + 'static) -> Watchdog {
        let (done, watch) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if watch.recv_timeout(CASE_MAX).is_err() {
                on_timeout();
            }
        });
        Watchdog { done, thread }
    }

    fn stop(self) {
        let _ = self.done.send(());
        self.thread.join().unwrap();
    }
}

/// `loadtest run p1-latency` against the exchange `exchange` alone, at 10 auctions/s for
/// 1 s, writing into `out`.
fn loadtest_on(exchange: &std::path::Path, out: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args([
        "run",
        "p1-latency",
        "--targets",
        "exchange",
        "--rate",
        "10",
        "--duration-s",
        "1",
        "--warmup-s",
        "0",
        "--exchange-bin",
    ])
    .arg(exchange)
    .arg("--out")
    .arg(out);
    cmd
}

/// An "exchange" (a script in `dir`) that says its pid through the FIFO `ready`, never
/// becomes healthy, ignores its stdin closing, and says `term` through the FIFO `stopped`
/// when it is sent SIGTERM.
fn fake_exchange(
    dir: &std::path::Path,
    ready: &std::path::Path,
    stopped: &std::path::Path,
) -> std::path::PathBuf {
    let fake = dir.join("fake-exchange");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ntrap 'kill $child 2>/dev/null; echo term > \"{}\"; exit 0' TERM\nsleep 300 &\nchild=$!\necho $$ > '{}'\nwait\n",
            stopped.display(),
            ready.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    fake
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

#[test]
fn a_signal_to_loadtest_alone_stops_the_exchange_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // An "exchange" that says its pid through a FIFO, then never becomes healthy and
    // ignores its stdin closing: loadtest waits for it (10 s at most) while the test
    // signals loadtest alone.
    let fifo = dir.path().join("ready");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let fake = dir.path().join("fake-exchange");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 300\n",
            fifo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut lt = loadtest_on(&fake, &dir.path().join(format!("out{signal}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A watchdog bounds the case: if loadtest never starts the fake, or never exits,
        // it kills loadtest and unblocks the FIFO, and the assertions below fail.
        let (lt_pid, fifo_w) = (lt.id(), fifo.clone());
        let watchdog = Watchdog::start(move || {
            kill("-KILL", lt_pid);
            let _ = std::fs::write(&fifo_w, "0\n");
        });
        // Blocks until the fake exchange, started by loadtest, writes its pid.
        let ex: u32 = std::fs::read_to_string(&fifo)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(ex, 0, "{signal}: loadtest never started the exchange");
        kill(signal, lt.id());
        let status = lt.wait().unwrap();
        watchdog.stop();
        // loadtest waited for the exchange to end before it exited: it is reaped or a
        // zombie now. (Checked, and killed if it still runs, before stderr is read: it
        // holds the pipe.)
        let gone = loadtest::children::ended(ex);
        if !gone {
            kill("-KILL", ex);
        }
        let err = std::io::read_to_string(lt.stderr.take().unwrap()).unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {err}");
        assert!(err.contains("interrupted; stopped the"), "{signal}: {err}");
        assert!(
            gone,
            "{signal}: the exchange loadtest started is still running"
        );
    }
}

/// Writes `line` into the FIFO at `path` without blocking: opened for reading and writing,
/// a FIFO needs no reader to open, and a reader blocked on it gets the line.
fn unblock(path: &std::path::Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// A SIGKILL of `loadtest` (`kill -9`, an OOM kill) cannot be handled, but the exchange it
/// started is stopped all the same, by its `loadtest orphan-guard` (left alone since
/// black-box round 27: the exchange kept running, listening and holding its ledger).
#[test]
fn a_sigkill_of_loadtest_still_stops_the_exchange_it_started() {
    a_sigkill_of_loadtest_stops_the_exchange(None);
}

/// Under a `--wrap` command that runs the exchange as a process of its own, a SIGKILL of
/// `loadtest` stops the exchange too, not only the command (black-box round 144a: the
/// guard stopped the wrapper, and the exchange, handed to init, kept running).
#[test]
fn a_sigkill_of_loadtest_stops_the_exchange_a_wrapper_forked() {
    a_sigkill_of_loadtest_stops_the_exchange(Some("#!/bin/sh\n\"$@\" &\nwait\n"));
}

/// Starts `loadtest` on an "exchange" that says its pid, never becomes healthy, ignores
/// its stdin closing, and says so through a second FIFO when it is sent SIGTERM (under
/// `wrapper`, a script, if given); kills `loadtest` with SIGKILL, and asserts that the
/// exchange was sent SIGTERM.
fn a_sigkill_of_loadtest_stops_the_exchange(wrapper: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (ready, stopped) = (dir.path().join("ready"), dir.path().join("stopped"));
    for fifo in [&ready, &stopped] {
        assert!(Command::new("mkfifo").arg(fifo).status().unwrap().success());
    }
    let fake = fake_exchange(dir.path(), &ready, &stopped);
    let mut cmd = loadtest_on(&fake, &dir.path().join("out"));
    if let Some(script) = wrapper {
        let path = dir.path().join("wrapper");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.arg("--wrap").arg(&path);
    }
    let mut lt = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A watchdog bounds the case: it unblocks both FIFOs, and the assertions fail.
    let (lt_pid, ready_w, stopped_w) = (lt.id(), ready.clone(), stopped.clone());
    let watchdog = Watchdog::start(move || {
        kill("-KILL", lt_pid);
        unblock(&ready_w, "0\n");
        unblock(&stopped_w, "watchdog\n");
    });
    let ex: u32 = std::fs::read_to_string(&ready)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(ex, 0, "loadtest never started the exchange");
    kill("-KILL", lt.id());
    let _ = lt.wait();
    assert_sent_term(
        ex,
        &stopped,
        watchdog,
        &format!("the exchange was not stopped after loadtest was killed (wrapper: {wrapper:?})"),
    );
}

/// `loadtest`'s orphan guard for a "loadtest" that is not this test's process (pid 1),
/// told on its piped stdin.
fn orphan_guard() -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["orphan-guard", "--parent", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Blocks until the fake exchange `ex` says through `stopped` that it was sent SIGTERM (or
/// the watchdog gives up), ends the watchdog, kills `ex` if it was not, and asserts that
/// it was (`what` otherwise).
fn assert_sent_term(ex: u32, stopped: &std::path::Path, watchdog: Watchdog, what: &str) {
    let said = std::fs::read_to_string(stopped).unwrap();
    watchdog.stop();
    if said.trim() != "term" {
        kill("-KILL", ex);
    }
    assert_eq!(said.trim(), "term", "{what}");
}

/// `loadtest` killed after it started the exchange and before it told the guard its pid:
/// the guard, its stdin closed without a pid, finds the exchange by the mark in its
/// environment and stops it (before 2026-12-05 the guard was started after the
/// exchange, and a SIGKILL in between left the exchange running: a CI run failed on it).
#[test]
fn a_guard_never_told_the_pid_finds_the_exchange_by_its_mark() {
    // A guard for a "loadtest" that is not this test's process (pid 1): the "exchange"
    // below, this test's child, counts as handed to another parent.
    let mut guard = orphan_guard();
    let mut exchange = Command::new("sleep")
        .arg("300")
        .env(loadtest::children::GUARD_MARK, guard.id().to_string())
        .spawn()
        .unwrap();
    // Bounds the case: the exchange is killed if the guard has not stopped it by then.
    let ex = exchange.id();
    let watchdog = Watchdog::start(move || kill("-KILL", ex));
    drop(guard.stdin.take());
    let status = exchange.wait().unwrap();
    watchdog.stop();
    let _ = guard.wait();
    let err = std::io::read_to_string(guard.stderr.take().unwrap()).unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15), "stopped by SIGTERM: {err}");
    assert!(err.contains("ended without stopping the exchange"), "{err}");
}

/// The simulated buyers' process ending during a run fails the run, named: without its
/// buyers a target answers at once and without a bid, which read as a fast run (black-box
/// round 143a: a `kill -9` of `loadtest sims` gave exit status 0, and a run after it was
/// said to have "fell behind the load").
#[test]
fn simulated_buyers_that_exit_during_a_run_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut lt = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            "p1-latency",
            "--targets",
            "direct",
            "--rate",
            "20",
            "--duration-s",
            "3",
            "--warmup-s",
            "0",
            "--exchange-bin",
            "/bin/false",
        ])
        .arg("--out")
        .arg(dir.path().join("out"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lt_pid = lt.id();
    let watchdog = Watchdog::start(move || kill("-KILL", lt_pid));
    // Blocks until the measured run has begun (its buyers are up by then).
    let mut err = std::io::BufReader::new(lt.stderr.take().unwrap());
    let said = read_until(&mut err, "run 1/1: direct");
    let sims = sims_of(lt_pid);
    kill("-KILL", sims);
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let status = lt.wait().unwrap();
    watchdog.stop();
    assert_eq!(status.code(), Some(1), "{said}{rest}");
    assert!(
        rest.contains(&format!(
            "the simulated buyers (pid {sims}) exited during the direct run"
        )),
        "{rest}"
    );
}

/// `lt_pid`'s child running `loadtest sims`, from /proc.
fn sims_of(lt_pid: u32) -> u32 {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            parent == Some(lt_pid) && cmd.split(|b| *b == 0).any(|a| a == b"sims")
        })
        .expect("loadtest's simulated buyers")
}

/// Black-box: with the simulated buyers killed in repetition 2, `loadtest` said `nothing
/// was measured` and wrote no report, though repetition 1 was measured: it writes what
/// was measured, with a note saying where it stopped, and fails (exit 1).
#[test]
fn buyers_that_exit_in_a_later_repetition_leave_the_earlier_ones_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut lt = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            "p1-latency",
            "--targets",
            "direct",
            "--repeat",
            "2",
            "--rate",
            "20",
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
            "--exchange-bin",
            "/bin/false",
        ])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lt_pid = lt.id();
    let watchdog = Watchdog::start(move || kill("-KILL", lt_pid));
    // Blocks until repetition 2 has begun: repetition 1 is measured by then.
    let mut err = std::io::BufReader::new(lt.stderr.take().unwrap());
    let said = read_until(&mut err, "run 2/2: direct");
    kill("-KILL", sims_of(lt_pid));
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    let status = lt.wait().unwrap();
    watchdog.stop();
    assert_eq!(status.code(), Some(1), "{said}{rest}");
    assert!(!rest.contains("nothing was measured"), "{rest}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["targets"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(
        report["repetitions"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["repetitions"][0]["repetition"], 1, "{report}");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("the run stopped early")
            && notes.contains("after 1 measured run(s)")
            && notes.contains("exited during the direct run"),
        "{notes}"
    );
}

/// The guard told only of a process that has ended (a `--wrap` command that forked the
/// exchange and exited) still stops the exchange by its mark when `loadtest` dies, and
/// leaves it alone when `loadtest` lets it go with `done` (black-box round 145a: killed at
/// once under such a wrapper, `loadtest` left the exchange running for good: the guard
/// saw its one told process gone and exited).
#[test]
fn a_guard_whose_told_process_ended_still_stops_the_marked_exchange() {
    for said_done in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (ready, stopped) = (dir.path().join("ready"), dir.path().join("stopped"));
        for fifo in [&ready, &stopped] {
            assert!(Command::new("mkfifo").arg(fifo).status().unwrap().success());
        }
        let fake = fake_exchange(dir.path(), &ready, &stopped);
        // The "wrapper": a process that has ended (and was reaped) by the time the guard
        // is told of it.
        let mut wrapper = Command::new("true").spawn().unwrap();
        let ended = wrapper.id();
        wrapper.wait().unwrap();
        let mut guard = orphan_guard();
        let mut exchange = Command::new(&fake)
            .env(loadtest::children::GUARD_MARK, guard.id().to_string())
            .spawn()
            .unwrap();
        let (ex, ready_w, stopped_w) = (exchange.id(), ready.clone(), stopped.clone());
        let watchdog = Watchdog::start(move || {
            kill("-KILL", ex);
            unblock(&ready_w, "0\n");
            unblock(&stopped_w, "watchdog\n");
        });
        // The exchange runs, its SIGTERM trap set.
        let _ = std::fs::read_to_string(&ready).unwrap();
        {
            use std::io::Write;
            let mut stdin = guard.stdin.take().unwrap();
            // Told a pid and start time that no running process has.
            writeln!(stdin, "{ended} 1").unwrap();
            if said_done {
                writeln!(stdin, "done").unwrap();
            }
        }
        if said_done {
            let _ = guard.wait();
            let runs = exchange.try_wait().unwrap().is_none();
            // Stopped here (its trap ends its own child too).
            kill("-TERM", ex);
            assert_sent_term(ex, &stopped, watchdog, "the exchange did not stop");
            let _ = exchange.wait();
            assert!(
                runs,
                "the guard stopped the exchange though loadtest said done"
            );
        } else {
            assert_sent_term(
                ex,
                &stopped,
                watchdog,
                "the marked exchange was not stopped when loadtest died",
            );
            let _ = exchange.wait();
            let _ = guard.wait();
        }
    }
}

/// Reads `err` line by line until a line holds `marker` (or it ends): what it read, that
/// line included.
fn read_until(err: &mut impl std::io::BufRead, marker: &str) -> String {
    let mut said = String::new();
    loop {
        let mut line = String::new();
        let done = err.read_line(&mut line).unwrap() == 0 || line.contains(marker);
        said.push_str(&line);
        if done {
            return said;
        }
    }
}

/// Runs `loadtest run <args>` on the workspace's exchange (built beside `loadtest` by
/// `cargo nextest run --workspace`) at 20/s for 1 s, kills its simulated buyers once
/// stderr has said `marker` `times` times, and returns its exit code, what it said and
/// its `report.json`.
fn stopped_run(
    args: &[&str],
    marker: &str,
    times: usize,
) -> (Option<i32>, String, serde_json::Value) {
    let exchange = std::path::Path::new(env!("CARGO_BIN_EXE_loadtest")).with_file_name("pingpost");
    assert!(
        exchange.exists(),
        "{} is built with the workspace",
        exchange.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut lt = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("run")
        .args(args)
        .args([
            "--rate",
            "20",
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
            "--exchange-bin",
        ])
        .arg(&exchange)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lt_pid = lt.id();
    let watchdog = Watchdog::start(move || kill("-KILL", lt_pid));
    let mut err = std::io::BufReader::new(lt.stderr.take().unwrap());
    let mut said = String::new();
    for _ in 0..times {
        said.push_str(&read_until(&mut err, marker));
    }
    kill("-KILL", sims_of(lt_pid));
    let _ = std::io::Read::read_to_string(&mut err, &mut said);
    let status = lt.wait().unwrap();
    watchdog.stop();
    let report = std::fs::read_to_string(out.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    (status.code(), said, report)
}

/// The labels of `report`'s targets.
fn labels(report: &serde_json::Value) -> Vec<&str> {
    report["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["label"].as_str())
        .collect()
}

/// Black-box: `many-buyers` stopped in a later size (its simulated buyers gone) reported
/// nothing of the sizes it had measured; it reports them, with their row, and fails.
#[test]
fn many_buyers_stopped_in_a_later_size_reports_the_sizes_before() {
    // The second size's run has begun once its line is said a second time.
    let (code, said, report) = stopped_run(
        &[
            "many-buyers",
            "--configured",
            "1,2",
            "--buyers",
            "1",
            "--targets",
            "direct",
        ],
        "run 1/1: direct",
        2,
    );
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(labels(&report), ["direct, 1 configured"], "{report}");
    let rows = &report["extra"]["many_buyers"];
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(rows[0]["configured"], 1, "{report}");
    // Only the direct baseline was asked for: nothing is said of the exchange's cost.
    assert!(rows[0]["added_p99_us"].is_null(), "{report}");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("the run stopped early") && notes.contains("the exchange was not measured"),
        "{notes}"
    );
}

/// Black-box: `p6-swap` stopped in its second leg (its simulated buyers gone) reported
/// nothing; it reports the leg it measured, says P6 was not judged, and fails.
#[test]
fn p6_swap_stopped_in_a_later_leg_reports_the_leg_before() {
    // The first leg is without swaps; the second has begun once its line is said.
    let (code, said, report) = stopped_run(&["p6-swap", "--buyers", "2"], "exchange, swapping", 1);
    assert_eq!(code, Some(1), "{said}");
    assert_eq!(labels(&report), ["exchange, no swaps"], "{report}");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("the run stopped early")
            && notes.contains("after 1 measured run(s)")
            && notes.contains("P6 NOT JUDGED"),
        "{notes}"
    );
    assert!(report["extra"]["p6"].is_null(), "{report}");
}

/// Black-box round 234a: a Ctrl-C at the terminal (SIGINT to the whole foreground process
/// group) stopped loadtest and its exchange, but a process the exchange had started in the
/// background (which a shell starts with SIGINT ignored) ran on under init: the orphan
/// guard, which stops what carries its mark once loadtest has gone, died with the group.
#[test]
fn a_ctrl_c_to_the_whole_group_leaves_nothing_the_exchange_started() {
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    // The helper's pid comes through a FIFO: read, it blocks until the fake writes it.
    let helper = dir.path().join("helper.pid");
    assert!(Command::new("mkfifo")
        .arg(&helper)
        .status()
        .unwrap()
        .success());
    // An "exchange" that starts a helper in the background and never becomes healthy.
    let fake = dir.path().join("fake-exchange");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nsleep 60 >/dev/null 2>&1 &\necho $! > '{}'\nexec sleep 30\n",
            helper.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut lt = loadtest_on(&fake, &dir.path().join("out"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let lt_pid = lt.id();
    // If loadtest never starts the fake, the watchdog unblocks the FIFO ("0") too.
    let helper_w = helper.clone();
    let watchdog = Watchdog::start(move || {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{lt_pid}")])
            .status();
        unblock(&helper_w, "0\n");
    });
    let pid: u32 = std::fs::read_to_string(&helper)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(pid, 0, "the exchange started its helper");
    // The terminal's Ctrl-C: SIGINT to every process of the group.
    let _ = Command::new("kill")
        .args(["-INT", "--", &format!("-{lt_pid}")])
        .status();
    let status = lt.wait().unwrap();
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_string())
            })
            .is_some_and(|rest| !rest.starts_with('Z'))
    };
    // The guard looks for marked processes for 2 s, then gives them its grace.
    let mut gone = false;
    for _ in 0..400 {
        if !alive() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if !gone {
        kill("-KILL", pid);
    }
    watchdog.stop();
    assert_eq!(status.code(), Some(130));
    assert!(
        gone,
        "the exchange's helper (pid {pid}) still ran after loadtest's Ctrl-C"
    );
}
