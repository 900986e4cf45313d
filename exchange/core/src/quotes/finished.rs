//! The quote book's finished entries (P10): a ring of `done_max` slots of
//! [`DONE_SLOT_BYTES`] each and an open-addressing index of slot numbers over it, both
//! allocated once when the book is made and never grown. Remembering a finished ping
//! writes a slot and an index cell; forgetting one (the ring goes round, or the TTL
//! passes) clears the cell. So after the first round (or from the start, after
//! [`Finished::prefault`]) the finished pings cost no new memory at all.
//!
//! Making a ring touches none of its pages: the slots are a vector's reserved capacity,
//! written in order as the ring first goes round (the allocator never writes what it
//! hands out), and the index is zeroed allocation, which the allocator takes from the OS
//! untouched (glibc's `calloc` clears memory it reuses from its own free lists: at most
//! the index, 4 to 8 bytes per slot, in a process that made and dropped books before).
//!
//! Owns: the slot layout, the index (a power of two of at least twice `done_max` cells,
//! linear probing, backward-shift deletion), the bounded table of the answers' strings
//! (currencies, buyer names, reasons) and the side table of what does not fit a slot.
//!
//! A slot holds the ping id of the exchange's shape (`pg_` and 32 lower-case hex digits:
//! its prefix and 16 raw bytes), the owner, the time it finished and, for a posted ping,
//! its answer: status, an `ld_`-shaped lead id as 16 raw bytes, the price in micros, and
//! the currency, buyer and reason as indexes into the string table. What does not fit (a
//! ping or lead id of another shape, `changed_fields`, a string past the table's bound,
//! an answer whose `ping_id` is not the key) is kept whole in the side table under the
//! slot's number and freed with the slot, so what is answered never depends on the shape.
//! An expired entry keeps no answer (the book builds the expired one when asked).
//!
//! Never: holds two entries for one ping id (the book checks before it pushes), gives an
//! entry to another seller, or allocates for a finished ping of the exchange's shape once
//! its strings are in the table.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::sync::Arc;

use proto::seller::{PostAnswer, PostStatus};
use proto::Micros;

use super::{DONE_SLOT_BYTES, SHARED_STRINGS_MAX, SHARED_STRING_LEN_MAX};
use crate::compact::CompactId;
use crate::config::SellerKey;
use crate::UnixMs;

/// Most slots a ring has (slot numbers are `u32`, the index's cells hold them plus one).
pub(super) const SLOTS_MAX: usize = 1 << 30;
/// Bytes written apart by [`Finished::prefault`] (the smallest page size it may meet).
const PAGE_BYTES: usize = 4_096;

// The slot's layout (little-endian).
/// The ping id's 16 raw bytes (an id of the exchange's shape).
const PING: usize = 0;
/// Its 3-byte prefix.
const PREFIX: usize = 16;
/// The answer's status ([`STATUSES`] index).
const STATUS: usize = 19;
/// [`ANSWER`], [`SIDE_KEY`], ...
const FLAGS: usize = 20;
/// The answer's currency, buyer and reason: `u16` string codes, 0 for none.
const CURRENCY: usize = 22;
/// The owner (`u32`).
const SELLER: usize = 24;
const BUYER: usize = 28;
const REASON: usize = 30;
/// When the entry finished (`i64`).
const AT: usize = 32;
/// The answer's price in micros (`i64`).
const PRICE: usize = 40;
/// The answer's `ld_` lead id, 16 raw bytes.
const LEAD: usize = 48;
const _: () = assert!(LEAD + 16 <= DONE_SLOT_BYTES && DONE_SLOT_BYTES <= 64);
// String codes are `u16`: index + 1.
const _: () = assert!(SHARED_STRINGS_MAX < u16::MAX as usize);

/// The entry has a posted answer (else it expired).
const ANSWER: u8 = 1;
/// The ping id is in the side table (not the exchange's shape).
const SIDE_KEY: u8 = 2;
/// The answer is in the side table, whole.
const SIDE_ANSWER: u8 = 4;
/// The answer's `ping_id` is the key (else none).
const ANSWER_PING: u8 = 8;
/// The answer has a lead id.
const HAS_LEAD: u8 = 16;
/// The answer has a price.
const HAS_PRICE: u8 = 32;

