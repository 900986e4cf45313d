//! The eligibility index: per vertical, each static filter as a set of buyers, so a lead's
//! candidates are found a word (64 buyers) at a time instead of buyer by buyer.
//!
//! Owns: for each vertical, its buyers in ascending order (a buyer's *position* is its
//! place in that list) and, over positions:
//! - by state: the buyers that take each state some buyer lists (in `states_include` or
//!   `states_exclude`), and the buyers that take a state no buyer lists (or no state);
//! - by ZIP: the buyers with no prefix list, and for each configured prefix the buyers
//!   that list it (a lead's ZIP is looked up by its first 0 to 5 characters, so
//!   overlapping and duplicate prefixes need no special case);
//! - each buyer's time zone as a small number, so a lead's local time is converted once
//!   per zone, not once per buyer;
//! - one cap hint per buyer: "full at cap-store version v in hour h" (see
//!   [`crate::eligibility`]).
//!
//! Architecture invariant: built once per configuration (by the loader, on the reload
//! path, off the auction threads) and swapped with it; never changed afterwards except
//! the hints, which are atomics. The index only narrows: the schedule, score floor and
//! cap checks run on the candidates it yields, in the same order as the reference scan
//! ([`crate::eligibility::select_scan`]), so both give the same buyers and reasons.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use chrono_tz::Tz;

use crate::bitset::BitSet;
use crate::config::{Buyer, BuyerIdx, VerticalIdx};

/// The longest ZIP prefix looked up (ZIP prefixes are 1 to 5 digits).
pub const ZIP_PREFIX_LEN_MAX: usize = 5;

/// One vertical's index. Positions are indices into `buyers`.
pub struct VerticalIndex {
    /// The vertical's buyers, ascending by configuration index.
    pub buyers: Vec<BuyerIdx>,
    /// Buyers that take a lead whose state no buyer lists, or a lead with no state: those
    /// with an empty `states_include`.
    pub state_open: BitSet,
    /// For each state some buyer lists (upper case): the buyers that take it.
    pub state_accept: HashMap<String, BitSet>,
    /// Buyers with no ZIP prefix list (they take every ZIP, and none).
    pub zip_open: BitSet,
    /// For each configured prefix: the positions of the buyers that list it, ascending.
    pub zip_prefix: HashMap<String, Vec<u32>>,
    /// The longest configured prefix, in bytes.
    pub zip_len_max: usize,
    /// Each position's zone, as an index into `zones`.
    pub zone_of: Vec<u16>,
    /// The distinct time zones of the vertical's buyers.
    pub zones: Vec<Tz>,
    /// Per position: 0, or a cap hint (see [`crate::eligibility`]).
    pub hints: Box<[AtomicU64]>,
}

impl std::fmt::Debug for VerticalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerticalIndex")
            .field("buyers", &self.buyers.len())
            .field("states", &self.state_accept.len())
            .field("zip_prefixes", &self.zip_prefix.len())
            .field("zones", &self.zones.len())
            .finish()
    }
}

/// Every vertical's index.
#[derive(Debug, Default)]
pub struct EligibilityIndex {
    verticals: Vec<VerticalIndex>,
}

impl EligibilityIndex {
    /// Indexes `buyers` for `vertical_count` verticals; also returns, per vertical, its
    /// buyers ascending (the configuration's `buyers_by_vertical`). A buyer's vertical
    /// index past `vertical_count` is ignored.
    pub fn build(
        vertical_count: usize,
        buyers: &[Buyer],
    ) -> (EligibilityIndex, Vec<Vec<BuyerIdx>>) {
        let mut by_vertical: Vec<Vec<BuyerIdx>> = vec![Vec::new(); vertical_count];
        for (idx, b) in buyers.iter().enumerate() {
            for &v in &b.verticals {
                if let Some(list) = by_vertical.get_mut(v) {
                    // A vertical listed twice by one buyer counts once.
                    if list.last() != Some(&idx) {
                        list.push(idx);
                    }
                }
            }
        }
        let verticals = by_vertical
            .iter()
            .map(|list| VerticalIndex::build(list, buyers))
            .collect();
        (EligibilityIndex { verticals }, by_vertical)
    }

    /// The index of `vertical`, if it exists.
    pub fn vertical(&self, vertical: VerticalIdx) -> Option<&VerticalIndex> {
        self.verticals.get(vertical)
    }

