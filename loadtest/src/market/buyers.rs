//! The market's simulated buyers: bidder-SDK servers on 127.0.0.1 (so they verify the
//! exchange's signatures as every simulated buyer does), one fleet per leg, each buyer
//! bidding and realizing from the shared [`World`]'s pure draws and writing down every
//! post it receives in its leg's [`PostBook`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bidder_sdk::{
    BidReply, Bidder, PingMessage, PostMessage, PostReply, Secret, ServeOptions, ServerHandle,
};

use super::world::{lead_features, lead_ref, World};
use crate::sim::{SimBuyerInfo, SIM_BID_EXPIRES_IN_MS};

/// One post a buyer received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostEvent {
    /// The lead's index.
    pub lead: u64,
    /// The buyer.
    pub buyer: usize,
    /// The price it was charged, micros.
    pub price_micros: i64,
    /// It accepted the post.
    pub accepted: bool,
    /// It keeps the lead (accepted and will not return it).
    pub kept: bool,
}

/// The posts of one leg not yet collected by the driver, by lead. The driver takes a
/// lead's posts once the seller has its answer, so the book holds only leads in flight.
#[derive(Debug, Default)]
pub struct PostBook {
    events: Mutex<HashMap<u64, Vec<PostEvent>>>,
}

/// The most leads the book holds (a guard: the driver takes them as it goes).
pub const POST_BOOK_LEADS_MAX: usize = 100_000;

impl PostBook {
    fn push(&self, e: PostEvent) {
        let mut m = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if m.len() < POST_BOOK_LEADS_MAX || m.contains_key(&e.lead) {
            m.entry(e.lead).or_default().push(e);
        }
    }

    /// Takes the posts of lead `i`, in arrival order.
    pub fn take(&self, i: u64) -> Vec<PostEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&i)
            .unwrap_or_default()
    }
}

struct MarketBuyer {
    index: usize,
    world: Arc<World>,
    book: Arc<PostBook>,
}

const PASS: &str = "outside_criteria";

impl Bidder for MarketBuyer {
    async fn ping(&self, ping: PingMessage) -> BidReply {
        let Some(i) = lead_ref(&ping.lead) else {
            return BidReply::NoBid {
                no_bid: PASS.into(),
            };
        };
        let lead = serde_json::Value::Object(ping.lead.into_iter().collect());
        match self.world.bid(i, &lead_features(&lead), self.index) {
            Some(bid) => BidReply::Bid {
                bid,
                bid_id: None,
                expires_in_ms: Some(SIM_BID_EXPIRES_IN_MS),
            },
            None => BidReply::NoBid {
                no_bid: PASS.into(),
            },
        }
    }

    async fn post(&self, post: PostMessage) -> PostReply {
        let Some(i) = lead_ref(&post.lead) else {
            return PostReply {
                accepted: false,
                buyer_lead_id: None,
                reason: Some("unknown_lead".into()),
            };
        };
        let lead = serde_json::Value::Object(post.lead.into_iter().collect());
        let r = self.world.realize(i, &lead_features(&lead), self.index);
        let accepted = r.kept || r.returns;
        self.book.push(PostEvent {
            lead: i,
            buyer: self.index,
            price_micros: post.price.0,
            accepted,
            kept: r.kept,
        });
        PostReply {
            accepted,
            buyer_lead_id: accepted.then(|| format!("m{i}-{}", self.index)),
            reason: (!accepted).then(|| "not_interested".to_string()),
        }
    }
}

/// One leg's running buyers.
pub struct LegFleet {
    /// Where they listen, in buyer order (names are the profiles' names).
    pub infos: Vec<SimBuyerInfo>,
    /// Their posts.
    pub book: Arc<PostBook>,
    handles: Vec<ServerHandle>,
}

impl std::fmt::Debug for LegFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegFleet")
            .field("infos", &self.infos.len())
            .finish()
    }
}

/// Starts one bidder-SDK server per buyer of `world` on a loopback port of its own
/// ([`crate::ports::bind_loopback`]), each with its own random secret.
pub async fn start_leg_fleet(world: &Arc<World>) -> std::io::Result<LegFleet> {
    let book = Arc::new(PostBook::default());
    let mut fleet = LegFleet {
        infos: Vec::new(),
        book: Arc::clone(&book),
        handles: Vec::new(),
    };
    for (index, profile) in world.buyers.iter().enumerate() {
        let secret_text = format!("mkt-{:032x}", rand::random::<u128>());
        let secret = Secret::new(&secret_text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let buyer = Arc::new(MarketBuyer {
            index,
            world: Arc::clone(world),
            book: Arc::clone(&book),
        });
        let spawned = match crate::ports::bind_loopback_tokio() {
            Ok(listener) => bidder_sdk::spawn_on(listener, buyer, ServeOptions::new(secret)).await,
            Err(e) => Err(e),
        };
        match spawned {
            Ok((addr, handle)) => {
                fleet.infos.push(SimBuyerInfo {
                    name: profile.name.to_string(),
                    addr,
                    secret: secret_text,
                    http2: false,
                });
                fleet.handles.push(handle);
            }
            Err(e) => {
                fleet.shutdown().await;
                return Err(e);
            }
        }
    }
    Ok(fleet)
}

impl LegFleet {
    /// Stops every buyer.
    pub async fn shutdown(self) {
        let _ =
            futures_util::future::join_all(self.handles.into_iter().map(|h| h.shutdown())).await;
    }
}
