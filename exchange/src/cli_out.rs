//! Standard output of the command-line tools (`pingpost ledger ...`, `pingpost models
//! ...`): a reader that went away (`| head -1`) or a failed write ends the command with
//! status 2 and one line on stderr (as `ledger export` does), never a panic.

/// Writes `text` to stdout for the command `cmd` (`ledger verify`, `--check-config`), or
/// exits with 2.
pub fn emit(cmd: &str, text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        err(format_args!("pingpost {cmd}: writing: {e}"));
        std::process::exit(2);
    }
}

/// Writes one line to stderr, ignoring a failure: a reader of stderr that went away
/// (`2>&1 | head -1`) cannot be told anything, and the command's exit status says the
/// rest. `eprintln!` panics there instead (exit 101). Each line of `text` is written as
/// [`bounded_line`] makes it: what a message quotes from an argument or a file cannot
/// drive the terminal or fill it (black-box round 148a).
pub fn err(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let text = text.to_string();
    let mut out = String::with_capacity(text.len().min(64 * 1024) + 1);
    for line in text.split('\n') {
        out.push_str(&bounded_line(line));
        out.push('\n');
    }
    let mut e = std::io::stderr().lock();
    let _ = e.write_all(out.as_bytes());
}

/// The most characters of one line [`err`] writes, a `…` that ends a cut one included.
pub const LINE_CHARS_MAX: usize = 4_096;

/// `line` with each hidden character ([`proto::error::is_hidden`]: control characters,
/// text-direction overrides; a tab is kept) as `?`, cut to [`LINE_CHARS_MAX`] characters.
pub fn bounded_line(line: &str) -> String {
    cleaned(line, LINE_CHARS_MAX, |c| c == '\t')
}

/// `text` with each hidden character ([`proto::error::is_hidden`]) that `keep` does not
/// keep as `?`, at most `max` characters, a `…` that ends a cut one included.
fn cleaned(text: &str, max: usize, keep: impl Fn(char) -> bool) -> String {
    let cut = text.chars().nth(max).is_some();
    let mut out: String = text
        .chars()
        .take(if cut { max - 1 } else { max })
        .map(|c| {
            if keep(c) || !proto::error::is_hidden(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if cut {
        out.push('…');
    }
    out
}

/// The most characters of a path [`shown_path`] shows (then `…`).
pub const PATH_CHARS_MAX: usize = 256;

/// A path given on the command line or in a configuration, as a message quotes it: at most
/// [`PATH_CHARS_MAX`] characters (then `…`), each hidden one as `?`, so a line break in a
/// file name cannot forge a line (black-box round 148a).
pub fn shown_path(path: &std::path::Path) -> String {
    proto::error::shown_text(&path.to_string_lossy(), PATH_CHARS_MAX)
}

/// A path as a message shows it ([`shown_path`]), for `format!` and logs: `{}` of
/// `Shown(&path)`.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a>(pub &'a std::path::Path);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&shown_path(self.0))
    }
}

/// Ends the process on an argument parser's error: help and version as the parser prints
/// them, any other error on stderr with the arguments it quotes shown as
/// [`proto::error::quoted_args_shown`] makes them, each line bounded ([`err`]), and the
/// parser's exit status (2).
pub fn exit_on_args_error(e: &clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = proto::error::quoted_args_shown(&e.render().to_string(), &args());
    err(format_args!("{}", text.trim_end()));
    std::process::exit(e.exit_code());
}

/// The process's arguments, as text.
fn args() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Ends the process (status 2) when an argument holds a control or text-direction
/// character ([`proto::error::hidden_arg`]): called before the arguments are parsed.
pub fn refuse_hidden_args(program: &str) {
    if let Some(shown) = proto::error::hidden_arg(&args()) {
        err(format_args!(
            "{program}: an argument holds a control or text-direction character, which no option takes: {shown}"
        ));
        std::process::exit(2);
    }
}

/// A `tracing` writer for the exchange's log: each event's line is written whole, with
/// every hidden character of what it quotes (a line break, an escape, a text-direction
/// override: [`proto::error::is_hidden`]) as `?` and at most [`LOG_LINE_CHARS_MAX`]
/// characters, so a path or a name in a field can neither forge a line nor drive a
/// terminal (black-box round 149a: a `--ledger` path with a line break printed a
/// `FORGED INFO` line). With `ansi` (a terminal), the log's own colour escapes stay.
#[derive(Debug, Clone, Copy)]
pub struct LogLines {
    pub ansi: bool,
}

/// The most characters of one log line [`LogLines`] writes, a `…` that ends a cut one
/// included (its line break not counted).
pub const LOG_LINE_CHARS_MAX: usize = 16_384;

/// One event's line, written when dropped ([`LogLines`]).
#[derive(Debug)]
pub struct LogLine {
    ansi: bool,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogLines {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine {
            ansi: self.ansi,
            buf: Vec::with_capacity(256),
        }
    }
}

impl std::io::Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        use std::io::Write as _;
        if self.buf.is_empty() {
            return;
        }
        let line = safe_log_line(&String::from_utf8_lossy(&self.buf), self.ansi);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    }
}

