//! A grow-only table indexed by a stable key, read without a lock.
//!
//! Owns: per-key slots (a buyer's caps, a buyer's breaker, a seller's rate bucket) that a
//! reload may add to but never moves or removes. Slots live in fixed chunks created on
//! demand, so a slot's address never changes and a read is two atomic loads (the length
//! and the chunk), never a lock: the hot path of a closed breaker stays one load more.
//!
//! Never: grows past [`SLOTS_MAX`] (the id registry's bound) or hands out a slot twice
//! for two keys.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::ids::KEYS_MAX;

/// Slots per chunk.
const CHUNK: usize = 256;
/// Chunks in a table: enough for every key the registry can hand out.
const CHUNKS: usize = KEYS_MAX.div_ceil(CHUNK);
/// The most slots a table holds.
pub const SLOTS_MAX: usize = CHUNKS * CHUNK;

/// A grow-only table of `T`, indexed `0..len`.
pub struct Slots<T> {
    chunks: Box<[OnceLock<Box<[T]>>]>,
    /// Slots `0..len` exist (their chunks are set before `len` is raised).
    len: AtomicUsize,
}

impl<T> std::fmt::Debug for Slots<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").field("len", &self.len()).finish()
    }
}

impl<T: Default> Slots<T> {
    /// A table with slots `0..len` (clamped to [`SLOTS_MAX`]).
    pub fn with_len(len: usize) -> Slots<T> {
        let s = Slots {
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
        };
        s.grow(len);
        s
    }

    /// Makes slots `0..len` exist (default values); never shrinks. Concurrent calls are
    /// safe: a chunk is created once.
    pub fn grow(&self, len: usize) {
        let len = len.min(SLOTS_MAX);
        for c in 0..len.div_ceil(CHUNK) {
            if let Some(chunk) = self.chunks.get(c) {
                chunk.get_or_init(|| (0..CHUNK).map(|_| T::default()).collect());
            }
        }
        self.len.fetch_max(len, Ordering::AcqRel);
    }
}

impl<T> Slots<T> {
    /// The slot of `i`, if it exists.
    pub fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len.load(Ordering::Acquire) {
            return None;
        }
        self.chunks.get(i / CHUNK)?.get()?.get(i % CHUNK)
    }

    /// How many slots exist.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// No slot exists yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn grows_never_shrinks_and_keeps_values() {
        let s: Slots<AtomicU32> = Slots::with_len(3);
        assert_eq!(s.len(), 3);
        assert!(s.get(3).is_none());
        s.get(2).unwrap().store(7, Ordering::Relaxed);
        s.grow(CHUNK * 2 + 1);
        s.grow(1);
        assert_eq!(s.len(), CHUNK * 2 + 1);
        assert_eq!(s.get(2).unwrap().load(Ordering::Relaxed), 7);
        assert_eq!(s.get(CHUNK * 2).unwrap().load(Ordering::Relaxed), 0);
        s.grow(usize::MAX);
        assert_eq!(s.len(), SLOTS_MAX);
        assert!(s.get(SLOTS_MAX).is_none());
    }
}
