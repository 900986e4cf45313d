//! The kill test (issue 9): the `pingpost` binary runs as a child process under
//! ping-and-post load, is killed with SIGKILL at random (seeded) points, restarted on the
//! same ledger directory, and the load goes on; at the end:
//!
//! - 0 acknowledged sales missing from the ledger;
//! - 0 duplicate sale ids (lead ids of `sale` records);
//! - 0 leads delivered twice, counted at the buyers by the lead's own marker (a retry of
//!   a post with the same `Idempotency-Key` after a restart must not deliver again);
//! - 0 cap over-delivery, counted at the buyers against their `caps.daily`.
//!
//! CI does a few kills; `PINGPOST_KILL_RUNS=20` (kills) and `PINGPOST_KILL_SEED=n` make a
//! longer or different run. The figures are printed (run with `--nocapture`).

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bidder_sdk::{
    spawn, BidReply, Bidder, PingMessage, PostMessage, PostReply, Secret, ServeOptions,
    ServerHandle,
};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use common::*;

/// Kills in CI (`PINGPOST_KILL_RUNS` overrides).
const KILLS_DEFAULT: u64 = 4;
/// Concurrent seller clients: half direct posts, half ping then post.
const CLIENTS: usize = 4;
/// Each buyer's daily cap is this many leads per run, so the caps fill up before the end
/// and are tested across restarts.
const CAP_PER_RUN: u32 = 4;
/// Answers between two kills: uniform in this range (seeded).
const ANSWERS_BETWEEN_KILLS: std::ops::RangeInclusive<u64> = 3..=30;
/// A request that gets no answer in this long is treated as lost (and retried).
const REQUEST_WAIT_MAX: Duration = Duration::from_secs(5);

/// A buyer that bids a fixed price, accepts every post after a short delay of its own
/// (so kills often land mid-delivery), and records the marker of every lead it receives.
struct CountingBuyer {
    price: bidder_sdk::Micros,
    received: Mutex<Vec<String>>,
}

impl Bidder for CountingBuyer {
    async fn ping(&self, _ping: PingMessage) -> BidReply {
        BidReply::Bid {
            bid: self.price,
            bid_id: None,
            expires_in_ms: None,
        }
    }

