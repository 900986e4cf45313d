//! `loadtest run market`: the orchestration. Starts the simulated buyers (in this
//! process, one fleet per leg) and one `pingpost` child process per leg, feeds them the
//! lead stream as a seller would (ping, then post every lead that got a bid), reports
//! dispositions with each buyer's own key, trains and swaps models through the real
//! commands and the admin API, and collects every lead's outcome.
//!
//! Issue-8 dependent steps (marked "issue 8" below) are skipped for the pieces the
//! exchange lacks ([`super::Pieces`]): `--legacy` runs the price-only leg against an
//! exchange from before issue 8.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::accounting::LeadOutcome;
use super::buyers::{start_leg_fleet, LegFleet, PostBook};
use super::config::{leg_config, Leg, LegConfig, ADMIN_TOKEN_ENV};
use super::world::{lead, World};
use super::MarketOpts;
use crate::sim::VERTICAL;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Longest answer body read from the exchange.
const ANSWER_BODY_MAX: usize = 64 * 1024;
/// Patience for one request to the exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Patience for `pingpost train` and `pingpost models import`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// 50 ms waits for an exchange to answer `/healthz` (30 s: a restart replays its ledger).
const HEALTHY_TRIES: u32 = 600;

/// How often a disposition answered `429` is tried again, and how long apart.
const DISPOSITION_RETRIES_MAX: u32 = 100;
const DISPOSITION_RETRY_WAIT: Duration = Duration::from_millis(20);

/// The market seller's bearer key (loopback only; the config stores its SHA-256).
pub const MARKET_SELLER_KEY: &str = "market-seller-key-0123456789";

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(8)
        .build(http)
}

/// One JSON request; `(status, body)` (a body that is not JSON becomes a string).
async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    bearer: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let bytes = body
        .map(serde_json::to_vec)
        .transpose()?
        .unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let res = client.request(req).await?;
        let status = res.status().as_u16();
        let body = Limited::new(res.into_body(), ANSWER_BODY_MAX)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        anyhow::Ok((status, v))
    })
    .await
    .map_err(|_| anyhow!("{url}: no answer in {} s", REQUEST_TIMEOUT.as_secs()))??;
    Ok(answer)
}

/// A leg's seller and admin addresses: ports picked together, so distinct.
fn listen_and_admin() -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    let ports = crate::ports::free_loopback_ports(2)?;
    Ok((
        format!("127.0.0.1:{}", ports[0]).parse()?,
        format!("127.0.0.1:{}", ports[1]).parse()?,
    ))
}

/// A `pingpost` exchange child, stopped (SIGTERM, then kill) when dropped.
struct ExchangeProc {
    child: tokio::process::Child,
    /// Stopped by a signal to loadtest alone ([`crate::children`]).
    _registered: Option<crate::children::Registered>,
    /// Stops it should loadtest die without doing so (a SIGKILL).
    _orphan_guard: Option<crate::children::OrphanGuard>,
}

