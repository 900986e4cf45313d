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

/// The most characters of one line [`err`] writes (then `…`).
pub const LINE_CHARS_MAX: usize = 4_096;

/// `line` with each hidden character ([`proto::error::is_hidden`]: control characters,
/// text-direction overrides; a tab is kept) as `?`, cut to [`LINE_CHARS_MAX`] characters.
pub fn bounded_line(line: &str) -> String {
    let mut out: String = line
        .chars()
        .take(LINE_CHARS_MAX)
        .map(|c| {
            if c != '\t' && proto::error::is_hidden(c) {
                '?'
            } else {
                c
            }
        })
        .collect();
    if line.chars().nth(LINE_CHARS_MAX).is_some() {
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
    let text = path.to_string_lossy();
    let mut out: String = text
        .chars()
        .take(PATH_CHARS_MAX)
        .map(|c| if proto::error::is_hidden(c) { '?' } else { c })
        .collect();
    if text.chars().nth(PATH_CHARS_MAX).is_some() {
        out.push('…');
    }
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
/// `ledger report --html` left a 0-byte page). Anything else (`/dev/stdout`, a pipe) is
/// written directly.
pub fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let regular_or_new = match std::fs::metadata(path) {
        Ok(m) => m.is_file(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if !regular_or_new {
        return std::fs::write(path, bytes);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
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
        assert_eq!(line.chars().count(), super::LINE_CHARS_MAX + 1);
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
