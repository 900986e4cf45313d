//! The writer thread: the segment being appended to, group commit, rotation, the
//! `HEAD` file and the pacing of batches (see the module above for the ledger as a
//! whole).

use super::*;

/// The writer thread's side: the segment being appended to and where the chain stands.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    /// Holds the `LOCK` file's lock while the writer lives.
    pub(super) _lock: File,
    /// Holds the lock on the directory itself (see [`Writer::recover`]).
    pub(super) _dir_lock: File,
    pub(super) segment_bytes_max: u64,
    pub(super) seg_no: u32,
    pub(super) seg_path: PathBuf,
    pub(super) file: File,
    pub(super) seg_len: u64,
    pub(super) chain: Chain,
    /// A file descriptor kept in reserve (`/dev/null`) and given up just before a new
    /// segment is created, so a process out of descriptors (idle connections held up to
    /// the open-file limit) can still rotate: a rotation refused for `EMFILE` stopped the
    /// ledger for the life of the process (black-box round 58b). `None` while it could
    /// not be opened again (retried at every batch).
    pub(super) spare: Option<File>,
    /// The `HEAD` file (see [`head`]), open for the writer's life.
    pub(super) head: File,
    /// The sequence number `head` holds.
    pub(super) head_seq: u64,
    /// The last warning that `HEAD` could not be written after a failure, so the check
    /// every 2 s says it once, not every time (black-box round 99c: the same warning
    /// every 2 s for a ledger directory that had been removed).
    pub(super) head_warned: Option<String>,
    /// What other processes do to the directory and the sealed segments ([`watch`]):
    /// looked at before each batch.
    pub(super) watch: Option<watch::DirWatch>,
    /// The segment's modification time after this writer's last change to it: another
    /// time before the next batch is another process's write ([`Writer::check_segment`]).
    pub(super) seg_mtime: Option<std::time::SystemTime>,
}

/// Makes the ledger's `HEAD` file hold `seq`, whole and synced ([`head::create_in`], in
/// the directory open as `locked`): `said` is what it held (`None`: no file). A ledger
/// with records and no head is one from before heads, or one whose head was removed:
/// said once, in the log.
pub(super) fn open_head(
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
            head = %crate::cli_out::Shown(&path),
            last_seq = seq,
            "ledger: no head was found (a ledger from before heads, or its HEAD file was removed), so this start could not check that no record was removed from its end; it holds one now"
        );
    }
    Ok(file)
}

/// Opens the spare descriptor (see [`Writer::spare`]).
pub(super) fn open_spare() -> Option<File> {
    File::open("/dev/null").ok()
}

/// An I/O error with what was being done to which file, for the one-line reason.
pub(super) fn ctx(what: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "{what} {}: {e}{}",
            crate::cli_out::Shown(path),
            permission_hint(&e)
        ),
    )
}

/// What to do when the ledger's files are not the exchange's user's (black-box round
/// 235b: a ledger restored by `root` failed three starts in turn, two of them with a
/// bare "Permission denied").
pub(super) fn permission_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied {
        ": the exchange's user must own the ledger directory and every file in it (a copy restored by another user: `chown -R` it to the exchange's user)"
    } else {
        ""
    }
}

pub(super) fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// Whether the ledger directory `dir` holds any record: a segment file with a whole
/// line in it (one that ends with its newline and holds more than white space). Empty
/// segments, segments holding only a line cut short (black-box round 94b: a fragment
/// with no newline, where every record had been, passed as a torn last write) and torn
/// tails kept aside hold none.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ctx("syncing the directory", dir, e))
}

/// Makes sure `dir` is a writable directory, creating it when only it is missing.
pub(super) fn prepare_dir(dir: &Path) -> io::Result<()> {
    let shown = crate::cli_out::Shown(dir);
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
                std::fs::read_link(dir)
                    .map_or_else(|_| "?".into(), |t| crate::cli_out::Shown(&t).to_string())
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
                    crate::cli_out::Shown(parent)
                )));
            }
            // Never writable by others, whatever the umask (black-box round 123a: under
            // `umask 000` the directory was made 777 and its segments 666).
            {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new().mode(0o755).create(dir)
            }
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
        .map_err(|e| {
            other(format!(
                "ledger directory {shown} is not writable: {e}{}",
                permission_hint(&e)
            ))
        })
}

