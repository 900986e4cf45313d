//! Stable keys for buyers and sellers across configuration reloads.
//!
//! Owns: the map from a party's configured `id` to its [`BuyerKey`] / [`SellerKey`], a
//! dense `u32` handed out in order. A key is never reused for another id, and an id keeps
//! its key for the life of the process, also when a reload removes it and a later one
//! brings it back (so its counts for the day are still its own).
//!
//! Architecture invariant: per-party state (caps, breakers, rate limits, quotes,
//! idempotency keys) is addressed by these keys, never by position in one `Config`, so a
//! reload that reorders, adds or removes parties leaves every count with its own party.
//!
//! Never: reuses a number, or grows past [`KEYS_MAX`] distinct ids per kind (a reload
//! that would is refused).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::{BuyerKey, Config, SellerKey};

/// Most distinct buyer ids (and, separately, seller ids) one process ever keys.
pub const KEYS_MAX: usize = 100_000;

/// Too many distinct ids over the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {KEYS_MAX} distinct {kind} ids were configured since the process started; restart to reset")]
pub struct KeysExhausted {
    /// `"buyer"` or `"seller"`.
    pub kind: &'static str,
}

#[derive(Debug, Default)]
struct Interner {
    by_id: HashMap<Arc<str>, u32>,
    ids: Vec<Arc<str>>,
}

impl Interner {
    /// The key of `id`, if it has one.
    fn get(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    /// How many new ids `ids` would add.
    fn new_count<'a>(&self, ids: impl Iterator<Item = &'a str>) -> usize {
        let mut seen = std::collections::HashSet::new();
        ids.filter(|id| self.get(id).is_none() && seen.insert(*id))
            .count()
    }

    fn intern(&mut self, id: &str) -> u32 {
        if let Some(k) = self.get(id) {
            return k;
        }
        // Bounded by KEYS_MAX (checked before interning), far below u32::MAX.
        let k = self.ids.len() as u32;
        let id: Arc<str> = Arc::from(id);
        self.ids.push(id.clone());
        self.by_id.insert(id, k);
        k
    }
}

/// The process's id registry (one per exchange, in its shared state).
#[derive(Debug, Default)]
pub struct IdRegistry {
    inner: Mutex<(Interner, Interner)>,
}

impl IdRegistry {
    pub fn new() -> IdRegistry {
        IdRegistry::default()
    }

    /// Gives every buyer and seller of `cfg` its stable key (new ids get new numbers) and
    /// rebuilds the config's key indices. All or nothing: if the new ids would pass
    /// [`KEYS_MAX`], nothing is interned and `cfg` is unchanged.
    pub fn assign(&self, cfg: &mut Config) -> Result<(), KeysExhausted> {
        let mut g = self.inner.lock();
        let (buyers, sellers) = &mut *g;
        let new_buyers = buyers.new_count(cfg.buyers.iter().map(|b| b.id.as_str()));
        if buyers.ids.len() + new_buyers > KEYS_MAX {
            return Err(KeysExhausted { kind: "buyer" });
        }
        let new_sellers = sellers.new_count(cfg.sellers.iter().map(|s| s.id.as_str()));
        if sellers.ids.len() + new_sellers > KEYS_MAX {
            return Err(KeysExhausted { kind: "seller" });
        }
        cfg.set_keys(
            |id| BuyerKey(buyers.intern(id)),
            |id| SellerKey(sellers.intern(id)),
        );
        Ok(())
    }

    /// The key of buyer `id`, if any configuration so far had it.
    pub fn buyer_key(&self, id: &str) -> Option<BuyerKey> {
        self.inner.lock().0.get(id).map(BuyerKey)
    }

