//! The scan applied to a starting exchange ([`apply`]): caps and budgets counted, keys
//! and answers restored, what is open put back.

use std::collections::HashMap;

use bytes::Bytes;
use proto::Micros;

use super::{
    answers::{answer_of, direct_answer_of, ping_answer_of, Lookup},
    restore::{
        close_expired_while_down, close_not_restored, close_unopened_holds,
        restore_disposition_keys, restore_finished, restore_quote,
    },
    scan::{KeyedPing, Scan, Sent},
};
use crate::core::caps::Windows;
use crate::core::settlement::release_reason;
use crate::core::UnixMs;
use crate::state::AppState;

/// What [`recover`] rebuilt, for the start log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    pub records: u64,
    /// Sales counted again in caps and budgets (current windows only; test leads are
    /// not; sales of buyers not configured now are, under their id's key).
    pub sales_counted: u64,
    /// Deliveries with no outcome (all of them, counted or not).
    pub unknown: u64,
    /// Of those, counted in caps.
    pub unknown_counted: u64,
    /// Late accepts counted in caps.
    pub late_counted: u64,
    /// Timed-out deliveries still being heard out when the exchange died, counted in
    /// caps (the buyer may have accepted late).
    pub late_unknown_counted: u64,
    /// Sellers' idempotency keys restored (`pingpost_idempotency_keys`).
    pub keys: u64,
    /// Buyers' disposition idempotency keys restored
    /// (`pingpost_disposition_idempotency_keys`; black-box round 160b: the log added
    /// them to the sellers' under one name).
    pub disposition_keys: u64,
    /// Open quotes restored (firm again, their holds re-reserved).
    pub quotes: u64,
    /// Finished posts of quotes restored (a repeat gets the first answer again).
    pub finished_posts: u64,
    /// Open quotes that expired while the exchange was down: closed with a
    /// `quote_expired` record, and answered `expired` to a post as before the stop.
    pub expired_while_down: u64,
    /// Test leads' quotes past their `expires_at` (they hold nothing and no record ends
    /// them, so nothing tells whether they expired before the stop or while down):
    /// answered `expired` to a post, as before the stop. Not in `expired_while_down`
    /// (black-box round 67c: they were counted there, whenever they expired).
    pub test_quotes_expired: u64,
    /// Open quotes not expired that no longer fit the configuration, closed at this
    /// start ([`close_not_restored`]).
    pub quotes_not_restored: u64,
    /// Holds whose quote was never recorded (`quote_reserved` without its
    /// `quote_opened`), closed at this start ([`close_unopened_holds`]).
    pub holds_without_quote: u64,
    /// Sold leads put back in the sold-lead index (the newest `server.sold_leads_max`).
    pub sold_leads: u64,
    /// Dispositions and refunds applied to them (a repeat stays refused).
    pub dispositions: u64,
}

/// Does a lead sold in `w` count in any window current at `now` (hour and day windows
/// lie inside their week)?
pub(super) fn counts_now(w: &Windows, now: &Windows) -> bool {
    w.month >= now.month || w.week >= now.week
}

/// [`counts_now`] for windows of an unknown zone against `now`'s in UTC: zones are at most
/// a day from UTC, so a lead of the previous week or month may still lie in the current
/// one of the buyer's zone (kept; the cap book drops what is past once it knows the zone).
pub(super) fn may_count_now(w: &Windows, now_utc: &Windows) -> bool {
    w.month.saturating_add(1) >= now_utc.month || w.week.saturating_add(7) >= now_utc.week
}

