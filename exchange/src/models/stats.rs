//! What each buyer has done lately: the counts behind the cold-start rates and the buyer
//! features (acceptance, returns, response time), kept per stable buyer key so a reload
//! never moves them to another buyer.
//!
//! Counts decay: each new post of a buyer first multiplies its counts by
//! `1 - 1/HORIZON_POSTS`, so the rates follow the buyer's last few hundred posts and a
//! buyer that changes its behaviour is seen to change.

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::config::{Buyer, BuyerKey, Config, VerticalIdx};
use crate::core::caps::CapBook;
use crate::core::model::features::{id_hash, BuyerSignals};
use crate::core::model::routing::{BuyerView, Guard, Outcomes, Priors, SignalSource};
use crate::core::UnixMs;

/// About how many recent posts the rates remember.
pub const HORIZON_POSTS: f64 = 500.0;
/// About how many recent posts with an estimate the drift guard remembers.
pub const GUARD_HORIZON_POSTS: f64 = 100.0;
/// Kept leads the guard remembers per buyer, to take one back when it is returned:
/// older ones weigh under 0.99^1024, about 3e-5 of a lead.
const GUARD_KEPT_REMEMBERED: usize = 1024;
/// Weight of the newest response time in its moving average.
const RESPONSE_ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Default)]
struct BuyerStat {
    outcomes: Outcomes,
    guard: Guard,
    /// Posts the guard counted since it last started again (a new model, a start).
    guard_posts: u64,
    /// The guard's kept leads, newest last (at most [`GUARD_KEPT_REMEMBERED`]): each
    /// one's [`lead_key`] and its post number, so a return takes back exactly the
    /// weight the lead has now, and a lead the guard never counted (sold before it
    /// started again, or longer ago than this remembers) takes back nothing (black-box
    /// round 69b: every return took a whole lead off the current count, however old).
    guard_kept: std::collections::VecDeque<(u64, u64)>,
    /// The guard epoch `guard` counts for (see [`BuyerStats::reset_guards`]).
    guard_epoch: u64,
    /// The guard as it stood when a new model started it again, and the epoch it
    /// belonged to: an auction scored by the model before (in flight across the swap) is
    /// ranked with it (black-box round 73c: it got the new model's empty guard, so the
    /// old model's estimates went unscaled).
    prev_guard: Guard,
    prev_epoch: u64,
    response_ms: Option<f64>,
    /// Delivered posts left unaccepted in a row, and when the latest of them was.
    streak: u32,
    streak_at: UnixMs,
}

/// A lead id as the drift guard remembers its kept leads (a return names the lead, and
/// takes back exactly what the guard counted of it).
pub fn lead_key(lead_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lead_id.hash(&mut h);
    h.finish()
}

/// The guard of `e` for guard epoch `epoch`: its counts, those a new model set aside, or
/// none (a model whose guard has not counted anything yet, or one older than that).
fn pick_guard(e: &BuyerStat, epoch: u64) -> Guard {
    if epoch == e.guard_epoch {
        e.guard
    } else if epoch == e.prev_epoch {
        e.prev_guard
    } else {
        Guard::default()
    }
}

/// Starts `e`'s guard again for guard epoch `epoch` if it counts for another, keeping
/// its counts for auctions of the models before.
fn roll(e: &mut BuyerStat, epoch: u64) {
    if e.guard_epoch != epoch {
        e.prev_guard = e.guard;
        e.prev_epoch = e.guard_epoch;
        e.guard = Guard::default();
        e.guard_posts = 0;
        e.guard_kept.clear();
        e.guard_epoch = epoch;
    }
}

/// Per-buyer outcome counts and the pooled counts every buyer is smoothed towards.
#[derive(Debug, Default)]
pub struct BuyerStats {
    by_buyer: DashMap<BuyerKey, BuyerStat>,
    pooled: Mutex<Outcomes>,
    /// The guards' epoch: the runtime generation whose model swap last started them again
    /// (0 until one did), the `guard_epoch` of the runtime that serves those models. An
    /// entry not touched since starts again when it next counts (`roll`).
    epoch: std::sync::atomic::AtomicU64,
}

fn decay(o: &mut Outcomes) {
    let k = 1.0 - 1.0 / HORIZON_POSTS;
    o.posts *= k;
    o.accepts *= k;
    o.returns *= k;
}

