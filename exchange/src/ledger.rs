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
pub const LINGER_MS: u64 = 2;
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
        match LedgerSink::append(
            self,
            &Record::Flush(FlushRecord {
                head: Head::new(generation, now),
                start: true,
                key_id: Some(key_id),
            }),
        ) {
            Receipt::Failed(e) => Err(e),
            // Not queued (never at a start: nothing was appended before it).
            Receipt::Full(..) => Err(LedgerError::Full),
            Receipt::Queued => Ok(()),
            Receipt::Durable(done) => match wait_on_this_thread(done, START_MARK_WAIT_MS) {
                Some(Ok(written)) => Ok(written?),
                Some(Err(_)) => Err(LedgerError::Stopped),
                None => Err(LedgerError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the start's record was not on disk within {} s",
                        START_MARK_WAIT_MS / 1000
                    ),
                ))),
            },
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

/// The writer thread's side: the segment being appended to and where the chain stands.
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    /// Holds the `LOCK` file's lock while the writer lives.
    _lock: File,
    /// Holds the lock on the directory itself (see [`Writer::recover`]).
    _dir_lock: File,
    segment_bytes_max: u64,
    seg_no: u32,
    seg_path: PathBuf,
    file: File,
    seg_len: u64,
    chain: Chain,
    /// A file descriptor kept in reserve (`/dev/null`) and given up just before a new
    /// segment is created, so a process out of descriptors (idle connections held up to
    /// the open-file limit) can still rotate: a rotation refused for `EMFILE` stopped the
    /// ledger for the life of the process (black-box round 58b). `None` while it could
    /// not be opened again (retried at every batch).
    spare: Option<File>,
    /// The `HEAD` file (see [`head`]), open for the writer's life.
    head: File,
    /// The sequence number `head` holds.
    head_seq: u64,
    /// The last warning that `HEAD` could not be written after a failure, so the check
    /// every 2 s says it once, not every time (black-box round 99c: the same warning
    /// every 2 s for a ledger directory that had been removed).
    head_warned: Option<String>,
}

/// Makes the ledger's `HEAD` file hold `seq`, whole and synced ([`head::create_in`], in
/// the directory open as `locked`): `said` is what it held (`None`: no file). A ledger
/// with records and no head is one from before heads, or one whose head was removed:
/// said once, in the log.
fn open_head(
    dir: &Path,
    locked: &File,
    said: Option<u64>,
    seq: u64,
    has_segments: bool,
) -> io::Result<File> {
    let path = dir.join(head::HEAD_FILE);
    let file = head::create_in(locked, seq).map_err(|e| ctx("writing", &path, e))?;
    if said.is_none() && has_segments {
        tracing::warn!(
            head = %path.display(),
            last_seq = seq,
            "ledger: no head was found (a ledger from before heads, or its HEAD file was removed), so this start could not check that no record was removed from its end; it holds one now"
        );
    }
    Ok(file)
}

/// Opens the spare descriptor (see [`Writer::spare`]).
fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// An I/O error with what was being done to which file, for the one-line reason.
fn ctx(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Whether the ledger directory `dir` holds any record: a segment file with a whole
/// line in it (one that ends with its newline and holds more than white space). Empty
/// segments, segments holding only a line cut short (black-box round 94b: a fragment
/// with no newline, where every record had been, passed as a torn last write) and torn
/// tails kept aside hold none.
pub fn has_records(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            e.file_name()
                .to_str()
                .and_then(segments::segment_no)
                .is_some()
                && e.metadata().is_ok_and(|m| m.len() > 0)
                && holds_a_whole_line(&e.path())
        })
    })
}

/// Whether the file at `path` has a line ending with a newline that holds more than
/// white space. Reads up to its first such line (a segment is bounded by
/// `server.ledger_segment_bytes_max`), in blocks; an unreadable file holds none.
fn holds_a_whole_line(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut content = false;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) | Err(_) => return false,
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
            dir.display(),
            crate::fingerprint::KEY_FILE,
            crate::fingerprint::KEY_FILE,
            head::HEAD_FILE
        )
    })
}

