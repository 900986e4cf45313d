//! Standard output of the command-line tools (`pingpost ledger ...`, `pingpost models
//! ...`): a reader that went away (`| head -1`) or a failed write ends the command with
//! status 2 and one line on stderr (as `ledger export` does), never a panic.

/// Writes `text` to stdout for the command `cmd` (`ledger verify`, `--check-config`), or
/// exits with 2.
pub fn emit(cmd: &str, text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(text).and_then(|()| out.flush()) {
        eprintln!("pingpost {cmd}: writing: {e}");
        std::process::exit(2);
    }
}
