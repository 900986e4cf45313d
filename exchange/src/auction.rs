//! The async driver of one auction and one post: it asks the core who is eligible, pings
//! them in parallel under one deadline, hands the bids to the core to rank, reserves the
//! winner's cap, and on post delivers down the ranked bids. Every decision is the core's;
//! this module only moves bytes and keeps time.
//!
//! Deadline rule (PERFORMANCE.md): one deadline taken when the request arrived; each buyer
//! call is bounded by `min(deadline - response reserve, start + buyer timeout)`; we stop
//! waiting as soon as every buyer answered or passed its bound. Answers after a buyer's
//! bound are counted as late and never used. Requests still running are left to finish
//! in a background drain (bounded), so an HTTP/1.1 connection is not thrown away for
//! being late.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use proto::buyer::{BidOutcome, BuyerPing, BuyerPost, PostOutcome};
use proto::seller::{NoBidReason, PingRequest, PostAnswer, PostStatus};
use proto::{Lead, Micros};
use serde::Serialize;
use tokio::time::Instant;

use crate::buyers::{BuyerClient, PingResult, PostResult};
use crate::clock::rfc3339;
use crate::config::{BuyerIdx, SellerIdx, VerticalIdx};
use crate::core::award::{self, Bid, Ranked};
use crate::core::breaker::Admit;
use crate::core::caps::Reservation;
use crate::core::eligibility;
use crate::core::UnixMs;
use crate::metrics::{PingOutcome, PostOutcomeKind};
use crate::state::{AppState, Runtime};

/// How long a late answer is still waited for in the background before the request is
/// dropped, as a multiple of the buyer's ping timeout.
pub const LATE_DRAIN_TIMEOUTS: u32 = 2;

/// What an auction decided.
#[derive(Debug)]
pub struct AuctionResult {
    pub auction_id: String,
    pub ping_id: String,
    pub score: Option<u8>,
    /// Winner first (with `reservation` taken), then every other bid in rank order.
    pub ranked: Vec<Ranked>,
    pub reservation: Option<Reservation>,
    pub no_bid: Option<NoBidReason>,
    /// When the auction started (wall clock), for bid expiry.
    pub started_ms: UnixMs,
}

/// One buyer's line in the auction record.
#[derive(Debug, Serialize)]
struct BuyerLine<'a> {
    buyer: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bid_micros: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    took_us: Option<u64>,
}

#[derive(Debug, Serialize)]
struct AuctionRecord<'a> {
    r#type: &'static str,
    at: String,
    auction_id: &'a str,
    ping_id: &'a str,
    seller: &'a str,
    vertical: &'a str,
    test: bool,
    direct: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<u8>,
    reserve_micros: i64,
    buyers: Vec<BuyerLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    winner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bid_micros: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seller_price_micros: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_bid: Option<&'static str>,
    took_us: u64,
}

enum Slot {
    Waiting { deadline: Instant },
    Done,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// A buyer ping serialized once, split around its `tmax_ms` value: the only field that
/// differs between the buyers of one auction.
#[derive(Debug)]
struct PingTemplate {
    json: Vec<u8>,
    /// Where the placeholder `0` of `"tmax_ms":0` sits in `json`.
    tmax_at: Option<usize>,
}

impl PingTemplate {
    const KEY: &'static [u8] = b"\"tmax_ms\":0";

    fn new(msg: &BuyerPing<'_>) -> PingTemplate {
        let json = serde_json::to_vec(msg).unwrap_or_default();
        // Keys are never inside string values unescaped, so the last match is the field.
        let tmax_at = json
            .windows(Self::KEY.len())
            .rposition(|w| w == Self::KEY)
            .map(|i| i + Self::KEY.len() - 1);
        PingTemplate { json, tmax_at }
    }

    /// The body with `tmax_ms` set; `None` if the message could not be serialized.
    fn body(&self, tmax_ms: u64) -> Option<Vec<u8>> {
        let at = self.tmax_at?;
        let mut out = Vec::with_capacity(self.json.len() + 8);
        out.extend_from_slice(&self.json[..at]);
        let _ = write!(out, "{tmax_ms}");
        out.extend_from_slice(&self.json[at + 1..]);
        Some(out)
    }
}

/// One auction's inputs.
#[derive(Debug, Clone, Copy)]
pub struct AuctionInput<'a> {
    pub seller: SellerIdx,
    pub vertical: VerticalIdx,
    pub req: &'a PingRequest,
    /// What buyers may see: the PII-free projection.
    pub lead: &'a Lead,
    /// When the request arrived: the auction deadline counts from here.
    pub arrival: Instant,
    /// A direct post (`/v1/leads`) rather than a ping.
    pub direct: bool,
}

