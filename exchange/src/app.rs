//! Putting the exchange together: state from a configuration, a listener, the server task,
//! and shutdown. `main` and the integration tests both start the exchange through here.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::state::{AppState, ConfigSource};

/// The default configuration compiled into the binary (config/default.toml).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/default.toml");

/// Builds the shared state: opens the ledger and registers metrics.
pub fn build_state(config: Config, clock: Clock) -> std::io::Result<Arc<AppState>> {
    let metrics = Metrics::new();
    let batch = metrics.ledger_batch.clone();
    let ledger = Ledger::open(
        &config.server.ledger_path,
        config.server.ledger_segment_bytes_max,
        // A sync that made no record durable (nothing new since the last one) is not a
        // batch of the metric.
        move |n| {
            if n > 0 {
                batch.observe(n as f64)
            }
        },
    )?;
    let mut state = AppState::new(config, ledger, metrics, clock);
    // The lead fingerprint's key, kept beside the ledger (made at the first start). Made
    // anew beside a ledger that has records, it was lost: say so, once, loudly.
    // Through the directory the ledger locked, not by path (see `Ledger::locked_dir`).
    let dir = state.ledger.dir().to_path_buf();
    let locked = state.ledger.locked_dir();
    // Read, or made in memory only: the replay decides whether a new key may be begun
    // beside this ledger, and only then is it written.
    state.fingerprint = crate::fingerprint::Fingerprinter::load_in(&locked, &dir)?;
    // Idempotency keys and their bodies are named in the ledger by digests under the
    // same key (SECURITY.md S15c).
    if let Some(mac) = state.fingerprint.mac() {
        state.idempotency.set_key(mac.clone());
        state.disposition_keys.set_key(mac);
    }
    // The seller certificate and the buyer CA bundle (checked by the loader already).
    crate::tls::install(&mut state).map_err(std::io::Error::other)?;
    // Caps, budgets and idempotency keys from the ledger, before anything is served.
    crate::recovery::recover(&state)
        .map_err(|e| std::io::Error::new(e.kind(), format!("replaying the ledger: {e}")))?;
    state.fingerprint.persist_in(&locked, &dir)?;
    // Readable by others, the key lets them test guesses against the digests (black-box
    // round 64a: a key restored with mode 644 was used in silence). Made owner-only and
    // said here, at the start, not by the tools that read it.
    crate::fingerprint::make_owner_only(&locked, &dir);
    // This run begins here: the next replay tells a crash of it from a shutdown.
    state
        .ledger
        .mark_start(
            state.generation(),
            state.clock.now_ms(),
            &state.fingerprint.key_id(),
        )
        .map_err(|e| std::io::Error::other(format!("marking the start in the ledger: {e}")))?;
    // Each vertical's champion model, if the model directory names one (a broken one is
    // logged and the vertical starts on the cold-start rates).
    note_missing_models_dir(&state.runtime.load().config);
    crate::state::warn_of_config(&state.runtime.load().config);
    state.sync_champions_at_start();
    Ok(Arc::new(state))
}

/// Says at the start that `learning.models_dir` does not exist while a vertical
/// declares features, so no vertical serves a model (black-box round 113a: a models
/// directory moved away was said only by `--check-config`, and a start served the
/// cold-start rates in silence). An info line: before the first model is trained or
/// imported, it is as it should be.
fn note_missing_models_dir(cfg: &crate::config::Config) {
    let dir = &cfg.learning.models_dir;
    if !dir.exists() && cfg.verticals.iter().any(|v| v.features.is_some()) {
        tracing::info!(
            models_dir = %crate::cli_out::Shown(dir),
            "learning.models_dir does not exist, so no vertical serves a model (cold-start \
             rates): as it should be before the first model is trained or imported; after \
             moving the models, name their new directory"
        );
    }
}

/// Watches the model directory: every `learning.watch_ms`, serves each vertical's
/// `CHAMPION` if it changed. Ends when the exchange is dropped.
pub fn spawn_model_watch(state: &Arc<AppState>) {
    let every = state.runtime.load().config.learning.watch_ms;
    if every == 0 {
        return;
    }
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let _ =
                crate::models::learning::off_the_auction_path("pingpost-model-watch", move || {
                    st.sync_champions()
                })
                .await;
        }
    });
}