/// The windows a lead of a configured buyer counts in: the ones it was written with, if
/// they are the windows of their own hour in the buyer's zone now; written in a zone the
/// buyer had before, the current windows of the zone now that its old windows may still
/// be running in, and otherwise the windows of its time `at` ([`Windows::carried`]), so a
/// zone changed across a restart never sells past a cap in either zone's windows; a
/// record written before format 4 (no windows), the windows of `at` in the zone now.
/// With the windows, the latest ends of the old zone's windows when they were of another
/// zone ([`Windows::ends_in_any_zone`]): until then the lead counts in them, and holds
/// must fit their caps too ([`CapBook::restore_former_zone`]).
pub(super) fn windows_in(
    tz: chrono_tz::Tz,
    windows: Option<Windows>,
    written_in: Option<&str>,
    at: UnixMs,
    now: UnixMs,
) -> Option<(Windows, Option<[i64; crate::core::caps::PERIODS]>)> {
    // The record names its zone (`tz`): another zone is another zone, even where the
    // window numbers read the same in both (black-box round 60a).
    let same_zone = written_in.is_none_or(|z| z == tz.name());
    match windows {
        Some(w) if same_zone && Windows::at(tz, w.hour_start_ms) == Some(w) => Some((w, None)),
        Some(old) => {
            // In the zone the record names, the old windows end exactly (round 61b: taken
            // to end 13 hours after the UTC boundary, a Los Angeles day held its cap until
            // 13:00 UTC, 5 hours past its end); in an unknown zone, at the latest.
            let ends = match written_in.and_then(|z| z.parse::<chrono_tz::Tz>().ok()) {
                Some(old_tz) => old.ends_in(old_tz).filter(|e| e.iter().any(|&e| e > now)),
                None => old.ends_after(now),
            };
            Some((Windows::carried(tz, &old, at, now)?, ends))
        }
        None => Windows::at(tz, at).map(|w| (w, None)),
    }
}

/// A configured buyer's lead as the replay counted it ([`CapBook::count_in_formers`]).
struct Replayed {
    key: crate::config::BuyerKey,
    zone: Option<chrono_tz::Tz>,
    at: UnixMs,
    own: Option<[i64; crate::core::caps::PERIODS]>,
    price: Micros,
}

/// The stable key of a buyer the ledger names but the configuration does not, interned
/// now (the cap book grown to cover it); `None` past the registry's bound (logged).
pub(super) fn key_of_unconfigured(
    state: &AppState,
    buyer: &str,
) -> Option<crate::config::BuyerKey> {
    if buyer.is_empty() {
        return None;
    }
    let Some(key) = state.ids.intern_buyer(buyer) else {
        tracing::warn!(
            buyer = %crate::server::truncate(buyer, 64),
            "ledger: a buyer not configured now could not be keyed (too many buyer ids); its \
             leads are not counted"
        );
        return None;
    };
    state.caps.grow(state.ids.buyer_count());
    state.breakers.grow(state.ids.buyer_count());
    state.late_calls.grow(state.ids.buyer_count());
    state.late_posts.grow(state.ids.buyer_count());
    Some(key)
}

/// The stable key of seller `id`: its configured one, or, for a seller the configuration
/// does not have now, its id's (interned now), so its idempotency keys and finished posts
/// wait for a reload that brings it back (black-box round 23: they were dropped, and the
/// re-added seller's retries sold leads a second time). `None` for an empty id or past
/// the registry's bound.
pub(super) fn seller_key_of(
    state: &AppState,
    configured: &HashMap<&str, crate::config::SellerKey>,
    id: &str,
) -> Option<crate::config::SellerKey> {
    if let Some(k) = configured.get(id) {
        return Some(*k);
    }
    if id.is_empty() {
        return None;
    }
    let key = state.ids.intern_seller(id);
    if key.is_none() {
        tracing::warn!(
            seller = %crate::server::truncate(id, 64),
            "ledger: a seller not configured now could not be keyed (too many seller ids); \
             its idempotency keys and finished posts are not restored"
        );
    }
    key
}