impl ExchangeProc {
    async fn start(
        bin: &Path,
        config: &Path,
        env: &[(String, String)],
        listen: std::net::SocketAddr,
        log: &Path,
    ) -> anyhow::Result<ExchangeProc> {
        let log_path = log.to_path_buf();
        let log = std::fs::File::create(log)?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("--config")
            .arg(config)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "pingpost=warn")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Started first, so that no SIGKILL of loadtest finds the exchange unguarded.
        let mut orphan_guard = crate::children::OrphanGuard::start();
        if let Some((k, v)) = orphan_guard.mark() {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Stopped before the buyers on a signal (black-box round 82b).
        let _registered = child.id().map(crate::children::register_exchange);
        let _orphan_guard = child.id().map(|pid| {
            orphan_guard.watch(pid);
            orphan_guard
        });
        let mut p = ExchangeProc {
            child,
            _registered,
            _orphan_guard,
        };
        let c = client();
        for _ in 0..HEALTHY_TRIES {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!(
                    "the exchange exited ({status}) before it was healthy: see {}",
                    log_path.display()
                );
            }
            if let Ok((200, _)) = call(
                &c,
                Method::GET,
                &format!("http://{listen}/healthz"),
                "",
                None,
            )
            .await
            {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p.stop().await;
        bail!("the exchange at {listen} did not become healthy in 30 s")
    }

    async fn stop(&mut self) {
        self.child.stdin.take();
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs `pingpost <args>` to completion (bounded); its stdout, or an error with the tail
/// of its stderr.
async fn pingpost_cmd(
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("RUST_LOG", "pingpost=warn")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
    let _registered = child.id().map(crate::children::register);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow!(
                "pingpost {}: still running after {} s",
                args.join(" "),
                COMMAND_TIMEOUT.as_secs()
            )
        })??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(" | ");
        bail!(
            "pingpost {} failed ({}): {} {}",
            args.first().copied().unwrap_or(""),
            out.status,
            stdout.trim(),
            tail
        );
    }
    Ok(stdout)
}

/// The version `pingpost train` printed: the `version` of its JSON line (or, failing that,
/// the last word of its last non-empty line).
pub fn parse_trained_version(stdout: &str) -> Option<String> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(ver) = v.get("version").and_then(serde_json::Value::as_str) {
            return Some(ver.to_string());
        }
    }
    let word = line.split_whitespace().last()?;
    let word = word.trim_matches(|c: char| c == '"' || c == '\'' || c == '.' || c == ',');
    (!word.is_empty()).then(|| word.to_string())
}

/// One leg: its buyers, its exchange, its files.
struct LegRig {
    leg: Leg,
    fleet: LegFleet,
    exchange: Option<ExchangeProc>,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    dir: PathBuf,
    env: Vec<(String, String)>,
    buyer_keys: Vec<String>,
    client: HttpClient,
    admin_token: String,
    driver: LegDriver,
    /// Exchange starts so far (names the logs: `pingpost-1.log`, ...).
    starts: u32,
}

