//! A raw buyer that misbehaves on purpose (plain hyper or plain TCP, no SDK).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bidder_sdk::Micros;
use bytes::Bytes;
use http::{header, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::EVENT_WAIT_MAX;

/// How a [`RawBuyer`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 application/json` with a body that is not JSON.
    Garbage,
    /// `200 text/html` with a page.
    Html,
    /// `500` with a JSON error.
    ServerError,
    /// Reads the request, then closes the connection without a word.
    Close,
    /// Reads the request and never answers (on the raw socket: the connection stays
    /// open until the exchange closes it, which [`RawBuyer::open`] counts).
    Hang,
    /// Reads the request, waits this many ms (a scenario time), then closes the
    /// connection without a word.
    CloseAfterMs(u64),
    /// A well-behaved buyer: bids this many micros on `/ping`, accepts on `/post`.
    Bid(i64),
}

/// A buyer on a raw socket, counting requests and recording their HTTP versions.
#[derive(Debug)]
pub struct RawBuyer {
    pub addr: SocketAddr,
    requests: Arc<watch::Sender<u64>>,
    /// Connections open now (accepted, not yet closed by the exchange).
    open: Arc<watch::Sender<u64>>,
    versions: Arc<Mutex<Vec<Version>>>,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Counts a connection open while it lives.
struct OpenConn(Arc<watch::Sender<u64>>);

impl OpenConn {
    fn new(open: &Arc<watch::Sender<u64>>) -> OpenConn {
        open.send_modify(|c| *c += 1);
        OpenConn(open.clone())
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.send_modify(|c| *c -= 1);
    }
}

impl Drop for RawBuyer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBuyer {
    pub async fn start(behaviour: Behaviour) -> RawBuyer {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(watch::Sender::new(0u64));
        let versions = Arc::new(Mutex::new(Vec::new()));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(watch::Sender::new(0u64));
        let (r, v, p, o) = (
            requests.clone(),
            versions.clone(),
            paths.clone(),
            open.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (r, v, p) = (r.clone(), v.clone(), p.clone());
                let conn = OpenConn::new(&o);
                tokio::spawn(async move {
                    let _conn = conn;
                    if matches!(
                        behaviour,
                        Behaviour::Close | Behaviour::Hang | Behaviour::CloseAfterMs(_)
                    ) {
                        // Read the head; then hang up without answering (Close), or read
                        // on, never answering, until the exchange closes (Hang).
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut seen = Vec::new();
                        let mut counted = false;
                        while let Ok(n) = stream.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if counted {
                                continue;
                            }
                            seen.extend_from_slice(&buf[..n]);
                            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                r.send_modify(|c| *c += 1);
                                counted = true;
                                match behaviour {
                                    Behaviour::Close => break,
                                    Behaviour::CloseAfterMs(ms) => {
                                        tokio::time::sleep(std::time::Duration::from_millis(ms))
                                            .await;
                                        break;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        drop(stream);
                        return;
                    }
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (r, v, p) = (r.clone(), v.clone(), p.clone());
                        async move {
                            v.lock().unwrap().push(req.version());
                            p.lock().unwrap().push(req.uri().path().to_string());
                            let path = req.uri().path().to_string();
                            let _ = req.into_body().collect().await;
                            r.send_modify(|c| *c += 1);
                            Ok::<_, std::convert::Infallible>(raw_answer(behaviour, &path).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        RawBuyer {
            addr,
            requests,
            open,
            versions,
            paths,
            task,
        }
    }

    pub fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    /// Connections the exchange holds open to this buyer now.
    pub fn open(&self) -> u64 {
        *self.open.borrow()
    }

    /// Waits until the exchange holds at most `n` connections open to this buyer; `false`
    /// if that did not happen within `within`.
    pub async fn wait_open_at_most(&self, n: u64, within: std::time::Duration) -> bool {
        let mut rx = self.open.subscribe();
        let seen = tokio::time::timeout(within, rx.wait_for(|c| *c <= n)).await;
        matches!(seen, Ok(Ok(_)))
    }

    pub fn versions(&self) -> Vec<Version> {
        self.versions.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: u64) {
        let mut rx = self.requests.subscribe();
        tokio::time::timeout(EVENT_WAIT_MAX, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!("raw buyer saw {} requests, waited for {n}", self.requests())
            })
            .expect("the buyer is alive");
    }
}

async fn raw_answer(behaviour: Behaviour, path: &str) -> http::Response<Full<Bytes>> {
    let (status, content_type, body): (u16, &str, Vec<u8>) = match behaviour {
        Behaviour::Garbage => (
            200,
            "application/json",
            b"{\"bid\": 12.5, oops not json".to_vec(),
        ),
        Behaviour::Html => (
            200,
            "text/html",
            b"<html><body>{\"bid\": 50}</body></html>".to_vec(),
        ),
        Behaviour::ServerError => (500, "application/json", br#"{"error":"boom"}"#.to_vec()),
        Behaviour::Hang | Behaviour::Close | Behaviour::CloseAfterMs(_) => {
            unreachable!("handled on the socket")
        }
        Behaviour::Bid(micros) if path.ends_with("/ping") => (
            200,
            "application/json",
            serde_json::to_vec(&json!({"bid": Micros(micros), "bid_id": "raw-1"})).unwrap(),
        ),
        Behaviour::Bid(_) => (
            200,
            "application/json",
            br#"{"accepted": true, "buyer_lead_id": "raw-crm"}"#.to_vec(),
        ),
    };
    let mut resp = http::Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type.parse().unwrap());
    resp
}