/// Runs one auction for a validated request. `lead` is what buyers may see (the PII-free
/// projection, which for a ping is the whole ping lead).
pub async fn run_auction(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    input: AuctionInput<'_>,
) -> AuctionResult {
    let AuctionInput {
        seller: seller_idx,
        vertical: vertical_idx,
        req,
        lead,
        arrival,
        direct,
    } = input;
    let cfg = &rt.config;
    let vertical = &cfg.verticals[vertical_idx];
    let seller = &cfg.sellers[seller_idx];
    let started_ms = state.clock.unix_ms_of(arrival);
    let auction_id = new_id("au_");
    let ping_id = new_id("pg_");
    let score = state.scorer.score(vertical, lead);
    let now_ms = state.clock.now_ms();
    let elig = eligibility::select(cfg, vertical_idx, lead, score, now_ms, &state.caps);

    let mut lines: Vec<BuyerLine<'_>> =
        Vec::with_capacity(elig.ping.len() + elig.skipped.len() + elig.fixed.len());
    for (b, why) in &elig.skipped {
        rt.buyer_metrics[*b].ping(PingOutcome::SkippedFilter);
        lines.push(BuyerLine {
            buyer: &cfg.buyers[*b].id,
            outcome: "skipped",
            bid_micros: None,
            detail: Some(why.as_str()),
            took_us: None,
        });
    }
    let all_capped = !elig.skipped.is_empty()
        && elig
            .skipped
            .iter()
            .all(|(_, w)| *w == eligibility::SkipReason::Capped)
        && elig.ping.is_empty()
        && elig.fixed.is_empty();

    // Breakers and the fan-out limit.
    let mut to_ping: Vec<BuyerIdx> = Vec::with_capacity(elig.ping.len());
    for &b in &elig.ping {
        if to_ping.len() >= cfg.server.buyers_per_auction_max {
            rt.buyer_metrics[b].ping(PingOutcome::SkippedFanout);
            lines.push(BuyerLine {
                buyer: &cfg.buyers[b].id,
                outcome: "skipped",
                bid_micros: None,
                detail: Some("fanout_limit"),
                took_us: None,
            });
            continue;
        }
        match state.breakers.admit(b, now_ms) {
            Admit::Yes | Admit::Probe => to_ping.push(b),
            Admit::No => {
                rt.buyer_metrics[b].ping(PingOutcome::SkippedBreaker);
                lines.push(BuyerLine {
                    buyer: &cfg.buyers[b].id,
                    outcome: "skipped",
                    bid_micros: None,
                    detail: Some("breaker_open"),
                    took_us: None,
                });
            }
        }
    }

    let deadline = arrival + Duration::from_millis(vertical.auction_deadline_ms);
    let collect_until = deadline
        .checked_sub(Duration::from_millis(cfg.server.response_reserve_ms))
        .unwrap_or(arrival);
    let schema = &vertical.schema;
    let now = Instant::now();
    let now_s = state.clock.now_ms() / 1000;
    let mut bids: Vec<Bid> = Vec::with_capacity(to_ping.len() + elig.fixed.len());
    let mut slots: Vec<(BuyerIdx, Slot)> = Vec::with_capacity(to_ping.len());
    let mut futs = FuturesUnordered::new();
    let client = BuyerClient::local_for(&state.buyer_tls.load_full());
    // The lead is serialized once per auction; each buyer's body differs only in tmax_ms.
    let ping_template = PingTemplate::new(&BuyerPing {
        auction_id: &auction_id,
        vertical: &vertical.name,
        lead: lead.json(schema),
        score,
        tmax_ms: 0,
        test: req.test,
    });
    for &b in &to_ping {
        let buyer = &cfg.buyers[b];
        let bound = collect_until.min(now + Duration::from_millis(buyer.ping_timeout_ms));
        let tmax_ms = bound.saturating_duration_since(now).as_millis() as u64;
        let slot = slots.len();
        if tmax_ms == 0 {
            rt.buyer_metrics[b].ping(PingOutcome::Timeout);
            lines.push(BuyerLine {
                buyer: &buyer.id,
                outcome: "timeout",
                bid_micros: None,
                detail: Some("no_time_left"),
                took_us: None,
            });
            continue;
        }
        let Some(body) = ping_template.body(tmax_ms) else {
            continue;
        };
        slots.push((b, Slot::Waiting { deadline: bound }));
        let client = client.clone();
        let rt2 = rt.clone();
        let msg_id = format!("{auction_id}.{b}");
        futs.push(async move {
            let t0 = Instant::now();
            let buyer = &rt2.config.buyers[b];
            let url = buyer.ping_url.as_deref().unwrap_or_default();
            let r = client
                .ping(
                    url,
                    buyer.http,
                    &buyer.secret,
                    &msg_id,
                    now_s,
                    Bytes::from(body),
                )
                .await;
            (slot, r, t0.elapsed())
        });
    }

    let mut waiting = slots.len();
    let mut results: Vec<Option<(PingResult, Duration)>> = (0..slots.len()).map(|_| None).collect();
    while waiting > 0 {
        let next_deadline = slots
            .iter()
            .filter_map(|(_, s)| match s {
                Slot::Waiting { deadline } => Some(*deadline),
                Slot::Done => None,
            })
            .min()
            .unwrap_or(collect_until);
        tokio::select! {
            biased;
            Some((slot, r, took)) = futs.next() => {
                if let Slot::Waiting { .. } = slots[slot].1 {
                    slots[slot].1 = Slot::Done;
                    waiting -= 1;
                    results[slot] = Some((r, took));
                } else {
                    rt.buyer_metrics[slots[slot].0].late_answers.inc();
                }
            }
            _ = tokio::time::sleep_until(next_deadline) => {
                let t = Instant::now();
                for (_, s) in slots.iter_mut() {
                    if let Slot::Waiting { deadline } = s {
                        if *deadline <= t {
                            *s = Slot::Done;
                            waiting -= 1;
                        }
                    }
                }
            }
        }
    }
    if !futs.is_empty() {
        // Late answers: count them, never use them; bounded in time.
        let drain_for = to_ping
            .iter()
            .map(|b| cfg.buyers[*b].ping_timeout_ms)
            .max()
            .unwrap_or(0)
            .saturating_mul(u64::from(LATE_DRAIN_TIMEOUTS));
        let rt2 = rt.clone();
        let owners: Vec<BuyerIdx> = slots.iter().map(|(b, _)| *b).collect();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_millis(drain_for), async {
                while let Some((slot, _, _)) = futs.next().await {
                    if let Some(b) = owners.get(slot) {
                        rt2.buyer_metrics[*b].late_answers.inc();
                    }
                }
            })
            .await;
        });
    }

    let answer_ms = state.clock.now_ms();
    for (i, (b, _)) in slots.iter().enumerate() {
        let b = *b;
        let buyer = &cfg.buyers[b];
        let m = &rt.buyer_metrics[b];
        let (outcome, ok, bid_micros, detail, took_us) = match &results[i] {
            None => (PingOutcome::Timeout, false, None, None, None),
            Some((r, took)) => {
                let took_us = Some(took.as_micros() as u64);
                m.ping_latency.observe(took.as_secs_f64());
                match r {
                    PingResult::Answer(BidOutcome::Bid {
                        price,
                        bid_id,
                        expires_in_ms,
                    }) => {
                        bids.push(Bid {
                            buyer: b,
                            price: *price,
                            bid_id: bid_id.clone(),
                            expires_in_ms: *expires_in_ms,
                            fixed: false,
                        });
                        (PingOutcome::Bid, true, Some(price.0), None, took_us)
                    }
                    PingResult::Answer(BidOutcome::NoBid { .. }) => {
                        (PingOutcome::NoBid, true, None, None, took_us)
                    }
                    PingResult::Answer(BidOutcome::Invalid(why)) => {
                        (PingOutcome::Invalid, false, None, Some(*why), took_us)
                    }
                    PingResult::Failed(_) => (PingOutcome::Error, false, None, None, took_us),
                }
            }
        };
        m.ping(outcome);
        state.breakers.record(b, ok, answer_ms);
        lines.push(BuyerLine {
            buyer: &buyer.id,
            outcome: outcome.as_str(),
            bid_micros,
            detail,
            took_us,
        });
    }
    for &b in &elig.fixed {
        if let Some(price) = cfg.buyers[b].fixed_price {
            bids.push(Bid {
                buyer: b,
                price,
                bid_id: None,
                expires_in_ms: None,
                fixed: true,
            });
            lines.push(BuyerLine {
                buyer: &cfg.buyers[b].id,
                outcome: "fixed_price",
                bid_micros: Some(price.0),
                detail: None,
                took_us: None,
            });
        }
    }

    let reserve = award::reserve_price(req.min_price, seller.reserve, vertical.floor);
    let any_bid = !bids.is_empty();
    let ranking = award::rank(bids, seller.payout, reserve, state.ranker.as_ref(), score);
    let mut reservation = None;
    let mut winner_pos = None;
    for (i, r) in ranking.ranked.iter().enumerate() {
        if req.test {
            winner_pos = Some(i);
            break;
        }
        match state.caps.reserve(
            r.bid.buyer,
            &cfg.buyers[r.bid.buyer],
            r.bid.price,
            answer_ms,
        ) {
            Ok(res) => {
                reservation = Some(res);
                winner_pos = Some(i);
                break;
            }
            Err(_) => {
                lines.push(BuyerLine {
                    buyer: &cfg.buyers[r.bid.buyer].id,
                    outcome: "capped_at_award",
                    bid_micros: Some(r.bid.price.0),
                    detail: None,
                    took_us: None,
                });
            }
        }
    }
    let no_bid = match winner_pos {
        Some(_) => None,
        None if !ranking.ranked.is_empty() => Some(NoBidReason::Capped),
        None if ranking.below_reserve > 0 => Some(NoBidReason::BelowReserve),
        None if any_bid => Some(NoBidReason::NoBids),
        None if all_capped => Some(NoBidReason::Capped),
        None if to_ping.is_empty()
            && elig.fixed.is_empty()
            && lines.iter().all(|l| l.outcome == "skipped") =>
        {
            Some(NoBidReason::NoEligibleBuyers)
        }
        None => Some(NoBidReason::NoBids),
    };
    let ranked: Vec<Ranked> = match winner_pos {
        Some(p) => ranking.ranked.into_iter().skip(p).collect(),
        None => Vec::new(),
    };
    let winner = ranked.first();
    let record = AuctionRecord {
        r#type: "auction",
        at: rfc3339(answer_ms),
        auction_id: &auction_id,
        ping_id: &ping_id,
        seller: &seller.id,
        vertical: &vertical.name,
        test: req.test,
        direct,
        score,
        reserve_micros: reserve.0,
        buyers: lines,
        winner: winner.map(|w| cfg.buyers[w.bid.buyer].id.as_str()),
        bid_micros: winner.map(|w| w.bid.price.0),
        seller_price_micros: winner.map(|w| w.seller_price.0),
        no_bid: no_bid.map(|r| r.as_str()),
        took_us: arrival.elapsed().as_micros() as u64,
    };
    if let Err(e) = state.ledger.append(&record).await {
        tracing::error!(error = %e, "ledger append failed for an auction record");
    }
    state
        .metrics
        .count_auction(no_bid.map(|r| r.as_str()).unwrap_or("bid"));
    AuctionResult {
        auction_id,
        ping_id,
        score,
        ranked,
        reservation,
        no_bid,
        started_ms,
    }
}

