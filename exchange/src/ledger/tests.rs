use super::*;
use crate::core::record::QuoteHoldRecord;

/// Black-box round 35: a start whose copy of the torn tail failed (a full disk) left an
/// empty `torn-*.bin`, and the next start kept the real tail under another name.
#[test]
fn a_torn_tail_copy_that_fails_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // The segment cannot be read: the copy fails after the file was made.
    let missing = dir.path().join("seg-00000009.jsonl");
    assert!(keep_torn_tail(dir.path(), &missing, 8).is_err());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A later copy that works takes the plain name.
    let seg = dir.path().join("seg-00000001.jsonl");
    std::fs::write(&seg, b"{\"a\":1}\ntail").unwrap();
    let kept = keep_torn_tail(dir.path(), &seg, 8).unwrap();
    assert!(kept.ends_with("torn-seg-00000001.jsonl-8.bin"), "{kept:?}");
}

#[test]
fn a_torn_tail_kept_at_an_offset_already_kept_gets_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("seg-00000001.jsonl");
    std::fs::write(&seg, b"{\"a\":1}\nfirst crash").unwrap();
    let first = keep_torn_tail(dir.path(), &seg, 8).unwrap();
    std::fs::write(&seg, b"{\"a\":1}\nsecond").unwrap();
    let second = keep_torn_tail(dir.path(), &seg, 8).unwrap();
    assert_ne!(first, second);
    assert_eq!(std::fs::read(&first).unwrap(), b"first crash");
    assert_eq!(std::fs::read(&second).unwrap(), b"second");
    assert!(
        second.ends_with("torn-seg-00000001.jsonl-8.1.bin"),
        "{second:?}"
    );
}

fn plain() -> Record<'static> {
    Record::QuoteExpired(QuoteHoldRecord {
        head: Head::new(0, 0),
        ping_id: None,
        buyer: "b",
        price_micros: 1,
        reason: None,
        changed_fields: &[],
        test: false,
    })
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    segments::read_all(dir)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A start's mark is on disk when `mark_start` returns, so a ledger beside its key
/// always has a record (black-box round 94b: it was only queued, and a tool run at
/// once, or a crash first, found the key and no record: "its records were removed").
/// Called from a runtime's thread too, as `app::start` does.
#[tokio::test]
async fn a_start_mark_is_on_disk_when_mark_start_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let ledger = Ledger::open(&path, 64 << 20, |_| {}).unwrap();
    assert!(!has_records(&path));
    ledger.mark_start(3, 1_000, "k1").unwrap();
    assert!(has_records(&path));
    let lines = lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        (
            &lines[0]["type"],
            &lines[0]["start"],
            &lines[0]["generation"]
        ),
        (
            &serde_json::json!("flush"),
            &serde_json::json!(true),
            &serde_json::json!(3)
        )
    );
}

/// `write_on_this_thread` (the learning thread's record of a decision) from a thread
/// with no tokio runtime: it returns once the durable record is on disk; on a full queue
/// it waits there, bounded, instead of handing the record to a tokio task (which
/// panicked without a runtime: `effects::execute_now` did so).
#[test]
fn a_record_written_from_a_plain_thread_is_on_disk_and_waits_for_a_full_queue_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (open_tx, gate) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new((gate, entered_tx, 0));
    // The writer's second synced batch holds it until the gate opens.
    let ledger = Ledger::open(&path, 64 << 20, move |_| {
        let mut g = gate.lock().unwrap();
        g.2 += 1;
        if g.2 == 2 {
            let _ = g.1.send(());
            let _ = g.0.recv();
        }
    })
    .unwrap();
    let flush = |generation| {
        Record::Flush(FlushRecord {
            head: Head::new(generation, 1_000),
            start: false,
            key_id: None,
        })
    };
    std::thread::scope(|s| {
        s.spawn(|| ledger.write_on_this_thread(&flush(1), 30_000, "the first"))
            .join()
            .unwrap()
            .unwrap();
    });
    assert_eq!(lines(&path).len(), 1, "on disk when it returned");
    let held = LedgerSink::append(&ledger, &flush(10));
    assert!(matches!(held, Receipt::Durable(_)));
    entered.recv().unwrap();
    // The writer is held: fill its queue.
    let mut queued = 0;
    while matches!(LedgerSink::append(&ledger, &plain()), Receipt::Queued) {
        queued += 1;
        assert!(queued <= QUEUE_RECORDS_MAX, "the queue is bounded");
    }
    assert_eq!(queued, QUEUE_RECORDS_MAX);
    let err = std::thread::scope(|s| {
        s.spawn(|| ledger.write_on_this_thread(&flush(2), 50, "the second"))
            .join()
            .unwrap()
            .unwrap_err()
    });
    assert!(
        err.to_string()
            .contains("the second was not on disk within 50 ms"),
        "{err}"
    );
    open_tx.send(()).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| ledger.write_on_this_thread(&flush(3), 30_000, "the third"))
            .join()
            .unwrap()
            .unwrap();
    });
    let lines = lines(&path);
    assert_eq!(
        lines.len(),
        3 + QUEUE_RECORDS_MAX,
        "the timed-out one not among them"
    );
    assert_eq!(lines.last().unwrap()["generation"], 3);
    assert!(ledger.failure().is_none());
}

#[tokio::test]
async fn durable_records_are_on_disk_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    let ledger = Ledger::open(&path, 64 << 20, |_| {}).unwrap();
    let mut waits = Vec::new();
    for i in 0..100 {
        let l = ledger.clone();
        waits.push(tokio::spawn(async move { l.flush_at(i, 0).await }));
    }
    for w in waits {
        w.await.unwrap().unwrap();
    }
    assert!(matches!(
        LedgerSink::append(&ledger, &plain()),
        Receipt::Queued
    ));
    ledger.flush_at(1_000, 0).await.unwrap();
    let lines = lines(&path);
    assert_eq!(lines.len(), 102);
    assert_eq!(lines[100]["type"], "quote_expired");
    assert_eq!(lines[101]["generation"], 1_000);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64 + 1);
    }
    assert!(ledger.is_healthy());
    let report = segments::verify(&path).unwrap();
    assert_eq!((report.records, report.problem), (102, None));
}

/// A record nobody waits for is fsynced by the timer when no durable one follows.
#[tokio::test]
async fn plain_records_are_synced_within_the_sync_delay() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ledger = Ledger::open(dir.path(), 4096, move |n| {
        let _ = tx.send(n);
    })
    .unwrap();
    assert!(matches!(
        LedgerSink::append(&ledger, &plain()),
        Receipt::Queued
    ));
    let synced = tokio::time::timeout(Duration::from_millis(SYNC_DELAY_MS * 10), rx.recv())
        .await
        .expect("synced in time");
    // The timer's sync is told the record it made durable (round 87b: it was told 0,
    // its own batch holding none).
    assert_eq!(synced, Some(1));
    assert_eq!(lines(dir.path()).len(), 1);
}

