//! De-duplication: a consumer sold once is not sold again within its vertical's window.
//!
//! A lead is known by its dedup keys: the seller's hashes in a ping's `dedup` map (the
//! keys its vertical names, such as `phone_sha256`) and, at a post, the same hashes made
//! from the posted lead's own fields. The shell turns each into a [`DedupKey`], a keyed
//! digest (HMAC under the exchange's fingerprint key, scoped to the vertical and the key
//! name), so this book never holds a hash an outsider could test a phone number against.
//!
//! The book remembers when each key was last sold and which keys a post is delivering
//! now. Its rules:
//! - a ping or direct post whose keys include one sold within the vertical's window is a
//!   duplicate ([`DedupBook::sold_within`]): no buyer is pinged;
//! - a post claims its keys before its lead leaves ([`DedupBook::begin_post`]): one sold
//!   within the window makes it a duplicate, one another post is delivering now makes it
//!   wait (the shell answers `409`, and the quote stays open); the claim ends with the
//!   post ([`DedupBook::end_post`]), a sale stamping its keys.
//!
//! Bounded: at most `keys_max` keys; past it the oldest sold keys are forgotten first
//! (counted in [`DedupBook::evicted`]), and keys older than the longest window are
//! dropped as time passes. Sales read back from the ledger at a start come in through
//! [`DedupBook::restore`].

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use crate::config::SellerKey;
use crate::UnixMs;

/// A dedup key as the book holds it: 128 bits of a keyed digest.
pub type DedupKey = [u8; 16];

/// Milliseconds in a day (windows are configured in days).
pub const DAY_MS: u64 = 86_400_000;

/// `[verticals.NAME.dedup]`: how a vertical's leads are de-duplicated (the keys that
/// identify a consumer are the vertical's `dedup_keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// A lead sold less than this long ago makes another with one of its keys a
    /// duplicate.
    pub window_ms: u64,
    /// Whether a ping (or a direct post before its auction) is answered `duplicate` for
    /// a consumer another seller sold (`ping_scope = "all"`). Otherwise (`"seller"`, the
    /// default) only for the seller's own sales: another seller's are found at the post,
    /// so no seller can test guessed phone numbers against the exchange's sales for free.
    pub ping_scope_all: bool,
}

/// `[suppression]`: the consumers no lead of is ever sold (a do-not-contact list), as
/// the SHA-256 of each one's normalized phone or e-mail address (the hashes of the
/// vertical's `dedup_keys`).
#[derive(Clone, Default)]
pub struct Suppression {
    hashes: std::collections::HashSet<[u8; 32]>,
    /// The file it was read from.
    pub path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Suppression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suppression")
            .field("path", &self.path)
            .field("hashes", &self.hashes.len())
            .finish()
    }
}

impl Suppression {
    pub fn new(hashes: std::collections::HashSet<[u8; 32]>, path: std::path::PathBuf) -> Self {
        Suppression {
            hashes,
            path: Some(path),
        }
    }

    /// Whether a list is configured (an empty file counts: it is on, listing nobody).
    pub fn is_on(&self) -> bool {
        self.path.is_some()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether one of `hashes` is listed.
    pub fn lists_any(&self, hashes: &[[u8; 32]]) -> bool {
        hashes.iter().any(|h| self.hashes.contains(h))
    }
}

/// One dedup key: the name a seller's `dedup` map gives its hash, and the lead field a
/// post's own hash is made from (`None`: the seller's hash only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKeySpec {
    pub name: String,
    pub field: Option<String>,
}

/// Why a post may not claim its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// One of them was sold within the window: the lead is a duplicate.
    Sold,
    /// Another post is delivering a lead with one of them now.
    Posting,
}

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    sold_at: Option<UnixMs>,
    /// Posts delivering a lead with this key now.
    posting: u32,
    /// The seller of the latest sale (`u32::MAX`: one the exchange does not know).
    seller: u32,
}

/// A sale of a lead: when, and by which seller.
pub type Sold = (UnixMs, SellerKey);

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<DedupKey, Entry>,
    /// Sold keys by when they were stamped, oldest first (a key stamped again has a stale
    /// pair here, skipped when it comes up).
    order: VecDeque<(UnixMs, DedupKey)>,
    evicted: u64,
    /// How long a sale is kept: the longest window of any vertical.
    keep_ms: u64,
}

/// The keys sold recently and the keys being posted (safe to share between tasks).
#[derive(Debug)]
pub struct DedupBook {
    inner: Mutex<Inner>,
    keys_max: usize,
}

/// Whether a key stamped at `sold_at` is still inside a window of `window_ms` at `now`.
fn within(sold_at: UnixMs, window_ms: u64, now: UnixMs) -> bool {
    let window = i64::try_from(window_ms).unwrap_or(i64::MAX);
    now.saturating_sub(sold_at) < window
}