impl BuyerStats {
    pub fn new() -> BuyerStats {
        BuyerStats::default()
    }

    /// A post was delivered to `buyer` (or tried) at `at`: it accepted it or not (a
    /// rejection, a timeout, an error or an invalid answer). `estimate`: the award's
    /// estimate of the chance the buyer keeps the lead, in ppm, and the guard epoch of
    /// the models that made it, for the drift guard (`None`: not counted there). The
    /// guard counts it only if those models still serve: the estimate of an auction
    /// scored by a model a swap has replaced since teaches the cold-start rates but not
    /// the new model's guard, which judges the new model's estimates only (black-box
    /// round 76c: such posts made the new guard act after 6 posts of its own and changed
    /// a winner; round 78a: judged by milliseconds, an auction that started in the
    /// swap's own millisecond was counted in neither guard).
    pub fn on_post(
        &self,
        buyer: BuyerKey,
        accepted: bool,
        estimate: Option<(u32, u64)>,
        at: UnixMs,
        lead: u64,
    ) {
        let mut e = self.by_buyer.entry(buyer).or_default();
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire);
        roll(&mut e, epoch);
        // Read under the entry's lock: a swap that starts the guards again rolls this
        // entry under it too, so the estimate is counted in the guard of its own models
        // or in none.
        let p_model_ppm = estimate.and_then(|(ppm, of)| (of == epoch).then_some(ppm));
        if accepted {
            e.streak = 0;
        } else {
            e.streak = e.streak.saturating_add(1);
            e.streak_at = e.streak_at.max(at);
        }
        decay(&mut e.outcomes);
        e.outcomes.posts += 1.0;
        if accepted {
            e.outcomes.accepts += 1.0;
        }
        if let Some(ppm) = p_model_ppm {
            // At least the award's floor of 1 ppm: an estimate that rounded to 0 ppm
            // predicted nothing, so the guard could never act on it (black-box round
            // 68b: a buyer that kept 20 of 110 leads estimated at 0 stayed at 1 ppm).
            let p = f64::from(ppm.clamp(1, 1_000_000)) / 1e6;
            let g = &mut e.guard;
            let k = 1.0 - 1.0 / GUARD_HORIZON_POSTS;
            g.posts = g.posts * k + 1.0;
            g.predicted = g.predicted * k + p;
            g.variance = g.variance * k + p * (1.0 - p);
            g.kept = g.kept * k + if accepted { 1.0 } else { 0.0 };
            e.guard_posts += 1;
            if accepted {
                let n = e.guard_posts;
                if e.guard_kept.len() >= GUARD_KEPT_REMEMBERED {
                    e.guard_kept.pop_front();
                }
                e.guard_kept.push_back((lead, n));
            }
        }
        drop(e);
        let mut p = self.pooled.lock();
        decay(&mut p);
        p.posts += 1.0;
        if accepted {
            p.accepts += 1.0;
        }
    }

    /// `buyer` returned a lead it had accepted, `lead` ([`lead_key`] of its id; `None`: a
    /// restart's replay, which the guard never counted).
    pub fn on_return(&self, buyer: BuyerKey, lead: Option<u64>) {
        let mut e = self.by_buyer.entry(buyer).or_default();
        roll(
            &mut e,
            self.epoch.load(std::sync::atomic::Ordering::Acquire),
        );
        e.outcomes.returns = (e.outcomes.returns + 1.0).min(e.outcomes.accepts.max(1.0));
        // The guard takes back the lead's weight now, if it counted the lead.
        if let Some(lead) = lead {
            if let Some(i) = e.guard_kept.iter().position(|(kept, _)| *kept == lead) {
                let (_, n) = e.guard_kept.remove(i).unwrap_or_default();
                let age = e.guard_posts.saturating_sub(n);
                let k = 1.0 - 1.0 / GUARD_HORIZON_POSTS;
                let weight = k.powi(i32::try_from(age).unwrap_or(i32::MAX));
                e.guard.kept = (e.guard.kept - weight).max(0.0);
            }
        }
        drop(e);
        let mut p = self.pooled.lock();
        p.returns = (p.returns + 1.0).min(p.accepts.max(1.0));
    }

    /// `buyer` answered a ping in `took_us`.
    pub fn on_response(&self, buyer: BuyerKey, took_us: u64) {
        let ms = took_us as f64 / 1000.0;
        let mut e = self.by_buyer.entry(buyer).or_default();
        e.response_ms = Some(match e.response_ms {
            None => ms,
            Some(old) => old + RESPONSE_ALPHA * (ms - old),
        });
    }

    /// A new model serves from the runtime of generation `epoch`: the drift guard's counts
    /// compared the old one's estimates, so every buyer's start again. The old counts are
    /// kept for auctions still in flight with the old model ([`Self::guard_at`]).
    pub fn reset_guards(&self, epoch: u64) {
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
        for mut e in self.by_buyer.iter_mut() {
            roll(&mut e, epoch);
        }
    }

    /// `buyer`'s drift-guard counts now.
    pub fn guard(&self, buyer: BuyerKey) -> Guard {
        self.guard_at(buyer, self.epoch.load(std::sync::atomic::Ordering::Acquire))
    }

    /// `buyer`'s drift-guard counts for the models of guard epoch `epoch`: the current
    /// counts, the ones the last swap set aside if `epoch` is theirs, or none (models
    /// older than that, or newer than the counts: a swap between storing its runtime and
    /// starting the guards again).
    pub fn guard_at(&self, buyer: BuyerKey, epoch: u64) -> Guard {
        self.by_buyer
            .get(&buyer)
            .map(|e| pick_guard(&e, epoch))
            .unwrap_or_default()
    }

    /// `buyer`'s counts now.
    pub fn outcomes(&self, buyer: BuyerKey) -> Outcomes {
        self.by_buyer
            .get(&buyer)
            .map(|e| e.outcomes)
            .unwrap_or_default()
    }

    /// `buyer`'s unaccepted posts in a row, and when the latest was.
    pub fn streak(&self, buyer: BuyerKey) -> (u32, UnixMs) {
        self.by_buyer
            .get(&buyer)
            .map_or((0, 0), |e| (e.streak, e.streak_at))
    }

    /// `buyer`'s counts, drift guard for the models of guard epoch `epoch`, recent
    /// response time (ms) and streak, in one lookup.
    fn snapshot(
        &self,
        buyer: BuyerKey,
        epoch: u64,
    ) -> (Outcomes, Guard, Option<f64>, (u32, UnixMs)) {
        self.by_buyer.get(&buyer).map_or(
            (Outcomes::default(), Guard::default(), None, (0, 0)),
            |e| {
                (
                    e.outcomes,
                    pick_guard(&e, epoch),
                    e.response_ms,
                    (e.streak, e.streak_at),
                )
            },
        )
    }

    /// The pooled rates: the prior (Laplace-smoothed, so an empty exchange starts at 0.5
    /// acceptance and 1/2 + ... return: see [`Priors`]).
    pub fn priors(&self) -> Priors {
        let p = *self.pooled.lock();
        Priors {
            acceptance: (p.accepts + 1.0) / (p.posts + 2.0),
            return_rate: (p.returns + 0.2) / (p.accepts + 2.0),
        }
    }
}

