//! `POST /v1/dispositions` on the seller listener: a buyer reports what became of a lead
//! it bought (buyer bearer key). Checks in order, each answered with its contract error
//! and changing nothing: the key (401; a seller's key 403), the buyer's request rate
//! (429), the content type (415), the body size (413) and its fields (400), the ledger's
//! health (503), the lead (404 unknown or forgotten, 403 sold to another buyer), a repeat
//! (409), a `returned` outside the buyer's return window (409). A valid one is written to
//! the ledger (a `refund` for a `returned`, then the `disposition`), and answered only
//! after both are on disk.

use super::*;
use crate::config::BuyerIdx;
use crate::core::record::{DispositionRecord, Head, LedgerSink, Record, RefundRecord};
use crate::dispositions::{self, refund_decision, Claim, NoRefund, RETURNED};

/// Authenticates a buyer from `Authorization: Bearer <buyer key>` (the seller check's
/// rules, `seller::buyer_of`): an unknown key is 401, a seller's key 403.
fn authenticate_buyer(rt: &Runtime, req: &Request<Incoming>) -> Result<BuyerIdx, ApiError> {
    let digest = super::seller::bearer_digest(req, "buyer")?;
    super::seller::buyer_of(rt, &digest).ok_or_else(|| {
        match super::seller::seller_of(rt, &digest) {
            Some(_) => ApiError::new(
                ErrorCode::Forbidden,
                "a seller key cannot report dispositions (a buyer key can)",
            ),
            None => ApiError::new(ErrorCode::Unauthorized, "unknown buyer key"),
        }
    })
}

/// The answer of a recorded disposition.
#[derive(serde::Serialize)]
struct Answer<'a> {
    lead_id: &'a str,
    outcome: &'a str,
    recorded: bool,
    /// The refund a `returned` made, else `null`.
    refund: Option<RefundAnswer<'a>>,
    /// Why a `returned` refunded nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    no_refund: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct RefundAnswer<'a> {
    currency: &'a str,
    buyer_refund: proto::Micros,
    seller_clawback: proto::Micros,
}

pub(super) async fn disposition_request(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    permit: InFlight,
) -> Response<Body> {
    match disposition(state, req, permit).await {
        Ok(bytes) => json_response(200, bytes),
        Err(e) => error_response(state, &e),
    }
}

async fn disposition(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    permit: InFlight,
) -> Result<Vec<u8>, ApiError> {
    let rt = state.runtime.load_full();
    let idx = authenticate_buyer(&rt, &req)?;
    let buyer = &rt.config.buyers[idx];
    if !state
        .disposition_rate
        .allow(buyer.key, state.clock.now_ms())
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} dispositions per second",
                dispositions::DISPOSITIONS_PER_BUYER_PER_S
            ),
        ));
    }
    if let Some(problem) = super::seller::json_body_problem(&req) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, problem));
    }
    let server = &rt.config.server;
    let body = read_body(
        req,
        server.body_bytes_max,
        Duration::from_millis(server.header_read_timeout_ms),
    )
    .await?;
    let mut buf = body.to_vec();
    let d = dispositions::parse(&mut buf)?;
    if !state.ledger.is_healthy() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the exchange cannot record dispositions until it is restarted",
        ));
    }
    // The rest runs in its own task, which holds the request's in-flight place: a client
    // that disconnects cannot leave a claim pending or a written record unsettled, nor
    // free its place while the work still runs (the seller routes do the same).
    let st = state.clone();
    let buyer_key = buyer.key;
    let buyer_id = buyer.id.clone();
    let window = buyer.return_window_days;
    let generation = rt.generation;
    tokio::spawn(async move {
        let _permit = permit;
        record(&st, d, buyer_key, &buyer_id, window, generation).await
    })
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the request failed inside the exchange",
        ))
    })
}

