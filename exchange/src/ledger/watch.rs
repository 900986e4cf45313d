//! What other processes do to the ledger's segments while the exchange runs, seen through
//! inotify: a segment removed, moved away or replaced, a segment
//! file made by another process, or a sealed segment written (through any of its names:
//! each sealed segment's own inode is watched, so a hard link elsewhere or a descriptor
//! kept open is seen at its first write, black-box round 121a). The segment being written
//! is checked by its size and modification time instead (`Writer::check_segment`): its
//! own writes are the writer's. The writer looks before every batch (one `read` of a
//! non-blocking descriptor, usually `EAGAIN`), so a change stops the ledger (fail-stop)
//! before the next record is acknowledged, and within the timer's 2 s when idle.
//!
//! Black-box round 120b: under load, with small segments, `rm -rf` of the ledger
//! directory removed every sealed segment and the key while the writer had rotated to a
//! segment `rm` had not listed; the checks of the segment being written found nothing
//! wrong, `/readyz` stayed `ready`, and the exchange answered `sold` into a ledger its next
//! start refused.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::inotify;

use super::segments;

/// The directory's events: a name taken out of it, put over another, or made.
fn dir_flags() -> inotify::WatchFlags {
    inotify::WatchFlags::DELETE
        | inotify::WatchFlags::MOVED_FROM
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::CREATE
        | inotify::WatchFlags::ONLYDIR
}

/// The watch on one ledger directory and its sealed segments.
#[derive(Debug)]
pub(super) struct DirWatch {
    fd: OwnedFd,
    /// The directory's watch descriptor.
    dir_wd: i32,
    /// Each sealed segment's watch descriptor, and its number.
    sealed: HashMap<i32, u32>,
    /// Segments this writer made (at a rotation): their `CREATE` is its own.
    own_creates: Vec<u32>,
    /// A sealed segment could not be watched (the per-user limit of watches): said once.
    warned: bool,
}

impl DirWatch {
    /// Watches `dir` and its sealed segments (`sealed`: their numbers and paths); `None`
    /// (said once in the log) where inotify is not available (the per-user limit of
    /// instances reached, a file system without it): the next start's checks still find
    /// a segment or a key that is missing or changed.
    pub(super) fn new<'a>(
        dir: &Path,
        sealed: impl IntoIterator<Item = (u32, &'a Path)>,
    ) -> Option<DirWatch> {
        let made = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .and_then(|fd| inotify::add_watch(&fd, dir, dir_flags()).map(|wd| (fd, wd)));
        match made {
            Ok((fd, dir_wd)) => {
                let mut w = DirWatch {
                    fd,
                    dir_wd,
                    sealed: HashMap::new(),
                    own_creates: Vec::new(),
                    warned: false,
                };
                for (no, path) in sealed {
                    w.seal(no, path);
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(
                    dir = %crate::cli_out::Shown(dir),
                    error = %e,
                    "ledger: the directory cannot be watched (inotify): a segment removed or changed while the exchange runs is found only at the next start and by `pingpost ledger verify`"
                );
                None
            }
        }
    }

    /// Watches the sealed segment `no` at `path` for writes, by its inode.
    pub(super) fn seal(&mut self, no: u32, path: &Path) {
        let flags = inotify::WatchFlags::MODIFY | inotify::WatchFlags::DONT_FOLLOW;
        match inotify::add_watch(&self.fd, path, flags) {
            Ok(wd) => {
                self.sealed.insert(wd, no);
            }
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(
                    segment = %crate::cli_out::Shown(path),
                    error = %e,
                    "ledger: a sealed segment cannot be watched (inotify; the per-user limit of watches, fs.inotify.max_user_watches?): a write to it while the exchange runs is found only at the next start and by `pingpost ledger verify` (said once)"
                );
            }
            Err(_) => {}
        }
    }

    /// Notes that this writer makes segment `no` (at a rotation).
    pub(super) fn creating(&mut self, no: u32) {
        self.own_creates.push(no);
    }

    /// What another process did since the last look, as the reason the ledger stops
    /// (the directory named `shown`, whose next segment would be `next`); `Ok` when
    /// nothing of the ledger's was touched.
    pub(super) fn check(&mut self, shown: &Path, next: u32) -> Result<(), String> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::AGAIN) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(format!(
                        "ledger directory {}: its watch could not be read ({e})",
                        crate::cli_out::Shown(shown)
                    ))
                }
            };
            let what = event.events();
            if what.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                return Err(format!(
                    "ledger directory {}: more files were changed in it than can be followed while the exchange ran: check it with `pingpost ledger verify` before the next start",
                    crate::cli_out::Shown(shown)
                ));
            }
            if event.wd() != self.dir_wd {
                // A sealed segment's own watch: written through some name, or (once its
                // last name is gone) let go by the kernel.
                if let Some(&no) = self.sealed.get(&event.wd()) {
                    if what.contains(inotify::ReadFlags::MODIFY) {
                        return Err(format!(
                            "ledger segment {} (a sealed segment) was written by another process while the exchange ran (through this name or another: a hard link, a descriptor kept open): its records may not be the ones the exchange wrote; check it with `pingpost ledger verify` before the next start",
                            crate::cli_out::Shown(&shown.join(segments::segment_name(no)))
                        ));
                    }
                    if what.contains(inotify::ReadFlags::IGNORED) {
                        self.sealed.remove(&event.wd());
                    }
                }
                continue;
            }
            let Some(name) = event.file_name().and_then(|n| n.to_str().ok()) else {
                continue;
            };
            let Some(no) = segments::segment_no(name) else {
                // `HEAD` is checked (and made again) at each sync, the fingerprint key
                // every 2 s (`app::spawn_key_keeper`); other names are not the ledger's.
                continue;
            };
            let path = shown.join(name);
            if no == next
                && what.intersects(inotify::ReadFlags::CREATE | inotify::ReadFlags::MOVED_TO)
            {
                // A file at the next segment's name: the rotation into it fails (a segment
                // is only ever made new), naming it, and nothing is written there.
                continue;
            }
            if what.contains(inotify::ReadFlags::CREATE) {
                if let Some(i) = self.own_creates.iter().position(|&c| c == no) {
                    self.own_creates.swap_remove(i);
                    continue;
                }
                return Err(format!(
                    "ledger segment {} was made in the ledger directory by another process while the exchange ran: a start refuses the ledger with it; move it away before the next start (docs/LEDGER.md)",
                    crate::cli_out::Shown(&path)
                ));
            }
            let how = if what.contains(inotify::ReadFlags::MOVED_TO) {
                "replaced (another file was moved over it or into its name)"
            } else if what.contains(inotify::ReadFlags::MOVED_FROM) {
                "moved out of the ledger directory"
            } else {
                "removed"
            };
            return Err(format!(
                "ledger segment {} was {how} while the exchange ran: a start refuses the ledger without it as the exchange wrote it; put it back (from a backup) before the next start (docs/LEDGER.md)",
                crate::cli_out::Shown(&path)
            ));
        }
    }
}
