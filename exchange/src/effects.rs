//! The one place the shell carries out the core's effects: cap settlement (through the
//! core's [`Settlement`]), breakers, ledger records and metrics. It decides nothing: it
//! does what each [`Effect`] says, in order.
//!
//! Architecture invariant: the shell reaches the cap book, the breaker book and the
//! ledger on behalf of an auction or a post only through this module (and the core's
//! [`Settlement`], which owns every call into the books), so a change of their keys or
//! their store is made in one spot.

use crate::config::BuyerKey;
use crate::core::breaker::Admit;
use crate::core::effect::{Effect, PostKind};
use crate::core::record::LedgerSink;
use crate::core::record::{BuyerOutcome, Record};
use crate::core::settlement::{BuyerHealth, Settlement};
use crate::core::UnixMs;
use crate::ledger::{LedgerError, Receipt};
use crate::metrics::{PingOutcome, PostOutcomeKind};
use crate::state::{AppState, Runtime};

/// The settlement of reservations over the exchange's cap book.
pub fn settlement(state: &AppState) -> Settlement<'_> {
    Settlement::new(&state.caps)
}

/// The breakers and each buyer's pings in flight, as the core sees them.
pub(crate) fn health(state: &AppState) -> Health<'_> {
    Health(state)
}

/// [`BuyerHealth`] over the shell's state: admission by the breakers, and each buyer's
/// places for pings in flight (`buyers.ID.pings_in_flight_max`), by stable key.
pub(crate) struct Health<'a>(&'a AppState);

impl BuyerHealth for Health<'_> {
    fn admit(&self, key: BuyerKey, now: UnixMs) -> Admit {
        self.0.breakers.admit(key, now)
    }
    fn record(&self, key: BuyerKey, ok: bool, now: UnixMs) {
        self.0.breakers.record(key, ok, now);
    }
    /// Every buyer's pings are counted, limited or not, so that a reload that sets a
    /// limit finds the pings already in flight (black-box round 163a: counted only under
    /// a limit, a limit added mid-burst let the burst and as many more through). The
    /// shell adopts the place for the call (`LateCalls::adopt`).
    fn take_ping_place(&self, key: BuyerKey, max: Option<u32>) -> bool {
        self.0.pings_in_flight.take(key, max.unwrap_or(u32::MAX))
    }
    fn give_back_ping_place(&self, key: BuyerKey) {
        self.0.pings_in_flight.give_back(key);
    }
}

/// The metric label of a buyer's ping outcome. `breaker` is what the breaker learns: a
/// timeout it learns nothing from is a buyer never pinged for want of time (the core's
/// `no_time_left`, the seller's request was late), counted apart from buyer timeouts.
fn ping_label(o: BuyerOutcome, breaker: Option<bool>) -> Option<PingOutcome> {
    Some(match o {
        BuyerOutcome::SkippedBreaker => PingOutcome::SkippedBreaker,
        BuyerOutcome::SkippedBusy => PingOutcome::SkippedBusy,
        BuyerOutcome::Timeout if breaker.is_none() => PingOutcome::NoTimeLeft,
        BuyerOutcome::Timeout => PingOutcome::Timeout,
        BuyerOutcome::Bid => PingOutcome::Bid,
        BuyerOutcome::NoBid => PingOutcome::NoBid,
        BuyerOutcome::BidAboveMax => PingOutcome::BidAboveMax,
        BuyerOutcome::BidExpired => PingOutcome::BidExpired,
        BuyerOutcome::Invalid => PingOutcome::Invalid,
        BuyerOutcome::Error => PingOutcome::Error,
        BuyerOutcome::FixedPrice | BuyerOutcome::CappedAtAward => return None,
    })
}

fn post_label(o: PostKind) -> PostOutcomeKind {
    match o {
        PostKind::Accepted => PostOutcomeKind::Accepted,
        PostKind::Rejected => PostOutcomeKind::Rejected,
        PostKind::Timeout => PostOutcomeKind::Timeout,
        PostKind::Error => PostOutcomeKind::Error,
        PostKind::Invalid => PostOutcomeKind::Invalid,
        PostKind::Capped => PostOutcomeKind::Capped,
        PostKind::Busy => PostOutcomeKind::Busy,
    }
}

