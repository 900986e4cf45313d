//! What the exchange `loadtest` starts inherits from `loadtest`'s environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

/// An operator's `PINGPOST_ADMIN_TOKEN` in `loadtest`'s environment does not reach the
/// exchange of a scenario without an admin listener of its own: with it, the exchange
/// opened its default admin listener on 127.0.0.1:8081 (black-box round 100a: a run
/// failed with the port taken, and another exchange's token was served on it).
#[test]
fn the_operator_s_admin_token_does_not_reach_the_benchmark_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let said = dir.path().join("said");
    // An "exchange" that writes what it got and exits at once (loadtest then stops with
    // "exited before it was healthy").
    let fake = dir.path().join("fake-exchange");
    executable(
        &fake,
        &format!(
            "#!/bin/sh\necho \"${{PINGPOST_ADMIN_TOKEN-unset}}\" > '{}'\nexit 1\n",
            said.display()
        ),
    );
    let out = tiny_run(&["p1-latency", "--targets", "exchange"], &fake, dir.path())
        .env(
            "PINGPOST_ADMIN_TOKEN",
            "an-operator-s-real-token-0123456789",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let got = std::fs::read_to_string(&said).expect("loadtest started the exchange");
    assert_eq!(
        got.trim(),
        "unset",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Black-box: under a narrowed `ip_local_port_range`, a port `loadtest` picked for the
/// exchange was taken by another process before the exchange bound it (`cannot listen on
/// 127.0.0.1:288xx (admin.listen): Address already in use`), and the run failed at start
/// (14 of 24 tiny p8-post runs). `loadtest` starts it again on new ports, a few times,
/// and only then gives up; any other failure to start is not retried.
#[test]
fn an_exchange_whose_port_was_taken_is_started_again_on_new_ports() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    // An "exchange" that says its port was taken on its first two starts (each time
    // noting the listen lines of the configuration it was given), then fails otherwise.
    let fake = dir.path().join("fake-exchange");
    executable(
        &fake,
        &format!(
            "#!/bin/sh\ngrep '^listen' \"$2\" | tr '\\n' ' ' >> '{s}'\necho >> '{s}'\nn=$(wc -l < '{s}')\nif [ \"$n\" -le 1 ]; then echo 'error: cannot listen on 127.0.0.1:28801 (admin.listen): Address already in use (os error 98)' >&2; exit 1; fi\nif [ \"$n\" -le 2 ]; then echo 'error: cannot listen on 127.0.0.1:28802 (server.listen): another process is listening there' >&2; exit 1; fi\necho 'error: something else' >&2\nexit 1\n",
            s = starts.display()
        ),
    );
    let out = tiny_run(&["p8-post"], &fake, dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let starts = std::fs::read_to_string(&starts).unwrap();
    let starts: Vec<&str> = starts.lines().collect();
    // Taken twice: started again twice; the third failure is not a taken port.
    assert_eq!(starts.len(), 3, "{starts:?}\n{stderr}");
    for s in &starts {
        // The seller's and the admin listener's, distinct.
        let ports: Vec<&str> = s
            .split_whitespace()
            .filter(|w| w.contains("127.0.0.1:"))
            .collect();
        assert_eq!(ports.len(), 2, "{s}");
        assert_ne!(ports[0], ports[1], "{s}");
    }
    assert!(
        stderr.contains("starting it again on new ports (attempt 2 of 4)")
            && stderr.contains("(attempt 3 of 4)")
            && !stderr.contains("(attempt 4 of 4)"),
        "{stderr}"
    );
    // The exchange's own words still reach loadtest's stderr.
    assert!(stderr.contains("error: something else"), "{stderr}");
}

/// `--ports LO-HI` keeps every listener of the run in that range: the exchange's seller
/// and admin listeners (picked by `loadtest`) and the simulated buyers (started by a
/// process of their own, which inherits the range). Outside testers confined to port
/// ranges drove load with their own clients, as `loadtest` had no such flag (black-box
/// rounds 211a-211c).
#[test]
fn every_listener_of_a_run_takes_its_port_from_the_range_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    // An "exchange" that keeps the configuration it was given and exits at once.
    let fake = dir.path().join("fake-exchange");
    executable(
        &fake,
        &format!("#!/bin/sh\ncp \"$2\" '{}'\nexit 1\n", config.display()),
    );
    let (lo, hi) = (29_900_u16, 29_979_u16);
    let out = tiny_run(
        &["p8-post", "--ports", &format!("{lo}-{hi}")],
        &fake,
        dir.path(),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let config = std::fs::read_to_string(&config).expect("loadtest started the exchange");
    let ports: Vec<u16> = config
        .split("127.0.0.1:")
        .skip(1)
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap()
        })
        .collect();
    // The seller's and admin listeners and p8-post's eight buyers (each named in its ping
    // and post URLs).
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 10, "{ports:?}\n{config}");
    for port in &ports {
        assert!(
            (lo..=hi).contains(port),
            "{port} outside {lo}-{hi}\n{config}"
        );
    }
}

