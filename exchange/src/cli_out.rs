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
/// rest. `eprintln!` panics there instead (exit 101).
pub fn err(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(text).and_then(|()| e.write_all(b"\n"));
}

/// `eprintln!` for the command-line tools, through [`err`]: never a panic on a closed
/// stderr.
#[macro_export]
macro_rules! say_err {
    ($($arg:tt)*) => {
        $crate::cli_out::err(format_args!($($arg)*))
    };
}