/// Everything a delivery needs.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub auction_id: &'a str,
    pub ping_id: &'a str,
    pub seller: SellerIdx,
    pub vertical: VerticalIdx,
    /// The full lead (with PII): only ever sent to the buyer being posted to.
    pub lead: &'a Lead,
    pub consent: &'a std::collections::BTreeMap<String, String>,
    pub test: bool,
    /// The seller price already quoted.
    pub quoted: Micros,
    pub ranked: Vec<Ranked>,
    pub reservation: Option<Reservation>,
    pub auction_started_ms: UnixMs,
}

#[derive(Debug, Serialize)]
struct SaleRecord<'a> {
    r#type: &'static str,
    at: String,
    lead_id: &'a str,
    ping_id: &'a str,
    auction_id: &'a str,
    seller: &'a str,
    buyer: &'a str,
    vertical: &'a str,
    currency: &'a str,
    test: bool,
    bid_micros: i64,
    seller_price_micros: i64,
    margin_micros: i64,
    attempt: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    buyer_lead_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct AttemptRecord<'a> {
    r#type: &'static str,
    at: String,
    lead_id: &'a str,
    auction_id: &'a str,
    buyer: &'a str,
    attempt: usize,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct UnsoldRecord<'a> {
    r#type: &'static str,
    at: String,
    lead_id: &'a str,
    ping_id: &'a str,
    auction_id: &'a str,
    seller: &'a str,
    reason: &'a str,
    attempts: usize,
}

