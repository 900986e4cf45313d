//! A signal to `loadtest` alone (`kill -INT <pid>`, `timeout`, a CI runner) stops the
//! processes it started (black-box round 27: the exchange was left running, listening
//! and holding its ledger, when only loadtest's own pid was signalled).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long one case may take before the watchdog ends it (it never waits this long
/// when loadtest behaves).
const CASE_MAX: Duration = Duration::from_secs(30);

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
        // A watchdog bounds the case: if loadtest never starts the fake, or never exits,
        // it kills loadtest and unblocks the FIFO, and the assertions below fail.
        let (done, watch) = mpsc::channel::<()>();
        let (lt_pid, fifo_w) = (lt.id(), fifo.clone());
        let watchdog = std::thread::spawn(move || {
            if watch.recv_timeout(CASE_MAX).is_err() {
                kill("-KILL", lt_pid);
                let _ = std::fs::write(&fifo_w, "0\n");
            }
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
        let _ = done.send(());
        watchdog.join().unwrap();
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
