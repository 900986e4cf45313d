//! The ledger's `HEAD` file: the sequence number of the last record the writer has
//! fsynced, so that a start (and `pingpost ledger verify`) can tell a ledger whose last
//! records were removed (its newest segments deleted, or cut at a line boundary) from one
//! that simply ends there. Without it, a ledger whose last segment was deleted while
//! earlier ones remained verified, and a restart sold again what the removed records had
//! sold (black-box round 61b).
//!
//! The file holds one line of fixed width, `pingpost-ledger-head v1 seq <20 digits>\n`,
//! overwritten in place (one `pwrite` at offset 0) after every fsync of the segment that
//! carried a new record; it is not itself fsynced then (the kernel writes it back within
//! seconds), so after a crash it may name an earlier record than the last one synced,
//! never a later one: it is written only after the records it names are durable. It is
//! fsynced at a clean stop and when it is made.
//!
//! It is made whole or not at all ([`create_in`]: written and synced as `HEAD.new`, then
//! renamed over `HEAD`), so an empty or partial `HEAD` is never the exchange's and is
//! refused like any other line it does not write (black-box round 62c: an empty one was
//! taken for none). It is opened through the locked directory's descriptor and never
//! through a symlink (round 62c: a dangling `HEAD` symlink made the exchange create a
//! file outside the ledger).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

/// The file's name in the ledger directory.
pub const HEAD_FILE: &str = "HEAD";

const PREFIX: &str = "pingpost-ledger-head v1 seq ";
/// The length of the line: the prefix, 20 digits and a newline.
pub const LEN: usize = PREFIX.len() + 20 + 1;
/// The name `HEAD` is written under before it is renamed into place.
const NEW_FILE: &str = "HEAD.new";

/// Makes `HEAD` in the directory open as `dir` hold `seq`, whole: written and synced
/// under another name, renamed over `HEAD` (a symlink there is replaced, never
/// followed), and the directory synced. Returns the file, open for later writes.
pub fn create_in(dir: &File, seq: u64) -> io::Result<File> {
    let named = |e: rustix::io::Errno| {
        // Nothing can be created in a directory that was removed (black-box round 99c:
        // the hint said to remove a file of that name).
        let hint = if e == rustix::io::Errno::NOENT {
            "the ledger directory itself is gone (removed or moved away)"
        } else if e == rustix::io::Errno::ISDIR {
            // Round 113a: a directory there was told to be removed as "a file".
            "the exchange writes its HEAD through that name: remove the directory of that name (rmdir), and check the directory can be written"
        } else {
            "the exchange writes its HEAD through that name: remove a file of that name, and check the directory can be written"
        };
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{NEW_FILE}: {e} ({hint})"))
    };
    // A stale one (a crash between its write and its rename, or put there by another
    // process: a file or a symlink) is removed, never followed; a directory there is an
    // error naming it (black-box round 63a: the error named HEAD).
    match rustix::fs::unlinkat(dir, NEW_FILE, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(named(e)),
    }
    let fd = rustix::fs::openat(
        dir,
        NEW_FILE,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(named)?;
    let file = File::from(fd);
    let placed = write(&file, seq)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            rustix::fs::renameat(dir, NEW_FILE, dir, HEAD_FILE).map_err(io::Error::from)
        });
    if let Err(e) = placed {
        // Not left behind (black-box round 98a: a full disk left an empty `HEAD.new`
        // after every failed rewrite).
        let _ = rustix::fs::unlinkat(dir, NEW_FILE, rustix::fs::AtFlags::empty());
        return Err(e);
    }
    dir.sync_all()?;
    Ok(file)
}

/// Writes `seq` over the `HEAD` file of the directory open as `dir` in place (opened by
/// its name, never through a symlink, a regular file only), cut to its one line and
/// synced: for when no new file can be made there (a read-only directory, a full disk),
/// so [`create_in`] fails (black-box round 97a: an older copy's `HEAD` then stayed).
pub fn overwrite_in(dir: &File, seq: u64) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        HEAD_FILE,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{HEAD_FILE} is not a regular file"
        )));
    }
    write(&file, seq)?;
    file.set_len(LEN as u64)?;
    file.sync_all()?;
    Ok(file)
}