/// `fsync`s a directory, so a file created or removed in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ctx("syncing the directory", dir, e))
}

/// Makes sure `dir` is a writable directory, creating it when only it is missing.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(other(format!(
                "ledger directory {shown} is not a directory (server.ledger_path names a \
                 directory of segment files; move an old single-file ledger aside)"
            )))
        }
        // A symlink that leads nowhere: creating the directory would fail with "File
        // exists" (black-box round 49); say what it is.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                && std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            return Err(other(format!(
                "ledger directory {shown} is a symlink to {}, which does not exist",
                std::fs::read_link(dir).map_or_else(|_| "?".into(), |t| t.display().to_string())
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                return Err(other(format!(
                    "ledger directory {shown} does not exist, nor does its parent {}",
                    parent.display()
                )));
            }
            std::fs::create_dir(dir)
                .map_err(|e| other(format!("cannot create the ledger directory {shown}: {e}")))?;
            sync_dir(parent)?;
            tracing::info!(dir = %shown, "ledger directory created");
        }
        Err(e) => return Err(other(format!("ledger directory {shown}: {e}"))),
    }
    // Writable: a file can be created (and removed) in it, as rotation will.
    let probe = dir.join(".write-probe");
    File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| other(format!("ledger directory {shown} is not writable: {e}")))
}

