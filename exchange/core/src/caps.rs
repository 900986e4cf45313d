//! Cap and budget accounting per buyer, with reservations.
//!
//! Owns: how many leads each buyer has bought (and has reserved by a firm quote) in each
//! window of its own local calendar (hour, day, ISO week starting Monday, month), and how
//! much money it spent and has reserved per local day. A quote reserves one lead and its
//! price in every current window, and, when the quote stays firm past the start of the
//! next local hour, in the windows of every hour it runs into as well (a quote made at
//! 23:59 and posted at 00:01 must fit both days' caps: the buyer gets the lead in the new
//! day). The post commits the reservation (reserved becomes sold) in the windows the lead
//! was delivered in and drops the other holds, or releases it (reserved becomes nothing).
//!
//! Architecture invariant: in every window, `sold + reserved <= cap` for every cap the
//! buyer had when each reservation was made, and per local day `spent + reserved money <=
//! budget_daily` (counts carried in by a zone change, or restored from the ledger, may
//! stand above a cap: the window then refuses until it ends). The check and the
//! reservation happen under one per-buyer lock, so concurrent auctions can never oversell.
//!
//! A buyer whose `timezone` changes (a reload, or a restart with another zone) keeps its
//! counts: window keys are local calendar numbers, so the book remembers the zone its keys
//! are in and, when a caller's zone differs, carries into the new zone's current window
//! everything the old zone's current window held and every lead of another kept window
//! that falls inside the new window (see `BuyerBook::rezone`). That over-counts for the
//! rest of the new window (a lead may be counted in both zones' days) and never
//! under-counts. And until each old current window ends it stays a limit of its own
//! (`BuyerBook::former`): every hold made before its end counts in it and must fit its
//! caps, so the new zone's next window, which may begin first, cannot sell past the old
//! window's cap (black-box round 35). A cap can never be passed by changing the zone.
//!
//! Never: reads a clock (time is `now`), panics on any input, or grows without bound: a
//! window that is past and holds no reservation is dropped (but the newest past one, kept
//! for a zone change), so a buyer holds about three windows per period plus the windows
//! of its open reservations (bounded by the quote book's `quotes_open_max`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use chrono::{Datelike, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use parking_lot::Mutex;
use proto::Micros;

use super::schedule::local;
use super::UnixMs;
use crate::config::{Buyer, BuyerKey, Caps};
use crate::slots::Slots;

/// Milliseconds per second, for turning local seconds into an instant.
const MS_PER_S: i64 = 1_000;
/// Seconds per minute.
const S_PER_MIN: i64 = 60;
/// Milliseconds per hour.
const HOUR_MS: i64 = 3_600_000;
/// The most any zone is ahead of UTC (Pacific/Kiritimati, +14:00), plus an hour of slack:
/// a local midnight that cannot be placed (a DST gap) is taken this much earlier than
/// the same wall time in UTC, so a window's start is never taken too late.
const ZONE_AHEAD_MAX_MS: i64 = 15 * HOUR_MS;

/// The most any zone is behind UTC (Etc/GMT+12, -12:00), plus an hour of slack: a local
/// day, week or month ends at most this long after the same calendar boundary in UTC.
const ZONE_BEHIND_MAX_MS: i64 = 13 * HOUR_MS;

/// The count windows, in the order of [`Windows::keys`].
const HOUR: usize = 0;
const DAY: usize = 1;
const WEEK: usize = 2;
const MONTH: usize = 3;
/// How many kinds of window there are.
pub const PERIODS: usize = 4;

/// Where one moment falls in a buyer's local calendar: the key of each window it counts
/// in. Every key grows with time, so "older than the current key" means "past".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Windows {
    /// The instant (Unix ms) the local hour began. The repeated hour at a DST fall-back
    /// reads the same on the wall clock twice but starts at two instants (two UTC
    /// offsets), so it is two windows, each with the full hourly cap.
    pub hour_start_ms: i64,
    /// The local calendar day, as days since 0001-01-01.
    pub day: i64,
    /// The local Monday that begins the ISO week, as days since 0001-01-01.
    pub week: i64,
    /// The local month, as `year * 12 + month - 1`.
    pub month: i64,
}

impl Windows {
    /// The windows `now` falls in for a buyer in `tz`; `None` when `now` is off the
    /// calendar (callers fail closed).
    pub fn at(tz: Tz, now: UnixMs) -> Option<Windows> {
        Some(Windows::of_local(&local(tz, now)?, now))
    }

    /// The windows of `now`, given `t`, `now` in the buyer's zone (so a caller that needs
    /// the local time for several things converts it once).
    pub fn of_local(t: &chrono::DateTime<Tz>, now: UnixMs) -> Windows {
        // Offsets are whole seconds, so the local sub-second part is the UTC one.
        let into_hour_ms = (i64::from(t.minute()) * S_PER_MIN + i64::from(t.second())) * MS_PER_S
            + now.rem_euclid(MS_PER_S);
        let day = i64::from(t.date_naive().num_days_from_ce());
        Windows {
            hour_start_ms: now.saturating_sub(into_hour_ms),
            day,
            week: day - i64::from(t.weekday().num_days_from_monday()),
            month: i64::from(t.year()) * 12 + i64::from(t.month0()),
        }
    }

    /// A 32-bit tag of the hour window (its start in whole seconds, wrapping): every other
    /// window changes only when the local hour does, so equal tags at one buyer mean the
    /// same windows (136 years apart aside).
    pub fn hour_tag(&self) -> u32 {
        // Truncation intended: a tag, compared for equality only.
        (self.hour_start_ms.div_euclid(MS_PER_S) as u64) as u32
    }

    fn keys(&self) -> [i64; PERIODS] {
        [self.hour_start_ms, self.day, self.week, self.month]
    }

    /// The windows a lead taken at `at` and written with windows `old` of another zone (a
    /// buyer whose zone changed across a restart) counts in for a buyer in `tz` at `now`:
    /// the window of `tz` current at `now` where the old window may still be running at
    /// `now` (a sale now would fall in it too: an hour's end is known exactly; a day, week
    /// or month of an unknown zone ends at most [`ZONE_BEHIND_MAX_MS`] after the same
    /// calendar boundary in UTC), and otherwise the window of `at` in `tz` (current if
    /// `at` lies in it). Over-counts, never under-counts: as with a zone changed by
    /// a reload ([`CapBook`] carries the old current windows), a zone change across a
    /// restart cannot sell a buyer past a cap in either zone's windows. `None` when a
    /// moment is off the calendar.
    pub fn carried(tz: Tz, old: &Windows, at: UnixMs, now: UnixMs) -> Option<Windows> {
        let of_at = Windows::at(tz, at)?;
        let current = Windows::at(tz, now)?;
        let old_ends = old.ends_in_any_zone()?;
        let (cur, at_keys) = (current.keys(), of_at.keys());
        let key = |p: usize| {
            if old_ends[p] > now {
                cur[p]
            } else {
                at_keys[p]
            }
        };
        Some(Windows {
            hour_start_ms: key(HOUR),
            day: key(DAY),
            week: key(WEEK),
            month: key(MONTH),
        })
    }

    /// The latest instant each of these windows (hour, day, week, month) can end, in
    /// whatever zone they were made: an hour's end is exact; a day, week or month ends at
    /// most [`ZONE_BEHIND_MAX_MS`] after the same calendar boundary in UTC. `None` off
    /// the calendar.
    pub fn ends_in_any_zone(&self) -> Option<[i64; PERIODS]> {
        let utc_start = |d: NaiveDate| -> Option<i64> {
            Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
        };
        Some([
            self.hour_start_ms.saturating_add(HOUR_MS),
            utc_start(date_of(self.day + 1)?)?.saturating_add(ZONE_BEHIND_MAX_MS),
            utc_start(date_of(self.week + 7)?)?.saturating_add(ZONE_BEHIND_MAX_MS),
            utc_start(next_month_first(self.month)?)?.saturating_add(ZONE_BEHIND_MAX_MS),
        ])
    }

    /// [`Windows::ends_in_any_zone`] when one of these windows may still be running at
    /// `now`; `None` once every one has ended (or off the calendar).
    pub fn ends_after(&self, now: UnixMs) -> Option<[i64; PERIODS]> {
        self.ends_in_any_zone()
            .filter(|e| e.iter().any(|&e| e > now))
    }

    /// When each of these windows of `tz` (hour, day, week, month) ends, or a later
    /// instant where a local midnight does not exist (a DST gap): never an earlier one.
    /// `None` off the calendar.
    pub fn ends_in(&self, tz: Tz) -> Option<[i64; PERIODS]> {
        let approx = self.ends_in_any_zone()?;
        let end = |d: Option<NaiveDate>, fallback: i64| -> i64 {
            d.and_then(|d| d.and_hms_opt(0, 0, 0))
                .and_then(|m| tz.from_local_datetime(&m).latest())
                .map_or(fallback, |t| t.timestamp_millis())
        };
        Some([
            approx[HOUR],
            end(date_of(self.day + 1), approx[DAY]),
            end(date_of(self.week + 7), approx[WEEK]),
            end(next_month_first(self.month), approx[MONTH]),
        ])
    }

    /// The latest instant a lead counted in these windows can have been taken at: the end
    /// of its hour (a restored lead's own time is not known more closely).
    fn latest_ms(&self) -> i64 {
        self.hour_start_ms.saturating_add(HOUR_MS - 1)
    }
}

/// The date of a day key (days since 0001-01-01, as [`Windows::day`] counts them).
fn date_of(days_from_ce: i64) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(i32::try_from(days_from_ce).ok()?)
}

/// The first day of the month after the month key `month` (`year * 12 + month - 1`).
fn next_month_first(month: i64) -> Option<NaiveDate> {
    let next = month.checked_add(1)?;
    let (year, month0) = (next.div_euclid(12), next.rem_euclid(12));
    NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month0 + 1).ok()?,
        1,
    )
}

/// The instant each of the windows of `now` in `tz` began (hour, day, week, month), or
/// an earlier one where a local midnight does not exist (a DST gap): never a later one,
/// so a lead taken inside a window is always found inside it.
fn window_starts(tz: Tz, now: UnixMs, w: &Windows) -> Option<[i64; PERIODS]> {
    let t = local(tz, now)?;
    let date = t.date_naive();
    let monday = date - chrono::Days::new(u64::from(date.weekday().num_days_from_monday()));
    let first = date.with_day(1)?;
    let start = |d: NaiveDate| -> Option<i64> {
        let midnight = d.and_hms_opt(0, 0, 0)?;
        Some(match tz.from_local_datetime(&midnight).earliest() {
            Some(s) => s.timestamp_millis(),
            None => midnight
                .and_utc()
                .timestamp_millis()
                .saturating_sub(ZONE_AHEAD_MAX_MS),
        })
    };
    Some([w.hour_start_ms, start(date)?, start(monday)?, start(first)?])
}

/// Most local hours after the first a hold may run into: a quote is firm at most an hour
/// (`server.quote_ttl_ms`) plus the delivery slack, so it can reach two more hours (one
/// made in an hour's last second and firm for the hour runs into the hour after next).
const LATER_HOURS_MAX: usize = 3;

