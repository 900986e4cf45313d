//! Serves one of the example bidders until Ctrl-C.
//!
//! ```text
//! BUYER_SECRET=whsec_... cargo run -p bidder-sdk --example serve_bidder -- \
//!     --port 9101 --secret-env BUYER_SECRET --kind flat|scorecard [--host 127.0.0.1] \
//!     [--price 12.50] [--states TX,OK]
//! ```
//! `--price` and `--states` apply to `--kind flat` (defaults 10.00 and TX).

use std::sync::Arc;

use anyhow::{bail, Context};
use bidder_sdk::examples::{FlatBidder, ScorecardBidder};
use bidder_sdk::{serve, Bidder, Micros, Secret, ServeOptions};
use tokio::net::TcpListener;

const USAGE: &str = "\
usage: serve_bidder [--host H] [--port N] [--secret-env VAR] [--kind flat|scorecard]
                    [--price 12.50] [--states TX,OK]

Serves an example bidder (the buyer side of the protocol, docs/API.md) until Ctrl-C.
  --host H          address to listen on (default 127.0.0.1)
  --port N          port to listen on, 0 for any free port (default 9101)
  --secret-env VAR  environment variable holding the buyer's signing secret, the one
                    the exchange's buyers.ID.secret_env names (default BUYER_SECRET)
  --kind K          flat: bids --price on leads from --states and passes on the others
                    (no_bid, outside_criteria); scorecard: prices each lead from its
                    fields (default flat)
  --price P         flat's bid, in the vertical's currency (default 10.00)
  --states LIST     flat's states, comma-separated (default TX only)
Its ping and post paths are /ping and /post. flat accepts every post; scorecard
rejects a post of a phone number it already bought (reason duplicate), as a real
buyer would.";

#[derive(Debug)]
struct Args {
    host: String,
    port: u16,
    secret_env: String,
    kind: String,
    price: Micros,
    states: Vec<String>,
}

/// The arguments after the program's name; `None` for `--help` (the usage is printed).
/// The longest argument taken (a host name, a variable's name, a list of states).
const ARG_BYTES_MAX: usize = 1_024;

fn parse_args(argv: impl IntoIterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 9101,
        secret_env: "BUYER_SECRET".into(),
        kind: "flat".into(),
        price: Micros(10_000_000),
        states: vec!["TX".into()],
    };
    // Every error below quotes the argument it refuses: one with a line break, an escape
    // or a text-direction override, or a very long one, is refused first, shown safely
    // (black-box round 149a: `--port $'1\nFORGED'` printed a line of its own).
    let argv: Vec<String> = argv.into_iter().collect();
    if let Some(a) = argv
        .iter()
        .find(|a| a.chars().any(proto::error::is_hidden) || a.len() > ARG_BYTES_MAX)
    {
        bail!(
            "an argument holds a control or text-direction character, or is longer than {ARG_BYTES_MAX} bytes: {}\n{USAGE}",
            proto::error::shown_text(a, 64)
        );
    }
    let mut it = argv.into_iter();
    let mut seen: Vec<String> = Vec::new();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        // An unknown flag is said as such, last or not (black-box round 111a: the last
        // argument was told it "needs a value").
        if !matches!(
            flag.as_str(),
            "--host" | "--port" | "--secret-env" | "--kind" | "--price" | "--states"
        ) {
            bail!("unknown flag {flag}\n{USAGE}");
        }
        // Given twice, which one was meant is anyone's guess (round 113a: the last won).
        if seen.contains(&flag) {
            bail!("{flag} is given more than once: give it once\n{USAGE}");
        }
        seen.push(flag.clone());
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        // The next flag is no value (black-box round 243a: `--kind --port 9300` was told
        // "unknown flag 9300").
        if value.starts_with("--") || value == "-h" {
            bail!("{flag} needs a value (it was followed by {value})\n{USAGE}");
        }
        match flag.as_str() {
            "--host" => args.host = value,
            "--port" => {
                // Not with the parser's own words as a cause (black-box round 242b:
                // "number too large to fit in target type").
                args.port = value.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--port {value}: a port number from 0 to 65535 (0: any free port)"
                    )
                })?
            }
            "--secret-env" => args.secret_env = value,
            "--kind" => args.kind = value,
            "--price" => {
                // Digits and at most one '.': an exponent (`1e-7`) is not "not finite"
                // (black-box round 111c), it is not written as the flag takes it.
                if !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                    bail!("--price {value}: write a decimal such as 12.50 (digits and at most one '.', no sign or exponent)");
                }
                args.price =
                    Micros::parse_decimal(&value).with_context(|| format!("--price {value}"))?;
                // A bid of 0 is a pass (API.md): a flat bidder at 0 would never bid
                // (black-box round 112a: started, saying it "bids 0.00").
                if args.price == Micros(0) {
                    bail!("--price {value}: must be more than 0 (a bid of 0 is a pass, so this bidder would never bid)");
                }
            }
            "--states" => args.states = value.split(',').map(|s| s.trim().to_uppercase()).collect(),
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    // Checked before anything starts or is printed (black-box round 22: an unknown kind
    // was announced as listening, then refused).
    if !matches!(args.kind.as_str(), "flat" | "scorecard") {
        bail!("unknown --kind {}: flat or scorecard\n{USAGE}", args.kind);
    }
    // Every bad one at once (round 112a: only the first was named).
    let bad: Vec<String> = args
        .states
        .iter()
        .filter(|s| !proto::schema::is_us_state(s))
        .map(|s| format!("{s:?}"))
        .collect();
    if !bad.is_empty() {
        bail!(
            "--states: {} {} not a US state or territory code (such as TX)",
            bad.join(", "),
            if bad.len() == 1 { "is" } else { "are" }
        );
    }
    Ok(Some(args))
}

