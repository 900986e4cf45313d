//! `[buyers.ID]`: URLs, secrets, targeting, caps and weekly schedules.

use std::collections::HashMap;

use proto::schema::is_us_state;
use proto::signing::Secret;
use proto::Micros;
use toml::Value;

use super::reader::{display_name, join, no_duplicates, str_list, toml_quoted, Problems, Section};
use super::{PartyPrices, DAYS, MINUTES_PER_DAY, TIMEOUT_MS_LIMIT};
use crate::config::{
    defaults, Buyer, BuyerKey, Caps, HttpVersion, MinuteRange, VerticalIdx, WeeklySchedule,
};

pub(super) fn read_buyer(
    id: &str,
    mut s: Section<'_>,
    vertical_by_name: &HashMap<String, VerticalIdx>,
    env: &dyn Fn(&str) -> Option<String>,
    p: &mut Problems,
) -> (Option<Buyer>, Option<PartyPrices>) {
    let before = p.len();
    let name = display_name(p, &mut s, id);
    let ping_url = s
        .str_opt(p, "ping_url")
        .and_then(|u| check_url(p, &s.path_of("ping_url"), u));
    let post_url = s
        .str_req(p, "post_url")
        .and_then(|u| check_url(p, &s.path_of("post_url"), u));
    let http = match s.opt("http") {
        None => HttpVersion::Http1,
        Some((_, Value::String(v))) if v == "1.1" => HttpVersion::Http1,
        Some((_, Value::String(v))) if v == "2" => HttpVersion::Http2,
        Some((path, v)) => {
            // HTTP/3 asked for is told it is not there yet (black-box round 198a).
            let h3 = match v {
                Value::String(v) => {
                    let v = v.to_ascii_lowercase();
                    v.contains('3') || v.contains("quic")
                }
                Value::Integer(3) => true,
                Value::Float(f) => *f == 3.0,
                _ => false,
            };
            let not_yet = if h3 {
                " (HTTP/3 over QUIC is not implemented yet)"
            } else {
                ""
            };
            p.at(&path, format!("must be \"1.1\" or \"2\"{not_yet}"));
            HttpVersion::Http1
        }
    };
    let secret_env = s.str_req(p, "secret_env");
    let secret = secret_env.and_then(|var| read_secret(p, &s.path_of("secret_env"), var, env));
    // The next secret while the buyer moves to it: both sign every message.
    let next_env = s.str_opt(p, "secret_env_next");
    let secret_next = next_env.and_then(|var| {
        let path = s.path_of("secret_env_next");
        if Some(var) == secret_env {
            p.at(
                &path,
                "names the variable secret_env names: the next secret is another one",
            );
            return None;
        }
        let next = read_secret(p, &path, var, env)?;
        let same = secret_env
            .and_then(env)
            .zip(env(var))
            .is_some_and(|(a, b)| {
                proto::signing::key_bytes(&a).ok() == proto::signing::key_bytes(&b).ok()
            });
        if same {
            p.at(
                &path,
                "holds the same key as secret_env: the next secret is another one",
            );
            return None;
        }
        Some(next)
    });
    let ping_timeout_ms = s.u64_or(
        p,
        "ping_timeout_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::PING_TIMEOUT_MS,
    );
    let post_timeout_ms = s.u64_or(
        p,
        "post_timeout_ms",
        1,
        TIMEOUT_MS_LIMIT,
        defaults::POST_TIMEOUT_MS,
    );
    let pings_in_flight_max = s
        .int_opt(p, "pings_in_flight_max", 1, PINGS_IN_FLIGHT_LIMIT)
        .map(|n| n as u32);
    let at_verticals = p.len();
    let verticals = s.vertical_refs(p, "verticals", vertical_by_name);
    let verticals_read = p.len() == at_verticals;

    let states_include = states(p, &mut s, "states_include");
    let states_exclude = states(p, &mut s, "states_exclude");
    for (path, state) in &states_exclude {
        if states_include.iter().any(|(_, inc)| inc == state) {
            p.at(
                path,
                format!("{} is also in states_include", toml_quoted(state)),
            );
        }
    }
    let zip_prefixes = s.str_list(p, "zip_prefixes");
    for (path, prefix) in &zip_prefixes {
        if !(1..=5).contains(&prefix.len()) || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            p.at(path, "must be 1 to 5 digits");
        }
    }
    no_duplicates(p, &zip_prefixes);

    let timezone = match s.str_opt(p, "timezone") {
        None => chrono_tz::Tz::UTC,
        Some(tz) => match tz.parse::<chrono_tz::Tz>() {
            // A zone whose clocks move by part of an hour (Australia/Lord_Howe's 30-minute
            // daylight saving) makes a local hour that overlaps the one before it, and the
            // cap book's hours must not overlap (black-box round 109b: a lead sent just
            // before the change counted in the next hour, and the hour it was sent in was
            // sold one lead past `hourly = 2`). Refused until the windows can follow it.
            Ok(zone) if !shifts_by_whole_hours(zone) => {
                p.at(
                    &s.path_of("timezone"),
                    format!(
                        "{tz:?}: its clocks change by part of an hour, which the exchange's hourly cap windows cannot follow yet; choose a zone whose clocks change by whole hours (a neighbouring one, or \"UTC\")"
                    ),
                );
                chrono_tz::Tz::UTC
            }
            Ok(zone) => zone,
            Err(_) => {
                p.at(
                    &s.path_of("timezone"),
                    format!(
                        "unknown time zone {} (an IANA name such as \"America/Chicago\")",
                        toml_quoted(tz)
                    ),
                );
                chrono_tz::Tz::UTC
            }
        },
    };
    let schedule = s
        .opt("schedule")
        .and_then(|(path, v)| read_schedule(p, path, v));
    let score_floor = s
        .int_opt(p, "score_floor", 0, 100)
        .and_then(|f| u8::try_from(f).ok());

    let mut c = s.section_or_empty(p, "caps");
    let cap_max = i64::from(u32::MAX);
    let mut caps = Caps {
        hourly: c.u32_opt(p, "hourly", 1, cap_max),
        daily: c.u32_opt(p, "daily", 1, cap_max),
        weekly: c.u32_opt(p, "weekly", 1, cap_max),
        monthly: c.u32_opt(p, "monthly", 1, cap_max),
        budget_daily: None,
    };
    c.finish_with_hint(p, "the caps are hourly, daily, weekly and monthly");
    caps.budget_daily = s.money_opt(p, "budget_daily");

    let allow_plaintext = s.bool_or(p, "allow_plaintext", false);
    if !allow_plaintext {
        for (key, url) in [
            ("ping_url", ping_url.as_deref()),
            ("post_url", post_url.as_deref()),
        ] {
            if let Some(url) = url {
                if !plaintext_allowed(url) {
                    p.at(
                        &s.path_of(key),
                        "is http:// to a host that is not loopback: full leads would travel in cleartext; use https://, or set allow_plaintext = true for this buyer",
                    );
                }
            }
        }
    }
    // The buyer's bearer key for `POST /v1/dispositions` (optional) and its rotation key.
    let key_sha256 = s
        .opt("key_sha256")
        .and_then(|(path, v)| buyer_key_digest(p, &path, v));
    let key_sha256_next = s
        .opt("key_sha256_next")
        .and_then(|(path, v)| buyer_key_digest(p, &path, v));
    if s.has("key_sha256_next") && !s.has("key_sha256") {
        p.at(
            &s.path_of("key_sha256_next"),
            "needs key_sha256 (the key being rotated away from)",
        );
    }
    if key_sha256.is_some() && key_sha256 == key_sha256_next {
        p.at(&s.path_of("key_sha256_next"), "must differ from key_sha256");
    }
    let return_window_days = s
        .int_opt(p, "return_window_days", 0, RETURN_WINDOW_DAYS_LIMIT)
        .and_then(|d| u16::try_from(d).ok())
        .unwrap_or(defaults::RETURN_WINDOW_DAYS);
    let at_fixed_price = p.len();
    let fixed_price = s.money_opt(p, "fixed_price");
    // A standing bid of 0 is a pass on every lead: a buyer that can never buy (black-box
    // round 92b: accepted, and its 0 counted among the bids).
    if fixed_price == Some(Micros::ZERO) {
        p.at(
            &s.path_of("fixed_price"),
            "must be more than 0: a bid of 0 is a pass, so this buyer could never buy",
        );
    }
    match (s.has("ping_url"), s.has("fixed_price")) {
        (false, false) => p.at(
            &s.path_of("fixed_price"),
            "is required for a buyer without ping_url (a fixed-price buyer); a pinged buyer needs ping_url",
        ),
        (true, true) => p.at(
            &s.path_of("fixed_price"),
            "applies only to a buyer without ping_url; a pinged buyer's price is its bid",
        ),
        _ => {}
    }
    // Whenever the price and the verticals read cleanly, whatever else of the buyer does
    // not.
    let prices = fixed_price
        .filter(|_| verticals_read && p.len() == at_fixed_price)
        .map(|price| PartyPrices {
            id: id.to_string(),
            verticals: verticals.clone(),
            payout: None,
            reserve: None,
            fixed_price: Some(price),
        });
    s.finish(p);

    if p.len() > before {
        return (None, prices);
    }
    let buyer = (|| {
        Some(Buyer {
            id: id.to_string(),
            key: BuyerKey::default(),
            name,
            ping_url,
            post_url: post_url?,
            http,
            secret_env: secret_env?.to_string(),
            secret: secret?,
            secret_next,
            ping_timeout_ms,
            post_timeout_ms,
            pings_in_flight_max,
            verticals,
            states_include: states_include
                .into_iter()
                .map(|(_, st)| st.to_string())
                .collect(),
            states_exclude: states_exclude
                .into_iter()
                .map(|(_, st)| st.to_string())
                .collect(),
            zip_prefixes: zip_prefixes
                .into_iter()
                .map(|(_, z)| z.to_string())
                .collect(),
            timezone,
            schedule,
            score_floor,
            caps,
            fixed_price,
            allow_plaintext,
            key_sha256,
            key_sha256_next,
            return_window_days,
        })
    })();
    (buyer, prices)
}

