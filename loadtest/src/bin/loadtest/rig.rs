//! The processes a run needs (simulated buyers, the exchange, the relay), each stopped when
//! its guard is dropped, and the exchange's generated configuration.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use loadtest::relay::FanoutTarget;
use loadtest::sim::{self, ExchangeOpts, Latency, SimBuyerInfo, SimBuyerSpec, SimStats};

use crate::args::RunArgs;

/// A child process that is stopped when dropped (also on error paths).
pub(crate) struct ChildGuard {
    name: &'static str,
    child: Child,
    /// Stopped by a signal to loadtest alone ([`loadtest::children`]).
    _registered: loadtest::children::Registered,
    stdin: Option<ChildStdin>,
    /// How many 50 ms waits `stop` allows before it kills.
    stop_waits: u32,
    /// The exchange's: stops it should loadtest die without doing so (a SIGKILL).
    _orphan_guard: Option<loadtest::children::OrphanGuard>,
    /// Under `--wrap`: the target's mark (its value of `children::TARGET_MARK`) and the
    /// program the wrapper runs.
    wrapped: Option<(String, std::path::PathBuf)>,
    /// The target, when the wrapper runs it as a process of its own (`timeout`, `perf
    /// record`, `setsid -f`): its pid and start time. Measured and stopped in place of
    /// the wrapper (black-box round 143a: a run under `timeout` reported the CPU and
    /// memory of `timeout`, and one under `setsid -f` left the exchange running).
    target: Option<(u32, u64, loadtest::children::Registered)>,
    /// Under `--wrap`: no process running the target's program was found; nothing is
    /// measured.
    unfound: bool,
    /// The exchange's `--out`: once it has stopped, its ledger's mark is written again
    /// with the digest of its final `HEAD` ([`ledger_mark`]).
    ledger_out: Option<std::path::PathBuf>,
}

impl ChildGuard {
    /// The target's pid: the process measured (its CPU, memory and sockets). `None`
    /// under a `--wrap` command in which no process running the target's program was
    /// found ([`ChildGuard::find_target_within`]): another process is not measured in
    /// its place.
    pub(crate) fn pid(&self) -> Option<u32> {
        if self.unfound {
            return None;
        }
        Some(self.target.as_ref().map_or(self.child.id(), |t| t.0))
    }

    /// The pid of the process started (the `--wrap` command, if any).
    pub(crate) fn own_pid(&self) -> u32 {
        self.child.id()
    }

    /// Why the target is not measured, when [`ChildGuard::pid`] is `None`.
    pub(crate) fn unmeasured_note(&self) -> Option<String> {
        let (_, program) = self.wrapped.as_ref().filter(|_| self.unfound)?;
        Some(format!(
            "the {} was not measured (CPU, memory, sockets): no process of its --wrap command (pid {}) runs {} or names it on its command line",
            self.name,
            self.child.id(),
            program.display()
        ))
    }

