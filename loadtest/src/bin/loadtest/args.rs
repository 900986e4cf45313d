//! `loadtest run`'s arguments: the scenarios, the flags, and every bound they are checked
//! against before anything starts.

use std::path::PathBuf;

use anyhow::bail;
use clap::ValueEnum;
use loadtest::gen::{CONNECTIONS_MAX, RATE_PER_S_MAX, RUN_S_MAX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// 2,000 auctions/s, 8 buyers: exchange-added latency (P1).
    P1Latency,
    /// Rate sweep for the knee of exchange and relay, and CPU per buyer ping (P2).
    P2Knee,
    /// k of 8 buyers never answer: the hard deadline (P3).
    P3Hang,
    /// One buyer times out 100%: isolation by the circuit breaker (P4).
    P4FailingBuyer,
    /// Model swaps (and configuration reloads) every second under the P1 load, against
    /// the same load without them (P6).
    P6Swap,
    /// Direct posts at 1,000/s: from each buyer's accept to the seller's answer with the
    /// sale on disk, as the exchange times it (P8).
    P8Post,
    /// Memory and sockets of the exchange over a long run.
    Soak,
    /// The exchange's added latency with 1, 1,000 and 10,000 configured buyers and the
    /// same eligible set (P7's end-to-end view; `--configured`).
    ManyBuyers,
    /// Issue 8's proof of lift: a simulated market on three exchanges (price-only, EV with
    /// trained models, oracle serving the truth), the same leads on each; realized revenue
    /// per lead, and recovery after one buyer drifts (`--legacy`: price-only leg on
    /// today's exchange).
    Market,
}