impl Windows {
    /// The windows of every local hour that begins after the hour of `w` and by `until`,
    /// in order: a hold made at `w` and firm until `until` holds these too. Empty when
    /// `until` is in `w`'s hour. `None` when a moment is off the calendar.
    pub fn later_until(tz: Tz, w: &Windows, until: UnixMs) -> Option<Vec<Windows>> {
        let mut out = Vec::new();
        let mut cur = *w;
        // A local hour ends an hour after it began (a DST change moves the wall clock,
        // not the length of the hour it ends).
        while cur.hour_start_ms.saturating_add(HOUR_MS) <= until && out.len() < LATER_HOURS_MAX {
            let next = Windows::at(tz, cur.hour_start_ms.saturating_add(HOUR_MS))?;
            if next.hour_start_ms <= cur.hour_start_ms {
                break;
            }
            out.push(next);
            cur = next;
        }
        Some(out)
    }
}

/// A firm quote's hold on one lead and `price` of a buyer's caps and budget. Hand it back
/// to [`CapBook::commit`] or [`CapBook::release`] exactly once; the book ignores a second
/// hand-back, so a retried settle can never count twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The buyer whose caps hold the lead (its stable key: a reload cannot move it).
    pub buyer: BuyerKey,
    /// The money held against the buyer's daily budget (what the buyer would pay).
    pub price: Micros,
    /// The windows of the moment the hold was made.
    pub windows: Windows,
    /// The windows of each local hour the hold runs into after its first (up to its last
    /// moment: the quote's expiry, a post's deadline), in order: it holds one lead and
    /// `price` there too, so a lead delivered after such an hour began counts in that
    /// hour, day, week and month without passing their caps. Usually empty.
    pub later: Vec<Windows>,
    /// When the lead was sent to the buyer ([`Reservation::delivered_at`]): a commit
    /// counts the sale in the windows of that moment (`windows` if it is not known).
    delivered: Option<UnixMs>,
    /// The book's own handle; private so a reservation cannot be forged.
    id: u64,
}

impl Reservation {
    /// The same hold, noting that the lead was sent to the buyer at `at`: its sale counts
    /// in the held windows of that moment ([`Reservation::counted_windows`]).
    pub fn delivered_at(mut self, at: UnixMs) -> Reservation {
        self.delivered = Some(at);
        self
    }

    /// The windows a sale of this hold counts in: those of the hour the lead was sent
    /// in, of `windows` and `later` (the hold's own: a caller cannot pick others);
    /// `windows` when the moment is not known.
    pub fn counted_windows(&self) -> Windows {
        counted_in(&self.windows, &self.later, self.delivered)
    }
}

/// Of a hold's windows (`first`, then `later`, in order), those of the hour a lead sent
/// at `delivered` falls in; `first` when the moment is not known.
fn counted_in(first: &Windows, later: &[Windows], delivered: Option<UnixMs>) -> Windows {
    let at = delivered.unwrap_or(i64::MIN);
    later
        .iter()
        .rev()
        .find(|l| at >= l.hour_start_ms)
        .copied()
        .unwrap_or(*first)
}

/// Which limit refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapLimit {
    /// `caps.hourly` (leads per local hour).
    Hourly,
    /// `caps.daily` (leads per local day).
    Daily,
    /// `caps.weekly` (leads per ISO week, Monday to Sunday, local).
    Weekly,
    /// `caps.monthly` (leads per local calendar month).
    Monthly,
    /// `budget_daily` (money per local day).
    BudgetDaily,
    /// The buyer key is not in this book or `now` is off the calendar: fail closed.
    Unavailable,
}

impl CapLimit {
    /// The name used in metrics and the auction log.
    pub fn as_str(self) -> &'static str {
        match self {
            CapLimit::Hourly => "hourly",
            CapLimit::Daily => "daily",
            CapLimit::Weekly => "weekly",
            CapLimit::Monthly => "monthly",
            CapLimit::BudgetDaily => "budget_daily",
            CapLimit::Unavailable => "unavailable",
        }
    }
}

/// A reservation refused because a cap or the budget is reached: an expected outcome
/// (the auction moves on to the next bid), not a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buyer {buyer} is at its {} limit", limit.as_str())]
pub struct Capped {
    /// The buyer that is capped.
    pub buyer: BuyerKey,
    /// The first limit found reached (metrics label).
    pub limit: CapLimit,
}

/// A buyer's counts in its current windows, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Leads sold in the current local hour.
    pub sold_hour: u32,
    /// Leads sold in the current local day.
    pub sold_day: u32,
    /// Leads sold in the current ISO week.
    pub sold_week: u32,
    /// Leads sold in the current local month.
    pub sold_month: u32,
    /// Leads held by open quotes in the current local day.
    pub reserved: u32,
    /// Money spent in the current local day.
    pub spent_day: Micros,
    /// Money held by open quotes in the current local day.
    pub reserved_micros: Micros,
}

/// The counts of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Counter {
    sold: u32,
    reserved: u32,
    spent: Micros,
    reserved_micros: Micros,
    /// The latest instant a lead counted here was taken at (0: none known), so a zone
    /// change can tell whether the window's leads fall inside the new zone's window.
    last_ms: i64,
}

/// An outstanding reservation as the book recorded it (the caller's copy is not trusted).
#[derive(Debug, Clone)]
struct Held {
    price: Micros,
    windows: Windows,
    /// The later hours' windows, in order ([`Reservation::later`]).
    later: Vec<Windows>,
    /// The windows, `(period, key)`, a zone change carried this hold out of (into the new
    /// zone's window, as sold): dropped from the book, so the hold's settle leaves them
    /// alone (black-box round 99b: kept with the hold, they counted its leads again when a
    /// later zone change made their key current again).
    carried: Vec<(usize, i64)>,
}

impl Held {
    /// Per period, every window the hold is in: `(key, the instant the lead is first
    /// taken there)`, each key once (hours differ; a day, week or month often repeats).
    /// Allocates nothing: it runs for every reservation and settle on the award's path.
    fn windows_of(&self, period: usize, at: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        let key = move |w: &Windows| w.keys()[period];
        let first = key(&self.windows);
        let later = self.later.iter().enumerate().filter_map(move |(i, l)| {
            let k = key(l);
            let seen = k == first || self.later[..i].iter().any(|e| key(e) == k);
            (!seen).then_some((k, l.hour_start_ms.max(at)))
        });
        std::iter::once((first, at)).chain(later)
    }
}

/// One buyer's windows; guarded by its own mutex.
#[derive(Debug, Default)]
struct BuyerBook {
    /// The latest `now` seen. Time is taken as `max(now, latest)`, so window keys never go
    /// back and a pruned window is never recreated by a late caller with an older `now`.
    latest_now: Option<UnixMs>,
    /// The keys of the current windows (at `latest_now`).
    current: Option<[i64; PERIODS]>,
    /// The zone the window keys are in; `None` until a caller names one (a fresh book, or
    /// one recovery filled from the ledger, maybe for a buyer not configured now).
    zone: Option<Tz>,
    /// Per period, `(key, counts)` of the windows still kept; a handful each.
    windows: [Vec<(i64, Counter)>; PERIODS],
    /// Reservations not yet committed or released, by id.
    outstanding: HashMap<u64, Held>,
    /// Per period, the windows of another zone the buyer had (before a reload or a
    /// restart changed its `timezone`) while they may still be running: every hold made
    /// before one ends counts in it too, and must fit its cap (black-box round 35: the new
    /// zone's next hour started at 0 while the old zone's hour, at its cap, still ran).
    /// Each window is its own limit until its own end (black-box round 59a: last week's
    /// leads, merged into this week's window, kept a buyer at its weekly cap all week).
    former: [Formers; PERIODS],
}

/// The most windows of former zones kept per period: past it, the two that end first
/// become one (an over-count until the later end). Zone changes are rare, and a window
/// is dropped once it has ended.
const FORMER_MAX: usize = 4;

/// A window of a zone the buyer no longer has, still running: what it holds (held leads
/// and money as sold and spent: a hold may yet sell, and is never taken back here) and
/// the latest instant it may end (0: none).
#[derive(Debug, Clone, Copy, Default)]
struct Former {
    until: i64,
    sold: u32,
    spent: Micros,
}

/// One period's windows of former zones, each with its own end.
#[derive(Debug, Clone, Default)]
struct Formers(Vec<Former>);

impl Formers {
    /// The windows still running at `now`.
    fn running(&self, now: i64) -> impl Iterator<Item = &Former> {
        self.0.iter().filter(move |f| f.until > now)
    }

    /// The window that ends at `until` (made, holding nothing, if it is not kept), the
    /// ended ones dropped first; `None` if it has ended.
    fn window(&mut self, until: i64, now: i64) -> Option<&mut Former> {
        if until <= now {
            return None;
        }
        self.0.retain(|f| f.until > now);
        let pos = match self.0.iter().position(|f| f.until == until) {
            Some(pos) => pos,
            None => {
                self.0.push(Former {
                    until,
                    ..Former::default()
                });
                if self.0.len() > FORMER_MAX {
                    // The two that end first become one: it ends with the later of them
                    // and holds both's leads and money (an over-count, never an under-).
                    self.0.sort_by_key(|f| f.until);
                    let first = self.0.remove(0);
                    if let Some(next) = self.0.first_mut() {
                        next.sold = next.sold.saturating_add(first.sold);
                        next.spent = next.spent.saturating_add(first.spent);
                    }
                }
                // The new window may be the one merged: then its leads count in the
                // window it became part of.
                self.0.iter().position(|f| f.until == until).unwrap_or(0)
            }
        };
        self.0.get_mut(pos)
    }

    /// Adds a window of a former zone that may run until `until` and holds `sold` leads
    /// and `spent`: the same window seen again (a zone changed twice within it) is merged
    /// by the larger of each figure, which over-counts, never under-counts.
    fn merge(&mut self, until: i64, sold: u32, spent: Micros, now: i64) {
        if let Some(f) = self.window(until, now) {
            f.sold = f.sold.max(sold);
            f.spent = f.spent.max(spent);
        }
    }
}

impl BuyerBook {
    /// Moves this buyer's clock to `now` (never backwards) and prunes; returns the current
    /// windows (`None` if `now` is off the calendar) and whether they changed. `at`, when
    /// given, is the windows of `now` in `tz` (computed by the caller), used instead of
    /// converting again when the book's clock is not ahead of `now`.
    fn advance_with(
        &mut self,
        tz: Tz,
        now: UnixMs,
        at: Option<&Windows>,
    ) -> (Option<Windows>, bool) {
        let rezoned = self.zone != Some(tz) && self.rezone(tz, now);
        let ahead = self.latest_now.is_some_and(|latest| latest > now);
        let w = match (ahead, at) {
            (false, Some(w)) => Some(*w),
            // The book is at `latest_now` already: its current windows are that moment's.
            (true, _) => match self.current {
                Some([hour_start_ms, day, week, month]) => Some(Windows {
                    hour_start_ms,
                    day,
                    week,
                    month,
                }),
                None => self.latest_now.and_then(|l| Windows::at(tz, l)),
            },
            (false, None) => Windows::at(tz, now),
        };
        let Some(w) = w else {
            return (None, false);
        };
        if !ahead {
            self.latest_now = Some(now);
        }
        let keys = w.keys();
        let moved = self.current != Some(keys);
        if moved {
            self.current = Some(keys);
            self.prune();
        }
        (Some(w), moved || rezoned)
    }