    /// [`ChildGuard::find_target`], looked for again until `wait` has passed if not found
    /// (a wrapper may start the target a moment after the first look); if none is, says
    /// so on stderr, and the target is not measured ([`ChildGuard::pid`]).
    fn find_target_within(&mut self, wait: Duration) {
        let mut looks = wait.as_millis() / 50;
        while !self.find_target() {
            if looks == 0 {
                self.unfound = true;
                if let Some(note) = self.unmeasured_note() {
                    eprintln!("loadtest: {note} (looked for {} s)", wait.as_secs());
                }
                return;
            }
            looks -= 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        self.unfound = false;
    }

    /// Under `--wrap`, finds the process running the target's program
    /// ([`loadtest::children::wrapped_target`]): the wrapper itself (it `exec`d the
    /// program, or runs it under its tool, as valgrind does), or one it started, by
    /// descent or by its `TARGET_MARK` (for the exchange, its orphan guard's mark too, a
    /// wrapper that removed the first). Another process the wrapper started (a `sleep`
    /// beside the target) is never taken for it (black-box: a wrapper script that ran
    /// `sleep &` before `exec "$@"` had the `sleep` measured as the exchange). Looked for
    /// again until one runs the program (black-box round 144a: a wrapper that forked a
    /// shell, which slept, then ran the exchange), and told to the orphan guard. Whether
    /// one was found (always, without `--wrap`).
    fn find_target(&mut self) -> bool {
        let Some((mark, program)) = &self.wrapped else {
            return true;
        };
        let wrapper = self.child.id();
        if self.target_runs()
            && self
                .target
                .as_ref()
                .is_some_and(|(pid, _, _)| loadtest::children::runs_program(*pid, program))
        {
            return true;
        }
        let by_guard = self._orphan_guard.as_ref().and_then(|g| g.mark());
        let mut marks = vec![(loadtest::children::TARGET_MARK, mark.as_str())];
        if let Some((var, value)) = &by_guard {
            marks.push((var, value.as_str()));
        }
        let Some((pid, started)) = loadtest::children::wrapped_target(wrapper, &marks, program)
        else {
            return false;
        };
        if pid == wrapper {
            self.target = None;
            return true;
        }
        if self
            .target
            .as_ref()
            .is_some_and(|t| t.0 == pid && t.1 == started)
        {
            return true;
        }
        let registered = if self.name == "exchange" {
            loadtest::children::register_exchange(pid)
        } else {
            loadtest::children::register(pid)
        };
        self.target = Some((pid, started, registered));
        if let Some(guard) = self._orphan_guard.as_mut() {
            guard.watch(pid);
        }
        true
    }

    /// Whether the target the wrapper started as a process of its own still runs.
    fn target_runs(&self) -> bool {
        self.target
            .as_ref()
            .is_some_and(|(pid, started, _)| loadtest::children::still_runs(*pid, *started))
    }

    /// Stops the target the wrapper started as a process of its own, if the wrapper's
    /// stop did not (a wrapper that does not pass SIGTERM on, or that left it running).
    fn stop_target(&mut self, grace: Duration) {
        if self.target_runs() {
            if let Some((pid, _, _)) = &self.target {
                eprintln!(
                    "loadtest: the {} (pid {pid}) outlived its --wrap command (pid {}); stopping it",
                    self.name,
                    self.child.id()
                );
                loadtest::children::stop(&[*pid], grace);
            }
        }
        self.target = None;
    }

    /// Closes stdin (our children exit on EOF), sends SIGTERM, then waits a bounded time.
    pub(crate) fn stop(&mut self) -> Option<String> {
        let out = self.stop_child();
        self.stop_target(loadtest::children::STOP_GRACE);
        self.stop_left_behind(loadtest::children::STOP_GRACE);
        // Its ledger as it was left, `HEAD` included (black-box round 239a: another
        // ledger's segment and `HEAD` copied into it, its key kept, passed the mark).
        if let Some(o) = &self.ledger_out {
            if let Some(mark) = ledger_mark(&o.join("ledger"), true) {
                let _ = std::fs::write(o.join(LEDGER_MARK), mark);
            }
        }
        out
    }

    /// Stops what the process started and left running once it is gone: every process
    /// still carrying its orphan guard's mark, which its environment passed on
    /// (black-box round 232b: an `--exchange-bin` script that ran `sleep` was stopped,
    /// and its `sleep` kept running with loadtest's variables).
    fn stop_left_behind(&self, grace: Duration) {
        let Some((var, value)) = self._orphan_guard.as_ref().and_then(|g| g.mark()) else {
            return;
        };
        let left: Vec<u32> = loadtest::children::all_marked(var, &value)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        if !left.is_empty() {
            eprintln!(
                "loadtest: {} process(es) that the {} started were still running after it ended (pid {}); stopping them",
                left.len(),
                self.name,
                left.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            );
            loadtest::children::stop(&left, grace);
        }
    }

    fn stop_child(&mut self) -> Option<String> {
        self.stdin.take();
        // Quiet: a wrapper may have ended already (`setsid -f`; black-box round 144a: a
        // stray "No such process").
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        for _ in 0..self.stop_waits {
            if let Ok(Some(_)) = self.child.try_wait() {
                let mut out = String::new();
                if let Some(mut s) = self.child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut s, &mut out);
                }
                return Some(out);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "loadtest: {} did not stop in {} s; killed",
            self.name,
            self.stop_waits / 20
        );
        None
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.stop_target(Duration::ZERO);
        self.stop_left_behind(Duration::ZERO);
    }
}