/// Longest `buyers.ID.return_window_days`.
const RETURN_WINDOW_DAYS_LIMIT: i64 = 365;
/// Most pings in flight a buyer's `pings_in_flight_max` may allow.
const PINGS_IN_FLIGHT_LIMIT: i64 = 1_000_000;

/// A buyer key's SHA-256 as 64 hex digits.
fn buyer_key_digest(p: &mut Problems, path: &str, v: &Value) -> Option<[u8; 32]> {
    let Some(text) = v.as_str() else {
        p.at(
            path,
            "must be a string of 64 hex digits: the SHA-256 of the buyer's key",
        );
        return None;
    };
    let mut digest = [0u8; 32];
    match hex::decode_to_slice(text, &mut digest) {
        Ok(()) => Some(digest),
        Err(_) => {
            p.at(
                path,
                "must be 64 hex digits: the SHA-256 of the buyer's key",
            );
            None
        }
    }
}

/// Whether `url` may be used without `allow_plaintext`: `https://`, or `http://` to a
/// loopback host (127.0.0.0/8, ::1, localhost, and 127.0.0.0/8 as `::ffff:127.x.y.z`).
fn plaintext_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return true; // Reported by check_url.
    };
    if uri.scheme_str() != Some("http") {
        return true;
    }
    let host = uri.host().unwrap_or_default();
    host.eq_ignore_ascii_case("localhost")
        || crate::config::host_ip(host).is_some_and(|ip| ip.is_loopback())
}

