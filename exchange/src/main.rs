//! `pingpost`: the exchange binary. Thin by design: parse arguments, load the
//! configuration, start the server (and, with `--demo`, the example bidders and a stream
//! of sample leads), stop gracefully on Ctrl-C or SIGTERM. `pingpost ledger verify`
//! checks a ledger directory and exits; `pingpost ledger report | replay | export` are the
//! finance tools (`pingpost::finance`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pingpost::app::{self, DEFAULT_CONFIG};
use pingpost::clock::Clock;
use pingpost::config;

/// jemalloc rather than glibc's malloc: allocation and freeing were the largest single
/// item of the exchange's instructions per auction, and jemalloc also gives memory back
/// (a configuration of 10,000 buyers settles at about a third of glibc's resident size).
/// See docs/BENCHMARKS.md, "Profile: instructions per auction". Its C sources are vendored
/// by the crate and built with the system C compiler, `sh` and `make`. Its built-in options
/// (`.cargo/config.toml`: a background thread purges, dirty pages go back after 1 s) keep
/// resident memory close to what the exchange holds (P10).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The pingpost lead exchange.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML). Without it, the embedded default (config/default.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `server.listen`.
    #[arg(long, value_parser = listen_arg)]
    listen: Option<SocketAddr>,
    /// Overrides `server.ledger_path` (the ledger directory).
    #[arg(long, value_parser = ledger_dir_arg)]
    ledger: Option<PathBuf>,
    /// Validate the configuration, print every error, and exit.
    #[arg(long)]
    check_config: bool,
    /// Also start example bidders on the loopback ports the configuration's buyers point
    /// at, and send a small stream of sample `auto_insurance` leads from the demo seller
    /// (key `demo-seller-key`), printing each ping, bid, post and sale. A configuration
    /// without that vertical and seller (the default has both), or whose vertical's fields
    /// would refuse the sample leads, is refused.
    #[arg(long)]
    demo: bool,
    /// With --demo: milliseconds between sample leads.
    #[arg(long, default_value_t = 1500, requires = "demo")]
    demo_interval_ms: u64,
    /// With --demo: stop the exchange (and its bidders) after this many sample leads (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0, requires = "demo")]
    demo_leads: u64,
    /// Lets this start begin a new lead fingerprint key beside a ledger whose runs used
    /// another (its FINGERPRINT_KEY missing or replaced): de-duplication then forgets the
    /// consumers sold before. Without it, such a start is refused (docs/LEDGER.md).
    #[arg(long)]
    new_fingerprint_key: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tools for the ledger (see docs/LEDGER.md).
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Trains the lead-score and realization models of each vertical with features (or
    /// one) from the ledger, writes a new model set under `learning.models_dir`, and
    /// prints what it made as JSON lines. Exit status 1 when training was refused (too
    /// little data: the counts found and needed are printed), 2 on a bad argument.
    Train {
        /// The configuration (its features, `[learning]` and ledger directory); without
        /// it, the embedded default.
        #[arg(long = "config")]
        config_file: Option<PathBuf>,
        /// The ledger directory (overrides the configuration's `server.ledger_path`).
        #[arg(long = "ledger", value_parser = ledger_dir_arg)]
        ledger_dir: Option<PathBuf>,
        /// Only this vertical.
        #[arg(long)]
        vertical: Option<String>,
        /// The version name (default: v<UTC time>).
        #[arg(long)]
        version: Option<String>,
        /// Make the new set the champion if it beats the serving one on the newest
        /// held-out window (a running exchange serves it once two model-directory checks
        /// in a row read it, within twice `learning.watch_ms`; with `learning.watch_ms =
        /// 0`, only after `POST /admin/models` or a restart).
        #[arg(long)]
        promote: bool,
    },
    /// Model versions per vertical with their held-out metrics (see docs/AI.md).
    Models {
        /// The configuration (its features and `learning.models_dir`); without it, the
        /// embedded default.
        #[arg(long = "config", global = true)]
        config_file: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<ModelsCommand>,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Lists each vertical's versions, champion and metrics (the default).
    List,
    /// Goes back one version: the previous champion in HISTORY serves again.
    Rollback {
        /// The vertical whose champion goes back one version.
        #[arg(long)]
        vertical: String,
    },
    /// Writes a model set from XGBoost JSON models trained elsewhere (a manifest is made
    /// from the configuration's features; the models must take exactly those features).
    Import {
        /// The vertical the set is for (its features and encoding version come from the
        /// configuration).
        #[arg(long)]
        vertical: String,
        /// The new set's version name: letters, digits, `_`, `-` and `.` (not first), at
        /// most 64 characters, and not one that exists already.
        #[arg(long)]
        version: String,
        /// The realization model (XGBoost JSON). At least one of --realization and
        /// --lead-score is needed.
        #[arg(long)]
        realization: Option<PathBuf>,
        /// The lead-score model (XGBoost JSON). At least one of --realization and
        /// --lead-score is needed.
        #[arg(long)]
        lead_score: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum LedgerCommand {
    /// Checks every record's checksum, the sequence numbers and the hash chain across all
    /// segments; prints the records per type and the first problem with its segment file
    /// and byte offset. Then reconciles the money (revenue minus refunds equals the sum of
    /// sales; margin = bid - seller price; with --config, each seller price follows the
    /// seller's payout model in the configuration given, i.e. today's, for the sales of the
    /// ledger's latest generation) and checks that every delivery has an outcome, naming
    /// each mismatch by segment, seq and ids. Exit status: 0 clean, 1 a problem or
    /// mismatch found (or records of a newer format version skipped: not reconciled), 2
    /// the ledger (or the configuration) could not be read. Reading only: safe on a
    /// running exchange's ledger (its last line may be in flight).
    Verify {
        /// The ledger directory (overrides the configuration's `server.ledger_path`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The configuration: its `server.ledger_path` (unless --dir is given) and the
        /// sellers' payout models for the payout checks. Without --dir or --config: the
        /// default configuration's directory (`pingpost-ledger`), no payout checks.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A record kept outside the exchange host, `SEQ:SUM` as verify printed it
        /// (`last record: seq N, sum …`): the ledger must still have that record with
        /// that sum, else it was changed at or before it, or shortened. Repeatable.
        #[arg(long = "anchor", value_name = "SEQ:SUM", allow_hyphen_values = true)]
        anchors: Vec<String>,
    },
    /// Profit and loss by day, seller, buyer or vertical: pings, bids, quotes, sales,
    /// revenue, payouts, margin, returns and refunds (test leads left out). Exit status 2
    /// on a bad argument or an unreadable ledger.
    Report {
        /// The ledger directory (overrides the configuration's `server.ledger_path`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The configuration (its ledger directory, and the currency of each vertical).
        #[arg(long)]
        config: Option<PathBuf>,
        /// First day, YYYY-MM-DD (inclusive): a UTC day, or one of --tz.
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD (inclusive): a UTC day, or one of --tz.
        #[arg(long)]
        to: Option<String>,
        /// The IANA time zone whose days --from, --to and the day grouping are (such as
        /// America/New_York; default UTC).
        #[arg(long, value_name = "ZONE")]
        tz: Option<String>,
        /// day, seller, buyer or vertical.
        #[arg(long, default_value = "day")]
        by: String,
        /// table, csv or json.
        #[arg(long, default_value = "table")]
        format: String,
        /// Also write one self-contained HTML page (charts and every grouping) here.
        #[arg(long)]
        html: Option<PathBuf>,
    },
    /// Re-derives an auction's award from its recorded bids and the configuration, checks
    /// it against the record and explains why the winner won and why each other buyer
    /// lost or was skipped. Exit status: 0 it matches, 1 it does not, 2 no such auction or
    /// an unreadable ledger.
    Replay {
        /// The auction's id (`au_...`), or the ping id the seller was answered
        /// (`pg_...`).
        auction_id: String,
        /// The ledger directory (overrides the configuration's `server.ledger_path`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The configuration (payout models, reserves, floors); without it the auction is
        /// explained but not re-derived.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The records of a range of days (UTC, or of --tz): JSON lines exactly as stored
    /// (framing included) or CSV with a fixed column set per record type, on stdout.
    Export {
        /// The ledger directory (overrides the configuration's `server.ledger_path`).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The configuration (its ledger directory).
        #[arg(long)]
        config: Option<PathBuf>,
        /// First day, YYYY-MM-DD (inclusive): a UTC day, or one of --tz.
        #[arg(long)]
        from: String,
        /// Last day, YYYY-MM-DD (inclusive): a UTC day, or one of --tz.
        #[arg(long)]
        to: String,
        /// The IANA time zone whose days --from and --to are (such as America/New_York;
        /// default UTC).
        #[arg(long, value_name = "ZONE")]
        tz: Option<String>,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Record types, comma-separated (jsonl: all by default; csv: one, `sale` by
        /// default).
        #[arg(long = "type")]
        types: Option<String>,
    },
}

/// `pingpost ledger verify`: the exit status.
fn ledger_verify(dir: Option<PathBuf>, config: Option<PathBuf>, anchors: &[String]) -> i32 {
    let anchors = match anchors
        .iter()
        .map(|a| pingpost::ledger::segments::Anchor::parse(a))
        .collect::<Result<Vec<_>, String>>()
    {
        Ok(a) => a,
        Err(e) => {
            pingpost::say_err!("pingpost ledger verify: --anchor {e}");
            return 2;
        }
    };
    let cfg = match &config {
        Some(file) => match pingpost::finance::load_config(file) {
            Ok(c) => Some(c),
            Err(e) => {
                pingpost::say_err!("pingpost ledger verify: {e}");
                return 2;
            }
        },
        None => None,
    };
    let dir = match (dir, config) {
        (Some(d), _) => d,
        (None, Some(file)) => match ledger_dir_of(&file) {
            Ok(d) => d,
            Err(e) => {
                pingpost::say_err!("pingpost ledger verify: {e}");
                return 2;
            }
        },
        (None, None) => PathBuf::from(config::defaults::LEDGER_PATH),
    };
    if !dir.is_dir() {
        pingpost::say_err!(
            "pingpost ledger verify: {}",
            pingpost::finance::not_a_ledger_directory(&dir)
        );
        return 2;
    }
    if let Some(why) = pingpost::ledger::segments_lost(&dir) {
        pingpost::cli_out::emit("ledger verify", format_args!("PROBLEM: {why}\n"));
        return 1;
    }
    // Then a directory with no segment (and no key): not a ledger at all.
    if let Some(why) = pingpost::finance::no_ledger_in(&dir) {
        pingpost::say_err!("pingpost ledger verify: {why}");
        return 2;
    }
    // The head is read before the segments: what it names was synced before they are read,
    // even while an exchange appends.
    let head = pingpost::ledger::head::read(&dir);
    // A head that is there but cannot be read is an I/O error, as an unreadable segment
    // is (status 2), not a verdict on the records (black-box round 172a: "OK" for the
    // chain, then this as a PROBLEM, status 1).
    if let Err(why) = &head {
        if why.starts_with(pingpost::ledger::head::UNREADABLE) {
            pingpost::say_err!("pingpost ledger verify: {why}");
            return 2;
        }
    }
    match pingpost::ledger::segments::verify(&dir) {
        Ok(report) => {
            pingpost::cli_out::emit("ledger verify", format_args!("{}", report.render(&dir)));
            let no_head = matches!(head, Ok(None));
            // Where the chain stops at a bad record, the ledger does not end there: the head
            // is compared only with a ledger that verifies (or a torn tail, its end) (black-box
            // round 64c: an edited record was told as records removed after it).
            let chain_ends = report.problem.as_ref().is_none_or(|p| p.is_torn_tail(&dir));
            let head_problem = match head {
                Ok(said) if chain_ends => {
                    pingpost::ledger::head::removed(&dir, said, report.last_seq)
                }
                Ok(_) => None,
                Err(why) => Some(why),
            };
            // The fingerprint key against the ids the ledger's starts recorded.
            let key_problem =
                match pingpost::fingerprint::check_against_ledger(&dir, Some(report.last_seq)) {
                    Some((true, why)) => {
                        pingpost::cli_out::emit("ledger verify", format_args!("PROBLEM: {why}\n"));
                        true
                    }
                    Some((false, note)) => {
                        pingpost::cli_out::emit("ledger verify", format_args!("note: {note}\n"));
                        false
                    }
                    None => false,
                };
            if no_head && report.last_seq > 0 {
                // Said, not failed: a ledger from before heads has none (round 62c).
                pingpost::cli_out::emit(
                    "ledger verify",
                    format_args!(
                        "note: no HEAD file (a ledger from before heads, or it was removed): whether records were removed from the end of this ledger cannot be checked without an anchor\n"
                    ),
                );
            }
            if let Some(why) = &head_problem {
                pingpost::cli_out::emit("ledger verify", format_args!("PROBLEM: {why}\n"));
            }
            let verifies = report.problem.as_ref().is_none_or(|p| p.is_torn_tail(&dir));
            if !verifies {
                // Its records cannot be trusted (and a line may be any size): the money is
                // still reconciled below, line by line, to name what is wrong with it.
                pingpost::cli_out::emit(
                    "ledger verify",
                    format_args!(
                        "deliveries with no outcome: not listed (the ledger does not verify)\n"
                    ),
                );
            } else {
                print_unknown_outcomes(&dir, report.last_seq);
            }
            // A running exchange appends meanwhile: every later reading stops at the last
            // record the chain check saw (a ledger that does not verify: read it all).
            let upto = verifies.then_some(report.last_seq);
            let reconciled =
                match pingpost::finance::reconcile::reconcile_upto(&dir, cfg.as_ref(), upto) {
                    Ok(r) => r,
                    // The error names the ledger or its file (black-box round 189a: the
                    // directory was named twice).
                    Err(e) => {
                        pingpost::say_err!("pingpost ledger verify: {e}");
                        return 2;
                    }
                };
            pingpost::cli_out::emit(
                "ledger verify",
                // Records removed from the end (the head): what is left is not the whole
                // ledger, so its money is never called OK.
                format_args!(
                    "{}",
                    reconciled.render_with(
                        verifies && head_problem.is_none(),
                        report.problem.as_ref().filter(|_| verifies).map(|p| {
                            // A whole last record without its newline is completed, not cut
                            // (black-box round 72a: verify said it would be truncated).
                            if p.what == pingpost::ledger::segments::LineProblem::NoNewline {
                                "adds the last record's missing newline (the record counts)"
                            } else {
                                "truncates the torn tail"
                            }
                        })
                    )
                ),
            );
            let mut anchored = true;
            if !anchors.is_empty() {
                match pingpost::ledger::segments::check_anchors(&dir, &anchors) {
                    Ok(lines) => {
                        for (ok, line) in lines {
                            anchored &= ok;
                            pingpost::cli_out::emit("ledger verify", format_args!("{line}\n"));
                        }
                    }
                    // The error names the ledger or its file (black-box round 189a: the
                    // directory was named twice).
                    Err(e) => {
                        pingpost::say_err!("pingpost ledger verify: {e}");
                        return 2;
                    }
                }
            }
            // Records skipped (a newer format version) are money not read: never `OK`.
            if report.problem.is_some()
                || head_problem.is_some()
                || key_problem
                || reconciled.failed()
                || reconciled.incomplete()
                || !anchored
            {
                1
            } else {
                0
            }
        }
        Err(e) => {
            pingpost::say_err!(
                "pingpost ledger verify: {}: {e}",
                pingpost::cli_out::shown_path(&dir)
            );
            2
        }
    }
}

/// Deliveries with a `post_sent` record and no outcome, for finance (see docs/LEDGER.md,
/// Recovery): their count, then each one (the first 1,000).
fn print_unknown_outcomes(dir: &std::path::Path, upto: u64) {
    let Ok(scan) = pingpost::recovery::Scan::of_dir(dir, Some(upto)) else {
        return;
    };
    // Test leads count in no cap and are never billed: nothing to settle (black-box
    // round 31: they were listed as counted and to settle). Each line counts its own
    // apart (round 196b: one line above the first counted every kind's, and read as
    // test deliveries with no outcome).
    fn split(all: Vec<&pingpost::recovery::Sent>) -> (Vec<&pingpost::recovery::Sent>, usize) {
        let tests = all.iter().filter(|s| s.test).count();
        (all.into_iter().filter(|s| !s.test).collect(), tests)
    }
    let lists: [(&str, (Vec<&pingpost::recovery::Sent>, usize)); 3] = [
        (
            "deliveries with no outcome (delivered, outcome unknown)",
            split(scan.unknown().collect()),
        ),
        (
            "late accepts (the buyer accepted after its post timeout and has the lead, counted in its caps; not billed: no sale record, the post went on without it; to settle with the buyer)",
            split(scan.late_accepts().collect()),
        ),
        (
            "timed-out deliveries whose late answer is not recorded (their outcome is the timeout, so the line below can say every delivery has one; the exchange stopped without a shutdown while hearing the buyer out, or is hearing it out now: the buyer may have accepted; counted in its caps at a start)",
            split(scan.cut_short().collect()),
        ),
    ];
    for (what, (list, tests)) in lists {
        let tests = if tests > 0 {
            format!(" (and {tests} of test leads, not listed: in no cap and never billed, nothing to settle)")
        } else {
            String::new()
        };
        pingpost::cli_out::emit(
            "ledger verify",
            format_args!("{what}: {}{tests}\n", list.len()),
        );
        for s in list.iter().take(1_000) {
            pingpost::cli_out::emit(
                "ledger verify",
                format_args!(
                    "  lead {} auction {} buyer {} attempt {} price_micros {} at {}\n",
                    s.lead_id,
                    s.auction_id,
                    s.buyer,
                    s.attempt,
                    s.price_micros,
                    pingpost::core::record::rfc3339(s.at)
                ),
            );
        }
    }
}

impl LedgerCommand {
    /// Fills a command's `--dir` and `--config` left out with the global `--ledger` and
    /// `--config`.
    fn default_places(
        &mut self,
        ledger: Option<&std::path::Path>,
        config: Option<&std::path::Path>,
    ) {
        let (LedgerCommand::Verify { dir, config: c, .. }
        | LedgerCommand::Report { dir, config: c, .. }
        | LedgerCommand::Replay { dir, config: c, .. }
        | LedgerCommand::Export { dir, config: c, .. }) = self;
        if dir.is_none() {
            *dir = ledger.map(std::path::Path::to_path_buf);
        }
        if c.is_none() {
            *c = config.map(std::path::Path::to_path_buf);
        }
    }
}

/// The ledger directory and configuration of a finance command: `--dir` wins over the
/// configuration's `server.ledger_path`; without either, `pingpost-ledger`.
fn finance_place(
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(PathBuf, Option<config::Config>), String> {
    let cfg = config
        .as_deref()
        .map(pingpost::finance::load_config)
        .transpose()?;
    let dir = dir
        .or_else(|| cfg.as_ref().map(|c| c.server.ledger_path.clone()))
        .unwrap_or_else(|| PathBuf::from(config::defaults::LEDGER_PATH));
    Ok((dir, cfg))
}

/// `n` and `what`, in the plural unless `n` is 1 (`1 vertical`, `5 buyers`, `2 suppressed
/// hashes`).
fn counted(n: usize, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        _ if what.ends_with('h') => format!("{n} {what}es"),
        _ => format!("{n} {what}s"),
    }
}

/// `pingpost ledger report | replay | export`: the exit status.
fn finance_command(command: LedgerCommand) -> i32 {
    use pingpost::finance::{export, replay, report, DateRange};
    let fail = |name: &str, e: String| {
        pingpost::say_err!("pingpost ledger {name}: {e}");
        2
    };
    match command {
        LedgerCommand::Verify {
            dir,
            config,
            anchors,
        } => ledger_verify(dir, config, &anchors),
        LedgerCommand::Report {
            dir,
            config,
            from,
            to,
            tz,
            by,
            format,
            html,
        } => {
            let range = match DateRange::parse(from.as_deref(), to.as_deref())
                .and_then(|r| r.with_zone(tz.as_deref()))
            {
                Ok(r) => r,
                Err(e) => return fail("report", e),
            };
            let by = match report::By::parse(&by) {
                Ok(b) => b,
                Err(e) => return fail("report", e),
            };
            if !matches!(format.as_str(), "table" | "csv" | "json") {
                return fail(
                    "report",
                    format!("--format {format:?}: unknown format (one of: table, csv, json)"),
                );
            }
            let (dir, cfg) = match finance_place(dir, config) {
                Ok(x) => x,
                Err(e) => return fail("report", e),
            };
            let currencies = cfg
                .map(|c| {
                    c.verticals
                        .iter()
                        .map(|v| (v.name.clone(), v.currency.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let mut reports = match report::build(&dir, range, &currencies) {
                Ok(r) => r,
                Err(e) => return fail("report", e),
            };
            // Records that disagree with each other (a re-chained edit) are said beside
            // the figures they make (black-box round 171b).
            // Up to the record the report's own reading stopped at (black-box round
            // 189a: a running exchange's later records made it disagree).
            let upto = reports.stats.upto;
            if let Some(note) = pingpost::finance::reconcile::unreconciled_note(&dir, upto) {
                for r in reports.by.values_mut() {
                    r.notes.push(note.clone());
                }
            }
            if let Some(path) = html {
                // Never among the ledger's own files (black-box round 234a: `--html
                // LEDGER/seg-00000001.jsonl` replaced a segment with the page).
                if pingpost::cli_out::in_a_ledger(&path, &dir) {
                    return fail(
                        "report",
                        format!(
                            "--html {}: in a ledger directory (the one --dir names, {}, or another that holds a ledger's files, or below one): the page is never written among a ledger's files; give a path outside it",
                            pingpost::cli_out::shown_path(&path),
                            pingpost::cli_out::shown_path(&dir)
                        ),
                    );
                }
                if let Err(e) =
                    pingpost::cli_out::write_whole(&path, report::html(&reports, &dir).as_bytes())
                {
                    return fail(
                        "report",
                        format!("{}: {e}", pingpost::cli_out::shown_path(&path)),
                    );
                }
            }
            let Some(r) = reports.by.get(&by) else {
                return fail("report", "no report".into());
            };
            match format.as_str() {
                "csv" => {
                    pingpost::cli_out::emit("ledger report", format_args!("{}", r.csv()));
                    // CSV has no place for notes: what the read skipped (records of a
                    // newer format version, unknown types) goes to stderr, as export's.
                    for note in &r.notes {
                        pingpost::say_err!("pingpost ledger report: note: {note}");
                    }
                }
                "json" => pingpost::cli_out::emit("ledger report", format_args!("{}", r.json())),
                _ => pingpost::cli_out::emit("ledger report", format_args!("{}", r.table())),
            }
            0
        }
        LedgerCommand::Replay {
            auction_id,
            dir,
            config,
        } => {
            let (dir, cfg) = match finance_place(dir, config) {
                Ok(x) => x,
                Err(e) => return fail("replay", e),
            };
            match replay::find(&dir, &auction_id) {
                Err(e) => fail("replay", e),
                Ok((a, posts)) => {
                    let r = replay::replay(&a, &posts, cfg.as_ref());
                    pingpost::cli_out::emit("ledger replay", format_args!("{}", r.text));
                    i32::from(r.mismatch)
                }
            }
        }
        LedgerCommand::Export {
            dir,
            config,
            from,
            to,
            tz,
            format,
            types,
        } => {
            let range = match DateRange::parse(Some(&from), Some(&to))
                .and_then(|r| r.with_zone(tz.as_deref()))
            {
                Ok(r) => r,
                Err(e) => return fail("export", e),
            };
            let format = match format.as_str() {
                "csv" => export::Format::Csv,
                "jsonl" => export::Format::Jsonl,
                other => {
                    return fail(
                        "export",
                        format!("--format {other:?}: unknown format (one of: jsonl, csv)"),
                    )
                }
            };
            let types = match export::parse_types(types.as_deref()) {
                Ok(t) => t,
                Err(e) => return fail("export", e),
            };
            let (dir, _) = match finance_place(dir, config) {
                Ok(x) => x,
                Err(e) => return fail("export", e),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            match export::export(&dir, range, format, &types, &mut out) {
                Ok((n, stats)) => {
                    use std::io::Write as _;
                    if let Err(e) = out.flush() {
                        return fail("export", format!("writing: {e}"));
                    }
                    pingpost::say_err!("pingpost ledger export: {n} record(s)");
                    if let Some(note) =
                        pingpost::finance::reconcile::unreconciled_note(&dir, stats.upto)
                    {
                        pingpost::say_err!("pingpost ledger export: note: {note}");
                    }
                    for note in stats.notes() {
                        pingpost::say_err!("pingpost ledger export: note: {note}");
                    }
                    0
                }
                Err(e) => fail("export", e),
            }
        }
    }
}

/// `server.ledger_path` of a configuration file, read without loading the rest (so no
/// secret has to be in the environment).
fn ledger_dir_of(file: &std::path::Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}", pingpost::cli_out::Shown(file)))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", pingpost::cli_out::Shown(file)))?;
    let path = doc
        .get("server")
        .and_then(|s| s.get("ledger_path"))
        .map(|p| {
            p.as_str()
                .map(PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("server.ledger_path: must be a string"))
        })
        .transpose()?;
    Ok(path.unwrap_or_else(|| PathBuf::from(config::defaults::LEDGER_PATH)))
}

/// Why a running demo refuses a reload whose sample leads could not be used.
fn demo_reload_refusal(problem: &str) -> String {
    format!("this exchange runs --demo, which needs what its sample leads use: {problem}")
}

/// What the configuration file at `path` lacks for the demo's sample leads, read from its
/// text alone (for a file with errors, which does not load).
fn demo_file_problem(path: Option<&std::path::Path>) -> Option<String> {
    let bytes = bidder_sdk::listener::read_file_bounded(path?, 64 * 1024 * 1024).ok()?;
    pingpost::demo::file_sample_leads_problem(&String::from_utf8(bytes).ok()?)
}

/// `--ledger DIR`: not empty, and no white space at either end, as `server.ledger_path`
/// (black-box round 148a: `--ledger "dir "` made and used a directory named with the
/// space, beside the ledger the configuration names).
/// `--listen`: refused in the words `server.listen` is (black-box round 242b: clap's
/// "invalid socket address syntax" for `localhost:8080`).
fn listen_arg(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        "must be a socket address such as \"127.0.0.1:8080\" (an IP address and a port: a host name such as localhost is not looked up)".to_string()
    })
}

fn ledger_dir_arg(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("a value is required".into());
    }
    if s.trim() != s {
        return Err(pingpost::config::EDGE_SPACE.into());
    }
    Ok(PathBuf::from(s))
}

fn main() -> anyhow::Result<()> {
    // Nothing this process makes (ledger, models, `CHAMPION`, reports) is writable by the
    // group or by others, whatever the umask it was given (black-box rounds 123a and
    // 124a: under `umask 000` model sets and `CHAMPION` were made world-writable, and any
    // local user could change which model serves). A stricter umask stays.
    let given = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(given | rustix::fs::Mode::from_raw_mode(0o022));
    // Colour codes only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The shared listener (bidder_sdk::listener) logs `accept failed` and
                // `drain timed out`, lines OPERATIONS.md says to alert on.
                .unwrap_or_else(|_| "pingpost=info,bidder_sdk=info".into()),
        )
        .with_ansi(ansi)
        // A line that cannot be written is lost, and nothing else: tracing-subscriber
        // reports the failure with `eprintln!`, which panics when stderr fails too (a
        // full disk under both): the panic ended the ledger writer thread, and the
        // exchange stopped selling with no reason said (black-box round 100a).
        .log_internal_errors(false)
        .with_writer(pingpost::cli_out::LogLines { ansi })
        .init();
    pingpost::cli_out::refuse_hidden_args("pingpost");
    let args = Args::try_parse().unwrap_or_else(|e| pingpost::cli_out::exit_on_args_error(&e));
    // The commands (`ledger export > file`, `ledger report --html`, …) catch SIGXFSZ too:
    // an output past `ulimit -f` then fails with "File too large", which they report,
    // where the signal killed them with a file cut mid-line and nothing said (black-box
    // round 100a). The handler stays installed for the process's life.
    let _commands_signals = args
        .command
        .is_some()
        .then(catch_file_size_signal)
        .flatten();
    match args.command {
        // The global `--ledger` and `--config` serve the ledger commands too, as they serve
        // `train` and `models` (black-box round 85a: `pingpost --ledger DIR ledger verify`
        // read `pingpost-ledger`); a command's own `--dir` and `--config` win.
        Some(Command::Ledger { mut command }) => {
            command.default_places(args.ledger.as_deref(), args.config.as_deref());
            match command {
                LedgerCommand::Verify {
                    dir,
                    config,
                    anchors,
                } => std::process::exit(ledger_verify(dir, config, &anchors)),
                other => std::process::exit(finance_command(other)),
            }
        }
        Some(Command::Train {
            config_file,
            ledger_dir,
            vertical,
            version,
            promote,
        }) => std::process::exit(pingpost::models::cli::train(
            config_file.as_deref().or(args.config.as_deref()),
            ledger_dir.as_deref().or(args.ledger.as_deref()),
            vertical.as_deref(),
            version.as_deref(),
            promote,
        )),
        Some(Command::Models {
            config_file,
            command,
        }) => {
            let c = config_file.as_deref().or(args.config.as_deref());
            let l = args.ledger.as_deref();
            std::process::exit(match command {
                None | Some(ModelsCommand::List) => pingpost::models::cli::list(c, l),
                Some(ModelsCommand::Rollback { vertical }) => {
                    pingpost::models::cli::rollback(c, l, &vertical)
                }
                Some(ModelsCommand::Import {
                    vertical,
                    version,
                    realization,
                    lead_score,
                }) => pingpost::models::cli::import(
                    c,
                    l,
                    &vertical,
                    &version,
                    realization.as_deref(),
                    lead_score.as_deref(),
                ),
            })
        }
        None => {}
    }
    // The main thread's runtime, and SIGHUP's handler, before anything slow: reading the
    // configuration (seconds for 100,000 buyers) and the start (ledger check and replay)
    // can take seconds, and a SIGHUP's default action would end the process. One that
    // arrives meanwhile is kept and reloads once the exchange serves. (`--check-config`
    // gets the handler too: a SIGHUP never ends it early either.)
    // Limits under which a start cannot work are said before anything is opened (black-box
    // round 225c: a bare `Too many open files` with a backtrace, or a ready exchange that
    // aborted under traffic for want of address space).
    match pingpost::fdlimit::start_limits() {
        Err(why) if args.check_config => {
            pingpost::say_err!("warning: {why}: a start here would be refused");
        }
        Err(why) => {
            pingpost::say_err!("pingpost: cannot start: {why}");
            std::process::exit(1);
        }
        Ok(Some(warning)) if args.check_config => pingpost::say_err!("warning: {warning}"),
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Ok(None) => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            pingpost::say_err!(
                "pingpost: cannot start: its runtime: {e} (check `ulimit -n`, `ulimit -v` and `ulimit -u`)"
            );
            std::process::exit(1);
        }
    };
    let hup = hangup_signal(&runtime);
    // SIGUSR1, SIGUSR2 and SIGXFSZ, whose default action ends the process at once, with no
    // drain and no line said (black-box round 99c): caught from here on.
    let other_signals = OtherSignals::install(&runtime);
    // SIGTERM's and SIGINT's too (not for `--check-config`, which they simply end): one
    // that arrives during the start no longer kills the process without its `stopped:`
    // line (black-box round 77b: exit 143 within the first ~70 ms); the exchange stops
    // cleanly as soon as it serves.
    let mut stop = (!args.check_config).then(|| StopSignals::install(&runtime));
    if !args.check_config {
        tracing::info!("reading the configuration");
    }
    let demo = args.demo;
    // In demo mode the example bidders' secrets default to fixed demo values, and the
    // admin token (when its variable is unset) to a fresh random one, printed below.
    let demo_token = demo.then(pingpost::demo::demo_admin_token);
    let demo_token_print = demo_token.clone();
    let env = move |name: &str| -> Option<String> {
        std::env::var(name).ok().or_else(|| {
            if demo {
                pingpost::demo::demo_secret(name).or_else(|| {
                    (name == config::defaults::ADMIN_TOKEN_ENV)
                        .then(|| demo_token.clone())
                        .flatten()
                })
            } else {
                None
            }
        })
    };
    // The source a reload reads again: the same file (or the embedded default text, which
    // cannot change, so a reload of it re-applies the same configuration), the same
    // environment and the same command-line overrides.
    let (path, listen, ledger) = (args.config.clone(), args.listen, args.ledger.clone());
    let config_given = path.is_some();
    let new_fingerprint_key = args.new_fingerprint_key;
    let source = move || -> Result<config::Config, config::ConfigErrors> {
        let mut cfg = match &path {
            Some(path) => config::load_file_with_env(path, &env),
            None => config::load_str_with_env(DEFAULT_CONFIG, &env),
        }?;
        if let Some(l) = listen {
            cfg.server.listen = l;
            if let Some(problem) = config::shared_listener_problem(&cfg.admin, l) {
                return Err(config::ConfigErrors(vec![format!(
                    "admin.listen: {problem} (from --listen)"
                )]));
            }
        }
        if let Some(p) = &ledger {
            cfg.server.ledger_path = p.clone();
        }
        cfg.server.new_fingerprint_key = new_fingerprint_key;
        Ok(cfg)
    };
    let cfg = match source() {
        Ok(c) => c,
        Err(errors) => {
            pingpost::say_err!(
                "configuration has {} error(s):\n{}",
                errors.0.len(),
                errors.to_string().trim_end()
            );
            // A file the demo could not use once fixed says so too, before its operator
            // sets secrets for it (black-box round 110c).
            if demo {
                if let Some(problem) = demo_file_problem(args.config.as_deref()) {
                    pingpost::say_err!(
                        "pingpost --demo: also, {problem}: the demo cannot run on this file \
                         even with the errors above fixed. Run the demo on a configuration \
                         it can use (config/default.toml is one), or run without --demo."
                    );
                }
            }
            // The embedded configuration's buyers are the demo's (black-box round 68d:
            // the message did not say how to run it).
            // Only for a variable unset or too short: a demo secret refused for another
            // reason (a seller's key, say) is not mended by setting it (black-box round
            // 242b: the hint followed such an error).
            let unset_or_short = |e: &String| {
                e.contains("PINGPOST_DEMO_SECRET_")
                    && (e.ends_with(" is not set") || e.contains(" holds a secret shorter than "))
            };
            if !demo && errors.0.iter().any(unset_or_short) {
                // A file given that names the demo's variables is the operator's: set
                // them, or name its own (black-box round 106a: told to use --config FILE
                // when it had).
                let way = if config_given {
                    "set them (at least 16 bytes each), add --demo (it sets them for the run), or name your buyers' own variables in the file's secret_env"
                } else {
                    "add --demo (it sets them for the run), or give your own configuration with --config FILE"
                };
                pingpost::say_err!(
                    "the PINGPOST_DEMO_SECRET_* variables are the demo buyers' secrets: {way}"
                );
            }
            std::process::exit(2);
        }
    };
    // Every sample lead would be refused (black-box round 18): say so before starting,
    // and to `--check-config --demo` too (black-box round 21: it said OK).
    if demo {
        if let Some(problem) = pingpost::demo::sample_leads_problem(&cfg) {
            pingpost::say_err!(
                "pingpost --demo: {problem}. Run the demo on a configuration it can use \
                 (config/default.toml is one), or run without --demo and ping with your own \
                 seller key and vertical."
            );
            std::process::exit(2);
        }
    }
    if args.check_config {
        // What would stop a start here and now, though the file is right (black-box round
        // 116b: a ledger path that is a file, or whose parent is missing, and a listen
        // address in use passed the check, and the start failed).
        if let Some(problem) = pingpost::ledger::dir_problem(&cfg.server.ledger_path) {
            pingpost::say_err!("warning: server.ledger_path: {problem}: a start here would fail");
        }
        for problem in pingpost::ledger::held_problems(&cfg.server.ledger_path) {
            pingpost::say_err!("warning: server.ledger_path: {problem}: a start here would fail");
        }
        let mut listens = vec![("server.listen", cfg.server.listen)];
        if cfg.admin.token.is_some() {
            listens.push(("admin.listen", cfg.admin.listen));
        }
        for (key, addr) in listens {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                // Round 117a: an address this machine does not have was told as "held".
                let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                    "a start here would fail while another process holds it (is another exchange running?)"
                } else {
                    "a start here would fail"
                };
                pingpost::say_err!("warning: {key}: cannot listen on {addr} now ({e}): {why}");
            }
        }
        if demo {
            for problem in pingpost::demo::bidder_port_problems(&cfg) {
                pingpost::say_err!(
                    "warning: demo: cannot listen on {problem}: a start with --demo here would fail ({})",
                    pingpost::demo::BIDDER_PORT_ADVICE
                );
            }
        }
        // What a start would warn of (black-box round 17: only the start said it).
        if let Some((_, problem)) =
            pingpost::tls::expiry_warning(&cfg.server.listener, Clock::system().now_ms())
        {
            pingpost::say_err!("warning: server.tls.cert_path: {problem}");
        }
        for w in pingpost::tls::buyer_ca_warnings(&cfg.server.listener) {
            pingpost::say_err!("warning: {w}");
        }
        // As the start warns (black-box round 89a: --check-config said nothing of it).
        if let Some((limit, need)) = pingpost::fdlimit::shortfall_at_start(
            cfg.server.connections_max,
            pingpost::state::ADMIN_CONNECTIONS_MAX,
        ) {
            pingpost::say_err!(
                "warning: server.connections_max: the open-file limit would be {limit} at start, below the {need} descriptors this configuration needs (server.connections_max {} plus admin and buyer connections): connections past it will fail; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower server.connections_max",
                cfg.server.connections_max
            );
        }
        // The champion each vertical would serve, loaded as a start loads it (black-box
        // round 112b: a feature change that the serving model cannot take passed the
        // check, and the start served no model, `/readyz` 503).
        for w in pingpost::models::champion_warnings(&cfg) {
            pingpost::say_err!("{w}");
        }
        for w in config::warnings(&cfg) {
            pingpost::say_err!("warning: {w}");
        }
        // As the start warns (black-box round 74b: --check-config said nothing of it).
        if cfg.admin.token.is_none() {
            // Set but empty (a secret manager that did not fill it) is said as such
            // (black-box round 135b: "is not set").
            let how = match std::env::var_os(&cfg.admin.token_env) {
                Some(v) if v.is_empty() => "is set but empty",
                _ => "is not set",
            };
            pingpost::say_err!(
                "warning: admin.token_env: {} {how}, so the admin listener will be off (no /metrics, no POST /admin/reload; SIGHUP still reloads)",
                config::shown_env_name(&cfg.admin.token_env)
            );
        }
        pingpost::cli_out::emit(
            "--check-config",
            format_args!(
                "configuration OK: {}, {}, {}{}\n",
                counted(cfg.verticals.len(), "vertical"),
                counted(cfg.sellers.len(), "seller"),
                counted(cfg.buyers.len(), "buyer"),
                if cfg.suppression.is_on() {
                    format!(", {}", counted(cfg.suppression.len(), "suppressed hash"))
                } else {
                    String::new()
                }
            ),
        );
        return Ok(());
    }
    // The demo's bidders first: a port that is taken stops the demo before the exchange
    // listens or writes its ledger (black-box round 34: it started, wrote a start and a
    // shutdown flush, then stopped).
    let bidders = if demo {
        match runtime.block_on(pingpost::demo::start_bidders_or_say(&cfg)) {
            Ok(b) => b,
            Err(e) => {
                pingpost::say_err!("{e}");
                std::process::exit(1);
            }
        }
    } else {
        Vec::new()
    };
    let workers = app::worker_count(&cfg);
    let server = match app::start_threaded(cfg, Clock::following_system()) {
        Ok(s) => s,
        Err(e) => {
            // One line, no backtrace: what is wrong and where (a ledger directory that is
            // missing, not writable or corrupt; an address in use).
            // EAGAIN and ENOMEM name no file: they come from a thread or a memory map
            // the limits refused (black-box round 99c: `ulimit -v 150000` said only
            // "Resource temporarily unavailable").
            let hint = match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::OutOfMemory => {
                    " (a thread or memory the exchange needs was refused: check `ulimit -v` and `ulimit -u`, the memory free, and `server.worker_threads`)"
                }
                _ => "",
            };
            pingpost::say_err!("pingpost: cannot start: {e}{hint}");
            std::process::exit(1);
        }
    };
    // The serving configuration itself, not a copy (with 10,000 buyers a copy is ~10 MB).
    let demo_cfg = server.state.runtime.load().config.clone();
    // A running demo refuses a reload that its sample leads could not use, as its start
    // does (black-box round 75b: a reload without the demo seller was applied, and every
    // sample lead after it was refused `401`).
    if demo {
        let path = args.config.clone();
        server.state.set_config_source(Box::new(move || {
            // A file with other errors too gets its problem for the demo named beside them,
            // as at the start (black-box round 138b: named only once the others were fixed).
            let cfg = source().map_err(|mut errors| {
                if let Some(problem) = demo_file_problem(path.as_deref()) {
                    errors.0.push(demo_reload_refusal(&problem));
                }
                errors
            })?;
            match pingpost::demo::sample_leads_problem(&cfg) {
                None => Ok(cfg),
                Some(problem) => Err(config::ConfigErrors(vec![demo_reload_refusal(&problem)])),
            }
        }));
    } else {
        server.state.set_config_source(Box::new(source));
    }
    let admin = server
        .admin_addr
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(addr = %server.addr, %admin, workers, "pingpost listening");
    let demo_admin = server
        .admin_addr
        .zip(demo_cfg.admin.token.as_ref())
        .map(|(addr, _)| pingpost::demo::DemoAdmin {
            addr,
            made_up: match std::env::var(&demo_cfg.admin.token_env) {
                Ok(t) if !t.is_empty() => None,
                _ => demo_token_print.clone(),
            },
            token_env: demo_cfg.admin.token_env.clone(),
        });
    // The main thread only waits for a signal (and runs the demo's bidders and leads);
    // the workers serve.
    let addr = server.addr;
    let state = server.state.clone();
    let dropped = std::sync::Arc::clone(&server.state.connections_dropped_at_stop);
    let requests_dropped = std::sync::Arc::clone(&server.state);
    let stopped = runtime.block_on(async move {
        // SIGHUP reloads the configuration; signals that arrive during a reload coalesce
        // into one more, and reloads are serialized inside.
        let reloader = tokio::spawn(reload_on_sighup(state, hup));
        let other_signals = tokio::spawn(other_signals.log());
        if args.demo {
            let mut leads = tokio::spawn(pingpost::demo::run(
                addr,
                demo_admin,
                args.demo_interval_ms,
                args.demo_leads,
                pingpost::demo::dedup_window_ms(&demo_cfg),
            ));
            // The demo ends after its leads, or when its output is gone (`| head`): the
            // exchange stops with it.
            tokio::select! {
                _ = &mut leads => {}
                () = StopSignals::recv(&mut stop) => leads.abort(),
            };
            tokio::spawn(StopSignals::log_repeats(stop));
            reloader.abort();
            other_signals.abort();
            tracing::info!("shutting down: finishing in-flight requests");
            // The demo's bidders run on this thread: they go on answering the posts still
            // in flight while the exchange drains on another, and stop after it (black-box
            // round 75c: stopped first, they let 20 of 25 posts in flight time out unsold).
            let stopped = stop_on_a_thread(server).await;
            for b in bidders {
                b.shutdown().await;
            }
            return stopped;
        }
        StopSignals::recv(&mut stop).await;
        tokio::spawn(StopSignals::log_repeats(stop));
        reloader.abort();
        other_signals.abort();
        tracing::info!("shutting down: finishing in-flight requests");
        // Off the runtime: the shutdown makes its own to flush the ledger.
        stop_on_a_thread(server).await
    });
    let stopped = match stopped {
        Stop::Done(r) => r,
        // No thread for it: on this one, now that the main runtime is not running.
        Stop::Here(server) => server.shutdown(),
    };
    if let Err(e) = stopped {
        // One line in the log, and a status a supervisor sees: what the ledger holds is
        // what was written before it failed (LEDGER.md, fail-stop).
        tracing::error!(
            error = %e,
            "stopped with an error (exit status 1); check the ledger with `pingpost ledger verify` before the next start"
        );
        std::process::exit(1);
    }
    drop(runtime);
    // The last line of a clean stop (black-box round 22: a stop that died in the drain
    // looked the same in the log); it says so when the grace period ran out with requests
    // still running (round 35: it said they had finished).
    let requests = requests_dropped
        .requests_dropped_at_stop
        .load(std::sync::atomic::Ordering::Relaxed);
    match dropped.load(std::sync::atomic::Ordering::Relaxed) {
        0 if requests == 0 => tracing::info!("stopped: the in-flight requests finished"),
        0 => tracing::warn!(
            requests,
            "stopped: server.shutdown_grace_ms ran out; requests still running, whose clients had gone, were dropped"
        ),
        n => tracing::warn!(
            connections = n,
            requests,
            "stopped: server.shutdown_grace_ms ran out; the requests still running on these connections were dropped unanswered"
        ),
    }
    Ok(())
}