/// Spawns `loadtest <args>` and reads its first stdout line.
pub(crate) fn spawn_self(
    name: &'static str,
    args: &[&str],
    wrap: &[String],
) -> anyhow::Result<(ChildGuard, String, BufReader<std::process::ChildStdout>)> {
    let exe = std::env::current_exe().context("finding the loadtest binary")?;
    let mark = (!wrap.is_empty()).then(|| loadtest::children::target_mark(name));
    let mut cmd = wrapped(wrap, &exe);
    if let Some(m) = &mark {
        cmd.env(loadtest::children::TARGET_MARK, m);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| match wrap.first() {
            Some(w) => format!("starting {name} under --wrap: starting {w}"),
            None => format!("starting {name}"),
        })?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("{name}: no stdout"))?;
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .with_context(|| format!("{name}: reading its ready line"))?;
    if line.trim().is_empty() {
        bail!("{name} exited before it was ready");
    }
    let mut guard = ChildGuard {
        name,
        _registered: loadtest::children::register(child.id()),
        child,
        stdin,
        stop_waits: stop_waits(wrap),
        _orphan_guard: None,
        wrapped: mark.map(|m| (m, exe)),
        target: None,
        unfound: false,
        ledger_out: None,
    };
    guard.find_target_within(TARGET_WAIT);
    Ok((guard, line, reader))
}

/// How long a `--wrap` command's target, once ready, is looked for among its processes
/// before it is said not to be found.
const TARGET_WAIT: Duration = Duration::from_secs(5);

/// `program` as a command, under the `--wrap` command if there is one.
pub(crate) fn wrapped(wrap: &[String], program: &Path) -> Command {
    match wrap.split_first() {
        None => Command::new(program),
        Some((first, rest)) => {
            let mut cmd = Command::new(first);
            cmd.args(rest).arg(program);
            cmd
        }
    }
}

/// 50 ms waits allowed at stop: 5 s, or 120 s under a wrapper (valgrind writes its
/// output on exit).
pub(crate) fn stop_waits(wrap: &[String]) -> u32 {
    if wrap.is_empty() {
        100
    } else {
        2_400
    }
}

/// The exchange's seller port and, when `admin`, its admin port: picked together, so
/// distinct ([`loadtest::ports::free_loopback_ports`]).
pub(crate) fn exchange_ports(admin: bool) -> anyhow::Result<(u16, Option<u16>)> {
    let ports = loadtest::ports::free_loopback_ports(if admin { 2 } else { 1 })?;
    Ok((ports[0], ports.get(1).copied()))
}