    /// Approximate heap bytes (for the sizing note in OPERATIONS.md and tests).
    pub fn heap_bytes(&self) -> usize {
        self.verticals.iter().map(VerticalIndex::heap_bytes).sum()
    }
}

impl VerticalIndex {
    fn build(list: &[BuyerIdx], buyers: &[Buyer]) -> VerticalIndex {
        let n = list.len();
        let members: Vec<&Buyer> = list.iter().filter_map(|&i| buyers.get(i)).collect();
        // Every state any buyer of the vertical lists, upper case.
        let mut states: Vec<String> = members
            .iter()
            .flat_map(|b| b.states_include.iter().chain(&b.states_exclude))
            .map(|s| s.to_ascii_uppercase())
            .collect();
        states.sort_unstable();
        states.dedup();
        let mut state_open = BitSet::new(n);
        let mut zip_open = BitSet::new(n);
        let mut zip_prefix: HashMap<String, Vec<u32>> = HashMap::new();
        let mut zones: Vec<Tz> = Vec::new();
        let mut zone_of = Vec::with_capacity(n);
        for (j, b) in members.iter().enumerate() {
            if b.states_include.is_empty() {
                state_open.insert(j);
            }
            if b.zip_prefixes.is_empty() {
                zip_open.insert(j);
            }
            for p in &b.zip_prefixes {
                let list = zip_prefix.entry(p.clone()).or_default();
                // Positions come in ascending order; a duplicate prefix of one buyer once.
                if list.last() != Some(&(j as u32)) {
                    list.push(j as u32);
                }
            }
            let zone = match zones.iter().position(|z| *z == b.timezone) {
                Some(z) => z,
                None => {
                    zones.push(b.timezone);
                    zones.len() - 1
                }
            };
            zone_of.push(u16::try_from(zone).unwrap_or(u16::MAX));
        }
        let state_accept = states
            .into_iter()
            .map(|s| {
                let mut set = BitSet::new(n);
                for (j, b) in members.iter().enumerate() {
                    if state_ok(b, &s) {
                        set.insert(j);
                    }
                }
                (s, set)
            })
            .collect();
        let zip_len_max = zip_prefix.keys().map(String::len).max().unwrap_or(0);
        VerticalIndex {
            buyers: list.to_vec(),
            state_open,
            state_accept,
            zip_open,
            zip_prefix,
            zip_len_max,
            zone_of,
            zones,
            hints: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The buyers that take a lead in `state` (`None`: the lead has none). A state no
    /// buyer lists is taken by exactly the buyers without an include list.
    pub fn state_set(&self, state: Option<&str>) -> &BitSet {
        let Some(s) = state else {
            return &self.state_open;
        };
        let hit = if s.bytes().any(|c| c.is_ascii_lowercase()) {
            self.state_accept.get(&s.to_ascii_uppercase())
        } else {
            self.state_accept.get(s)
        };
        hit.unwrap_or(&self.state_open)
    }

    /// The buyers that take a lead with this ZIP (`None`: the lead has none).
    pub fn zip_set(&self, zip: Option<&str>) -> BitSet {
        let mut set = self.zip_open.clone();
        if let Some(z) = zip {
            for k in 0..=z.len().min(self.zip_len_max) {
                let Some(prefix) = z.get(..k) else {
                    continue;
                };
                if let Some(list) = self.zip_prefix.get(prefix) {
                    for &j in list {
                        set.insert(j as usize);
                    }
                }
            }
        }
        set
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let sets = self.state_open.heap_bytes()
            + self.zip_open.heap_bytes()
            + self
                .state_accept
                .iter()
                .map(|(k, v)| k.capacity() + v.heap_bytes() + 48)
                .sum::<usize>()
            + self
                .zip_prefix
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity() * 4 + 56)
                .sum::<usize>();
        sets + self.buyers.capacity() * std::mem::size_of::<BuyerIdx>()
            + self.zone_of.capacity() * 2
            + self.hints.len() * 8
    }
}

/// Does `buyer` take a lead in state `s` (upper case)? The reference rule of
/// [`crate::eligibility`], for one listed state.
fn state_ok(buyer: &Buyer, s: &str) -> bool {
    let listed = |list: &[String]| list.iter().any(|x| x.eq_ignore_ascii_case(s));
    (buyer.states_include.is_empty() || listed(&buyer.states_include))
        && !listed(&buyer.states_exclude)
}