impl Writer {
    /// Opens `dir` for appending after verifying every segment and truncating a torn
    /// tail of the last one (see the module documentation).
    fn recover(dir: &Path, segment_bytes_max: u64) -> io::Result<Writer> {
        prepare_dir(dir)?;
        // The directory itself is locked first: the `LOCK` file's lock holds only while
        // that file is the one in the directory, and a `LOCK` deleted as stale (it stays,
        // empty, after every stop) let a second exchange write the same ledger, each
        // chaining its own records (black-box round 38).
        let dir_lock = File::open(dir).map_err(|e| ctx("opening", dir, e))?;
        match dir_lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(other(format!(
                "ledger directory {} is in use by another process (it holds the directory's lock)",
                dir.display()
            )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ctx("locking", dir, e)),
        }
        let lock_path = dir.join(LOCK_FILE);
        // Never through a symlink (black-box round 63a: one made a file outside the ledger).
        let lock = {
            use std::os::unix::fs::OpenOptionsExt as _;
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                // Nor blocking on a FIFO (round 64a: the start hung, silent).
                .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
                .open(&lock_path)
        }
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => other(format!(
                "{} is a symlink; the exchange makes its own {LOCK_FILE} there (remove the link)",
                lock_path.display()
            )),
            Some(code)
                if code == rustix::io::Errno::NXIO.raw_os_error()
                    || code == rustix::io::Errno::ISDIR.raw_os_error() =>
            {
                other(format!(
                    "{} is not a regular file; the exchange makes its own {LOCK_FILE} there (remove it)",
                    lock_path.display()
                ))
            }
            _ => ctx("opening", &lock_path, e),
        })?;
        if !lock.metadata().is_ok_and(|m| m.is_file()) {
            return Err(other(format!(
                "{} is not a regular file; the exchange makes its own {LOCK_FILE} there (remove it)",
                lock_path.display()
            )));
        }
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(other(format!(
                    "ledger directory {} is in use by another process (it holds {LOCK_FILE})",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ctx("locking", &lock_path, e)),
        }
        if let Some(why) = segments_lost(dir) {
            return Err(other(why));
        }
        // Read before the segments (as `verify` does): what it names was synced before.
        let head_said = head::read(dir).map_err(other)?;
        let segs = segments::list(dir)
            .map_err(|e| other(format!("ledger directory {}: {e}", dir.display())))?;
        let mut chain = Chain::START;
        let mut torn: Option<(PathBuf, segments::Problem, u64)> = None;
        let mut records = 0u64;
        let mut last_len = 0u64;
        for (i, (_, path)) in segs.iter().enumerate() {
            let s = segments::scan(path, chain, None).map_err(|e| ctx("reading", path, e))?;
            let last = i + 1 == segs.len();
            last_len = s.len;
            if let Some(p) = s.problem {
                // Only a last line cut short (no `\n`) is a torn write: a whole line that
                // does not verify was changed after it was written, and may be a sale
                // that was acknowledged, so it is never removed here.
                let torn_write = last
                    && p.at_tail
                    && matches!(
                        p.what,
                        segments::LineProblem::Incomplete | segments::LineProblem::NoNewline
                    );
                if !torn_write {
                    let sealed = if last { "" } else { " (a sealed segment)" };
                    return Err(other(format!(
                        "ledger is corrupt: {p}{sealed}; the exchange does not start on a \
                         corrupt ledger (check it with `pingpost ledger verify`): restore the \
                         segment from a backup, or, knowingly, move it and the segments after \
                         it aside (docs/LEDGER.md, start-up recovery)"
                    )));
                }
                last_len = if p.what == segments::LineProblem::NoNewline {
                    // Completed below: the newline is added.
                    s.len + 1
                } else {
                    p.offset
                };
                torn = Some((path.clone(), p, s.len));
            }
            chain = s.chain;
            records += s.records;
        }
        // Records the head says were synced and no segment holds: refused before anything
        // is changed (a torn tail is cut only after this).
        if let Some(why) = head::removed(dir, head_said, chain.seq) {
            return Err(other(why));
        }
        if let Some((path, p, _)) = torn
            .as_ref()
            .filter(|(_, p, _)| p.what == segments::LineProblem::NoNewline)
        {
            // A whole record that lacks only its newline (whatever took it off, an editor
            // or a shell's `$(cat)`): completed, never cut (black-box round 64a: cut, a sale
            // answered `sold` left the ledger).
            let file = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| ctx("opening", path, e))?;
            (&file)
                .write_all(b"\n")
                .and_then(|()| file.sync_all())
                .map_err(|e| ctx("completing the last line of", path, e))?;
            tracing::warn!(
                segment = %path.display(),
                offset = p.offset,
                "ledger: the last record was whole but had no newline at the end: the newline was added"
            );
            torn = None;
        }
        if let Some((path, p, len)) = torn {
            let path = &path;
            // The removed bytes are kept beside the ledger, for whoever looks into it.
            let kept = keep_torn_tail(dir, path, p.offset)
                .map_err(|e| ctx("keeping the torn tail of", path, e))?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| ctx("opening", path, e))?;
            file.set_len(p.offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| ctx("truncating", path, e))?;
            tracing::warn!(
                segment = %path.display(),
                offset = p.offset,
                removed_bytes = len - p.offset,
                kept_in = %kept.display(),
                problem = %p.what,
                "ledger: torn tail truncated (a write the crash or failure cut short \
                 before its newline; a durable record is acknowledged only once written \
                 whole, so this one never was)"
            );
        }
        let head_file = open_head(dir, &dir_lock, head_said, chain.seq, records > 0)?;
        let (seg_no, seg_path, file) = match segs.last() {
            Some((no, path)) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|e| ctx("opening", path, e))?;
                (*no, path.clone(), file)
            }
            None => {
                let path = dir.join(segments::segment_name(1));
                let file = create_segment(&path)?;
                sync_dir(dir)?;
                last_len = 0;
                (1, path, file)
            }
        };
        tracing::info!(
            dir = %dir.display(),
            segments = segs.len().max(1),
            records,
            last_seq = chain.seq,
            "ledger verified"
        );
        Ok(Writer {
            dir: dir.to_path_buf(),
            _lock: lock,
            _dir_lock: dir_lock,
            segment_bytes_max,
            seg_no,
            seg_path,
            file,
            seg_len: last_len,
            chain,
            spare: open_spare(),
            head: head_file,
            head_seq: chain.seq,
            head_warned: None,
        })
    }

    /// Writes the batch's records in order, rotating before a segment would pass its
    /// limit (a segment is fsynced when it is sealed), and fsyncs at the end when a record
    /// waits for it (`sync`). Returns how many leading records are known to be on disk
    /// (all of them when the result is `Ok` and `sync` was asked) and the first error.
    /// A batch that fails (the ledger then fails: fail-stop) leaves `HEAD` naming the last
    /// record this writer synced ([`Writer::head_after_failure`]).
    fn write_batch(
        &mut self,
        batch: &[Pending],
        sync: bool,
        buf: &mut Vec<u8>,
    ) -> (usize, io::Result<()>) {
        let (on_disk, result) = self.write_batch_or_fail(batch, sync, buf);
        if result.is_err() {
            self.head_after_failure();
        }
        (on_disk, result)
    }

    /// After a failed write: makes `HEAD` name the last record this writer synced and
    /// named there, whatever another process put in its place, so the next start and
    /// `verify` refuse a ledger that lacks it (black-box round 94c: a backup's older
    /// segment and `HEAD` copied in while the exchange ran failed the ledger, the older
    /// `HEAD` stayed, and the restart took the older copy for the whole ledger). Every
    /// record it names was acknowledged after its sync, and a failed batch is cut back only
    /// to where its own records begin, so on an untouched ledger it is no change. Best
    /// effort: the ledger has failed already.
    fn head_after_failure(&mut self) {
        if self.head_seq == 0 {
            return;
        }
        drop(self.spare.take());
        // A new file renamed into place, or, where none can be made (a read-only
        // directory, a full disk), the file there written over (black-box round 97a).
        match head::create_in(&self._dir_lock, self.head_seq).or_else(|made| {
            head::overwrite_in(&self._dir_lock, self.head_seq).map_err(|over| (made, over))
        }) {
            Ok(file) => {
                self.head = file;
                self.head_warned = None;
            }
            Err((made, over)) => {
                let said = format!("{made} / {over}");
                if self.head_warned.as_deref() != Some(said.as_str()) {
                    tracing::warn!(
                        head = %self.dir.join(head::HEAD_FILE).display(),
                        last_seq = self.head_seq,
                        error = %made,
                        in_place = %over,
                        "ledger: HEAD could not be written after the ledger failed (said once while the reason stays the same)"
                    );
                    self.head_warned = Some(said);
                }
            }
        }
        self.spare = open_spare();
    }

    /// [`Writer::head_after_failure`] when the `HEAD` file no longer names the last record
    /// this writer synced (read by its path: another process may have replaced it).
    fn head_after_failure_if_changed(&mut self) {
        if self.head_seq != 0 && head::read(&self.dir) != Ok(Some(self.head_seq)) {
            self.head_after_failure();
        }
    }

    fn write_batch_or_fail(
        &mut self,
        batch: &[Pending],
        sync: bool,
        buf: &mut Vec<u8>,
    ) -> (usize, io::Result<()>) {
        buf.clear();
        if self.spare.is_none() {
            self.spare = open_spare();
        }
        // Checked before writing too: a segment another process changed gets none of this
        // batch's records after its foreign bytes (round 60b: a post answered 503 left
        // its `post_sent` there, a delivery of unknown outcome at the next start).
        if let Err(e) = self.check_segment() {
            return (0, Err(e));
        }
        let mut on_disk = 0;
        // Where the current segment's records not yet known to be on disk begin: a batch
        // that fails is cut back to it, so that no record refused to its writer (a post
        // answered `500`, "not sold") is found at the next start (black-box round 90b:
        // a sale refused that way was a sale after the restart).
        let mut acked_len = self.seg_len;
        for (i, p) in batch.iter().enumerate() {
            if p.line.is_empty() {
                // A sync request from the timer, not a record.
                continue;
            }
            let start = buf.len();
            let sum = segments::frame(buf, &p.line, self.chain.seq + 1, &self.chain.sum);
            let line_len = (buf.len() - start) as u64;
            let before = self.seg_len + start as u64;
            if before > 0 && before + line_len > self.segment_bytes_max {
                // Seal the segment with what came before this line, then go on in a new one.
                if let Err(e) = self.append(&buf[..start]).and_then(|()| self.seal()) {
                    self.cut_back(acked_len, acked_len + start as u64);
                    return (on_disk, Err(e));
                }
                // Sealed. A next segment that cannot be made fails the batch: its records
                // in the sealed one are cut out with the rest (all or nothing), so that
                // none of them is found by the next start, not even one the caller will
                // never act on (black-box round 91a: a direct post's `post_sent` was
                // sealed, the post answered `503` before any delivery, and the restart
                // counted it as a delivery of unknown outcome).
                if let Err(e) = self.open_next() {
                    self.cut_back(acked_len, self.seg_len);
                    return (on_disk, Err(e));
                }
                on_disk = i;
                buf.drain(..start);
                acked_len = 0;
            }
            self.chain = Chain {
                seq: self.chain.seq + 1,
                sum,
            };
        }
        if let Err(e) = self.append(buf) {
            self.cut_back(acked_len, acked_len + buf.len() as u64);
            return (on_disk, Err(e));
        }
        if sync {
            if let Err(e) = self.check_segment().and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| ctx("fsyncing", &self.seg_path, e))
            }) {
                self.cut_back(acked_len, self.seg_len);
                return (on_disk, Err(e));
            }
            on_disk = batch.len();
            // The records are durable: the head may name the last of them. A sync with no
            // record (the idle check every 2 s) writes it again anyway, so an edit in place
            // is undone within seconds (black-box round 63a).
            let idle = batch.iter().all(|p| p.line.is_empty());
            if let Err(e) = self.keep_head(idle) {
                return (
                    on_disk,
                    Err(ctx("writing", &self.dir.join(head::HEAD_FILE), e)),
                );
            }
        }
        (on_disk, Ok(()))
    }

    /// Whether the segment being written is still in a directory and holds what this
    /// writer wrote, no more and no less. Deleted (its directory removed while the
    /// exchange ran), writes and syncs still succeed, into a file that no path reaches and
    /// that is gone at the stop (black-box round 58b: four sales answered `sold` were
    /// lost, `/readyz` said ready); truncated or appended to by another process, the
    /// chain is broken and the next start refuses the ledger (round 59b: 79 sales were
    /// answered `sold` after a `truncate`). One `fstat` per sync.
    fn check_segment(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = self
            .file
            .metadata()
            .map_err(|e| ctx("reading", &self.seg_path, e))?;
        if m.nlink() == 0 {
            return Err(other(format!(
                "ledger segment {} was deleted while the exchange ran (its directory removed?): what was written to it since is not on disk",
                self.seg_path.display()
            )));
        }
        if m.len() != self.seg_len {
            return Err(other(format!(
                "ledger segment {} was changed by another process while the exchange ran (it holds {} bytes, the exchange wrote {}): what was written to it since is not acknowledged; check it with `pingpost ledger verify`",
                self.seg_path.display(),
                m.len(),
                self.seg_len
            )));
        }
        Ok(())
    }

    /// Makes `HEAD` name the last record synced: rewritten in place when it moved on, and
    /// made again (whole, [`head::create_in`]) when another process removed, replaced or
    /// resized it (black-box round 62c: after `mv`, `sed -i` or `rm` of `HEAD` the
    /// exchange went on writing the file no path reached, and the check of removed records
    /// was off from then on). One `fstat` per sync.
    fn keep_head(&mut self, rewrite: bool) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = self.head.metadata()?;
        if m.nlink() == 0 || m.len() != head::LEN as u64 {
            tracing::warn!(
                head = %self.dir.join(head::HEAD_FILE).display(),
                last_seq = self.chain.seq,
                "ledger: HEAD was removed, replaced or changed by another process while the exchange ran: it is made again"
            );
            // The spare descriptor makes room for the new file's, as at a rotation.
            drop(self.spare.take());
            let made = head::create_in(&self._dir_lock, self.chain.seq);
            self.spare = open_spare();
            self.head = made?;
            self.head_seq = self.chain.seq;
            return Ok(());
        }
        if rewrite || self.head_seq != self.chain.seq {
            head::write(&self.head, self.chain.seq)?;
            self.head_seq = self.chain.seq;
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| ctx("writing", &self.seg_path, e))?;
        self.seg_len += bytes.len() as u64;
        Ok(())
    }

    /// Whether `dir` still names the directory this writer holds locked.
    fn check_same_dir(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let locked = self
            ._dir_lock
            .metadata()
            .map_err(|e| ctx("reading", &self.dir, e))?;
        let now = std::fs::metadata(&self.dir);
        match now {
            Ok(m) if m.dev() == locked.dev() && m.ino() == locked.ino() => Ok(()),
            _ => Err(other(format!(
                "ledger directory {} was moved or replaced while the exchange ran: it no longer names the directory this exchange locked at start",
                self.dir.display()
            ))),
        }
    }

    /// After a failed write or sync: cuts the segment back to `to` bytes (and syncs it),
    /// removing the lines of the records the batch refuses, when the file holds nothing
    /// but this writer's bytes up to `attempted` (a file another process changed is left
    /// as it is: the next start judges it). Best effort: the ledger has failed either way,
    /// and a cut that fails is logged.
    fn cut_back(&mut self, to: u64, attempted: u64) {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = self.file.metadata() else {
            return;
        };
        let len = m.len();
        if len <= to {
            return;
        }
        if m.nlink() == 0 || len > attempted {
            tracing::error!(
                segment = %self.seg_path.display(),
                "ledger: the records of the failed write may be in the segment (it changed beyond this exchange's writes): check it with `pingpost ledger verify` before the next start"
            );
            return;
        }
        match self.file.set_len(to).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.seg_len = to;
                tracing::warn!(
                    segment = %self.seg_path.display(),
                    bytes = len - to,
                    "ledger: the lines of the records refused by the failed write were removed from the segment"
                );
            }
            Err(e) => tracing::error!(
                segment = %self.seg_path.display(),
                error = %e,
                "ledger: the lines of the records refused by the failed write could not be removed: the next start may find them"
            ),
        }
    }

    /// Seals the current segment: fsyncs it, so that every line in it is on disk.
    fn seal(&mut self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| ctx("fsyncing", &self.seg_path, e))
    }

    /// Starts the next segment (the current one sealed).
    fn open_next(&mut self) -> io::Result<()> {
        let no = self
            .seg_no
            .checked_add(1)
            .ok_or_else(|| other("the ledger has used every segment number".into()))?;
        // The next segment is made by path: the path must still name the directory this
        // writer locked. Moved or replaced while the exchange ran (black-box round 39: a
        // second exchange started on the old path, and both wrote there), it does not:
        // stop writing (fail-stop) rather than write into another directory.
        self.check_same_dir()?;
        let path = self.dir.join(segments::segment_name(no));
        // The spare descriptor makes room for the new segment's; the directory is synced
        // through the descriptor that locks it (the same directory: checked above), so a
        // rotation needs no other.
        drop(self.spare.take());
        let file = create_segment(&path)?;
        self._dir_lock
            .sync_all()
            .map_err(|e| ctx("syncing the directory", &self.dir, e))?;
        tracing::info!(segment = %path.display(), seq = self.chain.seq + 1, "ledger: new segment");
        self.seg_no = no;
        self.seg_path = path;
        // The sealed segment's descriptor closes here, and the spare takes its place.
        self.file = file;
        self.spare = open_spare();
        self.seg_len = 0;
        Ok(())
    }
}