/// How often the fingerprint key file is compared with the key in use
/// ([`spawn_key_keeper`]).
pub const KEY_CHECK_MS: u64 = 2_000;

/// [`crate::fingerprint::Fingerprinter::keep_in`] on `state`'s ledger, said in the log
/// (`warned`: the last error said, so one that stays the same is said once). Blocking.
fn keep_key(state: &AppState, warned: &mut Option<String>, at_stop: bool) {
    let dir = state.ledger.dir().to_path_buf();
    match state.fingerprint.keep_in(&state.ledger.locked_dir(), &dir) {
        Ok(Some(why)) => {
            *warned = None;
            tracing::warn!(
                "ledger: {} {why} (another process changed it while the exchange ran): the key in use was written there again, owner-only (a start needs it; keep it owner-only, and back it up)",
                crate::fingerprint::KEY_FILE
            );
        }
        Ok(None) => {
            if warned.take().is_some() {
                tracing::info!(
                    "ledger: {} checked again: it holds the key in use",
                    crate::fingerprint::KEY_FILE
                );
            }
        }
        Err(e) => {
            use crate::fingerprint::{KeepError, KEY_UNREADABLE};
            let text = e.to_string();
            if warned.as_deref() == Some(text.as_str()) {
                return;
            }
            let when = if at_stop {
                "at this stop".to_string()
            } else {
                format!(
                    "checked again every {} s, said once while the reason stays the same",
                    KEY_CHECK_MS / 1000
                )
            };
            match e {
                KeepError::Unchecked(_) => tracing::error!(
                    error = %text,
                    "ledger: the lead fingerprint key file could not be read to check it: not known to differ from the key in use; a start checks it and refuses this ledger if it does not hold that key ({when})"
                ),
                KeepError::NotWritten(_, KEY_UNREADABLE) => tracing::error!(
                    error = %text,
                    "ledger: the lead fingerprint key file cannot be read by the exchange's user (its owner or mode was changed; its content is not known to differ from the key in use) and could not be written again: a start would refuse this ledger until that user can read it again ({when})"
                ),
                KeepError::NotWritten(..) => tracing::error!(
                    error = %text,
                    "ledger: the lead fingerprint key file differs from the key in use and could not be written again: a start would refuse this ledger until it holds the key in use ({when})"
                ),
            }
            *warned = Some(text);
        }
    }
}

/// Every [`KEY_CHECK_MS`], makes the ledger's `FINGERPRINT_KEY` hold the key in use again
/// when another process removed, replaced or rewrote it (`Fingerprinter::keep_in`), and
/// says so. Ends when the exchange is dropped.
pub fn spawn_key_keeper(state: &Arc<AppState>) {
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(KEY_CHECK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let warned = Arc::new(std::sync::Mutex::new(None::<String>));
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            let warned = warned.clone();
            let _ =
                crate::models::learning::off_the_auction_path("pingpost-key-keeper", move || {
                    let mut w = warned
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    keep_key(&st, &mut w, false);
                })
                .await;
        }
    });
}

/// Every second, moves the exchange's clock forward by a forward step of the system
/// clock, and says so; a step back is said once per step (the clock keeps its time).
/// Only for a clock that follows the system's (the binary's). Ends when the exchange is
/// dropped.
pub fn spawn_clock_follow(state: &Arc<AppState>) {
    if !state.clock.follows_system() {
        return;
    }
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut behind_said: i64 = 0;
        loop {
            tick.tick().await;
            let Some(st) = weak.upgrade() else { return };
            match st.clock.follow_system() {
                crate::clock::Step::Forward(ms) => {
                    behind_said = 0;
                    tracing::warn!(
                        step_ms = ms,
                        "the system clock stepped forward: the exchange's clock follows it"
                    );
                }
                crate::clock::Step::Behind(ms) => {
                    if ms > behind_said.saturating_add(crate::clock::STEP_TOLERANCE_MS) {
                        behind_said = ms;
                        tracing::warn!(
                            behind_ms = ms,
                            "the system clock is behind the exchange's (stepped back?): the exchange keeps its own time, which never goes back, until it is restarted; buyers that check webhook timestamps against the system's time may refuse its requests"
                        );
                    }
                }
                crate::clock::Step::None => behind_said = 0,
            }
        }
    });
}