/// How [`stop_on_a_thread`] went.
enum Stop {
    /// The exchange stopped, with this result.
    Done(std::io::Result<()>),
    /// No thread could be made for the stop: the caller stops the exchange on its own
    /// thread once it has left the runtime.
    Here(app::Threaded),
}

/// Stops `server` (it drains, and flushes the ledger on a runtime of its own) on a thread
/// of its own, so the main runtime goes on answering signals meanwhile; when the system
/// refuses a thread (a pids limit, no address space left), gives `server` back
/// ([`Stop::Here`]). Black-box round 225c: `spawn_blocking` panicked there ("OS can't spawn
/// worker thread"), and the stop ended without its flush.
async fn stop_on_a_thread(server: app::Threaded) -> Stop {
    let held = std::sync::Arc::new(std::sync::Mutex::new(Some(server)));
    let on_thread = std::sync::Arc::clone(&held);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("pingpost-stop".into())
        .spawn(move || {
            let server = on_thread
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(server) = server {
                let _ = tx.send(server.shutdown());
            }
        });
    match spawned {
        Ok(_) => Stop::Done(rx.await.unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the stop's thread ended without finishing the stop",
            ))
        })),
        Err(e) => {
            tracing::warn!(error = %e, "no thread could be made for the stop: it runs on the main thread, and repeated stop signals go unanswered meanwhile");
            match held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                Some(server) => Stop::Here(server),
                None => Stop::Done(Err(std::io::Error::other(
                    "the stop's thread took the exchange and did not start",
                ))),
            }
        }
    }
}

