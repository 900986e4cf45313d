use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use proto::ErrorCode;
use tokio::io::AsyncWrite;

use super::*;
use super::{
    counted::{bare_answer_replacement, Counted, FrameScan, InScan},
    gate::{eviction_grace, ConnectionGate, Listed},
    service::{check_head_limits, Activity},
};

/// A writer that takes at most `step` bytes per call and is not ready every other call.
struct Trickle {
    out: Vec<u8>,
    step: usize,
    ready: bool,
}

impl AsyncWrite for Trickle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.ready = !this.ready;
        if !this.ready {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(this.step);
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn counted(step: usize) -> Counted<Trickle> {
    Counted {
        inner: Trickle {
            out: Vec::new(),
            step,
            ready: false,
        },
        activity: Arc::new(Activity::default()),
        limits: Arc::new(Limits::default()),
        on_refused: None,
        replacing: None,
        frames: Default::default(),
        frames_in: Default::default(),
        head_request: false,
        tls_hello: false,
    }
}

/// Writes `buf` whole, as hyper does (again after `Pending` or a short write), and
/// returns what reached the wire.
async fn write_like_hyper(c: &mut Counted<Trickle>, buf: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    c.write_all(buf).await.expect("write");
    std::mem::take(&mut c.inner.out)
}

const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 20:00:21 GMT\r\n\r\n";

#[tokio::test]
async fn hypers_bare_answers_get_the_json_body_even_through_short_writes() {
    for step in [1, 7, 4096] {
        let mut c = counted(step);
        let wire = write_like_hyper(&mut c, BARE_400).await;
        let text = String::from_utf8(wire).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{text:?}");
        assert!(
            head.contains("\r\ndate: Tue, 01 Dec 2026 20:00:21 GMT"),
            "{text:?}"
        );
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{text:?}"
        );
        assert!(
            head.ends_with(&format!("content-length: {}", body.len())),
            "{text:?}"
        );
        assert!(!head.contains("content-length: 0"), "{text:?}");
        assert!(
            body.starts_with(r#"{"error":{"code":"invalid_request""#),
            "{body}"
        );
        // The next write on the connection goes through untouched.
        assert_eq!(write_like_hyper(&mut c, b"more").await, b"more");
    }
    for status in ["414 URI Too Long", "431 Request Header Fields Too Large"] {
        let head = format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        let (wire, counted_as_refused) =
            bare_answer_replacement(head.as_bytes(), &Limits::default(), false, false).unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"{"error":{"code":"headers_too_large""#),
            "{text}"
        );
        assert!(counted_as_refused);
        // Each says which limit it is (black-box round 218c: a long target was told as a
        // head over header_bytes_max).
        let says_target =
            text.contains("the request target (path and query) is longer than 65534 bytes");
        assert_eq!(says_target, status.starts_with("414"), "{text}");
        assert_eq!(
            !says_target,
            text.contains("the request head is over"),
            "{text}"
        );
    }
}

#[test]
fn a_request_without_a_path_is_refused() {
    let req = Request::builder()
        .method("CONNECT")
        .uri("example.com:443")
        .body(())
        .unwrap();
    assert_eq!(req.uri().path(), "");
    let e = check_head_limits(&req, &Limits::default()).expect("refused");
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    let ok = Request::get("/healthz").body(()).unwrap();
    assert!(check_head_limits(&ok, &Limits::default()).is_none());
}

/// An answer hyper writes as HTTP/1.0 has no `connection` field: the replacement says
/// `close` anyway, once.
#[test]
fn a_replacement_always_says_connection_close_once() {
    for head in [
        "HTTP/1.0 400 Bad Request\r\ndate: x\r\ncontent-length: 0\r\n\r\n",
        "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
    ] {
        let (wire, _) =
            bare_answer_replacement(head.as_bytes(), &Limits::default(), false, false).unwrap();
        let text = String::from_utf8(wire).unwrap();
        assert_eq!(text.matches("connection: close\r\n").count(), 1, "{text}");
        assert!(text.starts_with(&head[..9]), "{text}");
    }
}