/// The most shutdown waits for late-post watches: each ends within its own wait
/// ([`crate::auction::LATE_POST_WAIT_MS`]) plus the durable write of its record.
pub const LATE_WATCH_DRAIN_MS: u64 = crate::auction::LATE_POST_WAIT_MS + 5_000;

/// Waits (bounded) for the late-post watches still hearing buyers out, so a late accept
/// is written (`late_accept`) and counted before the ledger's tail is made durable and
/// the event loops stop; logs what it waited for when `log` (one caller of several:
/// every worker of the threaded server waits, and the line was logged once per worker).
pub async fn drain_late_watches(state: &AppState, log: bool) {
    let running = state.late_watches.running();
    if running == 0 {
        return;
    }
    if log {
        tracing::info!(
            late_watches = running,
            "shutdown: waiting for buyers answering a post late"
        );
    }
    let left = state
        .late_watches
        .wait_idle(std::time::Duration::from_millis(LATE_WATCH_DRAIN_MS))
        .await;
    if left > 0 && log {
        tracing::warn!(
            late_watches = left,
            "shutdown: late-post watches still running were dropped"
        );
    }
}

/// Waits for the request tasks still running at a stop whose clients went (their
/// connections closed, so the listeners' drain did not wait for them), within what is
/// left of `server.shutdown_grace_ms` since `stopped_at`; counts those still running then
/// in `requests_dropped_at_stop`, and logs when `log` (one caller of several, as
/// [`drain_late_watches`]).
pub async fn drain_requests(state: &AppState, stopped_at: tokio::time::Instant, log: bool) {
    let running = state.requests.running();
    if running == 0 {
        return;
    }
    if log {
        tracing::info!(
            requests = running,
            "shutdown: waiting for requests still running whose clients have gone"
        );
    }
    let grace =
        std::time::Duration::from_millis(state.runtime.load().config.server.shutdown_grace_ms);
    let left = state
        .requests
        .wait_idle(grace.saturating_sub(stopped_at.elapsed()))
        .await;
    if left > 0 && log {
        state
            .requests_dropped_at_stop
            .fetch_max(left as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A running exchange.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener's address; `None` when it did not start (no admin token).
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<std::io::Result<()>>,
    admin: Option<(oneshot::Sender<()>, JoinHandle<std::io::Result<()>>)>,
}

/// Binds the admin listener if the configuration has an admin token (without one the
/// admin listener stays off: see docs/OPERATIONS.md).
fn bind_admin_std(config: &Config) -> std::io::Result<Option<std::net::TcpListener>> {
    if config.admin.token.is_none() {
        tracing::warn!(
            token_env = %crate::config::shown_env_name(&config.admin.token_env),
            "admin listener off: set the admin token variable to serve /metrics and /admin/reload"
        );
        return Ok(None);
    }
    let addr = config.admin.listen;
    let l = listen_std(addr, ADMIN_BACKLOG).map_err(|e| in_context(e, addr, "admin.listen"))?;
    l.set_nonblocking(true)?;
    Ok(Some(l))
}

/// The admin listener's accept queue (the kernel caps it at `net.core.somaxconn`). With
/// every one of its few slots taken, new connections wait there for the eviction of a
/// head-less one; once it is full the kernel drops their SYNs, and a client that retries
/// backs off for seconds (1, 3, 7, 15, 31 s): with std's queue of 128, 200 clients that
/// reconnected as soon as they were closed kept a token holder's reload out for 35 s
/// (black-box round 219b). With 1,024, such a client waits its turn behind at most that
/// many connections, each evicted after the grace.
const ADMIN_BACKLOG: i32 = 1024;

/// A listening socket on `addr` with an accept queue of `backlog` (`SO_REUSEADDR`, as
/// std's `TcpListener::bind` sets, whose queue is 128).
fn listen_std(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// `e` with the address and the setting it came from: "cannot listen on 127.0.0.1:8081
/// (admin.listen): Address already in use".
fn in_context(e: std::io::Error, addr: SocketAddr, setting: &str) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("cannot listen on {addr} ({setting}): {e}"),
    )
}

/// Refuses to share the seller address with another process. The workers' listeners
/// set `SO_REUSEPORT`, so a second exchange started on the same port by mistake would
/// bind beside the first and the kernel would split the sellers between the two (each
/// with its own quotes and ledger). A plain socket (`SO_REUSEADDR` only, so connections
/// left in `TIME_WAIT` do not count) cannot bind where any socket listens. Port 0 picks a
/// free port and is not checked.
fn refuse_shared_port(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = if addr.is_ipv4() {
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?
    } else {
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?
    };
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr} (server.listen): another process is listening there \
                 (is another exchange running?)"
            ),
        )),
        Err(e) => Err(in_context(e, addr, "server.listen")),
    }
}

