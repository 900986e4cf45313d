//! `pingpost`: the exchange binary. Thin by design: parse arguments, load the
//! configuration, start the server (and, with `--demo`, the example bidders and a stream
//! of sample leads), stop gracefully on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pingpost::app::{self, DEFAULT_CONFIG};
use pingpost::clock::Clock;
use pingpost::config;

/// The pingpost lead exchange.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Without it, the embedded default (config/default.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides `server.ledger_path`.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Validate the configuration, print every error, and exit.
    #[arg(long)]
    check_config: bool,
    /// Also start the example bidders the default configuration points at, and send a
    /// small stream of sample leads, printing each ping, bid, post and sale.
    #[arg(long)]
    demo: bool,
    /// With --demo: milliseconds between sample leads.
    #[arg(long, default_value_t = 1500)]
    demo_interval_ms: u64,
    /// With --demo: stop after this many sample leads (0 = until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    demo_leads: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "pingpost=info".into()),
        )
        .init();
    let args = Args::parse();
    let demo = args.demo;
    // In demo mode the example bidders' secrets default to fixed demo values.
    let env = move |name: &str| -> Option<String> {
        std::env::var(name).ok().or_else(|| {
            if demo {
                pingpost::demo::demo_secret(name)
            } else {
                None
            }
        })
    };
    let loaded = match &args.config {
        Some(path) => config::load_file_with_env(path, &env),
        None => config::load_str_with_env(DEFAULT_CONFIG, &env),
    };
    let mut cfg = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("configuration has {} error(s):", errors.0.len());
            eprint!("{errors}");
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!(
            "configuration OK: {} verticals, {} sellers, {} buyers",
            cfg.verticals.len(),
            cfg.sellers.len(),
            cfg.buyers.len()
        );
        return Ok(());
    }
    if let Some(l) = args.listen {
        cfg.server.listen = l;
    }
    if let Some(p) = args.ledger {
        cfg.server.ledger_path = p;
    }
    let demo_cfg = cfg.clone();
    let workers = app::worker_count(&cfg);
    let server = app::start_threaded(cfg, Clock::system()).context("starting the exchange")?;
    tracing::info!(addr = %server.addr, workers, "pingpost listening");
    // The main thread only waits for a signal (and runs the demo's bidders and leads);
    // the workers serve.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr = server.addr;
    runtime.block_on(async move {
        if args.demo {
            let demo = tokio::spawn(pingpost::demo::run(
                addr,
                demo_cfg,
                args.demo_interval_ms,
                args.demo_leads,
            ));
            if args.demo_leads > 0 {
                tokio::select! {
                    _ = demo => {}
                    _ = shutdown_signal() => {}
                }
                return;
            }
        }
        shutdown_signal().await;
    });
    tracing::info!("shutting down: finishing in-flight requests");
    server.shutdown().context("server")?;
    drop(runtime);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