#[tokio::test]
async fn the_services_own_answers_are_never_rewritten() {
    let kept: [&[u8]; 6] = [
        // A service's error: it has a content type.
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
        // A head with a body to come.
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
        // Other statuses.
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        // Not a whole head, or a head and more.
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    ];
    for head in kept {
        assert!(
            bare_answer_replacement(head, &Limits::default(), false, false).is_none(),
            "{head:?}"
        );
        let mut c = counted(5);
        assert_eq!(write_like_hyper(&mut c, head).await, head);
    }
    // Over HTTP/2 nothing is looked at.
    let mut c = counted(4096);
    c.activity.h2.store(true, Ordering::Relaxed);
    assert_eq!(write_like_hyper(&mut c, BARE_400).await, BARE_400);
}

#[test]
fn head_limits() {
    let limits = Limits {
        header_bytes_max: 200,
        headers_max: 3,
        ..Limits::default()
    };
    let ok = Request::builder()
        .uri("/ping")
        .header("a", "1")
        .body(())
        .unwrap();
    assert!(check_head_limits(&ok, &limits).is_none());
    let many = Request::builder()
        .uri("/ping")
        .header("a", "1")
        .header("a", "2")
        .header("b", "3")
        .header("c", "4")
        .body(())
        .unwrap();
    let e = check_head_limits(&many, &limits).unwrap();
    assert_eq!(e.code, ErrorCode::HeadersTooLarge);
    assert_eq!(e.status(), 431);
    let big = Request::builder()
        .uri("/ping")
        .header("a", "x".repeat(200))
        .body(())
        .unwrap();
    assert!(check_head_limits(&big, &limits).is_some());
    assert!(hard_head_bytes(&limits) > 100 * 1024);
    assert!(hard_header_count(&limits) >= 100);
}

#[test]
fn the_oldest_connection_without_a_head_past_its_grace_is_evicted() {
    let gate = ConnectionGate::new(&Limits::default());
    let grace = Duration::from_millis(1_000);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let conn = |accepted_ms: u64| Arc::new(Activity::new(at(accepted_ms)));
    // Accepted in this order: one busy with a request, two silent ones, a young one.
    let busy = conn(0);
    busy.started.store(1, Ordering::Relaxed);
    let silent_a = conn(100);
    let silent_b = conn(200);
    let young = conn(1_500);
    let mut listed: Vec<Option<Listed>> = [&busy, &silent_a, &silent_b, &young]
        .iter()
        .map(|a| Some(gate.register(a)))
        .collect();
    let evicted = |a: &Arc<Activity>| a.evicted.load(Ordering::Acquire);
    // Nobody past the grace yet: the oldest silent one is 1,000 ms old at 1,100.
    assert!(!gate.evict_one(at(1_099), grace));
    assert!(!evicted(&silent_a));
    // A busy connection is never taken, however old; the oldest silent one is.
    assert!(gate.evict_one(at(1_100), grace));
    assert!(evicted(&silent_a) && !evicted(&busy) && !evicted(&silent_b));
    // One at a time: none more until the evicted one has ended.
    assert!(!gate.evict_one(at(1_300), grace));
    listed[1] = None;
    assert!(gate.evict_one(at(1_300), grace));
    assert!(evicted(&silent_b));
    listed[2] = None;
    // A head that arrived and was answered: no head-less one is left, so the
    // longest-idle served connection is next (black-box round 78b), once idle for the
    // grace; a busy one never.
    young.started.store(1, Ordering::Relaxed);
    young.finished.store(1, Ordering::Relaxed);
    young.finished_at_us.store(500_000, Ordering::Release); // idle since 2,000
    assert!(!gate.evict_one(at(2_999), grace));
    assert!(gate.evict_one(at(3_000), grace));
    assert!(evicted(&young) && !evicted(&busy));
    listed[3] = None;
    assert!(!gate.evict_one(at(60_000), grace), "busy: never");
    assert!(!evicted(&busy));
    // A connection whose next HTTP/1.1 head is arriving is not idle; it goes as one
    // without a head once that head has been arriving for the grace (black-box round
    // 213a: never, before, so a first byte sent after each answer kept every slot).
    busy.finished.store(1, Ordering::Relaxed);
    busy.bytes_in.store(10, Ordering::Relaxed);
    busy.head_started_at_us.store(59_500_000, Ordering::Release);
    assert!(!gate.evict_one(at(60_000), grace));
    assert!(!evicted(&busy));
    assert!(gate.evict_one(at(60_500), grace));
    assert!(evicted(&busy));
    drop(listed);
    assert!(gate.live().is_empty(), "ended connections leave the list");
    let head = |ms| Limits {
        header_read_timeout_ms: ms,
        ..Limits::default()
    };
    assert_eq!(eviction_grace(&head(5_000)), Duration::from_millis(1_250));
    assert_eq!(eviction_grace(&head(2)), Duration::from_millis(1));
}