/// Records that come faster than the writer's busy threshold, none of them durable,
/// are all written (the writer lingers between batches, never leaves any behind) and
/// synced by the timer, in order.
#[tokio::test]
async fn a_busy_run_of_plain_records_is_written_without_a_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ledger = Ledger::open(dir.path(), 64 << 20, move |n| {
        let _ = tx.send(n);
    })
    .unwrap();
    let n = BUSY_RECORDS * 5;
    for _ in 0..n {
        LedgerSink::append(&ledger, &plain()).wait().await.unwrap();
    }
    // The timer's sync comes once every record is written (it asks only when written
    // lines wait for one), so wait for syncs until all are on disk.
    loop {
        let synced = tokio::time::timeout(Duration::from_millis(SYNC_DELAY_MS * 10), rx.recv())
            .await
            .expect("synced in time");
        assert!(synced.is_some());
        if lines(dir.path()).len() == n {
            break;
        }
    }
    let lines = lines(dir.path());
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64 + 1);
    }
    assert!(ledger.is_healthy());
}

#[tokio::test]
async fn rotation_keeps_the_chain_and_a_reopen_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger");
    {
        let ledger = Ledger::open(&path, 4096, |_| {}).unwrap();
        for i in 0..60 {
            LedgerSink::append(&ledger, &plain()).wait().await.unwrap();
            if i % 7 == 0 {
                ledger.flush_at(i, 0).await.unwrap();
            }
        }
        ledger.flush_at(0, 0).await.unwrap();
    }
    let segs = segments::list(&path).unwrap();
    assert!(segs.len() >= 3, "rotated: {segs:?}");
    for (_, p) in &segs[..segs.len() - 1] {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 4096 && len > 3000, "{} is {len} bytes", p.display());
    }
    let before = segments::verify(&path).unwrap();
    assert_eq!(before.problem, None);
    // The writer thread has ended (its lock is free): open again and go on.
    let ledger = loop {
        match Ledger::open(&path, 4096, |_| {}) {
            Ok(l) => break l,
            Err(e) if e.to_string().contains("in use") => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    };
    ledger.flush_at(7, 0).await.unwrap();
    let after = segments::verify(&path).unwrap();
    assert_eq!(after.problem, None);
    assert_eq!(after.records, before.records + 1);
    assert_eq!(after.last_seq, before.last_seq + 1);
}

#[tokio::test]
async fn a_second_writer_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Ledger::open(dir.path(), 4096, |_| {}).unwrap();
    let e = Ledger::open(dir.path(), 4096, |_| {}).unwrap_err();
    assert!(e.to_string().contains("in use by another process"), "{e}");
    // Deleting `LOCK` (it stays, empty, after every stop, so it looks stale) does not
    // let a second writer in: the directory itself is locked (black-box round 38).
    std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
    let e = Ledger::open(dir.path(), 4096, |_| {}).unwrap_err();
    assert!(e.to_string().contains("in use by another process"), "{e}");
}

