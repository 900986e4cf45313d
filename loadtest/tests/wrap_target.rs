//! Under `--wrap`, the process measured is the one running the target's program: not a
//! helper the wrapper started beside it (black-box: a wrapper script that ran `sleep &`
//! before `exec "$@"` had the `sleep` measured as the exchange, "exited during its run"
//! or 0.0 µs of CPU, then stopped as the exchange that "outlived its --wrap command"),
//! and not another process when none runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

/// Runs `loadtest run p1-latency` against the relay alone (loadtest itself, so no
/// exchange is built), at 20/s for 1 s, under the wrapper script `script` (written into
/// `dir`); returns its output and its report's notes and relay row.
fn relay_under(dir: &std::path::Path, script: &str) -> (Output, Vec<String>, serde_json::Value) {
    let wrapper = dir.join("wrapper.sh");
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            "p1-latency",
            "--targets",
            "relay",
            "--rate",
            "20",
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
            "--wrap",
        ])
        .arg(&wrapper)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: serde_json::Value = std::fs::read(out.join("report.json"))
        .ok()
        .and_then(|r| serde_json::from_slice(&r).ok())
        .unwrap_or_default();
    let notes = report["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    let relay = report["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["label"] == "relay")
        .cloned()
        .unwrap_or_default();
    (output, notes, relay)
}

#[test]
fn a_helper_the_wrapper_started_before_exec_is_not_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let helper = dir.path().join("helper.pid");
    // The helper outlives the run (it lives 30 s at most, and is killed below).
    let (output, notes, relay) = relay_under(
        dir.path(),
        &format!(
            "#!/bin/sh\nsleep 30 >/dev/null 2>&1 &\necho $! > '{}'\nexec \"$@\"\n",
            helper.display()
        ),
    );
    if let Ok(pid) = std::fs::read_to_string(&helper) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(!err.contains("outlived its --wrap command"), "{err}");
    assert!(!err.contains("exited during"), "{err}");
    assert!(!err.contains("not measured"), "{err}");
    // The relay's own CPU: the helper's was 0.0 µs.
    let cpu = relay["cpu_us_per_auction"].as_f64();
    assert!(cpu.is_some_and(|c| c > 0.0), "{relay} {notes:?} {err}");
}

#[test]
fn a_target_no_process_of_the_wrapper_runs_is_said_not_measured() {
    let dir = tempfile::tempdir().unwrap();
    // The relay, detached (`setsid -f`) and without its mark, is neither the wrapper's
    // descendant nor marked: nothing runs its program, and the wrapper (ended) is not
    // measured in its place. It exits when its stdin closes at the end of the run.
    let (output, notes, relay) = relay_under(
        dir.path(),
        "#!/bin/sh\nexec setsid -f env -u LOADTEST_TARGET \"$@\"\n",
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("loadtest: the relay was not measured (CPU, memory, sockets): no process of its --wrap command"),
        "{err}"
    );
    assert!(!err.contains("exited during"), "{err}");
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("the relay was not measured")),
        "{notes:?}"
    );
    assert!(relay["cpu_us_per_auction"].is_null(), "{relay}");
}