/// Black-box round 149a: connections each sending a request body a byte at a time held
/// every slot, and a new connection waited for the 5 s body budget. With no head-less
/// connection to take, the one whose body has been arriving the longest past the grace is
/// evicted, then an idle one; a request whose body was read (its service at work) never
/// is.
#[test]
fn a_request_body_arriving_past_the_grace_is_evicted_before_an_idle_connection() {
    let gate = ConnectionGate::new(&Limits::default());
    let grace = Duration::from_millis(1_000);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let conn = || Arc::new(Activity::new(t0));
    let in_flight = |a: &Arc<Activity>, body_since_ms: Option<u64>| {
        a.started.store(1, Ordering::Relaxed);
        let since = body_since_ms.map_or(0, |ms| ms * 1_000 + 1);
        a.body_since_us.store(since, Ordering::Release);
    };
    let working = conn();
    in_flight(&working, None);
    let slow_old = conn();
    in_flight(&slow_old, Some(100));
    let slow_young = conn();
    in_flight(&slow_young, Some(900));
    let idle = conn();
    idle.started.store(1, Ordering::Relaxed);
    idle.finished.store(1, Ordering::Relaxed);
    idle.finished_at_us.store(50_000, Ordering::Release);
    let mut listed: Vec<Option<Listed>> = [&working, &slow_old, &slow_young, &idle]
        .iter()
        .map(|a| Some(gate.register(a)))
        .collect();
    let evicted = |a: &Arc<Activity>| a.evicted.load(Ordering::Acquire);
    // The body arriving the longest goes first, once past the grace, before an idle
    // served connection (black-box round 151a: the idle one, a buyer's pooled connection
    // from the exchange, went first and its next request waited behind the flood).
    assert!(gate.evict_one(at(1_100), grace));
    assert!(evicted(&slow_old) && !evicted(&idle) && !evicted(&slow_young));
    listed[1] = None;
    // Then, with no other body past the grace, the idle one.
    assert!(gate.evict_one(at(1_100), grace));
    assert!(evicted(&idle) && !evicted(&slow_young) && !evicted(&working));
    listed[3] = None;
    // A body read to its end (its marker cleared) is a request at work: never taken.
    slow_young.body_since_us.store(0, Ordering::Release);
    assert!(!gate.evict_one(at(60_000), grace));
    assert!(!evicted(&working) && !evicted(&slow_young));
    // A body that is still arriving when its request has ended is no request in flight.
    in_flight(&slow_young, Some(900));
    slow_young.finished.store(1, Ordering::Relaxed);
    slow_young
        .finished_at_us
        .store(59_000_000, Ordering::Release);
    assert!(
        gate.evict_one(at(60_000), grace),
        "idle since 59 s: taken as idle"
    );
    drop(listed);
    // Over HTTP/2 (black-box round 150a): a connection whose requests in flight are all
    // still receiving their bodies, since the grace; not one with a request at work.
    let gate = ConnectionGate::new(&Limits::default());
    let h2 = conn();
    h2.h2.store(true, Ordering::Relaxed);
    h2.started.store(2, Ordering::Relaxed);
    h2.bodies_pending.store(1, Ordering::Relaxed);
    h2.body_since_us.store(100_001, Ordering::Release);
    let _listed = gate.register(&h2);
    assert!(
        !gate.evict_one(at(5_000), grace),
        "one of its two requests is at work"
    );
    h2.bodies_pending.store(2, Ordering::Relaxed);
    assert!(!gate.evict_one(at(1_099), grace));
    assert!(gate.evict_one(at(1_100), grace));
    assert!(evicted(&h2));
}