    /// The caller's zone is not the one the keys are in (the buyer's `timezone` changed,
    /// or the book was filled without one): moves the book to `tz` at `max(now, latest)`.
    /// In each period, the new current window gets, besides what it holds, the leads and
    /// money of the old zone's current window (whatever their time: they may lie in the
    /// new window) and of every other kept window with a lead taken at or after the new
    /// window began; held leads and money are carried as sold and spent (the hold may yet
    /// sell, and a carried count is never taken back). A window carried is merged into the
    /// current one (dropped unless it holds a reservation), so a zone that flips back and
    /// forth does not count the same leads again and again. Over-counts, never
    /// under-counts. Returns
    /// whether the book changed; `false` (nothing changed) when the moment is off the
    /// calendar.
    fn rezone(&mut self, tz: Tz, now: UnixMs) -> bool {
        let now = self.latest_now.map_or(now, |latest| latest.max(now));
        let Some(w) = Windows::at(tz, now) else {
            return false;
        };
        let Some(starts) = window_starts(tz, now, &w) else {
            return false;
        };
        // The old zone's current windows run on until their own ends, which may be after
        // the new zone's windows turn: until then each hold counts in them too.
        if let (Some(old_tz), Some(old_keys)) = (self.zone, self.current) {
            let [hour_start_ms, day, week, month] = old_keys;
            let old = Windows {
                hour_start_ms,
                day,
                week,
                month,
            };
            if let Some(ends) = old.ends_in(old_tz) {
                for (period, (key, end)) in old_keys.into_iter().zip(ends).enumerate() {
                    let c = self.counter(period, key);
                    let sold = c.sold.saturating_add(c.reserved);
                    let spent = c.spent.saturating_add(c.reserved_micros);
                    if let Some(f) = self.former.get_mut(period) {
                        f.merge(end, sold, spent, now);
                    }
                }
            }
        }
        self.zone = Some(tz);
        if self.windows.iter().all(Vec::is_empty) {
            self.latest_now = Some(now);
            self.current = Some(w.keys());
            return true;
        }
        let old = self.current;
        let keys = w.keys();
        for (period, (key, start)) in keys.into_iter().zip(starts).enumerate() {
            let old_key = old.and_then(|o| o.get(period).copied());
            let Some(list) = self.windows.get_mut(period) else {
                continue;
            };
            let mut carried = Counter::default();
            let is_carried =
                |k: i64, c: &Counter| k != key && (Some(k) == old_key || c.last_ms >= start);
            for (_, c) in list.iter().filter(|(k, c)| is_carried(*k, c)) {
                carried.sold = carried
                    .sold
                    .saturating_add(c.sold)
                    .saturating_add(c.reserved);
                carried.spent = carried
                    .spent
                    .saturating_add(c.spent)
                    .saturating_add(c.reserved_micros);
                carried.last_ms = carried.last_ms.max(c.last_ms);
            }
            // A window later than the new current one with a lead taken at a time the
            // clock has not reached (it was set back across a restart) is kept for when
            // it comes, as well as carried: an over-count until then, never a window
            // that forgets its leads. Any other carried window is dropped, holds and all:
            // its holds now count (as sold) in the current window only, and their settle
            // skips it (`Held::carried`), so a later zone whose window has its key does
            // not count them again.
            let kept = |k: i64, c: &Counter| !is_carried(k, c) || (k > key && c.last_ms > now);
            for (k, _) in list.iter().filter(|(k, c)| !kept(*k, c) && c.reserved > 0) {
                for held in self.outstanding.values_mut() {
                    if held.windows_of(period, 0).any(|(hk, _)| hk == *k) {
                        held.carried.push((period, *k));
                    }
                }
            }
            list.retain(|(k, c)| kept(*k, c));
            if let Some(c) = self.counter_mut(period, key) {
                c.sold = c.sold.saturating_add(carried.sold);
                c.spent = c.spent.saturating_add(carried.spent);
                c.last_ms = c.last_ms.max(carried.last_ms);
            }
        }
        self.latest_now = Some(now);
        self.current = Some(keys);
        self.prune();
        true
    }

    /// Recovery: the zone the restored windows are in, when known, for a book that has not
    /// been named one yet (and has no current windows): its windows are then this zone's
    /// own, never carried by [`BuyerBook::rezone`].
    fn name_zone(&mut self, zone: Option<Tz>) {
        if self.zone.is_none() && self.current.is_none() {
            self.zone = zone;
        }
    }

    /// Drops windows older than the current one that hold no reservation, but the newest
    /// of them: a zone change may find some of its leads inside the new zone's window
    /// (zones are at most 26 hours apart, so a window of another zone reaches back into
    /// the previous one at most).
    fn prune(&mut self) {
        let Some(current) = self.current else {
            return;
        };
        for (list, cur) in self.windows.iter_mut().zip(current) {
            let previous = list.iter().map(|(k, _)| *k).filter(|k| *k < cur).max();
            list.retain(|(key, c)| *key >= cur || c.reserved > 0 || Some(*key) == previous);
        }
    }

    fn counter(&self, period: usize, key: i64) -> Counter {
        self.windows
            .get(period)
            .and_then(|list| list.iter().find(|(k, _)| *k == key))
            .map_or_else(Counter::default, |(_, c)| *c)
    }

    fn counter_mut(&mut self, period: usize, key: i64) -> Option<&mut Counter> {
        let list = self.windows.get_mut(period)?;
        let pos = match list.iter().position(|(k, _)| *k == key) {
            Some(pos) => pos,
            None => {
                list.push((key, Counter::default()));
                list.len() - 1
            }
        };
        list.get_mut(pos).map(|(_, c)| c)
    }

    /// Counts `held` as reserved in each of its windows; `at` is when the lead was taken
    /// (for a later window, no earlier than the window's start).
    fn hold(&mut self, held: &Held, at: i64) {
        for period in 0..PERIODS {
            for (k, taken) in held.windows_of(period, at) {
                if let Some(c) = self.counter_mut(period, k) {
                    c.reserved = c.reserved.saturating_add(1);
                    c.reserved_micros = c.reserved_micros.saturating_add(held.price);
                    c.last_ms = c.last_ms.max(taken);
                }
            }
        }
        // A former zone's window still running holds it too (for good: a release does
        // not take it back, an over-count bounded by that window's end).
        for f in self
            .former
            .iter_mut()
            .flat_map(|fs| fs.0.iter_mut())
            .filter(|f| f.until > at)
        {
            f.sold = f.sold.saturating_add(1);
            f.spent = f.spent.saturating_add(held.price);
        }
    }

    /// Is there room for one more lead (and, with `price`, that much money)? Without a
    /// price, money headroom means strictly under budget.
    fn check(
        &self,
        keys: [i64; PERIODS],
        caps: &Caps,
        price: Option<Micros>,
        now: i64,
    ) -> Result<(), CapLimit> {
        let counts = [
            (caps.hourly, CapLimit::Hourly),
            (caps.daily, CapLimit::Daily),
            (caps.weekly, CapLimit::Weekly),
            (caps.monthly, CapLimit::Monthly),
        ];
        let former = |period: usize| {
            self.former
                .get(period)
                .into_iter()
                .flat_map(move |fs| fs.running(now))
        };
        for (period, ((cap, limit), key)) in counts.into_iter().zip(keys).enumerate() {
            if let Some(cap) = cap {
                let c = self.counter(period, key);
                if c.sold.saturating_add(c.reserved) >= cap {
                    return Err(limit);
                }
                if former(period).any(|f| f.sold >= cap) {
                    return Err(limit);
                }
            }
        }
        if let Some(budget) = caps.budget_daily {
            let c = self.counter(DAY, keys[DAY]);
            let committed = c.spent.saturating_add(c.reserved_micros);
            let fits = |committed: Micros| match price {
                None => committed < budget,
                Some(p) => committed.saturating_add(p) <= budget,
            };
            if !fits(committed) || former(DAY).any(|f| !fits(f.spent)) {
                return Err(CapLimit::BudgetDaily);
            }
        }
        Ok(())
    }
}

/// One buyer's book and its version.
#[derive(Debug, Default)]
struct BuyerSlot {
    book: Mutex<BuyerBook>,
    /// Raised (under the lock) whenever the book's counts or current windows change: a
    /// reader that saw the buyer full at version `v` knows it is still full while the
    /// version is `v` and the hour has not turned (see [`CapBook::version`]).
    version: AtomicU32,
}

/// Whether a buyer has room for one more lead (eligibility's question).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headroom {
    /// It has.
    Yes,
    /// A cap or the budget is reached. `version` is the book's version when that was
    /// seen (`None` when the answer cannot be remembered: an unknown buyer, a `now` off
    /// the calendar).
    Full { version: Option<u32> },
}

/// Every buyer's caps and budget, shared by all auctions (one small mutex per buyer),
/// addressed by the buyer's stable [`BuyerKey`] so a reload never moves a count to
/// another buyer. The table only grows ([`CapBook::grow`]); a buyer a reload removed
/// keeps its slot, so its open reservations can still be released and its counts are
/// still its own if it comes back.
#[derive(Debug)]
pub struct CapBook {
    /// By `BuyerKey::slot()`; read without a lock, grown by a reload.
    buyers: Slots<BuyerSlot>,
    /// Source of reservation ids (unique for the life of the book).
    next_id: AtomicU64,
}

impl CapBook {
    /// A book for buyer keys `0..buyer_count`.
    pub fn new(buyer_count: usize) -> CapBook {
        CapBook {
            buyers: Slots::with_len(buyer_count),
            next_id: AtomicU64::new(0),
        }
    }

    /// Makes room for buyer keys `0..buyer_count` (new buyers after a reload); never
    /// shrinks.
    pub fn grow(&self, buyer_count: usize) {
        self.buyers.grow(buyer_count);
    }

    /// How many buyer keys the book covers.
    pub fn buyer_count(&self) -> usize {
        self.buyers.len()
    }

    /// Runs `f` on the buyer's book under its lock; `None` for an unknown key.
    fn with<R>(&self, key: BuyerKey, f: impl FnOnce(&mut BuyerBook) -> R) -> Option<R> {
        self.with_version(key, |b, _| f(b))
    }

    /// [`CapBook::with`], also handing `f` the version to raise when it changes the book.
    fn with_version<R>(
        &self,
        key: BuyerKey,
        f: impl FnOnce(&mut BuyerBook, &AtomicU32) -> R,
    ) -> Option<R> {
        let slot = self.buyers.get(key.slot())?;
        let mut b = slot.book.lock();
        Some(f(&mut b, &slot.version))
    }

    /// The buyer's book version: it changes whenever the buyer's counts or current windows
    /// change. Read without a lock (eligibility's hint that a full buyer is still full).
    pub fn version(&self, key: BuyerKey) -> Option<u32> {
        Some(self.buyers.get(key.slot())?.version.load(Ordering::Acquire))
    }

    /// Could the buyer take one more lead now? Every capped window needs `sold + reserved
    /// < cap`, and with a budget, `spent + reserved money < budget_daily`. Eligibility asks
    /// this before pinging, so capped buyers are not pinged at all; the award still
    /// [`reserve`](CapBook::reserve)s, because another auction may have won the last slot
    /// in between. An unknown key is no headroom.
    pub fn has_headroom(&self, key: BuyerKey, buyer: &Buyer, now: UnixMs) -> bool {
        self.headroom_at(key, buyer, now, None, Micros(0)) == Headroom::Yes
    }

    /// [`CapBook::has_headroom`] for a lead that costs the buyer at least `least` (with a
    /// budget, `spent + reserved money + least <= budget_daily`; zero asks for something
    /// left), with `at`, the windows of `now` in the buyer's zone when the caller has them
    /// (eligibility computes them once per zone per auction), and the book's version when
    /// the buyer is full.
    pub fn headroom_at(
        &self,
        key: BuyerKey,
        buyer: &Buyer,
        now: UnixMs,
        at: Option<&Windows>,
        least: Micros,
    ) -> Headroom {
        let least = (least.0 > 0).then_some(least);
        self.with_version(key, |b, version| {
            let (w, moved) = b.advance_with(buyer.timezone, now, at);
            if moved {
                version.fetch_add(1, Ordering::AcqRel);
            }
            match w {
                Some(w) if b.check(w.keys(), &buyer.caps, least, now).is_ok() => Headroom::Yes,
                // A former zone's window still running may end within the hour, making
                // room with no new version: not an answer to remember.
                Some(_) if b.former.iter().any(|fs| fs.running(now).next().is_some()) => {
                    Headroom::Full { version: None }
                }
                Some(_) => Headroom::Full {
                    version: Some(version.load(Ordering::Acquire)),
                },
                None => Headroom::Full { version: None },
            }
        })
        .unwrap_or(Headroom::Full { version: None })
    }

