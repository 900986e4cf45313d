//! The append-only ledger: a directory of segment files (see [`segments`] for the line
//! format: one JSON record per line, framed with a sequence number and a checksum that
//! chains it to the line before), written by one thread with group commit (every batch
//! of waiting records is written and `fdatasync`ed once, then all of them are
//! acknowledged). A `sold` answer waits for its sale record's acknowledgement, so nothing
//! acknowledged to a seller is ever lost.
//!
//! It writes one type only: the core's versioned [`Record`], through the core's
//! [`LedgerSink`] interface.
//!
//! Fail-stop: the first write, fsync, rotation or open error makes the ledger unhealthy
//! for the life of the process. The writer never touches the files again (no fsync is
//! retried: after a failed fsync the kernel may have dropped the dirty pages, and a later
//! fsync that succeeds proves nothing), every later record is refused, `/readyz` answers
//! 503 with the reason and the seller handlers answer 503 before any buyer is contacted.
//! Only a restart, which verifies the ledger again, makes it healthy.
//!
//! Start-up ([`Ledger::open`]): the directory is created if it is missing and its parent
//! exists; it must be writable and not in use by another process (a `LOCK` file). Every
//! segment is scanned and the chain verified; a torn tail of the last segment (its last
//! line incomplete or failing its checksum) is truncated and logged; any other bad line
//! refuses the start with its segment and byte offset.
//!
//! Architecture invariant: records never carry PII; they name leads by id and carry only
//! prices, buyers, sellers and outcomes.

mod encode;
pub mod head;
pub mod segments;
mod watch;
mod writer;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::core::record::{FlushRecord, Head, LedgerSink, Record};
use crate::core::UnixMs;
use segments::Chain;
use writer::*;

/// Records waiting for the writer; past this, appenders wait (backpressure, never unbounded).
pub const QUEUE_RECORDS_MAX: usize = 65_536;
/// Most records written per fsync.
pub const BATCH_RECORDS_MAX: usize = 512;
/// The lock file in the ledger directory: one exchange writes a ledger at a time.
pub const LOCK_FILE: &str = "LOCK";
/// Records that nobody waits for (auction, post attempt, quote holds) are fsynced
/// within about this long even when no durable record comes to carry them: a timer
/// asks the writer for a sync when written lines are waiting for one.
pub const SYNC_DELAY_MS: u64 = 1_000;

/// How many ticks of the sync timer (every `SYNC_DELAY_MS / 2`) between two checks of the
/// segment when nothing is written (see `Writer::check_segment`).
const CHECK_EVERY_TICKS: u64 = 4;

/// While records come quickly (see [`BUSY_RECORDS`]), how long the writer waits after a
/// batch before it takes the next one, unless a durable record wakes it sooner: records
/// that nobody waits for then leave in batches of several, at one wake-up of the writer
/// thread (and one `write`) per batch rather than per record.
pub const LINGER_MS: u64 = 5;
/// Records written within one [`BUSY_WINDOW_MS`] from which on the writer lingers
/// ([`LINGER_MS`]) between batches; below it, every record wakes the writer at once.
pub const BUSY_RECORDS: usize = 200;
/// The window [`BUSY_RECORDS`] is counted over.
pub const BUSY_WINDOW_MS: u64 = 100;

/// One encoded record on its way to the writer (its JSON, not yet framed).
#[derive(Debug)]
pub struct Pending {
    line: Vec<u8>,
    ack: Option<oneshot::Sender<io::Result<()>>>,
}

/// Why the ledger stopped, once it has (set once, never cleared), and whether written
/// lines wait for an fsync.
#[derive(Debug, Default)]
struct Health {
    failure: OnceLock<String>,
    unsynced: AtomicBool,
    /// When the batch being written began ([`elapsed_ms`], at least 1), or 0 while the
    /// writer waits for records: a write or fsync that never returns (a frozen or hung
    /// filesystem) shows as a batch that began long ago ([`Ledger::stalled_for`]).
    busy_since: AtomicU64,
}

/// Milliseconds since the first call in this process (a monotonic clock of its own).
/// Real time, on purpose: it measures a system call on the writer's own thread (not a
/// tokio task), and a test's paused tokio clock must not make a write look stalled.
#[allow(clippy::disallowed_types)]
fn elapsed_ms() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// How long a batch may take before `/readyz` says the ledger is stalled
/// ([`Ledger::stalled_for`]): an fsync takes milliseconds; one still running after this
/// long is a filesystem that does not answer.
pub const STALL_MS: u64 = 5_000;