/// `text` (one formatted event, ending in a line break) as [`LogLines`] writes it.
pub fn safe_log_line(text: &str, ansi: bool) -> String {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut out = cleaned(body, LOG_LINE_CHARS_MAX, |c| {
        c == '\t' || (ansi && c == '\u{1b}')
    });
    out.push('\n');
    out
}

/// `eprintln!` for the command-line tools, through [`err`]: never a panic on a closed
/// stderr.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::cli_out::err(format_args!($($arg)*))
    };
}

/// Writes `bytes` to `path` whole or not at all: a regular file (or a new one) is written
/// beside it under a temporary name and renamed into place, so a write that fails (a full
/// disk) leaves the file as it was, and no empty or partial file (black-box round 90b:
/// `ledger report --html` left a 0-byte page). A symbolic link is followed, and the file
/// it leads to is the one replaced, never the link (black-box round 236a: `--html
/// /dev/stdout` with stdout sent to a file renamed the page over the machine's
/// `/dev/stdout` link). A path that is this process's own stdout or stderr (by device and
/// inode: `/dev/stdout`, `/proc/self/fd/1`, the file they were sent to) is written
/// through it. Anything else (a pipe, a terminal, a FIFO) is written directly.
pub fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata(path) {
        let same = |fd: std::os::fd::BorrowedFd<'_>| {
            rustix::fs::fstat(fd).is_ok_and(|st| st.st_dev == m.dev() && st.st_ino == m.ino())
        };
        if same(std::io::stdout().as_fd()) {
            let mut out = std::io::stdout().lock();
            return out.write_all(bytes).and_then(|()| out.flush());
        }
        if same(std::io::stderr().as_fd()) {
            let mut err = std::io::stderr().lock();
            return err.write_all(bytes).and_then(|()| err.flush());
        }
    }
    let linked = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let target = if linked {
        // A link that leads nowhere is an error, not a file made in its place.
        std::fs::canonicalize(path)?
    } else {
        path.to_path_buf()
    };
    let regular_or_new = match std::fs::metadata(&target) {
        Ok(m) => m.is_file(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if !regular_or_new {
        return write_unbuffered(&target, bytes);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    // The file replaced keeps its mode (black-box round 237a: an owner-only page came out
    // readable by all).
    // Its permission bits only: never a set-user-ID, set-group-ID or sticky bit (black-box
    // round 238a: a page written over a 4755 file came out set-user-ID).
    let mode = std::fs::metadata(&target).ok().map(|m| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode(m.permissions().mode() & 0o777)
    });
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| mode.map_or(Ok(()), |m| std::fs::set_permissions(&tmp, m)))
        .and_then(|()| std::fs::rename(&tmp, &target));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes `bytes` to what is not a regular file (`/dev/stdout`, a pipe, a FIFO),
/// opened without waiting: a FIFO that no process reads is an error at once, not a wait
/// for a reader that may never come (black-box round 234a: `--html FIFO` hung).
fn write_unbuffered(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, open, Mode, OFlags};
    use std::io::Write;
    let fd = open(
        path,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| {
        if e == rustix::io::Errno::NXIO {
            std::io::Error::other("a FIFO that no process reads (start its reader first)")
        } else {
            std::io::Error::from(e)
        }
    })?;
    let flags = fcntl_getfl(&fd)?;
    fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.flush()
}

/// Whether `path` would be written in a ledger directory: inside `dir` ([`is_inside`]),
/// or in any directory that holds a ledger's files (`HEAD`, `FINGERPRINT_KEY`, `LOCK`, a
/// `seg-*.jsonl`), whatever path leads to it: another ledger's, or this one's through a
/// bind mount (black-box round 237a: both were written over, and a running exchange on
/// the other ledger stopped).
pub fn in_a_ledger(path: &std::path::Path, dir: &std::path::Path) -> bool {
    if is_inside(path, dir) {
        return true;
    }
    let resolved = std::fs::canonicalize(path).ok().or_else(|| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        std::fs::canonicalize(parent).ok().map(|p| p.join("x"))
    });
    let Some(parent) = resolved.as_deref().and_then(std::path::Path::parent) else {
        return false;
    };
    let holds = |dir: &std::path::Path, strong_only: bool| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name == "FINGERPRINT_KEY"
                    || (name.starts_with("seg-") && name.ends_with(".jsonl"))
                    || (!strong_only && matches!(name.as_ref(), "HEAD" | "LOCK"))
            })
        })
    };
    // Its own directory by any of a ledger's files; those above it by its key or a
    // segment (black-box round 238a: a page under another ledger's subdirectory).
    holds(parent, false) || parent.ancestors().skip(1).any(|a| holds(a, true))
}