    /// The key of buyer `id`, giving it one if it has none yet, though no configuration
    /// has it: recovery keys every buyer its ledger counts against, so a buyer missing
    /// from the configuration at a restart keeps its counts for when a reload brings it
    /// back. `None` (nothing interned) when a new key would pass [`KEYS_MAX`].
    pub fn intern_buyer(&self, id: &str) -> Option<BuyerKey> {
        let mut g = self.inner.lock();
        let buyers = &mut g.0;
        if buyers.get(id).is_none() && buyers.ids.len() >= KEYS_MAX {
            return None;
        }
        Some(BuyerKey(buyers.intern(id)))
    }

    /// The key of seller `id`, if any configuration so far had it.
    pub fn seller_key(&self, id: &str) -> Option<SellerKey> {
        self.inner.lock().1.get(id).map(SellerKey)
    }

    /// The key of seller `id`, giving it one if it has none yet, though no configuration
    /// has it: recovery keys the idempotency keys and finished posts of every seller its
    /// ledger names, so a seller missing from the configuration at a restart finds them
    /// when a reload brings it back. `None` (nothing interned) past [`KEYS_MAX`].
    pub fn intern_seller(&self, id: &str) -> Option<SellerKey> {
        let mut g = self.inner.lock();
        let sellers = &mut g.1;
        if sellers.get(id).is_none() && sellers.ids.len() >= KEYS_MAX {
            return None;
        }
        Some(SellerKey(sellers.intern(id)))
    }

    /// The id that has buyer key `key` (for records about a buyer no longer configured).
    pub fn buyer_id(&self, key: BuyerKey) -> Option<Arc<str>> {
        self.inner.lock().0.ids.get(key.slot()).cloned()
    }

    /// How many buyer keys exist (every per-buyer table needs this many slots).
    pub fn buyer_count(&self) -> usize {
        self.inner.lock().0.ids.len()
    }

    /// How many seller keys exist.
    pub fn seller_count(&self) -> usize {
        self.inner.lock().1.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{buyer, config_with as config};

    #[test]
    fn keys_follow_ids_across_reorders_and_are_never_reused() {
        let reg = IdRegistry::new();
        let mut a = config(vec![buyer(0), buyer(1), buyer(2)]);
        reg.assign(&mut a).unwrap();
        let key = |c: &Config, id: &str| c.buyers.iter().find(|b| b.id == id).unwrap().key;
        let (k0, k1, k2) = (key(&a, "b0"), key(&a, "b1"), key(&a, "b2"));
        // Reordered, b1 removed, b3 added.
        let mut b = config(vec![buyer(2), buyer(3), buyer(0)]);
        reg.assign(&mut b).unwrap();
        assert_eq!(key(&b, "b2"), k2);
        assert_eq!(key(&b, "b0"), k0);
        let k3 = key(&b, "b3");
        assert!(![k0, k1, k2].contains(&k3), "a new id gets a new key");
        assert_eq!(b.buyer_by_key(k2).unwrap().1.id, "b2");
        assert!(b.buyer_by_key(k1).is_none());
        // b1 comes back: its old key.
        let mut c = config(vec![buyer(1)]);
        reg.assign(&mut c).unwrap();
        assert_eq!(key(&c, "b1"), k1);
        assert_eq!(reg.buyer_count(), 4);
        assert_eq!(reg.buyer_id(k3).as_deref(), Some("b3"));
    }

    #[test]
    fn a_buyer_keyed_before_it_is_configured_keeps_its_key() {
        let reg = IdRegistry::new();
        let mut a = config(vec![buyer(0)]);
        reg.assign(&mut a).unwrap();
        let gone = reg.intern_buyer("b1").unwrap();
        assert_eq!(reg.intern_buyer("b1"), Some(gone));
        assert_eq!(reg.buyer_key("b1"), Some(gone));
        let mut b = config(vec![buyer(1), buyer(0)]);
        reg.assign(&mut b).unwrap();
        assert_eq!(b.buyers.iter().find(|x| x.id == "b1").unwrap().key, gone);
        assert_eq!(reg.buyer_count(), 2);
    }
}