impl LegRig {
    async fn new(leg: Leg, world: &Arc<World>, root: &Path) -> anyhow::Result<LegRig> {
        let dir = root.join(leg.name());
        if dir.exists() {
            // A previous run's ledger and models would change this one.
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        let fleet = start_leg_fleet(world).await?;
        let buyer_keys: Vec<String> = (0..world.buyers.len())
            .map(|_| format!("mkb-{:032x}", rand::random::<u128>()))
            .collect();
        let (listen, admin) = listen_and_admin()?;
        let driver = LegDriver::new(
            listen,
            Arc::clone(&fleet.book),
            buyer_keys.clone(),
            MARKET_SELLER_KEY,
        );
        Ok(LegRig {
            leg,
            fleet,
            exchange: None,
            listen,
            admin,
            dir,
            env: Vec::new(),
            buyer_keys,
            client: client(),
            admin_token: format!("mka-{:032x}", rand::random::<u128>()),
            driver,
            starts: 0,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("pingpost.toml")
    }

    /// Writes the leg's config (`retrain_after` only matters on the EV leg).
    fn write_config(
        &mut self,
        world: &World,
        o: &MarketOpts,
        retrain_after: Option<u64>,
    ) -> anyhow::Result<()> {
        let (toml, mut env) = leg_config(&LegConfig {
            leg: self.leg,
            listen: self.listen,
            admin_listen: self.admin,
            ledger_path: self.dir.join("ledger"),
            models_dir: self.dir.join("models"),
            buyers: &self.fleet.infos,
            ids: &world.ids,
            buyer_keys: &self.buyer_keys,
            seller_key: MARKET_SELLER_KEY,
            pieces: o.pieces,
            retrain_after,
            explore_share: o.explore_share,
            ping_timeout_ms: o.ping_timeout_ms,
        });
        env.push((ADMIN_TOKEN_ENV.to_string(), self.admin_token.clone()));
        std::fs::write(self.config_path(), toml)?;
        self.env = env;
        Ok(())
    }

    async fn start_exchange(&mut self, bin: &Path) -> anyhow::Result<()> {
        // The ports were free when the leg was made; by now a client connection may hold
        // one (they are ephemeral ports): on "in use", move to fresh ones and retry.
        let mut attempt = 0;
        loop {
            self.starts += 1;
            attempt += 1;
            let log = self.dir.join(format!("pingpost-{}.log", self.starts));
            match ExchangeProc::start(bin, &self.config_path(), &self.env, self.listen, &log).await
            {
                Ok(p) => {
                    self.exchange = Some(p);
                    return Ok(());
                }
                Err(e) => {
                    let in_use = std::fs::read_to_string(&log)
                        .is_ok_and(|t| t.contains("Address already in use"));
                    if !in_use || attempt >= 5 {
                        return Err(e)
                            .with_context(|| format!("the {} leg's exchange", self.leg.name()));
                    }
                    let (old_listen, old_admin) = (self.listen, self.admin);
                    (self.listen, self.admin) = listen_and_admin()?;
                    self.driver.listen = self.listen;
                    let text = std::fs::read_to_string(self.config_path())?
                        .replace(&old_listen.to_string(), &self.listen.to_string())
                        .replace(&old_admin.to_string(), &self.admin.to_string());
                    std::fs::write(self.config_path(), text)?;
                }
            }
        }
    }

    async fn stop_exchange(&mut self) {
        if let Some(mut p) = self.exchange.take() {
            p.stop().await;
        }
    }

    /// issue 8: `POST /admin/models {"vertical", "version"}`.
    async fn serve_models(&self, version: Option<&str>) -> anyhow::Result<Value> {
        let body = json!({"vertical": VERTICAL, "version": version});
        let url = format!("http://{}/admin/models", self.admin);
        let (status, answer) = call(
            &self.client,
            Method::POST,
            &url,
            &self.admin_token,
            Some(&body),
        )
        .await?;
        if status != 200 {
            bail!(
                "POST /admin/models {body} on the {} leg: {status} {answer}",
                self.leg.name()
            );
        }
        Ok(answer)
    }

    /// issue 8: `pingpost models import` of an XGBoost JSON file as the realization model.
    async fn import_model(&self, bin: &Path, version: &str, file: &Path) -> anyhow::Result<()> {
        let cfg = self.config_path();
        pingpost_cmd(
            bin,
            &[
                "models",
                "import",
                "--config",
                &cfg.to_string_lossy(),
                "--vertical",
                VERTICAL,
                "--version",
                version,
                "--realization",
                &file.to_string_lossy(),
            ],
            &self.env,
        )
        .await
        .map(|_| ())
    }

    async fn run_lead(&mut self, world: &World, i: u64, dispositions: bool) -> LeadOutcome {
        self.driver.run_lead(world, i, dispositions).await
    }

    async fn shutdown(mut self) {
        self.stop_exchange().await;
        self.fleet.shutdown().await;
    }
}

/// The seller of one leg, and its buyers' disposition reports: drives one lead at a time
/// through an exchange at `listen` whose buyers write to `book`.
pub struct LegDriver {
    listen: std::net::SocketAddr,
    book: Arc<PostBook>,
    buyer_keys: Vec<String>,
    seller_key: String,
    client: HttpClient,
    /// Dispositions answered with an error (issue 8 not merged, or a real problem).
    pub disposition_errors: u64,
    /// The first such error, for the report.
    pub first_disposition_error: Option<String>,
}

impl std::fmt::Debug for LegDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegDriver")
            .field("listen", &self.listen)
            .finish()
    }
}

impl LegDriver {
    /// A driver for the exchange at `listen` (seller key `seller_key`), whose buyers
    /// record their posts in `book` and report dispositions with `buyer_keys`.
    pub fn new(
        listen: std::net::SocketAddr,
        book: Arc<PostBook>,
        buyer_keys: Vec<String>,
        seller_key: &str,
    ) -> LegDriver {
        LegDriver {
            listen,
            book,
            buyer_keys,
            seller_key: seller_key.to_string(),
            client: client(),
            disposition_errors: 0,
            first_disposition_error: None,
        }
    }

