//! The answers a retry gets after a restart, rebuilt from the records of the request it
//! repeats.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use proto::error::{ApiError, ErrorCode};
use proto::seller::{NoBidReason, PingAnswer, PingStatus, PostAnswer, PostStatus};
use proto::Micros;
use serde_json::Value;

use super::scan::{text, KeyedPing, Sale, Scan, Sent};

/// The `sold` answer a sale's seller was given.
pub(super) fn sold_answer(s: &Sale, buyer_names: &HashMap<&str, &str>) -> PostAnswer {
    PostAnswer {
        status: PostStatus::Sold,
        lead_id: Some(s.lead_id.clone()),
        ping_id: Some(s.ping_id.clone()),
        price: Some(Micros(s.seller_price_micros)),
        currency: Some(s.currency.clone()),
        // The name the answer gave, as recorded; an older record's from today's
        // configuration.
        buyer: s
            .buyer_name
            .clone()
            .or_else(|| buyer_names.get(s.buyer.as_str()).map(|n| n.to_string())),
        reason: None,
        changed_fields: Vec::new(),
    }
}

/// The answer a keyed ping got, as the seller API wrote it: a `bid` from its
/// `quote_opened`, or a `no_bid` from its auction. `None` for an auction with a winner and
/// no quote (the quote was refused: an error answer, whose key was not kept).
pub(super) fn ping_answer_of(scan: &Scan, p: &KeyedPing) -> Option<PingAnswer> {
    if let Some(q) = scan.opened.get(&p.ping_id) {
        return Some(PingAnswer {
            ping_id: p.ping_id.clone(),
            status: PingStatus::Bid,
            price: Some(Micros(q.get("price_micros")?.as_i64()?)),
            currency: Some(text(q, "currency")),
            expires_at: Some(crate::clock::rfc3339(q.get("expires_at_ms")?.as_i64()?)),
            reason: None,
            score: p.score,
        });
    }
    if p.won {
        return None;
    }
    let reason = p
        .no_bid
        .as_deref()
        .and_then(|r| serde_json::from_value(Value::String(r.to_string())).ok())
        .unwrap_or(NoBidReason::NoBids);
    Some(PingAnswer {
        ping_id: p.ping_id.clone(),
        status: PingStatus::NoBid,
        price: None,
        currency: None,
        expires_at: None,
        reason: Some(reason),
        score: p.score,
    })
}

/// Lookups over a [`Scan`] by ping and lead id, built once: recovery answers each key
/// and finished post from them, so a start stays linear in the ledger (a search of the
/// scan per key was quadratic: 100,000 keys over 1,000,000 deliveries).
pub(super) struct Lookup<'s> {
    /// Ping ids with a delivery (`post_sent`).
    pub(super) sent_pings: HashSet<&'s str>,
    /// Deliveries with no outcome, by ping id.
    pub(super) unknown_by_ping: HashMap<&'s str, &'s Sent>,
    /// `unsold` records by ping id: (lead id, reason, deliveries).
    pub(super) unsold_by_ping: HashMap<&'s str, (&'s str, &'s str, u64)>,
    /// The last sale of each lead.
    pub(super) sale_by_lead: HashMap<&'s str, &'s Sale>,
    /// The last sale of each ping.
    pub(super) sale_by_ping: HashMap<&'s str, &'s Sale>,
}

