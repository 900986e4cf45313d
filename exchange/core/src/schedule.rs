//! A buyer's weekly open hours, read in the buyer's own time zone.
//!
//! Owns: turning `now` into the buyer's local weekday and minute of day, and matching it
//! against `[start, end)` minute ranges. Never: reads a clock or guesses a zone; a `now`
//! that cannot be placed on the calendar counts as closed (fail closed, never panic).

use chrono::{DateTime, Datelike, Timelike};
use chrono_tz::Tz;

use super::UnixMs;
use crate::config::WeeklySchedule;

/// Minutes in a local day; `MinuteRange::end` may equal it to mean "until midnight".
pub const MINUTES_PER_DAY: u16 = 1440;

/// `now` as a date and time in `tz`, or `None` when `now` is outside the calendar chrono
/// can represent (hundreds of thousands of years away): callers fail closed on `None`.
pub(crate) fn local(tz: Tz, now: UnixMs) -> Option<DateTime<Tz>> {
    DateTime::from_timestamp_millis(now).map(|utc| utc.with_timezone(&tz))
}

/// Is a buyer with this schedule open at `now`? `None` means always open. The weekday
/// (index 0 = Monday) and the minute of day are the buyer's local ones, so a buyer in
/// New York that closes at midnight closes at New York's midnight, DST or not. On a
/// spring-forward day the skipped local hour simply never happens; on a fall-back day the
/// repeated hour is open twice if its minutes are in a range.
pub fn is_open(schedule: Option<&WeeklySchedule>, tz: Tz, now: UnixMs) -> bool {
    let Some(schedule) = schedule else {
        return true;
    };
    is_open_at(Some(schedule), local(tz, now).map(|t| weekday_minute(&t)))
}

/// The local weekday (0 = Monday) and minute of day of `t`.
pub fn weekday_minute(t: &DateTime<Tz>) -> (usize, u16) {
    let weekday = t.weekday().num_days_from_monday() as usize;
    // hour < 24 and minute < 60, so this is < 1440 and fits u16.
    let minute = (t.hour() * 60 + t.minute()) as u16;
    (weekday, minute)
}

