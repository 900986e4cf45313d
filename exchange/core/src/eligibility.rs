//! Which buyers may see a lead: the filters run before any buyer is pinged.
//!
//! Owns: the filters, in a fixed order (state, ZIP, schedule, score floor, cap and budget
//! headroom); the first that fails is a buyer's skip reason. [`select`] runs them through
//! the configuration's [`EligibilityIndex`](crate::buyer_index::EligibilityIndex): state
//! and ZIP are set intersections over the vertical's buyers, and only the buyers left are
//! checked one by one, with the lead's local time converted once per time zone.
//! [`select_scan`] is the plain walk over every buyer of the vertical: the reference the
//! index is tested against (same buyers, same reasons).
//!
//! A buyer found at its cap leaves a hint (the cap store's version of the buyer and the
//! hour): while neither changes the buyer is still full, so the next lead skips it with
//! two atomic reads and no lock. The version changes with every reservation, release,
//! sale and window change, so a hint is never wrong.
//!
//! Skip reasons are kept as a bounded [`SkipSummary`]: counts per reason, plus the first
//! [`SKIP_NAMES_MAX`] skipped buyers by configuration order with their reasons. With
//! 10,000 buyers in a vertical a reason per buyer per auction would be the whole cost.
//!
//! Never: scans buyers outside the vertical, reserves caps (the award does, for the winner
//! only), applies the breaker or the fan-out limit (the auction machine does, in
//! [`Auction::new`](crate::auction::Auction::new), after these filters), or panics on a
//! lead that lacks a field.

use std::sync::atomic::Ordering;

use proto::Lead;

use super::schedule;
use super::settlement::CapStore;
use super::UnixMs;
use crate::buyer_index::VerticalIndex;
use crate::caps::{Headroom, Windows};
use crate::config::{Buyer, BuyerIdx, Config, VerticalIdx};
use proto::Micros;

/// The lead field that carries the US state (a `State` field in the schema).
pub const STATE_FIELD: &str = "state";
/// The lead field that carries the ZIP code (a `Zip` field in the schema).
pub const ZIP_FIELD: &str = "zip";
/// Skipped buyers named in an auction's summary (the first ones in configuration order);
/// the others are counted by reason only.
pub const SKIP_NAMES_MAX: usize = 16;

/// Why a buyer of the vertical was not offered the lead (recorded in the auction log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The lead's state is not in `states_include` or is in `states_exclude`.
    State,
    /// The lead's ZIP matches none of `zip_prefixes` (or the lead has none).
    Zip,
    /// Outside the buyer's open hours, in the buyer's time zone.
    Schedule,
    /// The lead's score is below the buyer's `score_floor`.
    ScoreFloor,
    /// A count cap or the daily budget is reached.
    Capped,
}

impl SkipReason {
    /// Every reason, in filter order (the order of [`SkipSummary::counts`]).
    pub const ALL: [SkipReason; 5] = [
        SkipReason::State,
        SkipReason::Zip,
        SkipReason::Schedule,
        SkipReason::ScoreFloor,
        SkipReason::Capped,
    ];

    /// The name used in metrics and the auction log.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::State => "state",
            SkipReason::Zip => "zip",
            SkipReason::Schedule => "schedule",
            SkipReason::ScoreFloor => "score_floor",
            SkipReason::Capped => "capped",
        }
    }
}

/// The buyers of the vertical that failed a filter, bounded whatever their number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipSummary {
    /// How many buyers failed each filter, in [`SkipReason::ALL`] order.
    pub counts: [u32; 5],
    /// The first [`SKIP_NAMES_MAX`] skipped buyers, ascending by index, with the filter
    /// each failed first.
    pub first: Vec<(BuyerIdx, SkipReason)>,
}

impl SkipSummary {
    /// Every skipped buyer.
    pub fn total(&self) -> u32 {
        self.counts.iter().sum()
    }

    /// How many buyers failed `reason`.
    pub fn count(&self, reason: SkipReason) -> u32 {
        self.counts[reason as usize]
    }

    /// The summary of a full list (ascending by index), as [`select_scan`] builds it.
    pub fn of(skipped: &[(BuyerIdx, SkipReason)]) -> SkipSummary {
        let mut s = SkipSummary::default();
        for &(idx, reason) in skipped {
            s.add(idx, reason);
        }
        s
    }