/// Black-box round 211c: flood sockets that each sent a byte were evicted once past the
/// grace and came straight back, so there was hardly ever one past it, and a seller's
/// kept-alive connection, idle for the grace, was evicted instead (its next request
/// waited in the backlog behind the flood). While a connection without a head is listed,
/// however young, an idle served one is taken only once idle for the head budget (four
/// graces); the young head-less one is, at its grace. Round 212a: not taking idle ones
/// at all let idle kept-alive connections hold their slots as long as one young
/// head-less socket was there.
#[test]
fn an_idle_connection_is_kept_for_the_head_budget_while_one_without_a_head_is_young() {
    let gate = ConnectionGate::new(&Limits::default());
    let grace = Duration::from_millis(1_000);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let evicted = |a: &Arc<Activity>| a.evicted.load(Ordering::Acquire);
    // A seller's kept-alive connection, idle since 2,000 ms; a flood socket accepted at
    // 5,000 ms that has sent a byte but no head.
    let seller = Arc::new(Activity::new(t0));
    seller.started.store(1, Ordering::Relaxed);
    seller.finished.store(1, Ordering::Relaxed);
    seller.finished_at_us.store(2_000_000, Ordering::Release);
    let flood = Arc::new(Activity::new(at(5_000)));
    flood.bytes_in.store(1, Ordering::Relaxed);
    let listed_seller = gate.register(&seller);
    let listed_flood = gate.register(&flood);
    // Idle for 3,999 ms, under the head budget: kept; the flood is not past its grace.
    assert!(
        !gate.evict_one(at(5_999), grace),
        "wait for the flood's grace"
    );
    assert!(!evicted(&seller));
    assert!(gate.evict_one(at(6_000), grace));
    assert!(evicted(&flood) && !evicted(&seller));
    drop(listed_flood);
    // Another young flood socket; the seller now idle for 4,100 ms, the head budget: taken.
    let flood = Arc::new(Activity::new(at(6_050)));
    let listed_flood = gate.register(&flood);
    assert!(gate.evict_one(at(6_100), grace));
    assert!(evicted(&seller) && !evicted(&flood));
    drop((listed_seller, listed_flood));
}

/// A served connection, idle since `idle_since_ms` (from `t0`).
fn idle_conn(t0: Instant, idle_since_ms: u64) -> Arc<Activity> {
    let a = Arc::new(Activity::new(t0));
    a.started.store(1, Ordering::Relaxed);
    a.finished.store(1, Ordering::Relaxed);
    a.bytes_in.store(100, Ordering::Relaxed);
    a.bytes_at_finish.store(100, Ordering::Relaxed);
    a.finished_at_us
        .store(idle_since_ms * 1_000, Ordering::Release);
    a
}

/// Black-box round 214a: during a flood of kept-alive HTTP/1.1 connections each sending
/// the first byte of its next head at once after an answer (each evicted at its grace), a
/// seller's connection idle for 2 s was closed whenever none of them was past its grace:
/// a later head still inside its grace did not count as a young head-less connection.
#[test]
fn a_young_later_head_keeps_an_idle_connection_as_a_young_headless_one_does() {
    let gate = ConnectionGate::new(&Limits::default());
    let grace = Duration::from_millis(1_000);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let evicted = |a: &Arc<Activity>| a.evicted.load(Ordering::Acquire);
    let seller = idle_conn(t0, 1_000);
    // A flood connection answered at 2,500 ms whose next head began at once.
    let flood = idle_conn(t0, 2_500);
    flood.bytes_in.store(101, Ordering::Relaxed);
    flood.head_started_at_us.store(2_500_000, Ordering::Release);
    let _listed = (gate.register(&seller), gate.register(&flood));
    // At 3,000 the seller has been idle 2 s, past its grace; the later head is young.
    assert!(!gate.evict_one(at(3_000), grace));
    assert!(!evicted(&seller) && !evicted(&flood));
    // The later head past its grace goes, as one without a head.
    assert!(gate.evict_one(at(3_500), grace));
    assert!(evicted(&flood) && !evicted(&seller));
}

#[test]
fn per_ip_slots_are_counted_and_released() {
    let limits = Limits {
        connections_per_ip_max: 2,
        connections_per_ip_exempt_loopback: false,
        ..Limits::default()
    };
    let gate = ConnectionGate::new(&limits);
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let a = gate.admit(ip).unwrap();
    let b = gate.admit(ip).unwrap();
    assert!(gate.admit(ip).is_none());
    assert_eq!(gate.refused_per_ip(), 1);
    // The same client through an IPv6 socket.
    assert!(gate.admit("::ffff:10.0.0.1".parse().unwrap()).is_none());
    assert!(gate.admit("10.0.0.2".parse().unwrap()).is_some());
    drop(a);
    assert_eq!(gate.held_by(ip), 1);
    let _c = gate.admit(ip).unwrap();
    drop(b);
    let exempt = ConnectionGate::new(&Limits {
        connections_per_ip_max: 1,
        ..Limits::default()
    });
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let _x = exempt.admit(loopback).unwrap();
    assert!(exempt.admit(loopback).is_some());
    // Loopback through a dual-stack socket is exempt too, and so is IPv6 loopback.
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    let _y = exempt.admit(mapped).unwrap();
    assert!(exempt.admit(mapped).is_some());
    let v6: IpAddr = "::1".parse().unwrap();
    let _z = exempt.admit(v6).unwrap();
    assert!(exempt.admit(v6).is_some());
    assert_eq!(exempt.refused_per_ip(), 0);
}