/// Creates a new segment; one that exists already is an error (never appended to).
fn create_segment(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(|e| ctx("creating the segment", path, e))
}

/// The writer thread: writes everything that is waiting in one `write`, and `fdatasync`s
/// only when a record in the batch waits for durability: a sync makes every earlier line
/// durable too, so plain records ride along with the next durable one instead of costing
/// a sync each. The first error stops it for good (fail-stop): later records are refused
/// without touching the files.
/// Asks for the highest scheduling priority of the normal policy (nice -20) for the
/// writer thread: every `sold` waits for its batch's fsync, and on a busy machine the
/// writer must not queue behind request threads. Needs `CAP_SYS_NICE` (or root); without
/// it the thread keeps the default priority and says so once.
fn raise_priority() {
    if let Err(e) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Max)
    {
        tracing::info!(error = ?e, "ledger writer: no higher scheduling priority (needs CAP_SYS_NICE); it runs at the default");
    }
}

/// The writer's sleep between batches (see [`Wake`]): while busy (at least
/// [`BUSY_RECORDS`] records in the last [`BUSY_WINDOW_MS`]) it lingers [`LINGER_MS`]
/// after each batch, woken sooner only by a durable record; otherwise, and whenever it
/// finds the queue empty, it sleeps until any record is queued.
#[derive(Debug)]
struct Pace {
    window_start: tokio::time::Instant,
    window_records: usize,
    /// The window before this one (if it was the one just before) was busy.
    busy_before: bool,
    busy: bool,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            window_start: tokio::time::Instant::now(),
            window_records: 0,
            busy_before: false,
            busy: false,
        }
    }

    /// Counts a batch of `n` records. Busy: this window or the one before it reached
    /// [`BUSY_RECORDS`] (so a steady load does not start every window awake per record).
    fn wrote(&mut self, n: usize) {
        // The writer is a plain thread: outside a runtime this is the OS clock.
        let now = tokio::time::Instant::now();
        let window = Duration::from_millis(BUSY_WINDOW_MS);
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= window {
            self.busy_before = elapsed < 2 * window && self.window_records >= BUSY_RECORDS;
            self.window_start = now;
            self.window_records = 0;
        }
        self.window_records += n;
        self.busy = self.busy_before || self.window_records >= BUSY_RECORDS;
    }
}