/// Loads the configuration from `source`, starts the exchange ([`start`]) and keeps the
/// source for reloads (`POST /admin/reload`, SIGHUP).
pub async fn start_with_source(source: ConfigSource, clock: Clock) -> anyhow::Result<Running> {
    let config = source().map_err(|e| anyhow::anyhow!("configuration:\n{e}"))?;
    let running = start(config, clock).await?;
    running.state.set_config_source(source);
    Ok(running)
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        let stopped_at = tokio::time::Instant::now();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some((tx, join)) = self.admin.take() {
            let _ = tx.send(());
            let _ = join.await;
        }
        let served = (&mut self.join)
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        // Requests whose clients went, then a buyer that answers a post late (it may
        // have accepted it): heard out first.
        drain_requests(&self.state, stopped_at, true).await;
        drain_late_watches(&self.state, true).await;
        // The key as the next start needs it, whatever was done to it since the last
        // look (round 123a: a SIGTERM within 2 s of a change left it for the start to
        // refuse).
        keep_key(&self.state, &mut None, true);
        // Auction and attempt records ride along with durable ones; make the tail durable.
        let flushed = self
            .state
            .ledger
            .flush_at(self.state.generation(), self.state.clock.now_ms())
            .await;
        served.and(ledger_at_stop(flushed))
    }
}

/// Binds `config.server.listen` and serves in a task.
pub async fn start(config: Config, clock: Clock) -> std::io::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let admin_listener = bind_admin_std(&config)?
        .map(TcpListener::from_std)
        .transpose()?;
    let admin_addr = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let state = build_state(config, clock)?;
    spawn_model_watch(&state);
    spawn_key_keeper(&state);
    crate::models::learning::spawn(&state);
    let admin = admin_listener.map(|l| {
        let (tx, rx) = oneshot::channel::<()>();
        let st = state.clone();
        let join = tokio::spawn(async move {
            crate::server::serve_admin(l, st, async {
                let _ = rx.await;
            })
            .await
        });
        (tx, join)
    });
    let (tx, rx) = oneshot::channel::<()>();
    let st = state.clone();
    let join = tokio::spawn(async move {
        crate::server::serve(listener, st, async {
            let _ = rx.await;
        })
        .await
    });
    Ok(Running {
        addr,
        admin_addr,
        state,
        shutdown: Some(tx),
        join,
        admin,
    })
}

/// A thread-per-core exchange: `threads` OS threads, each with its own current-thread
/// event loop and its own listener on the same address (SO_REUSEPORT, so the kernel
/// spreads connections), sharing one `AppState`. A request and every buyer call it makes
/// stay on one thread: no cross-thread wake-ups on the hot path.
#[derive(Debug)]
pub struct Threaded {
    pub addr: SocketAddr,
    /// The admin listener's address (served by the first worker); `None` when off.
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// How many workers `server.worker_threads` asks for (0: one per available core).
pub fn worker_count(config: &Config) -> usize {
    match config.server.worker_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    }
}