const STATUSES: [PostStatus; 6] = [
    PostStatus::Sold,
    PostStatus::Unsold,
    PostStatus::Expired,
    PostStatus::Mismatch,
    PostStatus::Duplicate,
    PostStatus::Suppressed,
];

fn status_code(s: PostStatus) -> u8 {
    match s {
        PostStatus::Sold => 0,
        PostStatus::Unsold => 1,
        PostStatus::Expired => 2,
        PostStatus::Mismatch => 3,
        PostStatus::Duplicate => 4,
        PostStatus::Suppressed => 5,
    }
}

/// `N` bytes of `b` from `at`.
fn bytes<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes(b, at))
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(bytes(b, at))
}

/// The answers' strings, each once, up to [`SHARED_STRINGS_MAX`] of at most
/// [`SHARED_STRING_LEN_MAX`] bytes; never shrinks, so a code stays valid.
#[derive(Debug, Default)]
struct Texts {
    codes: HashMap<Arc<str>, u16>,
    texts: Vec<Arc<str>>,
}

impl Texts {
    /// The code of `s` (0 for none), or `None` when it does not fit the table.
    fn code(&mut self, s: Option<&str>) -> Option<u16> {
        let Some(s) = s else { return Some(0) };
        if let Some(&c) = self.codes.get(s) {
            return Some(c);
        }
        if s.len() > SHARED_STRING_LEN_MAX || self.texts.len() >= SHARED_STRINGS_MAX {
            return None;
        }
        let text: Arc<str> = Arc::from(s);
        self.texts.push(Arc::clone(&text));
        let c = u16::try_from(self.texts.len()).ok()?;
        self.codes.insert(text, c);
        Some(c)
    }

    /// The string of `code` (none for 0).
    fn text(&self, code: u16) -> Option<String> {
        let i = usize::from(code).checked_sub(1)?;
        self.texts.get(i).map(|t| t.to_string())
    }
}

/// What a slot could not hold.
#[derive(Debug)]
struct Side {
    /// The ping id, when it is not of the exchange's shape.
    key: Option<CompactId>,
    /// The answer, whole, when it does not fit the slot.
    answer: Option<PostAnswer>,
}

/// A finished entry's answer.
#[derive(Debug)]
pub(super) enum Kept {
    /// It expired: the caller builds the expired answer.
    Expired,
    /// The first outcome of its post.
    Answer(PostAnswer),
}

/// The ring of finished entries; see the module doc.
pub(super) struct Finished {
    /// Room for `cap` slots, reserved; the slots written so far (the ring fills them in
    /// order, so slot `len()` is the next new one until the ring has gone round).
    slots: Vec<[u8; DONE_SLOT_BYTES]>,
    cap: usize,
    /// Slot number + 1, or 0 for an empty cell; `len` a power of two >= 2 x `cap`.
    index: Box<[u32]>,
    /// The slot of the oldest entry.
    head: usize,
    /// Entries held: slots `head, head + 1, ...` (mod `cap`).
    len: usize,
    /// By slot number: what its slot could not hold.
    side: HashMap<u32, Side>,
    texts: Texts,
    hasher: RandomState,
}

impl fmt::Debug for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finished")
            .field("cap", &self.cap())
            .field("len", &self.len)
            .field("index_cells", &self.index.len())
            .field("side", &self.side.len())
            .field("texts", &self.texts.texts.len())
            .finish()
    }
}

impl Finished {
    /// A ring of `cap` slots (at most [`SLOTS_MAX`]), its memory reserved but not
    /// touched (see the module doc).
    pub(super) fn new(cap: usize) -> Finished {
        let cap = cap.min(SLOTS_MAX);
        let cells = (cap * 2).next_power_of_two().max(2);
        Finished {
            slots: Vec::with_capacity(cap),
            cap,
            index: vec![0u32; cells].into_boxed_slice(),
            head: 0,
            len: 0,
            side: HashMap::new(),
            texts: Texts::default(),
            hasher: RandomState::new(),
        }
    }

    /// The same entries (the newest `cap` of them) in a ring of `cap` slots.
    pub(super) fn resized(self, cap: usize) -> Finished {
        let mut ring = Finished::new(cap);
        for k in self.len.saturating_sub(ring.cap())..self.len {
            let s = (self.head + k) % self.cap();
            let Some(key) = self.key(s) else { continue };
            let b = self.slot(s);
            let seller = SellerKey(u32::from_le_bytes(bytes(b, SELLER)));
            let at = read_i64(b, AT);
            let answer = match self.kept(s, &key) {
                Kept::Expired => None,
                Kept::Answer(a) => Some(a),
            };
            ring.push(&key, seller, at, answer);
        }
        ring
    }

