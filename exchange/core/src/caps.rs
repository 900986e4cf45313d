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

/// The window `key` in `list`, made (holding nothing) if it is not kept.
fn window_in(list: &mut Vec<(i64, Counter)>, key: i64) -> Option<&mut Counter> {
    let pos = match list.iter().position(|(k, _)| *k == key) {
        Some(pos) => pos,
        None => {
            list.push((key, Counter::default()));
            list.len() - 1
        }
    };
    list.get_mut(pos).map(|(_, c)| c)
}

/// Per period, at least how long before its end a window began: an hour exactly; a day,
/// week or month at most this long (a day of 25 hours, an end taken 14 hours late for a
/// zone not known), so a lead taken this long before a former window's end may be in it
/// ([`CapBook::count_in_formers`]: an over-count for a lead just before the window,
/// never a lead inside it left out).
const SPAN_MAX_MS: [i64; PERIODS] = [HOUR_MS, 40 * HOUR_MS, 9 * 24 * HOUR_MS, 33 * 24 * HOUR_MS];

/// How old a lead can be and still lie in a window still running ([`SPAN_MAX_MS`]'s
/// month).
pub const FORMER_LEAD_AGE_MAX_MS: i64 = 33 * 24 * HOUR_MS;
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

    /// When the lead was sent ([`Reservation::delivered_at`]), if known.
    pub fn delivered(&self) -> Option<UnixMs> {
        self.delivered
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
    /// Leads held by open quotes in each current window: hour, day, week, month (a
    /// window's own count: after a zone change a hold may count as sold in one window
    /// and as held in another; black-box round 122b: the hourly gauge added the day's
    /// holds to an hour that had counted them as sold already).
    pub reserved_in: [u32; PERIODS],
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
    /// The former zones' windows, `(period, until)`, this hold was counted in
    /// ([`BuyerBook::hold`]): a release takes it back from each still there, and a sale
    /// leaves it (black-box round 105b: kept for good, a released hold of a buyer missing
    /// at a restart, whose every window is a former one until it comes back, stayed
    /// counted, and the buyer was sold one lead fewer than its cap per such quote).
    former: Vec<(usize, i64)>,
    /// The windows, `(period, key)`, of the zone the buyer has now that a zone change
    /// carried this hold into, as sold: a release takes it back from each still kept, a
    /// sale leaves it (black-box round 108a: an expired quote's place stayed taken there
    /// after a zone change by reload).
    carried_into: Vec<(usize, i64)>,
    /// The last moment the hold is firm for (a quote's expiry, a post's deadline; for a
    /// hold restored at a start, the end of its last hour): a zone change counts it in
    /// the new zone's later windows up to then ([`BuyerBook::rezone`]).
    until: i64,
    /// Of [`Held::carried_into`], the new zone's windows later than its current ones that
    /// a zone change counted the hold in (found in session 51: held in the old zone's
    /// next hour only, a hold firm past the end of the new zone's current hour was not
    /// counted in the new zone's next hour, which could take one lead past an hourly
    /// cap). A sale takes it back from those the lead was not delivered in, judged in
    /// the zone each is of (the third field).
    ahead: Vec<(usize, i64, Tz)>,
    /// The zone the hold's own windows are in, when known.
    zone: Option<Tz>,
}

impl Held {
    /// Whether this hold counts in window `key` of `period`: held there (and not carried
    /// out of it), or carried into it as sold by a zone change.
    fn counts_in(&self, period: usize, key: i64) -> bool {
        (self.windows_of(period, 0).any(|(k, _)| k == key)
            && !self.carried.contains(&(period, key)))
            || self.carried_into.contains(&(period, key))
    }

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
    /// The zone the window is of, when known (`None`: not known, or windows of several
    /// zones merged into one), so a restart can count in it the leads of the other zones
    /// ([`CapBook::count_in_formers`]).
    zone: Option<Tz>,
}

impl Former {
    /// Counts one more lead at `price`.
    fn add(&mut self, price: Micros) {
        self.sold = self.sold.saturating_add(1);
        self.spent = self.spent.saturating_add(price);
    }