impl<'s> Lookup<'s> {
    pub(super) fn of(scan: &'s Scan) -> Lookup<'s> {
        Lookup {
            sent_pings: scan.sent.iter().map(|s| s.ping_id.as_str()).collect(),
            unknown_by_ping: scan.unknown().map(|s| (s.ping_id.as_str(), s)).collect(),
            unsold_by_ping: scan
                .unsold
                .iter()
                .map(|(lead, (reason, ping, sent))| {
                    (ping.as_str(), (lead.as_str(), reason.as_str(), *sent))
                })
                .collect(),
            sale_by_lead: scan.sales.iter().map(|s| (s.lead_id.as_str(), s)).collect(),
            sale_by_ping: scan.sales.iter().map(|s| (s.ping_id.as_str(), s)).collect(),
        }
    }
}

/// The answer a keyed direct post got when no lead of it went out to a buyer: `unsold`
/// with its no-bid reason, or, with a winner, its `unsold` record's (every candidate
/// expired or capped). `None` when a lead went out (its `post_sent` names the key and
/// [`answer_of`] rebuilds it) or the post ended in an error (whose key was not kept).
pub(super) fn direct_answer_of(look: &Lookup<'_>, p: &KeyedPing) -> Option<PostAnswer> {
    if !p.won {
        let no_bid = p.no_bid.as_deref().unwrap_or(NoBidReason::NoBids.as_str());
        let mut a = if no_bid == NoBidReason::Duplicate.as_str() {
            crate::server::direct_no_bid_answer(NoBidReason::Duplicate)
        } else if no_bid == NoBidReason::Suppressed.as_str() {
            crate::server::direct_no_bid_answer(NoBidReason::Suppressed)
        } else {
            PostAnswer::status_only(PostStatus::Unsold, Some(no_bid))
        };
        a.ping_id = Some(p.ping_id.clone());
        return Some(a);
    }
    if look.sent_pings.contains(p.ping_id.as_str()) {
        return None;
    }
    look.unsold_by_ping
        .get(p.ping_id.as_str())
        .map(|(lead, reason, sent)| unsold_answer(lead, reason, &p.ping_id, *sent))
}

/// The `unsold` answer of a post that did not sell, as it was given: its lead id only if
/// the lead went out to a buyer (`deliveries`, the record's `attempts`).
pub(super) fn unsold_answer(
    lead_id: &str,
    reason: &str,
    ping_id: &str,
    deliveries: u64,
) -> PostAnswer {
    let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(reason));
    if deliveries > 0 {
        a.lead_id = Some(lead_id.to_string());
    }
    a.ping_id = Some(ping_id.to_string());
    a
}

/// The reason a restored finished post carries when its delivery was cut off by the
/// stop: never sent to a seller as such; a repeat of that post is answered
/// [`outcome_unknown`] instead.
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// The answer to a post whose outcome could not be recorded: the live answer when the
/// ledger failed during its delivery (whether or not a buyer accepted), and the answer
/// to its keyed retry or repeat after a restart, or to one whose delivery a stop cut off.
/// `500`, nothing is delivered again, and the words are the same in every case, so a
/// keyed retry gets the first answer byte for byte across a restart (black-box round
/// 110a: an accepted lead whose sale could not be recorded was answered in other words
/// before the restart than after it).
pub fn outcome_unknown() -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        "the exchange stopped (or its ledger failed) while this post was being delivered, \
         so its outcome is unknown: a buyer may have the lead and may have accepted it, \
         but no sale is recorded (the seller is not paid for it through the exchange) and \
         it is not delivered again; the exchange's operator settles it with the buyer",
    )
}

/// The stored answer of a post whose key the ledger names.
pub(super) fn answer_of(
    scan: &Scan,
    look: &Lookup<'_>,
    lead_id: &str,
    buyer_names: &HashMap<&str, &str>,
) -> (u16, Bytes) {
    if let Some(s) = look.sale_by_lead.get(lead_id) {
        let a = sold_answer(s, buyer_names);
        return (200, Bytes::from(serde_json::to_vec(&a).unwrap_or_default()));
    }
    if let Some((reason, ping_id, sent)) = scan.unsold.get(lead_id) {
        let a = unsold_answer(lead_id, reason, ping_id, *sent);
        return (200, Bytes::from(serde_json::to_vec(&a).unwrap_or_default()));
    }
    let e = outcome_unknown();
    (e.status(), Bytes::from(e.to_json()))
}