    fn add(&mut self, idx: BuyerIdx, reason: SkipReason) {
        self.counts[reason as usize] = self.counts[reason as usize].saturating_add(1);
        if self.first.len() < SKIP_NAMES_MAX {
            self.first.push((idx, reason));
        }
    }
}

/// The outcome of the filters for one lead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eligibility {
    /// Buyers to ping, ascending by index (a deterministic fan-out order).
    pub ping: Vec<BuyerIdx>,
    /// Fixed-price buyers (no `ping_url`), ascending: they bid their `fixed_price` unpinged.
    pub fixed: Vec<BuyerIdx>,
    /// Every other buyer of the vertical: counts by the first filter it failed, and the
    /// first few by name.
    pub skipped: SkipSummary,
}

impl Eligibility {
    /// True when no buyer passed the filters (the seller's `no_eligible_buyers`, or
    /// `capped` if every skip was a cap).
    pub fn is_empty(&self) -> bool {
        self.ping.is_empty() && self.fixed.is_empty()
    }

    /// True when no buyer is eligible and some passed every filter but their caps (the
    /// cap is the last filter, so a buyer counted `Capped` passed all the others): the
    /// `capped` no-bid reason. Buyers skipped by other filters would not take the lead
    /// anyway, so they do not turn it into `no_eligible_buyers` (with thousands of buyers
    /// some always fail the geography).
    pub fn all_capped(&self) -> bool {
        self.is_empty() && self.skipped.count(SkipReason::Capped) > 0
    }

    fn pass(&mut self, idx: BuyerIdx, buyer: &Buyer) {
        if buyer.fixed_price.is_some() && buyer.ping_url.is_none() {
            self.fixed.push(idx);
        } else {
            self.ping.push(idx);
        }
    }
}

/// A buyer's local time at `now`, converted once per zone per auction.
#[derive(Debug, Clone, Copy)]
struct LocalNow {
    /// `(weekday, minute)` for the schedule; `None` off the calendar.
    open_at: Option<(usize, u16)>,
    /// The cap windows of `now`.
    windows: Option<Windows>,
}

impl LocalNow {
    fn at(tz: chrono_tz::Tz, now: UnixMs) -> LocalNow {
        match schedule::local(tz, now) {
            Some(t) => LocalNow {
                open_at: Some(schedule::weekday_minute(&t)),
                windows: Some(Windows::of_local(&t, now)),
            },
            None => LocalNow {
                open_at: None,
                windows: None,
            },
        }
    }
}

/// Runs the filters for every buyer of `vertical` through the configuration's index.
/// `score` is `None` when no model scored the lead; then score floors do not apply. An
/// unknown vertical has no buyers. Gives exactly what [`select_scan`] gives.
pub fn select(
    cfg: &Config,
    vertical: VerticalIdx,
    lead: &Lead,
    score: Option<u8>,
    now: UnixMs,
    caps: &dyn CapStore,
) -> Eligibility {
    let mut out = Eligibility::default();
    let (Some(vi), Some(v)) = (cfg.index.vertical(vertical), cfg.verticals.get(vertical)) else {
        return out;
    };
    let state = lead.get(&v.schema, STATE_FIELD).and_then(|f| f.as_str());
    let zip = lead.get(&v.schema, ZIP_FIELD).and_then(|f| f.as_str());
    let by_state = vi.state_set(state);
    let mut candidates = vi.zip_set(zip);
    candidates.intersect_with(by_state);
    let n = vi.buyers.len();
    let passed_state = by_state.count();
    let remaining = candidates.count();
    let mut counts = [0u32; 5];
    counts[SkipReason::State as usize] = u32::try_from(n - passed_state).unwrap_or(u32::MAX);
    counts[SkipReason::Zip as usize] = u32::try_from(passed_state - remaining).unwrap_or(u32::MAX);
    // Reasons of the candidates that fail a later filter, ascending by position.
    let mut later: Vec<(usize, SkipReason)> = Vec::new();
    let mut zones: Vec<Option<LocalNow>> = vec![None; vi.zones.len()];
    let room = Room {
        caps,
        now,
        least: v.floor,
    };
    for j in candidates.iter() {
        let (Some(&idx), Some(&zone)) = (vi.buyers.get(j), vi.zone_of.get(j)) else {
            continue;
        };
        let Some(buyer) = cfg.buyers.get(idx) else {
            continue;
        };
        let local = match zones.get_mut(usize::from(zone)) {
            Some(Some(l)) => *l,
            Some(slot) => *slot.insert(LocalNow::at(buyer.timezone, now)),
            None => LocalNow::at(buyer.timezone, now),
        };
        match later_reason(vi, j, buyer, &local, score, &room) {
            Some(reason) => {
                counts[reason as usize] += 1;
                later.push((j, reason));
            }
            None => out.pass(idx, buyer),
        }
    }
    out.skipped.counts = counts;
    // The first skipped buyers by position (= by index): walk until enough are named.
    let total: u32 = counts.iter().sum();
    let want = SKIP_NAMES_MAX.min(total as usize);
    let mut j = 0;
    while out.skipped.first.len() < want && j < n {
        let reason = if !by_state.contains(j) {
            Some(SkipReason::State)
        } else if !candidates.contains(j) {
            Some(SkipReason::Zip)
        } else {
            later
                .binary_search_by_key(&j, |(p, _)| *p)
                .ok()
                .and_then(|k| later.get(k))
                .map(|(_, r)| *r)
        };
        if let (Some(r), Some(&idx)) = (reason, vi.buyers.get(j)) {
            out.skipped.first.push((idx, r));
        }
        j += 1;
    }
    out
}

