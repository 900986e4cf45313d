//! Compact forms of what the exchange keeps for a long time (the quote book's finished
//! pings and open quotes, P10): ids without a heap allocation, and shared strings.
//!
//! Owns: [`CompactId`], an id that is the exchange's own shape (a 3-byte prefix and 32
//! lower-case hex digits, `pg_0192…`) held in 19 bytes inline, any other id as a boxed
//! string; [`Interner`], one shared copy of each of a bounded set of strings (currencies,
//! vertical and buyer names, reasons).
//!
//! Never: changes an id or a string (the compact form gives back the same bytes), or grows
//! the interner past its bound (past it, strings are copied, not shared).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

/// Hex digits in an id of the exchange's own shape.
const HEX_DIGITS: usize = 32;
/// Bytes of the prefix before them (`pg_`, `au_`, `ld_`).
const PREFIX_LEN: usize = 3;

/// An id, kept without a heap allocation when it has the exchange's own shape
/// (`new_id`: a 3-byte ASCII prefix and a UUID as 32 lower-case hex digits). Any other
/// string (a seller's made-up id, an id from another version's ledger) is kept as it is.
/// Two ids are equal exactly when their strings are (their order is not the strings').
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CompactId {
    /// The prefix and the 16 bytes the hex digits spell.
    Hex([u8; PREFIX_LEN], [u8; 16]),
    /// Any other id.
    Other(Box<str>),
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl CompactId {
    /// The id of `s`.
    pub fn new(s: &str) -> CompactId {
        Self::hex(s).unwrap_or_else(|| CompactId::Other(s.into()))
    }

    fn hex(s: &str) -> Option<CompactId> {
        let b = s.as_bytes();
        if b.len() != PREFIX_LEN + HEX_DIGITS {
            return None;
        }
        let (prefix, digits) = b.split_at(PREFIX_LEN);
        if !prefix.is_ascii() {
            return None;
        }
        let mut raw = [0u8; 16];
        for (out, pair) in raw.iter_mut().zip(digits.chunks_exact(2)) {
            *out = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(CompactId::Hex(prefix.try_into().ok()?, raw))
    }

    /// Appends the id's string to `out`.
    pub fn push_to(&self, out: &mut String) {
        match self {
            CompactId::Hex(prefix, raw) => {
                out.reserve(PREFIX_LEN + HEX_DIGITS);
                // The prefix was ASCII when it was read.
                out.extend(prefix.iter().map(|&c| char::from(c)));
                for b in raw {
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
            CompactId::Other(s) => out.push_str(s),
        }
    }

    /// The id's string.
    pub fn to_string_exact(&self) -> String {
        let mut s = String::with_capacity(PREFIX_LEN + HEX_DIGITS);
        self.push_to(&mut s);
        s
    }

    /// True when this is the id of `s`.
    pub fn is(&self, s: &str) -> bool {
        match self {
            CompactId::Other(o) => &**o == s,
            hex => CompactId::hex(s).as_ref() == Some(hex),
        }
    }
}

impl fmt::Debug for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string_exact())
    }
}

impl fmt::Display for CompactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_exact())
    }
}

/// Most distinct strings an [`Interner`] shares by default.
pub const INTERNED_MAX_DEFAULT: usize = 4_096;

/// One shared copy of each string asked for, up to a bound: a thousand answers that name
/// the same buyer hold one copy of its name. Past the bound a string is copied (correct,
/// only less compact), so strings that come from outside cannot grow it without limit.
#[derive(Debug)]
pub struct Interner {
    set: Mutex<HashSet<Arc<str>>>,
    max: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Interner::new(INTERNED_MAX_DEFAULT)
    }
}

impl Interner {
    /// An interner sharing at most `max` distinct strings.
    pub fn new(max: usize) -> Interner {
        Interner {
            set: Mutex::new(HashSet::new()),
            max,
        }
    }

    /// `s`, shared with every other `intern` of the same string while the bound allows.
    pub fn intern(&self, s: &str) -> Arc<str> {
        let mut set = self.set.lock();
        if let Some(a) = set.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        if set.len() < self.max {
            set.insert(Arc::clone(&a));
        }
        a
    }

    /// Distinct strings shared now.
    pub fn len(&self) -> usize {
        self.set.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_exchanges_ids_are_inline_and_come_back_the_same() {
        for s in [
            "pg_0192f3a4b5c6d7e8f90123456789abcd",
            "au_00000000000000000000000000000000",
            "ld_ffffffffffffffffffffffffffffffff",
        ] {
            let id = CompactId::new(s);
            assert!(matches!(id, CompactId::Hex(..)), "{s}");
            assert_eq!(id.to_string_exact(), s);
            assert!(id.is(s));
        }
        assert!(std::mem::size_of::<CompactId>() <= 24);
    }

    #[test]
    fn other_ids_are_kept_as_they_are() {
        for s in [
            "",
            "p1",
            "pg_0192F3A4B5C6D7E8F90123456789ABCD", // upper case: not the canonical form
            "pg_0192f3a4b5c6d7e8f90123456789abc",  // one digit short
            "pg_0192f3a4b5c6d7e8f90123456789abcde", // one digit more
            "pg_0192f3a4b5c6d7e8f90123456789abcg",
            "é_0192f3a4b5c6d7e8f90123456789abc",
        ] {
            let id = CompactId::new(s);
            assert!(matches!(id, CompactId::Other(_)), "{s}");
            assert_eq!(id.to_string_exact(), s);
            assert!(id.is(s));
        }
        assert!(!CompactId::new("p1").is("p2"));
        assert!(!CompactId::new("pg_0192f3a4b5c6d7e8f90123456789abcd")
            .is("pg_0192f3a4b5c6d7e8f90123456789abce"));
    }

    #[test]
    fn the_interner_shares_up_to_its_bound() {
        let i = Interner::new(2);
        let a = i.intern("USD");
        assert!(Arc::ptr_eq(&a, &i.intern("USD")));
        let _ = i.intern("EUR");
        // Past the bound: a copy, equal but not shared, and the set does not grow.
        let c = i.intern("GBP");
        assert_eq!(&*c, "GBP");
        assert!(!Arc::ptr_eq(&c, &i.intern("GBP")));
        assert_eq!(i.len(), 2);
    }

    proptest! {
        /// Equal ids exactly when equal strings; every id gives its string back.
        #[test]
        fn ids_round_trip_and_compare_as_their_strings(
            a in prop_oneof!["pg_[0-9a-f]{32}", "pg_[0-9a-f]{30}[0-9a-fA-F]{2}", "(pg_|au_|p)[0-9a-fA-F]{0,34}"],
            b in prop_oneof!["pg_[0-9a-f]{32}", "pg_[0-9a-f]{30}[0-9a-fA-F]{2}", "(pg_|au_|p)[0-9a-fA-F]{0,34}"],
        ) {
            let (x, y) = (CompactId::new(&a), CompactId::new(&b));
            prop_assert_eq!(x.to_string_exact(), a.clone());
            prop_assert_eq!(x == y, a == b);
            prop_assert_eq!(x.is(&b), a == b);
            // The same string with its last digit changed is another id.
            let mut c = a.clone();
            let last = c.pop().map_or('0', |ch| if ch == '0' { '1' } else { '0' });
            c.push(last);
            prop_assert!(!x.is(&c));
            prop_assert!(CompactId::new(&c) != x);
        }
    }
}
