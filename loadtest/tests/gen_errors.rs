//! Failed requests and the percentiles, over real sockets on 127.0.0.1: a connect to a
//! stalled target (its listen backlog full, as under SIGSTOP) is a timeout in the
//! histogram at the time it gave up, a refused connect (nothing listening) is a
//! `connect` error outside it; a target that sheds load with fast 503s is said to under
//! the table, with its "added" row marked; a generator that queued for its connections
//! says so under its lag line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use loadtest::gen::{run, run_with, LoadPlan, Mix, RateSchedule, Sample, Target};
use loadtest::report::{
    print_table, Percentiles, ScenarioReport, TargetSummary, GENERATOR_LAG_NOTE_US,
};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One load run at a time on the shared cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SELLER_KEY: &str = "test-seller-key";
const TIMEOUT_MS: u64 = 300;

fn plan(rate_per_s: f64, measure_s: f64, connections: usize) -> LoadPlan {
    LoadPlan {
        schedule: RateSchedule::Constant { rate_per_s },
        warmup_s: 0.0,
        measure_s,
        count_max: 0,
        in_flight_max: 2_000,
        request_timeout_ms: TIMEOUT_MS,
        mix: Mix::PING,
        seed: 7,
        connections,
    }
}

fn exchange(addr: SocketAddr) -> Target {
    Target::Exchange {
        addr,
        seller_key: SELLER_KEY.to_string(),
        vertical: "auto_insurance".to_string(),
    }
}

/// A seller-API stand-in: answers every ping `no_bid` after `delay_ms`, except every
/// second one, which it sheds at once with a 503 when `shed` is set.
async fn start_server(shed: bool, delay_ms: u64) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _ = req.into_body().collect().await;
                        let (status, body) = if shed && n % 2 == 1 {
                            (
                                StatusCode::SERVICE_UNAVAILABLE,
                                r#"{"error":{"code":"overloaded","message":"shed"}}"#,
                            )
                        } else {
                            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                            (StatusCode::OK, r#"{"status":"no_bid","reason":"no_bids"}"#)
                        };
                        let mut resp = Response::new(Full::new(Bytes::from(body)));
                        *resp.status_mut() = status;
                        resp.headers_mut()
                            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn report(targets: Vec<TargetSummary>, added: Option<Percentiles>) -> ScenarioReport {
    ScenarioReport {
        // Not P1 or P2: these buyers bid on nothing, which there would be a collapse.
        scenario: "gen_errors".into(),
        date: "2026-12-07".into(),
        commit: "test".into(),
        machine: "test".into(),
        notes: Vec::new(),
        targets,
        added_latency_us: added,
        relay_added_latency_us: None,
        sweep: Vec::new(),
        knees: BTreeMap::new(),
        proc_samples: Vec::new(),
        extra: BTreeMap::new(),
        repetitions: Vec::new(),
    }
}

fn table(r: &ScenarioReport) -> String {
    let mut out = Vec::new();
    print_table(r, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

/// Black-box: with the exchange SIGSTOPped, the requests whose connect hung until the
/// connect timeout (the request timeout) were counted `connect` and left out of the
/// percentiles, beside the `timeout`s that were in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_a_stalled_target_is_a_timeout_in_the_percentiles() {
    let _serial = SERIAL.lock().await;
    // A listener that never accepts, its accept queue filled: the kernel drops every
    // further SYN, so a new connect hangs, as against a stopped process.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let mut stalled = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
            Ok(stream) => held.push(stream.unwrap()),
            Err(_) => {
                stalled = true;
                break;
            }
        }
    }
    assert!(
        stalled,
        "the accept queue never filled ({} connects)",
        held.len()
    );

    let samples = Mutex::new(Vec::new());
    let hook = |s: &Sample| samples.lock().unwrap().push(*s);
    let r = run_with(
        &plan(50.0, 0.2, 64),
        &exchange(addr),
        "stalled",
        None,
        Some(&hook),
    )
    .await
    .unwrap();
    assert_eq!(r.measured, 10);
    assert_eq!(
        r.errors,
        BTreeMap::from([("timeout".to_string(), 10)]),
        "a stalled connect is a timeout, not a refusal"
    );
    let p = Percentiles::of(&r.latency_us);
    assert_eq!(p.count, 10, "every stalled request is in the percentiles");
    for s in samples.into_inner().unwrap() {
        assert_eq!(s.error, Some("timeout"), "{s:?}");
        // Recorded at the time it gave up: the whole connect timeout.
        assert!(s.latency_us.unwrap() >= TIMEOUT_MS * 1_000, "{s:?}");
    }
    // The report has nothing to add: every failure is in the percentiles.
    let summary = TargetSummary::from_run(&r);
    let (firsts, posts) = summary.errors_not_in_percentiles();
    assert!(
        firsts.is_empty() && posts.is_empty(),
        "{firsts:?} {posts:?}"
    );
    let text = table(&report(vec![summary], None));
    assert!(!text.contains("not in its percentiles"), "{text}");
    drop(held);
}