/// Whether `path` names something inside `dir` (both resolved through symbolic links;
/// a path that does not exist yet by its parent's place).
pub fn is_inside(path: &std::path::Path, dir: &std::path::Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    let resolved = std::fs::canonicalize(path).ok().or_else(|| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        let name = path.file_name()?;
        std::fs::canonicalize(parent).ok().map(|p| p.join(name))
    });
    resolved.is_some_and(|p| p.starts_with(&dir))
}

#[cfg(test)]
mod tests {
    /// Black-box round 234a: `ledger report --html` could name a file in the ledger
    /// directory (it overwrote a segment, and the exchange would not start on it), and a
    /// FIFO with no reader made it wait for ever.
    #[test]
    fn inside_a_directory_is_told_through_links_and_a_fifo_without_reader_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = dir.path().join("ledger");
        std::fs::create_dir(&ledger).expect("made");
        std::fs::write(ledger.join("seg-00000001.jsonl"), b"x").expect("written");
        std::os::unix::fs::symlink(&ledger, dir.path().join("link")).expect("linked");
        for inside in [
            ledger.join("seg-00000001.jsonl"),
            ledger.join("new.html"),
            dir.path().join("link").join("HEAD"),
            ledger.join("..").join("ledger").join("x"),
        ] {
            assert!(super::is_inside(&inside, &ledger), "{}", inside.display());
        }
        for outside in [dir.path().join("page.html"), dir.path().join("ledger2")] {
            assert!(
                !super::is_inside(&outside, &ledger),
                "{}",
                outside.display()
            );
        }
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success());
        let e = super::write_whole(&fifo, b"page").expect_err("no reader");
        assert!(e.to_string().contains("no process reads"), "{e}");
    }

    /// Black-box round 148a: a path with terminal escapes, a carriage return and a line
    /// break reached the terminal raw, and a 100,000-character argument made a
    /// 100,000-byte line.
    #[test]
    fn what_a_message_quotes_cannot_drive_or_fill_the_terminal() {
        let path = std::path::Path::new("x\u{1b}[2J\u{1b}]8;;http://x\u{7}\r\n2026 FAKE\u{202e}");
        assert_eq!(super::shown_path(path), "x?[2J?]8;;http://x???2026 FAKE?");
        let long = "p".repeat(100_000);
        let shown = super::shown_path(std::path::Path::new(&long));
        assert_eq!(shown.chars().count(), super::PATH_CHARS_MAX + 1);
        assert!(shown.ends_with("p…"));
        assert_eq!(super::bounded_line("a\tb\u{1b}c\rd"), "a\tb?c?d");
        let line = super::bounded_line(&long);
        assert_eq!(line.chars().count(), super::LINE_CHARS_MAX);
        assert!(line.ends_with('…'));
        let exact = "q".repeat(super::LINE_CHARS_MAX);
        assert_eq!(super::bounded_line(&exact), exact);
        // The log: a field's line break, carriage return and direction override are
        // shown as `?`; the colour escapes of a terminal's log stay, not a plain one's.
        let event = "\u{1b}[32m INFO\u{1b}[0m ledger created dir=/l/led\nFORGED INFO x\r\u{202e}\n";
        assert_eq!(
            super::safe_log_line(event, true),
            "\u{1b}[32m INFO\u{1b}[0m ledger created dir=/l/led?FORGED INFO x??\n"
        );
        assert_eq!(
            super::safe_log_line(event, false),
            "?[32m INFO?[0m ledger created dir=/l/led?FORGED INFO x??\n"
        );
        let huge = super::safe_log_line(&"z".repeat(100_000), false);
        // At most the bound, the `…` included (round 150a: one over), and the line break.
        assert_eq!(huge.chars().count(), super::LOG_LINE_CHARS_MAX + 1);
        assert!(huge.ends_with("z…\n"));
        let exact = "z".repeat(super::LOG_LINE_CHARS_MAX);
        assert_eq!(super::safe_log_line(&exact, false), format!("{exact}\n"));
    }

    #[test]
    fn a_whole_write_replaces_a_file_or_leaves_it_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let page = dir.path().join("page.html");
        super::write_whole(&page, b"one").expect("written");
        assert_eq!(std::fs::read(&page).expect("read"), b"one");
        super::write_whole(&page, b"two").expect("written");
        assert_eq!(std::fs::read(&page).expect("read"), b"two");
        // A write that cannot be made (its directory is gone) leaves nothing behind.
        let gone = dir.path().join("gone").join("page.html");
        assert!(super::write_whole(&gone, b"x").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listed")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["page.html"]);
        // Not a regular file: written directly.
        super::write_whole(std::path::Path::new("/dev/null"), b"x").expect("written");
    }
}