/// A ledger directory moved (`mv`) while the exchange runs stops the ledger at the
/// timer's next check, within seconds, busy or idle, and before that batch's records are
/// written (black-box round 100a: written on with no word until the next rotation);
/// records without a check go on as before.
#[tokio::test]
async fn a_directory_moved_while_writing_stops_the_ledger_at_the_next_check() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let moved = root.path().join("moved");
    let mut w = Writer::recover(&dir, 1 << 20).unwrap();
    let mut buf = Vec::new();
    let rec = |line: &str| Pending {
        line: line.as_bytes().to_vec(),
        ack: None,
    };
    let check = || Pending {
        line: Vec::new(),
        ack: None,
    };
    assert!(w.write_batch(&[check()], true, &mut buf).1.is_ok());
    assert!(w
        .write_batch(&[rec(r#"{"type":"flush"}"#)], true, &mut buf)
        .1
        .is_ok());
    std::fs::rename(&dir, &moved).unwrap();
    let len = std::fs::metadata(moved.join(segments::segment_name(1)))
        .unwrap()
        .len();
    // A batch with the timer's check in it, records too: refused whole.
    let (on_disk, r) = w.write_batch(&[rec(r#"{"type":"flush"}"#), check()], true, &mut buf);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("was moved or replaced"), "{e}");
    assert_eq!(on_disk, 0);
    assert_eq!(
        std::fs::metadata(moved.join(segments::segment_name(1)))
            .unwrap()
            .len(),
        len,
        "nothing of the refused batch written"
    );
    // After the failure, HEAD in the moved directory names the last record synced, and
    // the checks every 2 s leave it alone (round 106a: read by the old path, it was made
    // again, a new file, at every check); one that names anything else is made again.
    use std::os::unix::fs::MetadataExt;
    let head_file = moved.join(head::HEAD_FILE);
    let ino = std::fs::metadata(&head_file).unwrap().ino();
    for _ in 0..3 {
        w.head_after_failure_if_changed();
    }
    assert_eq!(std::fs::metadata(&head_file).unwrap().ino(), ino);
    assert!(!dir.exists(), "nothing made at the old path");
    let synced = head::read(&moved).unwrap().unwrap();
    std::fs::write(&head_file, head::line(synced + 5)).unwrap();
    w.head_after_failure_if_changed();
    assert_eq!(head::read(&moved), Ok(Some(synced)));
}

/// A ledger directory renamed while the exchange runs, and another made at its old
/// path (a second exchange could lock that one), is never written by path: the next
/// segment is refused and the ledger stops (fail-stop), so the moved ledger ends
/// whole and the new directory gets nothing of this writer's (black-box round 39).
#[tokio::test]
async fn a_directory_moved_while_writing_stops_the_ledger_at_its_next_segment() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let moved = root.path().join("moved");
    let mut w = Writer::recover(&dir, 64).unwrap();
    let mut buf = Vec::new();
    let rec = |line: &str| Pending {
        line: line.as_bytes().to_vec(),
        ack: None,
    };
    assert!(w
        .write_batch(&[rec(r#"{"type":"flush"}"#)], true, &mut buf)
        .1
        .is_ok());
    std::fs::rename(&dir, &moved).unwrap();
    std::fs::create_dir(&dir).unwrap();
    // Past the 64-byte segment limit: a rotation, refused.
    let (_, r) = w.write_batch(
        &[rec(&format!(
            r#"{{"type":"flush","x":"{}"}}"#,
            "y".repeat(80)
        ))],
        true,
        &mut buf,
    );
    let e = r.unwrap_err().to_string();
    assert!(e.contains("was moved or replaced"), "{e}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written by path"
    );
}

/// A batch the writer is in is seen from outside with how long it has run; none once
/// the write returned (black-box round 90b: a frozen filesystem held every post while
/// `/readyz` said ready).
#[tokio::test]
async fn a_batch_still_being_written_is_seen_with_its_age() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&dir.path().join("ledger"), 64 << 20, |_| {}).unwrap();
    ledger.flush_at(1, 0).await.unwrap();
    assert_eq!(ledger.stalled_for(), None, "idle after its write");
    // As the writer marks a batch it began 6 s ago (a write that has not returned).
    let began = elapsed_ms().saturating_sub(6_000).max(1);
    ledger.health.busy_since.store(began, Ordering::Relaxed);
    let d = ledger.stalled_for().unwrap();
    assert!(d >= Duration::from_millis(6_000) || began == 1, "{d:?}");
    // The writer's next batch ends it.
    ledger.flush_at(2, 0).await.unwrap();
    assert_eq!(ledger.stalled_for(), None);
}

/// A rotation that seals the segment and then cannot start the next one refuses the
/// whole batch and leaves none of it on disk: a record refused to its writer (a post
/// answered "not sold", a `post_sent` whose post answered `503`) is never found at the
/// next start (black-box round 90b: a sale answered `500` was in the sealed segment,
/// a sale after the restart; round 91a: a `post_sent` there was a delivery of unknown
/// outcome). The records of earlier batches stay.
#[tokio::test]
async fn a_rotation_that_fails_after_the_seal_leaves_none_of_its_batch_on_disk() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut w = Writer::recover(&dir, 600).unwrap();
    let mut buf = Vec::new();
    let rec = |n: usize| Pending {
        line: format!(r#"{{"type":"flush","n":{n}}}"#).into_bytes(),
        ack: None,
    };
    let framed = {
        let mut b = Vec::new();
        segments::frame(&mut b, &rec(0).line, 1, &w.chain.sum);
        b.len()
    };
    let fit = 600 / framed;
    assert!(fit >= 3, "{framed}-byte lines");
    // One record acknowledged before the batch.
    assert!(w.write_batch(&[rec(100)], true, &mut buf).1.is_ok());
    // The next segment's name is taken: the rotation seals this one, then fails.
    let next = dir.join(segments::segment_name(w.seg_no + 1));
    std::fs::write(&next, b"").unwrap();
    let batch: Vec<Pending> = (0..fit + 2).map(rec).collect();
    let (on_disk, r) = w.write_batch(&batch, true, &mut buf);
    assert!(r.is_err(), "the rotation is refused");
    assert_eq!(on_disk, 0, "nothing of the batch is acknowledged");
    drop(w);
    std::fs::remove_file(&next).unwrap();
    let on_file: Vec<u64> = lines(&dir)
        .iter()
        .map(|l| l["n"].as_u64().unwrap())
        .collect();
    assert_eq!(on_file, [100], "only the earlier batch's record is on disk");
    assert_eq!(segments::verify(&dir).unwrap().problem, None);
}

/// A failed write cuts the segment back to its acknowledged length, and leaves a
/// segment another process changed as it is.
#[test]
fn a_failed_write_is_cut_from_the_segment_unless_another_process_changed_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut w = Writer::recover(&dir, 64 << 20).unwrap();
    let mut buf = Vec::new();
    let rec = |n: usize| Pending {
        line: format!(r#"{{"type":"flush","n":{n}}}"#).into_bytes(),
        ack: None,
    };
    assert!(w.write_batch(&[rec(0)], true, &mut buf).1.is_ok());
    let acked = w.seg_len;
    // Written, not synced: the lines a failed sync would leave.
    assert!(w.write_batch(&[rec(1), rec(2)], false, &mut buf).1.is_ok());
    let written = w.seg_len;
    assert!(written > acked);
    w.cut_back(acked, written);
    assert_eq!(std::fs::metadata(&w.seg_path).unwrap().len(), acked);
    assert_eq!(w.seg_len, acked);
    assert_eq!(lines(&dir).len(), 1);
    // Bytes past what this writer attempted (another process appended): left alone.
    assert!(w.write_batch(&[rec(3)], false, &mut buf).1.is_ok());
    let ours = w.seg_len;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&w.seg_path)
        .unwrap()
        .write_all(b"foreign\n")
        .unwrap();
    w.cut_back(acked, ours);
    assert_eq!(std::fs::metadata(&w.seg_path).unwrap().len(), ours + 8);
}

/// A ledger directory removed while the exchange runs fails the next sync (the batch
/// it would make durable is not acknowledged), rather than acknowledging records
/// written into a deleted file (black-box round 58b), and a directory made again at
/// the path changes nothing.
#[tokio::test]
async fn a_ledger_directory_removed_while_writing_stops_the_ledger() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let w = Writer::recover(&dir, 64 << 20).unwrap();
    let ledger = Ledger::start(w, |_| {}).unwrap();
    ledger.flush_at(1, 0).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let e = ledger.flush_at(2, 0).await.unwrap_err().to_string();
    assert!(e.contains("was deleted while the exchange ran"), "{e}");
    assert!(!ledger.is_healthy());
    assert!(ledger.flush_at(3, 0).await.is_err());
}

/// A segment truncated or appended to by another process while the exchange writes it
/// fails the next sync: the batch is not acknowledged (black-box round 59b: sales were
/// answered `sold` into a segment whose chain a `truncate` had broken).
#[test]
fn a_segment_changed_by_another_process_fails_the_next_sync() {
    for change in ["truncate", "append"] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ledger");
        let mut w = Writer::recover(&dir, 64 << 20).unwrap();
        let mut buf = Vec::new();
        let rec = || Pending {
            line: br#"{"type":"flush"}"#.to_vec(),
            ack: None,
        };
        assert!(w.write_batch(&[rec(), rec()], true, &mut buf).1.is_ok());
        let other = OpenOptions::new().append(true).open(&w.seg_path).unwrap();
        match change {
            "truncate" => other.set_len(10).unwrap(),
            _ => (&other).write_all(b"{}\n").map(|_| ()).unwrap(),
        }
        let before = std::fs::read(&w.seg_path).unwrap();
        let (n, r) = w.write_batch(&[rec()], true, &mut buf);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("was changed by another process"),
            "{change}: {e}"
        );
        assert_eq!(n, 0, "{change}: nothing of the batch is acknowledged");
        assert_eq!(
            std::fs::read(&w.seg_path).unwrap(),
            before,
            "{change}: nothing of the batch is written after the foreign change"
        );
    }
}

/// A ledger directory whose segments were all removed (the fingerprint key the first
/// start made is still there) is refused at start, never begun again empty (black-box
/// round 60b: keyed retries of leads answered `sold` were sold a second time); a new
/// directory, or one holding only other files, starts.
#[test]
fn a_ledger_has_records_once_a_segment_holds_a_line() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!has_records(dir.path()));
    std::fs::write(dir.path().join("seg-00000001.jsonl"), b"").unwrap();
    std::fs::write(dir.path().join("torn-seg-00000001.jsonl-0.bin"), b"x").unwrap();
    assert!(
        !has_records(dir.path()),
        "empty segments and torn tails are no records"
    );
    // Round 94b: a line cut short (no newline), or only white space, is no record.
    for none in [&b"{\"type\":\"flush\",\"v\":5"[..], b"\n\n", b" \r\n\t"] {
        std::fs::write(dir.path().join("seg-00000001.jsonl"), none).unwrap();
        assert!(
            !has_records(dir.path()),
            "{}",
            String::from_utf8_lossy(none)
        );
    }
    std::fs::write(dir.path().join("seg-00000001.jsonl"), b"{}\n").unwrap();
    assert!(has_records(dir.path()));
    // A whole line past a first block of white space.
    let mut late = vec![b'\n'; 70_000];
    late.extend_from_slice(b"{}\n");
    std::fs::write(dir.path().join("seg-00000001.jsonl"), late).unwrap();
    assert!(has_records(dir.path()));
}