impl Health {
    fn fail(&self, why: String) {
        if self.failure.set(why.clone()).is_ok() {
            tracing::error!(
                reason = %why,
                "ledger failed: the exchange stops selling until it is restarted"
            );
        }
    }
}

/// How appenders wake the writer thread. A durable record always wakes it; a record
/// nobody waits for wakes it only while it sleeps with nothing to do (`asleep`): while
/// it lingers between busy batches, it takes such records when the linger ends.
#[derive(Debug)]
struct Wake {
    writer: std::thread::Thread,
    /// Set by the writer while it sleeps with nothing to do.
    asleep: Arc<AtomicBool>,
}

impl Wake {
    /// Called after a record was queued.
    fn queued(&self, durable: bool) {
        // Pairs with the writer's fence between setting `asleep` and looking at the
        // queue: either the writer sees this record, or this sees `asleep`.
        std::sync::atomic::fence(Ordering::SeqCst);
        if durable || self.asleep.load(Ordering::Relaxed) {
            self.writer.unpark();
        }
    }
}

impl Drop for Wake {
    /// The last handle is gone: the writer wakes, finds the queue closed, and ends.
    fn drop(&mut self) {
        self.writer.unpark();
    }
}

/// Handle to the ledger writer. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Pending>,
    health: Arc<Health>,
    dir: Arc<PathBuf>,
    /// The directory the writer locked, open (a second descriptor of it): files beside the
    /// ledger are opened through it ([`Ledger::locked_dir`]), never by `dir`'s path, which
    /// a rename or a symlink swap may point elsewhere.
    locked: Arc<File>,
    /// After `tx`: dropped after it, so the writer it wakes finds the queue closed.
    wake: Arc<Wake>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("dir", &self.dir).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger writer has stopped")]
    Stopped,
    #[error("the ledger's queue is full")]
    Full,
    #[error("ledger write failed: {0}")]
    Io(#[from] io::Error),
    #[error("ledger record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The ledger failed earlier (fail-stop): nothing more is written until a restart.
    #[error("the ledger failed and accepts no records until a restart: {0}")]
    Failed(String),
}

impl Ledger {
    /// Opens the ledger directory `dir` (recovering it: see the module documentation)
    /// and starts the writer thread, which rotates to a new segment before one would grow
    /// past `segment_bytes_max`. `on_batch` is told, at every fsync, the records it made
    /// durable: those written since the previous one (0 for a sync with nothing new, the
    /// idle check's). The thread ends when every handle is dropped, after writing what it
    /// was given. The error says, in one line, what is wrong and where.
    pub fn open(
        dir: &Path,
        segment_bytes_max: u64,
        on_batch: impl Fn(usize) + Send + 'static,
    ) -> io::Result<Ledger> {
        let w = Writer::recover(dir, segment_bytes_max)?;
        Ledger::start(w, on_batch)
    }

