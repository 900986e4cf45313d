//! `loadtest`: named scenarios against the exchange and the speed-of-light relay, in one
//! invocation, with the direct-to-buyer baseline measured in the same run.
//!
//! Process layout (everything on this machine, loopback only): this process generates
//! load; `loadtest sims` (a child) serves the simulated buyers; `pingpost` (a child, so
//! its CPU can be read from /proc) is the exchange; `loadtest relay` (a child) is the
//! relay. Every child is stopped at the end, also on error.
//!
//! - `args`: the scenarios, the flags, and the bounds checked before anything starts;
//! - `rig`: the child processes and the exchange's generated configuration;
//! - `measure`: one measured run per target, medians, the comparison at one rate, P2's
//!   sweep;
//! - `scenario`: each scenario from its rig to its report and exit status (P4's verdict
//!   comes from `loadtest::p4`);
//! - `swap_legs` (P6) and `post_runs` (P8): those scenarios' measured legs and verdicts.

mod args;
mod measure;
mod post_runs;
mod rig;
mod scenario;
mod swap_legs;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use loadtest::relay::FanoutTarget;
use loadtest::sim::{self, SimBuyerSpec};

use crate::{args::RunArgs, scenario::run_scenario};

/// The exchange's allocator, for every process of this binary (generator, simulated
/// buyers, relay), so that the relay differs from the exchange by its missing logic only:
/// with glibc's malloc the relay spent about a fifth of its CPU allocating and freeing,
/// and at P1's 2,000 auctions/s it fell behind and collapsed in most runs, where the
/// exchange (on jemalloc) did not (docs/BENCHMARKS.md, "The relay on the exchange's
/// allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Open-loop load tests for pingpost, against the speed of light.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a named scenario (p1-latency, p2-knee, p3-hang, p4-failing-buyer, p6-swap,
    /// p8-post, soak, many-buyers, market).
    Run(Box<RunArgs>),
    /// (internal) Serve simulated buyers described by a JSON file until stdin closes.
    Sims {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// (internal) Stop the exchange whose pid and start time are read from stdin if
    /// loadtest dies without stopping it.
    #[command(hide = true)]
    OrphanGuard {
        #[arg(long)]
        parent: u32,
    },
    /// (internal) Serve the speed-of-light relay in front of the targets in a JSON file.
    Relay {
        #[arg(long)]
        targets: PathBuf,
        #[arg(long)]
        deadline_ms: u64,
    },
}

fn main() {
    // One clear line, not a backtrace, and a non-zero exit.
    if let Err(e) = real_main() {
        if let Some(code) = loadtest::children::signalled() {
            // A signal stopped the run: the error is the stop's doing. (Its handler exits
            // the process first: the runtime waits for it. The children were stopped by
            // their guards on the way out.)
            std::process::exit(code);
        }
        eprintln!("loadtest: {e:#}");
        std::process::exit(1);
    }
}

/// Ends the process on an argument error: help and version as clap prints them, any other
/// error with the arguments it quotes shown by [`proto::error::quoted_args_shown`]
/// (black-box round 149a: `loadtest run $'x\nFORGED'` printed a line of its own), and
/// clap's exit status (2).
fn exit_on_args_error(e: &clap::Error, args: &[String]) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!(
        "{}",
        proto::error::quoted_args_shown(&e.render().to_string(), args).trim_end()
    );
    std::process::exit(e.exit_code());
}

fn real_main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let Some(shown) = proto::error::hidden_arg(&args) {
        eprintln!("loadtest: an argument holds a control or text-direction character, which no option takes: {shown}");
        std::process::exit(2);
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| exit_on_args_error(&e, &args));
    match cli.cmd {
        Cmd::Sims { spec, seed } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("reading {}", spec.display()))?;
            let specs: Vec<SimBuyerSpec> = serde_json::from_str(&text).context("sim spec JSON")?;
            // Two workers: at high rates the buyers must not be the bottleneck of the
            // baseline they define.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(sim::run_fleet_process(specs, seed))
        }
        Cmd::OrphanGuard { parent } => {
            loadtest::children::orphan_guard_main(parent);
            Ok(())
        }
        Cmd::Relay {
            targets,
            deadline_ms,
        } => {
            let text = std::fs::read_to_string(&targets)
                .with_context(|| format!("reading {}", targets.display()))?;
            let targets: Vec<FanoutTarget> =
                serde_json::from_str(&text).context("relay targets JSON")?;
            // One worker per core, as the exchange the relay is measured against.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            loadtest::relay::run_relay_process(targets, deadline_ms, threads)
        }
        Cmd::Run(args) => {
            if let Some(ports) = &args.ports {
                // Before any thread starts: the run's processes inherit it.
                std::env::set_var(
                    loadtest::ports::PORTS_ENV,
                    format!("{}-{}", ports.start(), ports.end()),
                );
            }
            // A malformed LOADTEST_PORTS stops the run before anything starts.
            loadtest::ports::range()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                // A signal to loadtest alone stops the processes it started, too.
                tokio::spawn(loadtest::children::stop_on_signal()?);
                run_scenario(*args).await
            })
        }
    }
}