    /// Slots.
    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Writes every page of the slots and the index, so the ring's memory is resident
    /// from now on and the entries it takes later add nothing. Keeps every entry.
    pub(super) fn prefault(&mut self) {
        // Slots never written are written now (as zeros: only held slots are read).
        self.slots.resize(self.cap, [0u8; DONE_SLOT_BYTES]);
        for i in (0..self.index.len()).step_by(PAGE_BYTES / 4) {
            // `black_box`: the compiler may not drop a store of the value just read.
            self.index[i] = black_box(self.index[i]);
        }
    }

    /// Slot `s`, written (every held entry's slot is).
    fn slot(&self, s: usize) -> &[u8] {
        &self.slots[s]
    }

    fn slot_number(s: usize) -> u32 {
        // `s < cap <= SLOTS_MAX < u32::MAX`.
        u32::try_from(s).unwrap_or(u32::MAX)
    }

    fn home(&self, key: &CompactId) -> usize {
        // Truncating the hash is intended: the mask keeps the low bits.
        (self.hasher.hash_one(key) as usize) & (self.index.len() - 1)
    }

    /// The ping id of slot `s`.
    fn key(&self, s: usize) -> Option<CompactId> {
        let b = self.slot(s);
        if b[FLAGS] & SIDE_KEY == 0 {
            return Some(CompactId::Hex(bytes(b, PREFIX), bytes(b, PING)));
        }
        self.side
            .get(&Self::slot_number(s))
            .and_then(|e| e.key.clone())
    }

    /// The index cell slot `s` hashes to first.
    fn slot_home(&self, s: usize) -> usize {
        let b = self.slot(s);
        if b[FLAGS] & SIDE_KEY == 0 {
            return self.home(&CompactId::Hex(bytes(b, PREFIX), bytes(b, PING)));
        }
        match self
            .side
            .get(&Self::slot_number(s))
            .and_then(|e| e.key.as_ref())
        {
            Some(k) => self.home(k),
            None => 0, // (a side key is there while its slot is held)
        }
    }

    fn key_is(&self, s: usize, key: &CompactId) -> bool {
        let b = self.slot(s);
        if b[FLAGS] & SIDE_KEY != 0 {
            return self
                .side
                .get(&Self::slot_number(s))
                .and_then(|e| e.key.as_ref())
                == Some(key);
        }
        match key {
            CompactId::Hex(prefix, raw) => {
                prefix[..] == b[PREFIX..PREFIX + 3] && raw[..] == b[PING..PING + 16]
            }
            CompactId::Other(_) => false,
        }
    }