/// Replays `scan` into `state`'s cap book and idempotency store (see the module
/// documentation). Call it once, before serving.
pub fn apply(state: &AppState, scan: &Scan) -> Recovered {
    let rt = state.runtime.load();
    let cfg = &rt.config;
    let now = state.clock.now_ms();
    let buyers: HashMap<&str, &crate::config::Buyer> =
        cfg.buyers.iter().map(|b| (b.id.as_str(), b)).collect();
    let mut out = Recovered {
        records: scan.records,
        ..Recovered::default()
    };
    // The leads of configured buyers as counted, for the windows of their former zones
    // once all are made (`CapBook::count_in_formers`).
    let replayed: std::cell::RefCell<Vec<Replayed>> = std::cell::RefCell::new(Vec::new());
    let count = |buyer: &str,
                 windows: Option<Windows>,
                 written_in: Option<&str>,
                 at: UnixMs,
                 price: i64|
     -> bool {
        let Some(b) = buyers.get(buyer) else {
            // Not configured now (removed before the restart, or left out of the file):
            // counted under its id's key all the same, so a reload that brings it back
            // cannot sell it past its caps.
            let Some(w) = windows.or_else(|| Windows::at(chrono_tz::Tz::UTC, at)) else {
                return false;
            };
            if let Some(cur) = Windows::at(chrono_tz::Tz::UTC, now) {
                if !may_count_now(&w, &cur) {
                    return false;
                }
            }
            // Its zone is not known: if a reload brings it back in another zone, the
            // windows it was sold in stay limits until they may end (black-box round 36:
            // back in UTC, its Kolkata hour took twice its cap).
            return key_of_unconfigured(state, buyer).is_some_and(|key| {
                if let Some(ends) = w.ends_after(now) {
                    state
                        .caps
                        .restore_former_zone(key, ends, Micros(price), now);
                }
                state
                    .caps
                    .restore_sold_at(key, None, &w, Micros(price), Some(at))
            });
        };
        let Some((w, former_ends)) = windows_in(b.timezone, windows, written_in, at, now) else {
            return false;
        };
        let lead_zone = match written_in {
            None => Some(b.timezone),
            Some(z) => z.parse::<chrono_tz::Tz>().ok(),
        };
        if let Some(ends) = former_ends {
            state
                .caps
                .restore_former_zone_in(b.key, ends, Micros(price), now, lead_zone);
        }
        // Only a lead recent enough to lie in a window still running.
        if at >= now.saturating_sub(crate::core::caps::FORMER_LEAD_AGE_MAX_MS) {
            replayed.borrow_mut().push(Replayed {
                key: b.key,
                zone: lead_zone,
                at,
                own: former_ends,
                price: Micros(price),
            });
        }
        match Windows::at(b.timezone, now) {
            Some(cur) if !counts_now(&w, &cur) => false,
            _ => state
                .caps
                .restore_sold_at(b.key, Some(b.timezone), &w, Micros(price), Some(at)),
        }
    };
    // A lead sold, or delivered with its outcome unknown, stays a duplicate for its
    // vertical's window (the book keeps only what is inside the longest one), as its
    // seller's sale (one the exchange does not know is nobody's).
    let seller_of = |id: &str| {
        state
            .ids
            .seller_key(id)
            .unwrap_or(crate::config::SellerKey(u32::MAX))
    };
    for s in scan.sales.iter().filter(|s| !s.test) {
        if count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.bid_micros) {
            out.sales_counted += 1;
        }
        state
            .dedup
            .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
    }
    for s in scan.unknown() {
        out.unknown += 1;
        if !s.test && count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.price_micros) {
            out.unknown_counted += 1;
        }
        if !s.test {
            state
                .dedup
                .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
        }
    }
    for s in scan.late_accepts().filter(|s| !s.test) {
        if count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.price_micros) {
            out.late_counted += 1;
        }
        state
            .dedup
            .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
    }
    for s in scan.cut_short().filter(|s| !s.test) {
        if count(&s.buyer, s.windows, s.tz.as_deref(), s.at, s.price_micros) {
            out.late_unknown_counted += 1;
        }
        state
            .dedup
            .restore(&s.dedup, (s.at, seller_of(&s.seller)), now);
    }
    // Every lead counts in the windows of its buyer's other zones still running, now
    // that the replay has made all of them (black-box round 108a).
    for r in replayed.take() {
        state
            .caps
            .count_in_formers(r.key, r.zone, r.at, r.own, r.price, now);
    }
    state.metrics.dedup_gauges(&state.dedup);
    // The sold-lead index: every sale, then what its dispositions and refunds took.
    let keep = scan.sold.len().saturating_sub(cfg.server.sold_leads_max);
    for (lead_id, lead) in scan.sold.iter().skip(keep) {
        let mut lead = lead.clone();
        lead.buyer_key = state.ids.buyer_key(&lead.buyer);
        state.sold_leads.insert(lead_id, lead);
        out.sold_leads += 1;
    }
    for (lead_id, outcome) in &scan.dispositions {
        if state.sold_leads.mark_seen(lead_id, outcome) {
            out.dispositions += 1;
        }
    }
    for lead_id in &scan.refunds {
        state.sold_leads.mark_refunded(lead_id);
    }
    // Open quotes: firm again, with their holds (after the sales, which they add to).
    // Those closed here because their vertical is gone are answered as a later start
    // answers them ([`restore_finished`]).
    let mut vertical_gone: HashMap<&str, UnixMs> = HashMap::new();
    for (ping_id, v) in &scan.opened {
        if scan.closed_pings.contains(ping_id) {
            continue;
        }
        if restore_quote(state, cfg, v, now).is_some() {
            out.quotes += 1;
        } else if let Some(reason) = close_not_restored(state, cfg, ping_id, v, now) {
            out.quotes_not_restored += 1;
            if reason == release_reason::VERTICAL_REMOVED {
                vertical_gone.insert(ping_id.as_str(), now);
            }
        }
    }
    out.holds_without_quote = close_unopened_holds(state, scan, now);
    let names: HashMap<&str, &str> = cfg
        .buyers
        .iter()
        .map(|b| (b.id.as_str(), b.name.as_str()))
        .collect();
    let look = Lookup::of(scan);
    // Sellers by id; one the configuration does not have now is keyed by its id
    // ([`seller_key_of`]).
    let sellers: HashMap<&str, crate::config::SellerKey> =
        cfg.sellers.iter().map(|x| (x.id.as_str(), x.key)).collect();
    out.finished_posts =
        restore_finished(state, &sellers, scan, &look, &names, &vertical_gone, now);
    (out.expired_while_down, out.test_quotes_expired) =
        close_expired_while_down(state, &sellers, scan, now);
    // Idempotency keys: the last lead each key started.
    let mut last: HashMap<(&str, &str), &Sent> = HashMap::new();
    for s in &scan.sent {
        if let Some((k, _)) = &s.idempotency {
            last.insert((s.seller.as_str(), k.as_str()), s);
        }
    }
    // The keys of direct posts: their `auction` record says so (written before their
    // `post_sent`, by the one ordered writer), and a delivery's key is a direct post's or
    // a post's by it (black-box round 74a: both routes answered after a restart).
    let direct_keys: std::collections::HashSet<(&str, &str)> = scan
        .keyed_pings
        .iter()
        .filter(|p| p.direct)
        .map(|p| (p.seller.as_str(), p.key.0.as_str()))
        .collect();
    // Keyed pings: the answer they got, rebuilt from the auction and its quote. A retry
    // after a restart gets it again, and opens no second quote.
    let mut last_ping: HashMap<(&str, &str), &KeyedPing> = HashMap::new();
    for p in &scan.keyed_pings {
        last_ping.insert((p.seller.as_str(), p.key.0.as_str()), p);
    }
    for ((seller, _), p) in last_ping {
        let Some(seller) = seller_key_of(state, &sellers, seller) else {
            continue;
        };
        let json = if p.direct {
            direct_answer_of(&look, p).and_then(|a| serde_json::to_vec(&a).ok())
        } else {
            ping_answer_of(scan, p).and_then(|a| serde_json::to_vec(&a).ok())
        };
        let (Some(key), Some(body), Some(json)) = (digest(&p.key.0), digest(&p.key.1), json) else {
            continue;
        };
        let answer = (200, Bytes::from(json));
        // The key answers on its own route only (black-box round 73a: any route got
        // the stored answer after a restart).
        let route = if p.direct { "leads" } else { "ping" };
        if state
            .idempotency
            .restore(seller, route, key, body, p.at, now, answer)
        {
            out.keys += 1;
        }
    }
    for ((seller_id, key), s) in last {
        let route = if direct_keys.contains(&(seller_id, key)) {
            "leads"
        } else {
            "post"
        };
        let Some(seller) = seller_key_of(state, &sellers, seller_id) else {
            continue;
        };
        let body = s.idempotency.as_ref().map_or("", |(_, b)| b.as_str());
        let (Some(key), Some(body)) = (digest(key), digest(body)) else {
            continue;
        };
        let answer = answer_of(scan, &look, &s.lead_id, &names);
        if state
            .idempotency
            .restore(seller, route, key, body, s.at, now, answer)
        {
            out.keys += 1;
        }
    }
    out.disposition_keys = restore_disposition_keys(state, scan, &buyers, now);
    out
}

/// The stable key of buyer `id`: the one it has (configured, or keyed already), or one
/// interned now for a buyer the configuration no longer has.
pub(super) fn key_of(state: &AppState, id: &str) -> Option<crate::config::BuyerKey> {
    state
        .ids
        .buyer_key(id)
        .or_else(|| key_of_unconfigured(state, id))
}

pub(super) fn digest(hex_text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}