/// A refused connection (the target is dead) fails at once: a `connect` error, outside
/// the percentiles, and said so under the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_stays_a_connect_error_outside_the_percentiles() {
    let _serial = SERIAL.lock().await;
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let r = run(&plan(50.0, 0.2, 64), &exchange(addr), "exchange", None)
        .await
        .unwrap();
    assert_eq!(r.measured, 10);
    assert_eq!(r.errors, BTreeMap::from([("connect".to_string(), 10)]));
    assert!(r.latency_us.is_empty());
    let summary = TargetSummary::from_run(&r);
    assert_eq!(summary.measured, 10);
    let text = table(&report(vec![summary], None));
    assert!(
        text.contains(
            "* exchange: 10 of 10 measured requests failed (connect=10) and are not in its percentiles: read its figures with them"
        ),
        "{text}"
    );
}

/// Black-box: an exchange shedding half its load with fast 503s showed its p99, and an
/// added p99, from the half it served, and only the errors column said otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_sheds_load_is_marked_under_the_table_and_on_its_added_row() {
    let _serial = SERIAL.lock().await;
    let (addr, server) = start_server(true, 0).await;
    let r = run(&plan(100.0, 0.4, 64), &exchange(addr), "exchange", None)
        .await
        .unwrap();
    server.abort();
    assert_eq!(r.measured, 40);
    assert_eq!(
        r.errors,
        BTreeMap::from([("overloaded_503".to_string(), 20)])
    );
    let shedding = TargetSummary::from_run(&r);
    assert_eq!(
        shedding.latency.count, 20,
        "the 503s are not in the percentiles"
    );
    let mut direct = shedding.clone();
    direct.label = "direct".into();
    direct.errors.clear();
    let added = shedding.latency.minus(&direct.latency);
    let text = table(&report(vec![direct.clone(), shedding.clone()], Some(added)));
    assert!(
        text.contains(
            "* exchange: 20 of 40 measured requests failed (overloaded_503=20) and are not in its percentiles: read its figures, and its added row (marked *), with them"
        ),
        "{text}"
    );
    let added_row = text
        .lines()
        .find(|l| l.starts_with("exchange added (vs direct)"))
        .unwrap();
    assert!(
        added_row.starts_with("exchange added (vs direct) * "),
        "{text}"
    );
    assert!(!text.contains("* direct:"), "{text}");
    // The note comes right under the table, before anything else.
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| *l == added_row).unwrap();
    assert!(lines[at + 1].starts_with("* exchange: "), "{text}");

    // A clean run: no mark, no note.
    let mut clean = direct.clone();
    clean.label = "exchange".into();
    let text = table(&report(vec![direct, clean], Some(added)));
    assert!(
        text.lines()
            .any(|l| l.starts_with("exchange added (vs direct) ") && !l.contains(" * ")),
        "{text}"
    );
    assert!(!text.contains("not in its percentiles"), "{text}");
}

/// Black-box: with `--connections 2` at 300/s the generator queued for seconds, and
/// nothing but the lag figures said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generator_that_queued_for_its_connections_says_so() {
    let _serial = SERIAL.lock().await;
    // One connection, a target that takes 20 ms: 50 answers a second at most, against
    // 100 planned; a timeout long enough for the queue to drain.
    let (addr, server) = start_server(false, 20).await;
    let p = LoadPlan {
        request_timeout_ms: 5_000,
        ..plan(100.0, 0.3, 1)
    };
    let r = run(&p, &exchange(addr), "exchange", None).await.unwrap();
    server.abort();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let summary = TargetSummary::from_run(&r);
    let lag = summary.send_lag.unwrap();
    assert!(lag.p99_us > GENERATOR_LAG_NOTE_US, "{lag:?}");
    let text = table(&report(vec![summary], None));
    let lag_line = text
        .lines()
        .position(|l| l.starts_with("generator lag exchange: "))
        .unwrap();
    let note = text.lines().nth(lag_line + 1).unwrap();
    assert!(
        note.starts_with("  the generator itself queued: exchange's requests waited up to ")
            && note.contains("size --connections above rate x latency"),
        "{text}"
    );
}