async fn run<B: Bidder>(
    bidder: B,
    listener: TcpListener,
    options: ServeOptions,
) -> anyhow::Result<()> {
    let shutdown = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            say_err(&format!(
                "serve_bidder: cannot listen for Ctrl-C ({e}); stop the process to exit"
            ));
            std::future::pending::<()>().await;
        }
    };
    serve(listener, Arc::new(bidder), options, shutdown).await?;
    say("serve_bidder: stopped");
    Ok(())
}

/// Says an error in one line, its causes after colons, and exits 1. Returning the error
/// from `main` would print its `Debug` form, with a backtrace whenever `RUST_BACKTRACE`
/// is set (black-box round 130a: thirty frames and build paths after a bad `--kind`).
fn main() -> std::process::ExitCode {
    match serve_from_args() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            say_err(&format!("Error: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A line on stdout; a stdout that is gone (`serve_bidder --help | true`) is no reason to
/// stop (black-box round 243a: `println!` panicked with a backtrace, exit 101).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// [`say`] on stderr.
fn say_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The secret `var` holds (`value`: what reading it gave), or why there is none. Never
/// the value in a message: not even one that is not UTF-8 (black-box round 138a: std's
/// error quoted its bytes).
fn secret_from(var: &str, value: Result<String, std::env::VarError>) -> anyhow::Result<Secret> {
    let text = match value {
        Ok(text) if text.is_empty() => bail!(
            "environment variable {var} is set but empty: set it to the buyer's signing secret (the one the exchange's buyers.ID.secret_env names)"
        ),
        Ok(text) => text,
        Err(std::env::VarError::NotPresent) => bail!(
            "environment variable {var} is not set: set it to the buyer's signing secret (the one the exchange's buyers.ID.secret_env names), or name another variable with --secret-env VAR"
        ),
        Err(std::env::VarError::NotUnicode(_)) => bail!(
            "environment variable {var} is set but is not UTF-8 text (a binary key goes as whsec_ and its base64)"
        ),
    };
    Secret::new(&text).map_err(|e| anyhow::anyhow!("{var}: {e}"))
}

#[tokio::main]
async fn serve_from_args() -> anyhow::Result<()> {
    let Some(args) = parse_args(std::env::args().skip(1))? else {
        say(USAGE);
        return Ok(());
    };
    let secret = secret_from(&args.secret_env, std::env::var(&args.secret_env))?;
    let options = ServeOptions::new(secret);
    // Refused before it says it serves (black-box round 136b: a short secret printed the
    // serving line, then the error).
    options
        .check()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.secret_env))?;
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("cannot bind {}:{}", args.host, args.port))?;
    let addr = listener.local_addr()?;
    // What it bids on, said at the start (black-box round 110c: a flat bidder started
    // without --states bid on TX leads only, and nothing said so).
    let bids = match args.kind.as_str() {
        "flat" => format!(
            "bids {} on leads from {} and passes on the others",
            args.price,
            args.states.join(", ")
        ),
        _ => "prices each lead from its fields".to_string(),
    };
    say(&format!(
        "serve_bidder: {} bidder on http://{addr}{} and {}: {bids}",
        args.kind, options.ping_path, options.post_path
    ));
    match args.kind.as_str() {
        "flat" => run(FlatBidder::new(args.price, args.states), listener, options).await,
        "scorecard" => run(ScorecardBidder::default(), listener, options).await,
        other => bail!("unknown --kind {other}: flat or scorecard"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(line: &str) -> anyhow::Result<Option<Args>> {
        parse_args(line.split_whitespace().map(String::from))
    }

    fn refusal(line: &str) -> String {
        let e = parse(line).expect_err(line);
        format!("{e:#}")
    }

    /// Black-box round 149a: a value with a line break printed a forged line, and a
    /// 6,000-character one a line as long.
    #[test]
    fn an_argument_with_a_control_character_or_too_long_is_refused_shown_safely() {
        for bad in [
            vec!["--port".to_string(), "1\nFORGED".into()],
            vec!["--kind".to_string(), "flat\u{1b}[2J\u{202e}".into()],
            vec!["--states".to_string(), "TX,".repeat(2_000)],
        ] {
            let e = format!("{:#}", parse_args(bad.clone()).expect_err("refused"));
            let first = e.lines().next().unwrap_or_default();
            assert!(first.starts_with("an argument holds"), "{e}");
            assert!(first.chars().count() < 200, "{first}");
            assert!(
                !e.lines().any(|l| l.starts_with("FORGED")) && !e.contains('\u{1b}'),
                "{e:?}"
            );
        }
    }

    #[test]
    fn takes_each_flag_and_keeps_the_defaults_of_the_others() {
        let a = parse("--port 9300 --price 12.50 --states tx,ok")
            .unwrap()
            .unwrap();
        assert_eq!(a.port, 9300);
        assert_eq!(a.price, Micros(12_500_000));
        assert_eq!(a.states, ["TX", "OK"]);
        assert_eq!((a.host.as_str(), a.kind.as_str()), ("127.0.0.1", "flat"));
        assert_eq!(a.secret_env, "BUYER_SECRET");
        assert!(parse("--port 1 --help").unwrap().is_none());
    }

    /// Round 243a: an empty secret was told about `whsec_` and base64.
    #[test]
    fn an_empty_unset_or_binary_secret_is_told_as_such() {
        use std::env::VarError;
        let said = |v| format!("{:#}", secret_from("S", v).unwrap_err());
        let empty = said(Ok(String::new()));
        assert!(
            empty.contains("S is set but empty") && !empty.contains("whsec_"),
            "{empty}"
        );
        assert!(said(Err(VarError::NotPresent)).contains("--secret-env VAR"));
        let binary = said(Err(VarError::NotUnicode(std::ffi::OsString::from("x"))));
        assert!(binary.contains("not UTF-8 text"), "{binary}");
        assert!(secret_from("S", Ok("s".repeat(32))).is_ok());
    }

    #[test]
    fn refuses_each_bad_argument_naming_it() {
        for (line, said) in [
            // Round 113a: the last of a repeated flag won in silence.
            ("--port 9300 --port 9301", "--port is given more than once"),
            (
                "--price 1 --kind flat --price 2",
                "--price is given more than once",
            ),
            // Round 111a: an unknown last flag was told it "needs a value".
            ("--port 9300 --prize", "unknown flag --prize"),
            ("--port", "--port needs a value"),
            // Round 243a: the next flag was taken for the value.
            (
                "--kind --port 9300",
                "--kind needs a value (it was followed by --port)",
            ),
            ("--states --help", "--states needs a value"),
            ("--port 70000", "a port number from 0 to 65535"),
            ("--price 0", "must be more than 0"),
            ("--price -1", "write a decimal such as 12.50"),
            ("--price 1e3", "write a decimal such as 12.50"),
            ("--kind auction", "unknown --kind auction"),
            ("--states TX,XX,YY", "\"XX\", \"YY\" are not a US state"),
        ] {
            let e = refusal(line);
            assert!(e.contains(said), "{line}: {e}");
            // The refusal in its own words only (round 242b: the parser's "number too
            // large to fit in target type" followed it).
            assert!(!e.contains("target type"), "{line}: {e}");
        }
    }
}