/// An `http://` or `https://` URL with a host.
fn check_url(p: &mut Problems, path: &str, url: &str) -> Option<String> {
    // The example is of the key's own kind (a ping URL for `ping_url`, a post URL for
    // `post_url`; black-box round 49: a post URL was shown a ping URL).
    let example = if path.ends_with("post_url") {
        "https://buyer.example/post"
    } else {
        "https://buyer.example/ping"
    };
    let shape = format!("must be an http:// or https:// URL such as \"{example}\"");
    // Said as what it is, not as a URL of another shape (black-box round 229a:
    // `https://bücher.example/ping` was told to be an http:// or https:// URL).
    if !url.is_ascii() {
        p.at(
            path,
            "must be ASCII: an internationalized host name in its punycode form (xn--…), other characters percent-encoded",
        );
        return None;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        p.at(path, shape);
        return None;
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        p.at(path, shape);
        return None;
    }
    if uri.host().is_none_or(str::is_empty) {
        p.at(path, "must name a host");
        return None;
    }
    if let Some(why) = uri.host().and_then(host_name_problem) {
        p.at(path, why);
        return None;
    }
    // `http::Uri` takes any digits as a port (black-box round 37: `:99999`, `:65536` and
    // `:0` passed the check, and every call to the buyer failed).
    // (`Uri::port` is `None` for a port that does not fit 16 bits, so read the authority.)
    let authority = uri.authority().map_or("", |a| a.as_str());
    // Credentials in the URL would never be sent (black-box round 67d: `user:pw@` was
    // taken and dropped, and every request went out without them); buyers authenticate
    // the exchange by its signature.
    if authority.contains('@') {
        p.at(
            path,
            "must not carry credentials (user:password@): the exchange does not send them; a buyer checks each request's Standard Webhooks signature (secret_env) instead",
        );
        return None;
    }
    let host_port = authority;
    if let Some((_, port)) = host_port
        .rsplit_once(':')
        .filter(|_| !host_port.ends_with(']'))
    {
        // Digits only: Rust's parse takes a sign (black-box round 229a: `:+28812`).
        if !port.is_empty()
            && (!port.bytes().all(|b| b.is_ascii_digit())
                || port.parse::<u16>().map_or(true, |n| n == 0))
        {
            p.at(path, format!("port {port}: must be 1 to 65535"));
            return None;
        }
    }
    Some(url.to_string())
}

