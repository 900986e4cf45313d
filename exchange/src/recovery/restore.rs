//! What [`apply`](super::apply) puts back one kind at a time: buyers' idempotency keys,
//! finished posts, quotes closed while the exchange was down, and open quotes with their
//! cap holds.

use std::collections::HashMap;

use bytes::Bytes;
use proto::seller::{PostAnswer, PostStatus};
use proto::Micros;
use serde_json::Value;

use super::{
    answers::{sold_answer, unsold_answer, Lookup, OUTCOME_UNKNOWN},
    apply::{digest, key_of, key_of_unconfigured, seller_key_of},
    scan::{at_of, dedup_of, text, windows_of, KeyedDisposition, Scan},
};
use crate::core::caps::Windows;
use crate::core::post::{refuse_before_delivery, BeforeDelivery};
use crate::core::settlement::release_reason;
use crate::core::UnixMs;
use crate::state::AppState;

/// How long a start waits for room in the ledger's queue for one record it closes.
const RESTORE_WAIT_MS: u64 = 30_000;

/// Buyers' keys on `POST /v1/dispositions`: the last disposition each key recorded, with
/// the `200` it was answered (only a `200` is ever recorded with its key). A buyer not
/// configured now has no key to retry with, and is skipped.
pub(super) fn restore_disposition_keys(
    state: &AppState,
    scan: &Scan,
    buyers: &HashMap<&str, &crate::config::Buyer>,
    now: UnixMs,
) -> u64 {
    let mut last: HashMap<(&str, &str), &KeyedDisposition> = HashMap::new();
    for d in &scan.keyed_dispositions {
        last.insert((d.buyer.as_str(), d.key.0.as_str()), d);
    }
    let mut restored = 0;
    for ((buyer, _), d) in last {
        // A buyer not configured now keeps its keys under its id's stable key, as its
        // counts are kept: a reload that brings it back finds them (black-box round 22:
        // its retry got 409 instead of its stored refund).
        let Some(party) = buyers
            .get(buyer)
            .map(|b| b.key)
            .or_else(|| key_of_unconfigured(state, buyer))
        else {
            continue;
        };
        let (Some(key), Some(body)) = (digest(&d.key.0), digest(&d.key.1)) else {
            continue;
        };
        let refund = scan
            .refund_lines
            .get(&d.lead_id)
            .map(
                |(currency, refund, clawback)| crate::dispositions::RefundLine {
                    currency,
                    buyer_refund_micros: *refund,
                    seller_clawback_micros: *clawback,
                },
            );
        let answer = crate::dispositions::answer_json(&d.lead_id, &d.outcome, d.test, refund);
        if state.disposition_keys.restore(
            party,
            "dispositions",
            key,
            body,
            d.at,
            now,
            (200, Bytes::from(answer)),
        ) {
            restored += 1;
        }
    }
    restored
}

/// Puts the quotes that were posted (sold or unsold) or expired back in the book as
/// finished, oldest first, so a repeated `/v1/post` of their `ping_id` gets the first
/// answer again and delivers nothing (within the book's TTL and bound for finished
/// entries). A quote whose post's outcome is unknown, or that was released without a
/// recorded answer, is not restored (its repeat is `404` and delivers nothing). A quote
/// this start closed because its vertical is gone (`vertical_gone`) is answered `unsold`
/// `vertical_removed` now, as every later start answers it from its `quote_released`
/// (it was `404` at this start only: black-box round 33).
pub(super) fn restore_finished(
    state: &AppState,
    sellers: &HashMap<&str, crate::config::SellerKey>,
    scan: &Scan,
    look: &Lookup<'_>,
    names: &HashMap<&str, &str>,
    vertical_gone: &HashMap<&str, UnixMs>,
    now: UnixMs,
) -> u64 {
    let sold = &look.sale_by_ping;
    let unsold = &look.unsold_by_ping;
    let mut done: Vec<(UnixMs, &str, crate::config::SellerKey, Option<PostAnswer>)> = Vec::new();
    for (ping_id, v) in &scan.opened {
        let gone = vertical_gone.get(ping_id.as_str());
        if !scan.closed_pings.contains(ping_id) && gone.is_none() {
            continue;
        }
        let Some(seller) = seller_key_of(state, sellers, text(v, "seller").as_str()) else {
            continue;
        };
        let (at, answer) = if let Some(s) = sold.get(ping_id.as_str()) {
            (s.at, Some(sold_answer(s, names)))
        } else if let Some((lead, reason, sent)) = unsold.get(ping_id.as_str()) {
            (at_of(v), Some(unsold_answer(lead, reason, ping_id, *sent)))
        } else if let Some(at) = scan.expired_pings.get(ping_id) {
            (*at, None)
        } else if let Some(at) = gone {
            let a = refuse_before_delivery(BeforeDelivery::VerticalRemoved, None).answer(ping_id);
            (*at, Some(a))
        } else if let Some((reason, at, changed)) = scan.refused_posts.get(ping_id) {
            // A post refused before delivery, answered by the core's refusal (a mismatch
            // with the `changed_fields` its record keeps; one written before they were
            // kept has none).
            let kind = if reason == release_reason::MISMATCH {
                BeforeDelivery::Mismatch
            } else if reason == release_reason::DUPLICATE {
                BeforeDelivery::Duplicate
            } else if reason == release_reason::SUPPRESSED {
                BeforeDelivery::Suppressed
            } else {
                BeforeDelivery::VerticalRemoved
            };
            let mut a = refuse_before_delivery(kind, None).answer(ping_id);
            a.changed_fields = changed.clone();
            (*at, Some(a))
        } else if let Some(s) = look.unknown_by_ping.get(ping_id.as_str()) {
            // Its delivery was cut off: a repeat gets what a keyed retry gets (the `500`
            // of [`answer_of`]), not `404 unknown ping_id` (black-box round 21).
            let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(OUTCOME_UNKNOWN));
            a.lead_id = Some(s.lead_id.clone());
            a.ping_id = Some(ping_id.clone());
            (s.at, Some(a))
        } else {
            continue;
        };
        done.push((at, ping_id, seller, answer));
    }
    done.sort_by_key(|d| d.0);
    let mut restored = 0;
    for (at, ping_id, seller, answer) in done {
        if state.quotes.restore_done(ping_id, seller, answer, at, now) {
            restored += 1;
        }
    }
    restored
}

