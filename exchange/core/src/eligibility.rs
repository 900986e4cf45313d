//! Which buyers may see a lead: the filters run before any buyer is pinged.
//!
//! Owns: the walk over the vertical's buyer index and, per buyer, the filters in a fixed
//! order (state, ZIP, schedule, score floor, cap and budget headroom); the first that
//! fails is the recorded skip reason, so the auction log can explain every absence.
//!
//! Never: scans buyers outside the vertical's index, reserves caps (the award does, for
//! the winner only), applies the breaker or the fan-out limit (the auction machine does,
//! in [`Auction::new`](crate::auction::Auction::new), after these filters), or panics on
//! a lead that lacks a field.

use proto::Lead;

use super::schedule;
use super::settlement::CapStore;
use super::UnixMs;
use crate::config::{Buyer, BuyerIdx, Config, VerticalIdx};

/// The lead field that carries the US state (a `State` field in the schema).
pub const STATE_FIELD: &str = "state";
/// The lead field that carries the ZIP code (a `Zip` field in the schema).
pub const ZIP_FIELD: &str = "zip";

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

/// The outcome of the filters for one lead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eligibility {
    /// Buyers to ping, ascending by index (a deterministic fan-out order).
    pub ping: Vec<BuyerIdx>,
    /// Fixed-price buyers (no `ping_url`), ascending: they bid their `fixed_price` unpinged.
    pub fixed: Vec<BuyerIdx>,
    /// Every other buyer of the vertical, with the first filter it failed.
    pub skipped: Vec<(BuyerIdx, SkipReason)>,
}

impl Eligibility {
    /// True when no buyer passed the filters (the seller's `no_eligible_buyers`, or
    /// `capped` if every skip was a cap).
    pub fn is_empty(&self) -> bool {
        self.ping.is_empty() && self.fixed.is_empty()
    }

    /// True when some buyers passed every filter but their caps: the `capped` no-bid reason.
    pub fn all_capped(&self) -> bool {
        self.is_empty()
            && !self.skipped.is_empty()
            && self.skipped.iter().all(|(_, r)| *r == SkipReason::Capped)
    }
}

/// Runs the filters for every buyer of `vertical` (from `cfg.buyers_by_vertical`, never a
/// scan of all buyers). `score` is `None` when no model scored the lead; then score floors
/// do not apply. An unknown vertical has no buyers.
pub fn select(
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
    for &idx in buyers {
        let Some(buyer) = cfg.buyers.get(idx) else {
            continue;
        };
        match skip_reason(buyer, state, zip, score, now, caps) {
            Some(reason) => out.skipped.push((idx, reason)),
            None if buyer.fixed_price.is_some() && buyer.ping_url.is_none() => out.fixed.push(idx),
            None => out.ping.push(idx),
        }
    }
    // The index is ascending already; sorting keeps the promise if a loader ever is not.
    out.ping.sort_unstable();
    out.fixed.sort_unstable();
    out
}

/// The first filter `buyer` fails, cheapest first and caps last (they take a lock).
fn skip_reason(
    buyer: &Buyer,
    state: Option<&str>,
    zip: Option<&str>,
    score: Option<u8>,
    now: UnixMs,
    caps: &dyn CapStore,
) -> Option<SkipReason> {
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
    if !caps.has_headroom(buyer, now) {
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

    fn run(cfg: &Config, json: &str, score: Option<u8>, now: UnixMs) -> Eligibility {
        let caps = CapBook::new(cfg.buyers.len());
        select(cfg, 0, &lead(json), score, now, &caps)
    }

    const TX: &str = r#"{"state":"TX","zip":"76180","age":42}"#;

    #[test]
    fn all_pass_in_index_order() {
        let e = run(&config(4), TX, Some(50), 0);
        assert_eq!(e.ping, [0, 1, 2, 3]);
        assert!(e.fixed.is_empty() && e.skipped.is_empty());
    }

    #[test]
    fn walks_only_the_verticals_buyers() {
        let mut b1 = buyer(1);
        b1.verticals = vec![];
        let cfg = config_with(vec![buyer(0), b1, buyer(2)]);
        let e = run(&cfg, TX, None, 0);
        assert_eq!(e.ping, [0, 2]);
        assert!(e.skipped.is_empty());
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
        assert_eq!(e.skipped, [(1, SkipReason::State), (2, SkipReason::State)]);
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
        assert_eq!(e.skipped, [(1, SkipReason::Zip)]);
        // No ZIP on the lead: buyers with prefixes are skipped, others are not.
        let e = run(&cfg, r#"{"state":"TX"}"#, None, 0);
        assert_eq!(e.ping, [2]);
        assert_eq!(e.skipped, [(0, SkipReason::Zip), (1, SkipReason::Zip)]);
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
        assert_eq!(e.skipped, [(0, SkipReason::Schedule)]);
        let e = run(&cfg, TX, None, utc_ms(2024, 1, 15, 14, 0)); // 09:00 local
        assert_eq!(e.ping, [0, 1]);
    }

    #[test]
    fn score_floor_only_with_a_score() {
        let mut b = buyer(0);
        b.score_floor = Some(60);
        let cfg = config_with(vec![b]);
        assert_eq!(
            run(&cfg, TX, Some(59), 0).skipped,
            [(0, SkipReason::ScoreFloor)]
        );
        assert_eq!(run(&cfg, TX, Some(60), 0).ping, [0]);
        assert_eq!(run(&cfg, TX, None, 0).ping, [0]);
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
            e.skipped,
            [(0, SkipReason::Capped), (1, SkipReason::Capped)]
        );
        assert!(e.all_capped());
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
        assert_eq!(run(&cfg, TX, Some(10), 0).skipped, [(0, SkipReason::State)]);
        assert_eq!(SkipReason::ScoreFloor.as_str(), "score_floor");
    }
}