impl DedupBook {
    /// An empty book holding at most `keys_max` keys (at least one), each sale for
    /// `keep_ms` (the longest window; see [`DedupBook::set_keep_ms`]).
    pub fn new(keys_max: usize, keep_ms: u64) -> DedupBook {
        DedupBook {
            inner: Mutex::new(Inner {
                keep_ms,
                ..Inner::default()
            }),
            keys_max: keys_max.max(1),
        }
    }

    /// How long a sale is kept from now on (a reload changed the longest window).
    pub fn set_keep_ms(&self, keep_ms: u64) {
        self.inner.lock().keep_ms = keep_ms;
    }

    /// Keys held now (sold or being posted).
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sold keys forgotten before their window ended because the book was full.
    pub fn evicted(&self) -> u64 {
        self.inner.lock().evicted
    }

    /// Whether one of `keys` was sold less than `window_ms` before `now`: by `seller`,
    /// or by anyone when `seller` is `None`.
    pub fn sold_within(
        &self,
        keys: &[DedupKey],
        window_ms: u64,
        now: UnixMs,
        seller: Option<SellerKey>,
    ) -> bool {
        if keys.is_empty() || window_ms == 0 {
            return false;
        }
        let inner = self.inner.lock();
        keys.iter().any(|k| {
            inner.entries.get(k).is_some_and(|e| {
                e.sold_at.is_some_and(|at| within(at, window_ms, now))
                    && seller.is_none_or(|s| s.0 == e.seller)
            })
        })
    }