// Every number takes a leading `-` as its value, so that `--rate -5` is refused by the
// bounds below (or the integer parser), not with clap's tip to write `-- -5`, which
// would not work either (black-box round 82b).
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    pub(crate) scenario: Scenario,
    /// The exchange binary (default: `pingpost` next to this binary).
    #[arg(long)]
    pub(crate) exchange_bin: Option<PathBuf>,
    /// Where the JSON and SVG go (default target/loadtest/<scenario>).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Repetitions; the report gives the median of each figure, then each repetition's
    /// p99, p99.9, errors and CPU per buyer ping (a collapsed one marked).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize, default_value_t = 1)]
    pub(crate) repeat: usize,
    /// Seconds measured per run (after warm-up; each leg may first wait for the host's
    /// sockets in TIME_WAIT: --time-wait-wait-s).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) duration_s: Option<f64>,
    /// Before each leg, the most seconds to wait until fewer than 1,000 sockets on this
    /// host are in TIME_WAIT (any process's, whatever their ports: each new connection's
    /// search for a local port walks them, and a leg started among tens of thousands
    /// measures that); 0 starts at once. At most 600. A wait, and a start among many, is
    /// said on stderr and noted in the report.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 65)]
    pub(crate) time_wait_wait_s: u64,
    /// Warm-up seconds per run (not measured).
    #[arg(long, allow_negative_numbers = true, default_value_t = 2.0)]
    pub(crate) warmup_s: f64,
    /// Auctions per second (every scenario but p2-knee, which sweeps `--rates`, and
    /// market).
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) rate: Option<f64>,
    /// Number of simulated buyers (at most 1024, what the exchange pings per auction).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize, default_value_t = 8)]
    pub(crate) buyers: usize,
    /// Fixed latency of each healthy simulated buyer, ms.
    #[arg(long, allow_negative_numbers = true, default_value_t = 10.0)]
    pub(crate) buyer_latency_ms: f64,
    /// Simulated buyers speak HTTP/2 (the exchange, relay and baseline then use it too).
    #[arg(long)]
    pub(crate) buyer_http2: bool,
    /// Per-buyer ping timeout T, ms.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 50)]
    pub(crate) timeout_ms: u64,
    /// p3-hang: how many buyers never answer [default: 2].
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize)]
    pub(crate) hanging: Option<usize>,
    /// p2-knee: comma-separated rates to sweep.
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',')]
    pub(crate) rates: Option<Vec<f64>>,
    /// Buyers configured in the exchange in all: the simulated ones plus filler buyers
    /// that take only states the generator never picks (so the eligible set is the same).
    /// many-buyers: the comma-separated sizes to compare (default 1,1000,10000; the
    /// eligible set is `--buyers`, at most the smallest size). Other scenarios: the first
    /// value, at least `--buyers` (default: just the simulated buyers). At most 100000.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize, value_delimiter = ',')]
    pub(crate) configured: Option<Vec<usize>>,
    /// Which targets to run (the direct baseline always runs).
    #[arg(long, value_delimiter = ',', default_value = "relay,exchange")]
    pub(crate) targets: Vec<String>,
    /// Load-generator connections to the relay or the exchange (the direct baseline has
    /// pools of its own), at most 10000: at most that many requests are on the wire at
    /// once. Past it a due request waits for a connection: the target never sees that
    /// burst, and the wait is inside the request's latency (measured from its planned
    /// time) and shows in the report's generator lag line. 0 (the default) sizes it to
    /// the load: twice rate x deadline (the auctions in flight if each took the whole
    /// deadline, --timeout-ms + 20 ms), at least 64 and at most 4096; a target that
    /// stalls for longer holds every one of them, and the generator then queues.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize, default_value_t = 0)]
    pub(crate) connections: usize,
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Start the exchange and the relay under this command (split on whitespace), e.g.
    /// `--wrap "valgrind --tool=callgrind"` to count their instructions; they are then
    /// given 120 s (not 5 s) to exit at the end, so the wrapper can write its output.
    #[arg(long)]
    pub(crate) wrap: Option<String>,
    /// market: days of the learning period (EV exchange, no model yet).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 8)]
    pub(crate) learn_days: u64,
    /// market: held-out days, the same leads on the price, EV and oracle exchanges.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 6)]
    pub(crate) test_days: u64,
    /// market: leads per simulated day.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 500)]
    pub(crate) leads_per_day: u64,
    /// market: the held-out lead (0-based) at which one buyer's truth drifts (default:
    /// the middle of the held-out leads).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64)]
    pub(crate) drift_at_lead: Option<u64>,
    /// market: no drift.
    #[arg(long)]
    pub(crate) no_drift: bool,
    /// market: which buyer drifts (0 apex, 1 steady, 2 premium, 3 volume, 4 flaky, 5 youth).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize, default_value_t = 1)]
    pub(crate) drift_buyer: usize,
    /// market: the EV exchange's `[learning] retrain_after_dispositions` (0: unset).
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64, default_value_t = 300)]
    pub(crate) retrain_after: u64,
    /// market: rolling window of the picture and the drift recovery, leads.
    #[arg(long, allow_negative_numbers = true, value_parser = whole_usize, default_value_t = 250)]
    pub(crate) window: usize,
    /// market: the EV exchange's `routing.explore_share`.
    #[arg(long, allow_negative_numbers = true, default_value_t = 0.03)]
    pub(crate) explore_share: f64,
    /// market: the issue-8 pieces the exchange has, comma-separated: routing (award and
    /// features config), learning (`[learning]`, train, models import, POST /admin/models),
    /// dispositions (buyer keys, POST /v1/dispositions); `all` or `none`. What is missing
    /// is left out of the config and the run (and of the report's figures).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    pub(crate) pieces: Vec<String>,
    /// market: `--pieces none`: the price-only leg alone against an exchange from before
    /// issue 8.
    #[arg(long)]
    pub(crate) legacy: bool,
    /// p6-swap: milliseconds between two model swaps (`POST /admin/models`), at least 1
    /// [default: 1000].
    #[arg(long, allow_negative_numbers = true, value_parser = whole_u64)]
    pub(crate) swap_every_ms: Option<u64>,
    /// p6-swap: swap models only, without the configuration reload (`POST /admin/reload`)
    /// after every second swap.
    #[arg(long)]
    pub(crate) no_reload: bool,
    /// Loopback ports every listener of the run takes its port from, `LO-HI` (the
    /// exchange's, the simulated buyers', the relay's; at least 16 ports; default: ports
    /// the kernel picks). Sets `LOADTEST_PORTS` for the processes the run starts.
    #[arg(long, value_parser = loadtest::ports::parse_range)]
    pub(crate) ports: Option<std::ops::RangeInclusive<u16>>,
}

/// The measured time of `scenario` when `--duration-s` is not given, s (the soak's is 600,
/// a p2-knee rate's 5, every other scenario's 10).
pub(crate) fn default_duration_s(scenario: Scenario) -> f64 {
    match scenario {
        Scenario::Soak => 600.0,
        Scenario::P2Knee => 5.0,
        _ => 10.0,
    }
}

/// The most buyers `--configured` may ask for (the exchange's own limit).
pub(crate) const CONFIGURED_MAX: usize = 100_000;
/// The most repetitions `--repeat` may ask for: with the other bounds, a run ends within a
/// bounded time (black-box round 96b: any count was taken).
pub(crate) const REPEAT_MAX: usize = 100;
/// The most simulated buyers `--buyers` may ask for: every one is eligible for every
/// auction, and the exchange pings at most 1,024 buyers per auction (its
/// `buyers_per_auction_max` limit, which the generated configuration raises to the
/// buyers' number up to there), so past it the exchange would skip buyers that the relay
/// and the direct baseline ping. Each also listens on a port of its own: 100,000 failed
/// with a bare "Address already in use" (black-box round 82b).
pub(crate) const BUYERS_MAX: usize = 1_024;

