//! The ledger on disk (issue 9, storage): segment files with a checksum per record and a
//! hash chain across segments, start-up recovery of a torn tail, refusal of corruption
//! anywhere else, `pingpost ledger verify`, and fail-stop after a write error. Real files
//! in temp dirs, real sockets, the real binary.

// The helpers below panic with a message: a helper failing is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use pingpost::app;
use pingpost::clock::Clock;
use pingpost::core::record::{FlushRecord, Head, LedgerSink, QuoteHoldRecord, Record};
use pingpost::ledger::segments::{self, LineProblem};
use pingpost::ledger::{Ledger, LOCK_FILE};
use proto::seller::{PingStatus, PostStatus};
use serde_json::Value;

/// The smallest segment the loader allows: a few records each.
const SMALL_SEGMENTS: &str = "ledger_segment_bytes_max = 4096";

fn with_server(extra: &'static str) -> impl FnOnce(String) -> String {
    move |t| t.replacen("[server]\n", &format!("[server]\n{extra}\n"), 1)
}

/// Waits (bounded) until no process holds the ledger's lock: the writer thread of a
/// dropped [`Ledger`] ends on its own once its queue is drained.
async fn wait_unlocked(dir: &Path) {
    let lock = std::fs::File::open(dir.join(LOCK_FILE)).expect("lock file");
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    loop {
        if lock.try_lock().is_ok() {
            lock.unlock().expect("unlock");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ledger stays locked"
        );
        tokio::task::yield_now().await;
    }
}

/// A ledger of `n` small records (flush and quote-expired, alternating) in `dir`, written
/// through the exchange's writer, which is closed again when this returns.
async fn write_ledger(dir: &Path, n: u64, segment_bytes_max: u64) {
    let ledger = Ledger::open(dir, segment_bytes_max, |_| {}).expect("ledger opens");
    for i in 0..n {
        let rec = if i % 2 == 0 {
            Record::Flush(FlushRecord {
                head: Head::new(i, 1_700_000_000_000),
                start: false,
                key_id: None,
            })
        } else {
            Record::QuoteExpired(QuoteHoldRecord {
                head: Head::new(i, 1_700_000_000_000),
                ping_id: Some("pg_test"),
                buyer: "acme",
                price_micros: 12_500_000,
                reason: None,
                changed_fields: &[],
                test: false,
            })
        };
        LedgerSink::append(&ledger, &rec)
            .wait()
            .await
            .expect("written");
    }
    ledger.flush_at(0, 1_700_000_000_000).await.expect("flush");
    drop(ledger);
    wait_unlocked(dir).await;
}

/// Every record of the ledger as JSON, checking that each line is JSON.
fn records(dir: &Path) -> Vec<Value> {
    segments::read_all(dir)
        .expect("ledger reads")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Byte offsets of each line's start in a file.
fn line_starts(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("segment");
    let mut starts = vec![0u64];
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' && i + 1 < bytes.len() {
            starts.push(i as u64 + 1);
        }
    }
    starts
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).expect("segment");
    bytes[at as usize] ^= 0x01;
    std::fs::write(path, bytes).expect("write segment");
}

/// `pingpost ledger verify ARGS`: exit code and stdout + stderr.
fn verify_bin(args: &[&str]) -> (i32, String) {
    ledger_bin("verify", args)
}

