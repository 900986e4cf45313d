//! A fixed-size set of small integers (a buyer's position in one vertical's list), one bit
//! each: the eligibility index intersects whole filters a word (64 buyers) at a time.
//!
//! Never: grows after it is made, or panics on a position past its size (such a bit is
//! simply not there).

/// Bits per word.
const WORD: usize = 64;

/// A set of positions `0..len`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BitSet {
    words: Vec<u64>,
    len: usize,
}

impl BitSet {
    /// The empty set of positions `0..len`.
    pub fn new(len: usize) -> BitSet {
        BitSet {
            words: vec![0; len.div_ceil(WORD)],
            len,
        }
    }

    /// Every position `0..len`.
    pub fn full(len: usize) -> BitSet {
        let mut s = BitSet::new(len);
        for i in 0..len {
            s.insert(i);
        }
        s
    }

    /// How many positions the set can hold.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Adds `i` (ignored past the size).
    pub fn insert(&mut self, i: usize) {
        if i < self.len {
            if let Some(w) = self.words.get_mut(i / WORD) {
                *w |= 1u64 << (i % WORD);
            }
        }
    }

    /// Is `i` in the set?
    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / WORD)
            .is_some_and(|w| w & (1u64 << (i % WORD)) != 0)
    }

    /// How many positions are in the set.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Is the set empty?
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// `self = self | other` (sizes are the same; extra words of `other` are ignored).
    pub fn union_with(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    /// `self = self & other`.
    pub fn intersect_with(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= *b;
        }
    }

    /// `self = self & !other`.
    pub fn difference_with(&mut self, other: &BitSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !*b;
        }
    }

    /// The positions in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * WORD + bit)
            })
        })
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_and_ascending_iteration() {
        let mut a = BitSet::new(130);
        for i in [0, 63, 64, 129, 500] {
            a.insert(i);
        }
        assert_eq!(a.iter().collect::<Vec<_>>(), [0, 63, 64, 129]);
        assert_eq!(a.count(), 4);
        assert!(!a.contains(500) && a.contains(129));
        let mut b = BitSet::full(130);
        assert_eq!(b.count(), 130);
        b.difference_with(&a);
        assert_eq!(b.count(), 126);
        assert!(!b.contains(63));
        let mut c = a.clone();
        c.intersect_with(&b);
        assert!(c.is_empty());
        c.union_with(&a);
        assert_eq!(c, a);
        assert!(BitSet::new(0).is_empty());
        assert_eq!(BitSet::new(0).iter().count(), 0);
    }
}
