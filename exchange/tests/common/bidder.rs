//! A scripted bidder served by the bidder SDK, and [`serve`] to start one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bidder_sdk::{
    spawn, BidReply, Bidder, Micros, PingMessage, PostMessage, PostReply, Secret, ServeOptions,
    ServerHandle,
};
use tokio::sync::watch;

use super::{usd, TestBuyer, EVENT_WAIT_MAX, PII_FIELDS};

/// What a [`ScriptedBidder`] does; change it at any time with [`ScriptedBidder::set`].
#[derive(Debug, Clone)]
pub struct Script {
    /// `Some(price)` bids it; `None` passes.
    pub bid: Option<Micros>,
    /// The bid's own validity, sent as `expires_in_ms`.
    pub bid_expires_in_ms: Option<u64>,
    /// How long the buyer takes to answer a ping (its own behaviour, not a test wait).
    pub ping_delay: Duration,
    /// Whether posts are accepted.
    pub accept: bool,
}

/// A buyer whose answers the test decides, and which records what it received.
#[derive(Debug)]
pub struct ScriptedBidder {
    script: Mutex<Script>,
    pings: Mutex<Vec<PingMessage>>,
    posts: Mutex<Vec<PostMessage>>,
    ping_count: watch::Sender<u64>,
    post_count: watch::Sender<u64>,
    /// While closed (`false`), pings wait for it to open before answering.
    gate: watch::Sender<bool>,
    /// While closed, posts wait for it to open before answering.
    post_gate: watch::Sender<bool>,
}

impl ScriptedBidder {
    fn with(script: Script) -> Arc<ScriptedBidder> {
        Arc::new(ScriptedBidder {
            script: Mutex::new(script),
            pings: Mutex::new(Vec::new()),
            posts: Mutex::new(Vec::new()),
            ping_count: watch::Sender::new(0),
            post_count: watch::Sender::new(0),
            gate: watch::Sender::new(true),
            post_gate: watch::Sender::new(true),
        })
    }

    /// Bids `price` (in currency units) on every ping and accepts every post.
    pub fn bidding(price: f64) -> Arc<ScriptedBidder> {
        ScriptedBidder::with(Script {
            bid: Some(usd(price)),
            bid_expires_in_ms: None,
            ping_delay: Duration::ZERO,
            accept: true,
        })
    }

    /// Passes on every ping.
    pub fn passing() -> Arc<ScriptedBidder> {
        ScriptedBidder::with(Script {
            bid: None,
            bid_expires_in_ms: None,
            ping_delay: Duration::ZERO,
            accept: true,
        })
    }

    /// Changes the script.
    pub fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }

    /// Builder form of [`ScriptedBidder::set`].
    pub fn scripted(self: Arc<Self>, f: impl FnOnce(&mut Script)) -> Arc<Self> {
        self.set(f);
        self
    }

    /// Holds every ping until [`ScriptedBidder::open`].
    pub fn close(&self) {
        self.gate.send_replace(false);
    }

    /// Lets held and future pings be answered.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    pub fn pings(&self) -> u64 {
        *self.ping_count.borrow()
    }

    pub fn posts(&self) -> u64 {
        *self.post_count.borrow()
    }

    /// Every ping received, in order.
    pub fn ping_log(&self) -> Vec<PingMessage> {
        self.pings.lock().unwrap().clone()
    }

    /// Every post received, in order.
    pub fn post_log(&self) -> Vec<PostMessage> {
        self.posts.lock().unwrap().clone()
    }

    /// Panics if any ping this buyer received carried a PII field.
    pub fn assert_no_pii_in_pings(&self) {
        for ping in self.ping_log() {
            for field in PII_FIELDS {
                assert!(
                    !ping.lead.contains_key(field),
                    "a ping carried PII field {field}: {:?}",
                    ping.lead
                );
            }
        }
    }

    /// Waits until this buyer has received at least `n` pings.
    /// Posts wait until [`ScriptedBidder::open_posts`] before answering.
    pub fn close_posts(&self) {
        self.post_gate.send_replace(false);
    }

    pub fn open_posts(&self) {
        self.post_gate.send_replace(true);
    }

    /// Waits until the bidder has received `n` posts.
    pub async fn wait_posts(&self, n: u64) {
        let mut rx = self.post_count.subscribe();
        tokio::time::timeout(EVENT_WAIT_MAX, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("bidder saw {} posts, waited for {n}", self.posts()))
            .expect("the bidder is alive");
    }

    pub async fn wait_pings(&self, n: u64) {
        let mut rx = self.ping_count.subscribe();
        tokio::time::timeout(EVENT_WAIT_MAX, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("bidder saw {} pings, waited for {n}", self.pings()))
            .expect("the bidder is alive");
    }

    /// Serves this bidder with the SDK on 127.0.0.1:0.
    pub async fn serve(self: &Arc<Self>, secret: &str) -> (SocketAddr, ServerHandle) {
        spawn(
            self.clone(),
            ServeOptions::new(Secret::new(secret).expect("a valid secret")),
        )
        .await
        .expect("bidder starts")
    }
}

impl Bidder for ScriptedBidder {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        self.pings.lock().unwrap().push(ping);
        self.ping_count.send_modify(|c| *c += 1);
        let script = self.script.lock().unwrap().clone();
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        if !script.ping_delay.is_zero() {
            tokio::time::sleep(script.ping_delay).await;
        }
        match script.bid {
            Some(bid) => BidReply::Bid {
                bid,
                bid_id: Some(format!("bid-{}", self.pings())),
                expires_in_ms: script.bid_expires_in_ms,
            },
            None => BidReply::NoBid {
                no_bid: "outside_criteria".into(),
            },
        }
    }

    async fn post(&self, post: PostMessage) -> PostReply {
        self.posts.lock().unwrap().push(post);
        self.post_count.send_modify(|c| *c += 1);
        let mut gate = self.post_gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        if self.script.lock().unwrap().accept {
            PostReply {
                accepted: true,
                buyer_lead_id: Some(format!("crm-{}", self.posts())),
                reason: None,
            }
        } else {
            PostReply {
                accepted: false,
                buyer_lead_id: None,
                reason: Some("duplicate".into()),
            }
        }
    }
}

/// Serves `bidder` with the SDK and returns its configuration entry (id, address,
/// secret) and the server handle (keep it alive for the test).
pub async fn serve(id: &str, bidder: &Arc<ScriptedBidder>) -> (TestBuyer, ServerHandle) {
    let probe = TestBuyer::new(id, SocketAddr::from(([127, 0, 0, 1], 0)));
    let (addr, handle) = bidder.serve(&probe.secret).await;
    (TestBuyer { addr, ..probe }, handle)
}