    fn start(w: Writer, on_batch: impl Fn(usize) + Send + 'static) -> io::Result<Ledger> {
        let (tx, rx) = mpsc::channel(QUEUE_RECORDS_MAX);
        let health = Arc::new(Health::default());
        let h = health.clone();
        let dir = Arc::new(w.dir.clone());
        let locked = Arc::new(w._dir_lock.try_clone()?);
        let asleep = Arc::new(AtomicBool::new(false));
        let writer_asleep = asleep.clone();
        let writer = std::thread::Builder::new()
            .name("pingpost-ledger".into())
            .spawn(move || {
                raise_priority();
                run(w, rx, h, &writer_asleep, on_batch)
            })?;
        let writer = writer.thread().clone();
        let wake = Arc::new(Wake {
            writer: writer.clone(),
            asleep,
        });
        // The sync timer holds only a weak sender: it ends once every handle is gone, so
        // it never keeps the writer alive.
        let weak = tx.downgrade();
        let h = health.clone();
        std::thread::Builder::new()
            .name("pingpost-ledger-sync".into())
            .spawn(move || {
                let mut ticks: u64 = 0;
                loop {
                    std::thread::sleep(Duration::from_millis(SYNC_DELAY_MS / 2));
                    let Some(tx) = weak.upgrade() else {
                        return;
                    };
                    ticks = ticks.wrapping_add(1);
                    // Every `CHECK_EVERY_TICKS` the segment is checked (a sync of nothing new)
                    // even when idle: a directory removed while nothing is written fails the
                    // ledger, and `/readyz`, within seconds (black-box round 59b).
                    let check = ticks.is_multiple_of(CHECK_EVERY_TICKS);
                    // After a failure only the checks: they keep `HEAD` naming the last
                    // record synced (black-box round 96a).
                    let failed = h.failure.get().is_some();
                    if check || (h.unsynced.load(Ordering::Relaxed) && !failed) {
                        // A full queue will carry a durable record soon enough.
                        if tx
                            .try_send(Pending {
                                line: Vec::new(),
                                ack: None,
                            })
                            .is_ok()
                        {
                            writer.unpark();
                        }
                    }
                }
            })?;
        Ok(Ledger {
            tx,
            health,
            dir,
            locked,
            wake,
        })
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path that names the directory this ledger locked, whatever its own path names
    /// now (`/proc/self/fd/N`, Linux): what files kept beside the ledger are opened
    /// through (black-box round 40: opened by path, the fingerprint key could be made in,
    /// or read from, another directory while a symlink to the ledger was swapped at
    /// start).
    pub fn locked_dir(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.locked.as_raw_fd()))
    }

    /// Is the writer alive and has nothing ever failed?
    pub fn is_healthy(&self) -> bool {
        self.failure().is_none()
    }

    /// How long the batch being written has been running, if the writer is writing one:
    /// past [`STALL_MS`], the filesystem is not answering (frozen, hung) and every sale
    /// waits for it. Not a failure: it ends when the write returns.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.health.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(elapsed_ms().saturating_sub(since))),
        }
    }

    /// Why the ledger accepts no records, if it does not: the first write, fsync or
    /// rotation error (kept for the life of the process), or the writer having stopped.
    pub fn failure(&self) -> Option<String> {
        if let Some(why) = self.health.failure.get() {
            return Some(why.clone());
        }
        self.tx
            .is_closed()
            .then(|| "the ledger writer has stopped".to_string())
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
            start: false,
            key_id: None,
        }))
        .await
    }

    /// Writes the `flush` that marks a start (`start`: the run before it ended here,
    /// shut down or not), before any record of the new run, and waits until it is on
    /// disk (at most [`START_MARK_WAIT_MS`]): a ledger beside its fingerprint key then
    /// always has a record, so one with none had its records removed (black-box round
    /// 94b: the first start's mark was only queued, and a tool run at once, or a crash
    /// before it was written, found the key and no record). `key_id`: the fingerprint
    /// key's id (see [`FlushRecord::key_id`]). Blocks the calling thread (the writer is a
    /// thread of its own), once, at the start.
    pub fn mark_start(
        &self,
        generation: u64,
        now: UnixMs,
        key_id: &str,
    ) -> Result<(), LedgerError> {
        let mark = Record::Flush(FlushRecord {
            head: Head::new(generation, now),
            start: true,
            key_id: Some(key_id),
        });
        self.write_on_this_thread(&mark, START_MARK_WAIT_MS, "the start's record")
    }

    /// [`write`](Ledger::write) from a thread that is not the runtime's (the learning
    /// thread, a start): blocks the calling thread, at most `max_ms`, until the record is
    /// written (on disk, for a durable one). A full queue is waited on here too, not
    /// handed to a tokio task (there may be no runtime on this thread). `what`: the
    /// record, as a time-out's error names it.
    pub fn write_on_this_thread(
        &self,
        record: &Record<'_>,
        max_ms: u64,
        what: &str,
    ) -> Result<(), LedgerError> {
        let until = elapsed_ms().saturating_add(max_ms);
        let timed_out = || {
            LedgerError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                if max_ms.is_multiple_of(1000) {
                    format!("{what} was not on disk within {} s", max_ms / 1000)
                } else {
                    format!("{what} was not on disk within {max_ms} ms")
                },
            ))
        };
        let done = match LedgerSink::append(self, record) {
            Receipt::Failed(e) => return Err(e),
            Receipt::Queued => return Ok(()),
            Receipt::Durable(done) => Some(done),
            Receipt::Full(tx, mut pending, done, writer) => {
                // The writer frees room in batches: try again every millisecond.
                loop {
                    match tx.try_send(pending) {
                        Ok(()) => break,
                        Err(mpsc::error::TrySendError::Full(back)) => {
                            if elapsed_ms() >= until {
                                return Err(timed_out());
                            }
                            pending = back;
                            writer.unpark();
                            std::thread::park_timeout(Duration::from_millis(1));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err(LedgerError::Stopped)
                        }
                    }
                }
                writer.unpark();
                done
            }
        };
        let Some(done) = done else { return Ok(()) };
        let left = until.saturating_sub(elapsed_ms());
        match wait_on_this_thread(done, left) {
            Some(Ok(written)) => Ok(written?),
            Some(Err(_)) => Err(LedgerError::Stopped),
            None => Err(timed_out()),
        }
    }
}