/// Carries out `effects` in order. A record that must be durable and could not be
/// written is an error (returned after every other effect was carried out, so nothing
/// is left unsettled); any other record that fails is logged.
pub async fn execute<'a>(
    state: &AppState,
    rt: &Runtime,
    effects: impl Iterator<Item = Effect<'a>>,
) -> Result<(), LedgerError> {
    let settlement = settlement(state);
    let now = state.clock.now_ms();
    let mut result = Ok(());
    for effect in effects {
        match effect {
            Effect::Cap(op) => {
                settlement.settle(&op);
            }
            Effect::Record(rec) => {
                let written = state.ledger.write(&rec).await;
                if let (Ok(()), Record::Sale(sale)) = (&written, &rec) {
                    // Every recorded sale (winner or fallback) can get dispositions.
                    remember_sale(state, sale);
                }
                if let Err(e) = written {
                    if rec.is_durable() {
                        if result.is_ok() {
                            result = Err(e);
                        }
                    } else {
                        tracing::error!(error = %e, kind = rec.kind(), "ledger append failed");
                    }
                }
            }
            Effect::Ping {
                buyer,
                outcome,
                took_us,
                breaker,
            } => {
                if let Some(m) = rt.buyer_metrics(&state.metrics, buyer) {
                    if let Some(label) = ping_label(outcome, breaker) {
                        m.ping(label);
                    }
                    // Answers received in time only: a call that failed (refused, reset)
                    // got no answer, and its few microseconds would make a buyer that is
                    // down look like the fastest (black-box round 13).
                    if let (Some(us), false) = (took_us, outcome == BuyerOutcome::Error) {
                        m.ping_latency.observe(us as f64 / 1e6);
                    }
                }
                if let (Some(ok), Some(b)) = (breaker, rt.config.buyers.get(buyer)) {
                    health(state).record(b.key, ok, now);
                }
                if let (Some(us), Some(b)) = (took_us, rt.config.buyers.get(buyer)) {
                    state.stats.on_response(b.key, us);
                }
            }
            Effect::Skipped { counts } => state.metrics.count_skips(&counts),
            Effect::FanoutLimited { count } => state.metrics.count_fanout_limited(count),
            Effect::DeadlineOverrun { .. } => state.metrics.deadline_overruns.inc(),
            Effect::LateAnswer { buyer } => late_answer(state, rt, buyer),
            Effect::CappedAtAward { buyer } => {
                if let Some(m) = rt.buyer_metrics(&state.metrics, buyer) {
                    m.capped_at_award.inc();
                }
            }
            Effect::Post {
                buyer,
                outcome,
                p_model_ppm,
                teaches,
                at,
                lead_id,
                guard_epoch,
            } => {
                if let Some(m) = rt.buyer_metrics(&state.metrics, buyer) {
                    m.post(post_label(outcome));
                }
                // What the buyer did with a delivered real lead teaches the cold-start
                // rates (a fallback skipped for its cap was never delivered; a test lead
                // teaches nothing, as the ledger replay at a restart leaves it out).
                if let (true, false, Some(b)) = (
                    teaches,
                    matches!(outcome, PostKind::Capped | PostKind::Busy),
                    rt.config.buyers.get(buyer),
                ) {
                    state.stats.on_post(
                        b.key,
                        outcome == PostKind::Accepted,
                        p_model_ppm.map(|p| (p, guard_epoch)),
                        at,
                        crate::models::stats::lead_key(lead_id),
                    );
                }
            }
            Effect::Auction { no_bid } => state
                .metrics
                .count_auction(no_bid.map_or("bid", |r| r.as_str())),
        }
    }
    result
}

/// Puts a recorded sale in the sold-lead index (`POST /v1/dispositions`), its buyer named
/// by its stable key.
pub fn remember_sale(state: &AppState, sale: &crate::core::record::SaleRecord<'_>) {
    state.sold_leads.insert(
        sale.lead_id,
        crate::dispositions::SoldLead {
            buyer_key: state.ids.buyer_key(sale.buyer),
            buyer: sale.buyer.to_string(),
            seller: sale.seller.to_string(),
            vertical: sale.vertical.to_string(),
            auction_id: sale.auction_id.to_string(),
            currency: sale.currency.to_string(),
            bid_micros: sale.bid_micros,
            seller_price_micros: sale.seller_price_micros,
            margin_micros: sale.margin_micros,
            sold_at: sale.head.at,
            test: sale.test,
            seen: 0,
            pending: 0,
            refunded: false,
        },
    );
}

/// Carries out cap and record effects at once, from synchronous code (the sweeper):
/// records are handed to the ledger without waiting (a full queue is waited on in a
/// task). Metric and breaker effects are not expected here and are ignored.
pub fn execute_now<'a>(state: &AppState, effects: impl Iterator<Item = Effect<'a>>) {
    let settlement = settlement(state);
    for effect in effects {
        match effect {
            Effect::Cap(op) => {
                settlement.settle(&op);
            }
            Effect::Record(rec) => match LedgerSink::append(&state.ledger, &rec) {
                Receipt::Queued | Receipt::Durable(_) => {}
                Receipt::Failed(e) => {
                    tracing::error!(error = %e, kind = rec.kind(), "ledger append failed")
                }
                full @ Receipt::Full(..) => {
                    tokio::spawn(async move {
                        if let Err(e) = full.wait().await {
                            tracing::error!(error = %e, "ledger append failed");
                        }
                    });
                }
            },
            Effect::Ping { .. }
            | Effect::Skipped { .. }
            | Effect::FanoutLimited { .. }
            | Effect::DeadlineOverrun { .. }
            | Effect::LateAnswer { .. }
            | Effect::CappedAtAward { .. }
            | Effect::Post { .. }
            | Effect::Auction { .. } => {}
        }
    }
}

/// A buyer answered after its bound (also counted by the shell's background drain of
/// answers that arrive after the auction ended).
pub fn late_answer(state: &AppState, rt: &Runtime, buyer: usize) {
    if let Some(m) = rt.buyer_metrics(&state.metrics, buyer) {
        m.late_answers.inc();
    }
}

/// Writes one record now (a `quote_reserved` after a quote is kept). Failures are logged.
pub async fn record(state: &AppState, rec: &Record<'_>) {
    if let Err(e) = state.ledger.write(rec).await {
        tracing::error!(error = %e, kind = rec.kind(), "ledger append failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buyer_not_pinged_for_want_of_time_is_not_counted_a_timeout() {
        // What the core's `no_time_left` line carries: a timeout the breaker learns
        // nothing from (the seller's request was late, not the buyer).
        assert_eq!(
            ping_label(BuyerOutcome::Timeout, None),
            Some(PingOutcome::NoTimeLeft)
        );
        assert_eq!(
            ping_label(BuyerOutcome::Timeout, BuyerOutcome::Timeout.breaker_ok()),
            Some(PingOutcome::Timeout)
        );
        assert_eq!(PingOutcome::NoTimeLeft.as_str(), "no_time_left");
        assert!(PingOutcome::ALL.contains(&PingOutcome::NoTimeLeft));
    }
}