/// Starts the workers; returns once every one is listening.
pub fn start_threaded(config: Config, clock: Clock) -> std::io::Result<Threaded> {
    let threads = worker_count(&config).max(1);
    // The soft open-file limit up to the hard one, before any socket is opened: the
    // default 1,024 of many systems is below `server.connections_max`.
    crate::fdlimit::raise_for(
        config.server.connections_max,
        crate::state::ADMIN_CONNECTIONS_MAX,
    );
    let mut addr = config.server.listen;
    refuse_shared_port(addr)?;
    let mut admin_std = bind_admin_std(&config)?;
    let admin_addr = admin_std.as_ref().map(|l| l.local_addr()).transpose()?;
    let state = build_state(config, clock)?;
    // The binary's exchange: the finished pings' ring and the sold-lead index are
    // reserved now, resident from the start, so memory does not grow as they fill (P10).
    state.prefault_memory();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let st = state.clone();
        let mut stop_rx = stop_rx.clone();
        let bind_to = addr;
        // The first worker also serves the admin listener.
        let admin_l = if i == 0 { admin_std.take() } else { None };
        let admin_stop = stop_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("pingpost-worker-{i}"))
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    if i == 0 {
                        spawn_clock_follow(&st);
                        spawn_model_watch(&st);
                        spawn_key_keeper(&st);
                        crate::models::learning::spawn(&st);
                    }
                    let listener = match bidder_sdk::listener::bind_reuseport(bind_to)
                        .map_err(|e| in_context(e, bind_to, "server.listen"))
                        .and_then(|l| {
                            let a = l.local_addr()?;
                            Ok((l, a))
                        }) {
                        Ok((l, a)) => {
                            let _ = ready_tx.send(Ok(a));
                            l
                        }
                        Err(e) => {
                            let _ =
                                ready_tx.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    let stop_seen = std::sync::Arc::new(std::sync::OnceLock::new());
                    let seen = std::sync::Arc::clone(&stop_seen);
                    let shutdown = async move {
                        let _ = stop_rx.wait_for(|stopped| *stopped).await;
                        let _ = seen.set(tokio::time::Instant::now());
                    };
                    let admin = async {
                        let Some(l) = admin_l else {
                            return Ok(());
                        };
                        let l = TcpListener::from_std(l)?;
                        let mut stop = admin_stop;
                        crate::server::serve_admin(l, st.clone(), async move {
                            let _ = stop.wait_for(|stopped| *stopped).await;
                        })
                        .await
                    };
                    let (served, admin) = tokio::join!(
                        crate::server::serve_with(listener, st.clone(), shutdown, i == 0),
                        admin
                    );
                    // Each worker's event loop runs the request tasks and the late-post
                    // watches it spawned: it stops only once every worker's are done (or
                    // their bounds are reached).
                    let stopped_at = stop_seen
                        .get()
                        .copied()
                        .unwrap_or_else(tokio::time::Instant::now);
                    drain_requests(&st, stopped_at, i == 0).await;
                    drain_late_watches(&st, i == 0).await;
                    served.and(admin)
                })
            })?;
        match ready_rx.recv() {
            Ok(Ok(a)) => addr = a,
            Ok(Err(e)) => {
                let _ = stop.send(true);
                return Err(e);
            }
            Err(_) => {
                let _ = stop.send(true);
                return Err(std::io::Error::other("a worker thread died while starting"));
            }
        }
        workers.push(handle);
    }
    Ok(Threaded {
        addr,
        admin_addr,
        state,
        stop,
        workers,
    })
}

impl Threaded {
    /// Stops accepting on every worker, lets in-flight requests finish (each worker's grace
    /// period), joins the workers, and makes the ledger's tail durable.
    pub fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        for w in self.workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(std::io::Error::other("a worker thread panicked")),
            }
        }
        keep_key(&self.state, &mut None, true);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let flushed = rt.block_on(
            self.state
                .ledger
                .flush_at(self.state.generation(), self.state.clock.now_ms()),
        );
        result.and(ledger_at_stop(flushed))
    }
}

/// The stop's last flush of the ledger as the stop's own result: one that failed (or a
/// ledger that had failed before: fail-stop) makes the stop an error, so the process
/// exits 1, not 0 (black-box round 158a: after a ledger write failed, a SIGTERM's stop
/// looked clean to a supervisor).
fn ledger_at_stop<E: std::fmt::Display>(flushed: Result<(), E>) -> std::io::Result<()> {
    flushed.map_err(|e| {
        tracing::error!(error = %e, "ledger flush at shutdown failed");
        std::io::Error::other(format!("the ledger has failed: {e}"))
    })
}