fn ledger_bin(command: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args(["ledger", command])
        .args(args)
        .output()
        .expect("the binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Starts an exchange from the test configuration on the ledger directory `dir`.
async fn start_on(cfg: &TestConfig, dir: &Path) -> std::io::Result<app::Running> {
    let config = cfg.load_edited(dir, with_server(SMALL_SEGMENTS));
    app::start(config, Clock::system()).await
}

#[tokio::test]
async fn sales_are_chained_across_rotated_segments_and_verify() {
    let bidder = ScriptedBidder::bidding(20.0);
    let (buyer, _h) = serve("acme", &bidder).await;
    let mut ex = TestConfig::new()
        .buyer(buyer)
        .start_edited(with_server(SMALL_SEGMENTS))
        .await;
    let mut sold = Vec::new();
    for _ in 0..12 {
        let q = ex.client.ping("TX").await;
        assert_eq!(q.status, PingStatus::Bid, "{q:?}");
        let a = ex.client.post(&q.ping_id, "TX").await;
        assert_eq!(a.status, PostStatus::Sold, "{a:?}");
        sold.push(a.lead_id.expect("lead id"));
        let d = ex.client.direct("TX").await;
        assert_eq!(d.status, PostStatus::Sold, "{d:?}");
        sold.push(d.lead_id.expect("lead id"));
    }
    ex.shutdown().await;
    let dir = ex.ledger_path.clone();

    let segs = segments::list(&dir).expect("segments");
    assert!(segs.len() >= 3, "the ledger rotated: {segs:?}");
    for (_, p) in &segs[..segs.len() - 1] {
        let len = std::fs::metadata(p).expect("segment").len();
        assert!(len <= 4096, "{} is {len} bytes", p.display());
    }
    // Every line is JSON with its seq (1, 2, 3... across segments) and sum last.
    let recs = records(&dir);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{r}");
        assert_eq!(r["sum"].as_str().map(str::len), Some(64), "{r}");
    }
    let sales: Vec<&str> = recs
        .iter()
        .filter(|r| r["type"] == "sale")
        .filter_map(|r| r["lead_id"].as_str())
        .collect();
    assert_eq!(sales, sold, "every sale, in order");

    let report = segments::verify(&dir).expect("verify");
    assert_eq!(report.problem, None);
    assert_eq!(report.records, recs.len() as u64);
    assert_eq!(report.counts.get("sale"), Some(&24));
    assert_eq!(report.segments, segs.len());

    let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("sale") && l.trim_end().ends_with("24")),
        "{out}"
    );
    // The same directory named by a configuration file.
    let (code, out) = verify_bin(&["--config", &path_arg(&ex.config_path)]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn a_torn_tail_is_truncated_at_start_and_the_next_sale_appends_cleanly() {
    for garbage in [None, Some(&b"\x00\x00garbage"[..])] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("ledger");
        write_ledger(&dir, 9, 64 << 20).await;
        let seg = dir.join(segments::segment_name(1));
        let starts = line_starts(&seg);
        let last = *starts.last().expect("lines");
        let original = std::fs::read(&seg).expect("segment");
        let len = original.len() as u64;
        match garbage {
            // A write cut short: the last line stops half-way. It was never synced (a
            // crash during its write), so the head does not name it.
            None => {
                let last_seq = segments::verify(&dir).unwrap().last_seq;
                let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
                f.set_len(last + (len - last) / 2).unwrap();
                std::fs::write(
                    dir.join(pingpost::ledger::head::HEAD_FILE),
                    pingpost::ledger::head::line(last_seq - 1),
                )
                .unwrap();
            }
            Some(g) => {
                let mut bytes = std::fs::read(&seg).unwrap();
                bytes.extend_from_slice(g);
                std::fs::write(&seg, bytes).unwrap();
            }
        }
        let p = segments::verify(&dir).unwrap().problem.expect("a problem");
        assert!(p.at_tail, "{p}");
        let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("truncates it at its next start"), "{out}");
        // Exit 1, so the last line is no `OK` (it was, above exit status 1).
        let last_line = out.lines().last().unwrap_or_default();
        assert!(
            !last_line.starts_with("OK") && last_line.contains("torn tail"),
            "{out}"
        );
        // The finance report reads up to the torn tail, skipping it (it refused the
        // ledger when what was left of the torn line read as a checked `seq`).
        let (code, out) = ledger_bin("report", &["--dir", &path_arg(&dir)]);
        assert_eq!(code, 0, "{out}");
        let torn = std::fs::read(&seg).unwrap();

        let bidder = ScriptedBidder::bidding(20.0);
        let (buyer, _h) = serve("acme", &bidder).await;
        let running = start_on(&TestConfig::new().buyer(buyer), &dir)
            .await
            .expect("starts on a torn tail");
        // The removed bytes are kept beside the ledger, exactly.
        let cut = if garbage.is_none() { last } else { len };
        let kept_tail = std::fs::read(dir.join(format!("torn-seg-00000001.jsonl-{cut}.bin")))
            .expect("the torn tail is kept");
        assert_eq!(kept_tail, torn[cut as usize..]);
        let expected_len = cut;
        let client = SellerClient::new(running.addr);
        let q = client.ping("TX").await;
        let a = client.post(&q.ping_id, "TX").await;
        assert_eq!(a.status, PostStatus::Sold, "{a:?}");
        // The sale is on disk when `sold` is answered, right after the kept records.
        let recs = records(&dir);
        let bytes = std::fs::read(&seg).unwrap();
        assert_eq!(
            &bytes[..expected_len as usize],
            &original[..expected_len as usize],
            "the good records are kept as they were"
        );
        let kept = if garbage.is_none() { 9 } else { 10 };
        assert_eq!(recs[kept - 1]["type"], "flush", "{:?}", recs[kept - 1]);
        assert_eq!(recs[kept]["seq"], kept as u64 + 1, "{:?}", recs[kept]);
        assert!(recs.iter().any(|r| r["type"] == "sale"));
        running.shutdown().await.unwrap();
        let report = segments::verify(&dir).unwrap();
        assert_eq!(report.problem, None, "{garbage:?}");
        assert_eq!(report.counts.get("sale"), Some(&1));
        assert_eq!(verify_bin(&["--dir", &path_arg(&dir)]).0, 0);
    }
}

