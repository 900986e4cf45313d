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
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"${{PINGPOST_ADMIN_TOKEN-unset}}\" > '{}'\nexit 1\n",
            said.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
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
        .arg(dir.path().join("out"))
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