    /// Atomically checks every cap and `budget_daily` (`spent + reserved + price <=
    /// budget`) and, if they allow it, holds one lead and `price` in each current window.
    /// A negative price is held as zero: money held never goes below nothing. The hold is
    /// for `now` only; see [`CapBook::reserve_until`] for one that stays firm.
    pub fn reserve(
        &self,
        key: BuyerKey,
        buyer: &Buyer,
        price: Micros,
        now: UnixMs,
    ) -> Result<Reservation, Capped> {
        self.reserve_until(key, buyer, price, now, now)
    }

    /// [`CapBook::reserve`] for a hold that stays firm until `until` (a quote's expiry, a
    /// post's deadline): for every local hour that begins after `now`'s and by `until`
    /// ([`Windows::later_until`]), every cap and the budget must have room in its windows
    /// too, and the hold takes one lead and `price` there as well
    /// ([`Reservation::later`]). Its commit counts the lead in the windows it was
    /// delivered in, and drops the other holds.
    pub fn reserve_until(
        &self,
        key: BuyerKey,
        buyer: &Buyer,
        price: Micros,
        now: UnixMs,
        until: UnixMs,
    ) -> Result<Reservation, Capped> {
        let capped = |limit| Capped { buyer: key, limit };
        let price = Micros(price.0.max(0));
        self.with_version(key, |b, version| {
            let (w, moved) = b.advance_with(buyer.timezone, now, None);
            if moved {
                version.fetch_add(1, Ordering::AcqRel);
            }
            let w = w.ok_or(capped(CapLimit::Unavailable))?;
            let keys = w.keys();
            let later = Windows::later_until(buyer.timezone, &w, until)
                .ok_or(capped(CapLimit::Unavailable))?;
            let at = b.latest_now.map_or(now, |latest| latest.max(now));
            b.check(keys, &buyer.caps, Some(price), at)
                .map_err(capped)?;
            for l in &later {
                b.check(l.keys(), &buyer.caps, Some(price), at)
                    .map_err(capped)?;
            }
            version.fetch_add(1, Ordering::AcqRel);
            let held = Held {
                price,
                windows: w,
                later: later.clone(),
                carried: Vec::new(),
            };
            b.hold(&held, at);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            b.outstanding.insert(id, held);
            Ok(Reservation {
                buyer: key,
                price,
                windows: w,
                later,
                delivered: None,
                id,
            })
        })
        .unwrap_or(Err(capped(CapLimit::Unavailable)))
    }

    /// The lead was sold: reserved becomes sold (and reserved money becomes spent) in the
    /// windows the reservation was made in. Returns false, changing nothing, if the
    /// reservation was already committed or released.
    pub fn commit(&self, r: &Reservation) -> bool {
        self.settle(r, true)
    }

    /// The quote ended without a sale (expired, rejected, fell back to another buyer): the
    /// hold is dropped. Returns false, changing nothing, if it was already settled.
    pub fn release(&self, r: &Reservation) -> bool {
        self.settle(r, false)
    }

    fn settle(&self, r: &Reservation, sold: bool) -> bool {
        self.with_version(r.buyer, |b, version| {
            let Some(held) = b.outstanding.remove(&r.id) else {
                return false;
            };
            version.fetch_add(1, Ordering::AcqRel);
            // The sale counts in the hour the lead was sent in; every other hold is dropped.
            let counted = counted_in(&held.windows, &held.later, r.delivered).keys();
            for (period, counted) in counted.into_iter().enumerate() {
                for (k, _) in held.windows_of(period, 0) {
                    if held.carried.contains(&(period, k)) {
                        continue;
                    }
                    // The window exists: a window holding a reservation is never pruned.
                    if let Some(c) = b.counter_mut(period, k) {
                        c.reserved = c.reserved.saturating_sub(1);
                        c.reserved_micros = c.reserved_micros.saturating_sub(held.price);
                        if sold && k == counted {
                            c.sold = c.sold.saturating_add(1);
                            c.spent = c.spent.saturating_add(held.price);
                        }
                    }
                }
            }
            b.prune();
            true
        })
        .unwrap_or(false)
    }

    /// Recovery at start: counts one lead sold at `price` in `windows` (a sale, or a
    /// delivery whose outcome is unknown, replayed from the ledger) without checking any
    /// cap: what the ledger says was delivered counts, whatever the caps are now.
    /// `windows` may be of a zone the buyer no longer has (or of one not known: a buyer
    /// not configured now); the first caller that names the zone carries the lead into
    /// that zone's windows if its hour reaches into them (see `BuyerBook::rezone`).
    /// `zone` is the zone `windows` are in when the caller knows it (a configured buyer's):
    /// a book that has no zone yet takes it, so its windows are never carried as another
    /// zone's, and a window later than the first caller's `now` (the clock set back across
    /// a restart) keeps its leads for when it comes (black-box round 58a: carried into the
    /// hour of `now`, they left their own hour empty, and it sold past its cap).
    /// Returns false for an unknown key.
    pub fn restore_sold(
        &self,
        key: BuyerKey,
        zone: Option<Tz>,
        windows: &Windows,
        price: Micros,
    ) -> bool {
        let price = Micros(price.0.max(0));
        self.with_version(key, |b, version| {
            version.fetch_add(1, Ordering::AcqRel);
            b.name_zone(zone);
            for (period, k) in windows.keys().into_iter().enumerate() {
                if let Some(c) = b.counter_mut(period, k) {
                    c.sold = c.sold.saturating_add(1);
                    c.spent = c.spent.saturating_add(price);
                    c.last_ms = c.last_ms.max(windows.latest_ms());
                }
            }
            b.prune();
            true
        })
        .unwrap_or(false)
    }

    /// Recovery at start: a lead of `key` sold at `price` was written in windows of
    /// another zone than the buyer's now (its `timezone` changed across the restart) that
    /// may run until `ends` (per period, [`Windows::ends_in_any_zone`]). Until then it
    /// counts in that window, and every hold made before it ends must fit the window's
    /// caps as well as the zone now's. Each such window (told apart by its end) is a
    /// limit of its own until its own end, with only its own leads (black-box round 59a);
    /// past [`FORMER_MAX`] per period, the two that end first are counted together.
    /// Returns false for an unknown key.
    pub fn restore_former_zone(
        &self,
        key: BuyerKey,
        ends: [i64; PERIODS],
        price: Micros,
        now: UnixMs,
    ) -> bool {
        let price = Micros(price.0.max(0));
        self.with(key, |b| {
            for (fs, end) in b.former.iter_mut().zip(ends) {
                if let Some(f) = fs.window(end, now) {
                    f.sold = f.sold.saturating_add(1);
                    f.spent = f.spent.saturating_add(price);
                }
            }
            true
        })
        .unwrap_or(false)
    }

    /// Recovery at start: holds one lead and `price` in `windows` (and in `later`, the
    /// windows of the quote's expiry when they differ: see [`CapBook::reserve_until`])
    /// for an open quote read back from the ledger, without checking any cap (the hold
    /// existed before the restart). `None` for an unknown key.
    pub fn restore_reservation(
        &self,
        key: BuyerKey,
        zone: Option<Tz>,
        windows: &Windows,
        later: &[Windows],
        price: Micros,
    ) -> Option<Reservation> {
        let price = Micros(price.0.max(0));
        let later: Vec<Windows> = later
            .iter()
            .filter(|l| l.hour_start_ms > windows.hour_start_ms)
            .copied()
            .collect();
        self.with_version(key, |b, version| {
            version.fetch_add(1, Ordering::AcqRel);
            b.name_zone(zone);
            let held = Held {
                price,
                windows: *windows,
                later: later.clone(),
                carried: Vec::new(),
            };
            b.hold(&held, windows.latest_ms());
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            b.outstanding.insert(id, held);
            Reservation {
                buyer: key,
                price,
                windows: *windows,
                later,
                delivered: None,
                id,
            }
        })
    }

    /// The buyer's counts in its current windows (zeros for an unknown key).
    pub fn usage(&self, key: BuyerKey, buyer: &Buyer, now: UnixMs) -> Usage {
        self.with_version(key, |b, version| {
            let (w, moved) = b.advance_with(buyer.timezone, now, None);
            if moved {
                version.fetch_add(1, Ordering::AcqRel);
            }
            let Some(w) = w else {
                return Usage::default();
            };
            let keys = w.keys();
            let day = b.counter(DAY, keys[DAY]);
            Usage {
                sold_hour: b.counter(HOUR, keys[HOUR]).sold,
                sold_day: day.sold,
                sold_week: b.counter(WEEK, keys[WEEK]).sold,
                sold_month: b.counter(MONTH, keys[MONTH]).sold,
                reserved: day.reserved,
                spent_day: day.spent,
                reserved_micros: day.reserved_micros,
            }
        })
        .unwrap_or_default()
    }

    /// How many reservations of this buyer are outstanding (for metrics and tests).
    pub fn outstanding(&self, key: BuyerKey) -> usize {
        self.with(key, |b| b.outstanding.len()).unwrap_or(0)
    }