    /// One lead, as a seller and then its buyer would: ping, post if it got a bid, and a
    /// disposition from the buyer that took it.
    pub async fn run_lead(&mut self, world: &World, i: u64, dispositions: bool) -> LeadOutcome {
        let l = lead(world.seed, i);
        let mut out = LeadOutcome {
            lead: i,
            ..LeadOutcome::default()
        };
        let base = format!("http://{}", self.listen);
        let ping = json!({"vertical": VERTICAL, "lead": l.ping, "source": {"sub_id": "market"}});
        let answer = call(
            &self.client,
            Method::POST,
            &format!("{base}/v1/ping"),
            &self.seller_key,
            Some(&ping),
        )
        .await;
        let ping_id = match answer {
            Ok((200, v)) if v["status"] == "bid" => {
                v["ping_id"].as_str().unwrap_or_default().to_string()
            }
            Ok((200, _)) => return out,
            _ => {
                out.error = true;
                return out;
            }
        };
        out.quoted = true;
        let post = json!({"ping_id": ping_id, "lead": l.full});
        let answer = call(
            &self.client,
            Method::POST,
            &format!("{base}/v1/post"),
            &self.seller_key,
            Some(&post),
        )
        .await;
        let events = self.book.take(i);
        out.rejected_posts = events.iter().filter(|e| !e.accepted).count() as u32;
        let lead_id = match answer {
            Ok((200, v)) if v["status"] == "sold" => {
                v["lead_id"].as_str().unwrap_or_default().to_string()
            }
            Ok((200, _)) => return out,
            _ => {
                out.error = true;
                return out;
            }
        };
        let Some(sale) = events.iter().find(|e| e.accepted) else {
            // Sold, but no buyer of ours saw an accepted post: a bookkeeping error.
            out.error = true;
            return out;
        };
        out.sold = true;
        out.buyer = Some(sale.buyer);
        out.price_micros = sale.price_micros;
        out.kept = sale.kept;
        out.returned = !sale.kept;
        if dispositions {
            // issue 8: the buyer reports what became of the lead with its own key.
            let body = if sale.kept {
                json!({"lead_id": lead_id, "outcome": "sold"})
            } else {
                json!({"lead_id": lead_id, "outcome": "returned", "reason": "not_interested"})
            };
            let key = self.buyer_keys.get(sale.buyer).cloned().unwrap_or_default();
            let url = format!("{base}/v1/dispositions");
            let mut r = call(&self.client, Method::POST, &url, &key, Some(&body)).await;
            // Dispositions are rate-limited per buyer (a token bucket): wait for a token,
            // a bounded number of times.
            for _ in 0..DISPOSITION_RETRIES_MAX {
                if !matches!(r, Ok((429, _))) {
                    break;
                }
                tokio::time::sleep(DISPOSITION_RETRY_WAIT).await;
                r = call(&self.client, Method::POST, &url, &key, Some(&body)).await;
            }
            match r {
                Ok((s, _)) if (200..300).contains(&s) => {}
                other => {
                    self.disposition_errors += 1;
                    if self.first_disposition_error.is_none() {
                        self.first_disposition_error = Some(match other {
                            Ok((s, v)) => format!("{s} {v}"),
                            Err(e) => format!("{e:#}"),
                        });
                    }
                }
            }
        }
        out
    }
}

/// What the orchestration measured; [`super::report`] turns it into files.
#[derive(Debug, Default)]
pub struct MarketRun {
    /// Outcomes of the learning leads (EV leg).
    pub learning: Vec<LeadOutcome>,
    /// Held-out outcomes per leg (aligned by lead).
    pub held_out: Vec<(Leg, Vec<LeadOutcome>)>,
    /// The model version `pingpost train` produced.
    pub trained_version: Option<String>,
    /// Notes (steps skipped or failed, with the reason).
    pub notes: Vec<String>,
    /// Seconds per phase.
    pub phase_s: Vec<(String, f64)>,
    /// Dispositions refused per leg.
    pub disposition_errors: Vec<(Leg, u64, Option<String>)>,
}

/// Runs `range` on one leg, one lead at a time; the oracle leg (`oracle_drift` set) is
/// served the drifted truth just before the drifted lead. Returns the outcomes and notes.
async fn run_leads(
    rig: &mut LegRig,
    world: &World,
    range: std::ops::Range<u64>,
    dispositions: bool,
    bin: &Path,
    oracle_drift: Option<(u64, &Path)>,
) -> (Vec<LeadOutcome>, Vec<String>) {
    let mut notes = Vec::new();
    let mut outs = Vec::with_capacity((range.end - range.start) as usize);
    let name = rig.leg.name();
    for i in range.clone() {
        if let Some((at, file)) = oracle_drift {
            if i == at {
                // issue 8: the oracle learns the drifted truth at the moment it happens.
                let r = async {
                    rig.import_model(bin, "truth-v2", file).await?;
                    rig.serve_models(Some("truth-v2")).await
                }
                .await;
                if let Err(e) = r {
                    notes.push(format!("oracle: serving the drifted truth failed: {e:#}"));
                }
            }
        }
        outs.push(rig.run_lead(world, i, dispositions).await);
        let done = i + 1 - range.start;
        if done.is_multiple_of(500) {
            eprintln!("market: {name}: {done}/{} leads", range.end - range.start);
        }
    }
    (outs, notes)
}

fn phase(name: &str, run: &mut MarketRun, t: &mut Instant) {
    run.phase_s
        .push((name.to_string(), t.elapsed().as_secs_f64()));
    *t = Instant::now();
}

/// Runs the whole market (see the module docs); what it measured even if a step failed
/// (the failure is in the notes and the error).
pub async fn run_market(o: &MarketOpts, world: Arc<World>) -> (MarketRun, anyhow::Result<()>) {
    let mut run = MarketRun::default();
    let r = run_inner(o, world, &mut run).await;
    (run, r)
}

async fn run_inner(o: &MarketOpts, world: Arc<World>, run: &mut MarketRun) -> anyhow::Result<()> {
    let bin = &o.exchange_bin;
    let pieces = o.pieces;
    let learn = o.learn_leads();
    let test = learn..learn + o.test_leads();
    let dispositions = pieces.dispositions;
    let mut t = Instant::now();
    let truth_v1 = o.out.join("truth-v1.json");
    let truth_v2 = o.out.join("truth-v2.json");
    std::fs::write(
        &truth_v1,
        serde_json::to_vec(&world.truth.to_xgboost_json())?,
    )?;
    std::fs::write(
        &truth_v2,
        serde_json::to_vec(&world.truth_drifted.to_xgboost_json())?,
    )?;
    if !pieces.dispositions {
        run.notes.push("no dispositions piece: no buyer key in the config and no disposition reported (returns are counted by the simulation only, the exchange never learns of them)".into());
    }

    let mut legs: Vec<LegRig> = Vec::new();
    let mut price = LegRig::new(Leg::Price, &world, &o.out).await?;
    price.write_config(&world, o, None)?;
    if !pieces.routing {
        run.notes.push("no routing piece: the exchange is configured as before issue 8 and only the price leg runs (no learning period, EV or oracle leg); against an exchange whose default award is EV this leg is NOT price-only".into());
        price.start_exchange(bin).await?;
        legs.push(price);
    } else {
        // ---- issue 8 from here on ----
        // 1. Learning period: the EV exchange with no model (cold-start rates + exploration).
        let mut ev = LegRig::new(Leg::Ev, &world, &o.out).await?;
        ev.write_config(&world, o, None)?;
        ev.start_exchange(bin).await?;
        eprintln!("market: learning period, {learn} leads on the EV exchange without a model");
        let (outs, notes) = run_leads(&mut ev, &world, 0..learn, dispositions, bin, None).await;
        run.learning = outs;
        run.notes.extend(notes);
        phase("learning", run, &mut t);

        let mut oracle = None;
        if pieces.learning {
            // 2. Train from the EV exchange's ledger (stopped, so it reads a quiet ledger),
            //    then restart it with continuous retraining on and serve the new version.
            ev.stop_exchange().await;
            let retrain = (o.retrain_after > 0).then_some(o.retrain_after);
            ev.write_config(&world, o, retrain)?;
            let cfg = ev.config_path();
            let trained = pingpost_cmd(
                bin,
                &[
                    "train",
                    "--config",
                    &cfg.to_string_lossy(),
                    "--vertical",
                    VERTICAL,
                ],
                &ev.env,
            )
            .await;
            phase("train", run, &mut t);
            ev.start_exchange(bin).await?;
            match trained {
                Ok(stdout) => match parse_trained_version(&stdout) {
                    Some(v) => {
                        if let Err(e) = ev.serve_models(Some(&v)).await {
                            run.notes
                                .push(format!("ev: serving the trained models failed: {e:#}"));
                        }
                        run.trained_version = Some(v);
                    }
                    None => run.notes.push(format!(
                        "ev: `pingpost train` printed no version: {stdout:?}"
                    )),
                },
                Err(e) => run.notes.push(format!(
                    "ev: `pingpost train` failed, the EV leg runs on cold-start rates: {e:#}"
                )),
            }
            // 3. The oracle serves the truth.
            let mut or = LegRig::new(Leg::Oracle, &world, &o.out).await?;
            or.write_config(&world, o, None)?;
            or.start_exchange(bin).await?;
            let served = async {
                or.import_model(bin, "truth-v1", &truth_v1).await?;
                or.serve_models(Some("truth-v1")).await
            }
            .await;
            if let Err(e) = served {
                run.notes.push(format!("oracle: serving the truth failed, the oracle leg runs on cold-start rates: {e:#}"));
            }
            oracle = Some(or);
        } else {
            run.notes.push("no learning piece: no training, no models; the EV leg keeps running on the cold-start rates and exploration, and there is no oracle leg".into());
        }
        price.start_exchange(bin).await?;
        legs.push(price);
        legs.push(ev);
        legs.extend(oracle);
    }

    // 4. Held-out days: the same leads on every leg, side by side.
    eprintln!(
        "market: held-out period, {} leads on {}",
        test.end - test.start,
        legs.iter()
            .map(|l| l.leg.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let drift = world.drift_at.filter(|d| test.contains(d));
    let results = futures_util::future::join_all(legs.iter_mut().map(|rig| {
        let oracle_drift = (rig.leg == Leg::Oracle)
            .then(|| drift.map(|d| (d, truth_v2.as_path())))
            .flatten();
        run_leads(rig, &world, test.clone(), dispositions, bin, oracle_drift)
    }))
    .await;
    phase("held_out", run, &mut t);
    for (rig, (outs, notes)) in legs.iter().zip(results) {
        run.notes.extend(notes);
        run.held_out.push((rig.leg, outs));
        if dispositions {
            run.disposition_errors.push((
                rig.leg,
                rig.driver.disposition_errors,
                rig.driver.first_disposition_error.clone(),
            ));
        }
    }
    for rig in legs {
        rig.shutdown().await;
    }
    Ok(())
}