/// Claims (lead, outcome), writes the records and settles the claim.
async fn record(
    state: &Arc<AppState>,
    d: dispositions::Disposition,
    buyer_key: crate::config::BuyerKey,
    buyer_id: &str,
    return_window_days: u16,
    generation: u64,
) -> Result<Vec<u8>, ApiError> {
    let lead = match state
        .sold_leads
        .claim(&d.lead_id, buyer_key, buyer_id, d.outcome)
    {
        Claim::Claimed(lead) => lead,
        Claim::NotFound => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "unknown lead_id (not sold by this exchange, or older than it remembers)",
            ))
        }
        Claim::Forbidden => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this lead was not sold to this buyer",
            ))
        }
        Claim::Repeat => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "outcome {} was already recorded for this lead",
                    d.outcome_str()
                ),
            ))
        }
        Claim::InFlight => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the same disposition is still being recorded",
            ))
        }
        Claim::Returned => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this lead was returned: no outcome is recorded after a return",
            ))
        }
    };
    let now = state.clock.now_ms();
    let decision =
        (d.outcome_str() == RETURNED).then(|| refund_decision(&lead, return_window_days, now));
    // A return the buyer's window does not cover is refused: nothing is written, and the
    // claim is dropped (a later report of another outcome still works).
    if let Some(Err(why @ (NoRefund::OutsideReturnWindow | NoRefund::NoReturnWindow))) = decision {
        state.sold_leads.settle(&d.lead_id, d.outcome, false, false);
        return Err(refused_return(why, &lead, return_window_days, now));
    }
    let head = Head::new(generation, now);
    let disposition = Record::Disposition(DispositionRecord {
        head,
        lead_id: &d.lead_id,
        auction_id: &lead.auction_id,
        buyer: &lead.buyer,
        seller: &lead.seller,
        vertical: &lead.vertical,
        outcome: d.outcome_str(),
        reason: d.reason.as_deref(),
        test: lead.test,
    });
    let refund = matches!(decision, Some(Ok(()))).then(|| {
        Record::Refund(RefundRecord {
            head,
            lead_id: &d.lead_id,
            auction_id: &lead.auction_id,
            buyer: &lead.buyer,
            seller: &lead.seller,
            vertical: &lead.vertical,
            currency: &lead.currency,
            buyer_refund_micros: lead.bid_micros,
            seller_clawback_micros: lead.seller_price_micros,
            margin_reversed_micros: lead.margin_micros,
            sold_at_ms: lead.sold_at,
            return_window_days,
        })
    });
    // Both lines are handed to the writer together (one group-commit batch) and the
    // answer waits for both fsyncs. The refund goes first: it is the line that moves
    // money, so any prefix a crash can leave is consistent (nothing; the refund alone,
    // which recovery counts as the lead's `returned` and `verify` lists as a return
    // whose disposition line is missing; or both).
    let first = refund
        .as_ref()
        .map(|r| LedgerSink::append(&state.ledger, r));
    let second = LedgerSink::append(&state.ledger, &disposition);
    let mut written = match first {
        Some(first) => first.wait().await,
        None => Ok(()),
    };
    let w = second.wait().await;
    if written.is_ok() {
        written = w;
    }
    if let Err(e) = written {
        state.sold_leads.settle(&d.lead_id, d.outcome, false, false);
        tracing::error!(error = %e, "disposition not recorded");
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the disposition could not be recorded; nothing changed, retry after the exchange is restarted",
        ));
    }
    state
        .sold_leads
        .settle(&d.lead_id, d.outcome, true, refund.is_some());
    // Learning: a return lowers the buyer's smoothed keep rate at once, and every
    // disposition counts towards `learning.retrain_after_dispositions`.
    if let (true, false, Some(key)) = (
        d.outcome_str() == crate::dispositions::RETURNED,
        lead.test,
        lead.buyer_key,
    ) {
        state.stats.on_return(key);
    }
    state
        .dispositions_since_train
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let answer = Answer {
        lead_id: &d.lead_id,
        outcome: d.outcome_str(),
        recorded: true,
        refund: refund.is_some().then_some(RefundAnswer {
            currency: &lead.currency,
            buyer_refund: proto::Micros(lead.bid_micros),
            seller_clawback: proto::Micros(lead.seller_price_micros),
        }),
        no_refund: match decision {
            Some(Err(why)) => Some(why.as_str()),
            _ => None,
        },
    };
    Ok(to_json(&answer))
}

/// The error of a `returned` the buyer's window does not cover (409: the lead's state,
/// not the request, is what stands in the way).
fn refused_return(
    why: NoRefund,
    lead: &dispositions::SoldLead,
    window_days: u16,
    now: crate::core::UnixMs,
) -> ApiError {
    let message = match why {
        NoRefund::NoReturnWindow => {
            "this buyer has no return window (return_window_days = 0): returns are not accepted"
                .to_string()
        }
        _ => {
            let closed = lead
                .sold_at
                .saturating_add(i64::from(window_days) * dispositions::DAY_MS);
            format!(
                "outside the return window: the lead was sold at {}, its {window_days}-day return window closed at {} and it is now {}; nothing was recorded",
                crate::core::record::rfc3339(lead.sold_at),
                crate::core::record::rfc3339(closed),
                crate::core::record::rfc3339(now),
            )
        }
    };
    ApiError::new(ErrorCode::Conflict, message)
}