/// Black-box rounds 62c and 63a: another valid `FINGERPRINT_KEY` (restored from the wrong
/// backup), or none (deleted), was taken with at most a warning, and a consumer sold
/// within the dedup window was sold again; and after a start had made a new key, the old
/// one put back was refused. Every start records its key's id; a start refuses a key no
/// run used, and a missing one, unless told `--new-fingerprint-key`; a key an earlier run
/// used is taken.
#[tokio::test]
async fn a_fingerprint_key_swapped_or_removed_between_runs_refuses_the_start() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("ledger");
    let key_path = dir.join("FINGERPRINT_KEY");
    let start = |new_key: bool| {
        let dir = dir.clone();
        async move {
            let mut config = TestConfig::new().load_edited(&dir, with_server(SMALL_SEGMENTS));
            config.server.new_fingerprint_key = new_key;
            app::start(config, Clock::system()).await
        }
    };
    let stop = |running: app::Running| {
        let dir = dir.clone();
        async move {
            running.shutdown().await.unwrap();
            wait_unlocked(&dir).await;
        }
    };
    stop(start(false).await.expect("starts")).await;
    let starts: Vec<Value> = records(&dir)
        .into_iter()
        .filter(|r| r["type"] == "flush" && r["start"] == true)
        .collect();
    let id = starts[0]["key_id"]
        .as_str()
        .expect("the start names its key")
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    let key = std::fs::read_to_string(&key_path).unwrap();
    assert!(!key.contains(&id), "the id is not the key");
    // The same key: starts.
    stop(start(false).await.expect("restarts")).await;
    // Another valid key: refused, and nothing written.
    std::fs::write(&key_path, "ab".repeat(32)).unwrap();
    let before = records(&dir).len();
    let Err(e) = start(false).await else {
        panic!("another key is refused");
    };
    let e = e.to_string();
    assert!(e.contains("is not a key this ledger's runs used"), "{e}");
    assert!(
        e.contains(&id) && e.contains("--new-fingerprint-key"),
        "{e}"
    );
    assert!(!e.contains(&"ab".repeat(32)), "the key is never shown: {e}");
    wait_unlocked(&dir).await;
    assert_eq!(records(&dir).len(), before, "nothing written");
    // And verify says so (round 63a: it said nothing).
    let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("PROBLEM: FINGERPRINT_KEY is not a key this ledger's runs used"),
        "{out}"
    );
    // No key at all: refused too, and no key is made.
    std::fs::remove_file(&key_path).unwrap();
    let Err(e) = start(false).await else {
        panic!("a missing key is refused");
    };
    assert!(e.to_string().contains("FINGERPRINT_KEY is missing"), "{e}");
    wait_unlocked(&dir).await;
    assert!(!key_path.exists(), "no key made by a refused start");
    assert_eq!(records(&dir).len(), before, "nothing written");
    let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("PROBLEM: FINGERPRINT_KEY is missing"), "{out}");
    assert!(!key_path.exists(), "verify makes no key");
    // Told to: a new key is begun, and from then on it is the one.
    stop(start(true).await.expect("a new key on purpose")).await;
    let new_key = std::fs::read_to_string(&key_path).unwrap();
    assert_ne!(new_key, key);
    stop(start(false).await.expect("the new key kept")).await;
    // The old key put back (an earlier run's): taken, with a warning.
    std::fs::write(&key_path, &key).unwrap();
    stop(start(false).await.expect("an earlier run's key")).await;
    let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains("FINGERPRINT_KEY"),
        "the last run's key now: {out}"
    );
    // A key no run used is still refused.
    std::fs::write(&key_path, "cd".repeat(32)).unwrap();
    assert!(start(false).await.is_err(), "a key no run used");
}

