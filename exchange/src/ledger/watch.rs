//! What other processes do to the ledger directory while the exchange runs, seen through
//! inotify: a segment or the fingerprint key removed, moved away or replaced, or a segment
//! written by another process. The writer looks before every batch (one `read` of a
//! non-blocking descriptor, usually `EAGAIN`), so a change stops the ledger (fail-stop)
//! before the next record is acknowledged, and within the timer's 2 s when idle.
//!
//! Black-box round 120b: under load, with small segments, `rm -rf` of the ledger
//! directory removed every sealed segment and the key while the writer had rotated to a
//! segment `rm` had not listed; the checks of the segment being written found nothing
//! wrong, `/readyz` stayed `ready`, and the exchange answered `sold` into a ledger its next
//! start refused.

use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;

use rustix::fs::inotify;

use super::segments;
use crate::fingerprint::KEY_FILE;

/// The events watched: a name taken out of the directory or put over another, and a
/// file opened for writing closed (another process's `>>`, `truncate`, `cp` over).
fn flags() -> inotify::WatchFlags {
    inotify::WatchFlags::DELETE
        | inotify::WatchFlags::MOVED_FROM
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::ONLYDIR
}

/// The watch on one ledger directory.
#[derive(Debug)]
pub(super) struct DirWatch {
    fd: OwnedFd,
    /// Segments this writer closed after writing them (a rotation seals one and closes
    /// its descriptor): their one `CLOSE_WRITE` is this writer's own.
    own_closes: Vec<u32>,
}

impl DirWatch {
    /// Watches `dir`; `None` (said once in the log) where inotify is not available (the
    /// per-user limit of instances reached, a file system without it): the next start's
    /// checks still find a segment or a key that is missing.
    pub(super) fn new(dir: &std::path::Path) -> Option<DirWatch> {
        let made = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .and_then(|fd| inotify::add_watch(&fd, dir, flags()).map(|_| fd));
        match made {
            Ok(fd) => Some(DirWatch {
                fd,
                own_closes: Vec::new(),
            }),
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "ledger: the directory cannot be watched (inotify): a segment or the fingerprint key removed while the exchange runs is found only at the next start"
                );
                None
            }
        }
    }

    /// Notes that this writer closes segment `no`, which it wrote (at a rotation).
    pub(super) fn closing(&mut self, no: u32) {
        self.own_closes.push(no);
    }

    /// What another process did to the directory `shown` since the last look, as the
    /// reason the ledger stops; `Ok` when nothing of the ledger's was touched.
    pub(super) fn check(&mut self, shown: &std::path::Path, current: u32) -> Result<(), String> {
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
                        shown.display()
                    ))
                }
            };
            let what = event.events();
            if what.contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                return Err(format!(
                    "ledger directory {}: more files were changed in it than can be followed while the exchange ran: check it with `pingpost ledger verify` before the next start",
                    shown.display()
                ));
            }
            let Some(name) = event.file_name().and_then(|n| n.to_str().ok()) else {
                continue;
            };
            let segment = segments::segment_no(name);
            if segment.is_none() && name != KEY_FILE {
                // `HEAD` is checked (and made again) at each sync; other names are not
                // the ledger's.
                continue;
            }
            let path = shown.join(name);
            if what.contains(inotify::ReadFlags::CLOSE_WRITE) {
                let Some(no) = segment else {
                    // The key is written once, by the first start.
                    continue;
                };
                if let Some(i) = self.own_closes.iter().position(|&c| c == no) {
                    self.own_closes.swap_remove(i);
                    continue;
                }
                let which = if no == current {
                    "the segment being written"
                } else {
                    "a sealed segment"
                };
                return Err(format!(
                    "ledger segment {} ({which}) was written by another process while the exchange ran: its records may not be the ones the exchange wrote; check it with `pingpost ledger verify` before the next start",
                    path.display()
                ));
            }
            let how = if what.contains(inotify::ReadFlags::MOVED_TO) {
                "replaced (another file was moved over it)"
            } else if what.contains(inotify::ReadFlags::MOVED_FROM) {
                "moved out of the ledger directory"
            } else {
                "removed"
            };
            return Err(match segment {
                Some(_) => format!(
                    "ledger segment {} was {how} while the exchange ran: a start refuses the ledger without it; put it back (from a backup) before the next start (docs/LEDGER.md)",
                    path.display()
                ),
                None => format!(
                    "the lead fingerprint key {} was {how} while the exchange ran: a start refuses the ledger without it; put it back (from a backup) before the next start (docs/LEDGER.md)",
                    path.display()
                ),
            });
        }
    }
}
