//! The binary raises its soft open-file limit to the hard limit at start: started under
//! a soft limit of 256 (as a shell with `ulimit -Sn 256` would start it), it serves with
//! the hard limit and says so in its log; under a hard limit below what
//! `server.connections_max` needs, it starts and warns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// How long the binary may take to start listening.
const START_WAIT_MAX: Duration = Duration::from_secs(60);

/// `(soft, hard)` "Max open files" of process `pid` from `/proc` (`None`: unlimited).
fn open_file_limits(pid: u32) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut cols = line["Max open files".len()..].split_whitespace();
    let parse = |c: Option<&str>| -> Option<u64> { c.and_then(|v| v.parse().ok()) };
    (parse(cols.next()), parse(cols.next()))
}

/// The child's stdout, line by line, from a thread of its own (the channel ends with it).
fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Starts the binary on the test configuration under `ulimit {ulimit}`, waits for it to
/// listen, and returns its log up to then and its open-file limits, then stops it.
fn start_under(ulimit: &str) -> (Vec<String>, (Option<u64>, Option<u64>)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, rx) = start_on_test_config(dir.path(), Some(ulimit), Stdio::null());
    let mut log = Vec::new();
    let listening = loop {
        match rx.recv_timeout(START_WAIT_MAX) {
            Ok(line) => {
                let done = line.contains("pingpost listening");
                log.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let limits = open_file_limits(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the binary did not start: {log:#?}");
    (log, limits)
}

#[test]
fn the_binary_raises_its_soft_open_file_limit_to_the_hard_limit() {
    let (log, (soft, hard)) = start_under("-Sn 256");
    let want = pingpost::fdlimit::target(Some(256), hard);
    assert_eq!(soft, want, "soft limit after the start (hard {hard:?})");
    if want != Some(256) {
        assert!(
            log.iter()
                .any(|l| l.contains("open-file limit raised to the hard limit")
                    && l.contains("from=256")),
            "{log:#?}"
        );
    }
}

#[test]
fn a_hard_limit_below_the_configured_connections_is_reported_at_start() {
    // Soft and hard 512: nothing to raise, and the default `server.connections_max`
    // (10,000) cannot be served.
    let (log, (soft, hard)) = start_under("-n 512");
    assert_eq!((soft, hard), (Some(512), Some(512)));
    assert!(
        log.iter().any(|l| l.contains("WARN")
            && l.contains("open-file limit is below server.connections_max")
            && l.contains("limit=512")),
        "{log:#?}"
    );
}

/// `--check-config` warns of a hard limit below what the configuration needs, as a start
/// does, and still says the configuration is OK (black-box round 89a: it said nothing).
#[test]
fn check_config_warns_of_a_hard_limit_below_the_configured_connections() {
    let run = |ulimit: &str| {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = TestConfig::new();
        let path = dir.path().join("pingpost.toml");
        std::fs::write(&path, cfg.toml(&dir.path().join("ledger"))).expect("config written");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(r#"ulimit {ulimit} && exec "$0" "$@""#))
            .arg(env!("CARGO_BIN_EXE_pingpost"))
            .arg("--check-config")
            .arg("--config")
            .arg(&path)
            .envs(cfg.env_vars())
            .output()
            .expect("sh runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The default `server.connections_max` (10,000) needs 10,000 + 64 + 1,024.
    let (code, stdout, stderr) = run("-n 512");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(
        stderr.contains("warning: server.connections_max: the open-file limit would be 512 at start, below the 11088 descriptors"),
        "{stderr}"
    );
    // A soft limit the start would raise is not short: no warning (if the hard limit here
    // covers the configuration).
    let (_, hard) = open_file_limits(std::process::id());
    if hard.is_none_or(|h| h >= 11_088) {
        let (code, stdout, stderr) = run("-Sn 256");
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(!stderr.contains("open-file limit"), "{stderr}");
    }
}

/// Black-box round 225c: under a few open files a start failed with a bare `Too many
/// open files` and a backtrace (or `a worker thread died while starting`), and under
/// 500 MB of address space it said it was ready and aborted within a second of traffic.
/// Both are refused before anything is opened, saying which limit and what to do; under
/// 4 GiB of address space the start warns; `--check-config` warns of each.
#[test]
fn a_start_under_too_few_files_or_too_little_address_space_is_refused() {
    let run = |ulimit: &str, check: bool| {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = TestConfig::new();
        let path = dir.path().join("pingpost.toml");
        let ledger = dir.path().join("ledger");
        std::fs::write(&path, cfg.toml(&ledger)).expect("config written");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(r#"ulimit {ulimit} && exec "$0" "$@""#))
            .arg(env!("CARGO_BIN_EXE_pingpost"));
        if check {
            cmd.arg("--check-config");
        }
        let out = cmd
            .arg("--config")
            .arg(&path)
            .envs(cfg.env_vars())
            .env("NO_COLOR", "1")
            .output()
            .expect("sh runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            ledger.exists(),
        )
    };
    let (code, stderr, made) = run("-n 32", false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("pingpost: cannot start: the open-file limit is 32 "),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(!made, "nothing made");
    let (code, stderr, made) = run("-v 524288", false);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("pingpost: cannot start: the address-space limit is 512 MiB"),
        "{stderr}"
    );
    assert!(!made, "nothing made");
    let (code, stderr, _) = run("-v 524288", true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: the address-space limit is 512 MiB")
            && stderr.contains("a start here would be refused"),
        "{stderr}"
    );
    let (code, stderr, _) = run("-v 2097152", true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: the address-space limit is 2048 MiB"),
        "{stderr}"
    );
}

/// Black-box round 225c: where no thread could be made (a pids limit, no address space
/// left), the stop panicked ("OS can't spawn worker thread") instead of draining and
/// flushing the ledger. Here the exchange's address space is cut to what it uses, so the
/// stop's thread (its stack) is refused: it stops on the main thread, cleanly.
#[test]
fn a_stop_that_gets_no_thread_runs_on_the_main_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, rx) = start_on_test_config(dir.path(), None, Stdio::piped());
    let mut log = Vec::new();
    while let Ok(line) = rx.recv_timeout(START_WAIT_MAX) {
        let done = line.contains("pingpost listening");
        log.push(line);
        if done {
            break;
        }
    }
    assert!(
        log.iter().any(|l| l.contains("pingpost listening")),
        "{log:#?}"
    );
    // Its address space now, and 1 MiB more: no thread stack (2 MiB) fits.
    let bytes = (vm_size_kib(child.id()) + 1_024) * 1_024;
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        },
    )
    .expect("prlimit");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Its stdout ends as it exits (a stop that hangs, as the panicking one did, fails
    // here rather than holding the test).
    while let Ok(line) = rx.recv_timeout(START_WAIT_MAX) {
        log.push(line);
    }
    // Its exit follows its stdout's end closely: waited for on a thread, bounded.
    let mut child_stderr = child.stderr.take().unwrap();
    let pid = child.id().to_string();
    let (exited_tx, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited_tx.send(child.wait());
    });
    let Ok(status) = exited.recv_timeout(START_WAIT_MAX) else {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        panic!("the stop did not end: {log:#?}");
    };
    let status = status.expect("wait");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child_stderr, &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{log:#?}\n{stderr}");
    assert!(
        log.iter()
            .any(|l| l.contains("no thread could be made for the stop")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("stopped: the in-flight requests finished")),
        "{log:#?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The binary started on the test configuration (its ledger in `dir`), logging at
/// `info`, under `ulimit` (its `sh` arguments) if given, and its stdout's lines.
fn start_on_test_config(
    dir: &std::path::Path,
    ulimit: Option<&str>,
    stderr: Stdio,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let cfg = TestConfig::new();
    let path = dir.join("pingpost.toml");
    std::fs::write(&path, cfg.toml(&dir.join("ledger"))).expect("config written");
    let bin = env!("CARGO_BIN_EXE_pingpost");
    let mut command = match ulimit {
        // `sh` sets the limit, then becomes the binary (same pid, limits inherited).
        Some(ulimit) => {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!(r#"ulimit {ulimit} && exec "$0" "$@""#))
                .arg(bin);
            sh
        }
        None => Command::new(bin),
    };
    let mut child = command
        .arg("--config")
        .arg(&path)
        .envs(cfg.env_vars())
        .env("RUST_LOG", "pingpost=info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("pingpost starts");
    let rx = log_lines(&mut child);
    (child, rx)
}

/// Process `pid`'s address space now (`VmSize`), KiB.
fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize")
}

/// `pingpost --check-config --config path` with `cfg`'s environment: it must pass
/// (exit 0, "configuration OK"); returns what it said on stderr (its warnings).
fn check_config_ok(cfg: &TestConfig, path: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .arg("--check-config")
        .arg("--config")
        .arg(path)
        .envs(cfg.env_vars())
        .output()
        .expect("pingpost runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Black-box round 116b: `--check-config` said "configuration OK" for a ledger path that
/// is a file, one whose parent is missing, and a listen address another process holds,
/// and the start then failed. It warns of each (the file itself is right: exit 0), and of
/// none when the start would succeed.
#[test]
fn check_config_warns_of_a_ledger_path_or_a_listen_address_a_start_could_not_use() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = TestConfig::new();
    let run = |ledger: &std::path::Path, edit: &dyn Fn(String) -> String| {
        let path = dir.path().join("pingpost.toml");
        std::fs::write(&path, edit(cfg.toml(ledger))).expect("config written");
        check_config_ok(&cfg, &path)
    };
    let same = |t: String| t;
    let fine = run(&dir.path().join("ledger"), &same);
    assert!(!fine.contains("a start here would fail"), "{fine}");

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let said = run(&file, &same);
    assert!(
        said.contains("warning: server.ledger_path:") && said.contains("is not a directory"),
        "{said}"
    );
    let said = run(&dir.path().join("no-such").join("ledger"), &same);
    assert!(
        said.contains("does not exist, nor does its parent")
            && said.contains("a start here would fail"),
        "{said}"
    );

    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let taken = |t: String| {
        t.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        )
    };
    let said = run(&dir.path().join("ledger"), &taken);
    assert!(
        said.contains(&format!(
            "warning: server.listen: cannot listen on 127.0.0.1:{port} now"
        )),
        "{said}"
    );
}

/// Black-box round 117a: `--check-config` passed a ledger directory locked by a running
/// exchange, a `HEAD` that is not one the exchange writes, and a `FINGERPRINT_KEY` that is
/// malformed or missing beside records, and each start was refused. It warns of each
/// (exit 0: the file is right), reading without writing, and of none for a good ledger.
#[test]
fn check_config_warns_of_a_ledger_a_start_would_refuse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger");
    std::fs::create_dir(&ledger).unwrap();
    let cfg = TestConfig::new();
    let path = dir.path().join("pingpost.toml");
    std::fs::write(&path, cfg.toml(&ledger)).expect("config written");
    let run = || check_config_ok(&cfg, &path);
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(&ledger)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    // An empty directory, as a first start finds it: nothing to say, nothing made.
    let said = run();
    assert!(!said.contains("a start here would fail"), "{said}");
    assert!(listing().is_empty(), "{:?}", listing());

    // Locked, as a running exchange holds it.
    let lock = std::fs::File::open(&ledger).unwrap();
    lock.lock().unwrap();
    let said = run();
    assert!(
        said.contains("warning: server.ledger_path: ledger directory")
            && said.contains("is in use by another process"),
        "{said}"
    );
    drop(lock);
    assert!(!run().contains("in use by another process"));

    // A HEAD this exchange does not write.
    std::fs::write(ledger.join("HEAD"), "seq 12\n").unwrap();
    let said = run();
    assert!(
        said.contains("is not a ledger head this exchange writes")
            && said.contains("a start here would fail"),
        "{said}"
    );
    std::fs::remove_file(ledger.join("HEAD")).unwrap();

    // A malformed key.
    std::fs::write(ledger.join("FINGERPRINT_KEY"), "not hex\n").unwrap();
    let said = run();
    assert!(
        said.contains("not a 64-hex-digit fingerprint key"),
        "{said}"
    );
    std::fs::remove_file(ledger.join("FINGERPRINT_KEY")).unwrap();

    // No key beside records.
    std::fs::write(ledger.join("seg-00000001.jsonl"), "{}\n").unwrap();
    let said = run();
    assert!(
        said.contains("FINGERPRINT_KEY is missing beside a ledger that has records"),
        "{said}"
    );
    // Nothing was written by the checks: no key made, no lock file.
    assert_eq!(
        listing(),
        vec![std::ffi::OsString::from("seg-00000001.jsonl")]
    );
}

/// Black-box round 227a: where no thread could be made, a SIGHUP panicked the task that
/// reloads on SIGHUP (tokio's `spawn_blocking`: "OS can't spawn worker thread"), and every
/// later SIGHUP was ignored for the process's life; a `POST /admin/reload` got no answer
/// and was applied later, by itself, at the next reload. Both are refused at once now,
/// saying so, and nothing is applied; once threads can be made again, the next reload of
/// each kind applies.
#[test]
fn a_reload_that_gets_no_thread_is_refused_and_the_next_one_applies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, rx) = start_on_test_config(dir.path(), None, Stdio::piped());
    let mut log = Vec::new();
    // Bounded in lines too: with no thread, the key keeper's check fails in the log
    // every 2 s, so the log never goes quiet.
    let wait_for = |log: &mut Vec<String>, what: &str| {
        for _ in 0..40 {
            let Ok(line) = rx.recv_timeout(START_WAIT_MAX) else {
                break;
            };
            let done = line.contains(what);
            log.push(line);
            if done {
                return;
            }
        }
        panic!("no {what:?} in the log: {log:#?}");
    };
    wait_for(&mut log, "pingpost listening");
    let admin: std::net::SocketAddr = log
        .last()
        .and_then(|l| l.split("admin=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the admin address: {log:#?}"));
    let reload = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).expect("admin connect");
        s.set_read_timeout(Some(START_WAIT_MAX)).unwrap();
        write!(
            s,
            "POST /admin/reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    // Its address space now, and 1 MiB more (the soft limit only): no thread stack fits.
    let vm_kib = vm_size_kib(child.id());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a pid");
    let hard = rustix::process::getrlimit(rustix::process::Resource::As).maximum;
    let limit = |current: Option<u64>| {
        rustix::process::prlimit(
            Some(pid),
            rustix::process::Resource::As,
            rustix::process::Rlimit {
                current,
                maximum: hard,
            },
        )
        .expect("prlimit");
    };
    limit(Some((vm_kib + 1_024) * 1_024));
    hup(child.id());
    wait_for(&mut log, "SIGHUP: the reload could not run");
    let refused = reload();
    assert!(refused.starts_with("HTTP/1.1 500"), "{refused}");
    assert!(
        refused.contains("the reload could not run") && refused.contains("nothing was reloaded"),
        "{refused}"
    );
    // Threads can be made again: the next SIGHUP and the next POST apply, and nothing
    // refused above was applied meanwhile (the generations follow on from 1).
    limit(hard);
    hup(child.id());
    wait_for(&mut log, "SIGHUP: configuration reloaded");
    assert!(
        log.last().unwrap().contains("generation=2"),
        "{:#?}",
        log.last()
    );
    let applied = reload();
    assert!(applied.starts_with("HTTP/1.1 200"), "{applied}");
    assert!(applied.ends_with(r#"{"generation":3}"#), "{applied}");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    while let Ok(line) = rx.recv_timeout(START_WAIT_MAX) {
        log.push(line);
    }
    let mut child_stderr = child.stderr.take().unwrap();
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child_stderr, &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{log:#?}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