/// A whole last line (it ends with its newline) that does not verify was changed after it
/// was written, not cut short: it may be a sale that was acknowledged, so the exchange
/// refuses to start instead of removing it, and the ledger is left as it was.
#[tokio::test]
async fn a_changed_last_line_is_not_truncated_but_refuses_the_start() {
    for tail in [
        &b"garbage\n"[..],
        b"{\"type\":\"refund\",\"v\":5,\"buyer_refund_micros\":99999999999}\n",
    ] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("ledger");
        write_ledger(&dir, 9, 64 << 20).await;
        let seg = dir.join(segments::segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(tail);
        std::fs::write(&seg, &bytes).unwrap();
        let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("refuses to start"), "{out}");
        let e = start_on(&TestConfig::new(), &dir)
            .await
            .expect_err("refuses to start");
        assert!(e.to_string().contains("ledger is corrupt"), "{e}");
        assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing removed");
        // The finance tools refuse to count it.
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pingpost"))
            .args(["ledger", "report", "--dir", &path_arg(&dir)])
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(0));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("does not verify"), "{err}");
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_sealed_segment_or_mid_segment_refuses_the_start() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("ledger");
    write_ledger(&dir, 60, 4096).await;
    let segs = segments::list(&dir).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");

    // A sealed segment (the first), third record.
    let sealed = &segs[0].1;
    let at = line_starts(sealed)[2];
    flip_byte(sealed, at + 12);
    let p = segments::verify(&dir).unwrap().problem.expect("a problem");
    assert_eq!((&p.segment, p.offset), (sealed, at));
    assert_eq!(p.what, LineProblem::Checksum);
    let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("seg-00000001.jsonl at byte {at}")),
        "{out}"
    );
    let e = start_on(&TestConfig::new(), &dir)
        .await
        .expect_err("refuses to start");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("seg-00000001.jsonl at byte {at}")) && msg.contains("sealed"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    flip_byte(sealed, at + 12);
    assert_eq!(segments::verify(&dir).unwrap().problem, None);

    // The last segment, a record in the middle (not its tail).
    let (_, last) = segs.last().unwrap();
    let starts = line_starts(last);
    assert!(starts.len() >= 3, "{starts:?}");
    let at = starts[starts.len() / 2 - 1];
    flip_byte(last, at + 3);
    let name = last.file_name().unwrap().to_string_lossy().to_string();
    let (code, out) = verify_bin(&["--dir", &path_arg(&dir)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{name} at byte {at}")), "{out}");
    let e = start_on(&TestConfig::new(), &dir)
        .await
        .expect_err("refuses to start");
    assert!(
        e.to_string().contains(&format!("{name} at byte {at}")),
        "{e}"
    );
    // Nothing was changed by the refused start.
    assert_eq!(
        segments::verify(&dir).unwrap().problem.map(|p| p.offset),
        Some(at)
    );
}

#[test]
fn verify_exit_codes_and_start_errors_from_the_binary() {
    let tmp = tempfile::tempdir().expect("temp dir");
    // A missing directory: 2, one line.
    let missing = tmp.path().join("nowhere");
    let (code, out) = verify_bin(&["--dir", &path_arg(&missing)]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("nowhere does not exist") && out.contains("--dir DIR"),
        "{out}"
    );
    // A directory with no segment is no ledger (black-box round 71a: it verified OK, a
    // mistyped --dir read as a clean, empty ledger); nor does report read it.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "not a ledger").unwrap();
    let (code, out) = verify_bin(&["--dir", &path_arg(&empty)]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("holds no ledger") && out.contains("--dir DIR"),
        "{out}"
    );
    let (code, out) = ledger_bin("report", &["--dir", &path_arg(&empty)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("holds no ledger"), "{out}");
    std::fs::remove_file(empty.join("readme.txt")).unwrap();
    // A gap in the segment numbers: the ledger cannot be read as a chain.
    std::fs::write(empty.join(segments::segment_name(2)), "").unwrap();
    let (code, out) = verify_bin(&["--dir", &path_arg(&empty)]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("seg-00000001.jsonl is missing"), "{out}");

    // The exchange refuses to start, in one line, on a ledger directory whose parent is
    // missing, on a file, and on a directory it cannot write (/proc refuses new files
    // even to root).
    let cfg = tmp.path().join("config.toml");
    for (ledger, says) in [
        (
            tmp.path().join("no/such/dir"),
            "does not exist, nor does its parent",
        ),
        (cfg.clone(), "is not a directory"),
        (PathBuf::from("/proc"), "is not writable"),
    ] {
        let test = TestConfig::new();
        std::fs::write(&cfg, test.toml(&ledger)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pingpost"))
            .arg("--config")
            .arg(&cfg)
            .envs(test.env_vars())
            .env("RUST_LOG", "off")
            .output()
            .expect("the binary runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{err}");
    }
}

/// An exchange with one buyer served by `bidder` and 12 KiB segments, whose next segment
/// cannot be created (a symlink to /dev/full already has its name): the write that
/// rotates into it fails. Also the symlink's path (remove it before reading the ledger)
/// and the buyer's server handle.
async fn with_a_next_segment_that_cannot_be_created(
    bidder: &std::sync::Arc<ScriptedBidder>,
) -> (Exchange, PathBuf, bidder_sdk::ServerHandle) {
    let (buyer, handle) = serve("acme", bidder).await;
    let ex = TestConfig::new()
        .buyer(buyer)
        .start_edited(with_server("ledger_segment_bytes_max = 12288"))
        .await;
    let next = ex.ledger_path.join(segments::segment_name(2));
    std::os::unix::fs::symlink("/dev/full", &next).unwrap();
    (ex, next, handle)
}

/// A ledger write that fails (rotation into a segment that cannot be created: a
/// symlink to /dev/full already has the next segment's name) stops the exchange from
/// selling for the life of the process: `/readyz` 503 with the reason, pings, posts
/// and direct posts 503 `unavailable` with nothing delivered, still after the cause is
/// gone.
#[tokio::test]
async fn a_ledger_failure_stops_selling_until_a_restart() {
    let bidder = ScriptedBidder::bidding(20.0);
    // Room for a few sales before the rotation (a sale's post also writes `post_sent`,
    // its ping `quote_opened`).
    let (mut ex, next, _h) = with_a_next_segment_that_cannot_be_created(&bidder).await;
    assert_eq!(ex.client.get("/readyz").await.status, 200);

    // Sell until the first segment is full and the rotation fails, always keeping the
    // newest quote open (each round sells the one before).
    let mut spare: Option<proto::seller::PingAnswer> = None;
    for _ in 0..60 {
        let r = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
        if r.status == 503 {
            r.assert_error(503, "unavailable");
            break;
        }
        let q = r.ping_answer();
        assert_eq!(q.status, PingStatus::Bid, "{q:?}");
        let Some(prev) = spare.replace(q) else {
            continue;
        };
        let r = ex
            .client
            .post_json("/v1/post", &post_body(&prev.ping_id, "TX"))
            .await;
        match r.status {
            200 => assert_eq!(r.post_answer().status, PostStatus::Sold),
            // Failed in the sale's own batch: the buyer has the lead, the seller no `sold`.
            500 => {
                r.assert_error(500, "internal");
                break;
            }
            _ => {
                r.assert_error(503, "unavailable");
                break;
            }
        }
    }
    assert!(!ex.state.ledger.is_healthy(), "the rotation failed");
    let spare = spare.expect("an open quote from before the failure");

    let check_stopped = |r: Reply| {
        let e = r.assert_error(503, "unavailable");
        assert!(r.headers.get("retry-after").is_none());
        e
    };
    let ready = ex.client.get("/readyz").await;
    assert_eq!(ready.status, 503);
    let reason = ready.json()["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("seg-00000002.jsonl"), "{reason}");
    // Round 122a: "File exists" alone did not say whose the file was.
    assert!(
        reason.contains("exists already, made by another process")
            && reason.contains("move it away before the next start"),
        "{reason}"
    );
    assert_eq!(ex.admin.get("/readyz").await.status, 503);

    let (pings, posts) = (bidder.pings(), bidder.posts());
    check_stopped(
        ex.client
            .post_json("/v1/post", &post_body(&spare.ping_id, "TX"))
            .await,
    );
    check_stopped(ex.client.post_json("/v1/leads", &direct_body("TX")).await);
    check_stopped(ex.client.post_json("/v1/ping", &ping_body("TX")).await);
    assert_eq!(
        (bidder.pings(), bidder.posts()),
        (pings, posts),
        "no buyer was contacted"
    );

    // The cause is gone (the next segment could be created now): still stopped, since
    // only a restart (which verifies the ledger) makes it healthy.
    std::fs::remove_file(&next).unwrap();
    assert_eq!(ex.client.get("/healthz").await.status, 200);
    assert_eq!(ex.client.get("/readyz").await.status, 503);
    check_stopped(
        ex.client
            .post_json("/v1/post", &post_body(&spare.ping_id, "TX"))
            .await,
    );
    assert_eq!(bidder.posts(), posts);
    ex.shutdown().await;

    // What was written before the failure verifies.
    let report = segments::verify(&ex.ledger_path).unwrap();
    assert_eq!(report.problem, None);
    assert!(report.counts.get("sale").copied().unwrap_or(0) >= 1);
}

/// A post whose lead reached its buyer when the ledger failed, and that no buyer accepted:
/// its outcome could not be recorded, so it is unknown (the buyer may yet accept late) and
/// the seller is told so, with the words a keyed retry gets after the restart (black-box
/// round 94a: it was answered "the sale could not be recorded", though nothing was sold).
#[tokio::test]
async fn a_post_whose_buyer_had_the_lead_when_the_ledger_failed_is_outcome_unknown() {
    let bidder = ScriptedBidder::bidding(20.0).scripted(|s| s.accept = false);
    let (ex, _next, _h) = with_a_next_segment_that_cannot_be_created(&bidder).await;
    let q = ex.client.ping("TX").await;
    assert_eq!(q.status, PingStatus::Bid, "{q:?}");
    bidder.close_posts();
    let client = ex.client.clone();
    let ping_id = q.ping_id.clone();
    let post = tokio::spawn(async move {
        client
            .post_json("/v1/post", &post_body(&ping_id, "TX"))
            .await
    });
    // The lead is with the buyer; the ledger fails meanwhile (pings fill the segment,
    // and the rotation into the next one fails).
    bidder.wait_posts(1).await;
    for _ in 0..500 {
        if !ex.state.ledger.is_healthy() {
            break;
        }
        let _ = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
    }
    assert!(!ex.state.ledger.is_healthy(), "the rotation failed");
    bidder.open_posts();
    let r = post.await.unwrap();
    let e = r.assert_error(500, "internal");
    assert_eq!(
        e["message"],
        "the exchange stopped (or its ledger failed) while this post was being delivered, so its outcome is unknown: a buyer may have the lead and may have accepted it, but no sale is recorded (the seller is not paid for it through the exchange) and it is not delivered again; the exchange's operator settles it with the buyer",
        "{e}"
    );
    assert_eq!(bidder.posts(), 1, "not delivered again");
}

/// A keyed post whose buyer accepted while the ledger failed (the sale could not be
/// recorded) is answered `500`, and its keyed retry after the restart gets that answer
/// byte for byte, delivering nothing again (black-box round 110a: the first answer said
/// "the sale could not be recorded; the lead was not sold", the retry after the restart
/// "its outcome is unknown"). The same holds for a direct post.
#[tokio::test]
async fn a_sale_the_ledger_could_not_record_answers_its_keyed_retry_the_same_after_a_restart() {
    let bidder = ScriptedBidder::bidding(20.0);
    let (buyer, _h) = serve("acme", &bidder).await;
    let cfg = TestConfig::new().buyer(buyer);
    let mut ex = cfg
        .start_edited(with_server("ledger_segment_bytes_max = 12288"))
        .await;
    let next = ex.ledger_path.join(segments::segment_name(2));
    std::os::unix::fs::symlink("/dev/full", &next).unwrap();
    let q = ex.client.ping("TX").await;
    assert_eq!(q.status, PingStatus::Bid, "{q:?}");
    bidder.close_posts();
    let key = [("idempotency-key", "post-110a")];
    let (post, direct) = (post_body(&q.ping_id, "TX"), direct_body("TX"));
    let send = |path: &'static str, key: &'static str, body: &Value| {
        let (client, body) = (ex.client.clone(), body.clone());
        tokio::spawn(async move {
            client
                .post_json_with(path, SELLER_KEY, &[("idempotency-key", key)], &body)
                .await
        })
    };
    let first_post = send("/v1/post", key[0].1, &post);
    let first_direct = send("/v1/leads", "direct-110a", &direct);
    // Both leads are with the buyer; the ledger fails meanwhile (pings fill the segment,
    // and the rotation into the next one fails); then the buyer accepts both.
    bidder.wait_posts(2).await;
    for _ in 0..500 {
        if !ex.state.ledger.is_healthy() {
            break;
        }
        let _ = ex.client.post_json("/v1/ping", &ping_body("TX")).await;
    }
    assert!(!ex.state.ledger.is_healthy(), "the rotation failed");
    bidder.open_posts();
    let (first_post, first_direct) = (first_post.await.unwrap(), first_direct.await.unwrap());
    for first in [&first_post, &first_direct] {
        let e = first.assert_error(500, "internal");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("its outcome is unknown: a buyer may have the lead"),
            "{e}"
        );
    }
    ex.shutdown().await;
    std::fs::remove_file(&next).unwrap();

    // The restart, on a copy of the ledger (this test's exchange keeps its directory).
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("restarted");
    crash_copy(&ex.ledger_path, &copy);
    let ledger_line = format!("ledger_path = {:?}", copy.to_str().unwrap());
    let mut again = cfg
        .start_edited(move |t| {
            t.lines()
                .map(|l| {
                    if l.starts_with("ledger_path = ") {
                        ledger_line.clone()
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .await;
    let client = again.client.clone();
    for (path, key, body, first) in [
        ("/v1/post", "post-110a", &post, &first_post),
        ("/v1/leads", "direct-110a", &direct, &first_direct),
    ] {
        let retry = client
            .post_json_with(path, SELLER_KEY, &[("idempotency-key", key)], body)
            .await;
        assert_eq!(retry.status, 500, "{path}: {}", retry.text());
        assert_eq!(
            retry.text(),
            first.text(),
            "{path}: the first answer, byte for byte"
        );
    }
    assert_eq!(bidder.posts(), 2, "nothing delivered again");
    again.shutdown().await;
}

/// Concurrent direct posts when the ledger's rotation fails: what a start finds matches
/// what the sellers were told. Every `sold` has its sale; a delivery record without an
/// outcome is only one a `500` answered (a buyer had the lead), never one a `503` answered
/// (nothing was delivered: black-box round 91a found a `post_sent` sealed in the segment
/// before the failure, a "delivery of unknown outcome" after the restart); and a `500`
/// tells the seller nothing of the ledger's files (round 91a: it named the segment path).
#[tokio::test]
async fn after_a_failed_rotation_the_ledger_holds_what_the_sellers_were_told() {
    let bidder = ScriptedBidder::bidding(20.0);
    let (mut ex, next, _h) = with_a_next_segment_that_cannot_be_created(&bidder).await;
    let (mut sold, mut internal) = (0usize, 0usize);
    'rounds: for _ in 0..100 {
        let mut posts = Vec::new();
        for _ in 0..8 {
            let client = ex.client.clone();
            posts.push(tokio::spawn(async move {
                client.post_json("/v1/leads", &direct_body("TX")).await
            }));
        }
        let mut stopped = false;
        for p in posts {
            let r = p.await.unwrap();
            match r.status {
                200 => {
                    if r.post_answer().status == PostStatus::Sold {
                        sold += 1;
                    }
                }
                500 => {
                    let e = r.assert_error(500, "internal");
                    assert!(!e.to_string().contains("seg-"), "{e}");
                    internal += 1;
                    stopped = true;
                }
                _ => {
                    r.assert_error(503, "unavailable");
                    stopped = true;
                }
            }
        }
        if stopped {
            break 'rounds;
        }
    }
    assert!(!ex.state.ledger.is_healthy(), "the rotation failed");
    std::fs::remove_file(&next).unwrap();
    ex.shutdown().await;
    let recs = records(&ex.ledger_path);
    let sales: std::collections::HashSet<&str> = recs
        .iter()
        .filter(|r| r["type"] == "sale")
        .filter_map(|r| r["lead_id"].as_str())
        .collect();
    assert_eq!(sales.len(), sold, "a sale for every sold answer, no other");
    let unsettled = recs
        .iter()
        .filter(|r| r["type"] == "post_sent")
        .filter(|r| !r["lead_id"].as_str().is_some_and(|l| sales.contains(l)))
        .count();
    assert!(
        unsettled <= internal,
        "{unsettled} deliveries without an outcome, {internal} answered 500"
    );
    assert_eq!(segments::verify(&ex.ledger_path).unwrap().problem, None);
}

/// A direct post that found no buyer is answered by its auction record (a start rebuilds
/// a keyed retry's answer from it). Black-box round 55a: that record was not waited for,
/// so after a crash a retry ran a second auction that could sell the lead the seller was
/// told was `unsold`. Here the write of one such record fails (a rotation into a segment
/// that cannot be created): that post is answered 503 `unavailable`, never `unsold`, and
/// every `unsold` answered before it has its auction on disk.
#[tokio::test]
async fn a_direct_post_that_found_no_buyer_is_answered_only_once_its_auction_is_on_disk() {
    let bidder = ScriptedBidder::passing();
    let (mut ex, next, _h) = with_a_next_segment_that_cannot_be_created(&bidder).await;

    let mut unsold = Vec::new();
    let mut refused = None;
    for _ in 0..200 {
        let r = ex.client.post_json("/v1/leads", &direct_body("TX")).await;
        if r.status != 200 {
            refused = Some(r);
            break;
        }
        let a = r.post_answer();
        assert_eq!(a.status, PostStatus::Unsold, "{a:?}");
        unsold.push(a.ping_id.expect("an unsold direct post names its ping"));
    }
    let refused = refused.expect("the rotation failed within 200 posts");
    refused.assert_error(503, "unavailable");
    assert!(!ex.state.ledger.is_healthy());
    assert!(unsold.len() >= 5, "a few posts fit the first segment");
    std::fs::remove_file(&next).unwrap();
    ex.shutdown().await;

    let on_disk: std::collections::HashSet<String> = records(&ex.ledger_path)
        .iter()
        .filter(|r| r["type"] == "auction" && r["direct"] == true)
        .map(|r| r["ping_id"].as_str().unwrap_or("").to_string())
        .collect();
    for ping_id in &unsold {
        assert!(
            on_disk.contains(ping_id),
            "{ping_id} answered unsold, not on disk"
        );
    }
}

#[test]
fn the_segment_size_key_loads_and_refuses_bad_values() {
    let base = TestConfig::new().toml(Path::new("/tmp/unused-ledger"));
    let load = |text: &str| pingpost::config::load_str_with_env(text, &TestConfig::new().env());
    let c = load(&base).expect("loads");
    assert_eq!(c.server.ledger_segment_bytes_max, 64 << 20);
    let c = load(&with_server("ledger_segment_bytes_max = 1048576")(
        base.clone(),
    ))
    .unwrap();
    assert_eq!(c.server.ledger_segment_bytes_max, 1 << 20);
    for bad in ["100", "2000000000", "\"big\""] {
        let text = base.replacen(
            "[server]\n",
            &format!("[server]\nledger_segment_bytes_max = {bad}\n"),
            1,
        );
        let e = load(&text).expect_err("refused").to_string();
        assert!(
            e.contains("server.ledger_segment_bytes_max: must be a whole number between 4096 and 1073741824"),
            "{e}"
        );
    }
}

/// Black-box round 122a: `FINGERPRINT_KEY` rewritten or truncated in place while the
/// exchange ran went unseen, and the next start refused the ledger (the only copy of
/// the key was the running exchange's). The keeper (`app::spawn_key_keeper`, every 2 s;
/// called here as it calls it) writes the key in use there again, whatever was done to
/// the file, and the ledger stays healthy (its watch leaves the key to the keeper); the
/// restart then takes the ledger.
#[tokio::test]
async fn a_fingerprint_key_changed_while_running_is_written_again_and_the_restart_takes_it() {
    let bidder = ScriptedBidder::bidding(20.0);
    let (buyer, _h) = serve("acme", &bidder).await;
    let cfg = TestConfig::new().buyer(buyer);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let running = start_on(&cfg, &ledger).await.unwrap();
    let client = SellerClient::new(running.addr);
    let key = ledger.join(pingpost::fingerprint::KEY_FILE);
    let original = std::fs::read_to_string(&key).unwrap();
    let state = running.state.clone();
    let keep = || {
        state
            .fingerprint
            .keep_in(&state.ledger.locked_dir(), &ledger)
            .unwrap()
            .is_some()
    };
    assert!(!keep(), "untouched: nothing written");
    let sell = || async {
        let q = client.ping("TX").await;
        assert_eq!(client.post(&q.ping_id, "TX").await.status, PostStatus::Sold);
    };
    sell().await;
    type Change = fn(&Path);
    let changes: [(&str, Change); 7] = [
        // Round 123a: the same bytes, mode 644, moved over it; and a directory at `.new`
        // with the key emptied (written over in place).
        ("a 644 copy", |k| {
            use std::os::unix::fs::PermissionsExt as _;
            let copy = k.with_file_name("copy");
            std::fs::copy(k, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::rename(&copy, k).unwrap();
        }),
        ("emptied, a directory at .new", |k| {
            std::fs::write(k, "").unwrap();
            std::fs::create_dir(k.with_file_name("FINGERPRINT_KEY.new")).unwrap();
        }),
        ("rewritten", |k| std::fs::write(k, "ab".repeat(32)).unwrap()),
        ("truncated", |k| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(k)
                .unwrap()
                .set_len(0)
                .unwrap()
        }),
        ("removed", |k| std::fs::remove_file(k).unwrap()),
        ("a symlink", |k| {
            std::fs::remove_file(k).unwrap();
            std::os::unix::fs::symlink("/dev/null", k).unwrap()
        }),
        ("a .new symlink left", |k| {
            let out = k.parent().unwrap().parent().unwrap().join("outside");
            std::fs::write(&out, "x").unwrap();
            std::os::unix::fs::symlink(&out, k.with_file_name("FINGERPRINT_KEY.new")).unwrap();
            std::fs::write(k, "cd".repeat(32)).unwrap();
        }),
    ];
    for (name, change) in changes {
        change(&key);
        assert!(keep(), "{name}: written again");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), original, "{name}");
        let meta = std::fs::symlink_metadata(&key).unwrap();
        assert!(meta.is_file(), "{name}");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        assert!(!keep(), "{name}: once");
        let _ = std::fs::remove_dir(key.with_file_name("FINGERPRINT_KEY.new"));
        assert!(state.ledger.is_healthy(), "{name}");
        sell().await;
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("outside")).unwrap(),
        "x",
        "a stale .new is never followed"
    );
    // Round 124a: with `.new` blocked, the key replaced by a hard link to a file
    // elsewhere was written in place, handing the key to that file's owner. Never
    // written through another name: an error, the file elsewhere untouched.
    std::fs::create_dir(key.with_file_name("FINGERPRINT_KEY.new")).unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::write(&elsewhere, "y").unwrap();
    std::fs::remove_file(&key).unwrap();
    std::fs::hard_link(&elsewhere, &key).unwrap();
    let kept = state
        .fingerprint
        .keep_in(&state.ledger.locked_dir(), &ledger);
    assert!(kept.is_err(), "{kept:?}");
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), "y");
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_dir(key.with_file_name("FINGERPRINT_KEY.new")).unwrap();
    assert!(keep(), "written again once the way is clear");
    // Round 123a: changed just before a stop, it is written again at the stop.
    std::fs::write(&key, "").unwrap();
    running.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        original,
        "at the stop"
    );
    // The ledger (and its lock) goes with the last handle on the state.
    drop(state);
    // Waits while the stopped writer still holds the directory; any other refusal fails.
    let again = start_config(
        cfg.load_edited(&ledger, with_server(SMALL_SEGMENTS)),
        Clock::system(),
    )
    .await;
    again.shutdown().await.unwrap();
}
