//! `Idempotency-Key`: the same key from the same seller with the same body gets the stored
//! answer again; with a different body, or while the first is still running, `409`.
//! Keys are remembered for `idempotency_ttl_ms` (24 h by default) and their number is
//! bounded twice: per seller (`idempotency_keys_per_seller_max` or the seller's own
//! `idempotency_keys_max`; past it that seller's new keys get `429`, other sellers are
//! unaffected) and in all (`idempotency_keys_max`; past it `503`). Live keys are never
//! evicted to make room: an evicted key would let a retry sell a lead twice.
//!
//! The store is generic over the party that owns the keys: sellers on the seller routes
//! ([`SellerKey`], the default), buyers on `POST /v1/dispositions` (`BuyerKey`, a store
//! of its own with the same TTL and bounds; its per-party quota is
//! `idempotency_keys_per_seller_max`, applied per buyer there).
//!
//! Every key that `begin` answered `Proceed` must be settled with `complete` or `forget`
//! by the request's own task (server.rs), whether or not the client is still connected;
//! an unsettled key would answer `409` until it expires.

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::config::SellerKey;
use crate::core::UnixMs;

/// Longest key accepted (CONTRACT.md).
pub const KEY_LEN_MAX: usize = 255;

/// A key is 1 to [`KEY_LEN_MAX`] visible ASCII characters (`!` to `~`: no space, no
/// control character), as the OpenAPI documents it.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= KEY_LEN_MAX && key.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[derive(Debug, Clone)]
enum State {
    InFlight,
    Done { status: u16, body: Bytes },
}

#[derive(Debug, Clone)]
struct Slot {
    body_sha256: [u8; 32],
    /// The route the key was first used on (for a key restored from the ledger, the
    /// routes its record can come from, `|`-separated, as `post|leads`; `""` for any): a
    /// key is scoped to its route, so the same key and body on another route is a
    /// conflict, not a replay of another request's answer.
    route: &'static str,
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
    /// This seller (or buyer, in a buyer-keyed store) holds its quota of keys already.
    SellerFull,
}

/// A key and its request's body as ledgers before 2026-12-03 named them: plain SHA-256.
fn plain_digests(key: &str, body: &[u8]) -> ([u8; 32], [u8; 32]) {
    (
        Sha256::digest(key.as_bytes()).into(),
        Sha256::digest(body).into(),
    )
}

/// Whether a key first used on `first` (`|`-separated routes; `""` for any) may be used
/// on `route` (`""`: any) without a conflict.
fn route_allows(first: &str, route: &str) -> bool {
    first.is_empty() || route.is_empty() || first.split('|').any(|r| r == route)
}

/// Labels that keep a key's digest and a body's apart under one HMAC key.
const KEY_LABEL: &[u8] = b"pingpost idempotency key v1\0";
const BODY_LABEL: &[u8] = b"pingpost idempotency body v1\0";

/// Remembered keys, per party `P` (a seller by default; a buyer for dispositions).
#[derive(Debug)]
pub struct IdempotencyStore<P: Eq + Hash = SellerKey> {
    map: DashMap<(P, [u8; 32]), Slot>,
    /// Keys held per party (in `map`), for the per-party quota. Lock order: an entry of
    /// `map`, then one of `per_seller`, never the other way.
    per_seller: DashMap<P, usize>,
    ttl_ms: u64,
    keys_max: usize,
    /// The HMAC keyed with the ledger's fingerprint key ([`Self::set_key`]): keys and
    /// bodies are held, and named in the ledger, by keyed digests, so a ledger reader
    /// cannot test a guessed key or body (black-box round 72d: a plain SHA-256 of a post's
    /// body, the full lead, or of a key that was a phone number, gave them back by
    /// guessing). Without one (a store made in a test): plain SHA-256.
    keyed: Option<Hmac<Sha256>>,
    /// Until when (Unix ms) a key may still be held by its plain SHA-256, restored from a
    /// ledger written before keyed digests: the last such entry's end of life.
    plain_until: AtomicI64,
}