/// Black-box round 176a: a ledger whose only segment could not be read was told as one
/// whose records were removed (with advice to move its fingerprint key aside, which
/// discards the de-duplication history). A segment that is there but cannot be read, or
/// is not a regular file, may hold records: the reading names it instead.
#[test]
fn a_segment_that_cannot_be_read_is_not_taken_for_removed_records() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(crate::fingerprint::KEY_FILE), [7u8; 32]).unwrap();
    assert!(segments_lost(dir.path()).is_some(), "no segment at all");
    std::fs::create_dir(dir.path().join("seg-00000001.jsonl")).unwrap();
    assert!(has_records(dir.path()));
    assert_eq!(segments_lost(dir.path()), None);
    let e = segments::verify(dir.path()).unwrap_err().to_string();
    assert!(e.contains("seg-00000001.jsonl"), "{e}");
}

#[test]
fn a_ledger_whose_segments_were_removed_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    {
        let mut w = Writer::recover(&dir, 64 << 20).unwrap();
        assert_eq!(segments_lost(&dir), None, "a new ledger");
        let rec = Pending {
            line: br#"{"type":"flush"}"#.to_vec(),
            ack: None,
        };
        assert!(w.write_batch(&[rec], true, &mut Vec::new()).1.is_ok());
    }
    std::fs::write(dir.join(crate::fingerprint::KEY_FILE), b"k").unwrap();
    assert_eq!(segments_lost(&dir), None, "its segment is there");
    let segs = segments::list(&dir).unwrap();
    // An empty segment in the removed one's place holds no record either (round
    // 62c: it passed).
    let (_, first) = &segs[0];
    std::fs::write(first, b"").unwrap();
    let why = segments_lost(&dir).unwrap();
    assert!(
        why.contains("has no record but holds FINGERPRINT_KEY"),
        "{why}"
    );
    for (_, seg) in segs {
        std::fs::remove_file(seg).unwrap();
    }
    let why = segments_lost(&dir).unwrap();
    assert!(
        why.contains("has no record but holds FINGERPRINT_KEY"),
        "{why}"
    );
    let e = Writer::recover(&dir, 64 << 20).err().unwrap().to_string();
    assert_eq!(e, why);
    // A key that is a symlink to nothing is a key all the same (round 94b).
    #[cfg(unix)]
    {
        let key = dir.join(crate::fingerprint::KEY_FILE);
        let kept = dir.join("key-kept");
        std::fs::rename(&key, &kept).unwrap();
        std::os::unix::fs::symlink(root.path().join("nothing-here"), &key).unwrap();
        assert!(segments_lost(&dir).is_some_and(|w| w == why));
        std::fs::remove_file(&key).unwrap();
        std::fs::rename(&kept, &key).unwrap();
    }
    assert!(segments::list(&dir).unwrap().is_empty(), "no segment made");
    // Begun empty on purpose: the key and the head moved aside, as the message says.
    std::fs::remove_file(dir.join(crate::fingerprint::KEY_FILE)).unwrap();
    assert!(
        Writer::recover(&dir, 64 << 20).is_err(),
        "the head still names a record"
    );
    std::fs::remove_file(dir.join(head::HEAD_FILE)).unwrap();
    assert!(Writer::recover(&dir, 64 << 20).is_ok());
}

/// Black-box round 61b: a ledger whose last segment was deleted while earlier ones
/// remained verified, and a restart sold again what it recorded. The head names the
/// last record synced: a start refuses a ledger that ends before it (its newest
/// segment deleted, or cut at a line boundary), changing nothing, and still recovers
/// a torn tail, which only ever holds records not yet synced.
#[test]
fn a_ledger_whose_last_records_were_removed_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut buf = Vec::new();
    let rec = || Pending {
        line: br#"{"type":"flush","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.to_vec(),
        ack: None,
    };
    {
        // Segments of about two lines each: five batches of two make five segments.
        let mut w = Writer::recover(&dir, 250).unwrap();
        for _ in 0..5 {
            let (n, r) = w.write_batch(&[rec(), rec()], true, &mut buf);
            assert!(r.is_ok() && n == 2);
        }
        assert_eq!(
            head::read(&dir),
            Ok(Some(10)),
            "the head follows every sync"
        );
        // Records not synced are not named.
        assert!(w.write_batch(&[rec()], false, &mut buf).1.is_ok());
        assert_eq!(head::read(&dir), Ok(Some(10)));
        // A sync the timer asks for names them.
        let sync = Pending {
            line: Vec::new(),
            ack: None,
        };
        assert!(w.write_batch(&[sync], true, &mut buf).1.is_ok());
        assert_eq!(head::read(&dir), Ok(Some(11)));
    }
    let segs = segments::list(&dir).unwrap();
    assert!(segs.len() >= 3, "{segs:?}");
    // A clean reopen is fine, and a torn tail (bytes of a line never synced) still
    // recovers: the head never names them.
    drop(Writer::recover(&dir, 250).unwrap());
    let last = segs.last().unwrap().1.clone();
    let whole = std::fs::read(&last).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(b"{\"type\":\"fl")
        .unwrap();
    drop(Writer::recover(&dir, 250).unwrap());
    assert_eq!(std::fs::read(&last).unwrap(), whole, "the torn tail is cut");

    // The newest segment removed: refused, and nothing is changed or made.
    let saved = root.path().join("saved");
    std::fs::rename(&last, &saved).unwrap();
    let names = |d: &Path| {
        let mut n: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        n.sort();
        n
    };
    let before = names(&dir);
    let e = Writer::recover(&dir, 250).err().unwrap().to_string();
    assert!(e.contains("ends at record"), "{e}");
    assert!(e.contains("says record 11 was written and synced"), "{e}");
    assert_eq!(names(&dir), before, "no segment made");
    assert_eq!(head::read(&dir), Ok(Some(11)), "the head is kept");
    // Cut at a line boundary (its last whole line removed): refused too.
    let cut = whole[..whole[..whole.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)]
        .to_vec();
    std::fs::write(&last, &cut).unwrap();
    let e = Writer::recover(&dir, 250).err().unwrap().to_string();
    assert!(e.contains("records 11..=11 were removed"), "{e}");
    assert_eq!(std::fs::read(&last).unwrap(), cut, "nothing cut further");
    // Restored: it starts again.
    std::fs::rename(&saved, &last).unwrap();
    drop(Writer::recover(&dir, 250).unwrap());
    // An older backup restored on purpose starts once its head is removed.
    std::fs::remove_file(&last).unwrap();
    std::fs::remove_file(dir.join(head::HEAD_FILE)).unwrap();
    let w = Writer::recover(&dir, 250).unwrap();
    assert_eq!(head::read(&dir), Ok(Some(w.chain.seq)), "a new head");
}