/// Waits on the calling thread, at most `max_ms`, for `rx` to be answered (by the writer,
/// a thread of its own): the thread is parked and woken by the answer, not polled.
/// `None` when the time ran out.
fn wait_on_this_thread<T>(
    mut rx: oneshot::Receiver<T>,
    max_ms: u64,
) -> Option<Result<T, oneshot::error::RecvError>> {
    use std::future::Future;
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let until = elapsed_ms().saturating_add(max_ms);
    loop {
        if let std::task::Poll::Ready(r) = std::pin::Pin::new(&mut rx).poll(&mut cx) {
            return Some(r);
        }
        let now = elapsed_ms();
        if now >= until {
            return None;
        }
        std::thread::park_timeout(Duration::from_millis(until - now));
    }
}

/// How long a start waits for its `flush` record to be on disk ([`Ledger::mark_start`]).
pub const START_MARK_WAIT_MS: u64 = 30_000;

/// What [`Ledger`]'s [`LedgerSink::append`] hands back: wait on it.
#[derive(Debug)]
pub enum Receipt {
    /// Queued; nothing to wait for.
    Queued,
    /// Queued; resolves once on disk.
    Durable(oneshot::Receiver<io::Result<()>>),
    /// The queue was full: the record waits for room (backpressure, never unbounded),
    /// then wakes the writer.
    Full(
        mpsc::Sender<Pending>,
        Pending,
        Option<oneshot::Receiver<io::Result<()>>>,
        std::thread::Thread,
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
            Receipt::Full(tx, pending, done, writer) => {
                tx.send(pending).await.map_err(|_| LedgerError::Stopped)?;
                writer.unpark();
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
        if let Some(why) = self.health.failure.get() {
            return Receipt::Failed(LedgerError::Failed(why.clone()));
        }
        // Sized for the record up front: grown from empty, an auction's line was
        // reallocated about eight times.
        let mut line = Vec::with_capacity(line_capacity(record));
        if !encode::encode(record, &mut line) {
            if let Err(e) = serde_json::to_writer(&mut line, record) {
                return Receipt::Failed(LedgerError::Encode(e));
            }
        }
        let (ack, done) = if record.is_durable() {
            let (a, d) = oneshot::channel();
            (Some(a), Some(d))
        } else {
            (None, None)
        };
        match self.tx.try_send(Pending { line, ack }) {
            Ok(()) => {
                self.wake.queued(done.is_some());
                match done {
                    Some(d) => Receipt::Durable(d),
                    None => Receipt::Queued,
                }
            }
            Err(mpsc::error::TrySendError::Full(p)) => {
                Receipt::Full(self.tx.clone(), p, done, self.wake.writer.clone())
            }
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
        Record::QuoteOpened(q) => {
            (384 + 128 * q.ranked.len() + 32 * q.lead.0.len()).min(LINE_CAPACITY_MAX)
        }
        _ => 256,
    }
}

/// Whether `dir` holds a record (a segment with a whole line). A directory or segment
/// that exists but cannot be read counts as holding one: what it holds is not known, and
/// the reading that follows names the error (black-box round 176a: an unreadable only
/// segment was told as "its records were removed", with advice that discards the
/// de-duplication history).
pub fn has_records(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        Ok(entries) => entries.filter_map(Result::ok).any(|e| {
            if e.file_name()
                .to_str()
                .and_then(segments::segment_no)
                .is_none()
            {
                return false;
            }
            match e.metadata() {
                // Not a regular file (a directory, a FIFO, which must not be opened): the
                // reading refuses it, naming it.
                Ok(m) if !m.is_file() => true,
                Ok(m) => m.len() > 0 && holds_a_whole_line(&e.path()),
                Err(err) => err.kind() != std::io::ErrorKind::NotFound,
            }
        }),
    }
}

/// Whether the file at `path` has a line ending with a newline that holds more than
/// white space. Reads up to its first such line (a segment is bounded by
/// `server.ledger_segment_bytes_max`), in blocks; a file that cannot be opened (but is
/// there) may hold one, as far as anyone can tell.
fn holds_a_whole_line(path: &Path) -> bool {
    use std::io::Read;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut content = false;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return false,
            // Unreadable: it may hold one.
            Err(_) => return true,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            match b {
                b'\n' if content => return true,
                b'\n' => {}
                b' ' | b'\t' | b'\r' => {}
                _ => content = true,
            }
        }
    }
}