/// Open quotes (a `quote_opened` with nothing that ended it) whose `expires_at` passed
/// while the exchange was down: the sweeper never saw them expire. Each one with a hold
/// gets the `quote_expired` record the sweeper would have written (with its `ping_id`, so
/// the next replay finds it ended), and each is put in the quote book as finished and
/// expired, so a post of it is answered `expired` as it would have been before the stop
/// (it was `404 unknown ping_id`). Their holds were never re-reserved. Returns how many
/// with a hold, and how many test leads' quotes (no hold, no record).
pub(super) fn close_expired_while_down(
    state: &AppState,
    sellers: &HashMap<&str, crate::config::SellerKey>,
    scan: &Scan,
    now: UnixMs,
) -> (u64, u64) {
    use crate::core::record::{Head, QuoteHoldRecord, Record};
    let mut ended: Vec<(UnixMs, &str, &Value)> = scan
        .opened
        .iter()
        .filter(|(ping_id, _)| !scan.closed_pings.contains(*ping_id))
        .filter_map(|(ping_id, v)| {
            let at = v.get("expires_at_ms")?.as_i64()?;
            (at <= now).then_some((at, ping_id.as_str(), v))
        })
        .collect();
    ended.sort_by_key(|e| e.0);
    let generation = state.generation();
    let (mut closed, mut test) = (0, 0);
    for (at, ping_id, v) in ended {
        let test_lead =
            v.get("hold").is_none() && v.get("test").and_then(Value::as_bool) == Some(true);
        if let Some(h) = v.get("hold") {
            let hold = (
                h.get("buyer").and_then(Value::as_str),
                h.get("price_micros").and_then(Value::as_i64),
            );
            if let (Some(buyer), Some(price_micros)) = hold {
                let record = Record::QuoteExpired(QuoteHoldRecord {
                    head: Head::new(generation, now),
                    ping_id: Some(ping_id),
                    buyer,
                    price_micros,
                    reason: None,
                    changed_fields: &[],
                    test: false,
                });
                // Not durable (as the sweeper's): lost in a crash, the next start writes
                // it again. A full queue is waited for (it dropped the record unsaid).
                if let Err(e) =
                    state
                        .ledger
                        .write_on_this_thread(&record, RESTORE_WAIT_MS, "the record")
                {
                    tracing::warn!(error = %e, "ledger: a quote_expired for a quote that expired while the exchange was down was not written");
                }
            }
        }
        let Some(seller) = seller_key_of(state, sellers, text(v, "seller").as_str()) else {
            continue;
        };
        if state.quotes.restore_done(ping_id, seller, None, at, now) {
            if test_lead {
                test += 1;
            } else {
                closed += 1;
            }
        }
    }
    (closed, test)
}

