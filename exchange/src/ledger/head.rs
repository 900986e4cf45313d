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

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The file's name in the ledger directory.
pub const HEAD_FILE: &str = "HEAD";

const PREFIX: &str = "pingpost-ledger-head v1 seq ";
/// The length of the line: the prefix, 20 digits and a newline.
const LEN: usize = PREFIX.len() + 20 + 1;

/// The line for `seq`.
pub fn line(seq: u64) -> String {
    format!("{PREFIX}{seq:020}\n")
}

/// Writes `seq` over the file's line.
pub fn write(file: &File, seq: u64) -> io::Result<()> {
    file.write_all_at(line(seq).as_bytes(), 0)
}

/// What `HEAD` in `dir` says: `Ok(None)` when there is no such file or it is empty (made
/// but never written before a crash), `Ok(Some(seq))`, or an error saying what is wrong
/// with it (unreadable, or not a line this exchange writes).
pub fn read(dir: &Path) -> Result<Option<u64>, String> {
    let path = dir.join(HEAD_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    let bad = || {
        format!(
            "{} is not a ledger head this exchange writes (expected one line `{PREFIX}<20 digits>`, found {} bytes); restore it from a backup, or remove it to start without the check of removed records",
            path.display(),
            bytes.len()
        )
    };
    if bytes.len() != LEN || bytes[LEN - 1] != b'\n' || !bytes.starts_with(PREFIX.as_bytes()) {
        return Err(bad());
    }
    let digits = &bytes[PREFIX.len()..LEN - 1];
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(bad)
}

/// Why a ledger in `dir` whose records end at `last_seq` lacks records its `HEAD` says
/// were written (`head`), if it does.
pub fn removed(dir: &Path, head: Option<u64>, last_seq: u64) -> Option<String> {
    let head = head?;
    (head > last_seq).then(|| {
        format!(
            "ledger directory {} ends at record {last_seq}, but its {HEAD_FILE} file says record {head} was written and synced: records {}..={head} were removed (its newest segment(s) deleted or cut); restore them from a backup (an exchange started on it would sell again what they record), or, if this is an older backup restored on purpose, remove {HEAD_FILE}",
            dir.display(),
            last_seq + 1
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_head_reads_back_what_was_written_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None), "no file");
        let path = dir.path().join(HEAD_FILE);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read(dir.path()), Ok(None), "made, never written");
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        write(&f, 12_345).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(12_345)));
        write(&f, 7).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(7)), "overwritten in place");
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, LEN);
        for bad in [
            &b"garbage"[..],
            b"pingpost-ledger-head v1 seq 0000000000000000001x\n",
            b"pingpost-ledger-head v1 seq 00000000000000000001",
            b"pingpost-ledger-head v1 seq 99999999999999999999\n",
            b"pingpost-ledger-head v2 seq 00000000000000000001\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = read(dir.path()).unwrap_err();
            assert!(e.contains("is not a ledger head"), "{e}");
        }
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
