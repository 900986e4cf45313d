//! A signal to `loadtest` alone (`kill -INT <pid>`, `timeout`, a CI runner) stops the
//! processes it started (black-box round 27: the exchange was left running, listening
//! and holding its ledger, when only loadtest's own pid was signalled).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The children of `parent` whose command name is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if name == comm && ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_signal_to_loadtest_alone_stops_the_exchange_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // An "exchange" that never becomes healthy and ignores its stdin closing: loadtest
    // waits for it (10 s at most) while the test signals loadtest alone.
    let fake = dir.path().join("fake-exchange");
    std::fs::write(&fake, "#!/bin/sh\nexec sleep 300\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let mut lt = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
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
            .arg(&fake)
            .arg("--out")
            .arg(dir.path().join(format!("out{signal}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait (bounded) for the fake exchange to be running under loadtest.
        let mut exchange = Vec::new();
        for _ in 0..400 {
            exchange = children_named(lt.id(), "sleep");
            if !exchange.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(exchange.len(), 1, "the fake exchange runs under loadtest");
        let ex = exchange[0];
        let sent = Command::new("kill")
            .arg(signal)
            .arg(lt.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let mut status = None;
        for _ in 0..500 {
            status = lt.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(status) = status else {
            let _ = lt.kill();
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(ex.to_string())
                .status();
            panic!("{signal}: loadtest did not exit within 10 s");
        };
        // Once loadtest is gone its stopped child is reaped by init: it is no more. (It is
        // checked, and killed if it still runs, before stderr is read: it holds the pipe.)
        let mut gone = false;
        for _ in 0..250 {
            if !std::path::Path::new(&format!("/proc/{ex}")).exists()
                || loadtest::children::ended(ex)
            {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(ex.to_string())
                .status();
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