/// A whole number flag's value: a negative one is refused saying so, where the integer
/// parser said "invalid digit found in string" (black-box round 84a).
pub(crate) fn whole_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    match t.parse::<u64>() {
        Ok(n) => Ok(n),
        Err(_) if t.starts_with('-') && t[1..].bytes().all(|b| b.is_ascii_digit()) => {
            Err("must be a whole number, not negative".into())
        }
        Err(_) => Err("not a whole number".into()),
    }
}

/// The most `--time-wait-wait-s` takes.
pub(crate) const TIME_WAIT_WAIT_S_MAX: u64 = 600;

/// [`whole_u64`] for a count.
pub(crate) fn whole_usize(text: &str) -> Result<usize, String> {
    let n = whole_u64(text)?;
    usize::try_from(n).map_err(|_| "too large".to_string())
}

/// Every bound a run needs, checked before anything starts (black-box round 22: a rate
/// or duration of 0 started the processes, then failed or reported figures of nothing;
/// `--timeout-ms 0` made a configuration the exchange refused; `--repeat 0` and
/// `--buyers 0` were taken as 1).
impl RunArgs {
    /// p3-hang's buyers that never answer.
    pub(crate) fn hanging(&self) -> usize {
        self.hanging.unwrap_or(2)
    }

    /// p6-swap's time between two model swaps, ms.
    pub(crate) fn swap_every_ms(&self) -> u64 {
        self.swap_every_ms.unwrap_or(1000)
    }
}