/// Why `host` (a URL's, not an IP literal) is no name that could resolve, if it is not:
/// labels of 1 to 63 letters, digits, hyphens or underscores, none starting or ending
/// with a hyphen, 253 characters at most (RFC 1035, RFC 1123). Black-box round 229a: a
/// 4,897-character name, `a..b` and `-lead.invalid` passed, each call then an `error`.
fn host_name_problem(host: &str) -> Option<String> {
    if host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let shown = crate::server::truncate(host, 64);
    let bad_label = |l: &str| {
        l.is_empty()
            || l.len() > 63
            || l.starts_with('-')
            || l.ends_with('-')
            || !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (name.len() > 253 || name.split('.').any(bad_label)).then(|| {
        format!(
            "host {shown:?} is no name that could resolve: labels of 1 to 63 letters, digits, hyphens or underscores, none starting or ending with a hyphen, 253 characters at most"
        )
    })
}

pub use proto::signing::SECRET_BYTES_MIN;
/// Longest signing secret, as its variable holds it.
pub const SECRET_TEXT_BYTES_MAX: usize = 4_096;

/// Reads the signing secret from the environment. Messages name the variable, never its value.
fn read_secret(
    p: &mut Problems,
    path: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    if !super::reader::is_env_name(var) {
        p.at(path, super::reader::ENV_NAME_RULE);
        return None;
    }
    let Some(text) = env(var) else {
        // Set, but not text (round 56a: told "not set", which sent the operator looking
        // in the wrong place).
        let not_text = crate::config::env_is_not_text(var);
        let var = crate::config::shown_env_name(var);
        if not_text {
            p.at(
                path,
                format!(
                    "environment variable {var} is set but is not UTF-8 text \
                     (a binary key goes as whsec_ and its base64)"
                ),
            );
        } else {
            p.at(path, format!("environment variable {var} is not set"));
        }
        return None;
    };
    match Secret::new(&text) {
        // Bounded, as everything: a signing key is 24 to 64 random bytes, and the loader
        // looks through a secret for other parties' keys ([`super::bearer_texts`]).
        Ok(_) if text.len() > SECRET_TEXT_BYTES_MAX => {
            let var = crate::config::shown_env_name(var);
            p.at(
                path,
                format!(
                    "environment variable {var} holds a value longer than {SECRET_TEXT_BYTES_MAX} bytes \
                     (as set, `whsec_` and base64 included): use 24 to 64 random bytes (`whsec_` and base64, as Standard Webhooks suggests)"
                ),
            );
            None
        }
        Ok(_) if proto::signing::key_bytes(&text).map_or(0, |k| k.len()) < SECRET_BYTES_MIN => {
            let var = crate::config::shown_env_name(var);
            p.at(
                path,
                format!(
                    "environment variable {var} holds a secret shorter than {SECRET_BYTES_MIN} bytes: \
                     a short key can be guessed; use at least {SECRET_BYTES_MIN} random bytes \
                     (`whsec_` and 24 to 64 bytes in base64, as Standard Webhooks suggests)"
                ),
            );
            None
        }
        Ok(secret) => Some(secret),
        Err(_) => {
            let var = crate::config::shown_env_name(var);
            p.at(path, format!("environment variable {var} does not hold a valid secret (empty, or not base64 after whsec_)"));
            None
        }
    }
}

fn states<'a>(p: &mut Problems, s: &mut Section<'a>, key: &'static str) -> Vec<(String, &'a str)> {
    let list = s.str_list(p, key);
    for (path, state) in &list {
        if !is_us_state(state) {
            p.at(
                path,
                format!(
                    "{} is not a US state code (two upper-case letters such as \"TX\")",
                    toml_quoted(state)
                ),
            );
        }
    }
    no_duplicates(p, &list);
    list
}