/// The filters after state and ZIP, for one candidate at position `j`.
fn later_reason(
    vi: &VerticalIndex,
    j: usize,
    buyer: &Buyer,
    local: &LocalNow,
    score: Option<u8>,
    room: &Room<'_>,
) -> Option<SkipReason> {
    if !schedule::is_open_at(buyer.schedule.as_ref(), local.open_at) {
        return Some(SkipReason::Schedule);
    }
    if let (Some(floor), Some(score)) = (buyer.score_floor, score) {
        if score < floor {
            return Some(SkipReason::ScoreFloor);
        }
    }
    if is_full(vi, j, buyer, local.windows.as_ref(), room) {
        return Some(SkipReason::Capped);
    }
    None
}

/// Packs a cap hint: the store's version of the buyer and the hour it was full in.
fn hint(version: u32, hour_tag: u32) -> u64 {
    (u64::from(version) << 32) | u64::from(hour_tag)
}

/// What the cap filter asks the store: at `now`, room for one lead costing at least
/// `least`, the vertical's floor (no bid under it is quoted, and a buyer pays its bid, so
/// a buyer with less of its budget left could win nothing and is not pinged).
struct Room<'c> {
    caps: &'c dyn CapStore,
    now: UnixMs,
    least: Micros,
}

/// Is the buyer at a cap, or with less budget left than the floor? A hint "full at
/// version v in hour h" answers without the store's lock while the version is still `v`
/// and `now` is still in hour `h`: nothing that could make room (a release, a new
/// window, a reload: a new configuration has new hints, and the floor is the
/// configuration's) can happen without changing one of them.
fn is_full(
    vi: &VerticalIndex,
    j: usize,
    buyer: &Buyer,
    at: Option<&Windows>,
    room: &Room<'_>,
) -> bool {
    let Room { caps, now, least } = *room;
    let slot = vi.hints.get(j);
    if let (Some(w), Some(slot)) = (at, slot) {
        let h = slot.load(Ordering::Relaxed);
        if h != 0 && caps.version(buyer.key).map(|v| hint(v, w.hour_tag())) == Some(h) {
            return true;
        }
    }
    match caps.headroom_at(buyer, now, at, least) {
        Headroom::Yes => false,
        Headroom::Full { version } => {
            if let (Some(v), Some(w), Some(slot)) = (version, at, slot) {
                slot.store(hint(v, w.hour_tag()), Ordering::Relaxed);
            }
            true
        }
    }
}

/// The reference: every buyer of `vertical` (from `cfg.buyers_by_vertical`), each through
/// every filter in order. Slower with many buyers; [`select`] must agree with it.
pub fn select_scan(
    cfg: &Config,
    vertical: VerticalIdx,
    lead: &Lead,
    score: Option<u8>,
    now: UnixMs,
    caps: &dyn CapStore,
) -> Eligibility {
    let mut out = Eligibility::default();
    let (Some(buyers), Some(v)) = (
        cfg.buyers_by_vertical.get(vertical),
        cfg.verticals.get(vertical),
    ) else {
        return out;
    };
    let state = lead.get(&v.schema, STATE_FIELD).and_then(|f| f.as_str());
    let zip = lead.get(&v.schema, ZIP_FIELD).and_then(|f| f.as_str());
    let mut skipped = Vec::new();
    let room = Room {
        caps,
        now,
        least: v.floor,
    };
    for &idx in buyers {
        let Some(buyer) = cfg.buyers.get(idx) else {
            continue;
        };
        match skip_reason(buyer, state, zip, score, &room) {
            Some(reason) => skipped.push((idx, reason)),
            None => out.pass(idx, buyer),
        }
    }
    out.skipped = SkipSummary::of(&skipped);
    out
}