pub(crate) async fn wait_healthy(
    addr: SocketAddr,
    tries: u32,
    mut child: Option<&mut ChildGuard>,
) -> anyhow::Result<()> {
    for _ in 0..tries {
        // An exchange that exits at start (a configuration it refuses, a busy port) is
        // said so at once, with its status, not after the whole wait as "not healthy"
        // (black-box round 27).
        if let Some(g) = child.as_deref_mut() {
            if let Ok(Some(status)) = g.child.try_wait() {
                // A wrapper that started the target as a process of its own and exited
                // (`setsid -f`): the target is waited for (black-box round 143a: its
                // exit was said to be the exchange's, which went on running).
                g.find_target();
                if !g.target_runs() {
                    match &g.wrapped {
                        Some(_) => bail!(
                            "the --wrap command of the {} exited ({status}), and no process with its marks runs (a command that removes them hides what it started): the {} was not healthy at {addr}; its own message, if any, is above",
                            g.name,
                            g.name
                        ),
                        None => bail!(
                            "the {} exited ({status}) before it was healthy at {addr}: its own message is above",
                            g.name
                        ),
                    }
                }
            }
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "the exchange at {addr} did not become healthy in {} s",
        tries / 20
    )
}

/// Everything one scenario run needs running.
pub(crate) struct Rig {
    pub(crate) sims: ChildGuard,
    pub(crate) buyers: Vec<SimBuyerInfo>,
    pub(crate) exchange: Option<(ChildGuard, SocketAddr)>,
    pub(crate) relay: Option<(ChildGuard, SocketAddr)>,
    /// The exchange's admin listener, when its configuration has one
    /// ([`RigOpts::admin_toml`]).
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) sims_reader: BufReader<std::process::ChildStdout>,
    pub(crate) deadline_ms: u64,
    pub(crate) timeout_ms: u64,
}

pub(crate) const SELLER_KEY: &str = "loadtest-seller-key";

/// What P6's and P8's measured legs share: the rig, the run's flags, the load (`rate`
/// for `secs`), the exchange's admin listener and token, and the `n` simulated buyers.
#[derive(Clone, Copy)]
pub(crate) struct AdminLeg<'a> {
    pub(crate) rig: &'a Rig,
    pub(crate) args: &'a RunArgs,
    pub(crate) rate: f64,
    pub(crate) secs: f64,
    pub(crate) admin: SocketAddr,
    pub(crate) token: &'a str,
    pub(crate) n: usize,
}

/// What runs between writing the exchange's configuration and starting it.
pub(crate) type BeforeExchange<'a> = dyn Fn(&Path) -> anyhow::Result<()> + 'a;

pub(crate) struct RigOpts<'a> {
    pub(crate) specs: Vec<SimBuyerSpec>,
    pub(crate) out: &'a Path,
    pub(crate) exchange_bin: &'a Path,
    /// `--wrap`, split on whitespace (empty: none).
    pub(crate) wrap: &'a [String],
    pub(crate) want_exchange: bool,
    pub(crate) want_relay: bool,
    pub(crate) deadline_ms: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) breaker_enabled: bool,
    pub(crate) http2: bool,
    pub(crate) seed: u64,
    /// Filler buyers configured beside the simulated ones.
    pub(crate) filler_buyers: usize,
    /// TOML appended to the generated exchange configuration (p6-swap: features,
    /// `[learning]`, `[admin]`).
    pub(crate) extra_toml: String,
    /// Environment for the exchange beyond the buyers' secrets.
    pub(crate) extra_env: Vec<(String, String)>,
    /// Called with the written configuration's path before the exchange starts (p6-swap:
    /// makes the model sets).
    pub(crate) before_exchange: Option<&'a BeforeExchange<'a>>,
    /// The exchange's admin listener's configuration (p6-swap, p8-post), given the admin
    /// address the rig picked with the seller port ([`exchange_ports`]); appended after
    /// `extra_toml`. `None`: no admin listener.
    pub(crate) admin_toml: Option<&'a AdminToml<'a>>,
}

/// The exchange configuration's admin part, for an admin address.
pub(crate) type AdminToml<'a> = dyn Fn(SocketAddr) -> String + 'a;

/// How many times the rig starts the exchange when a port it picked was taken before the
/// exchange bound it ([`start_exchange`]).
pub(crate) const EXCHANGE_START_ATTEMPTS: u32 = 4;

