//! `POST /v1/dispositions` on the seller listener: a buyer reports what became of a lead
//! it bought (buyer bearer key). Checks in order, each answered with its contract error
//! and changing nothing: the key (401; a seller's key 403), the buyer's request rate
//! (429), the content type (415), the `Idempotency-Key` header (400), the body size (413),
//! the key's earlier use (its stored answer again; 409 another body or still in flight;
//! 429 the buyer's key quota), its fields (400), the ledger's health (503), the lead (404
//! unknown or forgotten, 403 sold to another buyer), a repeat (409), a `returned` outside
//! the buyer's return window (409). A valid one is written to the ledger (a `refund` for
//! a `returned`, then the `disposition`, which names the key's and body's SHA-256 when
//! the request had a key), and answered only after both are on disk; a keyed `200` is
//! stored for replays (and restored from the ledger at start), a keyed error forgets the
//! key.

use super::seller::{claim_key, idempotency_key, KeyStore};
use super::*;
use crate::config::{BuyerIdx, BuyerKey};
use crate::core::record::{DispositionRecord, Head, LedgerSink, Record, RefundRecord};
use crate::dispositions::{self, refund_decision, Claim, NoRefund, RefundLine, RETURNED};

/// Authenticates a buyer from `Authorization: Bearer <buyer key>` (the seller check's
/// rules, `seller::buyer_of`): an unknown key is 401, a seller's key 403.
fn authenticate_buyer(rt: &Runtime, digest: &[u8; 32]) -> Result<BuyerIdx, ApiError> {
    super::seller::buyer_of(rt, digest).ok_or_else(|| match super::seller::seller_of(rt, digest) {
        Some(_) => ApiError::new(
            ErrorCode::Forbidden,
            "a seller key cannot report dispositions (a buyer key can)",
        ),
        None => ApiError::new(ErrorCode::Unauthorized, "unknown buyer key"),
    })
}

/// How a disposition request ends without a new record: an error, or an answer its
/// `Idempotency-Key` gives at once (the stored answer, or the key's refusal).
enum Refusal {
    Error(ApiError),
    Answer(Box<Response<Body>>),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        Refusal::Error(e)
    }
}

pub(super) async fn disposition_request(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    permit: InFlight,
) -> Response<Body> {
    match disposition(state, req, permit).await {
        Ok(bytes) => json_response(200, bytes),
        Err(Refusal::Error(e)) => error_response(state, &e),
        Err(Refusal::Answer(resp)) => *resp,
    }
}

