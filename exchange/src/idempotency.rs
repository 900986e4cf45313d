//! `Idempotency-Key`: the same key from the same seller with the same body gets the stored
//! answer again; with a different body, or while the first is still running, `409`.
//! Keys are remembered for `idempotency_ttl_ms` (24 h by default) and their number is
//! bounded: past the bound new keys are refused with `503` rather than evicting live ones.

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::config::SellerKey;
use crate::core::UnixMs;

/// Longest key accepted (CONTRACT.md).
pub const KEY_LEN_MAX: usize = 255;

#[derive(Debug, Clone)]
enum State {
    InFlight,
    Done { status: u16, body: Bytes },
}

#[derive(Debug, Clone)]
struct Slot {
    body_sha256: [u8; 32],
    at: UnixMs,
    state: State,
}

/// What to do with a request that carries a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// First time: process it, then call [`IdempotencyStore::complete`] (or `forget`).
    Proceed,
    /// Seen before with the same body: answer this again.
    Replay { status: u16, body: Bytes },
    /// Seen before with another body.
    BodyMismatch,
    /// The first request with this key is still running.
    InFlight,
    /// The store is full.
    Full,
}

/// Remembered keys, per seller.
#[derive(Debug)]
pub struct IdempotencyStore {
    map: DashMap<(SellerKey, String), Slot>,
    ttl_ms: u64,
    keys_max: usize,
}

impl IdempotencyStore {
    pub fn new(ttl_ms: u64, keys_max: usize) -> IdempotencyStore {
        IdempotencyStore {
            map: DashMap::new(),
            ttl_ms,
            keys_max,
        }
    }

    pub fn begin(&self, seller: SellerKey, key: &str, body: &[u8], now: UnixMs) -> Begin {
        let digest: [u8; 32] = Sha256::digest(body).into();
        let full = self.map.len() >= self.keys_max;
        match self.map.entry((seller, key.to_string())) {
            Entry::Occupied(mut e) => {
                let slot = e.get();
                if now - slot.at >= self.ttl_ms as i64 {
                    e.insert(Slot {
                        body_sha256: digest,
                        at: now,
                        state: State::InFlight,
                    });
                    return Begin::Proceed;
                }
                if slot.body_sha256 != digest {
                    return Begin::BodyMismatch;
                }
                match &slot.state {
                    State::InFlight => Begin::InFlight,
                    State::Done { status, body } => Begin::Replay {
                        status: *status,
                        body: body.clone(),
                    },
                }
            }
            Entry::Vacant(_) if full => Begin::Full,
            Entry::Vacant(v) => {
                v.insert(Slot {
                    body_sha256: digest,
                    at: now,
                    state: State::InFlight,
                });
                Begin::Proceed
            }
        }
    }

    /// Stores the answer for later replays.
    pub fn complete(&self, seller: SellerKey, key: &str, status: u16, body: Bytes) {
        if let Some(mut slot) = self.map.get_mut(&(seller, key.to_string())) {
            slot.state = State::Done { status, body };
        }
    }

    /// Forgets a key whose request changed nothing (a refused request may be retried).
    pub fn forget(&self, seller: SellerKey, key: &str) {
        self.map.remove(&(seller, key.to_string()));
    }

    /// Drops keys older than the TTL.
    pub fn sweep(&self, now: UnixMs) {
        let ttl = self.ttl_ms as i64;
        self.map
            .retain(|_, s| now - s.at < ttl || matches!(s.state, State::InFlight));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_mismatch_inflight_expiry() {
        let s = IdempotencyStore::new(1000, 10);
        assert_eq!(s.begin(SellerKey(0), "k", b"a", 0), Begin::Proceed);
        assert_eq!(s.begin(SellerKey(0), "k", b"a", 1), Begin::InFlight);
        assert_eq!(s.begin(SellerKey(0), "k", b"b", 1), Begin::BodyMismatch);
        assert_eq!(
            s.begin(SellerKey(1), "k", b"b", 1),
            Begin::Proceed,
            "keys are per seller"
        );
        s.complete(SellerKey(0), "k", 200, Bytes::from_static(b"ok"));
        assert_eq!(
            s.begin(SellerKey(0), "k", b"a", 2),
            Begin::Replay {
                status: 200,
                body: Bytes::from_static(b"ok")
            }
        );
        assert_eq!(
            s.begin(SellerKey(0), "k", b"a", 1000),
            Begin::Proceed,
            "expired keys start over"
        );
        s.sweep(5000);
        assert_eq!(s.len(), 2, "in-flight keys are never swept");
    }

    #[test]
    fn bounded() {
        let s = IdempotencyStore::new(1000, 2);
        assert_eq!(s.begin(SellerKey(0), "a", b"", 0), Begin::Proceed);
        assert_eq!(s.begin(SellerKey(0), "b", b"", 0), Begin::Proceed);
        assert_eq!(s.begin(SellerKey(0), "c", b"", 0), Begin::Full);
        s.forget(SellerKey(0), "a");
        assert_eq!(s.begin(SellerKey(0), "c", b"", 0), Begin::Proceed);
    }
}