impl<P: Copy + Eq + Hash> IdempotencyStore<P> {
    pub fn new(ttl_ms: u64, keys_max: usize) -> IdempotencyStore<P> {
        IdempotencyStore {
            map: DashMap::new(),
            per_seller: DashMap::new(),
            ttl_ms,
            keys_max,
            keyed: None,
            plain_until: AtomicI64::new(i64::MIN),
        }
    }

    /// Keys and bodies are digested with `mac` (an HMAC keyed with the ledger's
    /// fingerprint key) from now on: set once at the start, before any key is taken or
    /// restored.
    pub fn set_key(&mut self, mac: Hmac<Sha256>) {
        self.keyed = Some(mac);
    }

    /// A key's digest, as the store holds it and the ledger names it.
    pub fn key_digest(&self, key: &str) -> [u8; 32] {
        self.digest(KEY_LABEL, key.as_bytes())
    }

    /// A request body's digest, as the store holds it and the ledger names it.
    pub fn body_digest(&self, body: &[u8]) -> [u8; 32] {
        self.digest(BODY_LABEL, body)
    }

    fn digest(&self, label: &[u8], bytes: &[u8]) -> [u8; 32] {
        match &self.keyed {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(label);
                mac.update(bytes);
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(bytes).into(),
        }
    }

    /// A key restored by its plain SHA-256 (a ledger from before keyed digests), still
    /// alive at `now`: its answer again, or `409` for another body. The key's entry is
    /// looked at before the keyed one is taken, never while holding it.
    fn plain_hit(
        &self,
        seller: P,
        route: &'static str,
        key: &str,
        body: &[u8],
        now: UnixMs,
    ) -> Option<Begin> {
        if self.keyed.is_none() || now >= self.plain_until.load(Ordering::Relaxed) {
            return None;
        }
        let (key, body) = plain_digests(key, body);
        let slot = self.map.get(&(seller, key))?;
        if now - slot.at >= self.ttl_ms as i64 {
            return None;
        }
        Some(match &slot.state {
            // In flight, even with another body: its first request may still fail and
            // free the key (as below).
            State::InFlight => Begin::InFlight,
            _ if slot.body_sha256 != body || !route_allows(slot.route, route) => {
                Begin::BodyMismatch
            }
            State::Done { status, body } => Begin::Replay {
                status: *status,
                body: body.clone(),
            },
        })
    }

    /// [`IdempotencyStore::begin_within`] without a per-seller quota.
    pub fn begin(&self, seller: P, key: &str, body: &[u8], now: UnixMs) -> Begin {
        self.begin_within(seller, "", key, body, now, usize::MAX)
    }