    /// Claims `keys` for a post about to deliver its lead. Refused, claiming nothing,
    /// when one was sold within `window_ms` ([`Seen::Sold`]) or another post holds one
    /// ([`Seen::Posting`]). Every successful claim is ended by [`DedupBook::end_post`]
    /// with the same keys.
    /// With a window of 0 (a reload turned it off) nothing is sold, but the keys are
    /// still claimed: claims and ends always pair.
    pub fn begin_post(&self, keys: &[DedupKey], window_ms: u64, now: UnixMs) -> Result<(), Seen> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        let mut posting = false;
        for k in keys {
            if let Some(e) = inner.entries.get(k) {
                if e.sold_at.is_some_and(|at| within(at, window_ms, now)) {
                    return Err(Seen::Sold);
                }
                posting |= e.posting > 0;
            }
        }
        if posting {
            return Err(Seen::Posting);
        }
        self.prune(&mut inner, now);
        for k in keys {
            let e = inner.entries.entry(*k).or_default();
            e.posting = e.posting.saturating_add(1);
        }
        self.evict(&mut inner);
        Ok(())
    }

    /// Ends a claim of [`DedupBook::begin_post`]: with `sold` the lead sold then, by that
    /// seller, and its keys are stamped; without, they are let go. Sales older than the
    /// longest window are dropped.
    pub fn end_post(&self, keys: &[DedupKey], sold: Option<Sold>, now: UnixMs) {
        if keys.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for k in keys {
            let remove = match inner.entries.get_mut(k) {
                Some(e) => {
                    e.posting = e.posting.saturating_sub(1);
                    e.posting == 0 && e.sold_at.is_none() && sold.is_none()
                }
                None => false,
            };
            if remove {
                inner.entries.remove(k);
            }
        }
        if let Some(sale) = sold {
            Self::stamp(&mut inner, keys, sale);
        }
        self.prune(&mut inner, now);
    }

    /// Claims `keys` once more for a post already holding them: a buyer that timed out
    /// is still heard out and may yet accept, so no other post may deliver the consumer
    /// meanwhile. Ended by [`DedupBook::end_post`] like any claim.
    pub fn hold(&self, keys: &[DedupKey]) {
        if keys.is_empty() {
            return;
        }
        let mut inner = self.inner.lock();
        for k in keys {
            let e = inner.entries.entry(*k).or_default();
            e.posting = e.posting.saturating_add(1);
        }
    }

    /// A sale of a lead with `keys` at `at`, read back from the ledger at a start (or a
    /// buyer that accepted a post after its timeout): its keys are stamped, unless the
    /// sale is older than the longest window.
    pub fn restore(&self, keys: &[DedupKey], sold: Sold, now: UnixMs) {
        let mut inner = self.inner.lock();
        if keys.is_empty() || !within(sold.0, inner.keep_ms, now) {
            return;
        }
        Self::stamp(&mut inner, keys, sold);
        self.prune(&mut inner, now);
    }

    fn stamp(inner: &mut Inner, keys: &[DedupKey], (at, seller): Sold) {
        for k in keys {
            let e = inner.entries.entry(*k).or_default();
            // The latest sale counts (a restore may come in any order).
            if e.sold_at.is_none_or(|t| t < at) {
                e.sold_at = Some(at);
                e.seller = seller.0;
                inner.order.push_back((at, *k));
            }
        }
    }

    /// Drops sold keys older than the longest window, then the oldest sold keys while
    /// the book holds more than `keys_max`.
    fn prune(&self, inner: &mut Inner, now: UnixMs) {
        while let Some(&(at, k)) = inner.order.front() {
            if within(at, inner.keep_ms, now) {
                break;
            }
            inner.order.pop_front();
            Self::forget(inner, k, at);
        }
        self.evict(inner);
    }

    fn evict(&self, inner: &mut Inner) {
        while inner.entries.len() > self.keys_max {
            let Some((at, k)) = inner.order.pop_front() else {
                break;
            };
            if Self::forget(inner, k, at) {
                inner.evicted += 1;
            }
        }
        // Stale pairs (keys stamped again) are bounded by the keys held.
        if inner.order.len() > self.keys_max.saturating_mul(2) {
            let entries = &inner.entries;
            inner
                .order
                .retain(|(at, k)| entries.get(k).is_some_and(|e| e.sold_at == Some(*at)));
        }
    }

    /// Forgets `k`'s sale stamped at `at` (not a later one); a key still being posted
    /// stays as that. Whether a sale was forgotten.
    fn forget(inner: &mut Inner, k: DedupKey, at: UnixMs) -> bool {
        let Some(e) = inner.entries.get_mut(&k) else {
            return false;
        };
        if e.sold_at != Some(at) {
            return false;
        }
        e.sold_at = None;
        if e.posting == 0 {
            inner.entries.remove(&k);
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const WINDOW: u64 = 30 * DAY_MS;
    const T0: UnixMs = 1_800_000_000_000;

    const S: SellerKey = SellerKey(7);

    fn k(n: u8) -> DedupKey {
        [n; 16]
    }

    #[test]
    fn a_sold_key_is_a_duplicate_until_its_window_ends() {
        let book = DedupBook::new(100, WINDOW);
        assert!(!book.sold_within(&[k(1)], WINDOW, T0, None));
        book.begin_post(&[k(1), k(2)], WINDOW, T0).unwrap();
        book.end_post(&[k(1), k(2)], Some((T0, S)), T0);
        // Either key alone makes a duplicate; another does not.
        assert!(book.sold_within(&[k(2)], WINDOW, T0 + 1, None));
        assert!(book.sold_within(&[k(9), k(1)], WINDOW, T0 + 1, None));
        assert!(!book.sold_within(&[k(9)], WINDOW, T0 + 1, None));
        let last = T0 + WINDOW as i64 - 1;
        assert!(book.sold_within(&[k(1)], WINDOW, last, None));
        assert!(!book.sold_within(&[k(1)], WINDOW, last + 1, None));
        // Scoped to a seller: its own sales only.
        assert!(book.sold_within(&[k(1)], WINDOW, T0 + 1, Some(S)));
        assert!(!book.sold_within(&[k(1)], WINDOW, T0 + 1, Some(SellerKey(8))));
        // A shorter window (a reload) counts from the same sale.
        assert!(!book.sold_within(&[k(1)], DAY_MS, T0 + DAY_MS as i64, None));
        assert_eq!(
            book.begin_post(&[k(1)], WINDOW, last),
            Err(Seen::Sold),
            "a post is refused the same way"
        );
        assert_eq!(book.begin_post(&[k(1)], WINDOW, last + 1), Ok(()));
        // A window of 0 is off: nothing is sold, but a post's claim still holds.
        book.restore(&[k(3)], (last, S), last + 1);
        assert!(!book.sold_within(&[k(3)], 0, last + 1, None));
        book.begin_post(&[k(3)], 0, last + 1).unwrap();
        assert_eq!(book.begin_post(&[k(3)], 0, last + 1), Err(Seen::Posting));
        book.end_post(&[k(3)], None, last + 2);
        assert!(
            book.sold_within(&[k(3)], WINDOW, last + 2, None),
            "its sale stays"
        );
    }

    #[test]
    fn a_post_in_flight_holds_its_keys_and_an_unsold_post_lets_them_go() {
        let book = DedupBook::new(100, WINDOW);
        book.begin_post(&[k(1)], WINDOW, T0).unwrap();
        assert_eq!(
            book.begin_post(&[k(2), k(1)], WINDOW, T0),
            Err(Seen::Posting)
        );
        // The refused claim took nothing: k(2) is free.
        book.begin_post(&[k(2)], WINDOW, T0).unwrap();
        // A key being posted is not a duplicate of a ping.
        assert!(!book.sold_within(&[k(1)], WINDOW, T0, None));
        book.end_post(&[k(1)], None, T0 + 5);
        assert_eq!(book.len(), 1, "only k(2), still being posted");
        book.begin_post(&[k(1)], WINDOW, T0 + 6).unwrap();
        book.end_post(&[k(1)], None, T0 + 7);
        book.end_post(&[k(2)], None, T0 + 7);
        assert!(book.is_empty());
    }

    #[test]
    fn a_held_claim_outlives_its_post_until_it_ends_too() {
        let book = DedupBook::new(100, WINDOW);
        book.begin_post(&[k(1)], WINDOW, T0).unwrap();
        // The post timed out on a buyer still heard out: the claim is held for it.
        book.hold(&[k(1)]);
        book.end_post(&[k(1)], None, T0 + 1);
        assert_eq!(book.begin_post(&[k(1)], WINDOW, T0 + 2), Err(Seen::Posting));
        // The late buyer accepts: the consumer is sold.
        book.end_post(&[k(1)], Some((T0 + 3, S)), T0 + 3);
        assert_eq!(book.begin_post(&[k(1)], WINDOW, T0 + 4), Err(Seen::Sold));
        // Or it does not: the consumer is free.
        book.begin_post(&[k(2)], WINDOW, T0).unwrap();
        book.hold(&[k(2)]);
        book.end_post(&[k(2)], None, T0 + 1);
        book.end_post(&[k(2)], None, T0 + 2);
        assert_eq!(book.begin_post(&[k(2)], WINDOW, T0 + 3), Ok(()));
    }

    #[test]
    fn a_sale_while_another_key_is_posted_keeps_both_rules() {
        let book = DedupBook::new(100, WINDOW);
        book.begin_post(&[k(1)], WINDOW, T0).unwrap();
        // A late accept of an earlier post stamps k(1) while it is being posted again.
        book.restore(&[k(1)], (T0, S), T0);
        assert!(book.sold_within(&[k(1)], WINDOW, T0 + 1, None));
        book.end_post(&[k(1)], None, T0 + 2);
        assert!(
            book.sold_within(&[k(1)], WINDOW, T0 + 3, None),
            "the sale stays"
        );
    }

    #[test]
    fn old_sales_are_dropped_and_a_full_book_forgets_the_oldest_first() {
        let book = DedupBook::new(3, WINDOW);
        for (i, n) in [1u8, 2, 3].iter().enumerate() {
            book.restore(&[k(*n)], (T0 + i as i64, S), T0 + 10);
        }
        assert_eq!(book.len(), 3);
        book.restore(&[k(4)], (T0 + 3, S), T0 + 10);
        assert_eq!(book.len(), 3);
        assert_eq!(book.evicted(), 1);
        assert!(
            !book.sold_within(&[k(1)], WINDOW, T0 + 10, None),
            "the oldest went"
        );
        assert!(book.sold_within(&[k(2), k(4)], WINDOW, T0 + 10, None));
        // A sale older than the longest window is not restored; time drops the rest.
        book.restore(&[k(5)], (T0 - WINDOW as i64, S), T0 + 10);
        assert!(!book.sold_within(&[k(5)], WINDOW, T0 + 10, None));
        let later = T0 + WINDOW as i64 + 2;
        book.begin_post(&[k(6)], WINDOW, later).unwrap();
        book.end_post(&[k(6)], Some((later, S)), later);
        assert_eq!(book.len(), 2, "k(2) and k(3) expired; k(4) and k(6) stay");
        assert!(book.sold_within(&[k(4)], WINDOW, later, None));
        assert_eq!(book.evicted(), 1, "expiry is not eviction");
    }

    #[test]
    fn keys_being_posted_count_toward_the_bound_but_are_never_evicted() {
        let book = DedupBook::new(2, WINDOW);
        book.begin_post(&[k(1), k(2)], WINDOW, T0).unwrap();
        book.begin_post(&[k(3)], WINDOW, T0).unwrap();
        // Over the bound with nothing sold: nothing to forget, the claims hold.
        assert_eq!(book.len(), 3);
        assert_eq!(book.begin_post(&[k(3)], WINDOW, T0), Err(Seen::Posting));
        book.end_post(&[k(1), k(2)], Some((T0 + 1, S)), T0 + 1);
        book.end_post(&[k(3)], None, T0 + 2);
        assert!(book.len() <= 2);
    }

    #[test]
    fn restored_sales_in_any_order_keep_the_latest() {
        let book = DedupBook::new(100, WINDOW);
        book.restore(&[k(1)], (T0 + 100, S), T0 + 100);
        book.restore(&[k(1)], (T0, S), T0 + 100);
        let end = T0 + 100 + WINDOW as i64 - 1;
        assert!(book.sold_within(&[k(1)], WINDOW, end, None));
    }
}