impl Writer {
    /// Opens `dir` for appending after verifying every segment and truncating a torn
    /// tail of the last one (see the module documentation).
    pub(super) fn recover(dir: &Path, segment_bytes_max: u64) -> io::Result<Writer> {
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
                crate::cli_out::Shown(dir)
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
                .mode(0o644)
                // Nor blocking on a FIFO (round 64a: the start hung, silent).
                .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
                .open(&lock_path)
        }
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => other(format!(
                "{} is a symlink; the exchange makes its own {LOCK_FILE} there (remove the link)",
                crate::cli_out::Shown(&lock_path)
            )),
            Some(code)
                if code == rustix::io::Errno::NXIO.raw_os_error()
                    || code == rustix::io::Errno::ISDIR.raw_os_error() =>
            {
                other(format!(
                    "{} is not a regular file; the exchange makes its own {LOCK_FILE} there (remove it)",
                    crate::cli_out::Shown(&lock_path)
                ))
            }
            _ => ctx("opening", &lock_path, e),
        })?;
        if !lock.metadata().is_ok_and(|m| m.is_file()) {
            return Err(other(format!(
                "{} is not a regular file; the exchange makes its own {LOCK_FILE} there (remove it)",
                crate::cli_out::Shown(&lock_path)
            )));
        }
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(other(format!(
                    "ledger directory {} is in use by another process (it holds {LOCK_FILE})",
                    crate::cli_out::Shown(dir)
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ctx("locking", &lock_path, e)),
        }
        if let Some(why) = segments_lost(dir) {
            return Err(other(why));
        }
        // Read before the segments (as `verify` does): what it names was synced before.
        let head_said = head::read(dir).map_err(other)?;
        let segs = segments::list(dir).map_err(|e| {
            other(format!(
                "ledger directory {}: {e}",
                crate::cli_out::Shown(dir)
            ))
        })?;
        let mut chain = Chain::START;
        let mut torn: Option<(PathBuf, segments::Problem, u64)> = None;
        let mut records = 0u64;
        let mut last_len = 0u64;
        for (i, (_, path)) in segs.iter().enumerate() {
            let s = segments::scan(path, chain, None)?;
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
                segment = %crate::cli_out::Shown(path),
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
                segment = %crate::cli_out::Shown(path),
                offset = p.offset,
                removed_bytes = len - p.offset,
                kept_in = %crate::cli_out::Shown(&kept),
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
            dir = %crate::cli_out::Shown(dir),
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
            // Watched from here on: what this start did to the directory is behind it.
            watch: watch::DirWatch::new(
                dir,
                segs.iter()
                    .filter(|(no, _)| *no != seg_no)
                    .map(|(no, path)| (*no, path.as_path())),
            ),
            seg_mtime: None,
        }
        .with_seg_mtime())
    }

    /// Writes the batch's records in order, rotating before a segment would pass its
    /// limit (a segment is fsynced when it is sealed), and fsyncs at the end when a record
    /// waits for it (`sync`). Returns how many leading records are known to be on disk
    /// (all of them when the result is `Ok` and `sync` was asked) and the first error.
    /// A batch that fails (the ledger then fails: fail-stop) leaves `HEAD` naming the last
    /// record this writer synced ([`Writer::head_after_failure`]).
    pub(super) fn write_batch(
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
    pub(super) fn head_after_failure(&mut self) {
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
                        head = %crate::cli_out::Shown(&self.dir.join(head::HEAD_FILE)),
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
    /// this writer synced (read by its name in the directory this writer locked: another
    /// process may have replaced the file; read by the directory's path, a directory moved
    /// away had its `HEAD` made again every 2 s, black-box round 106a).
    pub(super) fn head_after_failure_if_changed(&mut self) {
        if self.head_seq != 0 && head::read_in(&self._dir_lock) != Some(self.head_seq) {
            self.head_after_failure();
        }
    }

    pub(super) fn write_batch_or_fail(
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
        // Nor after another process removed, replaced or wrote one of the ledger's files
        // (black-box round 120b: sealed segments and the key removed under load).
        if let Some(w) = self.watch.as_mut() {
            if let Err(why) = w.check(&self.dir, self.seg_no.saturating_add(1)) {
                return (0, Err(other(why)));
            }
        }
        // At the timer's checks (every 2 s at most, busy or idle), the path must still name
        // the directory locked at start: one moved (`mv`) or replaced while the exchange
        // runs stops the ledger within seconds, as a removed one does, rather than at the
        // next rotation, hours later, after writing on into a directory the operator
        // thinks is elsewhere (black-box round 100a: written on with no word).
        if batch.iter().any(|p| p.line.is_empty()) {
            if let Err(e) = self.check_same_dir() {
                return (0, Err(e));
            }
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
    pub(super) fn check_segment(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = self
            .file
            .metadata()
            .map_err(|e| ctx("reading", &self.seg_path, e))?;
        if m.nlink() == 0 {
            return Err(other(format!(
                "ledger segment {} was deleted while the exchange ran (its directory removed?): what was written to it since is not on disk",
                crate::cli_out::Shown(&self.seg_path)
            )));
        }
        if m.len() != self.seg_len {
            return Err(other(format!(
                "ledger segment {} was changed by another process while the exchange ran (it holds {} bytes, the exchange wrote {}): what was written to it since is not acknowledged; check it with `pingpost ledger verify`",
                crate::cli_out::Shown(&self.seg_path),
                m.len(),
                self.seg_len
            )));
        }
        // Written in place, the size kept (through a hard link elsewhere, say: black-box
        // round 121a): the modification time moved without a write of this writer's. The
        // kernel gives a write after an `fstat` a time of its own (fine-grained), so a
        // write right after this writer's is told apart too.
        if self.seg_mtime.is_some() && m.modified().ok() != self.seg_mtime {
            return Err(other(format!(
                "ledger segment {} (the segment being written) was written by another process while the exchange ran (its modification time changed without a write of the exchange's): what was written to it since is not acknowledged; check it with `pingpost ledger verify`",
                crate::cli_out::Shown(&self.seg_path),
            )));
        }
        Ok(())
    }

    /// Makes `HEAD` name the last record synced: rewritten in place when it moved on, and
    /// made again (whole, [`head::create_in`]) when another process removed, replaced or
    /// resized it (black-box round 62c: after `mv`, `sed -i` or `rm` of `HEAD` the
    /// exchange went on writing the file no path reached, and the check of removed records
    /// was off from then on). One `fstat` per sync.
    pub(super) fn keep_head(&mut self, rewrite: bool) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = self.head.metadata()?;
        if m.nlink() == 0 || m.len() != head::LEN as u64 {
            tracing::warn!(
                head = %crate::cli_out::Shown(&self.dir.join(head::HEAD_FILE)),
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

    pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| ctx("writing", &self.seg_path, e))?;
        self.seg_len += bytes.len() as u64;
        self.note_seg_mtime();
        Ok(())
    }

    /// Notes the segment's modification time after a change of this writer's (one
    /// `fstat`; where it cannot be read, the time is not checked until the next one).
    pub(super) fn note_seg_mtime(&mut self) {
        self.seg_mtime = self.file.metadata().and_then(|m| m.modified()).ok();
    }

    fn with_seg_mtime(mut self) -> Writer {
        self.note_seg_mtime();
        self
    }

    /// Whether `dir` still names the directory this writer holds locked.
    pub(super) fn check_same_dir(&self) -> io::Result<()> {
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
                crate::cli_out::Shown(&self.dir)
            ))),
        }
    }

    /// After a failed write or sync: cuts the segment back to `to` bytes (and syncs it),
    /// removing the lines of the records the batch refuses, when the file holds nothing
    /// but this writer's bytes up to `attempted` (a file another process changed is left
    /// as it is: the next start judges it). Best effort: the ledger has failed either way,
    /// and a cut that fails is logged.
    pub(super) fn cut_back(&mut self, to: u64, attempted: u64) {
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
                segment = %crate::cli_out::Shown(&self.seg_path),
                "ledger: the records of the failed write may be in the segment (it changed beyond this exchange's writes): check it with `pingpost ledger verify` before the next start"
            );
            return;
        }
        match self.file.set_len(to).and_then(|()| self.file.sync_data()) {
            Ok(()) => {
                self.seg_len = to;
                self.note_seg_mtime();
                tracing::warn!(
                    segment = %crate::cli_out::Shown(&self.seg_path),
                    bytes = len - to,
                    "ledger: the lines of the records refused by the failed write were removed from the segment"
                );
            }
            Err(e) => tracing::error!(
                segment = %crate::cli_out::Shown(&self.seg_path),
                error = %e,
                "ledger: the lines of the records refused by the failed write could not be removed: the next start may find them"
            ),
        }
    }

    /// Seals the current segment: fsyncs it, so that every line in it is on disk.
    pub(super) fn seal(&mut self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| ctx("fsyncing", &self.seg_path, e))
    }

    /// Starts the next segment (the current one sealed).
    pub(super) fn open_next(&mut self) -> io::Result<()> {
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
        if let Some(w) = self.watch.as_mut() {
            w.creating(no);
        }
        let file = create_segment(&path)?;
        self._dir_lock
            .sync_all()
            .map_err(|e| ctx("syncing the directory", &self.dir, e))?;
        tracing::info!(segment = %crate::cli_out::Shown(&path), seq = self.chain.seq + 1, "ledger: new segment");
        let sealed = std::mem::replace(&mut self.seg_path, path);
        if let Some(w) = self.watch.as_mut() {
            w.seal(self.seg_no, &sealed);
        }
        self.seg_no = no;
        // The sealed segment's descriptor closes here, and the spare takes its place.
        self.file = file;
        self.spare = open_spare();
        self.seg_len = 0;
        self.note_seg_mtime();
        Ok(())
    }
}