/// Black-box round 64a: a last record whole but for its newline (taken off by an editor
/// or `x=$(cat f); printf %s "$x" > f`) was taken for a torn write: the start was
/// refused as records removed, and with HEAD removed as advised, the sale was cut.
/// It is counted, and the start completes it.
#[test]
fn a_last_record_without_its_newline_is_completed_not_cut() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let rec = || Pending {
        line: br#"{"type":"sale","pad":"x"}"#.to_vec(),
        ack: None,
    };
    {
        let mut w = Writer::recover(&dir, 64 << 20).unwrap();
        assert!(w
            .write_batch(&[rec(), rec(), rec()], true, &mut Vec::new())
            .1
            .is_ok());
    }
    let (_, seg) = segments::list(&dir).unwrap().pop().unwrap();
    let whole = std::fs::read(&seg).unwrap();
    std::fs::write(&seg, &whole[..whole.len() - 1]).unwrap();
    // verify counts it, and says the start completes it.
    let report = segments::verify(&dir).unwrap();
    assert_eq!(report.last_seq, 3);
    let p = report.problem.as_ref().unwrap();
    assert_eq!(p.what, segments::LineProblem::NoNewline);
    assert!(p.is_torn_tail(&dir));
    assert!(
        report.render(&dir).contains("adds the newline"),
        "{}",
        report.render(&dir)
    );
    // The finance tools read it as the record it is (round 65a: dropped as torn).
    let mut read = 0;
    let stats = crate::finance::for_each_ignoring_money(&dir, |_| {
        read += 1;
        true
    })
    .unwrap();
    assert_eq!(read, 3);
    assert!(stats.unreadable.is_empty(), "{stats:?}");
    // The start completes it: nothing cut, nothing kept aside, the head agrees.
    let w = Writer::recover(&dir, 64 << 20).unwrap();
    assert_eq!(w.chain.seq, 3);
    drop(w);
    assert_eq!(std::fs::read(&seg).unwrap(), whole);
    assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("torn-")));
    assert_eq!(segments::verify(&dir).unwrap().problem, None);
    // A line cut inside it is still a torn write, cut at start.
    std::fs::write(&seg, &whole[..whole.len() - 5]).unwrap();
    std::fs::write(dir.join(head::HEAD_FILE), head::line(2)).unwrap();
    let w = Writer::recover(&dir, 64 << 20).unwrap();
    assert_eq!(w.chain.seq, 2);
}

/// A `flush` record to write, nobody waiting for it.
fn flush_line() -> Pending {
    Pending {
        line: br#"{"type":"flush"}"#.to_vec(),
        ack: None,
    }
}

/// A new ledger's writer with two records synced (its `HEAD` names record 2), in a
/// temporary directory (kept while the first value lives).
fn two_records_synced() -> (tempfile::TempDir, PathBuf, Writer) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut w = Writer::recover(&dir, 64 << 20).unwrap();
    let written = w.write_batch(&[flush_line(), flush_line()], true, &mut Vec::new());
    assert!(written.1.is_ok());
    (root, dir, w)
}

/// Black-box round 96a: after the ledger failed, an older copy's `HEAD` put in place
/// stayed through the stop (the writer no longer looked at it), and the next start
/// took the older copy for the whole ledger. The writer's checks after a failure, and
/// its end, make the head name the last record synced again.
#[test]
fn a_head_put_in_place_after_a_failure_is_made_again() {
    let (_root, dir, w) = two_records_synced();
    assert_eq!(head::read(&dir), Ok(Some(2)));
    let health = Arc::new(Health::default());
    health.fail("the segment was changed by another process".into());
    // An older copy's head, after the failure; then a timer check, and the end.
    std::fs::write(dir.join(head::HEAD_FILE), head::line(1)).unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.try_send(Pending {
        line: Vec::new(),
        ack: None,
    })
    .unwrap();
    drop(tx);
    run(w, rx, health, &AtomicBool::new(false), |_| {});
    assert_eq!(head::read(&dir), Ok(Some(2)));
}

/// Black-box round 97a: where no new file can be made (a read-only directory, a full
/// disk; here `HEAD.new` is a directory, which refuses it whoever runs the test), the
/// older `HEAD` stayed. It is written over in place instead.
#[test]
fn a_head_is_written_over_in_place_when_no_new_file_can_be_made() {
    let (_root, dir, w) = two_records_synced();
    std::fs::create_dir(dir.join("HEAD.new")).unwrap();
    std::fs::write(dir.join(head::HEAD_FILE), head::line(1)).unwrap();
    let health = Arc::new(Health::default());
    health.fail("the disk is full".into());
    let (tx, rx) = mpsc::channel(4);
    drop(tx);
    run(w, rx, health, &AtomicBool::new(false), |_| {});
    assert_eq!(head::read(&dir), Ok(Some(2)));
}