/// Why a delivery could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The buyer accepted but the sale could not be recorded: never answer `sold`.
    #[error("the sale could not be recorded: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// Delivers the full lead down the ranked bids: the winner first (its cap already
/// reserved), then each fallback whose bid still covers the quoted price, reserving its
/// cap first. `sold` is returned only after the sale record is on disk.
pub async fn deliver(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    d: Delivery<'_>,
) -> Result<PostAnswer, DeliveryError> {
    let cfg = &rt.config;
    let vertical = &cfg.verticals[d.vertical];
    let seller = &cfg.sellers[d.seller];
    let lead_id = new_id("ld_");
    let mut reservation = d.reservation;
    let mut attempts = 0usize;
    let Some(winner) = d.ranked.first() else {
        let answer = unsold(&lead_id, d.ping_id, "no_bids");
        return Ok(answer);
    };
    let fallbacks = award::fallback_order(&d.ranked, d.quoted);
    let candidates = std::iter::once(winner)
        .chain(fallbacks)
        .take(cfg.server.post_attempts_max);
    for (i, r) in candidates.enumerate() {
        let b = r.bid.buyer;
        let buyer = &cfg.buyers[b];
        let m = &rt.buyer_metrics[b];
        let now_ms = state.clock.now_ms();
        if i > 0 {
            if let Some(exp) = r.bid.expires_in_ms {
                if d.auction_started_ms.saturating_add(exp as i64) < now_ms {
                    log_attempt(
                        state,
                        &lead_id,
                        d.auction_id,
                        &buyer.id,
                        i,
                        "bid_expired",
                        None,
                    )
                    .await;
                    continue;
                }
            }
            if !d.test {
                match state.caps.reserve(b, buyer, r.bid.price, now_ms) {
                    Ok(res) => reservation = Some(res),
                    Err(_) => {
                        m.post(PostOutcomeKind::Capped);
                        log_attempt(state, &lead_id, d.auction_id, &buyer.id, i, "capped", None)
                            .await;
                        continue;
                    }
                }
            }
        }
        attempts += 1;
        let msg = BuyerPost {
            auction_id: d.auction_id,
            bid_id: r.bid.bid_id.as_deref(),
            price: r.bid.price,
            vertical: &vertical.name,
            lead: d.lead.json(&vertical.schema),
            consent: d.consent,
            test: d.test,
        };
        let body = match serde_json::to_vec(&msg) {
            Ok(b) => Bytes::from(b),
            Err(_) => continue,
        };
        let msg_id = format!("{}.post.{b}", d.auction_id);
        let client = BuyerClient::local_for(&state.buyer_tls.load_full());
        let call = client.post(
            &buyer.post_url,
            buyer.http,
            &buyer.secret,
            &msg_id,
            now_ms / 1000,
            body,
        );
        let result = tokio::time::timeout(Duration::from_millis(buyer.post_timeout_ms), call).await;
        let (kind, reason, buyer_lead_id) = match result {
            Err(_) => (PostOutcomeKind::Timeout, None, None),
            Ok(PostResult::Failed(_)) => (PostOutcomeKind::Error, None, None),
            Ok(PostResult::Answer(PostOutcome::Accepted { buyer_lead_id })) => {
                (PostOutcomeKind::Accepted, None, buyer_lead_id)
            }
            Ok(PostResult::Answer(PostOutcome::Rejected { reason })) => {
                (PostOutcomeKind::Rejected, reason, None)
            }
            Ok(PostResult::Answer(PostOutcome::Invalid(why))) => {
                (PostOutcomeKind::Invalid, Some(why.to_string()), None)
            }
        };
        m.post(kind);
        if kind != PostOutcomeKind::Accepted {
            if let Some(res) = reservation.take() {
                state.caps.release(&res);
            }
            log_attempt(
                state,
                &lead_id,
                d.auction_id,
                &buyer.id,
                i,
                kind.as_str(),
                reason.as_deref(),
            )
            .await;
            continue;
        }
        if let Some(res) = reservation.take() {
            state.caps.commit(&res);
        }
        let sale = SaleRecord {
            r#type: "sale",
            at: rfc3339(state.clock.now_ms()),
            lead_id: &lead_id,
            ping_id: d.ping_id,
            auction_id: d.auction_id,
            seller: &seller.id,
            buyer: &buyer.id,
            vertical: &vertical.name,
            currency: &vertical.currency,
            test: d.test,
            bid_micros: r.bid.price.0,
            seller_price_micros: d.quoted.0,
            margin_micros: r.bid.price.0 - d.quoted.0,
            attempt: i,
            buyer_lead_id: buyer_lead_id.as_deref(),
        };
        state.ledger.append_durable(&sale).await?;
        return Ok(PostAnswer {
            status: PostStatus::Sold,
            lead_id: Some(lead_id),
            ping_id: Some(d.ping_id.to_string()),
            price: Some(d.quoted),
            currency: Some(vertical.currency.clone()),
            buyer: Some(buyer.name.clone()),
            reason: None,
            changed_fields: Vec::new(),
        });
    }
    if let Some(res) = reservation.take() {
        state.caps.release(&res);
    }
    let reason = if attempts == 0 {
        "no_buyer_available"
    } else {
        "all_buyers_rejected"
    };
    let record = UnsoldRecord {
        r#type: "unsold",
        at: rfc3339(state.clock.now_ms()),
        lead_id: &lead_id,
        ping_id: d.ping_id,
        auction_id: d.auction_id,
        seller: &seller.id,
        reason,
        attempts,
    };
    state.ledger.append_durable(&record).await?;
    Ok(unsold(&lead_id, d.ping_id, reason))
}