/// Creates a new segment; one that exists already is an error (never appended to).
pub(super) fn create_segment(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create_new(true)
        .append(true)
        // Never writable by others, whatever the umask (round 123a).
        .mode(0o644)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                // Black-box round 122a: "File exists" alone did not say whose it was.
                other(format!(
                    "creating the segment {}: a file of that name exists already, made by another process (the exchange only ever makes a segment new): move it away before the next start",
                    crate::cli_out::Shown(path)
                ))
            } else {
                ctx("creating the segment", path, e)
            }
        })
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
pub(super) fn raise_priority() {
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
pub(super) struct Pace {
    window_start: tokio::time::Instant,
    window_records: usize,
    /// The window before this one (if it was the one just before) was busy.
    busy_before: bool,
    busy: bool,
}

impl Pace {
    pub(super) fn new() -> Pace {
        Pace {
            window_start: tokio::time::Instant::now(),
            window_records: 0,
            busy_before: false,
            busy: false,
        }
    }

    /// Counts a batch of `n` records. Busy: this window or the one before it reached
    /// [`BUSY_RECORDS`] (so a steady load does not start every window awake per record).
    pub(super) fn wrote(&mut self, n: usize) {
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
pub(super) fn next_batch(
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

pub(super) fn run(
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
pub(super) fn keep_torn_tail(dir: &Path, segment: &Path, offset: u64) -> std::io::Result<PathBuf> {
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
        let made = {
            use std::os::unix::fs::OpenOptionsExt as _;
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&out)
        };
        match made {
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
