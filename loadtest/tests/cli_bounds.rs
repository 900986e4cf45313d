//! `loadtest run` refuses a run it cannot bound or measure before it starts anything
//! (black-box round 22: `--rate 0` or `--duration-s 0` started the processes and then
//! failed or reported figures of no samples; `--repeat 0` ran once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn bad_bounds_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (
            &["--rate", "0"][..],
            "--rate 0: must be a finite number above 0",
        ),
        (
            &["--rate=-5"][..],
            "--rate -5: must be a finite number above 0",
        ),
        (
            &["--duration-s", "0"][..],
            "--duration-s 0: must be a finite number above 0",
        ),
        (
            &["--warmup-s=-1"][..],
            "--warmup-s -1: must be a finite number, 0 or more",
        ),
        (
            &["--timeout-ms", "0"][..],
            "--timeout-ms 0: must be between 1 and 60000",
        ),
        (&["--repeat", "0"][..], "--repeat 0: must be at least 1"),
        (&["--buyers", "0"][..], "--buyers 0: must be at least 1"),
        (
            &["--rates", "100,0"][..],
            "--rates 0: must be a finite number above 0",
        ),
        // Black-box round 82b: a negative number after a space got clap's tip to write
        // `-- -5`; a size below the simulated buyers, or 0, was raised to them; any
        // number of buyers was tried, and 100,000 failed with "Address already in use".
        (
            &["--rate", "-5"][..],
            "--rate -5: must be a finite number above 0",
        ),
        (
            &["--warmup-s", "-1"][..],
            "--warmup-s -1: must be a finite number, 0 or more",
        ),
        (
            &["--rates", "100,-5"][..],
            "--rates -5: must be a finite number above 0",
        ),
        (
            &["--configured", "4"][..],
            "--configured 4: fewer than the 8 simulated buyers (--buyers 8)",
        ),
        (
            &["--buyers", "3", "--configured", "2"][..],
            "--configured 2: fewer than the 3 simulated buyers (--buyers 3)",
        ),
        (
            &["--configured", "0"][..],
            "--configured 0: must be at least 1",
        ),
        // Black-box round 232b: a leg could wait minutes for the host's TIME_WAIT
        // sockets, with no way to bound the wait.
        // Round 236a: infinity is 0 or more, and was told it must be.
        (
            &["--warmup-s", "inf"][..],
            "--warmup-s inf: must be a finite number, 0 or more",
        ),
        (
            &["--warmup-s", "1e300"][..],
            "--warmup-s 1e300 with --duration-s 10: a run is at most 86400 s",
        ),
        (
            &["--targets", ","][..],
            "--targets: an empty name; list relay, exchange or direct",
        ),
        (
            &["--time-wait-wait-s", "601"][..],
            "--time-wait-wait-s 601: at most 600 (0 starts each leg at once)",
        ),
        (&["--buyers", "1025"][..], "--buyers 1025: at most 1024"),
        (&["--buyers", "100000"][..], "--buyers 100000: at most 1024"),
        // Black-box round 84a: infinity was "not above 0"; buyers slower than their
        // timeout made every call time out, reported as a collapse "though every buyer
        // answers in time".
        (
            &["--rate", "inf"][..],
            "--rate inf: must be a finite number above 0",
        ),
        (
            &["--buyer-latency-ms", "100", "--timeout-ms", "50"][..],
            "--buyer-latency-ms 100: not under --timeout-ms 50",
        ),
        (
            &["--buyer-latency-ms", "50"][..],
            "--buyer-latency-ms 50: not under --timeout-ms 50",
        ),
        // Black-box round 96b: the load plan's own bounds were found once the processes
        // had started (and the refused run overwrote the last report); any repeat count
        // was taken.
        (
            &["--rate", "2000000"][..],
            "--rate 2000000: at most 1000000/s",
        ),
        (
            &["--rates", "100,2000000"][..],
            "--rates 2000000: at most 1000000/s",
        ),
        (
            &["--duration-s", "100000"][..],
            "a run is at most 86400 s, warm-up included",
        ),
        (
            &["--warmup-s", "86400", "--duration-s", "1"][..],
            "a run is at most 86400 s, warm-up included",
        ),
        (&["--repeat", "101"][..], "--repeat 101: at most 100"),
        // Black-box round 125b: found once every process had started (and the report
        // overwritten); a rate that sends no auction in the measured time measured
        // nothing and printed latencies of 0.000 ms, exit status 0.
        (
            &["--connections", "10001"][..],
            "--connections 10001: at most 10000",
        ),
        (
            &["--rate", "0.0000001", "--duration-s", "1"][..],
            "fewer than one auction would be measured",
        ),
        (
            &["--rate", "0.05"][..],
            "--rate 0.05 for 10 s: fewer than one auction would be measured",
        ),
        // Black-box round 143a: the default duration was left out of the run's bound (the
        // refusal came once every process had started); options that do not apply were
        // taken and ignored.
        (
            &["--warmup-s", "86400"][..],
            "--warmup-s 86400 with --duration-s 10: a run is at most 86400 s",
        ),
        (
            &["--rates", "1000,2000"][..],
            "--rates: only p2-knee sweeps rates; use --rate",
        ),
        (
            &["--targets", "exchange,relay,exchange"][..],
            "--targets: exchange is listed twice",
        ),
        (&["--wrap", " "][..], "--wrap: empty"),
        (
            &["--hanging", "9"][..],
            "--hanging: only p3-hang has buyers that never answer",
        ),
        (
            &["--swap-every-ms", "0"][..],
            "--swap-every-ms: only p6-swap swaps models",
        ),
    ] {
        let out_dir = dir.path().join("out");
        // An exchange that exits at once: a bound let through ends the run at its start.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["run", "p1-latency", "--exchange-bin", "/bin/false", "--out"])
            .arg(&out_dir)
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!out_dir.exists(), "{flags:?}: nothing written");
    }
    // Round 97a: scenarios that run once said nothing of a --repeat they ignored.
    for scenario in ["p4-failing-buyer", "soak", "market"] {
        let out_dir = dir.path().join(scenario);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
                "run",
                scenario,
                "--repeat",
                "2",
                "--exchange-bin",
                "/bin/false",
                "--out",
            ])
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{scenario}: {err}");
        assert!(
            err.contains(&format!("--repeat 2: {scenario} runs once")),
            "{err}"
        );
        assert!(!out_dir.exists(), "{scenario}: nothing written");
    }
    // Round 125b: p6-swap ran `--swap-every-ms 0` as 1 ms without a word.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "p6-swap", "--swap-every-ms", "0", "--out"])
        .arg(dir.path().join("p6"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--swap-every-ms 0: must be at least 1"));
    assert!(!dir.path().join("p6").exists());
    // Round 143a: p2-knee took --rate and swept its default rates.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "p2-knee", "--rate", "300", "--out"])
        .arg(dir.path().join("p2"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--rate: p2-knee sweeps the rates of --rates")
    );
    assert!(!dir.path().join("p2").exists());
    // p3-hang: more hanging buyers than buyers.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["run", "p3-hang", "--buyers", "2", "--hanging", "3", "--out"])
        .arg(dir.path().join("p3"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--hanging 3: more than the 2 buyers"));
    // many-buyers: sizes below --buyers are its design (the eligible set is capped to the
    // smallest), 0 is not; nor is a negative integer, said by the parser, without a tip.
    for (flags, says) in [
        (
            &["--configured", "0,1000"][..],
            "--configured 0: must be at least 1",
        ),
        // Black-box round 84a: a negative integer was "invalid digit found in string".
        (
            &["--buyers", "-3"][..],
            "invalid value '-3' for '--buyers <BUYERS>': must be a whole number, not negative",
        ),
        (
            &["--configured", "10,-5"][..],
            "invalid value '-5' for '--configured <CONFIGURED>': must be a whole number, not negative",
        ),
        (
            &["--timeout-ms", "-1"][..],
            "invalid value '-1' for '--timeout-ms <TIMEOUT_MS>': must be a whole number, not negative",
        ),
        (
            &["--repeat", "x"][..],
            "invalid value 'x' for '--repeat <REPEAT>': not a whole number",
        ),
    ] {
        let out_dir = dir.path().join("many");
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
                "run",
                "many-buyers",
                "--exchange-bin",
                "/bin/false",
                "--out",
            ])
            .arg(&out_dir)
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{flags:?}: {err}");
        assert!(
            err.contains(says) && !err.contains("tip:"),
            "{flags:?}: {err}"
        );
        assert!(!out_dir.exists(), "{flags:?}: nothing written");
    }
}

/// An exchange that exits at start is said so, with its status, not after the whole wait
/// as "did not become healthy" (black-box round 27).
#[test]
fn an_exchange_that_exits_at_start_is_named_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            "p1-latency",
            "--targets",
            "exchange",
            "--rate",
            "10",
            "--duration-s",
            "1",
            "--exchange-bin",
            "/bin/false",
            "--out",
        ])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the exchange exited (exit status: 1) before it was healthy"),
        "{err}"
    );
}

/// A run that stops before it measures anything leaves the last report in `--out` as it
/// was (black-box round 125b: it was replaced by one with no targets), and a wrapper that
/// cannot start is named as the wrapper (it was reported as the exchange).
#[test]
fn a_run_that_measured_nothing_leaves_the_last_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let last = r#"{"the":"last report"}"#;
    std::fs::write(out.join("report.json"), last).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
                "run",
                "p1-latency",
                "--targets",
                "exchange",
                "--rate",
                "10",
                "--duration-s",
                "1",
                "--exchange-bin",
                "/bin/false",
                "--out",
            ])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing was measured"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.json")).unwrap(),
        last
    );
    assert!(!out.join("report.svg").exists());
    let o = run(&["--wrap", "/nonexistent/wrapper"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("under --wrap: starting /nonexistent/wrapper"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("report.json")).unwrap(),
        last
    );
}