fn unsold(lead_id: &str, ping_id: &str, reason: &str) -> PostAnswer {
    let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(reason));
    a.lead_id = Some(lead_id.to_string());
    a.ping_id = Some(ping_id.to_string());
    a
}

async fn log_attempt(
    state: &AppState,
    lead_id: &str,
    auction_id: &str,
    buyer: &str,
    attempt: usize,
    outcome: &'static str,
    reason: Option<&str>,
) {
    let rec = AttemptRecord {
        r#type: "post_attempt",
        at: rfc3339(state.clock.now_ms()),
        lead_id,
        auction_id,
        buyer,
        attempt,
        outcome,
        reason,
    };
    if let Err(e) = state.ledger.append(&rec).await {
        tracing::error!(error = %e, "ledger append failed for a post attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::schema::{FieldKind, FieldSpec, LeadMode, VerticalSchema};

    #[test]
    fn the_ping_template_is_the_serialized_ping_for_every_tmax() {
        let schema = VerticalSchema {
            fields: vec![FieldSpec {
                name: "note".into(),
                kind: FieldKind::String {
                    len_max: 64,
                    pattern: None,
                },
                required: true,
                ping: true,
                pii: false,
            }],
        };
        // A lead value that spells the key itself must not fool the template.
        let mut raw = br#"{"note":"\"tmax_ms\":0, tricky"}"#.to_vec();
        let value = simd_json::to_owned_value(&mut raw).unwrap();
        let lead = schema.validate(&value, LeadMode::Ping, "lead").unwrap();
        let msg = |tmax_ms| BuyerPing {
            auction_id: "au_1",
            vertical: "v",
            lead: lead.json(&schema),
            score: Some(7),
            tmax_ms,
            test: true,
        };
        let template = PingTemplate::new(&msg(0));
        for tmax in [0, 1, 9, 10, 149, 60_000] {
            assert_eq!(
                template.body(tmax).unwrap(),
                serde_json::to_vec(&msg(tmax)).unwrap()
            );
        }
    }
}