/// Black-box round 95a: a first start killed between making the fingerprint key and
/// writing its start mark left the key, an empty segment and a `HEAD` naming record 0:
/// the restart was refused as "its records were removed". Such a ledger never synced
/// a record, and starts; one without its `HEAD` is still refused.
#[test]
fn a_first_start_cut_short_before_its_mark_starts_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    drop(Writer::recover(&dir, 64 << 20).unwrap());
    assert_eq!(head::read(&dir), Ok(Some(0)));
    std::fs::write(dir.join(crate::fingerprint::KEY_FILE), b"k").unwrap();
    assert_eq!(segments_lost(&dir), None);
    assert!(Writer::recover(&dir, 64 << 20).is_ok());
    // Round 96a: only as a first start leaves it, its one segment the first: more
    // segments, or none, held records.
    std::fs::write(dir.join(segments::segment_name(2)), b"").unwrap();
    assert!(segments_lost(&dir).is_some());
    std::fs::remove_file(dir.join(segments::segment_name(2))).unwrap();
    std::fs::remove_file(dir.join(segments::segment_name(1))).unwrap();
    assert!(segments_lost(&dir).is_some());
    std::fs::write(dir.join(segments::segment_name(1)), b"").unwrap();
    assert_eq!(segments_lost(&dir), None);
    std::fs::remove_file(dir.join(head::HEAD_FILE)).unwrap();
    assert!(segments_lost(&dir).is_some());
}

/// Black-box round 94c: a backup's older segment and `HEAD` copied over a running
/// exchange's (`cp`, in place) failed the ledger at its next write, and the older
/// `HEAD` stayed: the restart took the older copy for the whole ledger, and `verify`
/// said OK. After a failed write the head names the last record the writer synced.
#[test]
fn after_a_failed_write_the_head_names_the_last_record_synced() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut buf = Vec::new();
    let rec = flush_line;
    let mut w = Writer::recover(&dir, 64 << 20).unwrap();
    assert!(w.write_batch(&[rec()], true, &mut buf).1.is_ok());
    let seg = w.seg_path.clone();
    let older = std::fs::read(&seg).unwrap();
    assert!(w.write_batch(&[rec(), rec()], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(3)));
    // The older copy, written in place over both files.
    std::fs::write(&seg, &older).unwrap();
    std::fs::write(dir.join(head::HEAD_FILE), head::line(1)).unwrap();
    assert!(w.write_batch(&[rec()], true, &mut buf).1.is_err());
    assert_eq!(head::read(&dir), Ok(Some(3)));
    drop(w);
    let e = Writer::recover(&dir, 64 << 20).err().unwrap().to_string();
    assert!(e.contains("were removed"), "{e}");
}

/// Black-box round 62c: after `mv`, `sed -i` or `rm` of `HEAD` while the exchange ran,
/// it went on writing the file no path reached (until and at its stop), so the head
/// stayed at the other process's value and the check of removed records was off.
#[test]
fn a_head_removed_or_replaced_while_running_is_made_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut buf = Vec::new();
    let rec = flush_line;
    let mut w = Writer::recover(&dir, 64 << 20).unwrap();
    assert!(w.write_batch(&[rec(), rec()], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(2)));
    let path = dir.join(head::HEAD_FILE);
    // Replaced (`mv`, `sed -i`, an editor) by a file that names an earlier record.
    let other = root.path().join("other");
    std::fs::write(&other, head::line(1)).unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert!(w.write_batch(&[rec()], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(3)));
    // Removed: made again at the next sync, even one with no new record (the idle
    // check every 2 s).
    std::fs::remove_file(&path).unwrap();
    let tick = Pending {
        line: Vec::new(),
        ack: None,
    };
    assert!(w.write_batch(&[tick], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(3)));
    // Changed in place to another length: made again whole.
    std::fs::write(&path, b"x").unwrap();
    assert!(w.write_batch(&[rec()], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(4)));
    // Rewritten in place to the same length (a shell's `>`, `dd conv=notrunc`): the
    // next sync writes it again, a sync of nothing new too (round 63a: it stayed
    // until the next record).
    std::fs::write(&path, head::line(1)).unwrap();
    let tick = Pending {
        line: Vec::new(),
        ack: None,
    };
    assert!(w.write_batch(&[tick], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(4)));
    // The head it keeps writing is the one the path names.
    assert!(w.write_batch(&[rec()], true, &mut buf).1.is_ok());
    assert_eq!(head::read(&dir), Ok(Some(5)));
    drop(w);
    // A symlink put in its place while stopped refuses the start, and nothing is
    // made through it.
    std::fs::remove_file(&path).unwrap();
    let outside = root.path().join("outside");
    std::os::unix::fs::symlink(&outside, &path).unwrap();
    let e = Writer::recover(&dir, 64 << 20).err().unwrap().to_string();
    assert!(e.contains("is a symlink"), "{e}");
    assert!(!outside.exists());
    // Nor does a FIFO or a directory named LOCK hang or stop the start without a way
    // out (round 64a: a FIFO hung it, silent).
    for odd in ["fifo", "dir"] {
        let lock = dir.join(LOCK_FILE);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, head::line(5)).unwrap();
        std::fs::remove_file(&lock).unwrap();
        if odd == "fifo" {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &lock,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        } else {
            std::fs::create_dir(&lock).unwrap();
        }
        let e = Writer::recover(&dir, 64 << 20).err().unwrap().to_string();
        assert!(
            e.contains("LOCK is not a regular file") && e.contains("remove it"),
            "{odd}: {e}"
        );
        if odd == "dir" {
            std::fs::remove_dir(&lock).unwrap();
        } else {
            std::fs::remove_file(&lock).unwrap();
        }
        std::fs::write(&lock, b"").unwrap();
    }
    // Nor is LOCK followed (round 63a: a LOCK symlink made a file outside).
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, head::line(5)).unwrap();
    std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join(LOCK_FILE)).unwrap();
    let e = Writer::recover(&dir, 64 << 20).err().unwrap().to_string();
    assert!(e.contains("LOCK is a symlink"), "{e}");
    assert!(!outside.exists());
}

/// A process out of file descriptors (idle connections held up to the open-file
/// limit) still rotates its ledger: the writer's spare descriptor makes room for the
/// new segment (black-box round 58b: `EMFILE` stopped the ledger for good).
#[test]
fn a_rotation_out_of_file_descriptors_uses_the_spare_one() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // The descriptors are used up in a process of its own (this test binary run again
    // for this test alone): `cargo test` runs the other tests beside it, in threads.
    const CHILD: &str = "PINGPOST_TEST_FD_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ledger::tests::a_rotation_out_of_file_descriptors_uses_the_spare_one",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut w = Writer::recover(&dir, 64).unwrap();
    let mut buf = Vec::new();
    let rec = |n: usize| Pending {
        line: format!(r#"{{"type":"flush","x":"{}"}}"#, "y".repeat(n)).into_bytes(),
        ack: None,
    };
    // This test's process only (nextest runs each test in its own): every descriptor
    // under a low limit is taken.
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(256),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut held = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        held.push(f);
        assert!(held.len() <= 256, "the limit holds");
    }
    for i in 0..3 {
        let (n, r) = w.write_batch(&[rec(80), rec(80)], true, &mut buf);
        assert!(r.is_ok(), "rotation {i}: {r:?}");
        assert_eq!(n, 2);
    }
    assert!(w.seg_no >= 4, "{}", w.seg_no);
    drop(held);
    setrlimit(Resource::Nofile, old).unwrap();
    assert_eq!(segments::verify(&dir).unwrap().records, 6);
}