/// An HTTP/2 frame: its 9-byte head and `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn the_read_scan_counts_only_body_data() {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const WINDOW_UPDATE: u8 = 8;
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(SETTINGS, 0, 0, &[0; 6]));
    wire.extend(frame(HEADERS, 4, 1, &[0x83; 20]));
    wire.extend(frame(PING, 0, 0, &[7; 8]));
    wire.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]));
    wire.extend(frame(DATA, 0, 1, &[])); // empty: no body byte
    wire.extend(frame(DATA, 0, 1, b"hello")); // 5
                                              // Padded: a pad length of 3, then 4 data bytes and the 3 of padding.
    wire.extend(frame(DATA, 0x8, 1, &[3, b'w', b'o', b'r', b'l', 0, 0, 0]));
    // Padding only (pad length 6 in a payload of 7): no body byte.
    wire.extend(frame(DATA, 0x8, 1, &[6, 0, 0, 0, 0, 0, 0]));
    wire.extend(frame(PING, 1, 0, &[7; 8]));
    // The same count whatever the reads' sizes (a frame head or the preface split).
    for step in [1, 2, 5, 9, 24, 1000] {
        let mut scan = InScan::default();
        let counted: usize = wire.chunks(step).map(|c| scan.body_bytes(c)).sum();
        assert_eq!(counted, 9, "reads of {step}");
    }
    // Pings alone, after the preface: nothing.
    let mut scan = InScan::default();
    let mut pings = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    for _ in 0..10 {
        pings.extend(frame(PING, 0, 0, &[1; 8]));
    }
    assert_eq!(scan.body_bytes(&pings), 0);
    // The streams whose body is still coming that brought some of it, within
    // BODIES_STALL (round 116a); a stream ended or reset, by either side, is none of
    // them, nor counts its data (round 117a).
    const RST_STREAM: u8 = 3;
    let mut scan = InScan::default();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    for stream in [1, 3, 5, 7, 9, 11] {
        wire.extend(frame(HEADERS, 4, stream, &[0x83]));
    }
    for stream in [1, 3, 5, 3] {
        wire.extend(frame(DATA, 0, stream, b"x"));
    }
    wire.extend(frame(DATA, 0, 7, &[])); // no byte: not heard
    wire.extend(frame(DATA, 1, 9, b"yz")); // its last bytes: counted, then not waited for
    wire.extend(frame(RST_STREAM, 0, 11, &[0, 0, 0, 8])); // reset by the client
    wire.extend(frame(DATA, 0, 11, b"late")); // after its reset: not a body's
    wire.extend(frame(DATA, 0, 13, b"never opened"));
    assert_eq!(scan.body_bytes_at(&wire, 1_000_000), 6);
    assert_eq!(scan.streams_heard(1_000_000), 3);
    assert_eq!(scan.streams_heard(1_000_000 + 999_999), 3);
    assert_eq!(scan.streams_heard(1_000_000 + 1_000_001), 0);
    // Reset by the server (the RST_STREAM it writes): no longer heard, its bytes none.
    scan.closed(5);
    assert_eq!(scan.streams_heard(1_000_000), 2);
    assert_eq!(
        scan.body_bytes_at(&frame(DATA, 0, 5, b"more"), 1_000_001),
        0
    );
    // HTTP/1.x: every byte counts, the first read split inside the method too.
    let h1 = b"POST /ping HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut scan = InScan::default();
    assert_eq!(
        scan.body_bytes(&h1[..1]) + scan.body_bytes(&h1[1..]),
        h1.len()
    );
}