/// The line for `seq`.
pub fn line(seq: u64) -> String {
    format!("{PREFIX}{seq:020}\n")
}

/// Writes `seq` over the file's line.
pub fn write(file: &File, seq: u64) -> io::Result<()> {
    file.write_all_at(line(seq).as_bytes(), 0)
}

/// The `seq` the `HEAD` file of the directory open as `dir` names, read through that
/// directory (never by a path, which a move or a replacement of the directory would make
/// name another one: black-box round 106a), never through a symlink; `None` when it is
/// missing, unreadable or not a line this exchange writes.
pub fn read_in(dir: &File) -> Option<u64> {
    use std::io::Read as _;
    let fd = rustix::fs::openat(
        dir,
        HEAD_FILE,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let file = File::from(fd);
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(LEN as u64 + 1).read_to_end(&mut bytes).ok()?;
    parse(&bytes)
}

/// The `seq` of a `HEAD` file's bytes, when they are exactly the one line this exchange
/// writes ([`line`]).
fn parse(bytes: &[u8]) -> Option<u64> {
    let digits = bytes
        .strip_prefix(PREFIX.as_bytes())?
        .strip_suffix(b"\n")
        .filter(|d| d.len() == 20 && d.iter().all(u8::is_ascii_digit))?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How [`read`]'s error begins when `HEAD` is there but could not be read (an I/O error,
/// such as a permission: not a statement about the ledger's records).
pub const UNREADABLE: &str = "cannot read ";

/// What `HEAD` in `dir` says: `Ok(None)` when there is no such file or it is empty (made
/// but never written before a crash), `Ok(Some(seq))`, or an error saying what is wrong
/// with it (unreadable, or not a line this exchange writes).
pub fn read(dir: &Path) -> Result<Option<u64>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(HEAD_FILE);
    // Never through a symlink, and never more than a line's worth (a FIFO or a huge
    // file is not a head either).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(&path);
    let mut bytes = Vec::new();
    match file {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {
            f.take(LEN as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{UNREADABLE}{}: {e}", crate::cli_out::Shown(&path)))?;
        }
        Ok(_) => {
            return Err(format!(
                "{} is not a regular file; the exchange writes its ledger head there (remove it)",
                crate::cli_out::Shown(&path)
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(format!(
                "{} is a symlink; the exchange writes its ledger head there itself (remove it)",
                crate::cli_out::Shown(&path)
            ))
        }
        Err(e) => return Err(format!("{UNREADABLE}{}: {e}", crate::cli_out::Shown(&path))),
    }
    // Only a line's worth is read: past it the file is said longer (black-box round 203b:
    // a 150 MB file was said to hold "50 bytes").
    let found = if bytes.len() > LEN {
        format!("a file longer than {LEN} bytes")
    } else {
        format!("{} bytes", bytes.len())
    };
    let bad = || {
        format!(
            "{} is not a ledger head this exchange writes (expected one line `{PREFIX}<20 digits>`, found {found}); restore it from a backup, or remove it to start without the check of removed records",
            crate::cli_out::Shown(&path),
        )
    };
    parse(&bytes).map(Some).ok_or_else(bad)
}

/// Why a ledger in `dir` whose records end at `last_seq` lacks records its `HEAD` says
/// were written (`head`), if it does.
pub fn removed(dir: &Path, head: Option<u64>, last_seq: u64) -> Option<String> {
    let head = head?;
    (head > last_seq).then(|| {
        format!(
            "ledger directory {} ends at record {last_seq}, but its {HEAD_FILE} file says record {head} was written and synced: records {}..={head} were removed (its newest segment(s) deleted or cut); restore them from a backup (an exchange started on it would sell again what they record), or, if this is an older backup restored on purpose, remove {HEAD_FILE} (not otherwise: a start without it cuts a last line it cannot read, so keep a copy of the last segment first)",
            crate::cli_out::Shown(dir),
            last_seq + 1
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Black-box round 98a: a rewrite that failed (a full disk) left an empty `HEAD.new`.
    /// Here the rename fails (`HEAD` is a directory that is not empty).
    #[test]
    fn a_failed_rewrite_leaves_no_new_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(HEAD_FILE)).unwrap();
        std::fs::write(dir.path().join(HEAD_FILE).join("x"), b"x").unwrap();
        let d = File::open(dir.path()).unwrap();
        assert!(create_in(&d, 5).is_err());
        assert!(!dir.path().join(NEW_FILE).exists());
    }

    /// Black-box round 99c: with the ledger directory removed, the error said to remove a
    /// file named `HEAD.new`; it says the directory is gone.
    #[test]
    fn a_removed_directory_is_named_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        std::fs::create_dir(&ledger).unwrap();
        let d = File::open(&ledger).unwrap();
        std::fs::remove_dir(&ledger).unwrap();
        let e = create_in(&d, 5).unwrap_err().to_string();
        assert!(e.contains("the ledger directory itself is gone"), "{e}");
        assert!(!e.contains("remove a file"), "{e}");
    }

    #[test]
    fn a_head_reads_back_what_was_written_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None), "no file");
        let path = dir.path().join(HEAD_FILE);
        let d = File::open(dir.path()).unwrap();
        let f = create_in(&d, 12_345).unwrap();
        assert!(!dir.path().join(NEW_FILE).exists(), "renamed into place");
        assert_eq!(read(dir.path()), Ok(Some(12_345)));
        write(&f, 7).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(7)), "overwritten in place");
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, LEN);
        for bad in [
            // Made whole or not at all: an empty one is not the exchange's (round 62c).
            &b""[..],
            b"garbage",
            b"pingpost-ledger-head v1 seq 0000000000000000001x\n",
            b"pingpost-ledger-head v1 seq 00000000000000000001",
            b"pingpost-ledger-head v1 seq 99999999999999999999\n",
            b"pingpost-ledger-head v2 seq 00000000000000000001\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = read(dir.path()).unwrap_err();
            assert!(e.contains("is not a ledger head"), "{e}");
        }
        // A long file is said longer than a head, not by the bytes read of it (round
        // 203b: 150 MB was "found 50 bytes").
        std::fs::write(&path, vec![b'x'; 10_000]).unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(
            e.contains(&format!("found a file longer than {LEN} bytes")),
            "{e}"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("found 7 bytes"));
        // A symlink is never followed: not read, and replaced (not written through) when
        // the head is made.
        std::fs::remove_file(&path).unwrap();
        let outside = dir.path().join("outside");
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("is a symlink"));
        drop(create_in(&d, 3).unwrap());
        assert!(!outside.exists(), "nothing made through the link");
        assert_eq!(read(dir.path()), Ok(Some(3)));
        // A stale HEAD.new, file or symlink, is removed, never followed; a directory
        // there is an error naming it (round 63a: the error named HEAD).
        let new = dir.path().join(NEW_FILE);
        std::os::unix::fs::symlink(&outside, &new).unwrap();
        drop(create_in(&d, 4).unwrap());
        assert!(!outside.exists(), "nothing made through the link");
        assert_eq!(read(dir.path()), Ok(Some(4)));
        std::fs::write(&new, b"stale").unwrap();
        drop(create_in(&d, 5).unwrap());
        assert_eq!(read(dir.path()), Ok(Some(5)));
        std::fs::create_dir(&new).unwrap();
        let e = create_in(&d, 6).unwrap_err().to_string();
        assert!(e.contains("HEAD.new"), "{e}");
        assert_eq!(read(dir.path()), Ok(Some(5)), "the head is left as it was");
        std::fs::remove_dir(&new).unwrap();
        // Nor a directory (or anything else that is not a file).
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn records_are_removed_only_when_the_head_names_a_later_one() {
        let dir = Path::new("/l");
        assert_eq!(removed(dir, None, 5), None);
        assert_eq!(removed(dir, Some(5), 5), None);
        assert_eq!(
            removed(dir, Some(4), 5),
            None,
            "a head not yet written back"
        );
        let why = removed(dir, Some(9), 5).unwrap();
        assert!(why.contains("records 6..=9 were removed"), "{why}");
    }
}