/// [`is_open`] given the buyer's local `(weekday, minute)` at `now` ([`weekday_minute`]),
/// `None` when `now` is off the calendar (closed). Eligibility converts `now` once per
/// zone per auction and asks this for each buyer.
pub fn is_open_at(schedule: Option<&WeeklySchedule>, at: Option<(usize, u16)>) -> bool {
    let Some(schedule) = schedule else {
        return true;
    };
    let Some((weekday, minute)) = at else {
        return false;
    };
    schedule
        .days
        .get(weekday)
        .is_some_and(|ranges| ranges.iter().any(|r| r.start <= minute && minute < r.end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MinuteRange;
    use crate::testutil::utc_ms;

    fn week(day: usize, start: u16, end: u16) -> WeeklySchedule {
        let mut days: [Vec<MinuteRange>; 7] = Default::default();
        days[day].push(MinuteRange { start, end });
        WeeklySchedule { days }
    }

    fn every_day(start: u16, end: u16) -> WeeklySchedule {
        WeeklySchedule {
            days: std::array::from_fn(|_| vec![MinuteRange { start, end }]),
        }
    }

    #[test]
    fn none_is_always_open() {
        assert!(is_open(None, Tz::UTC, 0));
        assert!(is_open(None, Tz::UTC, i64::MIN));
    }

    #[test]
    fn unrepresentable_now_is_closed() {
        let s = every_day(0, MINUTES_PER_DAY);
        assert!(!is_open(Some(&s), Tz::UTC, i64::MAX));
        assert!(!is_open(Some(&s), Tz::UTC, i64::MIN));
    }

    #[test]
    fn start_inclusive_end_exclusive() {
        let s = every_day(9 * 60, 17 * 60);
        assert!(!is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 15, 8, 59)));
        assert!(is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 15, 9, 0)));
        assert!(is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 15, 16, 59)));
        assert!(!is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 15, 17, 0)));
    }

    #[test]
    fn end_1440_covers_the_last_minute() {
        let s = week(6, 23 * 60, MINUTES_PER_DAY);
        // 2024-01-21 is a Sunday.
        assert!(is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 21, 23, 59)));
        assert!(!is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 22, 0, 0)));
    }

    #[test]
    fn dst_spring_forward_new_york() {
        // 2024-03-10 (Sunday): 02:00 EST jumps to 03:00 EDT. Open 01:00-03:00 local.
        let ny = chrono_tz::America::New_York;
        let s = week(6, 60, 180);
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 3, 10, 5, 59))); // 00:59 EST
        assert!(is_open(Some(&s), ny, utc_ms(2024, 3, 10, 6, 0))); // 01:00 EST
        assert!(is_open(Some(&s), ny, utc_ms(2024, 3, 10, 6, 59))); // 01:59 EST
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 3, 10, 7, 0))); // 03:00 EDT
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 3, 10, 7, 30))); // 03:30 EDT
    }

    #[test]
    fn dst_fall_back_new_york() {
        // 2024-11-03 (Sunday): 02:00 EDT falls back to 01:00 EST; 01:xx happens twice.
        let ny = chrono_tz::America::New_York;
        let s = week(6, 60, 180);
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 11, 3, 4, 59))); // 00:59 EDT
        assert!(is_open(Some(&s), ny, utc_ms(2024, 11, 3, 5, 30))); // 01:30 EDT
        assert!(is_open(Some(&s), ny, utc_ms(2024, 11, 3, 6, 30))); // 01:30 EST
        assert!(is_open(Some(&s), ny, utc_ms(2024, 11, 3, 7, 59))); // 02:59 EST
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 11, 3, 8, 0))); // 03:00 EST
    }

    #[test]
    fn midnight_is_the_buyers_midnight() {
        // Open Mondays only. 2024-01-15 is a Monday; New York is UTC-5 in January.
        let ny = chrono_tz::America::New_York;
        let s = week(0, 0, MINUTES_PER_DAY);
        // Monday 04:59 UTC is still Sunday 23:59 in New York: closed.
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 1, 15, 4, 59)));
        // Monday 05:00 UTC is Monday 00:00 in New York: open.
        assert!(is_open(Some(&s), ny, utc_ms(2024, 1, 15, 5, 0)));
        // Tuesday 04:59 UTC is Monday 23:59 in New York: open; UTC's Monday has ended.
        assert!(is_open(Some(&s), ny, utc_ms(2024, 1, 16, 4, 59)));
        assert!(!is_open(Some(&s), ny, utc_ms(2024, 1, 16, 5, 0)));
        // The same schedule in UTC follows UTC's calendar.
        assert!(is_open(Some(&s), Tz::UTC, utc_ms(2024, 1, 15, 4, 59)));
    }

    #[test]
    fn far_from_utc_auckland() {
        // Auckland is UTC+13 in January (NZDT). Open Monday 09:00-17:00 local.
        let akl = chrono_tz::Pacific::Auckland;
        let s = week(0, 9 * 60, 17 * 60);
        // Monday 2024-01-15 09:00 NZDT is Sunday 2024-01-14 20:00 UTC.
        assert!(!is_open(Some(&s), akl, utc_ms(2024, 1, 14, 19, 59)));
        assert!(is_open(Some(&s), akl, utc_ms(2024, 1, 14, 20, 0)));
        assert!(is_open(Some(&s), akl, utc_ms(2024, 1, 15, 3, 59))); // 16:59 NZDT
        assert!(!is_open(Some(&s), akl, utc_ms(2024, 1, 15, 4, 0))); // 17:00 NZDT
                                                                     // In July Auckland is UTC+12 (NZST): Monday 2024-07-15 09:00 is 21:00 UTC Sunday.
        assert!(!is_open(Some(&s), akl, utc_ms(2024, 7, 14, 20, 0)));
        assert!(is_open(Some(&s), akl, utc_ms(2024, 7, 14, 21, 0)));
    }
}