/// Black-box round 118a: after the server's GOAWAY (a 404's graceful close), the client
/// opened new streams, which the server does not serve, and sent a byte on each: they
/// passed for the pending bodies' progress. The frame scan of what the server writes
/// reads the GOAWAY's last stream id, and streams above it are no body's.
#[test]
fn streams_above_the_servers_goaway_are_no_bodies() {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    let mut written = frame(SETTINGS, 0, 0, &[]);
    written.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]));
    written.extend(frame(GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    // (The first write decides HTTP/2: hyper writes whole frames.)
    for step in [4, 5, 9, 1000] {
        let mut scan = FrameScan::default();
        for chunk in written.chunks(step) {
            scan.ended(chunk);
        }
        assert_eq!(scan.goaway_last, Some(3), "writes of {step}");
        assert!(!scan.goaway_error, "NO_ERROR: a graceful close");
    }
    // Round 223c: a GOAWAY with an error code (ENHANCE_YOUR_CALM, 11: h2's rapid reset
    // guard) is a protocol error's, however the writes split it; a short one is not.
    let mut calm = frame(SETTINGS, 0, 0, &[]);
    calm.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 9, 0, 0, 0, 11]));
    for step in [4, 9, 11, 13, 1000] {
        let mut scan = FrameScan::default();
        for chunk in calm.chunks(step) {
            scan.ended(chunk);
        }
        assert_eq!(scan.goaway_last, Some(9), "writes of {step}");
        assert!(scan.goaway_error, "writes of {step}");
    }
    let mut short = frame(SETTINGS, 0, 0, &[]);
    short.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 9]));
    short.extend(frame(SETTINGS, 0, 0, &[0, 0, 0, 11]));
    let mut scan = FrameScan::default();
    scan.ended(&short);
    assert_eq!(scan.goaway_last, Some(9));
    assert!(!scan.goaway_error, "the next frame is not the error code");
    let mut scan = InScan::default();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(HEADERS, 4, 1, &[0x83]));
    wire.extend(frame(HEADERS, 4, 3, &[0x83]));
    assert_eq!(scan.body_bytes_at(&wire, 10), 0);
    scan.going_away(3);
    let mut more = frame(HEADERS, 4, 5, &[0x83]);
    more.extend(frame(DATA, 0, 5, b"x")); // above the GOAWAY: not served
    more.extend(frame(DATA, 0, 1, b"y")); // a pending body's byte
    assert_eq!(scan.body_bytes_at(&more, 20), 1);
    assert_eq!(scan.streams_heard(20), 1);
}

/// Black-box round 143b: SETTINGS frames of thousands of settings, or any control frame,
/// sent without pause kept a worker busy. A client has an allowance of control frames:
/// a burst, more per stream it opens and per second it has been connected; past it, a
/// flood.
#[test]
fn control_frames_past_the_allowance_are_a_flood() {
    use super::counted::{
        CONTROL_FRAMES_BURST, CONTROL_FRAMES_PER_SECOND, CONTROL_FRAMES_PER_STREAM,
    };
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const WINDOW_UPDATE: u8 = 8;
    const DATA: u8 = 0;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // One SETTINGS frame of 2,730 settings is over the burst on its own.
    let mut scan = InScan::default();
    let mut wire = preface.clone();
    wire.extend(frame(SETTINGS, 0, 0, &[0; 6 * 2_730]));
    scan.body_bytes_at(&wire, 0);
    assert!(scan.control_over_streams() && scan.control_flood(0));
    // The burst exactly: not a flood; one more PING is.
    let mut scan = InScan::default();
    let mut wire = preface.clone();
    for _ in 0..CONTROL_FRAMES_BURST {
        wire.extend(frame(PING, 0, 0, &[1; 8]));
    }
    scan.body_bytes_at(&wire, 0);
    assert!(!scan.control_over_streams() && !scan.control_flood(0));
    scan.body_bytes_at(&frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]), 0);
    assert!(scan.control_flood(0));
    // ... unless the connection has been open long enough: a second's allowance.
    assert!(!scan.control_flood(1_000_000));
    // Streams opened add to it; trailers, DATA and a stream id not above the last do not.
    let mut scan = InScan::default();
    let mut wire = preface.clone();
    for stream in [1u32, 3, 5] {
        wire.extend(frame(HEADERS, 4, stream, &[0x83]));
        wire.extend(frame(DATA, 0, stream, b"x"));
        wire.extend(frame(HEADERS, 5, stream, &[0x83])); // trailers
    }
    wire.extend(frame(HEADERS, 5, 3, &[0x83]));
    let allowance = CONTROL_FRAMES_BURST + 3 * CONTROL_FRAMES_PER_STREAM;
    for _ in 0..allowance {
        wire.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 1, 0]));
    }
    // Split anywhere, the same count.
    for c in wire.chunks(7) {
        scan.body_bytes_at(c, 0);
    }
    assert!(!scan.control_flood(0));
    scan.body_bytes_at(&frame(PING, 0, 0, &[1; 8]), 0);
    assert!(scan.control_flood(0));
    assert!(!scan.control_flood(1_000_000));
    // A second holds CONTROL_FRAMES_PER_SECOND of them, no more.
    for _ in 0..CONTROL_FRAMES_PER_SECOND {
        scan.body_bytes_at(&frame(PING, 0, 0, &[1; 8]), 0);
    }
    assert!(scan.control_flood(1_000_000) && !scan.control_flood(2_000_000));
}