pub(crate) async fn start_rig(mut o: RigOpts<'_>) -> anyhow::Result<Rig> {
    o.specs = with_http2(std::mem::take(&mut o.specs), o.http2);
    let spec_path = o.out.join("sims.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&o.specs)?)?;
    let seed = o.seed.to_string();
    let spec_arg = spec_path.to_string_lossy().to_string();
    let (sims, line, sims_reader) =
        spawn_self("sims", &["sims", "--spec", &spec_arg, "--seed", &seed], &[])?;
    let buyers: Vec<SimBuyerInfo> = serde_json::from_str(line.trim()).context("sims ready line")?;
    let exchange = if o.want_exchange {
        Some(start_exchange(&o, &buyers).await?)
    } else {
        None
    };
    let relay = if o.want_relay {
        let targets = fanout_targets(&buyers, o.timeout_ms);
        let path = o.out.join("relay-targets.json");
        std::fs::write(&path, serde_json::to_vec(&targets)?)?;
        let p = path.to_string_lossy().to_string();
        let d = o.deadline_ms.to_string();
        let (guard, line, _) = spawn_self(
            "relay",
            &["relay", "--targets", &p, "--deadline-ms", &d],
            o.wrap,
        )?;
        let v: serde_json::Value = serde_json::from_str(line.trim()).context("relay ready line")?;
        let addr: SocketAddr = v["addr"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("relay address")?;
        Some((guard, addr))
    } else {
        None
    };
    let admin = exchange.as_ref().and_then(|(_, _, a)| *a);
    let exchange = exchange.map(|(g, listen, _)| (g, listen));
    Ok(Rig {
        sims,
        buyers,
        exchange,
        admin,
        relay,
        sims_reader,
        deadline_ms: o.deadline_ms,
        timeout_ms: o.timeout_ms,
    })
}

pub(crate) fn fanout_targets(buyers: &[SimBuyerInfo], timeout_ms: u64) -> Vec<FanoutTarget> {
    buyers
        .iter()
        .map(|b| FanoutTarget {
            url: format!("http://{}/ping", b.addr),
            secret: b.secret.clone(),
            http2: b.http2,
            timeout_ms,
        })
        .collect()
}

impl Rig {
    /// Stops everything; returns the simulated buyers' final counters.
    pub(crate) fn stop(mut self) -> Vec<SimStats> {
        if let Some((mut g, _)) = self.exchange.take() {
            g.stop();
        }
        if let Some((mut g, _)) = self.relay.take() {
            g.stop();
        }
        self.sims.stdin.take();
        let mut line = String::new();
        let _ = self.sims_reader.read_line(&mut line);
        self.sims.stop();
        serde_json::from_str(line.trim()).unwrap_or_default()
    }
}

pub(crate) fn healthy_specs(n: usize, latency_ms: f64) -> Vec<SimBuyerSpec> {
    (0..n)
        .map(|i| SimBuyerSpec::healthy(&format!("sim{i}"), Latency::Fixed { ms: latency_ms }))
        .collect()
}

pub(crate) fn with_http2(mut specs: Vec<SimBuyerSpec>, http2: bool) -> Vec<SimBuyerSpec> {
    for s in &mut specs {
        s.http2 = http2;
    }
    specs
}

/// Starts the exchange on ports picked once the buyers listen (so no probe of theirs
/// takes one), and again on new ports, up to [`EXCHANGE_START_ATTEMPTS`] times, when it
/// could not listen because a picked port was taken meanwhile: the ports are free when
/// picked and released for the exchange to bind, and another bind-to-port-0 (a listener,
/// an outgoing connection's local port) may take one in between, which a narrowed
/// `ip_local_port_range` makes likely (black-box: 14 of 24 tiny p8-post runs in a
/// 100-port range failed with `Address already in use`). Returns the exchange, its seller
/// address and its admin address (when [`RigOpts::admin_toml`]).
async fn start_exchange(
    o: &RigOpts<'_>,
    buyers: &[SimBuyerInfo],
) -> anyhow::Result<(ChildGuard, SocketAddr, Option<SocketAddr>)> {
    let mut attempt = 1;
    loop {
        let (port, admin_port) = exchange_ports(o.admin_toml.is_some())?;
        let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let admin = admin_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        match start_exchange_once(o, buyers, listen, admin, &said).await {
            Ok(guard) => return Ok((guard, listen, admin)),
            Err((e, mut guard)) => {
                let exited = guard
                    .as_mut()
                    .is_some_and(|g| matches!(g.child.try_wait(), Ok(Some(_))));
                // Its own message (read as it is forwarded to loadtest's stderr), or a
                // picked port held by another process now.
                let taken = exited
                    && (said
                        .lock()
                        .is_ok_and(|t| loadtest::ports::says_address_in_use(&t))
                        || std::iter::once(port)
                            .chain(admin_port)
                            .any(loadtest::ports::in_use));
                drop(guard);
                if !taken || attempt >= EXCHANGE_START_ATTEMPTS {
                    return Err(e);
                }
                eprintln!(
                    "loadtest: the exchange could not listen on its picked port(s) {}: taken meanwhile by another process; starting it again on new ports (attempt {} of {EXCHANGE_START_ATTEMPTS})",
                    std::iter::once(listen)
                        .chain(admin)
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(" and "),
                    attempt + 1
                );
                attempt += 1;
            }
        }
    }
}

/// Refuses an `--out` directory that holds an `exchange.toml` or a `ledger` loadtest did
/// not make: a run writes its exchange's configuration there and starts from an empty
/// ledger there, replacing both (black-box round 234a: `--out DIR` replaced a real
/// ledger of 62 sales in `DIR/ledger` with the run's own, without a word). loadtest's own
/// configuration, which an earlier run left, starts with its header.
pub(crate) fn refuse_what_is_not_ours(out: &std::path::Path) -> anyhow::Result<()> {
    // Inside a ledger directory (black-box round 238a: `--out LEDGER/sub` ran, and put
    // a whole run, a second ledger included, among a ledger's files).
    // Checked before `--out` is made: from the nearest directory of it that exists.
    let existing = out
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(std::path::Path::new("."));
    let skip = usize::from(existing == out);
    if let Some(ledger) = std::fs::canonicalize(existing).ok().and_then(|o| {
        o.ancestors()
            .skip(skip)
            .find(|a| holds_a_ledger(a))
            .map(std::path::Path::to_path_buf)
    }) {
        bail!(
            "--out {}: it is inside a ledger directory ({}): a run writes its own files there; choose another --out",
            out.display(),
            ledger.display()
        );
    }
    // A ledger directory itself (black-box round 236a: `--out` of a copied ledger ran,
    // writing the run's files among the ledger's).
    let ledger_file = std::fs::read_dir(out).ok().and_then(|entries| {
        entries.flatten().map(|e| e.file_name()).find(|n| {
            let n = n.to_string_lossy();
            n == "HEAD"
                || n == "FINGERPRINT_KEY"
                || (n.starts_with("seg-") && n.ends_with(".jsonl"))
        })
    });
    if let Some(name) = ledger_file {
        bail!(
            "--out {}: it is a ledger directory (it holds {}): a run writes its own files there; choose another --out",
            out.display(),
            name.to_string_lossy()
        );
    }
    let refuse = |path: &std::path::Path, what: &str| {
        anyhow::anyhow!(
            "--out {}: it holds {what} ({}): a run writes its exchange's configuration and ledger there, replacing them; choose another --out, or move it away",
            out.display(),
            path.display()
        )
    };
    // The ledger: only the very directory an earlier run's exchange made, as its mark
    // beside it records (black-box round 237a: a real ledger put in an earlier run's
    // `--out` was replaced, its `exchange.toml` being loadtest's).
    let ledger = out.join("ledger");
    if ledger.symlink_metadata().is_ok() {
        // Its `HEAD` too when the run that made it ended (one stopped by a signal wrote
        // none: its directory, inode and key are checked).
        let marked = std::fs::read_to_string(out.join(LEDGER_MARK))
            .ok()
            .is_some_and(|mark| {
                let with_head = mark.split_whitespace().count() > 3;
                ledger_mark(&ledger, with_head).is_some_and(|now| mark.trim() == now)
            });
        if !marked {
            return Err(refuse(
                &ledger,
                "a ledger other than the one its earlier run's exchange made (a copy of a run counts as another)",
            ));
        }
    }
    let cfg = out.join("exchange.toml");
    let ours = std::fs::read(&cfg)
        .map(|b| b.starts_with(loadtest::sim::EXCHANGE_CONFIG_HEADER.as_bytes()))
        .unwrap_or(false);
    if !ours && cfg.symlink_metadata().is_ok() {
        return Err(refuse(&cfg, "an exchange.toml"));
    }
    Ok(())
}

/// Whether `dir` holds a ledger's own files (its key or a segment).
fn holds_a_ledger(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n == "FINGERPRINT_KEY" || (n.starts_with("seg-") && n.ends_with(".jsonl"))
        })
    })
}