/// A write error (a full disk: the segment's file is swapped for /dev/full) stops the
/// ledger for good: the failing sale is refused, and so is every later record, even
/// once writes could succeed again.
#[tokio::test]
async fn a_write_error_stops_the_ledger_for_the_life_of_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::recover(dir.path(), 64 << 20).unwrap();
    let real = std::mem::replace(
        &mut w.file,
        OpenOptions::new().append(true).open("/dev/full").unwrap(),
    );
    // The swapped-in file's time is the writer's own from here on.
    w.note_seg_mtime();
    let ledger = Ledger::start(w, |_| {}).unwrap();
    assert!(ledger.is_healthy());
    let e = ledger.flush_at(1, 0).await.unwrap_err();
    assert!(e.to_string().contains("writing"), "{e}");
    let why = ledger.failure().expect("unhealthy");
    assert!(why.contains("seg-00000001.jsonl"), "{why}");
    // The disk is fine again (and the queue still works): still refused, still unhealthy.
    drop(real);
    assert!(matches!(
        LedgerSink::append(&ledger, &plain()),
        Receipt::Failed(LedgerError::Failed(_))
    ));
    assert!(ledger.flush_at(2, 0).await.is_err());
    assert_eq!(ledger.failure().as_deref(), Some(why.as_str()));
    assert_eq!(segments::verify(dir.path()).unwrap().records, 0);
}

#[test]
fn a_missing_parent_a_file_and_an_unwritable_directory_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Ledger::open(&dir.path().join("no/such"), 4096, |_| {}).unwrap_err();
    assert!(
        e.to_string()
            .contains("does not exist, nor does its parent"),
        "{e}"
    );
    let file = dir.path().join("old.jsonl");
    std::fs::write(&file, "{}\n").unwrap();
    let e = Ledger::open(&file, 4096, |_| {}).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    // A symlink that leads nowhere says so (black-box round 49: "File exists").
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let e = Ledger::open(&dangling, 4096, |_| {}).unwrap_err();
    assert!(
        e.to_string().contains("is a symlink to") && e.to_string().contains("nowhere"),
        "{e}"
    );
    // /proc refuses new files even to root.
    let e = Ledger::open(Path::new("/proc"), 4096, |_| {}).unwrap_err();
    assert!(e.to_string().contains("is not writable"), "{e}");
    // Not the exchange's user's: what to do is said (black-box round 235b: a copy
    // restored by root failed with a bare "Permission denied"); other errors are not
    // given that advice.
    let denied = super::writer::ctx(
        "opening",
        Path::new("/l/seg-00000001.jsonl"),
        std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    );
    assert!(
        denied.to_string().starts_with("opening /l/seg-00000001.jsonl: permission denied: the exchange's user must own the ledger directory")
            && denied.to_string().contains("chown -R"),
        "{denied}"
    );
    assert_eq!(denied.kind(), std::io::ErrorKind::PermissionDenied);
    let missing = super::writer::ctx(
        "opening",
        Path::new("/l/x"),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    );
    assert!(!missing.to_string().contains("chown"), "{missing}");
    // Created when only it is missing.
    let fresh = dir.path().join("fresh");
    drop(Ledger::open(&fresh, 4096, |_| {}).unwrap());
    assert!(fresh.join(segments::segment_name(1)).is_file());
}

/// Black-box round 113a: a directory named `HEAD.new` stops the start, and the message
/// said to remove "a file of that name".
#[test]
fn a_head_new_directory_is_told_as_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("HEAD.new")).unwrap();
    let dir = std::fs::File::open(tmp.path()).unwrap();
    let e = head::create_in(&dir, 1).unwrap_err().to_string();
    assert!(e.starts_with("HEAD.new: "), "{e}");
    assert!(
        e.contains("remove the directory of that name (rmdir)"),
        "{e}"
    );
    assert!(!e.contains("a file of that name"), "{e}");
}

/// Black-box round 120b: under load with small segments, `rm -rf` of the ledger directory
/// removed the sealed segments and the key while the writer went on in a segment `rm`
/// had not listed, and every later batch was acknowledged into a ledger the next start
/// refused. Now a sealed segment removed, moved away or replaced, or written by another
/// process, fails the next batch (nothing of it acknowledged), while the writer's own
/// rotations and other files (the key among them: `app::spawn_key_keeper` writes it
/// again) change nothing.
#[test]
fn a_sealed_segment_changed_by_another_process_fails_the_next_batch() {
    let rec = || Pending {
        line: br#"{"type":"flush","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.to_vec(),
        ack: None,
    };
    type Change = fn(&Path, &Path);
    let changes: [(&str, Change, &str); 4] = [
        (
            "rm",
            |_, s| std::fs::remove_file(s).unwrap(),
            "was removed while",
        ),
        (
            "mv away",
            |d, s| std::fs::rename(s, d.parent().unwrap().join("elsewhere")).unwrap(),
            "was moved out of the ledger directory",
        ),
        (
            "mv over",
            |d, s| {
                std::fs::write(d.join("other"), b"{}\n").unwrap();
                std::fs::rename(d.join("other"), s).unwrap()
            },
            "was replaced (another file was moved over it",
        ),
        (
            "append",
            |_, s| {
                OpenOptions::new()
                    .append(true)
                    .open(s)
                    .unwrap()
                    .write_all(b"{}\n")
                    .unwrap()
            },
            "(a sealed segment) was written by another process",
        ),
    ];
    for (name, change, said) in changes {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ledger");
        let mut w = Writer::recover(&dir, 200).unwrap();
        std::fs::write(dir.join(crate::fingerprint::KEY_FILE), b"k").unwrap();
        let mut buf = Vec::new();
        // Rotations of its own (several segments sealed and closed) and files that are
        // not the ledger's, made and removed beside it: no failure.
        for _ in 0..6 {
            assert!(w.write_batch(&[rec(), rec()], true, &mut buf).1.is_ok());
            std::fs::write(dir.join("notes.txt"), b"x").unwrap();
            std::fs::remove_file(dir.join("notes.txt")).unwrap();
        }
        // The key removed and made again beside it (as the keeper does): not the
        // writer's to judge.
        std::fs::remove_file(dir.join(crate::fingerprint::KEY_FILE)).unwrap();
        std::fs::write(dir.join("key-new"), b"k").unwrap();
        std::fs::rename(dir.join("key-new"), dir.join(crate::fingerprint::KEY_FILE)).unwrap();
        assert!(w.write_batch(&[rec()], true, &mut buf).1.is_ok(), "{name}");
        let segs = segments::list(&dir).unwrap();
        assert!(segs.len() >= 4, "{name}: {segs:?}");
        let current = w.seg_len;
        let (_, sealed) = &segs[1];
        change(&dir, sealed);
        let (n, r) = w.write_batch(&[rec()], true, &mut buf);
        let e = r.unwrap_err().to_string();
        assert!(e.contains(said), "{name}: {e}");
        assert!(e.contains("before the next start"), "{name}: {e}");
        assert_eq!(n, 0, "{name}: nothing of the batch is acknowledged");
        assert_eq!(w.seg_len, current, "{name}: nothing of it written");
    }
}