/// An open quote, not expired, that [`restore_quote`] could not put back (its seller or
/// vertical is gone, or it no longer fits the configuration): its hold is not
/// re-reserved, so it is closed in the ledger with a `quote_released` (reason
/// `seller_removed`, `vertical_removed` or `not_restored`) and logged. Before, nothing
/// closed it, and a later start whose configuration had its seller and vertical again
/// brought it back with its hold, on a buyer whose cap others had filled meanwhile
/// (found beside black-box round 19's open quotes). `Some` when it was closed (not
/// expired: expired quotes are [`close_expired_while_down`]'s), with the reason.
pub(super) fn close_not_restored(
    state: &AppState,
    cfg: &crate::config::Config,
    ping_id: &str,
    v: &Value,
    now: UnixMs,
) -> Option<&'static str> {
    use crate::core::record::{Head, QuoteHoldRecord, Record};
    if v.get("expires_at_ms")
        .and_then(Value::as_i64)
        .is_none_or(|at| at <= now)
    {
        return None;
    }
    let reason = if !cfg.sellers.iter().any(|s| s.id == text(v, "seller")) {
        "seller_removed"
    } else if cfg.vertical(&text(v, "vertical")).is_none() {
        release_reason::VERTICAL_REMOVED
    } else {
        "not_restored"
    };
    // A quote without a hold (a test lead's) is closed too, with no buyer and no money:
    // without a record a later start brought it back open (black-box round 33: it sold).
    let hold = v
        .get("hold")
        .and_then(|h| Some((h.get("buyer")?.as_str()?, h.get("price_micros")?.as_i64()?)));
    {
        let (buyer, price_micros) = hold.unwrap_or(("", 0));
        let record = Record::QuoteReleased(QuoteHoldRecord {
            head: Head::new(state.generation(), now),
            ping_id: Some(ping_id),
            buyer,
            price_micros,
            reason: Some(reason),
            changed_fields: &[],
            // A test quote (it holds nothing) says so, as its post's refusal would.
            test: hold.is_none() && v.get("test").and_then(Value::as_bool) == Some(true),
        });
        // Not durable: lost in a crash, the next start writes it again. A full queue is
        // waited for (it dropped the record unsaid).
        if let Err(e) = state
            .ledger
            .write_on_this_thread(&record, RESTORE_WAIT_MS, "the record")
        {
            tracing::warn!(error = %e, "ledger: a quote_released for an open quote not restored was not written");
        }
    }
    tracing::warn!(
        ping_id = %ping_id,
        reason,
        "ledger: an open quote was not restored (it no longer fits the configuration): closed with quote_released; its post answers unsold vertical_removed if its vertical is gone, 404 otherwise"
    );
    Some(reason)
}

/// Holds whose `quote_opened` never reached the disk ([`Scan::unopened_holds`]): no
/// start restores their quote (a post of its `ping_id` is `404`) and nothing reserves
/// them again, so each is closed with a `quote_released` (reason
/// [`release_reason::QUOTE_LOST`]), and whoever sums holds from the ledger finds every
/// `quote_reserved` ended (black-box round 220b: it stayed open for ever). Returns how
/// many were closed.
pub(super) fn close_unopened_holds(state: &AppState, scan: &Scan, now: UnixMs) -> u64 {
    use crate::core::record::{Head, QuoteHoldRecord, Record};
    let mut closed = 0;
    // In ping id order, so that one ledger gives the same records at each start.
    let mut holds: Vec<_> = scan.unopened_holds.iter().collect();
    holds.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (ping_id, (buyer, price_micros)) in holds {
        let record = Record::QuoteReleased(QuoteHoldRecord {
            head: Head::new(state.generation(), now),
            ping_id: Some(ping_id),
            buyer,
            price_micros: *price_micros,
            reason: Some(release_reason::QUOTE_LOST),
            changed_fields: &[],
            test: false,
        });
        // Not durable: lost in a crash, the next start writes it again. A full queue is
        // waited for (it dropped the record unsaid).
        if let Err(e) = state
            .ledger
            .write_on_this_thread(&record, RESTORE_WAIT_MS, "the record")
        {
            tracing::warn!(error = %e, "ledger: a quote_released for a hold whose quote was never recorded was not written");
            continue;
        }
        closed += 1;
    }
    closed
}