/// Takes the next batch (up to [`BATCH_RECORDS_MAX`] records) into `batch`, sleeping as
/// [`Pace`] says until there is one; `false` once every handle is gone and the queue is
/// empty.
fn next_batch(
    rx: &mut mpsc::Receiver<Pending>,
    batch: &mut Vec<Pending>,
    asleep: &AtomicBool,
    pace: &Pace,
    lingered: &mut bool,
) -> bool {
    use mpsc::error::TryRecvError;
    loop {
        while batch.len() < BATCH_RECORDS_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return !batch.is_empty(),
            }
        }
        if !batch.is_empty() {
            *lingered = false;
            return true;
        }
        if pace.busy && !*lingered {
            // Between busy batches: records nobody waits for gather without waking us.
            *lingered = true;
            std::thread::park_timeout(Duration::from_millis(LINGER_MS));
            continue;
        }
        // Nothing to do: sleep until any record comes. A record queued after the look
        // above but before `asleep` is set is seen by the look below (the fences pair
        // with `Wake::queued`).
        asleep.store(true, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(TryRecvError::Disconnected) => {
                asleep.store(false, Ordering::Relaxed);
                return false;
            }
            Err(TryRecvError::Empty) => std::thread::park(),
        }
        asleep.store(false, Ordering::Relaxed);
        *lingered = false;
    }
}