/// RFC 9112 3.2: one Host, a host and an optional port (black-box round 11: `a b`,
/// `a/b`, `a@b`, `[::1` and `a:99999` were served).
#[test]
fn an_http11_host_is_one_host_and_port() {
    let req = |hosts: &[&str], version| {
        let mut r = http::Request::builder().version(version).uri("/v1/ping");
        for h in hosts {
            r = r.header(http::header::HOST, *h);
        }
        r.body(()).expect("a request")
    };
    let v11 = http::Version::HTTP_11;
    for ok in [
        "pingpost",
        "127.0.0.1:8080",
        "[::1]:8080",
        "[::1]",
        "a.b-c",
        "",
    ] {
        assert!(host_problem(&req(&[ok], v11)).is_none(), "{ok:?}");
    }
    // Round 134a: a signed port and a bracketed host that is no IPv6 address.
    for bad in [
        "a b",
        "a/b",
        "a@b",
        "[::1",
        "a:99999",
        ":80",
        "a:+80",
        "127.0.0.1:+80",
        "[zz]:80",
        "[zz]",
    ] {
        assert!(host_problem(&req(&[bad], v11)).is_some(), "{bad:?}");
    }
    assert!(host_problem(&req(&[], v11)).is_some());
    assert!(host_problem(&req(&["a", "a"], v11)).is_some());
    for v in [http::Version::HTTP_10, http::Version::HTTP_2] {
        assert!(host_problem(&req(&[], v)).is_none());
        // Round 135a: an absolute-form target's authority is checked too.
        let absolute = |uri: &str| {
            http::Request::builder()
                .version(http::Version::HTTP_11)
                .uri(uri)
                .header(http::header::HOST, "h")
                .body(())
                .expect("a request")
        };
        assert!(host_problem(&absolute("http://h:+1/v1/ping")).is_some());
        assert!(host_problem(&absolute("http://h:1/v1/ping")).is_none());
        // Round 135a: a Host sent over HTTP/1.0 is checked as over HTTP/1.1.
        if v == http::Version::HTTP_10 {
            assert!(host_problem(&req(&["a", "b"], v)).is_some());
            assert!(host_problem(&req(&["h:+80"], v)).is_some());
            assert!(host_problem(&req(&["h:80"], v)).is_none());
        }
    }
}

#[test]
fn an_http2_host_names_the_authority() {
    let req = |authority: Option<&str>, hosts: &[&str]| {
        let uri = authority.map_or("/v1/ping".to_string(), |a| format!("http://{a}/v1/ping"));
        let mut r = http::Request::builder()
            .version(http::Version::HTTP_2)
            .uri(uri);
        for h in hosts {
            r = r.header(http::header::HOST, *h);
        }
        r.body(()).expect("a request")
    };
    assert!(host_problem(&req(Some("127.0.0.1:8080"), &[])).is_none());
    assert!(host_problem(&req(None, &["127.0.0.1:8080"])).is_none());
    assert!(host_problem(&req(Some("Exchange:8080"), &["exchange:8080"])).is_none());
    assert!(host_problem(&req(Some("127.0.0.1:8080"), &["evil.example"])).is_some());
    assert!(host_problem(&req(Some("a:1"), &["a:1", "a:1"])).is_some());
    assert!(host_problem(&req(None, &["a", "b"])).is_some());
    // An empty host names nothing to differ from, as over HTTP/1.1 (round 135a).
    assert!(host_problem(&req(Some("a:1"), &[""])).is_none());
    // Round 134a: each must be a host and port, alone too.
    assert!(host_problem(&req(None, &["a b"])).is_some());
    assert!(host_problem(&req(Some("127.0.0.1:+80"), &[])).is_some());
    assert!(host_problem(&req(Some("[::1]:8080"), &["[::1]:8080"])).is_none());
}