fn read_schedule(p: &mut Problems, path: String, v: &Value) -> Option<WeeklySchedule> {
    let Some(table) = v.as_table() else {
        p.at(
            &path,
            "must be a table of days such as { mon = [\"08:00-20:00\"] }",
        );
        return None;
    };
    let mut s = Section::new(path, Some(table));
    let mut days: [Vec<MinuteRange>; 7] = Default::default();
    for (day, ranges) in DAYS.iter().zip(days.iter_mut()) {
        if let Some((day_path, v)) = s.opt(day) {
            *ranges = read_day(p, &day_path, v);
        }
    }
    s.finish_with_hint(p, "days are mon, tue, wed, thu, fri, sat, sun");
    Some(WeeklySchedule { days })
}

/// One day's open ranges, sorted; overlapping ranges are recorded.
fn read_day(p: &mut Problems, path: &str, v: &Value) -> Vec<MinuteRange> {
    let mut ranges = Vec::new();
    for (item_path, text) in str_list(p, path, v) {
        match parse_range(text) {
            Ok(r) => ranges.push(r),
            Err(why) => p.at(&item_path, why),
        }
    }
    ranges.sort_by_key(|r| (r.start, r.end));
    for pair in ranges.windows(2) {
        if let [a, b] = pair {
            if b.start < a.end {
                p.at(
                    path,
                    format!("ranges {} and {} overlap", show_range(*a), show_range(*b)),
                );
            }
        }
    }
    ranges
}

/// `"HH:MM-HH:MM"`, end after start; the end may be `24:00`.
pub(super) fn parse_range(text: &str) -> Result<MinuteRange, String> {
    let shape = || {
        format!(
            "{} must be a range \"HH:MM-HH:MM\" such as \"08:00-20:00\"",
            toml_quoted(text)
        )
    };
    let (start, end) = text.split_once('-').ok_or_else(shape)?;
    // Plain spaces around each time only (black-box round 100b: `trim` also took a
    // no-break space or a tab, which CONFIGURATION.md does not allow).
    let start = parse_clock(start.trim_matches(' '))
        .filter(|&m| m < MINUTES_PER_DAY)
        .ok_or_else(shape)?;
    let end = parse_clock(end.trim_matches(' ')).ok_or_else(shape)?;
    if start >= end {
        return Err(format!(
            "{text:?} must end after it starts (split a range that crosses midnight in two)"
        ));
    }
    Ok(MinuteRange { start, end })
}

/// `HH:MM` as minutes after midnight, `00:00` to `24:00`.
pub(super) fn parse_clock(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= MINUTES_PER_DAY).then_some(minutes)
}

pub(super) fn show_range(r: MinuteRange) -> String {
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        r.start / 60,
        r.start % 60,
        r.end / 60,
        r.end % 60
    )
}