    /// The slot holding `key`.
    fn find(&self, key: &CompactId) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        // At most half the cells are full: the probe meets an empty one.
        loop {
            let s = usize::try_from(self.index[i].checked_sub(1)?).ok()?;
            if self.key_is(s, key) {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// True when `key` has an entry.
    pub(super) fn contains(&self, key: &CompactId) -> bool {
        self.find(key).is_some()
    }

    /// The answer for `key` if it has an entry of `seller`.
    pub(super) fn get(&self, key: &CompactId, seller: SellerKey) -> Option<Kept> {
        let s = self.find(key)?;
        if u32::from_le_bytes(bytes(self.slot(s), SELLER)) != seller.0 {
            return None;
        }
        Some(self.kept(s, key))
    }

    fn kept(&self, s: usize, key: &CompactId) -> Kept {
        let b = self.slot(s);
        let flags = b[FLAGS];
        if flags & ANSWER == 0 {
            return Kept::Expired;
        }
        if flags & SIDE_ANSWER != 0 {
            return match self
                .side
                .get(&Self::slot_number(s))
                .and_then(|e| e.answer.clone())
            {
                Some(a) => Kept::Answer(a),
                None => Kept::Expired, // (a side answer is there while its slot is held)
            };
        }
        let status = STATUSES
            .get(usize::from(b[STATUS]))
            .copied()
            .unwrap_or(PostStatus::Unsold);
        Kept::Answer(PostAnswer {
            status,
            lead_id: (flags & HAS_LEAD != 0)
                .then(|| CompactId::Hex(*b"ld_", bytes(b, LEAD)).to_string_exact()),
            ping_id: (flags & ANSWER_PING != 0).then(|| key.to_string_exact()),
            price: (flags & HAS_PRICE != 0).then(|| Micros(read_i64(b, PRICE))),
            currency: self.texts.text(read_u16(b, CURRENCY)),
            buyer: self.texts.text(read_u16(b, BUYER)),
            reason: self.texts.text(read_u16(b, REASON)),
            changed_fields: Vec::new(),
        })
    }

    /// Writes `a` into the slot bytes `b` and returns its flags, or `None` (nothing
    /// written that matters) when it does not fit.
    fn compact(&mut self, a: &PostAnswer, key: &CompactId, b: &mut [u8]) -> Option<u8> {
        if !a.changed_fields.is_empty() {
            return None;
        }
        let mut flags = ANSWER;
        match &a.ping_id {
            None => {}
            Some(p) if key.is(p) => flags |= ANSWER_PING,
            Some(_) => return None,
        }
        if let Some(l) = &a.lead_id {
            match CompactId::new(l) {
                CompactId::Hex(prefix, raw) if &prefix == b"ld_" => {
                    b[LEAD..LEAD + 16].copy_from_slice(&raw);
                    flags |= HAS_LEAD;
                }
                _ => return None,
            }
        }
        if let Some(p) = a.price {
            b[PRICE..PRICE + 8].copy_from_slice(&p.0.to_le_bytes());
            flags |= HAS_PRICE;
        }
        for (at, s) in [
            (CURRENCY, &a.currency),
            (BUYER, &a.buyer),
            (REASON, &a.reason),
        ] {
            let code = self.texts.code(s.as_deref())?;
            b[at..at + 2].copy_from_slice(&code.to_le_bytes());
        }
        b[STATUS] = status_code(a.status);
        Some(flags)
    }

    /// Remembers `key` of `seller` as finished at `at` with `answer` (`None`: it expired),
    /// forgetting the oldest entry when the ring is full. `key` must have no entry. With
    /// no slots, nothing is remembered.
    pub(super) fn push(
        &mut self,
        key: &CompactId,
        seller: SellerKey,
        at: UnixMs,
        answer: Option<PostAnswer>,
    ) {
        let cap = self.cap();
        if cap == 0 {
            return;
        }
        if self.len == cap {
            self.forget_oldest();
        }
        let s = (self.head + self.len) % cap;
        let mut b = [0u8; DONE_SLOT_BYTES];
        let mut side = Side {
            key: None,
            answer: None,
        };
        let mut flags = 0;
        match key {
            CompactId::Hex(prefix, raw) => {
                b[PING..PING + 16].copy_from_slice(raw);
                b[PREFIX..PREFIX + 3].copy_from_slice(prefix);
            }
            CompactId::Other(_) => {
                flags |= SIDE_KEY;
                side.key = Some(key.clone());
            }
        }
        b[SELLER..SELLER + 4].copy_from_slice(&seller.0.to_le_bytes());
        b[AT..AT + 8].copy_from_slice(&at.to_le_bytes());
        if let Some(a) = answer {
            match self.compact(&a, key, &mut b) {
                Some(f) => flags |= f,
                None => {
                    flags |= ANSWER | SIDE_ANSWER;
                    side.answer = Some(a);
                }
            }
        }
        b[FLAGS] = flags;
        // `s` is the slot after the last one written (mod `cap`): new until the ring has
        // gone round once, then the one just forgotten.
        match self.slots.get_mut(s) {
            Some(slot) => *slot = b,
            None => self.slots.push(b),
        }
        if side.key.is_some() || side.answer.is_some() {
            self.side.insert(Self::slot_number(s), side);
        }
        let mask = self.index.len() - 1;
        let mut i = self.home(key);
        while self.index[i] != 0 {
            i = (i + 1) & mask;
        }
        self.index[i] = Self::slot_number(s) + 1;
        self.len += 1;
    }

    /// Forgets the oldest entry: its index cell (shifting the cells after it back, so
    /// every probe still meets its key before an empty cell) and its side entry.
    fn forget_oldest(&mut self) {
        if self.len == 0 {
            return;
        }
        let s = self.head;
        let mask = self.index.len() - 1;
        let cell = Self::slot_number(s) + 1;
        let mut i = self.slot_home(s);
        while self.index[i] != cell {
            if self.index[i] == 0 {
                break; // (cannot happen: a held slot is indexed)
            }
            i = (i + 1) & mask;
        }
        if self.index[i] == cell {
            let mut j = i;
            loop {
                j = (j + 1) & mask;
                let Some(t) = self.index[j].checked_sub(1) else {
                    break;
                };
                let home = self.slot_home(t as usize);
                // The cell at `j` may move back to `i` unless its home is in `(i, j]`.
                let stays = if i <= j {
                    i < home && home <= j
                } else {
                    i < home || home <= j
                };
                if !stays {
                    self.index[i] = self.index[j];
                    i = j;
                }
            }
            self.index[i] = 0;
        }
        if self.slot(s)[FLAGS] & (SIDE_KEY | SIDE_ANSWER) != 0 {
            self.side.remove(&Self::slot_number(s));
        }
        self.head = (self.head + 1) % self.cap();
        self.len -= 1;
    }

    /// Forgets, oldest first, up to `most` entries that finished `ttl_ms` or more before
    /// `now`, stopping at the first younger one. True when it stopped at `most`.
    pub(super) fn forget_older(&mut self, now: UnixMs, ttl_ms: i64, most: usize) -> bool {
        for _ in 0..most {
            if self.len == 0 || now.saturating_sub(read_i64(self.slot(self.head), AT)) < ttl_ms {
                return false;
            }
            self.forget_oldest();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(prefix: &str, i: u32) -> String {
        format!("{prefix}{i:032x}")
    }

    /// Every held entry is found, and every cell's entry is reachable from its home.
    fn check(ring: &Finished) {
        let mut cells = 0;
        for k in 0..ring.len {
            let s = (ring.head + k) % ring.cap();
            let key = ring.key(s).unwrap();
            assert_eq!(ring.find(&key), Some(s), "{key:?}");
        }
        for c in ring.index.iter() {
            cells += usize::from(*c != 0);
        }
        assert_eq!(cells, ring.len);
        assert!(ring.side.len() <= ring.len);
    }

    #[test]
    fn a_slot_is_at_most_64_bytes() {
        const { assert!(DONE_SLOT_BYTES <= 64) };
        let mut ring = Finished::new(1_000);
        assert_eq!(ring.slots.capacity(), 1_000);
        assert_eq!(std::mem::size_of_val(&ring.slots[..]), 0);
        assert_eq!(ring.index.len(), 2_048);
        ring.prefault();
        assert_eq!(std::mem::size_of_val(&ring.slots[..]), 1_000 * 64);
        assert_eq!(ring.slots.capacity(), 1_000);
    }

    #[test]
    fn the_index_stays_whole_as_the_ring_goes_round() {
        // A tiny index (8 cells for 4 slots): long clusters, wrapped probes, many shifts.
        for ids in [false, true] {
            let mut ring = Finished::new(4);
            for i in 0..200u32 {
                let id = if ids {
                    hex("pg_", i * 7919)
                } else {
                    format!("p{i}")
                };
                let key = CompactId::new(&id);
                assert!(!ring.contains(&key));
                ring.push(&key, SellerKey(i % 3), i64::from(i), None);
                check(&ring);
                assert!(ring.contains(&key));
                if i >= 4 {
                    let gone = if ids {
                        hex("pg_", (i - 4) * 7919)
                    } else {
                        format!("p{}", i - 4)
                    };
                    assert!(!ring.contains(&CompactId::new(&gone)));
                }
            }
            assert!(ring.forget_older(200, 0, 2));
            assert_eq!(ring.len(), 2);
            check(&ring);
            assert!(!ring.forget_older(200, 0, 10));
            assert_eq!((ring.len(), ring.side.len()), (0, 0));
            assert!(ring.index.iter().all(|c| *c == 0));
        }
    }

    #[test]
    fn resized_keeps_the_newest() {
        let mut ring = Finished::new(8);
        for i in 0..6 {
            let id = hex("pg_", i);
            ring.push(&CompactId::new(&id), SellerKey(0), i64::from(i), None);
        }
        let ring = ring.resized(3);
        assert_eq!((ring.cap(), ring.len()), (3, 3));
        for i in 0..6 {
            let found = ring.contains(&CompactId::new(&hex("pg_", i)));
            assert_eq!(found, i >= 3, "{i}");
        }
        check(&ring);
    }
}