    /// Looks `key` up for `seller`; a new key is taken only while the seller holds fewer
    /// than `seller_keys_max` keys and the store fewer than `keys_max`.
    pub fn begin_within(
        &self,
        seller: P,
        route: &'static str,
        key: &str,
        body: &[u8],
        now: UnixMs,
        seller_keys_max: usize,
    ) -> Begin {
        if let Some(begin) = self.plain_hit(seller, route, key, body, now) {
            return begin;
        }
        let digest = self.body_digest(body);
        let full = self.map.len() >= self.keys_max;
        match self.map.entry((seller, self.key_digest(key))) {
            Entry::Occupied(mut e) => {
                let slot = e.get();
                if now - slot.at >= self.ttl_ms as i64 {
                    e.insert(Slot {
                        body_sha256: digest,
                        route,
                        at: now,
                        state: State::InFlight,
                    });
                    return Begin::Proceed;
                }
                // While the key's first request is in flight, another body (or route)
                // is told to retry after it, not that it never succeeds: that request
                // may still fail, which frees the key (black-box round 221b: a `400`
                // body and a valid one sent at once with one key, the valid one got the
                // permanent `409` and then sold when sent again).
                if let State::InFlight = slot.state {
                    return Begin::InFlight;
                }
                let other_route = !route_allows(slot.route, route);
                if slot.body_sha256 != digest || other_route {
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
                let mut held = self.per_seller.entry(seller).or_insert(0);
                if *held >= seller_keys_max {
                    return Begin::SellerFull;
                }
                *held += 1;
                drop(held);
                v.insert(Slot {
                    body_sha256: digest,
                    route,
                    at: now,
                    state: State::InFlight,
                });
                Begin::Proceed
            }
        }
    }

    /// Stores the answer for later replays.
    pub fn complete(&self, seller: P, key: &str, status: u16, body: Bytes) {
        if let Some(mut slot) = self.map.get_mut(&(seller, self.key_digest(key))) {
            slot.state = State::Done { status, body };
        }
    }

    /// Forgets a key whose request changed nothing (a refused request may be retried).
    pub fn forget(&self, seller: P, key: &str) {
        if self.map.remove(&(seller, self.key_digest(key))).is_some() {
            self.release(seller);
        }
    }

    /// Recovery at start: remembers the answer of a key the ledger names (by its digest
    /// and its body's: keyed, or a plain SHA-256 in a ledger from before keyed digests,
    /// which is still found), as of `at`. A key already held, or one past the TTL at `now`,
    /// changes nothing (returns false). A full store takes it all the same: the limit may
    /// be lower now than when the key was taken, and a key dropped here would let its
    /// retry run again, a second sale (new keys wait until the count falls under it).
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &self,
        seller: P,
        route: &'static str,
        key_sha256: [u8; 32],
        body_sha256: [u8; 32],
        at: UnixMs,
        now: UnixMs,
        answer: (u16, Bytes),
    ) -> bool {
        if now - at >= self.ttl_ms as i64 {
            return false;
        }
        match self.map.entry((seller, key_sha256)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                // It may be a plain SHA-256 (a ledger from before keyed digests): until it
                // expires, a new key is looked up by that too.
                self.plain_until
                    .fetch_max(at.saturating_add(self.ttl_ms as i64), Ordering::Relaxed);
                *self.per_seller.entry(seller).or_insert(0) += 1;
                v.insert(Slot {
                    body_sha256,
                    route,
                    at,
                    state: State::Done {
                        status: answer.0,
                        body: answer.1,
                    },
                });
                true
            }
        }
    }

    /// Drops keys older than the TTL.
    pub fn sweep(&self, now: UnixMs) {
        let ttl = self.ttl_ms as i64;
        self.map.retain(|(seller, _), s| {
            let keep = now - s.at < ttl || matches!(s.state, State::InFlight);
            if !keep {
                self.release(*seller);
            }
            keep
        });
    }

    /// Keys `seller` holds now.
    pub fn held_by(&self, seller: P) -> usize {
        self.per_seller.get(&seller).map_or(0, |n| *n)
    }

    fn release(&self, seller: P) {
        if let Some(mut n) = self.per_seller.get_mut(&seller) {
            *n = n.saturating_sub(1);
        }
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

    fn keyed_store() -> IdempotencyStore {
        let mut s = IdempotencyStore::new(1000, 10);
        s.set_key(Hmac::<Sha256>::new_from_slice(&[7u8; 32]).unwrap());
        s
    }

    /// Black-box round 72d: keys and bodies are held (and written to the ledger) by
    /// digests keyed with the fingerprint key, never their plain SHA-256, which a ledger
    /// reader could test guesses against.
    #[test]
    fn a_keyed_store_digests_keys_and_bodies_with_its_key() {
        let s = keyed_store();
        let (plain_key, plain_body) = plain_digests("+17135554321", b"{}");
        assert_ne!(s.key_digest("+17135554321"), plain_key);
        assert_ne!(s.body_digest(b"{}"), plain_body);
        // Key and body digests are told apart, and another key makes others.
        assert_ne!(s.key_digest("x"), s.body_digest(b"x"));
        assert_ne!(s.key_digest("x"), keyed_store().key_digest("y"));
        let mut other = IdempotencyStore::<SellerKey>::new(1000, 10);
        other.set_key(Hmac::<Sha256>::new_from_slice(&[8u8; 32]).unwrap());
        assert_ne!(s.key_digest("x"), other.key_digest("x"));
        // A key restored by its keyed digests is found by the same key and body.
        let answer = (200, Bytes::from_static(b"{\"status\":\"sold\"}"));
        assert!(s.restore(
            SellerKey(0),
            "",
            s.key_digest("k"),
            s.body_digest(b"b"),
            0,
            10,
            answer.clone()
        ));
        assert_eq!(
            s.begin(SellerKey(0), "k", b"b", 20),
            Begin::Replay {
                status: 200,
                body: answer.1
            }
        );
    }

    /// Black-box round 73a: a key restored at a start answered on every route (its
    /// route was not kept), so a ping got a post's `sold`. A restored key keeps the
    /// routes its record comes from.
    #[test]
    fn a_restored_key_answers_only_on_its_own_routes() {
        let s = keyed_store();
        let answer = (200, Bytes::from_static(b"{\"status\":\"sold\"}"));
        let restore = |route, key: &str| {
            assert!(s.restore(
                SellerKey(0),
                route,
                s.key_digest(key),
                s.body_digest(b"b"),
                0,
                10,
                answer.clone()
            ))
        };
        restore("post|leads", "sent");
        restore("ping", "pinged");
        let replay = Begin::Replay {
            status: 200,
            body: answer.1.clone(),
        };
        for (route, key, want) in [
            ("post", "sent", &replay),
            ("leads", "sent", &replay),
            ("ping", "sent", &Begin::BodyMismatch),
            ("ping", "pinged", &replay),
            ("post", "pinged", &Begin::BodyMismatch),
            ("leads", "pinged", &Begin::BodyMismatch),
        ] {
            assert_eq!(
                &s.begin_within(SellerKey(0), route, key, b"b", 20, usize::MAX),
                want,
                "{route} {key}"
            );
        }
        // And one restored by its plain digest (an older ledger) the same.
        let (key, body) = plain_digests("old", b"b");
        assert!(s.restore(SellerKey(0), "ping", key, body, 0, 10, answer.clone()));
        assert_eq!(
            s.begin_within(SellerKey(0), "post", "old", b"b", 20, usize::MAX),
            Begin::BodyMismatch
        );
        assert_eq!(
            s.begin_within(SellerKey(0), "ping", "old", b"b", 20, usize::MAX),
            replay
        );
    }

    /// A ledger written before keyed digests names a key by its plain SHA-256: restored,
    /// it is still found until it expires, so a retry across the upgrade is not run again.
    #[test]
    fn a_key_restored_by_its_plain_digest_is_found_until_it_expires() {
        let s = keyed_store();
        let answer = (200, Bytes::from_static(b"{\"status\":\"sold\"}"));
        let (key, body) = plain_digests("k", b"b");
        assert!(s.restore(SellerKey(0), "", key, body, 500, 600, answer.clone()));
        assert_eq!(
            s.begin(SellerKey(0), "k", b"b", 700),
            Begin::Replay {
                status: 200,
                body: answer.1
            }
        );
        assert_eq!(
            s.begin(SellerKey(0), "k", b"other", 700),
            Begin::BodyMismatch
        );
        // Another seller's same key is its own.
        assert_eq!(s.begin(SellerKey(1), "k", b"b", 700), Begin::Proceed);
        // Past its TTL (500 + 1000) the key is new again.
        assert_eq!(s.begin(SellerKey(0), "k", b"b", 1500), Begin::Proceed);
    }

    #[test]
    fn replay_mismatch_inflight_expiry() {
        let s = IdempotencyStore::new(1000, 10);
        assert_eq!(s.begin(SellerKey(0), "k", b"a", 0), Begin::Proceed);
        assert_eq!(s.begin(SellerKey(0), "k", b"a", 1), Begin::InFlight);
        // Another body while the first is in flight: retry after it (the first may still
        // fail and free the key; black-box round 221b).
        assert_eq!(s.begin(SellerKey(0), "k", b"b", 1), Begin::InFlight);
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
    fn a_restored_key_replays_and_a_stale_one_is_not_restored() {
        let s = IdempotencyStore::new(1000, 10);
        let key: [u8; 32] = Sha256::digest(b"k").into();
        let body: [u8; 32] = Sha256::digest(b"a").into();
        let answer = (200, Bytes::from_static(b"ok"));
        assert!(!s.restore(SellerKey(0), "", key, body, 0, 1000, answer.clone()));
        assert!(s.restore(SellerKey(0), "", key, body, 500, 1000, answer.clone()));
        assert!(
            !s.restore(SellerKey(0), "", key, body, 500, 1000, answer),
            "held once"
        );
        assert_eq!(
            s.begin(SellerKey(0), "k", b"a", 1001),
            Begin::Replay {
                status: 200,
                body: Bytes::from_static(b"ok")
            }
        );
        assert_eq!(s.begin(SellerKey(0), "k", b"b", 1001), Begin::BodyMismatch);
        assert_eq!(s.held_by(SellerKey(0)), 1);
        // A restored key (its route unknown) replays on any route.
        assert!(matches!(
            s.begin_within(SellerKey(0), "/v1/leads", "k", b"a", 1001, 9),
            Begin::Replay { .. }
        ));
    }

    #[test]
    fn a_key_belongs_to_the_route_it_was_first_used_on() {
        let s = IdempotencyStore::new(1000, 100);
        let k = "route-key";
        assert_eq!(
            s.begin_within(SellerKey(0), "/v1/ping", k, b"x", 0, 9),
            Begin::Proceed
        );
        s.complete(SellerKey(0), k, 200, Bytes::from_static(b"{}"));
        // The same key and body on another route is a conflict, not the ping's answer.
        assert_eq!(
            s.begin_within(SellerKey(0), "/v1/leads", k, b"x", 1, 9),
            Begin::BodyMismatch
        );
        assert!(matches!(
            s.begin_within(SellerKey(0), "/v1/ping", k, b"x", 1, 9),
            Begin::Replay { .. }
        ));
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

    #[test]
    fn per_seller_quota() {
        let s = IdempotencyStore::new(1000, 100);
        assert_eq!(
            s.begin_within(SellerKey(0), "", "a", b"", 0, 2),
            Begin::Proceed
        );
        assert_eq!(
            s.begin_within(SellerKey(0), "", "b", b"", 0, 2),
            Begin::Proceed
        );
        assert_eq!(
            s.begin_within(SellerKey(0), "", "c", b"", 0, 2),
            Begin::SellerFull
        );
        assert_eq!(
            s.begin_within(SellerKey(1), "", "c", b"", 0, 2),
            Begin::Proceed,
            "other sellers are unaffected"
        );
        s.complete(SellerKey(0), "a", 200, Bytes::from_static(b"ok"));
        assert!(
            matches!(
                s.begin_within(SellerKey(0), "", "a", b"", 1, 2),
                Begin::Replay { .. }
            ),
            "a held key still replays at the quota"
        );
        s.forget(SellerKey(0), "b");
        assert_eq!(s.held_by(SellerKey(0)), 1);
        assert_eq!(
            s.begin_within(SellerKey(0), "", "c", b"", 1, 2),
            Begin::Proceed
        );
        s.complete(SellerKey(0), "c", 200, Bytes::new());
        s.sweep(5000);
        assert_eq!(
            (s.held_by(SellerKey(0)), s.held_by(SellerKey(1))),
            (0, 1),
            "in flight: kept"
        );
        assert_eq!(
            s.begin_within(SellerKey(0), "", "d", b"", 5000, 2),
            Begin::Proceed
        );
    }
}