/// Another process writing the segment being written is found too, even where the
/// length comes out the same (an edit in place: `dd conv=notrunc`).
#[test]
fn the_segment_being_written_edited_in_place_fails_the_next_batch() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let mut w = Writer::recover(&dir, 64 << 20).unwrap();
    let rec = || Pending {
        line: br#"{"type":"flush"}"#.to_vec(),
        ack: None,
    };
    let mut buf = Vec::new();
    assert!(w.write_batch(&[rec(), rec()], true, &mut buf).1.is_ok());
    {
        use std::io::{Seek, SeekFrom};
        let mut f = OpenOptions::new().write(true).open(&w.seg_path).unwrap();
        f.seek(SeekFrom::Start(2)).unwrap();
        f.write_all(b"X").unwrap();
    }
    let e = w
        .write_batch(&[rec()], true, &mut buf)
        .1
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("(the segment being written) was written by another process"),
        "{e}"
    );
}

/// Black-box round 121a: a sealed segment written through a hard link outside the
/// ledger directory, or through a descriptor kept open, and the segment being written
/// edited in place at the same length through such a link, went unseen; so did a
/// segment file made by another process. Each now fails the next batch, while a
/// hard-link snapshot of the segments and a `touch` of a sealed one change nothing.
#[test]
fn writes_through_other_names_and_foreign_segments_fail_the_next_batch() {
    use std::os::unix::fs::FileExt as _;
    let rec = || Pending {
        line: br#"{"type":"flush","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.to_vec(),
        ack: None,
    };
    let fresh = |root: &Path| {
        let dir = root.join("ledger");
        let mut w = Writer::recover(&dir, 200).unwrap();
        let mut buf = Vec::new();
        for _ in 0..4 {
            assert!(w.write_batch(&[rec(), rec()], true, &mut buf).1.is_ok());
        }
        (dir, w, buf)
    };
    // A snapshot by hard links (as `cp -al` makes) and `touch` of a sealed segment:
    // nothing written, nothing said.
    {
        let root = tempfile::tempdir().unwrap();
        let (dir, mut w, mut buf) = fresh(root.path());
        let snap = root.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        for (_, seg) in segments::list(&dir).unwrap() {
            std::fs::hard_link(&seg, snap.join(seg.file_name().unwrap())).unwrap();
        }
        let (_, sealed) = &segments::list(&dir).unwrap()[0];
        // `touch` sets both times (an attribute change; `touch -m` alone is a write's).
        let f = std::fs::File::open(sealed).unwrap();
        let now = std::time::SystemTime::now();
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(now)
                .set_modified(now),
        )
        .unwrap();
        let r = w.write_batch(&[rec()], true, &mut buf).1;
        assert!(r.is_ok(), "{r:?}");
    }
    type Change = fn(&Path, &Path, &Path);
    let changes: [(&str, Change, &str); 4] = [
        (
            "sealed, through a link elsewhere",
            |root, dir, _| {
                let (_, sealed) = &segments::list(dir).unwrap()[1];
                let link = root.join("elsewhere");
                std::fs::hard_link(sealed, &link).unwrap();
                let f = OpenOptions::new().write(true).open(&link).unwrap();
                f.write_all_at(b"X", 2).unwrap();
            },
            "(a sealed segment) was written by another process",
        ),
        (
            "sealed, a descriptor kept open",
            |_, dir, _| {
                let (_, sealed) = &segments::list(dir).unwrap()[1];
                let f = OpenOptions::new().write(true).open(sealed).unwrap();
                f.write_all_at(b"X", 2).unwrap();
                // Not closed before the batch.
                std::mem::forget(f);
            },
            "(a sealed segment) was written by another process",
        ),
        (
            "being written, through a link elsewhere",
            |root, _, current| {
                let link = root.join("elsewhere");
                std::fs::hard_link(current, &link).unwrap();
                let f = OpenOptions::new().write(true).open(&link).unwrap();
                f.write_all_at(b"X", 2).unwrap();
            },
            "(the segment being written) was written by another process",
        ),
        (
            "a segment made",
            |_, dir, _| {
                std::fs::write(dir.join(segments::segment_name(99)), b"{}\n").unwrap();
            },
            "was made in the ledger directory by another process",
        ),
    ];
    for (name, change, said) in changes {
        let root = tempfile::tempdir().unwrap();
        let (dir, mut w, mut buf) = fresh(root.path());
        let current = w.seg_path.clone();
        change(root.path(), &dir, &current);
        let (n, r) = w.write_batch(&[rec()], true, &mut buf);
        let e = r.unwrap_err().to_string();
        assert!(e.contains(said), "{name}: {e}");
        assert_eq!(n, 0, "{name}: nothing of the batch is acknowledged");
    }
}

/// Black-box round 123a: under `umask 000` the ledger directory was made 777 and its
/// segments and `LOCK` 666. They are never writable by others, whatever the umask.
#[test]
fn the_ledger_is_never_made_writable_by_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ledger");
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let made = Writer::recover(&dir, 200);
    rustix::process::umask(old);
    let mut w = made.unwrap();
    let rec = || Pending {
        line: br#"{"type":"flush","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#
            .to_vec(),
        ack: None,
    };
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let wrote = w
        .write_batch(&[rec(), rec(), rec()], true, &mut Vec::new())
        .1;
    rustix::process::umask(old);
    assert!(wrote.is_ok(), "{wrote:?}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir) & 0o022, 0, "{:o}", mode(&dir));
    let mut files = vec![dir.join(LOCK_FILE), dir.join(head::HEAD_FILE)];
    files.extend(segments::list(&dir).unwrap().into_iter().map(|(_, p)| p));
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        assert_eq!(mode(&f) & 0o022, 0, "{}: {:o}", f.display(), mode(&f));
    }
}