/// SIGHUP's handler (unix), installed from now on: the signal no longer ends the process.
/// `None` (logged) when it cannot be installed.
#[cfg(unix)]
fn hangup_signal(runtime: &tokio::runtime::Runtime) -> Option<tokio::signal::unix::Signal> {
    let _in_runtime = runtime.enter();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal(_runtime: &tokio::runtime::Runtime) -> Option<()> {
    None
}

/// Reloads the configuration on every SIGHUP (unix), logging the new generation or every
/// problem (the running configuration stays). A SIGHUP that came during the start
/// reloads once now.
#[cfg(unix)]
async fn reload_on_sighup(
    state: std::sync::Arc<pingpost::state::AppState>,
    hup: Option<tokio::signal::unix::Signal>,
) {
    {
        let Some(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            let st = state.clone();
            // On the reload thread, not tokio's blocking pool: with no thread to be made,
            // `spawn_blocking` panicked this task and every later SIGHUP was ignored
            // (black-box round 227a).
            let result = pingpost::models::learning::on_the_reload_thread("SIGHUP", move || {
                st.reload_by("SIGHUP")
            })
            .await;
            match result {
                Ok(Ok(_)) => {
                    state.metrics.reloads.with_label_values(&["applied"]).inc();
                }
                Ok(Err(_)) => {
                    state.metrics.reloads.with_label_values(&["refused"]).inc();
                }
                Err(e) => {
                    state.metrics.reloads.with_label_values(&["refused"]).inc();
                    let why = match e {
                        pingpost::models::learning::OffPathError::Busy => {
                            pingpost::state::RELOADS_WAITING
                        }
                        pingpost::models::learning::OffPathError::Failed => {
                            pingpost::state::RELOAD_NOT_RUN
                        }
                    };
                    tracing::error!("SIGHUP: {why}");
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(state: std::sync::Arc<pingpost::state::AppState>, _hup: Option<()>) {
    let _ = state;
}

/// The handlers of the signals that neither stop nor reload the exchange but whose default
/// action would end it on the spot: SIGUSR1 and SIGUSR2 (an operator's habit from other
/// daemons: logged and ignored), and SIGXFSZ (a ledger write past `ulimit -f`: caught, the
/// write then fails with `EFBIG` and the ledger fails as for any write error, fail-stop,
/// where the signal killed the process mid-line).
struct OtherSignals {
    #[cfg(unix)]
    caught: Vec<(&'static str, tokio::signal::unix::Signal)>,
}

impl OtherSignals {
    fn install(runtime: &tokio::runtime::Runtime) -> OtherSignals {
        OtherSignals::install_only(runtime, &["SIGUSR1", "SIGUSR2", "SIGXFSZ"])
    }

    /// [`OtherSignals::install`] for the named ones only.
    fn install_only(runtime: &tokio::runtime::Runtime, names: &[&str]) -> OtherSignals {
        let _in_runtime = runtime.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            /// SIGXFSZ's number on Linux (every architecture Rust supports there).
            const SIGXFSZ: i32 = 25;
            let caught = [
                ("SIGUSR1", SignalKind::user_defined1()),
                ("SIGUSR2", SignalKind::user_defined2()),
                ("SIGXFSZ", SignalKind::from_raw(SIGXFSZ)),
            ]
            .into_iter()
            .filter(|(name, _)| names.contains(name))
            .filter_map(|(name, kind)| match signal(kind) {
                Ok(s) => Some((name, s)),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot catch the signal; it ends the process");
                    None
                }
            })
            .collect();
            OtherSignals { caught }
        }
        #[cfg(not(unix))]
        OtherSignals {}
    }

    /// Logs each of these signals as it comes (coalesced by the kernel and tokio: a burst
    /// is one line or a few).
    async fn log(self) {
        #[cfg(unix)]
        {
            let waits = self.caught.into_iter().map(|(name, mut s)| async move {
                while s.recv().await.is_some() {
                    if name == "SIGXFSZ" {
                        tracing::error!(
                            signal = name,
                            "SIGXFSZ: a write past the process's file size limit (ulimit -f) fails with File too large; if it was the ledger's, the ledger has failed and /readyz says so (fail-stop)"
                        );
                    } else {
                        tracing::warn!(
                            signal = name,
                            "signal ignored: SIGHUP reloads the configuration, SIGTERM or SIGINT stops the exchange"
                        );
                    }
                }
            });
            futures_util::future::join_all(waits).await;
        }
    }
}

/// SIGXFSZ caught for a command (see `main`): the runtime that registered it, kept while
/// the command runs. `None` when it cannot be (the signal then keeps its default action).
fn catch_file_size_signal() -> Option<(tokio::runtime::Runtime, OtherSignals)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let caught = OtherSignals::install_only(&runtime, &["SIGXFSZ"]);
    Some((runtime, caught))
}

/// SIGTERM's and SIGINT's handlers, installed from the start (a signal that comes before
/// the exchange serves is kept, and stops it once it does).
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install(runtime: &tokio::runtime::Runtime) -> StopSignals {
        let _in_runtime = runtime.enter();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let install = |kind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot listen for the signal");
                    None
                }
            };
            StopSignals {
                term: install(SignalKind::terminate(), "SIGTERM"),
                int: install(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Once the stop has begun: each further SIGTERM or SIGINT is logged and changes
    /// nothing (the drain is bounded by `server.shutdown_grace_ms` and the late posts'
    /// wait; SIGKILL ends the process at once). Before, it was ignored without a word
    /// (black-box round 158a).
    async fn log_repeats(mut stop: Option<StopSignals>) {
        loop {
            StopSignals::recv(&mut stop).await;
            tracing::warn!(
                "stop signal repeated: the exchange is already stopping (it waits at most server.shutdown_grace_ms for the requests in flight, then up to 15 s for buyers answering a post late); SIGKILL ends it at once, and posts it cuts off count as outcome unknown at the next start"
            );
        }
    }

    /// Resolves at the first SIGTERM or SIGINT (Ctrl-C), or one that came since install.
    async fn recv(stop: &mut Option<StopSignals>) {
        let Some(s) = stop else {
            return std::future::pending().await;
        };
        #[cfg(unix)]
        {
            let term = async {
                match &mut s.term {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match &mut s.int {
                    Some(i) => {
                        i.recv().await;
                    }
                    None => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = s;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