/// Whether every change of `zone`'s UTC offset from 2020 to 2040 is by whole hours (its
/// offset read at noon UTC on the first of each month; two changes within one month by
/// part of an hour each would pass, and no zone has them). Cached per zone: a
/// configuration of 10,000 buyers names a few zones.
fn shifts_by_whole_hours(zone: chrono_tz::Tz) -> bool {
    use chrono::{Offset, TimeZone};
    thread_local! {
        static SEEN: std::cell::RefCell<std::collections::HashMap<&'static str, bool>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    if let Some(ok) = SEEN.with(|s| s.borrow().get(zone.name()).copied()) {
        return ok;
    }
    let offsets = (2020..=2040)
        .flat_map(|y| (1..=12).map(move |m| (y, m)))
        .filter_map(|(y, m)| {
            chrono::Utc
                .with_ymd_and_hms(y, m, 1, 12, 0, 0)
                .single()
                .map(|t| {
                    zone.offset_from_utc_datetime(&t.naive_utc())
                        .fix()
                        .local_minus_utc()
                })
        });
    let mut last = None;
    let mut ok = true;
    for o in offsets {
        if let Some(l) = last {
            if (o - l) % 3600 != 0 {
                ok = false;
                break;
            }
        }
        last = Some(o);
    }
    SEEN.with(|s| s.borrow_mut().insert(zone.name(), ok));
    ok
}

/// Where a buyer's `budget_daily` is too small for it to ever buy in one of its verticals:
/// under the vertical's `floor` (no bid under it is quoted, and a buyer pays its bid), `0`,
/// or under a fixed-price buyer's own `fixed_price`. Such a buyer is never pinged there,
/// or its every bid is refused at award (black-box round 198c: `budget_daily = 0` passed
/// `--check-config` without a word, while `fixed_price = 0` is refused). Not an error:
/// an operator may pause a buyer by its budget.
/// Each cap of a buyer over the cap of a longer window that holds it (an hour is inside
/// its day, week and month; a day inside its week and month), which can then never be
/// reached: a line each for the start's log, a reload's and `--check-config` (black-box
/// round 244a: `caps = { hourly = 10, daily = 5 }` passed without a word). A week may
/// straddle two months, so a weekly cap over the monthly one can be reached, and is not
/// said. Not an error: the longer window's cap still holds.
pub fn cap_warnings(cfg: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for b in &cfg.buyers {
        let c = &b.caps;
        let caps = [
            ("hourly", c.hourly, "hour"),
            ("daily", c.daily, "day"),
            ("weekly", c.weekly, "week"),
            ("monthly", c.monthly, "month"),
        ];
        for (i, &(short, short_cap, span)) in caps.iter().enumerate() {
            let Some(short_cap) = short_cap else { continue };
            // The lowest cap of a longer window that holds this one, if under it.
            let under = caps[i + 1..]
                .iter()
                .filter(|&&(long, _, _)| !(short == "weekly" && long == "monthly"))
                .filter_map(|&(long, cap, noun)| cap.map(|cap| (long, cap, noun)))
                .filter(|&(_, cap, _)| cap < short_cap)
                .min_by_key(|&(_, cap, _)| cap);
            if let Some((long, long_cap, noun)) = under {
                out.push(format!(
                    "{}: {short} = {short_cap} is over {long} = {long_cap}: every {span} is inside a {noun}, so this buyer gets at most {long_cap} leads in any {span} and its {short} cap is never reached",
                    join(&join("buyers", &b.id), "caps"),
                ));
            }
        }
    }
    out
}

pub fn budget_warnings(cfg: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    for b in &cfg.buyers {
        let Some(budget) = b.caps.budget_daily else {
            continue;
        };
        let path = join(&join("buyers", &b.id), "budget_daily");
        if let Some(price) = b.fixed_price.filter(|p| budget < *p) {
            out.push(format!(
                "{path}: {budget} is under its fixed_price of {price}: this buyer can never buy a lead"
            ));
            continue;
        }
        let never: Vec<String> = b
            .verticals
            .iter()
            .filter_map(|&v| cfg.verticals.get(v))
            .filter(|v| budget < v.floor || budget.0 <= 0)
            .map(|v| format!("{} (floor {})", v.name, v.floor))
            .collect();
        if !never.is_empty() {
            out.push(format!(
                "{path}: {budget} leaves this buyer nothing it can buy in {}: no bid under a vertical's floor is quoted and a buyer pays its bid, so it is never pinged there (skipped as capped)",
                never.join(", ")
            ));
        }
    }
    out
}