/// The first filter `buyer` fails, cheapest first and caps last (they take a lock).
fn skip_reason(
    buyer: &Buyer,
    state: Option<&str>,
    zip: Option<&str>,
    score: Option<u8>,
    room: &Room<'_>,
) -> Option<SkipReason> {
    let Room { caps, now, least } = *room;
    if !state_ok(buyer, state) {
        return Some(SkipReason::State);
    }
    if !zip_ok(buyer, zip) {
        return Some(SkipReason::Zip);
    }
    if !schedule::is_open(buyer.schedule.as_ref(), buyer.timezone, now) {
        return Some(SkipReason::Schedule);
    }
    if let (Some(floor), Some(score)) = (buyer.score_floor, score) {
        if score < floor {
            return Some(SkipReason::ScoreFloor);
        }
    }
    if !caps.has_headroom(buyer, now, least) {
        return Some(SkipReason::Capped);
    }
    None
}

/// An include list needs a state on the lead; an exclude list only refuses a listed one.
fn state_ok(buyer: &Buyer, state: Option<&str>) -> bool {
    let listed = |list: &[String], s: &str| list.iter().any(|x| x.eq_ignore_ascii_case(s));
    match state {
        Some(s) => {
            (buyer.states_include.is_empty() || listed(&buyer.states_include, s))
                && !listed(&buyer.states_exclude, s)
        }
        None => buyer.states_include.is_empty(),
    }
}