    async fn post(&self, post: PostMessage) -> PostReply {
        let marker = post
            .lead
            .get("first_name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        self.received.lock().unwrap().push(marker);
        // The buyer's own processing time, not a test wait.
        tokio::time::sleep(Duration::from_millis(3)).await;
        PostReply {
            accepted: true,
            buyer_lead_id: Some("crm".into()),
            reason: None,
        }
    }
}

/// A running child exchange.
struct Running {
    child: Child,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

/// Strips ANSI colour codes from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field_of(line: &str, name: &str) -> Option<String> {
    let rest = line.split(&format!("{name}=")).nth(1)?;
    Some(
        rest.trim_start_matches("Some(")
            .split([' ', ')'])
            .next()?
            .to_string(),
    )
}

async fn start_child(config: &std::path::Path, env: &BTreeMap<String, String>) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .arg("--config")
        .arg(config)
        .envs(env)
        .env("RUST_LOG", "pingpost=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let keep = lines.clone();
    // Drains the child's stdout for its whole life (a full pipe would stall it).
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let line = plain(&line);
            keep.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    let listening = tokio::time::timeout(EVENT_WAIT_MAX, async {
        loop {
            let line = rx.recv().await.expect("the binary exited before listening");
            if line.contains("pingpost listening") {
                return line;
            }
        }
    })
    .await
    .expect("the binary starts listening");
    let addr = field_of(&listening, "addr")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in {listening}"));
    Running { child, addr, lines }
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// One request; `None` when the exchange did not answer (killed).
async fn send(
    http: &Http,
    addr: SocketAddr,
    path: &str,
    key: Option<&str>,
    body: &[u8],
) -> Option<(u16, Value)> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header(header::AUTHORIZATION, format!("Bearer {SELLER_KEY}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let call = async {
        let resp = http.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.ok()?.to_bytes();
        Some((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    };
    tokio::time::timeout(REQUEST_WAIT_MAX, call).await.ok()?
}

/// A lead a client is selling, kept across kills until it has a final answer.
#[derive(Debug, Clone)]
struct Job {
    n: u64,
    direct: bool,
    /// The quote, once the ping has bid.
    ping_id: Option<String>,
}

impl Job {
    fn marker(&self) -> String {
        format!("Lead{}", self.n)
    }

    fn key(&self) -> String {
        format!("key-{}", self.n)
    }

    fn full_lead(&self) -> Value {
        let mut lead = full_lead("TX");
        lead["first_name"] = json!(self.marker());
        lead
    }
}

/// What the clients saw, shared.
#[derive(Debug, Default)]
struct Seen {
    /// Sold answers: lead id -> marker.
    sold: HashMap<String, String>,
    unsold: u64,
    /// Stored `500` answers of posts whose outcome a crash left unknown.
    unknown_answers: u64,
    /// Answers that should never come.
    unexpected: Vec<String>,
}

struct Shared {
    http: Http,
    next_lead: AtomicU64,
    answers: AtomicU64,
    seen: Mutex<Seen>,
}

enum Step {
    /// A final answer: the job is done.
    Done,
    /// The ping bid: post next.
    Quoted(String),
    /// No answer (the exchange died) or a refusal for now: try again.
    Retry,
}

async fn step(sh: &Shared, addr: SocketAddr, job: &Job) -> Step {
    let answer = |status: u16, v: &Value| -> Step {
        if status == 200 {
            match v["status"].as_str() {
                Some("sold") => {
                    let lead_id = v["lead_id"].as_str().unwrap_or("").to_string();
                    sh.seen.lock().unwrap().sold.insert(lead_id, job.marker());
                }
                _ => sh.seen.lock().unwrap().unsold += 1,
            }
            return Step::Done;
        }
        if status == 500 && v["error"]["code"] == "internal" {
            sh.seen.lock().unwrap().unknown_answers += 1;
            return Step::Done;
        }
        if status == 503 || status == 429 || status == 409 {
            return Step::Retry;
        }
        sh.seen
            .lock()
            .unwrap()
            .unexpected
            .push(format!("{status} {v}"));
        Step::Done
    };
    if job.direct {
        let body =
            serde_json::to_vec(&json!({"vertical": VERTICAL, "lead": job.full_lead()})).unwrap();
        return match send(&sh.http, addr, "/v1/leads", Some(&job.key()), &body).await {
            None => Step::Retry,
            Some((status, v)) => answer(status, &v),
        };
    }
    match &job.ping_id {
        None => {
            let body = serde_json::to_vec(&ping_body("TX")).unwrap();
            match send(&sh.http, addr, "/v1/ping", None, &body).await {
                None => Step::Retry,
                Some((200, v)) if v["status"] == "bid" => {
                    Step::Quoted(v["ping_id"].as_str().unwrap_or("").to_string())
                }
                Some((200, _)) => {
                    sh.seen.lock().unwrap().unsold += 1;
                    Step::Done
                }
                Some((status, v)) => answer(status, &v),
            }
        }
        Some(ping_id) => {
            let body = serde_json::to_vec(&json!({
                "ping_id": ping_id, "lead": job.full_lead(), "consent": {"jornaya_leadid": "LL-1"}
            }))
            .unwrap();
            match send(&sh.http, addr, "/v1/post", Some(&job.key()), &body).await {
                None => Step::Retry,
                // The quote died with the process that made it: nothing was delivered.
                Some((404, _)) => Step::Done,
                Some((status, v)) => answer(status, &v),
            }
        }
    }
}

/// One client until `stop` (or, with `stop_after`, until that many answers in all): its
/// pending job first, then new ones. Returns the job it has no final answer for.
async fn client(
    sh: Arc<Shared>,
    addr: SocketAddr,
    direct: bool,
    mut pending: Option<Job>,
    stop: Arc<AtomicBool>,
    stop_after: Option<u64>,
) -> Option<Job> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return pending;
        }
        let mut job = pending.take().unwrap_or_else(|| Job {
            n: sh.next_lead.fetch_add(1, Ordering::SeqCst),
            direct,
            ping_id: None,
        });
        match step(&sh, addr, &job).await {
            Step::Done => {
                let n = sh.answers.fetch_add(1, Ordering::SeqCst) + 1;
                if stop_after.is_some_and(|max| n >= max) {
                    return None;
                }
            }
            Step::Quoted(ping_id) => {
                job.ping_id = Some(ping_id);
                pending = Some(job);
            }
            Step::Retry => {
                pending = Some(job);
                tokio::task::yield_now().await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_sale_and_never_over_delivers() {
    let kills: u64 = std::env::var("PINGPOST_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KILLS_DEFAULT);
    let seed: u64 = std::env::var("PINGPOST_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cap = CAP_PER_RUN * (kills as u32 + 1);

    // Buyers in a zone whose local noon is now, so no local midnight falls in the run
    // and one `caps.daily` bounds everything a buyer receives.
    let hour: i32 = chrono::Utc::now().format("%H").to_string().parse().unwrap();
    let zone = match 12 - hour {
        0 => "Etc/GMT".to_string(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    };
    let mut buyers = Vec::new();
    let mut handles: Vec<ServerHandle> = Vec::new();
    let mut cfg = TestConfig::new();
    for (id, price) in [("a", 30.0), ("b", 20.0), ("c", 10.0)] {
        let b = Arc::new(CountingBuyer {
            price: usd(price),
            received: Mutex::new(Vec::new()),
        });
        let probe = TestBuyer::new(id, SocketAddr::from(([127, 0, 0, 1], 0)));
        let (addr, handle) = spawn(
            b.clone(),
            ServeOptions::new(Secret::new(&probe.secret).unwrap()),
        )
        .await
        .unwrap();
        handles.push(handle);
        cfg = cfg.buyer(
            TestBuyer { addr, ..probe }
                .caps_daily(cap)
                .post_timeout_ms(5_000)
                .ping_timeout_ms(1_000),
        );
        buyers.push((id, b));
    }
    let cfg = cfg.with(|c| c.auction_deadline_ms = 1_500);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let config = dir.path().join("config.toml");
    let text = cfg.toml(&ledger).replace(
        "\nstates_include",
        &format!("\ntimezone = \"{zone}\"\nstates_include"),
    );
    std::fs::write(&config, text).unwrap();
    let env = cfg.env_vars();

    let sh = Arc::new(Shared {
        http: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http(),
        next_lead: AtomicU64::new(0),
        answers: AtomicU64::new(0),
        seen: Mutex::new(Seen::default()),
    });
    let mut pending: Vec<Option<Job>> = vec![None; CLIENTS];
    let mut last_log = Vec::new();
    let mut unknown_at_start = 0u64;
    for run in 0..=kills {
        let mut child = start_child(&config, &env).await;
        if let Some(n) = child
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("ledger replayed"))
            .and_then(|l| field_of(l, "unknown_outcomes"))
        {
            unknown_at_start = n.parse().unwrap_or(0);
        }
        let last = run == kills;
        let stop = Arc::new(AtomicBool::new(false));
        let target = sh.answers.load(Ordering::SeqCst) + rng.gen_range(ANSWERS_BETWEEN_KILLS);
        let tasks: Vec<_> = pending
            .drain(..)
            .enumerate()
            .map(|(i, p)| {
                tokio::spawn(client(
                    sh.clone(),
                    child.addr,
                    i % 2 == 0,
                    p,
                    stop.clone(),
                    last.then_some(target),
                ))
            })
            .collect();
        if !last {
            // Kill once the load has moved on by `target` answers: the other clients are
            // mid-request somewhere (auction, delivery, fsync) at that point.
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tokio::time::timeout(Duration::from_secs(60), async {
                while sh.answers.load(Ordering::SeqCst) < target {
                    tick.tick().await;
                }
            })
            .await
            .expect("the load goes on");
            stop.store(true, Ordering::SeqCst);
            child.child.kill().expect("SIGKILL");
            child.child.wait().unwrap();
        }
        for t in tasks {
            pending.push(t.await.unwrap());
        }
        if last {
            // A clean stop; then the ledger must verify.
            let pid = child.child.id().to_string();
            assert!(Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
            child.child.wait().unwrap();
            last_log = child.lines.lock().unwrap().clone();
        }
    }
    assert!(
        last_log.iter().any(|l| l.contains("shutting down")),
        "the last exchange stopped cleanly"
    );

    // The ledger verifies, and lists the deliveries with no outcome.
    let out = Command::new(env!("CARGO_BIN_EXE_pingpost"))
        .args(["ledger", "verify", "--dir"])
        .arg(&ledger)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "verify: {report}");
    assert!(report.contains("delivered, outcome unknown"), "{report}");

    let records: Vec<Value> = pingpost::ledger::segments::read_all(&ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sale_ids: Vec<&str> = records
        .iter()
        .filter(|r| r["type"] == "sale")
        .map(|r| r["lead_id"].as_str().unwrap())
        .collect();
    let sale_set: HashSet<&str> = sale_ids.iter().copied().collect();
    let seen = sh.seen.lock().unwrap();
    let lost: Vec<&String> = seen
        .sold
        .keys()
        .filter(|id| !sale_set.contains(id.as_str()))
        .collect();
    let duplicated_sales = sale_ids.len() - sale_set.len();
    let mut delivered: HashMap<String, u32> = HashMap::new();
    let mut over = 0u32;
    let mut per_buyer = Vec::new();
    for (id, b) in &buyers {
        let got = b.received.lock().unwrap();
        per_buyer.push(format!("{id}={}", got.len()));
        over += (got.len() as u32).saturating_sub(cap);
        for m in got.iter() {
            *delivered.entry(m.clone()).or_default() += 1;
        }
    }
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "kill test: seed {seed}, runs {}, kills {kills}, leads {}, sales acknowledged {}, \
         sales in the ledger {}, lost {}, duplicated sale ids {duplicated_sales}, leads \
         delivered twice {}, over-delivered {over} (cap {cap} per buyer; received {}), \
         unsold {}, outcome-unknown answers {}, deliveries with no outcome at the last \
         start {unknown_at_start}",
        kills + 1,
        sh.next_lead.load(Ordering::SeqCst),
        seen.sold.len(),
        sale_set.len(),
        lost.len(),
        twice.len(),
        per_buyer.join(" "),
        seen.unsold,
        seen.unknown_answers,
    );
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    assert!(lost.is_empty(), "acknowledged sales missing: {lost:?}");
    assert_eq!(duplicated_sales, 0, "duplicate sale ids");
    assert!(twice.is_empty(), "leads delivered twice: {twice:?}");
    assert_eq!(over, 0, "cap over-delivery");
    assert!(!seen.sold.is_empty(), "the load sold something");
    drop(handles);
}