/// One auction's view of the statistics, as the EV ranker reads it.
pub struct AuctionSignals<'a> {
    pub stats: &'a BuyerStats,
    pub config: &'a Config,
    pub caps: &'a CapBook,
    pub now: UnixMs,
    pub prior_weight: f64,
    /// Compute cap utilisation (a lock and a time-zone conversion per bid) only when a
    /// feature asks for it.
    pub want_caps: bool,
    pub vertical: VerticalIdx,
    /// The guard epoch of the models this auction scores with.
    pub guard_epoch: u64,
    /// The pooled rates, read (under their lock) only when an auction ranks by EV.
    priors: std::sync::OnceLock<Priors>,
}

impl<'a> AuctionSignals<'a> {
    pub fn new(
        stats: &'a BuyerStats,
        config: &'a Config,
        caps: &'a CapBook,
        now: UnixMs,
        vertical: VerticalIdx,
        guard_epoch: u64,
    ) -> AuctionSignals<'a> {
        let v = config.verticals.get(vertical);
        let want_caps = v.and_then(|v| v.features.as_ref()).is_some_and(|f| {
            f.buyer
                .contains(&crate::core::model::features::BuyerFeature::CapUtilisation)
        });
        AuctionSignals {
            stats,
            config,
            caps,
            now,
            prior_weight: f64::from(v.map_or(20, |v| v.routing.prior_weight)),
            want_caps,
            vertical,
            guard_epoch,
            priors: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for AuctionSignals<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuctionSignals")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// The fullest cap window's used share (sold / cap), or `None` for an uncapped buyer.
fn cap_utilisation(caps: &CapBook, key: BuyerKey, b: &Buyer, now: UnixMs) -> Option<f32> {
    let c = &b.caps;
    if c.hourly.is_none() && c.daily.is_none() && c.weekly.is_none() && c.monthly.is_none() {
        return None;
    }
    let u = caps.usage(key, b, now);
    let share = |sold: u32, cap: Option<u32>| {
        cap.map(|cap| {
            if cap == 0 {
                1.0
            } else {
                f64::from(sold) / f64::from(cap)
            }
        })
    };
    [
        share(u.sold_hour, c.hourly),
        share(u.sold_day, c.daily),
        share(u.sold_week, c.weekly),
        share(u.sold_month, c.monthly),
    ]
    .into_iter()
    .flatten()
    .fold(None, |acc: Option<f64>, x| {
        Some(acc.map_or(x, |a| a.max(x)))
    })
    .map(|x| x.min(1.0) as f32)
}

impl SignalSource for AuctionSignals<'_> {
    fn view(&self, buyer: BuyerKey) -> BuyerView {
        let (outcomes, guard, response_ms, (streak, streak_at)) =
            self.stats.snapshot(buyer, self.guard_epoch);
        let paused = self
            .config
            .verticals
            .get(self.vertical)
            .is_some_and(|v| v.routing.paused(streak, streak_at, self.now));
        let response_ms = response_ms.map_or(f32::NAN, |m| m as f32);
        let found = self.config.buyer_by_key(buyer);
        let buyer_hash = found.map_or(f32::NAN, |(_, b)| id_hash(&b.id));
        let cap_utilisation = match (self.want_caps, found) {
            (true, Some((_, b))) => {
                cap_utilisation(self.caps, buyer, b, self.now).unwrap_or(f32::NAN)
            }
            _ => f32::NAN,
        };
        let w = self.prior_weight;
        let priors = self.priors();
        BuyerView {
            outcomes,
            signals: BuyerSignals {
                buyer_hash,
                acceptance_rate: outcomes.acceptance(&priors, w) as f32,
                return_rate: outcomes.return_rate(&priors, w) as f32,
                response_ms,
                cap_utilisation,
            },
            guard,
            paused,
        }
    }

    fn priors(&self) -> Priors {
        *self.priors.get_or_init(|| self.stats.priors())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decay_and_rates_follow_the_buyer() {
        let s = BuyerStats::new();
        let (a, b) = (BuyerKey(1), BuyerKey(2));
        for i in 0..100 {
            s.on_post(a, i % 10 != 0, None, 0, 0); // 90 % accepted
            s.on_post(b, i % 2 == 0, None, 0, 0); // 50 %
        }
        s.on_return(a, None);
        let pa = s.outcomes(a);
        assert!(pa.posts < 100.0 && pa.posts > 85.0, "decayed: {}", pa.posts);
        assert!((pa.accepts / pa.posts - 0.9).abs() < 0.01);
        assert!(pa.returns > 0.99 && pa.returns <= 1.0);
        let pr = s.priors();
        assert!((pr.acceptance - 0.7).abs() < 0.01, "{pr:?}");
        // An unknown buyer has no counts and sits at the prior.
        assert_eq!(s.outcomes(BuyerKey(9)), Outcomes::default());
        s.on_response(a, 10_000);
        s.on_response(a, 20_000);
        let ms = s
            .by_buyer
            .get(&a)
            .and_then(|e| e.response_ms)
            .unwrap_or(0.0);
        assert!((ms - 10.5).abs() < 1e-9, "{ms}");
    }

    /// Black-box round 68b: a model whose estimates rounded to 0 ppm predicted nothing,
    /// so the guard never acted on a buyer that kept 20 of 110 such leads. Each estimate
    /// counts at the award's floor of 1 ppm.
    #[test]
    fn an_estimate_under_the_floor_counts_at_the_floor_and_the_guard_acts_on_it() {
        let s = BuyerStats::new();
        let a = BuyerKey(1);
        for i in 0..110 {
            s.on_post(a, i % 11 < 2, Some((0, 0)), 0, 0);
        }
        let g = s.guard(a);
        assert!(g.predicted > 0.0 && g.predicted < 110e-6 + 1e-12, "{g:?}");
        let f = g.factor(3.0);
        assert!(f > 100_000.0, "the guard acts: {f} {g:?}");
    }

    /// Black-box round 69b: a return took a whole lead off the guard's kept count, even
    /// for a lead sold before the guard started again (a restart, a new model), so a
    /// buyer that kept every lead since was cut to the floor. A return now takes back the
    /// weight the lead has in the guard now, and nothing for a lead it never counted.
    #[test]
    fn a_return_takes_back_only_what_the_guard_counted_of_the_lead() {
        let s = BuyerStats::new();
        let a = BuyerKey(1);
        let k: f64 = 1.0 - 1.0 / GUARD_HORIZON_POSTS;
        // Sold under the old model: at 1..=20.
        for at in 1..=20 {
            s.on_post(a, true, Some((900_000, 0)), at, at as u64);
        }
        s.reset_guards(2);
        // Under the new one: at 101..=112, all kept.
        for at in 101..=112 {
            s.on_post(a, true, Some((900_000, 2)), at, at as u64);
        }
        let before = s.guard(a);
        // The old leads come back: the new guard never counted them.
        for at in 1..=20 {
            s.on_return(a, Some(at as u64));
        }
        assert_eq!(s.guard(a), before);
        // Neither did a restart's replay (no time).
        s.on_return(a, None);
        assert_eq!(s.guard(a), before);
        // A lead of this guard, 12 posts old (the first of 12): its weight now, k^11.
        s.on_return(a, Some(101));
        let after = s.guard(a);
        assert!(
            (before.kept - after.kept - k.powi(11)).abs() < 1e-12,
            "{before:?} {after:?}"
        );
        // Returned twice, taken back once.
        s.on_return(a, Some(101));
        assert_eq!(s.guard(a), after);
        // The rates still count every return.
        assert!(s.outcomes(a).returns > 20.0, "{:?}", s.outcomes(a));
    }

    #[test]
    fn the_drift_guard_counts_estimated_posts_and_starts_again_with_a_new_model() {
        let s = BuyerStats::new();
        let a = BuyerKey(1);
        // Posts without an estimate (a restart's replay) are not the guard's.
        s.on_post(a, true, None, 0, 0);
        assert_eq!(s.guard(a), Guard::default());
        // Ten posts estimated at 0.9: 9 accepted, then one of them returned.
        for i in 0..10 {
            s.on_post(a, i != 0, Some((900_000, 0)), 0, 0);
        }
        s.on_return(a, Some(0));
        let g = s.guard(a);
        let k: f64 = 1.0 - 1.0 / GUARD_HORIZON_POSTS;
        let n: f64 = (0..10).map(|i| k.powi(i)).sum();
        assert!((g.posts - n).abs() < 1e-9, "{g:?}");
        assert!((g.predicted - 0.9 * n).abs() < 1e-9, "{g:?}");
        assert!((g.variance - 0.09 * n).abs() < 1e-9, "{g:?}");
        assert!(g.kept > 7.5 && g.kept < 8.0, "{g:?}");
        // Out-of-range estimates are clamped, never a negative variance.
        s.on_post(BuyerKey(2), true, Some((u32::MAX, 0)), 0, 0);
        assert_eq!(s.guard(BuyerKey(2)).variance, 0.0);
        // A new model: every guard starts again; the cold-start counts stay.
        let before = s.outcomes(a);
        s.reset_guards(3);
        assert_eq!(s.guard(a), Guard::default());
        assert_eq!(s.outcomes(a), before);
    }

    /// Black-box round 73c: an auction scored by the old model and ranked after a swap
    /// read the new model's empty guard, so the old estimates went unscaled. It now reads
    /// the guard of its own models' epoch; auctions of the new model read the new guard.
    #[test]
    fn an_auction_in_flight_across_a_swap_reads_its_own_models_guard() {
        let s = BuyerStats::new();
        let (a, fresh) = (BuyerKey(1), BuyerKey(2));
        // Under the models of epoch 0: ten posts estimated at 0.9, two kept.
        for i in 0..10 {
            s.on_post(a, i < 2, Some((900_000, 0)), i, i as u64);
        }
        let old = s.guard(a);
        assert!(old.posts > 9.0 && old.kept < 2.0, "{old:?}");
        // A swap at generation 4: the old auction keeps the old counts; the new model's
        // auctions start from none, and so does one whose runtime is newer than the
        // counts (stored before the guards were started again).
        s.reset_guards(4);
        assert_eq!(s.guard_at(a, 0), old);
        assert_eq!(s.guard_at(a, 4), Guard::default());
        assert_eq!(s.guard_at(a, 5), Guard::default());
        let (_, in_flight, _, _) = s.snapshot(a, 0);
        assert_eq!(in_flight, old);
        // The new model counts apart from the old counts.
        s.on_post(a, true, Some((500_000, 4)), 20, 20);
        assert!((s.guard_at(a, 4).posts - 1.0).abs() < 1e-12);
        assert_eq!(s.guard_at(a, 0), old);
        // A second swap: epoch 0's counts are gone, epoch 4's set aside.
        let four = s.guard_at(a, 4);
        s.reset_guards(7);
        assert_eq!(s.guard_at(a, 0), Guard::default());
        assert_eq!(s.guard_at(a, 4), four);
        // A buyer first seen after a swap counts for the serving epoch.
        s.on_post(fresh, true, Some((500_000, 7)), 30, 30);
        assert!((s.guard_at(fresh, 7).posts - 1.0).abs() < 1e-12);
        assert_eq!(s.guard_at(fresh, 4), Guard::default());
    }

    /// Black-box rounds 76c and 78a: a post settled after a swap, of an auction the old
    /// model scored, counted its estimate in the new model's guard (76c); judged by the
    /// auction's start against the swap's millisecond instead, an auction that started in
    /// that millisecond was counted in neither guard (78a). An estimate now carries the
    /// epoch of the models that made it, and counts in their guard while they serve, and
    /// in none after.
    #[test]
    fn an_estimate_counts_in_the_guard_of_its_own_models_or_in_none() {
        let s = BuyerStats::new();
        let a = BuyerKey(1);
        s.reset_guards(4);
        // The new models' estimate counts, whenever its auction started.
        s.on_post(a, true, Some((500_000, 4)), 1_000, 1);
        assert!((s.guard_at(a, 4).posts - 1.0).abs() < 1e-12);
        // The old models' estimate, settled after the swap, teaches the rates only.
        let rates = s.outcomes(a).posts;
        s.on_post(a, false, Some((900_000, 0)), 1_000, 2);
        assert!((s.guard_at(a, 4).posts - 1.0).abs() < 1e-12);
        assert_eq!(s.guard_at(a, 0), Guard::default());
        assert!(s.outcomes(a).posts > rates);
        // A runtime newer than the guards (stored before they started again): its
        // estimate waits for no guard, and counts in none.
        s.on_post(a, true, Some((500_000, 5)), 1_000, 3);
        assert!((s.guard_at(a, 4).posts - 1.0).abs() < 1e-12);
        assert_eq!(s.guard_at(a, 5), Guard::default());
        // The kept lead of an estimate not counted is not the guard's to take back.
        let before = s.guard(a);
        s.on_return(a, Some(3));
        assert_eq!(s.guard(a), before);
    }

    /// Black-box round 77a: a return was matched to the guard's kept leads by its sale's
    /// millisecond, so the return of a lead the guard never counted (an old model's
    /// auction settled after a swap) took off another lead sold in the same millisecond.
    /// A return now names its lead.
    #[test]
    fn a_return_takes_back_only_its_own_lead_even_sold_in_the_same_millisecond() {
        let s = BuyerStats::new();
        let a = BuyerKey(1);
        let (counted, uncounted) = (lead_key("ld_counted"), lead_key("ld_uncounted"));
        assert_ne!(counted, uncounted);
        // Both sold at 500: one with the serving model's estimate, one without.
        s.on_post(a, true, Some((800_000, 0)), 500, counted);
        s.on_post(a, true, None, 500, uncounted);
        let before = s.guard(a);
        assert!((before.kept - 1.0).abs() < 1e-12, "{before:?}");
        s.on_return(a, Some(uncounted));
        assert_eq!(s.guard(a), before, "the guard never counted that lead");
        s.on_return(a, Some(counted));
        assert!(s.guard(a).kept.abs() < 1e-12, "{:?}", s.guard(a));
    }

    #[test]
    fn returns_never_exceed_acceptances() {
        let s = BuyerStats::new();
        for _ in 0..5 {
            s.on_return(BuyerKey(3), None);
        }
        assert!(s.outcomes(BuyerKey(3)).returns <= 1.0);
    }
}