/// No prefixes means every ZIP (and no ZIP); with prefixes the lead needs a matching ZIP.
fn zip_ok(buyer: &Buyer, zip: Option<&str>) -> bool {
    if buyer.zip_prefixes.is_empty() {
        return true;
    }
    zip.is_some_and(|z| buyer.zip_prefixes.iter().any(|p| z.starts_with(p.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caps::CapBook;
    use crate::config::{Caps, MinuteRange, WeeklySchedule};
    use crate::testutil::{buyer, config, config_with, lead, utc_ms};
    use proto::Micros;

    /// Both the index and the reference scan; they must agree.
    fn run(cfg: &Config, json: &str, score: Option<u8>, now: UnixMs) -> Eligibility {
        let caps = CapBook::new(cfg.buyers.len());
        let indexed = select(cfg, 0, &lead(json), score, now, &caps);
        assert_eq!(indexed, select_scan(cfg, 0, &lead(json), score, now, &caps));
        indexed
    }

    const TX: &str = r#"{"state":"TX","zip":"76180","age":42}"#;

    #[test]
    fn all_pass_in_index_order() {
        let e = run(&config(4), TX, Some(50), 0);
        assert_eq!(e.ping, [0, 1, 2, 3]);
        assert!(e.fixed.is_empty() && e.skipped.first.is_empty());
    }

    #[test]
    fn walks_only_the_verticals_buyers() {
        let mut b1 = buyer(1);
        b1.verticals = vec![];
        let cfg = config_with(vec![buyer(0), b1, buyer(2)]);
        let e = run(&cfg, TX, None, 0);
        assert_eq!(e.ping, [0, 2]);
        assert!(e.skipped.first.is_empty());
        // An unknown vertical has nobody.
        let caps = CapBook::new(3);
        assert_eq!(
            select(&cfg, 7, &lead(TX), None, 0, &caps),
            Eligibility::default()
        );
    }

    #[test]
    fn states_include_and_exclude() {
        let mut inc = buyer(0);
        inc.states_include = vec!["CA".into(), "TX".into()];
        let mut inc_other = buyer(1);
        inc_other.states_include = vec!["CA".into()];
        let mut exc = buyer(2);
        exc.states_exclude = vec!["TX".into()];
        let mut exc_other = buyer(3);
        exc_other.states_exclude = vec!["NY".into()];
        let cfg = config_with(vec![inc, inc_other, exc, exc_other]);
        let e = run(&cfg, TX, None, 0);
        assert_eq!(e.ping, [0, 3]);
        assert_eq!(
            e.skipped.first,
            [(1, SkipReason::State), (2, SkipReason::State)]
        );
        // A lead without a state fails include lists only.
        let e = run(&cfg, r#"{"zip":"76180"}"#, None, 0);
        assert_eq!(e.ping, [2, 3]);
    }

    #[test]
    fn zip_prefixes() {
        let mut hit = buyer(0);
        hit.zip_prefixes = vec!["9".into(), "761".into()];
        let mut miss = buyer(1);
        miss.zip_prefixes = vec!["762".into()];
        let cfg = config_with(vec![hit, miss, buyer(2)]);
        let e = run(&cfg, TX, None, 0);
        assert_eq!(e.ping, [0, 2]);
        assert_eq!(e.skipped.first, [(1, SkipReason::Zip)]);
        // No ZIP on the lead: buyers with prefixes are skipped, others are not.
        let e = run(&cfg, r#"{"state":"TX"}"#, None, 0);
        assert_eq!(e.ping, [2]);
        assert_eq!(
            e.skipped.first,
            [(0, SkipReason::Zip), (1, SkipReason::Zip)]
        );
    }

    #[test]
    fn schedule_in_the_buyers_zone() {
        // Open Monday 09:00-17:00 in New York. 2024-01-15 is a Monday, UTC-5.
        let mut days: [Vec<MinuteRange>; 7] = Default::default();
        days[0].push(MinuteRange {
            start: 9 * 60,
            end: 17 * 60,
        });
        let mut b = buyer(0);
        b.timezone = chrono_tz::America::New_York;
        b.schedule = Some(WeeklySchedule { days });
        let cfg = config_with(vec![b, buyer(1)]);
        let e = run(&cfg, TX, None, utc_ms(2024, 1, 15, 13, 59)); // 08:59 local
        assert_eq!(e.skipped.first, [(0, SkipReason::Schedule)]);
        let e = run(&cfg, TX, None, utc_ms(2024, 1, 15, 14, 0)); // 09:00 local
        assert_eq!(e.ping, [0, 1]);
    }

    #[test]
    fn score_floor_only_with_a_score() {
        let mut b = buyer(0);
        b.score_floor = Some(60);
        let cfg = config_with(vec![b]);
        assert_eq!(
            run(&cfg, TX, Some(59), 0).skipped.first,
            [(0, SkipReason::ScoreFloor)]
        );
        assert_eq!(run(&cfg, TX, Some(60), 0).ping, [0]);
        assert_eq!(run(&cfg, TX, None, 0).ping, [0]);
    }

    #[test]
    fn a_budget_with_less_left_than_the_floor_is_not_pinged() {
        let mut b = buyer(0);
        b.caps = Caps {
            budget_daily: Some(Micros(5_000_000)),
            ..Caps::default()
        };
        let cfg = config_with(vec![b.clone()]);
        assert_eq!(cfg.verticals[0].floor, Micros(1_000_000));
        let l = lead(TX);
        let pinged = |cfg: &Config, caps: &CapBook| {
            let fast = select(cfg, 0, &l, None, 0, caps);
            let scan = select_scan(cfg, 0, &l, None, 0, caps);
            assert_eq!(fast.ping, scan.ping);
            assert_eq!(fast.skipped.first, scan.skipped.first);
            !fast.ping.is_empty()
        };
        // 1.00 left, the floor: a bid at the floor could still be quoted and paid.
        let caps = CapBook::new(1);
        let held = caps
            .reserve(cfg.buyers[0].key, &cfg.buyers[0], Micros(4_000_000), 0)
            .unwrap();
        assert!(pinged(&cfg, &caps));
        // 0.99 left: any bid it could win costs more than that; not pinged, `capped`.
        let caps = CapBook::new(1);
        let short = caps
            .reserve(cfg.buyers[0].key, &cfg.buyers[0], Micros(4_010_000), 0)
            .unwrap();
        let e = select(&cfg, 0, &l, None, 0, &caps);
        assert!(e.ping.is_empty());
        assert_eq!(e.skipped.first, [(0, SkipReason::Capped)]);
        assert!(!pinged(&cfg, &caps), "asked again (the hint)");
        // Released, it has room again (the hint does not outlive the release).
        assert!(caps.release(&short));
        assert!(pinged(&cfg, &caps));
        drop(held);
        // With no floor, any money left is enough; none left is not. (A configuration of
        // its own: the hints belong to a configuration and its one cap store.)
        let mut cfg = config_with(vec![b]);
        cfg.verticals[0].floor = Micros(0);
        let caps = CapBook::new(1);
        let most = caps
            .reserve(cfg.buyers[0].key, &cfg.buyers[0], Micros(4_999_999), 0)
            .unwrap();
        assert!(pinged(&cfg, &caps));
        assert!(caps.release(&most));
        caps.reserve(cfg.buyers[0].key, &cfg.buyers[0], Micros(5_000_000), 0)
            .unwrap();
        assert!(!pinged(&cfg, &caps));
    }

    #[test]
    fn caps_and_budget_headroom() {
        let mut daily = buyer(0);
        daily.caps = Caps {
            daily: Some(1),
            ..Caps::default()
        };
        let mut budget = buyer(1);
        budget.caps = Caps {
            budget_daily: Some(Micros(5_000_000)),
            ..Caps::default()
        };
        let cfg = config_with(vec![daily, budget]);
        let caps = CapBook::new(2);
        let l = lead(TX);
        assert_eq!(select(&cfg, 0, &l, None, 0, &caps).ping, [0, 1]);
        caps.reserve(cfg.buyers[0].key, &cfg.buyers[0], Micros(1), 0)
            .unwrap();
        caps.reserve(cfg.buyers[1].key, &cfg.buyers[1], Micros(5_000_000), 0)
            .unwrap();
        let e = select(&cfg, 0, &l, None, 0, &caps);
        assert_eq!(
            e.skipped.first,
            [(0, SkipReason::Capped), (1, SkipReason::Capped)]
        );
        assert!(e.all_capped());
        // With a buyer that does not take Texas beside them, still `capped`: the buyers
        // that would take the lead are full (before, any other skip made it
        // `no_eligible_buyers`).
        let mut elsewhere = buyer(2);
        elsewhere.states_include = vec!["CA".into()];
        let mut cfg = cfg;
        cfg.buyers.push(elsewhere);
        cfg.index_buyers();
        let caps3 = CapBook::new(3);
        caps3
            .reserve(cfg.buyers[0].key, &cfg.buyers[0], Micros(1), 0)
            .unwrap();
        caps3
            .reserve(cfg.buyers[1].key, &cfg.buyers[1], Micros(5_000_000), 0)
            .unwrap();
        let e = select(&cfg, 0, &l, None, 0, &caps3);
        assert_eq!(e.skipped.count(SkipReason::State), 1);
        assert!(e.all_capped());
        // No buyer capped, none eligible: not `capped`.
        let mut only = buyer(0);
        only.states_include = vec!["CA".into()];
        let cfg = config_with(vec![only]);
        let e = select(&cfg, 0, &l, None, 0, &CapBook::new(1));
        assert!(e.is_empty() && !e.all_capped());
    }

    #[test]
    fn fixed_price_buyers_are_not_pinged() {
        let mut fixed = buyer(0);
        fixed.ping_url = None;
        fixed.fixed_price = Some(Micros(7_000_000));
        // A buyer with a ping_url is pinged, fixed price or not.
        let mut both = buyer(1);
        both.fixed_price = Some(Micros(7_000_000));
        let cfg = config_with(vec![fixed, both, buyer(2)]);
        let e = run(&cfg, TX, None, 0);
        assert_eq!(e.fixed, [0]);
        assert_eq!(e.ping, [1, 2]);
    }

    #[test]
    fn first_failing_filter_is_recorded() {
        let mut b = buyer(0);
        b.states_include = vec!["CA".into()];
        b.zip_prefixes = vec!["0".into()];
        b.score_floor = Some(90);
        let cfg = config_with(vec![b]);
        assert_eq!(
            run(&cfg, TX, Some(10), 0).skipped.first,
            [(0, SkipReason::State)]
        );
        assert_eq!(SkipReason::ScoreFloor.as_str(), "score_floor");
    }
}

/// The index against the reference scan on random configurations, leads, times and cap
/// states, with the cap hints exercised across reservations, releases and hours.
#[cfg(test)]
mod index_matches_scan {
    use super::*;
    use crate::caps::{CapBook, Reservation};
    use crate::config::{Caps, MinuteRange, WeeklySchedule};
    use crate::testutil::{buyer, config_with, lead, utc_ms};
    use proptest::prelude::*;
    use proto::Micros;

    const STATES: [&str; 6] = ["TX", "CA", "NY", "tx", "Fl", "WA"];
    const PREFIXES: [&str; 10] = [
        "7", "76", "761", "7618", "76180", "9", "90", "902", "1", "76",
    ];
    const ZONES: [chrono_tz::Tz; 5] = [
        chrono_tz::Tz::UTC,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::Asia::Kolkata,
        chrono_tz::America::Los_Angeles,
    ];
    const LEAD_STATES: [&str; 4] = ["TX", "CA", "NY", "FL"];
    const LEAD_ZIPS: [&str; 4] = ["76180", "90210", "10001", "76299"];
    const HOUR_MS: i64 = 3_600_000;

    #[derive(Debug, Clone)]
    struct BuyerSpec {
        in_vertical: bool,
        include: Vec<usize>,
        exclude: Vec<usize>,
        prefixes: Vec<usize>,
        zone: usize,
        schedule: Option<Vec<(usize, u16, u16)>>,
        floor: Option<u8>,
        hourly: Option<u32>,
        daily: Option<u32>,
        budget: Option<i64>,
        fixed: bool,
    }

    fn buyer_spec() -> impl Strategy<Value = BuyerSpec> {
        (
            prop::bool::weighted(0.9),
            prop::collection::vec(0..STATES.len(), 0..3),
            prop::collection::vec(0..STATES.len(), 0..2),
            prop::collection::vec(0..PREFIXES.len(), 0..3),
            0..ZONES.len(),
            prop::option::weighted(
                0.3,
                prop::collection::vec((0usize..7, 0u16..1440, 0u16..=1440), 0..6),
            ),
            prop::option::weighted(0.3, 0u8..100),
            (
                prop::option::weighted(0.3, 0u32..3),
                prop::option::weighted(0.3, 0u32..4),
                prop::option::weighted(0.2, 0i64..30),
            ),
            prop::bool::weighted(0.15),
        )
            .prop_map(
                |(in_vertical, include, exclude, prefixes, zone, schedule, floor, caps, fixed)| {
                    BuyerSpec {
                        in_vertical,
                        include,
                        exclude,
                        prefixes,
                        zone,
                        schedule,
                        floor,
                        hourly: caps.0,
                        daily: caps.1,
                        budget: caps.2,
                        fixed,
                    }
                },
            )
    }

    fn make(i: usize, s: &BuyerSpec) -> Buyer {
        let mut b = buyer(i);
        if !s.in_vertical {
            b.verticals = Vec::new();
        }
        b.states_include = s.include.iter().map(|&k| STATES[k].to_string()).collect();
        b.states_exclude = s.exclude.iter().map(|&k| STATES[k].to_string()).collect();
        b.zip_prefixes = s
            .prefixes
            .iter()
            .map(|&k| PREFIXES[k].to_string())
            .collect();
        b.timezone = ZONES[s.zone];
        b.schedule = s.schedule.as_ref().map(|ranges| {
            let mut days: [Vec<MinuteRange>; 7] = Default::default();
            for &(d, start, end) in ranges {
                days[d].push(MinuteRange { start, end });
            }
            WeeklySchedule { days }
        });
        b.score_floor = s.floor;
        b.caps = Caps {
            hourly: s.hourly,
            daily: s.daily,
            budget_daily: s.budget.map(|u| Micros(u * 1_000_000)),
            ..Caps::default()
        };
        if s.fixed {
            b.ping_url = None;
            b.fixed_price = Some(Micros(5_000_000));
        }
        b
    }

    /// One step between selections: reserve for a buyer, release an open hold, or move
    /// the clock (up to two hours, so hours and days turn).
    #[derive(Debug, Clone)]
    enum Step {
        Reserve(usize, i64),
        Release(usize),
        Commit(usize),
        Tick(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0usize..1000, 0i64..12).prop_map(|(b, p)| Step::Reserve(b, p)),
            1 => (0usize..1000).prop_map(Step::Release),
            1 => (0usize..1000).prop_map(Step::Commit),
            2 => (0i64..2 * HOUR_MS).prop_map(Step::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn same_buyers_and_reasons(
            specs in prop::collection::vec(buyer_spec(), 0..140),
            lead_state in prop::option::of(0..LEAD_STATES.len()),
            lead_zip in prop::option::of(0..LEAD_ZIPS.len()),
            score in prop::option::of(0u8..100),
            start_min in 0i64..(3 * 365 * 24 * 60),
            steps in prop::collection::vec(step(), 0..40),
        ) {
            let cfg = config_with(specs.iter().enumerate().map(|(i, s)| make(i, s)).collect());
            let mut fields = Vec::new();
            if let Some(s) = lead_state {
                fields.push(format!(r#""state":"{}""#, LEAD_STATES[s]));
            }
            if let Some(z) = lead_zip {
                fields.push(format!(r#""zip":"{}""#, LEAD_ZIPS[z]));
            }
            let l = lead(&format!("{{{}}}", fields.join(",")));
            let caps = CapBook::new(cfg.buyers.len());
            let mut now = utc_ms(2024, 1, 1, 0, 0) + start_min * 60_000;
            let mut held: Vec<Reservation> = Vec::new();
            let check = |now: UnixMs| {
                let indexed = select(&cfg, 0, &l, score, now, &caps);
                // Twice: the second may answer from the hints the first left.
                let again = select(&cfg, 0, &l, score, now, &caps);
                let scan = select_scan(&cfg, 0, &l, score, now, &caps);
                prop_assert_eq!(&indexed, &scan);
                prop_assert_eq!(&again, &scan);
                let named = scan.skipped.total().min(SKIP_NAMES_MAX as u32) as usize;
                prop_assert_eq!(scan.skipped.first.len(), named);
                Ok(())
            };
            check(now)?;
            for s in steps {
                match s {
                    Step::Reserve(b, units) if !cfg.buyers.is_empty() => {
                        let buyer = &cfg.buyers[b % cfg.buyers.len()];
                        if let Ok(r) = caps.reserve(buyer.key, buyer, Micros(units * 1_000_000), now) {
                            held.push(r);
                        }
                    }
                    Step::Release(k) if !held.is_empty() => {
                        let r = held.swap_remove(k % held.len());
                        caps.release(&r);
                    }
                    Step::Commit(k) if !held.is_empty() => {
                        let r = held.swap_remove(k % held.len());
                        caps.commit(&r);
                    }
                    Step::Tick(ms) => now += ms,
                    _ => {}
                }
                check(now)?;
            }
        }
    }

    #[test]
    fn a_hint_never_outlives_a_release_or_the_hour() {
        let mut b = buyer(0);
        b.caps = Caps {
            hourly: Some(1),
            ..Caps::default()
        };
        let cfg = config_with(vec![b]);
        let caps = CapBook::new(1);
        let l = lead(r#"{"state":"TX","zip":"76180"}"#);
        let t = utc_ms(2024, 3, 5, 10, 30);
        let b = &cfg.buyers[0];
        let r = caps.reserve(b.key, b, Micros(1), t).unwrap();
        let full = select(&cfg, 0, &l, None, t, &caps);
        assert_eq!(full.skipped.count(SkipReason::Capped), 1);
        // The hint is set and answers the next lead.
        assert_ne!(
            cfg.index.vertical(0).unwrap().hints[0].load(Ordering::Relaxed),
            0
        );
        assert!(select(&cfg, 0, &l, None, t + 1, &caps).ping.is_empty());
        // A release makes room at once.
        caps.release(&r);
        assert_eq!(select(&cfg, 0, &l, None, t + 2, &caps).ping, [0]);
        // Full again, then the hour turns: room again.
        let _kept = caps.reserve(b.key, b, Micros(1), t + 3).unwrap();
        assert!(select(&cfg, 0, &l, None, t + 4, &caps).ping.is_empty());
        assert_eq!(
            select(&cfg, 0, &l, None, utc_ms(2024, 3, 5, 11, 0), &caps).ping,
            [0]
        );
    }

    #[test]
    fn ten_thousand_buyers_one_takes_texas_and_the_summary_is_bounded() {
        let states = ["CA", "NY", "FL", "WA", "OR", "NV", "AZ"];
        let buyers: Vec<Buyer> = (0..10_000)
            .map(|i| {
                let mut b = buyer(i);
                b.states_include = vec![if i == 7_777 {
                    "TX".to_string()
                } else {
                    states[i % states.len()].to_string()
                }];
                b
            })
            .collect();
        let cfg = config_with(buyers);
        let caps = CapBook::new(cfg.buyers.len());
        let l = lead(r#"{"state":"TX","zip":"76180"}"#);
        let e = select(&cfg, 0, &l, None, 0, &caps);
        assert_eq!(e.ping, [7_777]);
        assert_eq!(e.skipped.count(SkipReason::State), 9_999);
        assert_eq!(e.skipped.first.len(), SKIP_NAMES_MAX);
        assert_eq!(e.skipped.first[0], (0, SkipReason::State));
        assert_eq!(e, select_scan(&cfg, 0, &l, None, 0, &caps));
    }
}