/// An HTTP/2 answer with a body is counted among its connection's unsent answers until
/// the DATA frame that ends its stream is written, or until it is dropped before its end
/// was read (its stream reset: black-box round 199a, a request cancelled while its body
/// was coming left its answer counted for good, and the connection was closed as
/// stalled); an answer without a body is not counted, nor is the HEADERS frame that ends
/// its stream.
#[test]
fn unsent_answers_are_those_with_a_body_not_yet_ended() {
    use hyper::body::Body as _;
    use std::sync::atomic::Ordering;
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    let activity = Arc::new(service::Activity::new(tokio::time::Instant::now()));
    activity.h2.store(true, Ordering::Relaxed);
    let unsent = || activity.unsent.load(Ordering::Acquire);
    let body = || http_body_util::Full::new(Bytes::from_static(b"{\"bid\":1}"));
    // Made and dropped unread (its stream reset before it was sent): off at once.
    let dropped = service::Tracked::new(body(), &activity);
    assert_eq!(unsent(), 1);
    drop(dropped);
    assert_eq!(unsent(), 0);
    // Without a body: never counted.
    drop(service::Tracked::new(
        http_body_util::Full::new(Bytes::new()),
        &activity,
    ));
    assert_eq!(unsent(), 0);
    // Read (h2 took it): counted until the frame scan ends it, whether or not its body
    // was read to its end (hyper reads a body before the window lets it out).
    let mut read = service::Tracked::new(body(), &activity);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(matches!(
        Pin::new(&mut read).poll_frame(&mut cx),
        Poll::Ready(Some(Ok(_)))
    ));
    drop(read);
    assert_eq!(unsent(), 1, "read, not yet written");
    let mut scan = FrameScan::default();
    let mut wire = frame(4, 0, 0, &[]); // SETTINGS: the connection speaks HTTP/2
    wire.extend(frame(HEADERS, 5, 3, &[0x88])); // a bodiless answer's end: not counted
    wire.extend(frame(HEADERS, 4, 1, &[0x88]));
    assert_eq!(scan.ended(&wire), (0, 0));
    assert_eq!(scan.ended(&frame(DATA, 1, 1, b"{\"bid\":1}")), (1, 0));
    // Once begun, an answer ends at a reset of its stream by either side, once (round
    // 200b: its body held by a window of 0, the client's reset left it counted).
    const RST_STREAM: u8 = 3;
    let mut wire = frame(HEADERS, 4, 5, &[0x88]);
    wire.extend(frame(HEADERS, 4, 7, &[0x88]));
    wire.extend(frame(DATA, 0, 7, b"{")); // part of its body
    assert_eq!(scan.ended(&wire), (0, 0));
    assert!(scan.reset_by_client(5));
    assert!(!scan.reset_by_client(5), "ended once");
    assert!(!scan.reset_by_client(1), "a stream already ended");
    assert!(!scan.reset_by_client(9), "a stream with no answer begun");
    assert_eq!(scan.ended(&frame(RST_STREAM, 0, 7, &[0, 0, 0, 8])), (0, 1));
    assert_eq!(scan.ended(&frame(RST_STREAM, 0, 3, &[0, 0, 0, 8])), (0, 0));
    // The client's resets are read from what it sends.
    let mut scan_in = InScan::default();
    let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    sent.extend(frame(RST_STREAM, 0, 11, &[0, 0, 0, 8]));
    scan_in.body_bytes(&sent);
    assert_eq!(scan_in.resets, [11]);
}

/// Black-box round 249b: an HTTP/2 client that never read, with a huge flow-control
/// window, had the kernel hold 3.85 MB of answers per connection, for some 105 s after
/// the close. An accepted connection's send buffer is bounded (Linux reports twice what
/// was asked: its bookkeeping), and `TCP_NODELAY` is set.
#[tokio::test]
async fn an_accepted_connection_has_a_bounded_send_buffer_and_no_delay() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    let before = socket2::SockRef::from(&accepted)
        .send_buffer_size()
        .unwrap();
    super::set_accepted_options(&accepted).unwrap();
    let after = socket2::SockRef::from(&accepted)
        .send_buffer_size()
        .unwrap();
    assert!(accepted.nodelay().unwrap());
    assert_eq!(after, 2 * super::SEND_BUFFER_BYTES, "before: {before}");
}