    /// Every kept window of a buyer: `(period, key, sold, reserved, spent, reserved money)`.
    #[cfg(test)]
    fn windows_of(&self, key: BuyerKey) -> Vec<(usize, i64, Counter)> {
        self.with(key, |b| {
            b.windows
                .iter()
                .enumerate()
                .flat_map(|(p, list)| list.iter().map(move |(k, c)| (p, *k, *c)))
                .collect()
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{buyer, utc_ms};
    use proptest::prelude::*;

    const HOUR_MS: i64 = 3_600_000;
    const MIN_MS: i64 = 60_000;

    fn capped(caps: Caps) -> Buyer {
        Buyer { caps, ..buyer(0) }
    }

    fn m(units: i64) -> Micros {
        Micros(units * 1_000_000)
    }

    /// A zone changed across a restart: a lead counts in every current window of the new
    /// zone its old window reaches into, and only there (the black-box case: Kolkata's
    /// hour [02:30, 03:30) UTC reaches into UTC's [03:00, 04:00); UTC's day reaches into
    /// the first hours of the next day at UTC-3).
    #[test]
    fn a_lead_of_another_zone_counts_in_the_new_zone_windows_its_old_ones_reach() {
        let kolkata = chrono_tz::Asia::Kolkata;
        let minus3: Tz = "Etc/GMT+3".parse().unwrap();
        let at = utc_ms(2026, 11, 30, 2, 37);
        let now = utc_ms(2026, 11, 30, 3, 0) + 30_000;
        let old = Windows::at(kolkata, at).unwrap();
        let carried = Windows::carried(Tz::UTC, &old, at, now).unwrap();
        assert_eq!(
            carried,
            Windows::at(Tz::UTC, now).unwrap(),
            "every window current"
        );
        // Before, the lead counted in the windows of its own time in the new zone: an
        // hour already past.
        assert_ne!(
            Windows::at(Tz::UTC, at).unwrap().hour_start_ms,
            carried.hour_start_ms
        );

        let old = Windows::at(Tz::UTC, utc_ms(2026, 11, 30, 2, 39)).unwrap();
        let c = Windows::carried(minus3, &old, utc_ms(2026, 11, 30, 2, 39), now).unwrap();
        let cur = Windows::at(minus3, now).unwrap();
        assert_eq!((c.day, c.week, c.month), (cur.day, cur.week, cur.month));
        // Its hour (02:00-03:00 UTC) ended before the current one began.
        assert_eq!(c.hour_start_ms, utc_ms(2026, 11, 30, 2, 0));

        // Two days later the old day is past in any zone: the lead keeps its own day.
        let later = utc_ms(2026, 12, 2, 3, 0);
        let c = Windows::carried(minus3, &old, utc_ms(2026, 11, 30, 2, 39), later).unwrap();
        let of_at = Windows::at(minus3, utc_ms(2026, 11, 30, 2, 39)).unwrap();
        assert_eq!(c.day, of_at.day);
        assert!(c.day < Windows::at(minus3, later).unwrap().day);
        // A month boundary: the old zone is not known, and its November may run until
        // December 1st, 12:00 UTC (UTC-12): until then the lead counts in December's
        // monthly cap (UTC-3) too; after it, no longer.
        let dec1 = utc_ms(2026, 12, 1, 3, 0) + 1;
        let c = Windows::carried(minus3, &old, utc_ms(2026, 11, 30, 2, 39), dec1).unwrap();
        assert_eq!(
            c.month,
            Windows::at(minus3, dec1).unwrap().month,
            "may reach December"
        );
        let noon = utc_ms(2026, 12, 1, 14, 0);
        let c = Windows::carried(minus3, &old, utc_ms(2026, 11, 30, 2, 39), noon).unwrap();
        assert_eq!(c.month, of_at.month, "November's lead stays in November");
    }

    /// Black-box round 35: a buyer at its hourly cap in Asia/Kolkata (hour 10:30-11:30
    /// UTC) moved by reload to Asia/Kathmandu (hours begin at :15 UTC): the new zone's
    /// next hour began at 11:15 with no count, and a third lead sold inside the Kolkata
    /// hour. Until the old hour ends it must fit there too; after it, the new hour's own
    /// count is all that matters. The daily budget works the same way.
    #[test]
    fn a_zone_change_cannot_pass_a_cap_of_the_old_zone_s_window_still_running() {
        let kolkata = chrono_tz::Asia::Kolkata;
        let kathmandu = chrono_tz::Asia::Kathmandu;
        let mut b = capped(Caps {
            hourly: Some(2),
            ..Caps::default()
        });
        b.timezone = kolkata;
        let book = CapBook::new(1);
        let t = utc_ms(2026, 12, 2, 11, 1);
        for i in 0..2 {
            let r = book.reserve(BuyerKey(0), &b, m(1), t + i).unwrap();
            assert!(book.commit(&r));
        }
        assert!(book.reserve(BuyerKey(0), &b, m(1), t + 2).is_err());
        b.timezone = kathmandu;
        // Kathmandu's hour 10:15-11:15 holds the two (carried).
        assert!(book.reserve(BuyerKey(0), &b, m(1), t + 3).is_err());
        // 11:15:17: Kathmandu's next hour, Kolkata's hour still running: still capped.
        let next = utc_ms(2026, 12, 2, 11, 15) + 17_000;
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(1), next),
            Err(Capped {
                buyer: BuyerKey(0),
                limit: CapLimit::Hourly
            })
        );
        assert!(!book.has_headroom(BuyerKey(0), &b, next + 1));
        // Full until 11:30 only, within Kathmandu's hour: not to be remembered for the
        // hour (eligibility's hint would keep the buyer out until 12:15).
        assert_eq!(
            book.headroom_at(BuyerKey(0), &b, next + 2, None, Micros(0)),
            Headroom::Full { version: None }
        );
        // 11:30: the Kolkata hour has ended: two more fit in Kathmandu's hour, not three.
        let after = utc_ms(2026, 12, 2, 11, 30);
        assert!(book.has_headroom(BuyerKey(0), &b, after));
        assert!(book.reserve(BuyerKey(0), &b, m(1), after).is_ok());
        assert!(book.reserve(BuyerKey(0), &b, m(1), after + 1).is_ok());
        assert!(book.reserve(BuyerKey(0), &b, m(1), after + 2).is_err());

        // The daily budget: 10 of 10 spent on a UTC day, then the zone moves to UTC+3,
        // whose next day begins at 21:00 UTC, while the UTC day runs until midnight.
        let mut b = capped(Caps {
            budget_daily: Some(m(10)),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let t = utc_ms(2026, 12, 2, 20, 0);
        let r = book.reserve(BuyerKey(0), &b, m(10), t).unwrap();
        assert!(book.commit(&r));
        b.timezone = "Etc/GMT-3".parse().unwrap();
        assert!(book.reserve(BuyerKey(0), &b, m(1), t + 1).is_err());
        let next_day = utc_ms(2026, 12, 2, 21, 0) + 1;
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(1), next_day),
            Err(Capped {
                buyer: BuyerKey(0),
                limit: CapLimit::BudgetDaily
            }),
            "the UTC day, spent to its budget, runs until midnight"
        );
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2026, 12, 3, 0, 0))
            .is_ok());
    }

    /// The same across a restart: recovery names the old zone's windows' latest ends
    /// ([`Windows::ends_in_any_zone`]) and the leads in them.
    #[test]
    fn a_lead_of_a_former_zone_restored_at_a_start_holds_its_window_s_cap_until_it_ends() {
        let kolkata = chrono_tz::Asia::Kolkata;
        let mut b = capped(Caps {
            hourly: Some(2),
            ..Caps::default()
        });
        b.timezone = chrono_tz::Asia::Kathmandu;
        let book = CapBook::new(1);
        let at = utc_ms(2026, 12, 2, 11, 1);
        let now = at + 60_000;
        let old = Windows::at(kolkata, at).unwrap();
        for _ in 0..2 {
            let w = Windows::carried(b.timezone, &old, at, now).unwrap();
            assert!(book.restore_sold(BuyerKey(0), None, &w, m(1)));
            let ends = old.ends_in_any_zone().unwrap();
            assert!(book.restore_former_zone(BuyerKey(0), ends, m(1), now));
        }
        assert!(book.reserve(BuyerKey(0), &b, m(1), now).is_err());
        let next = utc_ms(2026, 12, 2, 11, 15) + 17_000;
        assert!(
            book.reserve(BuyerKey(0), &b, m(1), next).is_err(),
            "Kolkata's hour runs until 11:30"
        );
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2026, 12, 2, 11, 30))
            .is_ok());
        // An unknown key changes nothing.
        assert!(!book.restore_former_zone(BuyerKey(7), old.ends_in_any_zone().unwrap(), m(1), now));
    }

    /// Black-box round 59a: a buyer moved from New York to Los Angeles at a restart early
    /// on a Monday (UTC), with two leads in New York's week before and two in the week
    /// that just began, `weekly = 3`. Each old week is a limit until its own end, and only
    /// its own leads count in it: last week's two do not make this week's window full
    /// (merged into one, the four kept the buyer at its cap until this week's end).
    #[test]
    fn each_window_of_a_former_zone_is_a_limit_of_its_own_until_its_own_end() {
        let ny = chrono_tz::America::New_York;
        let la = zoned(
            chrono_tz::America::Los_Angeles,
            Caps {
                weekly: Some(3),
                ..Caps::default()
            },
        );
        let book = CapBook::new(1);
        let last_week = Windows::at(ny, utc_ms(2026, 12, 1, 5, 0)).unwrap();
        let this_week = Windows::at(ny, utc_ms(2026, 12, 7, 5, 10)).unwrap();
        assert_ne!(last_week.week, this_week.week);
        let restart = utc_ms(2026, 12, 7, 5, 15);
        for w in [last_week, last_week, this_week, this_week] {
            let ends = w.ends_after(restart).unwrap();
            assert!(book.restore_former_zone(BuyerKey(0), ends, m(1), restart));
        }
        // Neither New York week holds 3: there is room (the lead then counts in both).
        assert!(book.has_headroom(BuyerKey(0), &la, restart + 1_000));
        assert!(book
            .reserve(BuyerKey(0), &la, m(1), restart + 1_000)
            .is_ok());
        assert!(!book.has_headroom(BuyerKey(0), &la, restart + 2_000));
        // Last week's window has ended (13 h after the UTC boundary, at the latest); this
        // week's holds 3 until its own end, and then the buyer has room again.
        let tuesday = utc_ms(2026, 12, 8, 12, 0);
        assert!(!book.has_headroom(BuyerKey(0), &la, tuesday));
        let next_week = utc_ms(2026, 12, 14, 13, 0);
        assert!(book.has_headroom(BuyerKey(0), &la, next_week + 1_000));
        assert!(book
            .reserve(BuyerKey(0), &la, m(1), next_week + 1_000)
            .is_ok());
    }

    /// Past [`FORMER_MAX`] windows of former zones in a period, the two that end first
    /// become one, holding both's leads until the later end: an over-count, never a lead
    /// forgotten.
    #[test]
    fn former_windows_past_the_bound_are_merged_never_forgotten() {
        let b = capped(Caps {
            hourly: Some(2),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let now = utc_ms(2026, 12, 7, 5, 0);
        let ends = |h: i64| {
            let mut e = Windows::at(Tz::UTC, now)
                .unwrap()
                .ends_in_any_zone()
                .unwrap();
            e[HOUR] = now + h * HOUR_MS;
            e
        };
        for h in 1..=6 {
            assert!(book.restore_former_zone(BuyerKey(0), ends(h), m(1), now));
        }
        // Hours 1 and 2 went into 2, then 2 into 3: three leads until hour 3's end.
        assert!(!book.has_headroom(BuyerKey(0), &b, now + 1_000));
        assert!(!book.has_headroom(BuyerKey(0), &b, now + 3 * HOUR_MS - 1));
        assert!(book.has_headroom(BuyerKey(0), &b, now + 3 * HOUR_MS));

        // A new window that ends before every kept one is the one merged: its lead
        // counts in the window it became part of, never nowhere.
        let book = CapBook::new(1);
        for h in [5, 6, 7, 8] {
            assert!(book.restore_former_zone(BuyerKey(0), ends(h), m(1), now));
        }
        assert!(book.restore_former_zone(BuyerKey(0), ends(1), m(1), now));
        assert!(book.restore_former_zone(BuyerKey(0), ends(1), m(1), now));
        assert!(
            !book.has_headroom(BuyerKey(0), &b, now + 4 * HOUR_MS),
            "hour 1's two leads count in hour 5's window"
        );
        assert!(book.has_headroom(BuyerKey(0), &b, now + 5 * HOUR_MS));
    }

    /// Black-box round 36: an open quote held in UTC's hour 12:00-13:00, restored at a
    /// restart (12:29:50) that moved its buyer (`hourly = 1`) to Asia/Kolkata. Recovery
    /// holds it again in the zone now's windows up to the quote's end, and keeps the UTC
    /// hour as a limit: the quote's post at 12:30:10 sells, and nothing else does until
    /// both that UTC hour and the Kolkata hour the lead was delivered in have ended.
    #[test]
    fn a_quote_restored_into_another_zone_holds_both_zones_windows() {
        let kolkata = chrono_tz::Asia::Kolkata;
        let mut b = capped(Caps {
            hourly: Some(1),
            ..Caps::default()
        });
        b.timezone = kolkata;
        let book = CapBook::new(1);
        let held_in = Windows::at(Tz::UTC, utc_ms(2026, 12, 2, 12, 29) + 40_000).unwrap();
        let restart = utc_ms(2026, 12, 2, 12, 29) + 50_000;
        let until = utc_ms(2026, 12, 2, 12, 30) + 40_000;
        // What recovery does (`restore_quote`): the hold in the zone now, then the old
        // windows as limits.
        let w = Windows::at(kolkata, restart).unwrap();
        let later = Windows::later_until(kolkata, &w, until).unwrap();
        let r = book
            .restore_reservation(BuyerKey(0), None, &w, &later, m(1))
            .unwrap();
        let ends = held_in.ends_in_any_zone().unwrap();
        assert!(book.restore_former_zone(BuyerKey(0), ends, m(1), restart));
        let posted = utc_ms(2026, 12, 2, 12, 30) + 10_000;
        assert!(book.reserve(BuyerKey(0), &b, m(1), posted).is_err());
        assert!(book.commit(&r.delivered_at(posted)));
        assert!(book.reserve(BuyerKey(0), &b, m(1), posted + 170).is_err());
        // 13:05: UTC's hour is over, but the lead is in Kolkata's 12:30-13:30.
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2026, 12, 2, 13, 5))
            .is_err());
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2026, 12, 2, 13, 30))
            .is_ok());
    }

    #[test]
    fn windows_new_york_fall_back_hour_is_two_windows() {
        let ny = chrono_tz::America::New_York;
        let edt = Windows::at(ny, utc_ms(2024, 11, 3, 5, 30)).unwrap(); // 01:30 EDT
        let est = Windows::at(ny, utc_ms(2024, 11, 3, 6, 30)).unwrap(); // 01:30 EST
        assert_eq!(edt.hour_start_ms, utc_ms(2024, 11, 3, 5, 0));
        assert_eq!(est.hour_start_ms, utc_ms(2024, 11, 3, 6, 0));
        assert_eq!(edt.day, est.day);
    }

    #[test]
    fn windows_half_hour_zone_and_iso_week() {
        // India is UTC+05:30: the local hour starts at :30 UTC.
        let kolkata = chrono_tz::Asia::Kolkata;
        let w = Windows::at(kolkata, utc_ms(2024, 1, 15, 4, 45) + 1234).unwrap();
        assert_eq!(w.hour_start_ms, utc_ms(2024, 1, 15, 4, 30));
        // 2024-01-21 is a Sunday, 2024-01-22 a Monday: a new ISO week.
        let sun = Windows::at(Tz::UTC, utc_ms(2024, 1, 21, 23, 59)).unwrap();
        let mon = Windows::at(Tz::UTC, utc_ms(2024, 1, 22, 0, 0)).unwrap();
        assert_eq!(sun.week + 7, mon.week);
        assert_eq!(mon.week, mon.day);
        assert_eq!(sun.month, mon.month);
        let feb = Windows::at(Tz::UTC, utc_ms(2024, 2, 1, 0, 0)).unwrap();
        assert_eq!(feb.month, sun.month + 1);
        assert!(Windows::at(Tz::UTC, i64::MAX).is_none());
    }

    #[test]
    fn hourly_cap_and_next_hour() {
        let b = capped(Caps {
            hourly: Some(2),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let t = utc_ms(2024, 1, 15, 10, 0);
        assert!(book.reserve(BuyerKey(0), &b, m(1), t).is_ok());
        assert!(book.reserve(BuyerKey(0), &b, m(1), t + 1).is_ok());
        assert!(!book.has_headroom(BuyerKey(0), &b, t + 2));
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(1), t + 2),
            Err(Capped {
                buyer: BuyerKey(0),
                limit: CapLimit::Hourly
            })
        );
        assert!(book.has_headroom(BuyerKey(0), &b, t + HOUR_MS));
        assert!(book.reserve(BuyerKey(0), &b, m(1), t + HOUR_MS).is_ok());
    }

    #[test]
    fn every_count_limit_is_named() {
        let t = utc_ms(2024, 1, 15, 10, 0); // a Monday
        for (caps, limit, later) in [
            (
                Caps {
                    daily: Some(1),
                    ..Caps::default()
                },
                CapLimit::Daily,
                HOUR_MS,
            ),
            (
                Caps {
                    weekly: Some(1),
                    ..Caps::default()
                },
                CapLimit::Weekly,
                24 * HOUR_MS,
            ),
            (
                Caps {
                    monthly: Some(1),
                    ..Caps::default()
                },
                CapLimit::Monthly,
                7 * 24 * HOUR_MS,
            ),
        ] {
            let b = capped(caps);
            let book = CapBook::new(1);
            let r = book.reserve(BuyerKey(0), &b, m(1), t).unwrap();
            assert!(book.commit(&r));
            // Still inside the window, a period later in the smaller window.
            assert_eq!(
                book.reserve(BuyerKey(0), &b, m(1), t + later)
                    .unwrap_err()
                    .limit,
                limit
            );
        }
    }

    #[test]
    fn zero_cap_never_takes() {
        let b = capped(Caps {
            daily: Some(0),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        assert!(!book.has_headroom(BuyerKey(0), &b, 0));
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(1), 0).unwrap_err().limit,
            CapLimit::Daily
        );
    }

    #[test]
    fn budget_counts_spent_reserved_and_price() {
        let b = capped(Caps {
            budget_daily: Some(m(30)),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let t = utc_ms(2024, 1, 15, 10, 0);
        let r1 = book.reserve(BuyerKey(0), &b, m(10), t).unwrap();
        let r2 = book.reserve(BuyerKey(0), &b, m(15), t).unwrap();
        assert!(book.commit(&r1));
        // 10 spent + 15 reserved + 6 > 30.
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(6), t).unwrap_err().limit,
            CapLimit::BudgetDaily
        );
        assert!(book.has_headroom(BuyerKey(0), &b, t));
        let r3 = book.reserve(BuyerKey(0), &b, m(5), t).unwrap(); // exactly 30
        assert!(!book.has_headroom(BuyerKey(0), &b, t));
        let u = book.usage(BuyerKey(0), &b, t);
        assert_eq!(
            (u.spent_day, u.reserved_micros, u.reserved),
            (m(10), m(20), 2)
        );
        assert!(book.release(&r2));
        assert!(book.release(&r3));
        assert!(book.has_headroom(BuyerKey(0), &b, t));
        // The next local day has the whole budget again.
        assert!(book
            .reserve(BuyerKey(0), &b, m(30), t + 24 * HOUR_MS)
            .is_ok());
    }

    #[test]
    fn negative_price_is_held_as_zero() {
        let b = capped(Caps {
            budget_daily: Some(m(1)),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let r = book
            .reserve(BuyerKey(0), &b, Micros(-5_000_000), 0)
            .unwrap();
        assert_eq!(r.price, Micros::ZERO);
        assert!(book.commit(&r));
        assert_eq!(book.usage(BuyerKey(0), &b, 0).spent_day, Micros::ZERO);
    }

    #[test]
    fn commit_and_release_once_only() {
        let b = capped(Caps {
            daily: Some(5),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let r = book.reserve(BuyerKey(0), &b, m(2), 0).unwrap();
        let copy = r.clone();
        assert!(book.commit(&r));
        assert!(!book.commit(&copy));
        assert!(!book.release(&copy));
        let u = book.usage(BuyerKey(0), &b, 0);
        assert_eq!((u.sold_day, u.reserved, u.spent_day), (1, 0, m(2)));
        // A tampered copy changes nothing either: the book keeps its own record.
        let r2 = book.reserve(BuyerKey(0), &b, m(2), 0).unwrap();
        let mut forged = r2.clone();
        forged.price = m(1000);
        assert!(book.release(&forged));
        assert!(!book.release(&r2));
        assert_eq!(book.usage(BuyerKey(0), &b, 0).reserved_micros, Micros::ZERO);
        assert_eq!(book.outstanding(BuyerKey(0)), 0);
    }

    /// A New York buyer with a daily cap of 1, and a quote made on Monday at 23:59 local
    /// that stays firm into Tuesday.
    fn across_midnight() -> (Buyer, i64, i64) {
        let b = Buyer {
            timezone: chrono_tz::America::New_York,
            ..capped(Caps {
                daily: Some(1),
                weekly: Some(5),
                ..Caps::default()
            })
        };
        let monday_2359 = utc_ms(2024, 1, 16, 4, 59); // Monday 23:59 EST
        (b, monday_2359, monday_2359 + MIN_MS)
    }

    #[test]
    fn a_quote_firm_past_midnight_holds_both_days() {
        let (b, monday_2359, midnight) = across_midnight();
        let book = CapBook::new(1);
        let r = book
            .reserve_until(BuyerKey(0), &b, m(1), monday_2359, midnight + 30_000)
            .unwrap();
        assert_eq!(r.later.len(), 1, "firm into Tuesday");
        let later = r.later[0];
        assert_eq!(later.day, r.windows.day + 1);
        assert_eq!(later.hour_start_ms, midnight);
        assert!(!book.has_headroom(BuyerKey(0), &b, monday_2359 + 30_000));
        // Tuesday's only lead is held by the quote: nothing else can take it.
        assert!(!book.has_headroom(BuyerKey(0), &b, midnight + 1_000));
        let u = book.usage(BuyerKey(0), &b, midnight + 1_000);
        assert_eq!((u.sold_day, u.reserved, u.reserved_micros), (0, 1, m(1)));
        // Released: both days are free again.
        assert!(book.release(&r));
        assert!(book.has_headroom(BuyerKey(0), &b, midnight + 2_000));
        assert_eq!(book.outstanding(BuyerKey(0)), 0);
        for (_, _, c) in book.windows_of(BuyerKey(0)) {
            assert_eq!((c.reserved, c.reserved_micros), (0, Micros::ZERO));
        }
    }

    #[test]
    fn a_quote_delivered_after_midnight_counts_in_the_new_day() {
        // Before, the sale counted in Monday and Tuesday's cap sold a second lead.
        let (b, monday_2359, midnight) = across_midnight();
        let book = CapBook::new(1);
        let r = book
            .reserve_until(BuyerKey(0), &b, m(1), monday_2359, midnight + 30_000)
            .unwrap();
        let r = r.delivered_at(midnight + 10_000);
        assert_eq!(r.counted_windows(), r.later[0]);
        assert!(book.commit(&r));
        let u = book.usage(BuyerKey(0), &b, midnight + 20_000);
        assert_eq!(
            (u.sold_day, u.sold_week, u.reserved, u.spent_day),
            (1, 1, 0, m(1))
        );
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(1), midnight + 20_000),
            Err(Capped {
                buyer: BuyerKey(0),
                limit: CapLimit::Daily
            })
        );
    }

    #[test]
    fn a_quote_delivered_before_midnight_counts_in_its_own_day() {
        let (b, monday_2359, midnight) = across_midnight();
        let book = CapBook::new(1);
        let r = book
            .reserve_until(BuyerKey(0), &b, m(1), monday_2359, midnight + 30_000)
            .unwrap()
            .delivered_at(midnight - 1);
        assert_eq!(r.counted_windows(), r.windows);
        assert!(book.commit(&r));
        // Tuesday's hold is dropped: it has its own lead to sell.
        let r2 = book
            .reserve(BuyerKey(0), &b, m(1), midnight + 1_000)
            .unwrap();
        assert_eq!(r2.windows.day, r.windows.day + 1);
        assert_eq!(r2.windows.week, r.windows.week);
        let u = book.usage(BuyerKey(0), &b, midnight + 1_000);
        assert_eq!((u.sold_day, u.sold_week, u.reserved), (0, 1, 1));
    }

    #[test]
    fn a_quote_cannot_be_firm_into_an_hour_that_is_full() {
        let b = capped(Caps {
            hourly: Some(1),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let eleven = utc_ms(2026, 11, 30, 11, 0);
        // Held in 10:00 and 11:00, sold at 11:00:05: 11:00 is full, 10:00 free.
        let first = book
            .reserve_until(BuyerKey(0), &b, m(1), eleven - 2 * MIN_MS, eleven + 30_000)
            .unwrap()
            .delivered_at(eleven + 5_000);
        assert!(book.commit(&first));
        assert!(book.has_headroom(BuyerKey(0), &b, eleven - MIN_MS));
        // A hold for 10:59 alone fits; one firm until 11:00:30 does not.
        assert_eq!(
            book.reserve_until(BuyerKey(0), &b, m(1), eleven - MIN_MS, eleven + 30_000),
            Err(Capped {
                buyer: BuyerKey(0),
                limit: CapLimit::Hourly
            })
        );
        assert_eq!(book.outstanding(BuyerKey(0)), 0, "a refusal holds nothing");
        let short = book
            .reserve_until(BuyerKey(0), &b, m(1), eleven - MIN_MS, eleven - 1)
            .unwrap();
        assert!(short.later.is_empty());
    }

    /// Black-box round 13: a quote made in an hour's last second and firm for an hour
    /// (plus the delivery slack) runs into the hour after next; the middle hour was not
    /// held, and its lead counted in the first hour, so the middle one sold its cap again.
    #[test]
    fn a_quote_firm_for_an_hour_holds_every_hour_it_runs_into() {
        let b = capped(Caps {
            hourly: Some(1),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let seventeen = utc_ms(2026, 12, 1, 17, 0);
        let made = seventeen - 500;
        let r = book
            .reserve_until(BuyerKey(0), &b, m(1), made, made + HOUR_MS + 1_000)
            .unwrap();
        assert_eq!(
            r.later.iter().map(|l| l.hour_start_ms).collect::<Vec<_>>(),
            [seventeen, seventeen + HOUR_MS]
        );
        // Both later hours are held (the book's clock only moves forward: 18:00 is seen
        // through its counts).
        assert!(!book.has_headroom(BuyerKey(0), &b, seventeen + 2_000));
        let held: Vec<(i64, u32)> = book
            .windows_of(BuyerKey(0))
            .into_iter()
            .filter(|(p, _, _)| *p == HOUR)
            .map(|(_, k, c)| (k, c.reserved))
            .collect();
        assert_eq!(
            held,
            [
                (seventeen - HOUR_MS, 1),
                (seventeen, 1),
                (seventeen + HOUR_MS, 1)
            ]
        );
        // Sent at 17:00:03: it counts in 17:00, and the other hours are free again.
        let r = r.delivered_at(seventeen + 3_000);
        assert_eq!(r.counted_windows().hour_start_ms, seventeen);
        assert!(book.commit(&r));
        let u = book.usage(BuyerKey(0), &b, seventeen + 5_000);
        assert_eq!((u.sold_hour, u.reserved), (1, 0));
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), seventeen + 6_000)
            .is_err());
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), seventeen + HOUR_MS + 1)
            .is_ok());
        for (_, _, c) in book
            .windows_of(BuyerKey(0))
            .into_iter()
            .filter(|(p, _, _)| *p == HOUR)
        {
            assert!(c.sold + c.reserved <= 1, "{c:?}");
        }
    }

    #[test]
    fn a_restored_quote_holds_the_windows_of_its_end_too() {
        let (b, monday_2359, midnight) = across_midnight();
        let book = CapBook::new(1);
        let w = Windows::at(b.timezone, monday_2359).unwrap();
        let later = Windows::at(b.timezone, midnight + 30_000).unwrap();
        let r = book
            .restore_reservation(BuyerKey(0), None, &w, &[later], m(1))
            .unwrap();
        assert_eq!(r.later, [later]);
        assert!(!book.has_headroom(BuyerKey(0), &b, midnight + 1_000));
        assert!(book.commit(&r.delivered_at(midnight + 2_000)));
        let u = book.usage(BuyerKey(0), &b, midnight + 3_000);
        assert_eq!((u.sold_day, u.reserved), (1, 0));
        // The same windows twice are one hold.
        let again = book
            .restore_reservation(BuyerKey(0), None, &w, &[w], m(1))
            .unwrap();
        assert!(again.later.is_empty());
    }

    #[test]
    fn fall_back_repeated_hour_has_its_own_cap() {
        let ny = chrono_tz::America::New_York;
        let b = Buyer {
            timezone: ny,
            ..capped(Caps {
                hourly: Some(1),
                ..Caps::default()
            })
        };
        let book = CapBook::new(1);
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2024, 11, 3, 5, 30))
            .is_ok()); // 01:30 EDT
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2024, 11, 3, 5, 45))
            .is_err()); // 01:45 EDT
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), utc_ms(2024, 11, 3, 6, 30))
            .is_ok()); // 01:30 EST
    }

    #[test]
    fn unknown_buyer_fails_closed() {
        let b = buyer(0);
        let book = CapBook::new(1);
        assert!(!book.has_headroom(BuyerKey(3), &b, 0));
        assert_eq!(
            book.reserve(BuyerKey(3), &b, m(1), 0).unwrap_err().limit,
            CapLimit::Unavailable
        );
        assert_eq!(
            book.reserve(BuyerKey(0), &b, m(1), i64::MAX)
                .unwrap_err()
                .limit,
            CapLimit::Unavailable
        );
        assert_eq!(book.usage(BuyerKey(3), &b, 0), Usage::default());
    }

    #[test]
    fn old_windows_are_pruned() {
        let b = capped(Caps {
            hourly: Some(100),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let t0 = utc_ms(2024, 1, 1, 0, 0);
        // One held reservation from the first hour keeps its windows alive.
        let held = book.reserve(BuyerKey(0), &b, m(1), t0).unwrap();
        for h in 1..2000 {
            let r = book
                .reserve(BuyerKey(0), &b, m(1), t0 + h * HOUR_MS)
                .unwrap();
            assert!(book.commit(&r));
        }
        // Current and previous hour/day/week/month plus the held reservation's.
        assert!(
            book.windows_of(BuyerKey(0)).len() <= 3 * PERIODS,
            "{:?}",
            book.windows_of(BuyerKey(0))
        );
        assert!(book.release(&held));
        assert!(book.windows_of(BuyerKey(0)).len() <= 2 * PERIODS);
    }

    #[test]
    fn a_late_caller_with_an_older_now_counts_in_the_current_window() {
        let b = capped(Caps {
            hourly: Some(1),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let t = utc_ms(2024, 1, 15, 10, 0);
        let r = book.reserve(BuyerKey(0), &b, m(1), t + HOUR_MS).unwrap();
        // An auction that read the clock before the hour turned must not find the old,
        // pruned hour empty: it is taken to be in the current hour, which is full.
        assert!(book
            .reserve(BuyerKey(0), &b, m(1), t + HOUR_MS - 1)
            .is_err());
        assert!(book.release(&r));
    }

    #[test]
    fn sixteen_threads_against_a_daily_cap_of_ten() {
        let b = capped(Caps {
            daily: Some(10),
            ..Caps::default()
        });
        let book = CapBook::new(1);
        let t = utc_ms(2024, 1, 15, 10, 0);
        let won = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for th in 0..16 {
                let (book, b, won) = (&book, &b, &won);
                s.spawn(move || {
                    for i in 0..50 {
                        if let Ok(r) = book.reserve(BuyerKey(0), b, m(1), t + th * 10 + i) {
                            won.fetch_add(1, Ordering::Relaxed);
                            assert!(book.commit(&r));
                        }
                    }
                });
            }
        });
        assert_eq!(won.load(Ordering::Relaxed), 10);
        assert_eq!(book.usage(BuyerKey(0), &b, t + 1000).sold_day, 10);
    }

    fn zoned(tz: Tz, caps: Caps) -> Buyer {
        Buyer {
            timezone: tz,
            ..capped(caps)
        }
    }

    #[test]
    fn a_hold_carried_by_two_zone_changes_counts_once() {
        // Black-box round 99b: UTC, daily 20, 2 sold and 2 held (open quotes); the zone
        // changed to Los Angeles (still the 4th there), then to Tokyo (the 5th again, the
        // UTC day's key). The UTC window kept for its holds still counted its leads when
        // Tokyo's day made it current again, on top of the copy carried through Los
        // Angeles: 4 leads counted 8, and the buyer was capped at 16 real leads.
        let caps = Caps {
            daily: Some(20),
            ..Caps::default()
        };
        let (utc, la, tokyo) = (
            zoned(Tz::UTC, caps),
            zoned(chrono_tz::America::Los_Angeles, caps),
            zoned(chrono_tz::Asia::Tokyo, caps),
        );
        let book = CapBook::new(1);
        let t = utc_ms(2026, 12, 5, 0, 20);
        for i in 0..2 {
            let r = book.reserve(BuyerKey(0), &utc, m(1), t + i).unwrap();
            assert!(book.commit(&r));
        }
        let open: Vec<Reservation> = (0..2)
            .map(|i| {
                book.reserve_until(BuyerKey(0), &utc, m(1), t + 10 + i, t + 10 + i + 30_000)
                    .unwrap()
            })
            .collect();
        assert_eq!(book.usage(BuyerKey(0), &utc, t + 20).sold_day, 2);
        assert!(book.has_headroom(BuyerKey(0), &la, t + MIN_MS));
        assert!(book.has_headroom(BuyerKey(0), &tokyo, t + 2 * MIN_MS));
        for r in &open {
            assert!(book.commit(r));
        }
        // 16 more leads fit in Tokyo's day, and no 17th.
        let mut sold = 0;
        for i in 0..40 {
            match book.reserve(BuyerKey(0), &tokyo, m(1), t + 3 * MIN_MS + i) {
                Ok(r) => {
                    assert!(book.commit(&r));
                    sold += 1;
                }
                Err(e) => {
                    assert_eq!(e.limit, CapLimit::Daily);
                    break;
                }
            }
        }
        assert_eq!(sold, 16);
        assert_eq!(book.usage(BuyerKey(0), &tokyo, t + 4 * MIN_MS).sold_day, 20);
    }

    #[test]
    fn a_zone_change_and_back_never_gives_a_fresh_day() {
        // The tester's repro: UTC, daily 2, 2 sold; Kiritimati (UTC+14) is already the
        // next local day; then back to UTC. The UTC day must stay at 2.
        let caps = Caps {
            daily: Some(2),
            budget_daily: Some(m(100)),
            ..Caps::default()
        };
        let (utc, kiri) = (
            zoned(Tz::UTC, caps),
            zoned(chrono_tz::Pacific::Kiritimati, caps),
        );
        let book = CapBook::new(1);
        let t = utc_ms(2024, 1, 15, 11, 0); // Kiritimati: 2024-01-16 01:00
        for i in 0..2 {
            let r = book.reserve(BuyerKey(0), &utc, m(1), t + i).unwrap();
            assert!(book.commit(&r));
        }
        assert!(book.reserve(BuyerKey(0), &utc, m(1), t + 2).is_err());
        assert_ne!(
            Windows::at(Tz::UTC, t).unwrap().day,
            Windows::at(kiri.timezone, t).unwrap().day
        );
        assert!(!book.has_headroom(BuyerKey(0), &kiri, t + MIN_MS));
        assert_eq!(
            book.reserve(BuyerKey(0), &kiri, m(1), t + MIN_MS)
                .unwrap_err()
                .limit,
            CapLimit::Daily
        );
        assert_eq!(book.usage(BuyerKey(0), &kiri, t + MIN_MS).sold_day, 2);
        // Back to UTC, and flipping a few times more (requests of the old and the new
        // runtime interleave during a reload): still 2, never a fresh day, never more.
        for i in 0..5 {
            let b = if i % 2 == 0 { &utc } else { &kiri };
            assert!(book
                .reserve(BuyerKey(0), b, m(1), t + 2 * MIN_MS + i)
                .is_err());
            let u = book.usage(BuyerKey(0), b, t + 2 * MIN_MS + i);
            // The money is carried too.
            assert_eq!((u.sold_day, u.spent_day), (2, m(2)));
        }
        // Back in UTC (the loop ended there), the next UTC day begins while Kiritimati's
        // 16th, which holds the two leads, runs until 10:00 UTC: a lead then would be a
        // third in that day (black-box round 35), so it waits for that day's end.
        assert_eq!(
            book.reserve(BuyerKey(0), &utc, m(1), utc_ms(2024, 1, 16, 0, 1))
                .unwrap_err()
                .limit,
            CapLimit::Daily
        );
        assert!(book
            .reserve(BuyerKey(0), &utc, m(1), utc_ms(2024, 1, 16, 10, 0))
            .is_ok());
    }

    #[test]
    fn a_zone_change_finds_the_old_previous_days_leads_in_the_new_day() {
        // UTC, daily 5: 3 sold on the 14th at 20:00 UTC, 2 on the 15th at 02:00 UTC. At
        // 05:00 UTC on the 15th it is 19:00 on the 15th in Kiritimati, a day that began at
        // 10:00 UTC on the 14th: all 5 leads are in it.
        let caps = Caps {
            daily: Some(5),
            ..Caps::default()
        };
        let utc = zoned(Tz::UTC, caps);
        let kiri = zoned(chrono_tz::Pacific::Kiritimati, caps);
        let book = CapBook::new(1);
        for (at, n) in [
            (utc_ms(2024, 1, 14, 20, 0), 3),
            (utc_ms(2024, 1, 15, 2, 0), 2),
        ] {
            for i in 0..n {
                let r = book.reserve(BuyerKey(0), &utc, m(1), at + i).unwrap();
                assert!(book.commit(&r));
            }
        }
        let t = utc_ms(2024, 1, 15, 5, 0);
        assert_eq!(book.usage(BuyerKey(0), &kiri, t).sold_day, 5);
        assert!(book.reserve(BuyerKey(0), &kiri, m(1), t).is_err());
    }

    #[test]
    fn restored_leads_count_in_the_zone_configured_now() {
        // A restart: two leads sold at 16:00 UTC (windows of UTC's 15th) are read back;
        // the buyer is now in Tokyo, where 17:00 UTC is 02:00 on the 16th, a day that
        // began at 15:00 UTC: both leads are in it.
        let tokyo = zoned(
            chrono_tz::Asia::Tokyo,
            Caps {
                daily: Some(2),
                ..Caps::default()
            },
        );
        let book = CapBook::new(1);
        let sold = Windows::at(Tz::UTC, utc_ms(2024, 1, 15, 16, 0)).unwrap();
        assert!(book.restore_sold(BuyerKey(0), None, &sold, m(1)));
        assert!(book.restore_sold(BuyerKey(0), None, &sold, m(1)));
        let t = utc_ms(2024, 1, 15, 17, 0);
        assert_eq!(book.usage(BuyerKey(0), &tokyo, t).sold_day, 2);
        assert!(book.reserve(BuyerKey(0), &tokyo, m(1), t).is_err());
    }

    /// Black-box round 58a: the clock set back across a restart. Leads the ledger has in
    /// the next hour (and the next day's budget) are not counted in the hour of the
    /// restart's `now`, and are there when that hour comes: the hour never takes more than
    /// its cap, nor the day more than its budget. With the zone known (a configured
    /// buyer), the hour of `now` is free; without it (a buyer not configured now), it may
    /// be over-counted, but the later hour still holds its leads.
    #[test]
    fn leads_restored_in_a_window_the_clock_has_not_reached_count_when_it_comes() {
        let caps = Caps {
            hourly: Some(2),
            budget_daily: Some(m(20)),
            ..Caps::default()
        };
        for zone in [chrono_tz::America::New_York, Tz::UTC] {
            let b = zoned(zone, caps);
            // 00:00:02 local on a day; the restart's clock is 7 s earlier, the day before.
            let midnight = zone
                .with_ymd_and_hms(2026, 10, 20, 0, 0, 0)
                .single()
                .unwrap()
                .timestamp_millis();
            let sold = Windows::at(zone, midnight + 2_000).unwrap();
            let before = midnight - 5_000;
            for named in [Some(zone), None] {
                let book = CapBook::new(1);
                assert!(book.restore_sold(BuyerKey(0), named, &sold, m(10)));
                assert!(book.restore_sold(BuyerKey(0), named, &sold, m(10)));
                if named.is_some() {
                    assert!(
                        book.reserve(BuyerKey(0), &b, m(10), before).is_ok(),
                        "{zone}: the hour and day before have nothing sold"
                    );
                    assert!(book.reserve(BuyerKey(0), &b, m(10), before).is_ok());
                } else {
                    // The zone is learnt at `before`: an over-count there is allowed.
                    book.has_headroom(BuyerKey(0), &b, before);
                }
                let after = midnight + 1_000;
                assert!(
                    !book.has_headroom(BuyerKey(0), &b, after),
                    "{zone} {named:?}"
                );
                assert!(
                    book.reserve(BuyerKey(0), &b, m(10), after).is_err(),
                    "{zone} {named:?}: the hour of the restored leads is at its cap"
                );
                let u = book.usage(BuyerKey(0), &b, after);
                assert_eq!((u.sold_hour, u.spent_day), (2, m(20)), "{zone} {named:?}");
                // The next hour has room again, and the day's budget is spent.
                let next = midnight + HOUR_MS;
                assert_eq!(
                    book.reserve(BuyerKey(0), &b, m(10), next),
                    Err(Capped {
                        buyer: BuyerKey(0),
                        limit: CapLimit::BudgetDaily
                    })
                );
            }
        }
    }

    #[test]
    fn restored_leads_in_the_same_zone_count_exactly() {
        // Yesterday's leads (the last one in its final hour) do not fill today.
        let ny = zoned(
            chrono_tz::America::New_York,
            Caps {
                daily: Some(2),
                ..Caps::default()
            },
        );
        let book = CapBook::new(1);
        let yesterday = Windows::at(ny.timezone, utc_ms(2024, 1, 16, 4, 50)).unwrap(); // 23:50 EST
        let today = Windows::at(ny.timezone, utc_ms(2024, 1, 16, 5, 10)).unwrap(); // 00:10 EST
        assert!(book.restore_sold(BuyerKey(0), None, &yesterday, m(1)));
        assert!(book.restore_sold(BuyerKey(0), None, &yesterday, m(1)));
        assert!(book.restore_sold(BuyerKey(0), None, &today, m(1)));
        let t = utc_ms(2024, 1, 16, 5, 20);
        let u = book.usage(BuyerKey(0), &ny, t);
        assert_eq!((u.sold_day, u.sold_week), (1, 3));
        assert!(book.reserve(BuyerKey(0), &ny, m(1), t).is_ok());
        assert!(book.reserve(BuyerKey(0), &ny, m(1), t).is_err());
    }

    #[test]
    fn a_hold_made_before_a_zone_change_is_counted_after_it() {
        let caps = Caps {
            daily: Some(1),
            ..Caps::default()
        };
        let utc = zoned(Tz::UTC, caps);
        let kiri = zoned(chrono_tz::Pacific::Kiritimati, caps);
        let book = CapBook::new(1);
        let t = utc_ms(2024, 1, 15, 11, 0);
        let r = book.reserve(BuyerKey(0), &utc, m(1), t).unwrap();
        assert!(book.reserve(BuyerKey(0), &kiri, m(1), t + 1).is_err());
        assert!(book.commit(&r));
        assert!(book.reserve(BuyerKey(0), &kiri, m(1), t + 2).is_err());
        assert_eq!(book.outstanding(BuyerKey(0)), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve {
            price_units: i64,
            advance_ms: i64,
            firm_ms: i64,
        },
        /// Commits an open hold, delivered at a point (per mille) of its firm span.
        Commit(usize, i64),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0i64..8, 0i64..3 * HOUR_MS, prop_oneof![Just(0i64), 0i64..=HOUR_MS + 1_000]).prop_map(|(price_units, advance_ms, firm_ms)| Op::Reserve { price_units, advance_ms, firm_ms }),
            1 => (any::<usize>(), 0i64..=1_000).prop_map(|(i, at)| Op::Commit(i, at)),
            1 => any::<usize>().prop_map(Op::Release),
        ]
    }

    fn assert_within_caps(book: &CapBook, caps: &Caps) {
        let limits = [caps.hourly, caps.daily, caps.weekly, caps.monthly];
        for (period, key, c) in book.windows_of(BuyerKey(0)) {
            if let Some(cap) = limits[period] {
                assert!(
                    c.sold + c.reserved <= cap,
                    "period {period} key {key}: {c:?} over {cap}"
                );
            }
            if let (DAY, Some(budget)) = (period, caps.budget_daily) {
                assert!(
                    c.spent.saturating_add(c.reserved_micros) <= budget,
                    "day {key}: {c:?}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn interleavings_never_exceed_a_cap(
            hourly in 1u32..4, daily in 1u32..8, weekly in 1u32..12, monthly in 1u32..20,
            budget_units in 1i64..40,
            tz in prop_oneof![Just(Tz::UTC), Just(chrono_tz::America::New_York), Just(chrono_tz::Pacific::Auckland)],
            start in 0i64..(400 * 24 * HOUR_MS),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let caps = Caps {
                hourly: Some(hourly), daily: Some(daily), weekly: Some(weekly), monthly: Some(monthly),
                budget_daily: Some(m(budget_units)),
            };
            let b = Buyer { timezone: tz, ..capped(caps) };
            let book = CapBook::new(1);
            let mut now = utc_ms(2024, 1, 1, 0, 0) + start;
            let mut open: Vec<(Reservation, i64, i64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve { price_units, advance_ms, firm_ms } => {
                        now += advance_ms;
                        let until = now + firm_ms;
                        if let Ok(r) = book.reserve_until(BuyerKey(0), &b, m(price_units), now, until) {
                            open.push((r, now, until));
                        }
                    }
                    Op::Commit(i, at) if !open.is_empty() => {
                        let (r, made, until) = open.swap_remove(i % open.len());
                        let r = r.delivered_at(made + (until - made) * at / 1_000);
                        prop_assert!(book.commit(&r));
                    }
                    Op::Release(i) if !open.is_empty() => {
                        let (r, _, _) = open.swap_remove(i % open.len());
                        prop_assert!(book.release(&r));
                    }
                    _ => {}
                }
                assert_within_caps(&book, &caps);
            }
            for (r, _, _) in &open {
                prop_assert!(book.release(r));
            }
            prop_assert_eq!(book.outstanding(BuyerKey(0)), 0);
            for (_, _, c) in book.windows_of(BuyerKey(0)) {
                prop_assert_eq!((c.reserved, c.reserved_micros), (0, Micros::ZERO));
            }
            let u = book.usage(BuyerKey(0), &b, now);
            prop_assert_eq!((u.reserved, u.reserved_micros), (0, Micros::ZERO));
        }
    }
}
