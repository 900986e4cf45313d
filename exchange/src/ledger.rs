//! The append-only ledger: one JSON line per event, written by one thread with group
//! commit (every batch of waiting records is written and `fdatasync`ed once, then all of
//! them are acknowledged). A `sold` answer waits for its sale record's acknowledgement,
//! so nothing acknowledged to a seller is ever lost.
//!
//! It writes one type only: the core's versioned [`Record`], through the core's
//! [`LedgerSink`] interface.
//!
//! Architecture invariant: records never carry PII; they name leads by id and carry only
//! prices, buyers, sellers and outcomes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::core::record::{FlushRecord, Head, LedgerSink, Record};
use crate::core::UnixMs;

/// Records waiting for the writer; past this, appenders wait (backpressure, never unbounded).
pub const QUEUE_RECORDS_MAX: usize = 65_536;
/// Most records written per fsync.
pub const BATCH_RECORDS_MAX: usize = 512;

/// One encoded record on its way to the writer.
#[derive(Debug)]
pub struct Pending {
    line: Vec<u8>,
    ack: Option<oneshot::Sender<io::Result<()>>>,
}

/// Handle to the ledger writer. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    healthy: Arc<AtomicBool>,
    path: Arc<PathBuf>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger writer has stopped")]
    Stopped,
    #[error("ledger write failed: {0}")]
    Io(#[from] io::Error),
    #[error("ledger record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl Ledger {
    /// Opens (creating if needed) the file for appending and starts the writer thread.
    /// The thread ends when every handle is dropped, after writing what it was given.
    pub fn open(path: &Path, on_batch: impl Fn(usize) + Send + 'static) -> io::Result<Ledger> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = mpsc::channel(QUEUE_RECORDS_MAX);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        std::thread::Builder::new()
            .name("pingpost-ledger".into())
            .spawn(move || writer(file, rx, h, on_batch))?;
        Ok(Ledger {
            tx,
            healthy,
            path: Arc::new(path.to_path_buf()),
        })
    }

    /// Is the writer alive and its last write successful?
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// Appends a record and waits until it is written: on disk (`fdatasync`) for a durable
    /// record ([`Record::is_durable`]), queued in order for any other (it becomes durable
    /// with the next durable one). Waits only if the queue is full.
    pub async fn write(&self, record: &Record<'_>) -> Result<(), LedgerError> {
        LedgerSink::append(self, record).wait().await
    }

    /// Makes every record appended so far durable (writes a durable `flush` record).
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as UnixMs);
        self.flush_at(0, now).await
    }

    /// [`flush`](Ledger::flush) with the record's generation and time given.
    pub async fn flush_at(&self, generation: u64, now: UnixMs) -> Result<(), LedgerError> {
        self.write(&Record::Flush(FlushRecord {
            head: Head::new(generation, now),
        }))
        .await
    }
}

/// What [`Ledger`]'s [`LedgerSink::append`] hands back: wait on it.
#[derive(Debug)]
pub enum Receipt {
    /// Queued; nothing to wait for.
    Queued,
    /// Queued; resolves once on disk.
    Durable(oneshot::Receiver<io::Result<()>>),
    /// The queue was full: the record waits for room (backpressure, never unbounded).
    Full(
        mpsc::Sender<Pending>,
        Pending,
        Option<oneshot::Receiver<io::Result<()>>>,
    ),
    Failed(LedgerError),
}

impl Receipt {
    /// Waits until the record is written (durable ones: on disk).
    pub async fn wait(self) -> Result<(), LedgerError> {
        let done = match self {
            Receipt::Queued => return Ok(()),
            Receipt::Failed(e) => return Err(e),
            Receipt::Durable(done) => done,
            Receipt::Full(tx, pending, done) => {
                tx.send(pending).await.map_err(|_| LedgerError::Stopped)?;
                match done {
                    None => return Ok(()),
                    Some(done) => done,
                }
            }
        };
        done.await.map_err(|_| LedgerError::Stopped)??;
        Ok(())
    }
}

impl LedgerSink for Ledger {
    type Receipt = Receipt;

    fn append(&self, record: &Record<'_>) -> Receipt {
        // Sized for the record up front: grown from empty, an auction's line was
        // reallocated about eight times.
        let mut line = Vec::with_capacity(line_capacity(record));
        if let Err(e) = serde_json::to_writer(&mut line, record) {
            return Receipt::Failed(LedgerError::Encode(e));
        }
        line.push(b'\n');
        let (ack, done) = if record.is_durable() {
            let (a, d) = oneshot::channel();
            (Some(a), Some(d))
        } else {
            (None, None)
        };
        match self.tx.try_send(Pending { line, ack }) {
            Ok(()) => match done {
                Some(d) => Receipt::Durable(d),
                None => Receipt::Queued,
            },
            Err(mpsc::error::TrySendError::Full(p)) => Receipt::Full(self.tx.clone(), p, done),
            Err(mpsc::error::TrySendError::Closed(_)) => Receipt::Failed(LedgerError::Stopped),
        }
    }
}

/// Bytes to reserve for a record's line: enough for the usual record, so serializing it
/// does not grow the buffer (an auction: the head and ids, then one line per buyer).
fn line_capacity(record: &Record<'_>) -> usize {
    const LINE_CAPACITY_MAX: usize = 64 * 1024;
    match record {
        Record::Auction(a) => (384 + 128 * a.buyers.len()).min(LINE_CAPACITY_MAX),
        _ => 256,
    }
}

/// Writes everything that is waiting in one `write`, and `fdatasync`s only when a record
/// in the batch waits for durability: a sync makes every earlier line durable too, so
/// plain records ride along with the next durable one instead of costing a sync each.
fn writer(
    mut file: File,
    mut rx: mpsc::Receiver<Pending>,
    healthy: Arc<AtomicBool>,
    on_batch: impl Fn(usize),
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH_RECORDS_MAX);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < BATCH_RECORDS_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        buf.clear();
        let mut durable = false;
        for p in &batch {
            buf.extend_from_slice(&p.line);
            durable |= p.ack.is_some();
        }
        let mut result = file.write_all(&buf);
        if durable && result.is_ok() {
            result = file.sync_data();
            on_batch(batch.len());
        }
        healthy.store(result.is_ok(), Ordering::Relaxed);
        for p in batch.drain(..) {
            if let Some(ack) = p.ack {
                let _ = ack.send(match &result {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
        }
    }
    // Every sender is gone: make the tail durable before the thread ends.
    let _ = file.sync_data();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::QuoteHoldRecord;

    #[tokio::test]
    async fn durable_records_are_on_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        let ledger = Ledger::open(&path, |_| {}).unwrap();
        let mut waits = Vec::new();
        for i in 0..100 {
            let l = ledger.clone();
            waits.push(tokio::spawn(async move { l.flush_at(i, 0).await }));
        }
        for w in waits {
            w.await.unwrap().unwrap();
        }
        let plain = Record::QuoteExpired(QuoteHoldRecord {
            head: Head::new(0, 0),
            ping_id: None,
            buyer: "b",
            price_micros: 1,
            reason: None,
        });
        assert!(matches!(
            LedgerSink::append(&ledger, &plain),
            Receipt::Queued
        ));
        ledger.flush_at(1_000, 0).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 102);
        assert_eq!(lines[100]["type"], "quote_expired");
        assert_eq!(lines[101]["generation"], 1_000);
        assert!(ledger.is_healthy());
    }
}