fn run(
    mut w: Writer,
    mut rx: mpsc::Receiver<Pending>,
    health: Arc<Health>,
    asleep: &AtomicBool,
    on_batch: impl Fn(usize),
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(BATCH_RECORDS_MAX);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pace = Pace::new();
    let mut lingered = false;
    // Records written since the last fsync: the next one makes them durable, and is
    // told them all (black-box round 87b: the timer's sync, whose own batch holds no
    // record, was told 0 for the records it made durable).
    let mut unsynced = 0usize;
    while next_batch(&mut rx, &mut batch, asleep, &pace, &mut lingered) {
        pace.wrote(batch.len());
        if let Some(why) = health.failure.get() {
            // The timer's checks go on after a failure: a `HEAD` another process put in
            // place since (an older copy's) is made to name the last record synced again.
            if batch.iter().any(|p| p.line.is_empty()) {
                w.head_after_failure_if_changed();
            }
            for p in batch.drain(..) {
                if let Some(ack) = p.ack {
                    let _ = ack.send(Err(io::Error::other(why.clone())));
                }
            }
            continue;
        }
        let sync = batch.iter().any(|p| p.ack.is_some() || p.line.is_empty());
        health
            .busy_since
            .store(elapsed_ms().max(1), Ordering::Relaxed);
        let (on_disk, result) = w.write_batch(&batch, sync, &mut buf);
        health.busy_since.store(0, Ordering::Relaxed);
        if result.is_ok() {
            health.unsynced.store(!sync, Ordering::Relaxed);
            unsynced += batch.iter().filter(|p| !p.line.is_empty()).count();
            if sync {
                on_batch(std::mem::take(&mut unsynced));
            }
        }
        if let Err(e) = &result {
            health.fail(e.to_string());
        }
        for (i, p) in batch.drain(..).enumerate() {
            if let Some(ack) = p.ack {
                let _ = ack.send(match &result {
                    _ if i < on_disk => Ok(()),
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
            }
        }
    }
    // Every sender is gone: make the tail durable before the thread ends. A failed
    // ledger's `HEAD` still names the last record synced (black-box round 96a: an older
    // copy's `HEAD` put in place after the failure stayed through the stop, and the next
    // start took the older copy for the whole ledger).
    if health.failure.get().is_none() {
        if let Err(e) = w.file.sync_data() {
            health.fail(ctx("fsyncing", &w.seg_path, e).to_string());
        } else if let Err(e) = w.keep_head(true).and_then(|()| w.head.sync_data()) {
            health.fail(ctx("writing", &w.dir.join(head::HEAD_FILE), e).to_string());
        }
    } else {
        w.head_after_failure_if_changed();
    }
}

/// Copies the bytes of `segment` from `offset` on into `torn-<segment>-<offset>.bin` in
/// `dir` (synced), before start-up truncates them; returns its path. The name does not
/// look like a segment, so the ledger never reads it.
fn keep_torn_tail(dir: &Path, segment: &Path, offset: u64) -> std::io::Result<PathBuf> {
    use std::io::{Seek, SeekFrom};
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name of its own: an earlier crash may have left a tail at the same offset, whose
    // file must not be overwritten (`torn-<segment>-<offset>.<n>.bin` then).
    let mut n = 0u32;
    let (out, mut to) = loop {
        let out = match n {
            0 => dir.join(format!("torn-{name}-{offset}.bin")),
            n => dir.join(format!("torn-{name}-{offset}.{n}.bin")),
        };
        match File::create_new(&out) {
            Ok(f) => break (out, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(e) => return Err(e),
        }
    };
    let copied = (|| {
        let mut from = File::open(segment)?;
        from.seek(SeekFrom::Start(offset))?;
        std::io::copy(&mut from, &mut to)?;
        to.sync_all()
    })();
    if let Err(e) = copied {
        // A copy that failed (a full disk) leaves no file: an empty or partial one would
        // pass for the tail kept, and the next start's copy would get another name
        // (black-box round 35: an empty torn-*.bin beside the real one).
        drop(to);
        let _ = std::fs::remove_file(&out);
        return Err(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        // Created when only it is missing.
        let fresh = dir.path().join("fresh");
        drop(Ledger::open(&fresh, 4096, |_| {}).unwrap());
        assert!(fresh.join(segments::segment_name(1)).is_file());
    }
}