/// A number as a person reads it: plain in the everyday range, in scientific notation
/// past it (black-box round 234a: `--warmup-s 1e300` was said in 301 digits).
pub(crate) fn shown(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && a.is_finite() && !(1e-6..1e16).contains(&a) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

pub(crate) fn check_args(args: &RunArgs) -> anyhow::Result<()> {
    let positive = |flag: &str, v: f64| -> anyhow::Result<()> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            bail!("{flag} {}: must be a finite number above 0", shown(v))
        }
    };
    if args.repeat == 0 {
        bail!("--repeat 0: must be at least 1");
    }
    // Black-box round 96b: any count was taken, so a run was not bounded in time.
    if args.repeat > REPEAT_MAX {
        bail!("--repeat {}: at most {REPEAT_MAX}", args.repeat);
    }
    // Black-box round 97a: these ran once whatever the count, without a word.
    let once = match args.scenario {
        Scenario::P4FailingBuyer => Some("p4-failing-buyer"),
        Scenario::Soak => Some("soak"),
        Scenario::Market => Some("market"),
        _ => None,
    };
    if let (Some(name), true) = (once, args.repeat > 1) {
        bail!("--repeat {}: {name} runs once", args.repeat);
    }
    if args.buyers == 0 {
        bail!("--buyers 0: must be at least 1");
    }
    if args.buyers > BUYERS_MAX {
        bail!(
            "--buyers {}: at most {BUYERS_MAX} (the buyers the exchange pings per auction)",
            args.buyers
        );
    }
    // Black-box round 82b: a size below the simulated buyers (or 0) was silently
    // raised to them.
    let sizes = args.configured.as_deref().unwrap_or_default();
    if let Some(big) = sizes.iter().find(|s| **s > CONFIGURED_MAX) {
        bail!("--configured {big}: at most {CONFIGURED_MAX} buyers");
    }
    if sizes.contains(&0) {
        bail!("--configured 0: must be at least 1");
    }
    // many-buyers compares its sizes with the eligible set capped to the smallest.
    let b = args.buyers;
    if let Some(first) = sizes
        .first()
        .filter(|f| **f < b && args.scenario != Scenario::ManyBuyers)
    {
        bail!("--configured {first}: fewer than the {b} simulated buyers (--buyers {b}); it counts them plus the filler buyers, so it must be at least {b}");
    }
    if let Some(d) = args.duration_s {
        positive("--duration-s", d)?;
    }
    if args.time_wait_wait_s > TIME_WAIT_WAIT_S_MAX {
        bail!(
            "--time-wait-wait-s {}: at most {TIME_WAIT_WAIT_S_MAX} (0 starts each leg at once)",
            args.time_wait_wait_s
        );
    }
    if !(args.warmup_s.is_finite() && args.warmup_s >= 0.0) {
        bail!(
            "--warmup-s {}: must be a finite number, 0 or more",
            shown(args.warmup_s)
        );
    }
    // The load plan's own bounds, said here (black-box round 96b: they were found only
    // once the processes had started, and the refused run overwrote the last report).
    // With the scenario's own duration when none is given (black-box round 143a:
    // `--warmup-s 86400` alone was refused only once every process had started).
    let run_s = args.warmup_s
        + args
            .duration_s
            .unwrap_or_else(|| default_duration_s(args.scenario));
    if run_s > RUN_S_MAX {
        bail!(
            "--warmup-s {} with --duration-s {}: a run is at most {RUN_S_MAX} s, warm-up included",
            shown(args.warmup_s),
            shown(
                args.duration_s
                    .unwrap_or_else(|| default_duration_s(args.scenario))
            )
        );
    }
    let rate_ok = |flag: &str, r: f64| -> anyhow::Result<()> {
        positive(flag, r)?;
        if r > RATE_PER_S_MAX {
            bail!("{flag} {}: at most {RATE_PER_S_MAX}/s", shown(r));
        }
        Ok(())
    };
    if let Some(r) = args.rate {
        rate_ok("--rate", r)?;
    }
    for r in args.rates.iter().flatten() {
        rate_ok("--rates", *r)?;
    }
    // Black-box round 143a: each was taken and ignored where it does not apply.
    match (args.scenario, args.rate.is_some(), args.rates.is_some()) {
        (Scenario::P2Knee, true, _) => {
            bail!("--rate: p2-knee sweeps the rates of --rates (e.g. --rates 1000,2000)")
        }
        (Scenario::Market, true, _) => {
            bail!("--rate: market sends --leads-per-day leads per simulated day")
        }
        (Scenario::P2Knee, _, _) | (_, _, false) => {}
        (_, _, true) => bail!("--rates: only p2-knee sweeps rates; use --rate"),
    }
    // Black-box round 125b: a rate too low to send one auction in the measured time ran,
    // measured nothing, and printed latencies of 0.000 ms with exit status 0.
    let measured_s = args
        .duration_s
        .unwrap_or_else(|| default_duration_s(args.scenario));
    let rates = args
        .rate
        .into_iter()
        .chain(args.rates.iter().flatten().copied());
    for r in rates {
        if r * measured_s < 1.0 {
            bail!(
                "--rate {r} for {measured_s} s: fewer than one auction would be measured (rate x --duration-s must be at least 1)"
            );
        }
    }
    // Black-box round 125b: found by the load plan only once every process had started,
    // and the refused run overwrote the last report.
    if args.connections > CONNECTIONS_MAX {
        bail!(
            "--connections {}: at most {CONNECTIONS_MAX} (0 sizes it to the load)",
            args.connections
        );
    }
    // Black-box round 125b: 0 was run as 1 ms without a word.
    if args.hanging.is_some() && args.scenario != Scenario::P3Hang {
        bail!("--hanging: only p3-hang has buyers that never answer");
    }
    if args.swap_every_ms.is_some() && args.scenario != Scenario::P6Swap {
        bail!("--swap-every-ms: only p6-swap swaps models");
    }
    if args.scenario == Scenario::P6Swap && args.swap_every_ms == Some(0) {
        bail!("--swap-every-ms 0: must be at least 1");
    }
    // Black-box round 234a: `--targets ,` was ": is listed twice".
    if args.targets.iter().any(|t| t.trim().is_empty()) {
        bail!("--targets: an empty name; list relay, exchange or direct, separated by commas");
    }
    if let Some(t) = args
        .targets
        .iter()
        .enumerate()
        .find_map(|(i, t)| args.targets[..i].contains(t).then_some(t))
    {
        bail!("--targets: {t} is listed twice");
    }
    if args.wrap.as_deref().is_some_and(|w| w.trim().is_empty()) {
        bail!("--wrap: empty; give the command to start the exchange and the relay under, or leave --wrap out");
    }
    if !(1..=60_000).contains(&args.timeout_ms) {
        bail!(
            "--timeout-ms {}: must be between 1 and 60000 (the exchange's ping_timeout_ms)",
            args.timeout_ms
        );
    }
    if !(args.buyer_latency_ms.is_finite() && args.buyer_latency_ms >= 0.0) {
        bail!(
            "--buyer-latency-ms {}: must be 0 or more",
            args.buyer_latency_ms
        );
    }
    // Black-box round 84a: a latency at or past the timeout timed out every call, and
    // the report called the run a collapse "though every buyer answers in time".
    let in_time = matches!(args.scenario, Scenario::P1Latency | Scenario::P2Knee);
    if in_time && args.buyer_latency_ms >= args.timeout_ms as f64 {
        bail!(
            "--buyer-latency-ms {}: not under --timeout-ms {}; in p1-latency and p2-knee every buyer answers within its timeout (p3-hang measures buyers that do not)",
            args.buyer_latency_ms,
            args.timeout_ms
        );
    }
    if args.scenario == Scenario::P3Hang && args.hanging() > args.buyers {
        bail!(
            "--hanging {}: more than the {} buyers",
            args.hanging(),
            args.buyers
        );
    }
    Ok(())
}