    /// Takes back a lead counted at `price` ([`Former::add`]).
    fn take_back(&mut self, price: Micros) {
        self.sold = self.sold.saturating_sub(1);
        self.spent = self.spent.saturating_sub(price);
    }
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
    fn window(&mut self, until: i64, now: i64, zone: Option<Tz>) -> Option<&mut Former> {
        if until <= now {
            return None;
        }
        self.0.retain(|f| f.until > now);
        let pos = match self.0.iter().position(|f| f.until == until) {
            Some(pos) => {
                // The same end in another zone's window: not one zone's any more.
                if let Some(f) = self.0.get_mut(pos).filter(|f| f.zone != zone) {
                    f.zone = None;
                }
                pos
            }
            None => {
                self.0.push(Former {
                    until,
                    zone,
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
                        if next.zone != first.zone {
                            next.zone = None;
                        }
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
    /// Returns whether the window now holds `sold` and `spent` (it held no more).
    fn merge(&mut self, until: i64, sold: u32, spent: Micros, now: i64, zone: Tz) -> bool {
        match self.window(until, now, Some(zone)) {
            Some(f) => {
                let took = sold >= f.sold && spent >= f.spent;
                f.sold = f.sold.max(sold);
                f.spent = f.spent.max(spent);
                took
            }
            None => false,
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
                    // The holds in it are in the former window now: a release takes each
                    // back (black-box round 108a: an expired quote's place stayed taken
                    // after a zone change by reload), where the window holds what this
                    // merge gave it (a window that held more keeps its count).
                    let took = self
                        .former
                        .get_mut(period)
                        .is_some_and(|f| f.merge(end, sold, spent, now, old_tz));
                    // A hold carried into it as sold by an earlier change counts there too
                    // (session 52: a hold carried into Kathmandu's hour, then back to
                    // Kolkata, stayed counted in Kathmandu's former hour once released).
                    if took {
                        for held in self.outstanding.values_mut() {
                            if held.counts_in(period, key) && !held.former.contains(&(period, end))
                            {
                                held.former.push((period, end));
                            }
                        }
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
            for (k, c) in list.iter().filter(|(k, c)| is_carried(*k, c)) {
                // The old zone's current window whose every lead was taken before the
                // new window began: its sales lie outside it (they stay counted in the
                // old window, a limit until its end: `former`), and only its holds,
                // which may yet be delivered in it, are carried (black-box round 127a:
                // a sale of 14:40 in Kathmandu's hour, carried into Dubai's 15:00 hour
                // by a change at 15:00, kept the buyer a lead short until 16:00).
                let (sold, spent) = if c.last_ms < start {
                    let (mut n, mut money) = (0u32, Micros::ZERO);
                    for held in self.outstanding.values() {
                        if held.carried_into.contains(&(period, *k)) {
                            n = n.saturating_add(1);
                            money = money.saturating_add(held.price);
                        }
                    }
                    (n.min(c.sold), Micros(money.0.min(c.spent.0)))
                } else {
                    (c.sold, c.spent)
                };
                carried.sold = carried.sold.saturating_add(sold).saturating_add(c.reserved);
                carried.spent = carried
                    .spent
                    .saturating_add(spent)
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
            // The old zone's current window whose leads were all taken before the new
            // window began keeps them (its sales are not carried), for a change back.
            let kept = |k: i64, c: &Counter| {
                !is_carried(k, c)
                    || (k > key && c.last_ms > now)
                    || (Some(k) == old_key && c.last_ms < start)
            };
            // Every carried hold is counted (as sold) in the current window once: a hold
            // may count in several of the windows carried (its own hour and a later one
            // it is firm into, or a window it was carried into as sold by an earlier
            // change), and in the current window itself (black-box round 124a: zones
            // changed back and forth with quotes open counted them again at each change,
            // and the buyer was refused `capped` under its cap). A release takes it back
            // from there (`Held::carried_into`). A kept window keeps its holds too, so
            // their settle still counts there.
            let carried_keys: Vec<(i64, bool)> = list
                .iter()
                .filter(|(k, c)| is_carried(*k, c))
                .map(|(k, c)| (*k, !kept(*k, c)))
                .collect();
            let current_kept = list.iter().any(|(k, _)| *k == key);
            let (mut twice, mut twice_micros) = (0u32, Micros::ZERO);
            for held in self.outstanding.values_mut() {
                let here = carried_keys
                    .iter()
                    .filter(|(k, _)| held.counts_in(period, *k))
                    .count();
                if here == 0 {
                    continue;
                }
                let counted = current_kept && held.counts_in(period, key);
                let again = if counted { here } else { here - 1 };
                let again = u32::try_from(again).unwrap_or(u32::MAX);
                twice = twice.saturating_add(again);
                twice_micros = twice_micros
                    .saturating_add(Micros(held.price.0.saturating_mul(i64::from(again))));
                for (k, dropped) in &carried_keys {
                    if !dropped {
                        continue;
                    }
                    // Its count there moves to the current window with the window's.
                    if held.windows_of(period, 0).any(|(hk, _)| hk == *k)
                        && !held.carried.contains(&(period, *k))
                    {
                        held.carried.push((period, *k));
                    }
                    held.carried_into.retain(|e| *e != (period, *k));
                    held.ahead.retain(|e| (e.0, e.1) != (period, *k));
                }
                if !counted && !held.carried_into.contains(&(period, key)) {
                    held.carried_into.push((period, key));
                }
            }
            carried.sold = carried.sold.saturating_sub(twice);
            carried.spent = carried.spent.saturating_sub(twice_micros);
            list.retain(|(k, c)| kept(*k, c));
            if let Some(c) = self.counter_mut(period, key) {
                c.sold = c.sold.saturating_add(carried.sold);
                c.spent = c.spent.saturating_add(carried.spent);
                c.last_ms = c.last_ms.max(carried.last_ms);
            }
        }
        self.count_ahead(tz, &w);
        self.latest_now = Some(now);
        self.current = Some(keys);
        self.prune();
        true
    }

    /// A zone change to `tz`, whose current windows are `w`: counts each open hold, as
    /// sold, in every later window of the new zone it is firm into and does not count in
    /// yet ([`Held::ahead`]): its own later windows are the old zone's, and the new zone's
    /// next hour would otherwise not see it. A release takes it back from there, and a
    /// sale from those it was not delivered in.
    fn count_ahead(&mut self, tz: Tz, w: &Windows) {
        let current = w.keys();
        let BuyerBook {
            outstanding,
            windows,
            ..
        } = self;
        for held in outstanding.values_mut() {
            let Some(later) = Windows::later_until(tz, w, held.until) else {
                continue;
            };
            for (period, cur) in current.into_iter().enumerate() {
                for l in &later {
                    let k = l.keys()[period];
                    if k == cur || held.counts_in(period, k) {
                        continue;
                    }
                    let Some(c) = windows.get_mut(period).and_then(|l| window_in(l, k)) else {
                        continue;
                    };
                    c.sold = c.sold.saturating_add(1);
                    c.spent = c.spent.saturating_add(held.price);
                    c.last_ms = c.last_ms.max(l.hour_start_ms);
                    held.carried_into.push((period, k));
                    held.ahead.push((period, k, tz));
                }
            }
        }
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
        let latest = self.latest_now.unwrap_or(i64::MIN);
        for (period, (list, cur)) in self.windows.iter_mut().zip(current).enumerate() {
            let previous = list.iter().map(|(k, _)| *k).filter(|k| *k < cur).max();
            // A window with a lead taken less than a window's length ago may hold one
            // that lies in the window of a zone changed to later, whichever window is
            // newest (session 52: an empty window of another zone counted as the
            // previous one, and a sale delivered eight minutes before was dropped with
            // its own window, and not carried).
            let recent = latest.saturating_sub(SPAN_MAX_MS.get(period).copied().unwrap_or(0));
            let outstanding = &mut self.outstanding;
            list.retain(|(key, c)| {
                let keep = *key >= cur
                    || c.reserved > 0
                    || Some(*key) == previous
                    || (c.last_ms > recent && (c.sold > 0 || c.spent.0 > 0));
                if !keep {
                    // Gone: a hold carried into it as sold counts there no more (a window
                    // of that key made again later does not hold it).
                    for held in outstanding.values_mut() {
                        held.carried_into.retain(|e| *e != (period, *key));
                        held.ahead.retain(|e| (e.0, e.1) != (period, *key));
                    }
                }
                keep
            });
        }
    }

    fn counter(&self, period: usize, key: i64) -> Counter {
        self.windows
            .get(period)
            .and_then(|list| list.iter().find(|(k, _)| *k == key))
            .map_or_else(Counter::default, |(_, c)| *c)
    }

    fn counter_mut(&mut self, period: usize, key: i64) -> Option<&mut Counter> {
        self.windows
            .get_mut(period)
            .and_then(|list| window_in(list, key))
    }

    /// The window `key` of `period` if it is kept (never made).
    fn kept_mut(&mut self, period: usize, key: i64) -> Option<&mut Counter> {
        self.windows
            .get_mut(period)?
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, c)| c)
    }

    /// Counts `held` as reserved in each of its windows; `at` is when the lead was taken
    /// (for a later window, no earlier than the window's start). Notes in `held` the
    /// former zones' windows it counted in.
    fn hold(&mut self, held: &mut Held, at: i64) {
        for period in 0..PERIODS {
            for (k, taken) in held.windows_of(period, at) {
                if let Some(c) = self.counter_mut(period, k) {
                    c.reserved = c.reserved.saturating_add(1);
                    c.reserved_micros = c.reserved_micros.saturating_add(held.price);
                    c.last_ms = c.last_ms.max(taken);
                }
            }
        }
        // A former zone's window still running holds it too: a sale leaves it there, a
        // release takes it back ([`Held::former`]).
        for (period, fs) in self.former.iter_mut().enumerate() {
            for f in fs.0.iter_mut().filter(|f| f.until > at) {
                f.add(held.price);
                held.former.push((period, f.until));
            }
        }
    }

    /// Takes a released hold back from the windows a zone change counted it in as sold
    /// ([`Held::carried_into`]) and the former zones' windows it was counted in
    /// ([`Held::former`]), where each still is (one merged into another since,
    /// [`FORMER_MAX`], keeps it: an over-count until that window's end, never an
    /// under-count).
    fn take_back_carried(&mut self, held: &Held) {
        for (period, key) in &held.carried_into {
            if let Some(c) = self.kept_mut(*period, *key) {
                c.sold = c.sold.saturating_sub(1);
                c.spent = c.spent.saturating_sub(held.price);
            }
        }
        for (period, until) in &held.former {
            let Some(fs) = self.former.get_mut(*period) else {
                continue;
            };
            if let Some(f) = fs.0.iter_mut().find(|f| f.until == *until) {
                f.take_back(held.price);
            }
        }
    }

    /// A sale of `held` delivered at `delivered`, counted in its own windows `counted`
    /// (unless a zone change carried them away).
    ///
    /// Takes it back from each later window a zone change counted it in
    /// ([`Held::ahead`]) that the delivery does not fall in (in that window's zone or the
    /// book's; all kept when the moment is not known: an over-count, never an
    /// under-count). Every window a zone change counted it in, as sold, that still does
    /// ([`Held::carried_into`]) takes the delivery's time as a lead's, so a later zone
    /// change whose window began by then carries it there (session 52: a sale counted
    /// only there was not carried into the next zone's hour it was delivered in).
    ///
    /// When the book's zone is not the hold's own, or the window the sale counts in was
    /// carried away, the sale counts in the window of the book's zone it was delivered
    /// in too, unless it is counted there already (session 52: a hold made in Kolkata
    /// and delivered at 18:15 UTC, in Kathmandu's new day, was counted in Kolkata's
    /// day only, and Kathmandu's new day took a lead past its daily cap).
    fn settle_carried_sale(
        &mut self,
        held: &Held,
        delivered: Option<UnixMs>,
        counted: [i64; PERIODS],
    ) {
        let Some(at) = delivered else {
            return;
        };
        // The usual sale, of a hold no zone change touched: nothing to do (no zone
        // conversion on the award's path).
        if held.zone == self.zone && held.carried.is_empty() && held.carried_into.is_empty() {
            return;
        }
        let here = self.zone.and_then(|z| Windows::at(z, at)).map(|w| w.keys());
        for &(period, key) in &held.carried_into {
            let ahead = held.ahead.iter().find(|e| (e.0, e.1) == (period, key));
            let delivered_there = here.is_some_and(|h| h.get(period) == Some(&key))
                || ahead.is_none_or(|&(_, _, tz)| {
                    Windows::at(tz, at).is_some_and(|w| w.keys().get(period) == Some(&key))
                });
            let Some(c) = self.kept_mut(period, key) else {
                continue;
            };
            if delivered_there {
                c.last_ms = c.last_ms.max(at);
            } else {
                c.sold = c.sold.saturating_sub(1);
                c.spent = c.spent.saturating_sub(held.price);
            }
        }
        let Some(here) = here else {
            return;
        };
        for (period, (key, own)) in here.into_iter().zip(counted).enumerate() {
            let own_kept = !held.carried.contains(&(period, own));
            if (own_kept && (held.zone == self.zone || key == own))
                || held.carried_into.contains(&(period, key))
            {
                continue;
            }
            if let Some(c) = self.counter_mut(period, key) {
                c.sold = c.sold.saturating_add(1);
                c.spent = c.spent.saturating_add(held.price);
                c.last_ms = c.last_ms.max(at);
            }
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
            let mut held = Held {
                price,
                windows: w,
                later: later.clone(),
                carried: Vec::new(),
                former: Vec::new(),
                carried_into: Vec::new(),
                until: until.max(now),
                ahead: Vec::new(),
                zone: Some(buyer.timezone),
            };
            b.hold(&mut held, at);
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
                            // Taken when delivered: a zone change whose new window
                            // began by then carries it there (session 52: a lead
                            // delivered at 08:15 in Kolkata's 07:30 hour, its hold made
                            // at 07:56, was not carried into Kathmandu's 08:15 hour).
                            if let Some(at) = r.delivered {
                                c.last_ms = c.last_ms.max(at);
                            }
                        }
                    }
                }
            }
            if !sold {
                b.take_back_carried(&held);
            } else {
                b.settle_carried_sale(&held, r.delivered, counted);
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
        self.restore_sold_at(key, zone, windows, price, None)
    }

    /// [`CapBook::restore_sold`] for a lead taken at `at`, when known (the record's time):
    /// the windows count it as taken then (within its hour), not at its hour's end. A lead
    /// counted at its hour's end, later than the clock within that hour, was taken for one
    /// the clock had not reached: a zone change kept its window as well as carrying it,
    /// and each round trip of the zone counted its leads again (black-box round 115a: 31
    /// leads restored at a start read 62, then 124, after zone changes by reload).
    pub fn restore_sold_at(
        &self,
        key: BuyerKey,
        zone: Option<Tz>,
        windows: &Windows,
        price: Micros,
        at: Option<UnixMs>,
    ) -> bool {
        let price = Micros(price.0.max(0));
        let latest = windows.latest_ms();
        let taken = at.map_or(latest, |at| at.clamp(windows.hour_start_ms, latest));
        self.with_version(key, |b, version| {
            version.fetch_add(1, Ordering::AcqRel);
            b.name_zone(zone);
            for (period, k) in windows.keys().into_iter().enumerate() {
                if let Some(c) = b.counter_mut(period, k) {
                    c.sold = c.sold.saturating_add(1);
                    c.spent = c.spent.saturating_add(price);
                    c.last_ms = c.last_ms.max(taken);
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
        self.restore_former_zone_in(key, ends, price, now, None)
    }

    /// [`CapBook::restore_former_zone`] for a lead written in `zone`, when known: the
    /// window is that zone's, and the leads of other zones can count in it
    /// ([`CapBook::count_in_formers`]).
    pub fn restore_former_zone_in(
        &self,
        key: BuyerKey,
        ends: [i64; PERIODS],
        price: Micros,
        now: UnixMs,
        zone: Option<Tz>,
    ) -> bool {
        let price = Micros(price.0.max(0));
        self.with(key, |b| {
            for (fs, end) in b.former.iter_mut().zip(ends) {
                if let Some(f) = fs.window(end, now, zone) {
                    f.add(price);
                }
            }
            true
        })
        .unwrap_or(false)
    }

    /// Recovery at start, once every lead is replayed: a lead of `key` sold at `at` in
    /// `zone` (the zone it was written in; `None`: not known) counts in every window of another zone still
    /// running that ends after `at` and may have begun by `at` ([`SPAN_MAX_MS`]), but its
    /// own (which end at `own` when they are former ones: they counted it already). Zones
    /// change forward in time, so a lead of a later zone lies inside an earlier zone's
    /// window that ends after it; a lead of an earlier zone may lie before a later zone's
    /// window began, and is counted in it all the same (an over-count until that window
    /// ends, never an under-count).
    /// Black-box round 108a: a lead sold in Kolkata's hour, after Kathmandu became
    /// Kolkata, was counted in Kathmandu's hour by the running exchange but not after a
    /// restart, and the buyer was sold a fourth lead there under `hourly = 3`. False for
    /// an unknown key.
    pub fn count_in_formers(
        &self,
        key: BuyerKey,
        zone: Option<Tz>,
        at: UnixMs,
        own: Option<[i64; PERIODS]>,
        price: Micros,
        now: UnixMs,
    ) -> bool {
        let price = Micros(price.0.max(0));
        self.with(key, |b| {
            for (period, fs) in b.former.iter_mut().enumerate() {
                let own = own.and_then(|e| e.get(period).copied());
                let span = SPAN_MAX_MS.get(period).copied().unwrap_or(i64::MAX);
                for f in fs.0.iter_mut().filter(|f| {
                    f.until > now
                        && f.until > at
                        && at >= f.until.saturating_sub(span)
                        && Some(f.until) != own
                        && (zone.is_none() || f.zone != zone)
                }) {
                    f.add(price);
                }
            }
            true
        })
        .unwrap_or(false)
    }

    /// Recovery at start: the open quote `r` restored ([`CapBook::restore_reservation`])
    /// was held in windows of another zone than the buyer's now, which may run until
    /// `ends`: its hold counts in each of them, once (black-box round 107a: a former window
    /// the buyer's restored sales had made already counted the hold, and this counted it
    /// again, so the buyer was sold one lead fewer than its hourly cap), and a release
    /// takes it back ([`Held::former`]). False for an unknown key or hold.
    pub fn restore_former_hold(&self, r: &Reservation, ends: [i64; PERIODS], now: UnixMs) -> bool {
        self.with(r.buyer, |b| {
            let BuyerBook {
                former,
                outstanding,
                ..
            } = b;
            let Some(held) = outstanding.get_mut(&r.id) else {
                return false;
            };
            for (period, (fs, end)) in former.iter_mut().zip(ends).enumerate() {
                if held.former.contains(&(period, end)) {
                    continue;
                }
                if let Some(f) = fs.window(end, now, None) {
                    f.add(held.price);
                    held.former.push((period, end));
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
        self.restore_reservation_at(key, zone, windows, later, price, None)
    }

    /// [`CapBook::restore_reservation`] at `now` (the start's time), when known: the hold
    /// counts as made by then (within its hour), not at its hour's end, a time the clock
    /// may not have reached (see [`CapBook::restore_sold_at`]).
    pub fn restore_reservation_at(
        &self,
        key: BuyerKey,
        zone: Option<Tz>,
        windows: &Windows,
        later: &[Windows],
        price: Micros,
        now: Option<UnixMs>,
    ) -> Option<Reservation> {
        let price = Micros(price.0.max(0));
        let latest = windows.latest_ms();
        let made = now.map_or(latest, |now| now.clamp(windows.hour_start_ms, latest));
        let later: Vec<Windows> = later
            .iter()
            .filter(|l| l.hour_start_ms > windows.hour_start_ms)
            .copied()
            .collect();
        self.with_version(key, |b, version| {
            version.fetch_add(1, Ordering::AcqRel);
            b.name_zone(zone);
            let mut held = Held {
                price,
                windows: *windows,
                later: later.clone(),
                carried: Vec::new(),
                former: Vec::new(),
                carried_into: Vec::new(),
                // The quote's end is not known here: the end of its last hour, which is
                // no earlier (an over-count of at most a part of an hour).
                until: later
                    .last()
                    .unwrap_or(windows)
                    .hour_start_ms
                    .saturating_add(HOUR_MS - 1),
                ahead: Vec::new(),
                zone,
            };
            b.hold(&mut held, made);
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
            let reserved_in = [HOUR, DAY, WEEK, MONTH].map(|p| b.counter(p, keys[p]).reserved);
            Usage {
                reserved_in,
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
mod tests;