/// Why `dir` is a ledger whose segments are all gone, if it is: no segment, but the lead
/// fingerprint key that the first start makes beside the first segment (black-box round
/// 60b: the live segment deleted, a restart began an empty ledger without a word, and
/// keyed retries of leads answered `sold` were sold again).
pub fn segments_lost(dir: &Path) -> Option<String> {
    let key = dir.join(crate::fingerprint::KEY_FILE);
    // No segment, or only empty ones (black-box round 62c: an empty first segment put in
    // place of the removed ones passed). Every start records a `flush` before it serves,
    // after the key is made, so a ledger with the key has a record.
    // A key that is a symlink to nothing is a key too (the start refuses it; black-box
    // round 94b: the tools took it for none and called the emptied ledger clean). A
    // `HEAD` that still names record 0 says no record was ever synced here: a first start
    // cut short between making the key and writing its mark (black-box round 95a: a crash
    // then left a ledger refused as "its records were removed", and `verify` said so of a
    // first start still under way).
    // Only as a first start leaves it: its one segment, the first (black-box round 96a:
    // eleven emptied segments beside a `HEAD` set to 0 were taken for one).
    let never_synced = || {
        head::read(dir) == Ok(Some(0))
            && segments::list(dir).is_ok_and(|s| matches!(s.as_slice(), [(1, _)]))
    };
    (!has_records(dir) && std::fs::symlink_metadata(&key).is_ok() && !never_synced()).then(|| {
        format!(
            "ledger directory {} has no record but holds {}: its records were removed; restore them from a backup (an exchange started on it would sell again what they record), or move {} and {} aside to begin an empty ledger",
            crate::cli_out::Shown(dir),
            crate::fingerprint::KEY_FILE,
            crate::fingerprint::KEY_FILE,
            head::HEAD_FILE
        )
    })
}

#[cfg(test)]
mod tests;

/// What would stop a start from opening `dir` as its ledger directory, for
/// `--check-config`, read without writing anything (black-box round 116b: a path that is
/// a file, or whose parent is missing, passed the check and stopped the start).
pub fn dir_problem(dir: &std::path::Path) -> Option<String> {
    let shown = crate::cli_out::Shown(dir);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some(format!(
            "{shown} is not a directory (server.ledger_path names a directory of segment files; move an old single-file ledger aside)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                return Some(format!("{shown} is a symlink to a path that does not exist"));
            }
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => std::path::Path::new("."),
            };
            (!parent.is_dir()).then(|| {
                format!(
                    "{shown} does not exist, nor does its parent {} (a start makes the directory, not its parents)",
                    crate::cli_out::Shown(parent)
                )
            })
        }
        Err(e) => Some(format!("{shown}: {e}")),
    }
}

/// What in an existing ledger directory `dir` would stop a start, for `--check-config`,
/// found without writing anything and without reading the segments (black-box round
/// 117a: a ledger locked by a running exchange, a `HEAD` that is not one this exchange
/// writes, and a `FINGERPRINT_KEY` missing or unreadable passed the check, and the start
/// was refused). Empty when `dir` does not exist or is not a directory
/// ([`dir_problem`] says that). `pingpost ledger verify` checks the records themselves.
pub fn held_problems(dir: &std::path::Path) -> Vec<String> {
    let mut problems = Vec::new();
    if !dir.is_dir() {
        return problems;
    }
    let shown = crate::cli_out::Shown(dir);
    // The directory's own lock, as a start takes it (shared here, and let go at once).
    if let Ok(d) = std::fs::File::open(dir) {
        if let Err(std::fs::TryLockError::WouldBlock) = d.try_lock_shared() {
            problems.push(format!(
                "ledger directory {shown} is in use by another process (another exchange running on it?)"
            ));
        }
    }
    if let Err(why) = head::read(dir) {
        problems.push(why);
    }
    match crate::fingerprint::Fingerprinter::load_in(dir, dir) {
        Err(e) => problems.push(e.to_string()),
        Ok(f) if f.made() => {
            if has_records(dir) {
                problems.push(format!(
                    "{} is missing beside a ledger that has records: if its runs used a key, a start refuses the directory (`pingpost ledger verify` says; restore the key, or start once with --new-fingerprint-key)",
                    crate::cli_out::Shown(&dir.join(crate::fingerprint::KEY_FILE))
                ));
            }
        }
        Ok(_) => {}
    }
    problems
}