/// The file beside `--out`'s `ledger` that names the ledger directory a run's exchange
/// made ([`ledger_mark`]), written once the exchange is up and again once it has stopped.
const LEDGER_MARK: &str = ".ledger-by-loadtest";

/// A ledger directory's device and inode, the SHA-256 of its `FINGERPRINT_KEY` (random per
/// ledger) and, `with_head`, of its `HEAD`: another directory put in its place (a copy, a
/// restore, a mount) has another inode, another ledger's files copied into it another
/// key or another `HEAD`.
fn ledger_mark(dir: &std::path::Path, with_head: bool) -> Option<String> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)
        .ok()
        .filter(std::fs::Metadata::is_dir)?;
    let digest = |name: &str| -> String {
        let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut mark = format!("{} {} {}", m.dev(), m.ino(), digest("FINGERPRINT_KEY"));
    if with_head {
        mark.push(' ');
        mark.push_str(&digest("HEAD"));
    }
    Some(mark)
}

/// One start of the exchange on `listen` (and `admin`), its stderr forwarded to
/// loadtest's and kept in `said` (its first 64 KiB). On failure, the error and the
/// exchange's guard if it was started.
async fn start_exchange_once(
    o: &RigOpts<'_>,
    buyers: &[SimBuyerInfo],
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    said: &std::sync::Arc<std::sync::Mutex<String>>,
) -> Result<ChildGuard, (anyhow::Error, Option<ChildGuard>)> {
    let before = || -> anyhow::Result<(std::path::PathBuf, Vec<(String, String)>)> {
        refuse_what_is_not_ours(o.out)?;
        let opts = ExchangeOpts {
            listen,
            ledger_path: o.out.join("ledger"),
            deadline_ms: o.deadline_ms,
            ping_timeout_ms: o.timeout_ms,
            post_timeout_ms: 1000,
            seller_key: SELLER_KEY.to_string(),
            requests_in_flight_max: 100_000,
            breaker_failures: if o.breaker_enabled { 5 } else { 10_000 },
            breaker_open_ms: 1000,
            breaker_probe_interval_ms: 1000,
            filler_buyers: o.filler_buyers,
        };
        let (mut toml, env) = sim::exchange_config(buyers, &opts);
        if !o.breaker_enabled {
            if !toml.contains("[server.breaker]") {
                bail!("the generated exchange config has no [server.breaker] table");
            }
            toml = toml.replacen("[server.breaker]", "[server.breaker]\nenabled = false", 1);
        }
        toml.push_str(&o.extra_toml);
        if let (Some(admin_toml), Some(admin)) = (o.admin_toml, admin) {
            toml.push_str(&admin_toml(admin));
        }
        let cfg_path = o.out.join("exchange.toml");
        std::fs::write(&cfg_path, &toml)?;
        // Cleared, or the run does not start (black-box round 238a: files bind-mounted
        // in it could not be removed, and the exchange added its sales to them).
        match std::fs::remove_dir_all(o.out.join("ledger")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!(
                "--out {}: could not clear the earlier run's ledger {}: {e}; the exchange is not started on what is left there",
                o.out.display(),
                o.out.join("ledger").display()
            ),
        }
        if let Some(prepare) = o.before_exchange {
            prepare(&cfg_path)?;
        }
        Ok((cfg_path, env))
    };
    let (cfg_path, env) = before().map_err(|e| (e, None))?;
    let mut cmd = wrapped(o.wrap, o.exchange_bin);
    cmd.arg("--config")
        .arg(&cfg_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd.env("RUST_LOG", "pingpost=warn");
    // The generated configuration has no `[admin]` table unless the scenario adds
    // one (with its own port and token): the default admin listener (127.0.0.1:8081)
    // must not start from an operator's token in loadtest's environment (black-box
    // round 100a: a run listened on 8081, and failed when another did).
    cmd.env_remove("PINGPOST_ADMIN_TOKEN");
    for (k, v) in env.iter().chain(&o.extra_env) {
        cmd.env(k, v);
    }
    let mark = (!o.wrap.is_empty()).then(|| loadtest::children::target_mark("exchange"));
    if let Some(m) = &mark {
        cmd.env(loadtest::children::TARGET_MARK, m);
    }
    // Started first, so that no SIGKILL of loadtest finds the exchange unguarded.
    let mut orphan_guard = loadtest::children::OrphanGuard::start();
    if let Some((k, v)) = orphan_guard.mark() {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| match o.wrap.first() {
            // Black-box round 125b: a missing wrapper was reported as the exchange.
            Some(w) => format!(
                "starting the exchange {} under --wrap: starting {w}",
                o.exchange_bin.display()
            ),
            None => format!("starting the exchange {}", o.exchange_bin.display()),
        })
        .map_err(|e| (e, None))?;
    // Forwarded line by line, as it was inherited before; its start kept to tell a
    // taken port from any other failure to start.
    let forward = child.stderr.take().map(|stderr| {
        let said = said.clone();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            // Dropped when the pipe ends: the start's failure is then judged.
            let _done = done;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if let Ok(mut s) = said.lock() {
                    if s.len() < 64 * 1024 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            }
        });
        finished
    });
    let stdin = child.stdin.take();
    let mut guard = ChildGuard {
        name: "exchange",
        // Stopped before the buyers on a signal (black-box round 82b).
        _registered: loadtest::children::register_exchange(child.id()),
        _orphan_guard: {
            orphan_guard.watch(child.id());
            Some(orphan_guard)
        },
        child,
        stdin,
        stop_waits: stop_waits(o.wrap),
        wrapped: mark.map(|m| (m, o.exchange_bin.to_path_buf())),
        target: None,
        unfound: false,
        ledger_out: None,
    };
    // A wrapper (valgrind) starts slowly.
    match wait_healthy(
        listen,
        if o.wrap.is_empty() { 200 } else { 2_400 },
        Some(&mut guard),
    )
    .await
    {
        Ok(()) => {
            guard.find_target_within(TARGET_WAIT);
            // The ledger directory this exchange made, so the next run may replace it.
            if let Some(mark) = ledger_mark(&o.out.join("ledger"), false) {
                let _ = std::fs::write(o.out.join(LEDGER_MARK), mark);
            }
            guard.ledger_out = Some(o.out.to_path_buf());
            Ok(guard)
        }
        Err(e) => {
            // Its last words read before judging them (at most 1 s: a wrapper's own
            // process may hold the pipe open).
            if let Some(finished) = forward {
                let _ = tokio::time::timeout(Duration::from_secs(1), finished).await;
            }
            Err((e, Some(guard)))
        }
    }
}
