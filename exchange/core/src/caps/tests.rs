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
    // Current and previous hour/day/week/month, one more with a lead within a window's
    // longest span (a day's 40 h reaches back two days), plus the held reservation's.
    assert!(
        book.windows_of(BuyerKey(0)).len() <= 4 * PERIODS,
        "{:?}",
        book.windows_of(BuyerKey(0))
    );
    assert!(book.release(&held));
    assert!(book.windows_of(BuyerKey(0)).len() <= 3 * PERIODS);
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

/// A buyer with an hourly cap of `hourly`, in Kolkata (hours from :30 UTC) and in
/// Kathmandu (from :15).
fn kolkata_and_kathmandu(hourly: u32) -> (Buyer, Buyer) {
    let caps = Caps {
        hourly: Some(hourly),
        ..Caps::default()
    };
    (
        zoned(chrono_tz::Asia::Kolkata, caps),
        zoned(chrono_tz::Asia::Kathmandu, caps),
    )
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

/// A hold counted in a former zone's window is taken back from it when released, and
/// stays when sold (black-box round 105b: kept for good, a released hold of a buyer
/// missing at a restart, whose windows are all former ones until it comes back, cost
/// it a lead of its cap, and its budget, per such quote).
#[test]
fn a_released_hold_is_taken_back_from_a_former_zone_s_window() {
    let mut b = capped(Caps {
        hourly: Some(3),
        budget_daily: Some(m(30)),
        ..Caps::default()
    });
    b.timezone = Tz::UTC;
    let book = CapBook::new(1);
    let now = utc_ms(2026, 12, 2, 12, 10);
    let w = Windows::at(Tz::UTC, now - 60_000).unwrap();
    // One sale restored for a buyer whose zone was not known: its windows are limits
    // until they may end, as a former zone's.
    assert!(book.restore_former_zone(BuyerKey(0), w.ends_after(now).unwrap(), m(10), now));
    assert!(book.restore_sold(BuyerKey(0), None, &w, m(10)));
    // Held and released, again and again: never counted for good.
    for n in 0..5 {
        let r = book
            .reserve(BuyerKey(0), &b, m(10), now + n)
            .unwrap_or_else(|e| panic!("hold {n}: {e:?}"));
        assert!(book.release(&r));
    }
    // Two more fit the cap of 3 and the budget of 30 (one sold at 10), and are sold.
    for n in 0..2 {
        let r = book.reserve(BuyerKey(0), &b, m(10), now + 10 + n).unwrap();
        assert!(book.commit(&r.delivered_at(now + 20)));
    }
    assert!(book.reserve(BuyerKey(0), &b, m(1), now + 30).is_err());
}

/// An open quote restored into another zone counts once in the old zone's windows, even
/// when the buyer's restored sales made those windows first, and its release takes it
/// back (black-box round 107a: counted twice, the buyer was sold one lead fewer than its
/// hourly cap after a restart that changed its zone).
#[test]
fn a_quote_restored_into_another_zone_counts_once_in_the_old_windows() {
    let (ny, tokyo) = (chrono_tz::America::New_York, chrono_tz::Asia::Tokyo);
    let mut b = capped(Caps {
        hourly: Some(3),
        ..Caps::default()
    });
    b.timezone = tokyo;
    let book = CapBook::new(1);
    let now = utc_ms(2026, 12, 2, 12, 10);
    let old = Windows::at(ny, now - 60_000).unwrap();
    let ends = old.ends_after(now).unwrap();
    // The sale, as the replay counts it: the old windows as limits, and the zone now's.
    assert!(book.restore_former_zone(BuyerKey(0), ends, m(10), now));
    let new = Windows::at(tokyo, now - 60_000).unwrap();
    assert!(book.restore_sold(BuyerKey(0), Some(tokyo), &new, m(10)));
    // The open quote, as the start restores it.
    let w = Windows::at(tokyo, now).unwrap();
    let r = book
        .restore_reservation(BuyerKey(0), Some(tokyo), &w, &[], m(10))
        .unwrap();
    assert!(book.restore_former_hold(&r, ends, now));
    // 1 sold and 1 held of 3: one more.
    let more = book.reserve(BuyerKey(0), &b, m(10), now + 1).unwrap();
    assert!(book.reserve(BuyerKey(0), &b, m(10), now + 2).is_err());
    // The restored hold released: its place is free in both zones' windows.
    assert!(book.release(&r));
    assert!(book.reserve(BuyerKey(0), &b, m(10), now + 3).is_ok());
    assert!(book.reserve(BuyerKey(0), &b, m(10), now + 4).is_err());
    assert!(book.commit(&more.delivered_at(now + 5)));
}

/// At a restart, a lead of the zone a buyer has now counts in the windows of its former
/// zones still running after it, and a lead of a former zone only in its own (black-box
/// round 108a: the former zone's hour missed the new zone's lead after a restart, and
/// sold one lead past `hourly = 3` once the new zone's hour turned).
#[test]
fn a_lead_of_the_zone_now_counts_in_a_former_zone_s_window_at_a_restart() {
    let (kathmandu, kolkata) = (chrono_tz::Asia::Kathmandu, chrono_tz::Asia::Kolkata);
    let mut b = capped(Caps {
        hourly: Some(3),
        ..Caps::default()
    });
    b.timezone = kolkata;
    let book = CapBook::new(1);
    // 2026-12-01 04:21 UTC: Kathmandu's hour 04:15-05:15, Kolkata's 03:30-04:30.
    let sold = utc_ms(2026, 12, 1, 4, 21);
    let restart = utc_ms(2026, 12, 1, 4, 31);
    let old = Windows::at(kathmandu, sold).unwrap();
    let ends = old.ends_in(kathmandu).unwrap();
    for _ in 0..2 {
        assert!(book.restore_former_zone_in(BuyerKey(0), ends, m(1), restart, Some(kathmandu)));
    }
    let new = Windows::at(kolkata, sold + 20_000).unwrap();
    assert!(book.restore_sold(BuyerKey(0), Some(kolkata), &new, m(1)));
    // The replay's last pass: the Kathmandu leads are in their own window already.
    for _ in 0..2 {
        assert!(book.count_in_formers(
            BuyerKey(0),
            Some(kathmandu),
            sold,
            Some(ends),
            m(1),
            restart
        ));
    }
    assert!(book.count_in_formers(
        BuyerKey(0),
        Some(kolkata),
        sold + 20_000,
        None,
        m(1),
        restart
    ));
    // Kolkata's new hour is empty, Kathmandu's holds 3: nothing more until 05:15.
    assert!(book.reserve(BuyerKey(0), &b, m(1), restart + 1).is_err());
    assert!(book
        .reserve(BuyerKey(0), &b, m(1), utc_ms(2026, 12, 1, 5, 16))
        .is_ok());
}

/// A hold made before a zone change and released after it gives its place back in every
/// window the change counted it in: the old zone's (a former window) and the new zone's
/// (carried as sold). Black-box round 108a: after a zone change by reload, an expired
/// quote's place stayed taken, so the buyer was refused a lead under its cap (and its
/// budget) until a restart or the old window's end.
#[test]
fn a_hold_released_after_a_zone_change_gives_its_place_back_everywhere() {
    for to in [chrono_tz::Europe::London, chrono_tz::Asia::Kolkata] {
        let mut b = capped(Caps {
            hourly: Some(2),
            budget_daily: Some(m(20)),
            ..Caps::default()
        });
        b.timezone = Tz::UTC;
        let book = CapBook::new(1);
        let now = utc_ms(2026, 12, 1, 4, 10);
        let held = book.reserve(BuyerKey(0), &b, m(10), now).unwrap();
        // The zone changes (a reload); one lead is sold in the new zone.
        b.timezone = to;
        let sold = book.reserve(BuyerKey(0), &b, m(10), now + 1_000).unwrap();
        assert!(book.commit(&sold.delivered_at(now + 2_000)), "{to}");
        assert!(
            book.reserve(BuyerKey(0), &b, m(10), now + 3_000).is_err(),
            "{to}: full"
        );
        // The first quote expires: its place comes back, once.
        assert!(book.release(&held));
        let again = book
            .reserve(BuyerKey(0), &b, m(10), now + 4_000)
            .unwrap_or_else(|e| panic!("{to}: {e:?}"));
        assert!(book.commit(&again.delivered_at(now + 5_000)));
        assert!(
            book.reserve(BuyerKey(0), &b, m(1), now + 6_000).is_err(),
            "{to}: 2 sold"
        );
    }
}

/// A lead taken before a former zone's window began is not counted in it at a restart
/// (the zone flipped back: the old leads of the zone now are not in the other zone's hour
/// that began after them).
#[test]
fn a_lead_from_before_a_former_zone_s_window_is_not_counted_in_it() {
    let (kathmandu, kolkata) = (chrono_tz::Asia::Kathmandu, chrono_tz::Asia::Kolkata);
    let mut b = capped(Caps {
        hourly: Some(2),
        ..Caps::default()
    });
    b.timezone = kolkata;
    let book = CapBook::new(1);
    let sold = utc_ms(2026, 12, 1, 4, 21);
    let restart = utc_ms(2026, 12, 1, 4, 31);
    let ends = Windows::at(kathmandu, sold)
        .unwrap()
        .ends_in(kathmandu)
        .unwrap();
    assert!(book.restore_former_zone_in(BuyerKey(0), ends, m(1), restart, Some(kathmandu)));
    // Kolkata leads from two hours and a day before: not in Kathmandu's 04:15-05:15.
    for at in [sold - 2 * 3_600_000, sold - 24 * 3_600_000] {
        assert!(book.count_in_formers(BuyerKey(0), Some(kolkata), at, None, m(1), restart));
    }
    assert!(book.reserve(BuyerKey(0), &b, m(1), restart + 1).is_ok());
    assert!(book.reserve(BuyerKey(0), &b, m(1), restart + 2).is_err());
}

#[test]
fn a_zone_flipped_back_and_forth_counts_its_leads_once() {
    // Black-box round 115a: hourly 40, daily 40, 31 sold in UTC, no open quote; the
    // zone reloaded UTC -> Kolkata -> UTC -> Kolkata -> UTC -> Kolkata -> UTC. The
    // hourly count doubled at each round trip (31, 62, 124), and the buyer was refused
    // far under its cap; a restart counted 31 again.
    let caps = Caps {
        hourly: Some(40),
        daily: Some(40),
        ..Caps::default()
    };
    let (utc, kolkata) = (zoned(Tz::UTC, caps), zoned(chrono_tz::Asia::Kolkata, caps));
    let book = CapBook::new(1);
    let t = utc_ms(2026, 12, 5, 9, 10); // Kolkata: 14:40, its hour began 09:00 UTC
    for i in 0..31 {
        let r = book.reserve(BuyerKey(0), &utc, m(1), t + i).unwrap();
        assert!(book.commit(&r));
    }
    for flip in 0..6 {
        let b = if flip % 2 == 0 { &kolkata } else { &utc };
        let at = t + MIN_MS + flip;
        let u = book.usage(BuyerKey(0), b, at);
        assert_eq!((u.sold_hour, u.sold_day), (31, 31), "flip {flip}");
        assert!(book.has_headroom(BuyerKey(0), b, at), "flip {flip}");
    }
    // The tester's case: the 31 were restored at a start (08:00-08:25 UTC; Kolkata's
    // hour turns at 08:30), and the zone flipped at 08:41 and after. A restored lead
    // counted as taken at its hour's end, a time the clock had not reached: the window
    // was kept as well as carried, and counted again at each round trip.
    let book = CapBook::new(1);
    let start = utc_ms(2026, 12, 5, 8, 0);
    for i in 0..31 {
        let at = start + i * 50_000;
        let w = Windows::at(Tz::UTC, at).unwrap();
        assert!(book.restore_sold_at(BuyerKey(0), Some(Tz::UTC), &w, m(1), Some(at)));
    }
    let t = utc_ms(2026, 12, 5, 8, 41);
    assert_eq!(book.usage(BuyerKey(0), &utc, t).sold_hour, 31);
    for flip in 0..6 {
        let b = if flip % 2 == 0 { &kolkata } else { &utc };
        let at = t + MIN_MS + flip;
        let u = book.usage(BuyerKey(0), b, at);
        // Kolkata's hour began at 08:30, after the 31 were sold: none of them is in it
        // (UTC's hour, running until 09:00, holds them and is a limit until then; black-box
        // round 127a), and UTC's own hour keeps them, counted once.
        let hour = if flip % 2 == 0 { 0 } else { 31 };
        assert_eq!(
            (u.sold_hour, u.sold_day),
            (hour, 31),
            "restored, flip {flip}"
        );
        assert!(
            book.has_headroom(BuyerKey(0), b, at),
            "restored, flip {flip}"
        );
    }
    // An open quote's hold restored at a start, likewise: counted once (as sold in the
    // current hour while held), whatever the flips.
    let book = CapBook::new(1);
    let w = Windows::at(Tz::UTC, t).unwrap();
    let held = book
        .restore_reservation_at(BuyerKey(0), Some(Tz::UTC), &w, &[], m(1), Some(t))
        .unwrap();
    for flip in 0..6 {
        let b = if flip % 2 == 0 { &kolkata } else { &utc };
        let u = book.usage(BuyerKey(0), b, t + MIN_MS + flip);
        assert!(u.sold_hour + u.reserved <= 2, "hold, flip {flip}: {u:?}");
    }
    // Released, it is held no more; a copy carried by the flips may stay counted until
    // the hour ends, as for a hold made live (an over-count, never an under-count).
    assert!(book.release(&held));
    let u = book.usage(BuyerKey(0), &utc, t + 2 * MIN_MS);
    assert!(u.reserved == 0 && u.sold_hour <= 1, "{u:?}");
}

/// Black-box round 122b: hourly 3, one quote open in Kolkata, the zone reloaded to
/// Kathmandu (another hour window, the same day): the hourly utilisation read 2 of 3
/// for the one quote, since it added the day's held count to an hour that had counted
/// the hold as sold already. Each window's own held count is given; sold plus held in
/// each window counts the quote once, and the cap still takes exactly 3.
#[test]
fn a_zone_change_counts_an_open_quote_once_in_each_window() {
    let caps = Caps {
        hourly: Some(3),
        daily: Some(10),
        ..Caps::default()
    };
    let kolkata = zoned(chrono_tz::Asia::Kolkata, caps);
    let kathmandu = zoned(chrono_tz::Asia::Kathmandu, caps);
    let book = CapBook::new(1);
    // Kolkata 15:40 (hour from 09:30 UTC), Kathmandu 15:55 (hour from 09:15 UTC).
    let t = utc_ms(2026, 12, 5, 10, 10);
    let held = book.reserve(BuyerKey(0), &kolkata, m(1), t).unwrap();
    let u = book.usage(BuyerKey(0), &kolkata, t);
    assert_eq!((u.sold_hour, u.reserved_in), (0, [1, 1, 1, 1]));
    let u = book.usage(BuyerKey(0), &kathmandu, t + 1);
    for (p, (sold, reserved)) in [u.sold_hour, u.sold_day, u.sold_week, u.sold_month]
        .into_iter()
        .zip(u.reserved_in)
        .enumerate()
    {
        assert_eq!(sold + reserved, 1, "window {p}: {u:?}");
    }
    // Two more quotes fit the hour, a fourth does not.
    let more: Vec<_> = (0..2)
        .map(|i| {
            book.reserve(BuyerKey(0), &kathmandu, m(1), t + 2 + i)
                .unwrap()
        })
        .collect();
    assert!(book.reserve(BuyerKey(0), &kathmandu, m(1), t + 5).is_err());
    let u = book.usage(BuyerKey(0), &kathmandu, t + 6);
    assert_eq!(u.sold_hour + u.reserved_in[0], 3, "{u:?}");
    for r in more.iter().chain([&held]) {
        assert!(book.commit(r));
    }
    let u = book.usage(BuyerKey(0), &kathmandu, t + 7);
    assert_eq!(u.sold_hour + u.reserved_in[0], 3, "{u:?}");
}

/// Black-box round 124a: hourly 3, quotes firm into the next hour (15 min), the zone
/// changed Kolkata -> Kathmandu -> Kolkata -> ... with quotes open: each change counted
/// the open quotes again (two open quotes read 3, and the third was refused `capped`).
/// Each change counts each open quote once; releases and sales after the changes leave
/// the counts right.
#[test]
fn zones_changed_back_and_forth_count_open_quotes_once() {
    let (kolkata, kathmandu) = kolkata_and_kathmandu(3);
    let book = CapBook::new(1);
    // 12:12 UTC: Kathmandu's hour ends at 12:15, Kolkata's at 12:30.
    let t = utc_ms(2026, 12, 5, 12, 12);
    let firm = 15 * MIN_MS;
    let used = |b: &Buyer, at: i64| {
        let u = book.usage(BuyerKey(0), b, at);
        u.sold_hour + u.reserved_in[0]
    };
    let q1 = book
        .reserve_until(BuyerKey(0), &kolkata, m(1), t, t + firm)
        .unwrap();
    assert_eq!(used(&kathmandu, t + 1), 1);
    let q2 = book
        .reserve_until(BuyerKey(0), &kathmandu, m(1), t + 2, t + 2 + firm)
        .unwrap();
    for flip in 0..6 {
        let b = if flip % 2 == 0 { &kolkata } else { &kathmandu };
        assert_eq!(used(b, t + 3 + flip), 2, "flip {flip}");
    }
    // The third fits the cap of 3, a fourth does not.
    let q3 = book
        .reserve_until(BuyerKey(0), &kathmandu, m(1), t + 10, t + 10 + firm)
        .unwrap();
    assert!(book
        .reserve_until(BuyerKey(0), &kathmandu, m(1), t + 11, t + 11 + firm)
        .is_err());
    assert_eq!(used(&kolkata, t + 12), 3);
    // Released after the changes: taken back, never below what stays.
    assert!(book.release(&q3));
    assert_eq!(used(&kolkata, t + 13), 2);
    // A sale is counted by number, not by lead: one counted in both zones' windows by
    // the changes before it is counted again by later changes (an over-count, never
    // under: the sale is never lost from a window; a known limit, CONFIGURATION.md
    // `timezone`).
    assert!(book.commit(&q1.delivered_at(t + 14)));
    assert!(book.release(&q2));
    for flip in 0..4 {
        let b = if flip % 2 == 0 { &kathmandu } else { &kolkata };
        let n = used(b, t + 15 + flip);
        assert!(n >= 1, "after: flip {flip}: {n}");
    }
}

/// The case traced at the end of session 51: a hold made in one zone and firm past the
/// end of the new zone's current hour counts in the new zone's next hour too. Hourly
/// cap 3; Kolkata's hours begin at :30 UTC, Kathmandu's at :15. Before, at 07:30 the
/// new Kolkata hour counted the first two holds (their own later hour) but not the
/// third (held in Kathmandu's hours only), and took a fourth lead while all three were
/// still firm: four could be delivered in that hour.
#[test]
fn a_hold_firm_past_the_new_zones_hour_counts_in_its_next_hour() {
    let (kolkata, kathmandu) = kolkata_and_kathmandu(3);
    let book = CapBook::new(1);
    let t = utc_ms(2026, 12, 5, 7, 0);
    let until = utc_ms(2026, 12, 5, 8, 15);
    for i in 0..2 {
        book.reserve_until(BuyerKey(0), &kolkata, m(1), t + i, until)
            .unwrap();
    }
    let t2 = utc_ms(2026, 12, 5, 7, 8);
    book.usage(BuyerKey(0), &kathmandu, t2);
    book.reserve_until(
        BuyerKey(0),
        &kathmandu,
        m(1),
        t2,
        utc_ms(2026, 12, 5, 7, 35),
    )
    .unwrap();
    book.usage(BuyerKey(0), &kolkata, t2 + 1);
    let next_hour = utc_ms(2026, 12, 5, 7, 30) + 1;
    assert!(
        book.reserve_until(BuyerKey(0), &kolkata, m(1), next_hour, next_hour + MIN_MS)
            .is_err(),
        "three holds firm into the hour: no fourth"
    );
    // The same with Kathmandu's next hour (07:15) after a change to it.
    let book = CapBook::new(1);
    for i in 0..3 {
        book.reserve_until(BuyerKey(0), &kolkata, m(1), t + i, until)
            .unwrap();
    }
    book.usage(BuyerKey(0), &kathmandu, t2);
    let at = utc_ms(2026, 12, 5, 7, 15) + 1;
    assert!(book
        .reserve_until(BuyerKey(0), &kathmandu, m(1), at, at + MIN_MS)
        .is_err());
}

/// A hold counted in the new zone's next hour by a zone change ([`Held::ahead`]): a
/// release takes it back, a sale delivered in the current hour takes it back from the
/// next hour, and one delivered in the next hour stays counted there.
#[test]
fn a_hold_counted_ahead_by_a_zone_change_is_settled_there() {
    let (kolkata, kathmandu) = kolkata_and_kathmandu(2);
    let t = utc_ms(2026, 12, 5, 7, 0);
    let until = utc_ms(2026, 12, 5, 7, 50);
    // Kathmandu's next hour begins at 07:15.
    let next = utc_ms(2026, 12, 5, 7, 15) + 1;
    let used_next = |book: &CapBook| {
        let u = book.usage(BuyerKey(0), &kathmandu, next);
        u.sold_hour + u.reserved_in[0]
    };
    for (settle, counted) in [("release", 0), ("sold now", 0), ("sold next hour", 1)] {
        let book = CapBook::new(1);
        let r = book
            .reserve_until(BuyerKey(0), &kolkata, m(1), t, until)
            .unwrap();
        book.usage(BuyerKey(0), &kathmandu, t + 1);
        match settle {
            "release" => assert!(book.release(&r)),
            "sold now" => assert!(book.commit(&r.delivered_at(t + 2))),
            _ => assert!(book.commit(&r.delivered_at(next))),
        }
        assert_eq!(used_next(&book), counted, "{settle}");
    }
    // Open, it counts there: with a second hold, the next hour is full.
    let book = CapBook::new(1);
    book.reserve_until(BuyerKey(0), &kolkata, m(1), t, until)
        .unwrap();
    book.usage(BuyerKey(0), &kathmandu, t + 1);
    book.reserve_until(BuyerKey(0), &kathmandu, m(1), t + 2, t + 3)
        .unwrap();
    assert_eq!(used_next(&book), 1);
}

#[derive(Debug, Clone)]
enum ZoneOp {
    Reserve {
        advance_ms: i64,
        firm_ms: i64,
    },
    /// To another of the zones (which of them, when there are several).
    Rezone(usize),
    Release(usize),
    /// Delivered now, if still firm.
    Commit(usize),
}

fn zone_op() -> impl Strategy<Value = ZoneOp> {
    prop_oneof![
        4 => (0i64..20 * MIN_MS, 0i64..2 * HOUR_MS)
            .prop_map(|(advance_ms, firm_ms)| ZoneOp::Reserve { advance_ms, firm_ms }),
        2 => any::<usize>().prop_map(ZoneOp::Rezone),
        1 => any::<usize>().prop_map(ZoneOp::Release),
        1 => any::<usize>().prop_map(ZoneOp::Commit),
    ]
}

/// The case of [`zone_changes_with_quotes_open_never_pass_a_cap`]: `cap` leads an hour,
/// a day or a week (`period` 0, 1 or 2), for a buyer whose zone changes among those of
/// `set`.
fn zone_ops_case(
    cap: u32,
    period: usize,
    set: usize,
    start: i64,
    first: bool,
    ops: Vec<ZoneOp>,
) -> Result<(), TestCaseError> {
    let period = period % 3;
    let caps = match period {
        0 => Caps {
            hourly: Some(cap),
            ..Caps::default()
        },
        1 => Caps {
            daily: Some(cap),
            ..Caps::default()
        },
        _ => Caps {
            weekly: Some(cap),
            ..Caps::default()
        },
    };
    let sets: [&[Tz]; 3] = [
        &[chrono_tz::Asia::Kolkata, chrono_tz::Asia::Kathmandu],
        &[chrono_tz::Europe::London, chrono_tz::America::St_Johns],
        &[
            chrono_tz::Asia::Kolkata,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::America::St_Johns,
        ],
    ];
    let zones: Vec<Buyer> = sets[set % sets.len()]
        .iter()
        .map(|tz| zoned(*tz, caps))
        .collect();
    // The key of the window a lead taken at `at` counts in, in `zone`.
    let window = |zone: &Buyer, at: i64| Windows::at(zone.timezone, at).unwrap().keys()[period];
    let mut zone = usize::from(first);
    let book = CapBook::new(1);
    let mut now = utc_ms(2026, 1, 1, 0, 0) + start;
    let mut open: Vec<(Reservation, i64)> = Vec::new();
    let mut sold: Vec<i64> = Vec::new();
    for op in ops {
        match op {
            ZoneOp::Reserve {
                advance_ms,
                firm_ms,
            } => {
                now += advance_ms;
                let firm = open.iter().filter(|(_, until)| *until >= now).count();
                let this = window(&zones[zone], now);
                let delivered = sold
                    .iter()
                    .filter(|s| window(&zones[zone], **s) == this)
                    .count();
                let until = now + firm_ms;
                if let Ok(r) = book.reserve_until(BuyerKey(0), &zones[zone], m(1), now, until) {
                    prop_assert!(
                        firm + delivered < cap as usize,
                        "a lead taken at {now} with {firm} holds firm and {delivered} sold in its window, cap {cap}"
                    );
                    open.push((r, until));
                }
            }
            ZoneOp::Rezone(n) => {
                zone = (zone + 1 + n % (zones.len() - 1)) % zones.len();
                book.usage(BuyerKey(0), &zones[zone], now);
            }
            ZoneOp::Release(i) if !open.is_empty() => {
                let (r, _) = open.swap_remove(i % open.len());
                prop_assert!(book.release(&r));
            }
            ZoneOp::Commit(i) if !open.is_empty() => {
                let (r, until) = open.swap_remove(i % open.len());
                if until >= now {
                    prop_assert!(book.commit(&r.delivered_at(now)));
                    sold.push(now);
                } else {
                    prop_assert!(book.release(&r));
                }
            }
            ZoneOp::Release(_) | ZoneOp::Commit(_) => {}
        }
    }
    for (r, _) in &open {
        prop_assert!(book.release(r));
    }
    if sold.is_empty() {
        prop_assert!(
            book.reserve_until(BuyerKey(0), &zones[zone], m(1), now, now)
                .is_ok(),
            "every hold released: room again"
        );
    }
    let later = now + 8 * 24 * HOUR_MS;
    prop_assert!(
        book.reserve_until(BuyerKey(0), &zones[zone], m(1), later, later)
            .is_ok(),
        "days later: room again"
    );
    Ok(())
}

proptest! {
    /// Zone changes with quotes open never let a buyer take a lead while `cap` leads are
    /// held firm (each could be delivered now) or were delivered in the current zone's
    /// current hour (or day, or week); and once every hold is released nothing stays
    /// counted.
    /// (Session 51 found a hold firm past the new zone's hour left out of its next
    /// hour; this test found three more ways to under-count.)
    #[test]
    fn zone_changes_with_quotes_open_never_pass_a_cap(
        cap in 1u32..4,
        period in 0usize..3,
        set in 0usize..3,
        start in 0i64..(30 * 24 * HOUR_MS),
        first in any::<bool>(),
        ops in proptest::collection::vec(zone_op(), 1..60),
    ) {
        zone_ops_case(cap, period, set, start, first, ops)?;
    }
}

/// Black-box round 127a: a buyer on Kathmandu with `hourly = 3` sold a lead at 14:40; its
/// zone became Dubai by a reload just before 15:00, first used at 15:00:00.2, and it
/// sold two leads then (Kathmandu's hour, running until 15:15, full). At 15:15:23, with
/// Kathmandu's hour over and Dubai's 15:00 hour holding two, it was refused `capped`
/// until 16:00: the change had carried the 14:40 sale into Dubai's 15:00 hour. A sale
/// taken before the new window began stays in the old window (a limit until its end);
/// holds are still carried, and the cap is never passed in either zone.
#[test]
fn a_sale_before_the_new_zone_s_window_began_is_not_carried_into_it() {
    let caps = Caps {
        hourly: Some(3),
        ..Caps::default()
    };
    let kathmandu = zoned(chrono_tz::Asia::Kathmandu, caps);
    let dubai = zoned(chrono_tz::Asia::Dubai, caps);
    let book = CapBook::new(1);
    let t = |h: u32, mi: u32, ms: i64| utc_ms(2026, 12, 5, h, mi) + ms;
    let r = book
        .reserve_until(
            BuyerKey(0),
            &kathmandu,
            m(1),
            t(14, 40, 0),
            t(14, 40, 2_000),
        )
        .unwrap();
    assert!(book.commit(&r.delivered_at(t(14, 40, 100))));
    for i in 0..2 {
        let now = t(15, 0, 200 + i);
        let r = book
            .reserve_until(BuyerKey(0), &dubai, m(1), now, now + 2_000)
            .unwrap();
        assert!(book.commit(&r.delivered_at(now + 10)));
    }
    assert!(
        book.reserve_until(BuyerKey(0), &dubai, m(1), t(15, 0, 500), t(15, 0, 2_500))
            .is_err(),
        "Kathmandu's hour, until 15:15, holds three"
    );
    let now = t(15, 15, 23_300);
    assert_eq!(book.usage(BuyerKey(0), &dubai, now).sold_hour, 2);
    let third = book
        .reserve_until(BuyerKey(0), &dubai, m(1), now, now + 2_000)
        .expect("Dubai's 15:00 hour holds 2 of 3");
    assert!(book.commit(&third.delivered_at(now)));
    assert!(book
        .reserve_until(BuyerKey(0), &dubai, m(1), now + 1, now + 2_000)
        .is_err());
}