/// Puts the quote of a `quote_opened` record back in the book, re-reserving its hold;
/// `None` (nothing changed) when it has expired or no longer fits the configuration.
pub(super) fn restore_quote(
    state: &AppState,
    cfg: &crate::config::Config,
    v: &Value,
    now: UnixMs,
) -> Option<()> {
    use crate::core::award::{Bid, Ranked};
    use crate::core::quotes::Quote;
    let expires_at = v.get("expires_at_ms")?.as_i64()?;
    if expires_at <= now {
        return None;
    }
    let seller = cfg.sellers.iter().find(|s| s.id == text(v, "seller"))?;
    let vertical_name = text(v, "vertical");
    let (vertical, vert) = cfg.vertical(&vertical_name)?;
    let mut bytes = serde_json::to_vec(v.get("lead")?).ok()?;
    let value = proto::json::parse_value(&mut bytes).ok()?;
    let lead = vert
        .schema
        .validate(&value, proto::LeadMode::Ping, "lead")
        .ok()?;
    let mut ranked = Vec::new();
    for line in v.get("ranked")?.as_array()? {
        // A bidder no longer configured keeps its place under its id's key, as a reload
        // leaves it: the post finds it removed (`buyer_removed`) and falls back, and a
        // bidder that is not the winner changes nothing. One that cannot be keyed (past
        // the registry's bound) is left out; the quote stays.
        let Some(buyer) = line
            .get("buyer")
            .and_then(Value::as_str)
            .and_then(|id| key_of(state, id))
        else {
            continue;
        };
        ranked.push(Ranked {
            bid: Bid {
                buyer,
                price: Micros(line.get("price_micros")?.as_i64()?),
                bid_id: line.get("bid_id").and_then(Value::as_str).map(String::from),
                expires_in_ms: line.get("expires_in_ms").and_then(Value::as_u64),
                fixed: line.get("fixed").and_then(Value::as_bool).unwrap_or(false),
            },
            seller_price: Micros(line.get("seller_price_micros")?.as_i64()?),
            value: line.get("value").and_then(Value::as_i64).unwrap_or(0),
            p_ppm: line
                .get("p_ppm")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            p_model_ppm: None,
        });
    }
    if ranked.is_empty() {
        return None;
    }
    let reservation = match v.get("hold") {
        None => None,
        Some(h) => {
            let buyer = h.get("buyer")?.as_str()?;
            let key = key_of(state, buyer)?;
            let mut w = windows_of(h)?;
            let price = Micros(h.get("price_micros")?.as_i64()?);
            let until = expires_at.saturating_add(crate::core::auction::DELIVERY_SLACK_MS);
            let zone = cfg
                .buyers
                .iter()
                .find(|b| b.id == buyer)
                .map(|b| b.timezone);
            // Held in windows of a zone the buyer no longer has (its `timezone` changed
            // across the restart): the old windows stay limits until they may end, and
            // the hold is made again in the zone now's windows, from now to the quote's
            // end, where its lead will be delivered (black-box round 36: held only in the
            // old hour, it let the new zone's hour take a second lead past `hourly = 1`).
            let mut former_ends = None;
            if let Some(tz) = zone.filter(|tz| Windows::at(*tz, w.hour_start_ms) != Some(w)) {
                former_ends = w.ends_after(now);
                w = Windows::at(tz, now)?;
            }
            // Held in the windows of the quote's end too, when it runs into the next
            // hour (as `CapBook::reserve_until` held it): its buyer's zone now.
            let later = zone
                .and_then(|tz| Windows::later_until(tz, &w, until))
                .unwrap_or_default();
            let r = state
                .caps
                .restore_reservation_at(key, zone, &w, &later, price, Some(now))?;
            // After the hold: the old windows count it once, whether the hold counted in
            // one already (the buyer's restored sales made it) or not.
            if let Some(ends) = former_ends {
                state.caps.restore_former_hold(&r, ends, now);
            }
            Some(r)
        }
    };
    let quote = Quote {
        ping_id: text(v, "ping_id"),
        auction_id: text(v, "auction_id"),
        seller: seller.key,
        vertical,
        vertical_name,
        lead,
        // Read by the serving schema's names: its ping fields are the quote's now.
        schema: std::sync::Arc::clone(&vert.schema),
        test: v.get("test").and_then(Value::as_bool).unwrap_or(false),
        price: Micros(v.get("price_micros")?.as_i64()?),
        currency: text(v, "currency"),
        expires_at,
        auctioned_at: v
            .get("auctioned_at_ms")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        ranked,
        reservation: reservation.clone(),
        score: v
            .get("score")
            .and_then(Value::as_u64)
            .and_then(|s| u8::try_from(s).ok()),
        dedup: dedup_of(v),
        // Its bids carry no estimate (`p_model_ppm` is not recorded): the guard, which
        // starts empty at every start, counts nothing of it whatever the epoch.
        guard_epoch: 0,
    };
    // Whatever the open-quote limits are now: a firm quote stays firm (`restore`).
    if state.quotes.restore(quote).is_err() {
        if let Some(r) = reservation {
            state.caps.release(&r);
        }
        return None;
    }
    Some(())
}