async fn disposition(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    mut permit: InFlight,
) -> Result<Vec<u8>, Refusal> {
    let digest = super::seller::bearer_digest(&req, "buyer")?;
    let arrived = state.runtime.load_full();
    let first = &arrived.config.buyers[authenticate_buyer(&arrived, &digest)?];
    let connections =
        dispositions::connections_per_buyer_max(arrived.config.server.connections_max);
    if let Some(refused) = super::seller::take_connection_place(
        state,
        &state.buyer_connections,
        first.key.slot(),
        Some(connections),
        || {
            format!("this buyer holds its limit of {connections} open connection(s) (32, or a quarter of server.connections_max when that is smaller): this connection is closed; send on the connections it has open, or retry once one has closed")
        },
        &req,
    ) {
        return Err(Refusal::Answer(Box::new(refused)));
    }
    let server_max = arrived.config.server.requests_in_flight_max;
    let own = dispositions::in_flight_per_buyer_max(server_max);
    let all = dispositions::in_flight_all_buyers_max(server_max);
    if let Err(full) = permit.take_buyer_place(first.key, own, all) {
        let message = match full {
            _ if all == 0 => format!(
                "server.requests_in_flight_max is {server_max}: it leaves buyers' dispositions no place (they hold at most half of it, rounded down, so that sellers keep the rest)"
            ),
            super::seller::BuyerPlaces::Own => format!(
                "this buyer holds its limit of {own} disposition(s) in flight; retry when one has been answered"
            ),
            super::seller::BuyerPlaces::AllBuyers => format!(
                "the buyers together hold their limit of {all} disposition(s) in flight (half of server.requests_in_flight_max, rounded down); retry shortly"
            ),
        };
        return Err(ApiError::new(ErrorCode::RateLimited, message).into());
    }
    if !state
        .disposition_rate
        .allow(first.key, state.clock.now_ms())
    {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} dispositions per second",
                dispositions::DISPOSITIONS_PER_BUYER_PER_S
            ),
        )
        .into());
    }
    if let Some(problem) = super::seller::json_body_problem(&req) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, problem).into());
    }
    let idem_key = idempotency_key(&req)?;
    let body = read_body(
        req,
        arrived.config.server.body_bytes_max,
        Duration::from_millis(arrived.config.server.header_read_timeout_ms),
    )
    .await?;
    // The configuration serving when the disposition has come whole decides it, not the
    // one when its head came: a reload meanwhile may have removed the buyer (its key is
    // then nobody's: 401) or closed its return window (black-box round 156a: a return
    // whose body came after such a reload was refunded under the old window).
    let rt = state.runtime.load_full();
    let buyer = &rt.config.buyers[authenticate_buyer(&rt, &digest)?];
    let server = &rt.config.server;
    // A key is looked up once the body is read (the seller routes' rules; the per-buyer
    // quota is `server.idempotency_keys_per_seller_max`). A claimed key is settled in the
    // task below: a `200` is stored, an error forgets the key (it changed nothing).
    let claim = match idem_key {
        None => None,
        Some(key) => {
            let store: KeyStore<BuyerKey> = |s| &s.disposition_keys;
            let quota = server.idempotency_keys_per_seller_max;
            Some(
                claim_key(
                    state,
                    store,
                    buyer.key,
                    "buyer",
                    "dispositions",
                    key,
                    &body,
                    quota,
                )
                .map_err(Refusal::Answer)?,
            )
        }
    };
    let idem_tag = claim.as_ref().map(|c| c.digests(&body));
    let mut buf = body.to_vec();
    let d = dispositions::parse(&mut buf)?;
    if !state.ledger.is_healthy() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the exchange cannot record dispositions until it is restarted",
        )
        .into());
    }
    // The rest runs in its own task, which holds the request's in-flight place: a client
    // that disconnects cannot leave a claim pending or a written record unsettled, nor
    // free its place while the work still runs, nor leave its key unsettled (the seller
    // routes do the same).
    let st = state.clone();
    let buyer_key = buyer.key;
    let buyer_id = buyer.id.clone();
    let window = buyer.return_window_days;
    let generation = rt.generation;
    let held = st.requests.hold();
    tokio::spawn(async move {
        let _permit = permit;
        let _held = held;
        let idem = idem_tag.as_ref().map(|(k, b)| (k.as_str(), b.as_str()));
        let result = record(&st, d, buyer_key, &buyer_id, window, generation, idem).await;
        match (claim, &result) {
            (Some(claim), Ok(bytes)) => claim.settle(200, bytes),
            // An error recorded nothing: the key is forgotten (dropped) and may be retried.
            (claim, _) => drop(claim),
        }
        result
    })
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the request failed inside the exchange",
        ))
    })
    .map_err(Refusal::Error)
}

/// Claims (lead, outcome), writes the records and settles the claim. `idempotency` is the
/// request's key and body as hex SHA-256, for the `disposition` record.
async fn record(
    state: &Arc<AppState>,
    d: dispositions::Disposition,
    buyer_key: BuyerKey,
    buyer_id: &str,
    return_window_days: u16,
    generation: u64,
    idempotency: Option<(&str, &str)>,
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
            )
            .mark_retry_later())
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
        idempotency_key_sha256: idempotency.map(|(k, _)| k),
        body_sha256: idempotency.map(|(_, b)| b),
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
        state
            .stats
            .on_return(key, Some(crate::models::stats::lead_key(&d.lead_id)));
    }
    state
        .dispositions_since_train
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The refund named as its record has it; a test lead's `returned` (the only return
    // answered 200 without a refund) says `no_refund`.
    Ok(dispositions::answer_json(
        &d.lead_id,
        d.outcome_str(),
        lead.test,
        refund.is_some().then_some(RefundLine {
            currency: &lead.currency,
            buyer_refund_micros: lead.bid_micros,
            seller_clawback_micros: lead.seller_price_micros,
        }),
    ))
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