/// The relay process (`loadtest relay`, which `loadtest run` starts for its relay leg)
/// listens inside `LOADTEST_PORTS` too: black-box round 218c saw it on a port the kernel
/// picked, outside the range `--ports` gave.
#[test]
fn the_relay_listens_inside_the_range_given() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("targets.json");
    std::fs::write(
        &targets,
        r#"[{"url":"http://127.0.0.1:9/ping","secret":"relay-test-secret","http2":false,"timeout_ms":50}]"#,
    )
    .unwrap();
    let (lo, hi) = (29_980_u16, 29_999_u16);
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["relay", "--deadline-ms", "70", "--targets"])
        .arg(&targets)
        .env("LOADTEST_PORTS", format!("{lo}-{hi}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // Closing its stdin stops it.
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    let ready: serde_json::Value = serde_json::from_str(line.trim()).expect(&line);
    let addr: std::net::SocketAddr = ready["addr"].as_str().unwrap().parse().unwrap();
    assert!(
        (lo..=hi).contains(&addr.port()) && addr.ip().is_loopback(),
        "the relay listened on {addr}"
    );
    assert!(status.success(), "{status}");
}

/// A port range that is not one stops the run before anything starts, saying why, given
/// as `--ports` or as `LOADTEST_PORTS`.
#[test]
fn a_bad_port_range_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let fake = dir.path().join("fake-exchange");
    executable(
        &fake,
        &format!("#!/bin/sh\ntouch '{}'\nexit 1\n", started.display()),
    );
    let run = |flag: Option<&str>, env: Option<&str>| {
        let mut c = tiny_run(&["p1-latency", "--targets", "exchange"], &fake, dir.path());
        c.env_remove("LOADTEST_PORTS");
        if let Some(f) = flag {
            c.args(["--ports", f]);
        }
        if let Some(e) = env {
            c.env("LOADTEST_PORTS", e);
        }
        c.output().unwrap()
    };
    for (flag, env, says) in [
        (Some("29900"), None, "LO-HI"),
        (Some("29979-29900"), None, "above its last"),
        (Some("29900-29905"), None, "at least 16"),
        (Some("0-100"), None, "port 0"),
        (None, Some("29900-99999"), "LOADTEST_PORTS"),
        (None, Some("ports"), "LO-HI"),
    ] {
        let out = run(flag, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{flag:?} {env:?}: {stderr}");
        assert!(
            !started.exists(),
            "{flag:?} {env:?}: the exchange was started"
        );
    }
}

/// `loadtest run` of `args` (the scenario and its own flags) at 10/s for 1 s with no
/// warm-up, against the stand-in exchange `fake`, its report under `dir`/out.
fn tiny_run(args: &[&str], fake: &std::path::Path, dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    c.arg("run")
        .args(args)
        .args(["--rate", "10", "--duration-s", "1", "--warmup-s", "0"])
        .arg("--exchange-bin")
        .arg(fake)
        .arg("--out")
        .arg(dir.join("out"))
        .stdin(Stdio::null());
    c
}

/// Writes `script` at `path`, executable: a stand-in for the exchange.
fn executable(path: &std::path::Path, script: &str) {
    std::fs::write(path, script).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A process the exchange started and left behind when it ended is stopped with it
/// (black-box round 232b: an `--exchange-bin` script that ran `sleep` was stopped as the
/// exchange, and its `sleep` kept running with loadtest's variables, under pid 1).
#[test]
fn what_the_exchange_started_and_left_running_is_stopped_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("helper.pid");
    // An "exchange" that starts a helper (alive 30 s at most) and exits at once.
    let fake = dir.path().join("fake-exchange");
    executable(
        &fake,
        &format!(
            "#!/bin/sh\nsleep 30 >/dev/null 2>&1 &\necho $! > '{}'\nexit 1\n",
            pid_file.display()
        ),
    );
    let out = tiny_run(&["p1-latency", "--targets", "exchange"], &fake, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let pid = std::fs::read_to_string(&pid_file).expect("the exchange started its helper");
    let pid = pid.trim();
    let alive = std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    if alive {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    assert!(!alive, "the helper (pid {pid}) still runs\n{stderr}");
    assert!(
        stderr.contains("were still running after it ended") && stderr.contains(pid),
        "{stderr}"
    );
}

/// Black-box round 234a: `--out DIR` replaced a real ledger in `DIR/ledger` (62 sales)
/// with the run's own, without a word. A directory holding a ledger or an
/// `exchange.toml` loadtest did not make is refused before anything starts; one an
/// earlier run left (its `exchange.toml` starts with loadtest's header) is reused.
#[test]
fn an_out_directory_holding_a_ledger_loadtest_did_not_make_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let fake = dir.path().join("fake-exchange");
    executable(
        &fake,
        &format!(
            "#!/bin/sh\necho started >> '{}'\nexit 1\n",
            started.display()
        ),
    );
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("ledger")).unwrap();
    std::fs::write(out.join("ledger").join("seg-00000001.jsonl"), b"real\n").unwrap();
    let o = tiny_run(&["p1-latency", "--targets", "exchange"], &fake, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds a ledger other than the one its earlier run"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("ledger").join("seg-00000001.jsonl")).unwrap(),
        b"real\n"
    );
    assert!(!started.exists(), "the exchange was started");
    // Nothing written there first (round 236a: its sims.json was).
    assert!(!out.join("sims.json").exists());
    // A run with `--out` given alone: its refusal's stderr (exit status 1).
    let refused = |out_dir: &std::path::Path| -> String {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["run", "p1-latency", "--targets", "exchange", "--rate", "10"])
            .args(["--duration-s", "1", "--exchange-bin"])
            .arg(&fake)
            .arg("--out")
            .arg(out_dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        stderr
    };
    // A ledger directory itself (round 236a: a run wrote its files among the ledger's).
    let ledger_out = dir.path().join("a-ledger");
    std::fs::create_dir_all(&ledger_out).unwrap();
    std::fs::write(ledger_out.join("HEAD"), b"x").unwrap();
    let stderr = refused(&ledger_out);
    assert!(
        stderr.contains("it is a ledger directory (it holds HEAD)"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&ledger_out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["HEAD"]);
    // A ledger beside loadtest's own exchange.toml, but not the one its run made (round
    // 237a: it was replaced): refused too.
    std::fs::write(
        out.join("exchange.toml"),
        format!("{}\n", loadtest::sim::EXCHANGE_CONFIG_HEADER),
    )
    .unwrap();
    let o = tiny_run(&["p1-latency", "--targets", "exchange"], &fake, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds a ledger other than the one its earlier run"),
        "{stderr}"
    );
    assert!(!started.exists(), "the exchange was started");
    std::fs::remove_dir_all(out.join("ledger")).unwrap();
    // Inside a ledger directory (round 238a: a whole run was put among its files).
    std::fs::write(ledger_out.join("seg-00000001.jsonl"), b"x").unwrap();
    let inside = ledger_out.join("sub");
    let stderr = refused(&inside);
    assert!(
        stderr.contains("it is inside a ledger directory"),
        "{stderr}"
    );
    assert!(!inside.exists(), "--out was made inside the ledger");
    // An earlier run's files (loadtest's exchange.toml, written above): reused (the
    // exchange is started).
    let o = tiny_run(&["p1-latency", "--targets", "exchange"], &fake, dir.path())
        .output()
        .unwrap();
    assert!(started.exists(), "{}", String::from_utf8_lossy(&o.stderr));
}
