//! The async driver of one auction and one post. It moves bytes and keeps time; every
//! decision is the core's ([`crate::core::auction::Auction`], [`crate::core::post::PostPlan`]):
//! the driver sends the pings the auction lists, feeds each answer (or the passing of a
//! bound) back with `now`, asks for the award, and carries out the effects through
//! [`crate::effects::execute`]. The post likewise delivers the attempt the plan names,
//! within the timeout it gives, and reports the outcome.
//!
//! Answers after a buyer's bound are late and never used. Requests still running when
//! collection ends are left to finish in a background drain (bounded), so an HTTP/1.1
//! connection is not thrown away for being late.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use proto::buyer::{BuyerPing, BuyerPost, PostOutcome};
use proto::seller::{PingRequest, PostAnswer, PostStatus};
use proto::{Lead, Micros};
use tokio::time::Instant;

use crate::buyers::{BuyerClient, BuyerTransport, CallError, CallResult, Endpoint, Ping, Post};
use crate::config::{BuyerIdx, BuyerKey, SellerIdx, VerticalIdx};
use crate::core::auction::{Auction, AuctionParams, Award, ModelVersions};
use crate::core::award::Ranked;
use crate::core::caps::Reservation;
use crate::core::model::features::LeadContext;
use crate::core::model::routing::{splitmix, EvRanker, Predictor};
use crate::core::post::{
    settle_late_answer, AttemptResult, LateAnswer, PostParams, PostPlan, PostStep,
};
use crate::core::UnixMs;
use crate::deadline::Deadline;
use crate::effects;
use crate::models::stats::AuctionSignals;
use crate::state::{AppState, Runtime};

/// How long a post that timed out is still heard out, so a late accept is recorded and
/// counted (see [`LateWatch`]); after it, the call is dropped.
pub const LATE_POST_WAIT_MS: u64 = 10_000;

/// What an auction decided.
#[derive(Debug)]
pub struct AuctionResult {
    pub auction_id: String,
    pub ping_id: String,
    pub score: Option<u8>,
    /// The core's award: winner first (its reservation taken), or the no-bid reason.
    pub award: Award,
    /// Whether the auction's durable records are on disk: a direct post's auction that
    /// found no buyer is its answer (`Record::is_durable`); a ping's auction writes
    /// none that is durable.
    pub recorded: Result<(), crate::ledger::LedgerError>,
}

/// `prefix` and a UUIDv7 in lowercase hex without hyphens (built without `format!`).
fn new_id(prefix: &str) -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    let hex = uuid::Uuid::now_v7().simple().encode_lower(&mut buf);
    let mut id = String::with_capacity(prefix.len() + hex.len());
    id.push_str(prefix);
    id.push_str(hex);
    id
}

/// `{auction_id}.{n}`, `n` the buyer's stable key: a buyer ping's message id (built
/// without `format!`). Public for the ping-building benchmark (P9).
pub fn message_id(auction_id: &str, n: usize) -> String {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut id = String::with_capacity(auction_id.len() + 1 + digits.len() - at);
    id.push_str(auction_id);
    id.push('.');
    for &d in &digits[at..] {
        id.push(char::from(d));
    }
    id
}

/// A buyer ping serialized once, split around its `tmax_ms` value: the only field that
/// differs between the buyers of one auction. Public for the ping-building benchmark.
#[derive(Debug)]
pub struct PingTemplate {
    json: Vec<u8>,
    /// Where the placeholder `0` of `"tmax_ms":0` sits in `json`.
    tmax_at: Option<usize>,
}

impl PingTemplate {
    const KEY: &'static [u8] = b"\"tmax_ms\":0";

    /// Serializes `msg` (its `tmax_ms` must be 0: the placeholder).
    pub fn new(msg: &BuyerPing<'_>) -> PingTemplate {
        let json = serde_json::to_vec(msg).unwrap_or_default();
        // Keys are never inside string values unescaped, so the last match is the field.
        let tmax_at = json
            .windows(Self::KEY.len())
            .rposition(|w| w == Self::KEY)
            .map(|i| i + Self::KEY.len() - 1);
        PingTemplate { json, tmax_at }
    }

    /// The body with `tmax_ms` set; `None` if the message could not be serialized.
    pub fn body(&self, tmax_ms: u64) -> Option<Vec<u8>> {
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
    /// A keyed ping's or direct post's key and body as hex SHA-256, for its auction
    /// record (a direct post's that delivers goes in its `post_sent` records too).
    pub idempotency: Option<(&'a str, &'a str)>,
    /// The lead was screened out before any buyer (`duplicate`, `suppressed`).
    pub screen: Option<proto::seller::NoBidReason>,
    /// The lead may run its auction but not be sold ([`AuctionParams::refuse_award`]).
    pub refuse_award: Option<proto::seller::NoBidReason>,
}

/// Runs one auction for a validated request: the core decides, this drives the I/O.
pub async fn run_auction(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    input: AuctionInput<'_>,
) -> AuctionResult {
    let cfg = &rt.config;
    let vertical = &cfg.verticals[input.vertical];
    let auction_id = new_id("au_");
    let ping_id = new_id("pg_");
    // The auction's own millisecond grid, from the instant it starts: the core counts
    // whole milliseconds, and on this grid a bound is an exact instant (see `Grid`).
    let made_at = Instant::now();
    let now_ms = state.clock.unix_ms_of(made_at);
    let grid = Grid {
        origin: made_at,
        origin_ms: now_ms,
    };
    // The lead's features, its score, and the ranker: expected value under the serving
    // realization model or the cold-start rates, or price.
    let models = rt.models.get(input.vertical).and_then(|m| m.as_deref());
    let mut lead_x: Vec<f32> = Vec::new();
    if let Some(spec) = &vertical.features {
        let ctx = LeadContext {
            seller_id: cfg.sellers.get(input.seller).map_or("", |s| s.id.as_str()),
            sub_id: input.req.source.get("sub_id").map(String::as_str),
            at: now_ms,
        };
        lead_x.reserve(spec.len());
        spec.encode_lead(&vertical.schema, input.lead, &ctx, &mut lead_x);
    }
    let score = models.and_then(|m| m.score(&lead_x));
    let signals = AuctionSignals::new(
        &state.stats,
        cfg,
        &state.caps,
        now_ms,
        input.vertical,
        rt.guard_epoch,
    );
    let realization = models
        .and_then(|m| m.realization.as_ref())
        .map(|s| &s.model as &dyn Predictor);
    let ranker = EvRanker::new(
        vertical.features.as_ref(),
        realization,
        &lead_x,
        &signals,
        vertical.routing,
        auction_seed(&auction_id),
    );
    let fingerprint = state.fingerprint.of(
        &vertical.name,
        &vertical.schema,
        input.lead,
        &input.req.dedup,
    );
    let settlement = effects::settlement(state);
    let params = AuctionParams {
        config: cfg,
        ranker: &ranker,
        generation: rt.generation,
        seller: input.seller,
        vertical: input.vertical,
        score,
        min_price: input.req.min_price,
        consent: &input.req.consent,
        screen: input.screen,
        refuse_award: input.refuse_award,
        test: input.req.test,
        direct: input.direct,
        auction_id: &auction_id,
        ping_id: &ping_id,
        arrival: grid.arrival(input.arrival),
        lead_x: &lead_x,
        features_version: vertical.features.as_ref().map(|f| f.version),
        models: ModelVersions {
            lead_score: models
                .filter(|m| m.lead_score.is_some())
                .map(|m| m.version.as_str()),
            realization: models
                .filter(|m| m.realization.is_some())
                .map(|m| m.version.as_str()),
        },
        lead_fingerprint: Some(&fingerprint),
        idempotency: input.idempotency,
    };
    let mut auction = Auction::new(
        params,
        input.lead,
        &settlement,
        &effects::health(state),
        now_ms,
    );

    let mut futs = FuturesUnordered::new();
    if auction.ping_count() > 0 {
        let now_s = state.clock.now_ms() / 1000;
        // This thread's client, shared by the auction's pings (one reference count each,
        // not a copy of the client's pools and connectors).
        let client = BuyerClient::local_for(&state.buyer_tls.load());
        // The lead is serialized once per auction; each buyer's body differs only in tmax_ms.
        let template = PingTemplate::new(&BuyerPing {
            auction_id: &auction_id,
            vertical: &vertical.name,
            lead: input.lead.json(&vertical.schema),
            score,
            tmax_ms: 0,
            test: input.req.test,
        });
        for order in auction.pings() {
            let key = rt.config.buyers[order.buyer].key;
            // The place the core took among the buyer's pings in flight: given back when
            // the call's future ends, late hearing-out included, or now if never sent.
            let place = state.pings_in_flight.adopt(key);
            // A body that cannot be built is never sent: the buyer times out at its bound.
            let Some(body) = template.body(order.tmax_ms) else {
                continue;
            };
            let client = client.clone();
            let rt2 = rt.clone();
            let msg_id = message_id(&auction_id, key.slot());
            futs.push(Call::new(order.slot, async move {
                let _place = place;
                let t0 = Instant::now();
                let buyer = &rt2.config.buyers[order.buyer];
                let to = Endpoint {
                    url: buyer.ping_url.as_deref().unwrap_or_default(),
                    target: rt2.ping_target(order.buyer),
                    http: buyer.http,
                    secret: &buyer.secret,
                    secret_next: buyer.secret_next.as_ref(),
                };
                let r = client
                    .call::<Ping>(to, &msg_id, now_s, Bytes::from(body))
                    .await;
                (r, t0.elapsed())
            }));
        }
    }
    let mut bound: Option<Deadline> = None;
    while let Some(until) = auction.poll_timeout() {
        let wake = grid.instant(until);
        let deadline = match &mut bound {
            Some(d) => {
                d.reset(wake);
                d
            }
            None => bound.insert(Deadline::new(wake)),
        };
        tokio::select! {
            biased;
            Some((slot, (r, took))) = futs.next() => {
                let answer = match r {
                    CallResult::Answer(o) => Some(o),
                    CallResult::Failed(_) => None,
                };
                auction.on_answer(slot, answer, took.as_micros() as u64, grid.ms(Instant::now()));
            }
            () = deadline.elapsed() => auction.handle_timeout(grid.ms(Instant::now())),
        }
    }
    if !futs.is_empty() {
        // Late calls: heard out in the background within limits (see `late`), never used.
        let owners: Vec<BuyerIdx> = auction.pings().map(|o| o.buyer).collect();
        hear_out_late(state, rt, &owners, futs);
    }

    let took_us = input.arrival.elapsed().as_micros() as u64;
    let award = auction.finish(&settlement, state.clock.now_ms(), took_us);
    // Only durable records can fail the call: a direct post's auction that found no
    // buyer (its record is the seller's answer).
    let recorded = effects::execute(state, rt, auction.effects()).await;
    drop(auction);
    AuctionResult {
        auction_id,
        ping_id,
        score,
        award,
        recorded,
    }
}

/// One buyer call of an auction, tagged with its slot (the call's place in the auction's
/// list of pings): a call still running when collection ends can then be told apart from
/// the others (see [`hear_out_late`]). Boxed so that it can be taken out of the
/// auction's `FuturesUnordered` again.
struct Call<F> {
    slot: usize,
    fut: std::pin::Pin<Box<F>>,
    /// Held while the call is heard out late (given back when the call ends or is dropped).
    permit: Option<crate::late::LatePermit>,
}

impl<F: std::future::Future> Call<F> {
    fn new(slot: usize, fut: F) -> Call<F> {
        Call {
            slot,
            fut: Box::pin(fut),
            permit: None,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Call<F> {
    /// The call's slot, and what it gave.
    type Output = (usize, F::Output);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<(usize, F::Output)> {
        let slot = self.slot;
        self.fut.as_mut().poll(cx).map(|out| (slot, out))
    }
}

/// The calls still running when an auction's collection ended: each is heard out in the
/// background for [`crate::late::LATE_DRAIN_TIMEOUTS`] times its own buyer's ping
/// timeout from now (the end of collection), and counted as a late answer if the buyer
/// answers by then (a transport failure is not an answer); one past its buyer's or the
/// exchange's limit of late calls is dropped at once (its connection closed). The calls
/// are grouped by that bound (one background task each; most auctions have one group).
fn hear_out_late<F, O>(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    owners: &[BuyerIdx],
    futs: FuturesUnordered<Call<F>>,
) where
    F: std::future::Future<Output = (CallResult<O>, Duration)> + Send + 'static,
    O: Send + 'static,
{
    let cfg = &rt.config;
    let mut groups: Vec<(u64, FuturesUnordered<Call<F>>)> = Vec::new();
    for mut call in futs {
        let Some(buyer) = owners.get(call.slot).and_then(|b| cfg.buyers.get(*b)) else {
            continue;
        };
        call.permit = state.late_calls.admit(buyer.key);
        if call.permit.is_none() {
            if let Some(m) = rt.buyer_metrics(&state.metrics, owners[call.slot]) {
                m.late_calls_dropped.inc();
            }
            continue;
        }
        let bound_ms = buyer
            .ping_timeout_ms
            .saturating_mul(u64::from(crate::late::LATE_DRAIN_TIMEOUTS));
        match groups.iter_mut().find(|(ms, _)| *ms == bound_ms) {
            Some((_, g)) => g.push(call),
            None => {
                let g = FuturesUnordered::new();
                g.push(call);
                groups.push((bound_ms, g));
            }
        }
    }
    for (bound_ms, mut group) in groups {
        let rt2 = Arc::clone(rt);
        let state2 = Arc::clone(state);
        let owners: Vec<BuyerIdx> = owners.to_vec();
        let until = Instant::now() + Duration::from_millis(bound_ms);
        tokio::spawn(async move {
            let _ = tokio::time::timeout_at(until, async {
                while let Some((slot, (r, _))) = group.next().await {
                    // An answer, not a transport failure after the bound (round 46: a
                    // buyer that never answered was counted as answering late).
                    if let (CallResult::Answer(_), Some(b)) = (r, owners.get(slot)) {
                        effects::late_answer(&state2, &rt2, *b);
                    }
                }
            })
            .await;
        });
    }
}

/// An auction's millisecond grid: whole milliseconds from the instant it started
/// (`origin`, which is `origin_ms` on the shell's clock). The core takes a bound as a whole
/// millisecond `b`, an answer at `now <= b` as in time, and times out at `now >= b`; on
/// this grid `b` is the exact instant `origin + (b - origin_ms)` ms, so a buyer gets its
/// whole timeout from the auction's start, not a moment less, and an answer after that
/// instant is late, not a moment more. (On the shell's clock, whose milliseconds begin
/// elsewhere, a bound could fall up to 1 ms either side.)
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub origin: Instant,
    pub origin_ms: UnixMs,
}

impl Grid {
    /// `t` on the grid, rounded up: an instant past `origin + k` ms is `origin_ms + k + 1`,
    /// so it is after bound `origin_ms + k`.
    pub fn ms(&self, t: Instant) -> UnixMs {
        let nanos = t.saturating_duration_since(self.origin).as_nanos();
        let whole = nanos.div_ceil(1_000_000);
        self.origin_ms
            .saturating_add(i64::try_from(whole).unwrap_or(i64::MAX))
    }

    /// An instant before the origin (the request's arrival), rounded toward the origin
    /// (a deadline counted from it then ends at most that fraction later, never earlier
    /// than it would from the origin).
    pub fn arrival(&self, t: Instant) -> UnixMs {
        let before = self.origin.saturating_duration_since(t).as_millis();
        self.origin_ms
            .saturating_sub(i64::try_from(before).unwrap_or(i64::MAX))
    }

    /// The instant of bound `b` (none before the origin; a bound years away is as good
    /// as never, and must not overflow).
    pub fn instant(&self, b: UnixMs) -> Instant {
        let far = Duration::from_secs(365 * 24 * 3600);
        let ms = u64::try_from(b.saturating_sub(self.origin_ms)).unwrap_or(0);
        self.origin + Duration::from_millis(ms).min(far)
    }
}

/// The seed of an auction's exploration draws: a hash of its id, so a replay of the
/// auction draws the same.
pub fn auction_seed(auction_id: &str) -> u64 {
    auction_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
        .wrapping_add(splitmix(auction_id.len() as u64))
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
    /// The currency it was quoted in (the quote's; the vertical's for a direct post): the
    /// sale and the `sold` answer use it, whatever a reload made the vertical's since.
    pub currency: &'a str,
    pub ranked: Vec<Ranked>,
    pub reservation: Option<Reservation>,
    pub auction_started_ms: UnixMs,
    /// The guard epoch of the runtime that ran the auction (its models' estimates count
    /// in the drift guard only while they serve: [`crate::models::stats::BuyerStats::on_post`]).
    pub guard_epoch: u64,
    /// The reservation is a ping's quote hold (recorded as `quote_reserved`).
    pub from_quote: bool,
    /// The request's `Idempotency-Key` and body, hex SHA-256 each, when it had a key
    /// (written in every `post_sent` record: see docs/LEDGER.md, Recovery).
    pub idempotency: Option<(&'a str, &'a str)>,
    /// The lead's dedup keys (claimed by the caller for this post): written with its
    /// sale, and stamped if a buyer accepts it after its timeout.
    pub dedup: &'a [crate::core::dedup::DedupKey],
}

/// Why a delivery could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The sale (or unsold outcome) could not be recorded: never answer `sold`.
    #[error("the sale could not be recorded: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The ledger failed before the lead was sent to any buyer (fail-stop): nothing was
    /// delivered, and every hold was released.
    #[error("the ledger failed; nothing was delivered")]
    Unavailable,
    /// No buyer accepted, but the lead reached one, and the post's outcome could not be
    /// recorded: its outcome is unknown (the buyer may still accept late), and it is not
    /// delivered again (black-box round 94a: answered as a sale not recorded).
    #[error("the post's outcome could not be recorded after the lead reached a buyer: {0}")]
    OutcomeUnknown(crate::ledger::LedgerError),
}

/// Delivers the full lead as the core's post plan says: the attempt it names, within the
/// timeout it gives; reports each outcome back and carries out the effects. `sold` is
/// returned only after the sale record is on disk.
pub async fn deliver(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    d: Delivery<'_>,
) -> Result<PostAnswer, DeliveryError> {
    let cfg = &rt.config;
    let vertical = &cfg.verticals[d.vertical];
    let lead_id = new_id("ld_");
    let settlement = effects::settlement(state);
    let dedup_hex = crate::fingerprint::dedup_hex(d.dedup);
    // Bidders a reload removed since the quote, with their former ids for the records.
    let removed: Vec<(BuyerKey, String)> = d
        .ranked
        .iter()
        .filter(|r| cfg.buyer_by_key(r.bid.buyer).is_none())
        .map(|r| {
            let id = state.ids.buyer_id(r.bid.buyer);
            (r.bid.buyer, id.as_deref().unwrap_or("").to_string())
        })
        .collect();
    let mut plan = PostPlan::new(
        PostParams {
            config: cfg,
            generation: rt.generation,
            seller: d.seller,
            vertical: d.vertical,
            test: d.test,
            quoted: d.quoted,
            currency: d.currency,
            auction_id: d.auction_id,
            ping_id: d.ping_id,
            lead_id: &lead_id,
            auction_arrival: d.auction_started_ms,
            from_quote: d.from_quote,
            removed: &removed,
            idempotency: d.idempotency,
            dedup: &dedup_hex,
            guard_epoch: d.guard_epoch,
        },
        d.ranked,
        d.reservation,
        state.clock.now_ms(),
    );
    let client = BuyerClient::local_for(&state.buyer_tls.load());
    // Fail-stop: once the ledger has failed no lead leaves, not even to a fallback; every
    // remaining attempt is reported as not sent, so the plan releases its holds and ends.
    let mut stopped = false;
    let mut sent = 0usize;
    // When the last accept was read (P8: the sale must be durable and answered soon after).
    let mut accepted_at: Option<Instant> = None;
    let step = loop {
        // A buyer with too many deliveries still unanswered after their timeout is sent
        // no more (the core skips it as `busy`).
        let bound = cfg.server.late_posts_per_buyer_max;
        let mut has_room = |key: BuyerKey| state.late_posts.of(key) < bound;
        let attempt = match plan.next_admitting(&settlement, state.clock.now_ms(), &mut has_room) {
            PostStep::Deliver(a) => a,
            done => break done,
        };
        // The effects before the attempt (holds, skipped candidates' records). Once the
        // ledger has failed no lead leaves.
        let written = effects::execute(state, rt, plan.effects()).await;
        if stopped || written.is_err() || !state.ledger.is_healthy() {
            stopped = true;
            plan.on_result(AttemptResult::NotSent, state.clock.now_ms());
            continue;
        }
        let buyer = &cfg.buyers[attempt.buyer];
        let bid = &plan.ranked()[attempt.rank].bid;
        let price = bid.price;
        let msg = BuyerPost {
            auction_id: d.auction_id,
            lead_id: &lead_id,
            bid_id: bid.bid_id.as_deref(),
            price: bid.price,
            vertical: &vertical.name,
            lead: d.lead.json(&vertical.schema),
            consent: d.consent,
            tmax_ms: attempt.timeout_ms,
            test: d.test,
        };
        let Ok(body) = serde_json::to_vec(&msg) else {
            plan.on_result(AttemptResult::NotSent, state.clock.now_ms());
            continue;
        };
        let msg_id = format!("{}.post.{}", d.auction_id, buyer.key.0);
        // The call runs in its own task, so a timed-out delivery is still heard out
        // (bounded): a late accept is a delivery and is recorded. It connects first and
        // says so; the lead leaves only once told to, after its `post_sent` is on disk
        // (write-ahead), so a buyer that cannot be reached leaves no delivery behind,
        // even when the ledger fails meanwhile (black-box round 92a).
        let (rt2, client2, b) = (rt.clone(), client.clone(), attempt.buyer);
        let now_s = state.clock.now_ms() / 1000;
        let (connected_tx, connected) = tokio::sync::oneshot::channel::<()>();
        let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
        let mut call = tokio::spawn(async move {
            let buyer = &rt2.config.buyers[b];
            let to = Endpoint {
                url: &buyer.post_url,
                target: None,
                http: buyer.http,
                secret: &buyer.secret,
                secret_next: buyer.secret_next.as_ref(),
            };
            let conn = match client2.connect(to).await {
                Ok(conn) => conn,
                Err(e) => return CallResult::Failed(e),
            };
            // Told to send, or not (the delivery's record could not be written).
            if connected_tx.send(()).is_err() || go_rx.await.is_err() {
                return CallResult::Failed(CallError::Request);
            }
            client2
                .call_on::<Post>(conn, to, &msg_id, now_s, Bytes::from(body))
                .await
        });
        let mut until = tokio::time::Instant::now() + Duration::from_millis(attempt.timeout_ms);
        if !matches!(tokio::time::timeout_at(until, connected).await, Ok(Ok(()))) {
            // Not reachable within the attempt's time, or not at all: nothing was sent.
            call.abort();
            plan.on_result(AttemptResult::NotConnected, state.clock.now_ms());
            continue;
        }
        // Write-ahead: the attempt's durable `post_sent` record. Its fsync is not the
        // buyer's time: the attempt's timeout is the connection's and the answer's, as
        // when the record was written before the call began.
        plan.sending(state.clock.now_ms());
        let writing = tokio::time::Instant::now();
        let written = effects::execute(state, rt, plan.effects()).await;
        until += writing.elapsed();
        if written.is_err() {
            // Not on disk: the lead does not leave (the task ends unsent).
            call.abort();
            stopped = true;
            plan.on_result(AttemptResult::NotSent, state.clock.now_ms());
            continue;
        }
        if go.send(()).is_err() {
            // The call task ended between connecting and sending (it cannot, short of
            // a panic): the lead did not leave, but its `post_sent` is on disk.
            plan.on_result(AttemptResult::Error, state.clock.now_ms());
            continue;
        }
        sent += 1;
        let mut late = None;
        let result = match tokio::time::timeout_at(until, &mut call).await {
            Err(_) => {
                // Heard out in the background once the plan has handed over the
                // attempt's hold (below).
                // The consumer stays claimed until its answer is in: another
                // post of it waits (409) while this buyer may accept.
                state.dedup.hold(d.dedup);
                late = Some((
                    LateWatch {
                        state: state.clone(),
                        rt: rt.clone(),
                        buyer: attempt.buyer,
                        lead_id: lead_id.clone(),
                        auction_id: d.auction_id.to_string(),
                        attempt: attempt.attempt,
                        price,
                        windows: plan.holds().map(|r| r.counted_windows()),
                        test: d.test,
                        hold: None,
                        dedup: d.dedup.to_vec(),
                        seller: cfg.sellers[d.seller].key,
                        _counted: state.late_posts.admit(buyer.key),
                    },
                    call,
                ));
                AttemptResult::Timeout
            }
            Ok(Err(_)) | Ok(Ok(CallResult::Failed(_))) => AttemptResult::Error,
            Ok(Ok(CallResult::Answer(PostOutcome::Accepted { buyer_lead_id }))) => {
                accepted_at = Some(Instant::now());
                AttemptResult::Accepted { buyer_lead_id }
            }
            Ok(Ok(CallResult::Answer(PostOutcome::Rejected { reason }))) => {
                AttemptResult::Rejected { reason }
            }
            Ok(Ok(CallResult::Answer(PostOutcome::Invalid(why)))) => AttemptResult::Invalid(why),
        };
        plan.on_result(result, state.clock.now_ms());
        if let Some((mut watch, call)) = late.take() {
            // The timed-out attempt's hold stays in the buyer's caps until its late
            // answer is in: an accept then counts in that place, never past a cap.
            watch.hold = plan.take_late_hold();
            // Counted, so shutdown waits for the answer before the ledger is closed.
            state
                .late_watches
                .spawn(watch.watch(call, Duration::from_millis(LATE_POST_WAIT_MS)));
        }
    };
    let recorded = effects::execute(state, rt, plan.effects()).await;
    if stopped && sent == 0 {
        return Err(DeliveryError::Unavailable);
    }
    if let Err(e) = recorded {
        return Err(match step {
            PostStep::Sold(_) => DeliveryError::Ledger(e),
            // Nothing left for any buyer: nothing was delivered.
            _ if sent == 0 => DeliveryError::Unavailable,
            _ => DeliveryError::OutcomeUnknown(e),
        });
    }
    Ok(match step {
        PostStep::Sold(a) => {
            if let Some(t) = accepted_at {
                state
                    .metrics
                    .sale_after_accept
                    .observe(t.elapsed().as_secs_f64());
            }
            PostAnswer {
                status: PostStatus::Sold,
                lead_id: Some(lead_id),
                ping_id: Some(d.ping_id.to_string()),
                price: Some(d.quoted),
                currency: Some(d.currency.to_string()),
                buyer: Some(cfg.buyers[a.buyer].name.clone()),
                reason: None,
                changed_fields: Vec::new(),
            }
        }
        PostStep::Unsold(reason) => {
            let mut a = PostAnswer::status_only(PostStatus::Unsold, Some(reason.as_str()));
            // The lead id names a lead some buyer was sent; with no delivery there is none
            // to name (black-box round 16: given all the same).
            if plan.sent() > 0 {
                a.lead_id = Some(lead_id);
            }
            a.ping_id = Some(d.ping_id.to_string());
            a
        }
        // `next` never breaks the loop with a delivery.
        PostStep::Deliver(_) => {
            let mut a = PostAnswer::status_only(PostStatus::Unsold, Some("internal"));
            a.ping_id = Some(d.ping_id.to_string());
            a
        }
    })
}

/// A delivery that timed out, still heard out for a while: a buyer that accepts after
/// its post timeout has the lead, so the accept is recorded (`post_attempt` with outcome
/// `late_accept`, durable) and counted against the buyer's caps and budget. The post
/// itself has moved on (a fallback may sell the lead too: see docs/LEDGER.md), but the
/// attempt's hold stays in the buyer's caps and budget while the watch lasts: a late
/// accept turns it into a lead sold, anything else releases it, so a buyer that accepts
/// late can never get more leads than its caps allow.
struct LateWatch {
    state: Arc<AppState>,
    rt: Arc<Runtime>,
    buyer: BuyerIdx,
    lead_id: String,
    auction_id: String,
    attempt: usize,
    price: Micros,
    windows: Option<crate::core::caps::Windows>,
    /// A test lead counts in no cap.
    test: bool,
    /// The attempt's hold, kept until the answer is in (`None` for a test lead).
    hold: Option<crate::core::caps::Reservation>,
    /// The lead's dedup keys, claimed ([`crate::core::dedup::DedupBook::hold`]) until
    /// the answer is in; a late accept stamps them as sold.
    dedup: Vec<crate::core::dedup::DedupKey>,
    /// The seller of the lead (the sale's, for de-duplication).
    seller: crate::config::SellerKey,
    /// Counts the watch in [`AppState::late_posts`] while it lasts.
    _counted: Option<crate::late::LatePermit>,
}

impl LateWatch {
    async fn watch(
        self,
        mut call: tokio::task::JoinHandle<CallResult<PostOutcome>>,
        wait: Duration,
    ) {
        let answer = tokio::time::timeout(wait, &mut call).await;
        // A buyer that never answers is given up on: its call ends here.
        call.abort();
        let accepted = matches!(
            answer,
            Ok(Ok(CallResult::Answer(PostOutcome::Accepted { .. })))
        );
        // The core decides what the answer comes to (a buyer this runtime no longer has
        // is not counted): the record and the cap operation, or the hold's release.
        let buyer = self.rt.config.buyers.get(self.buyer);
        let now = self.state.clock.now_ms();
        let settled = settle_late_answer(
            LateAnswer {
                generation: self.rt.generation,
                lead_id: &self.lead_id,
                auction_id: &self.auction_id,
                attempt: self.attempt,
                buyer,
                price: self.price,
                windows: self.windows,
                test: self.test,
                hold: self.hold,
            },
            accepted,
            now,
        );
        // The claim held for this answer ends: the buyer has the lead (its consumer is a
        // duplicate from now on), or the consumer is free again.
        self.state
            .dedup
            .end_post(&self.dedup, accepted.then_some((now, self.seller)), now);
        self.state.metrics.dedup_gauges(&self.state.dedup);
        match (settled.sold, buyer) {
            // A test lead reserves and counts nothing (black-box round 132a: the log said
            // it was counted against the caps).
            (true, Some(buyer)) if self.test => tracing::warn!(
                lead_id = %self.lead_id,
                buyer = %buyer.id,
                "a buyer accepted a test lead after its post timeout: nothing counted"
            ),
            (true, Some(buyer)) => {
                self.state
                    .metrics
                    .late_accepts
                    .with_label_values(&[buyer.id.as_str()])
                    .inc();
                tracing::warn!(
                    lead_id = %self.lead_id,
                    buyer = %buyer.id,
                    "a buyer accepted after its post timeout: counted against its caps and budget"
                );
            }
            _ => {}
        }
        // The record first, then the count (carried out even when the record failed).
        if let Err(e) = effects::execute(&self.state, &self.rt, settled.effects.into_iter()).await {
            tracing::error!(error = %e, "ledger append failed (late accept)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::schema::{FieldKind, FieldSpec, LeadMode, VerticalSchema};

    #[test]
    fn on_an_auction_s_grid_a_bound_is_an_exact_instant() {
        let origin = Instant::now();
        let grid = Grid {
            origin,
            origin_ms: 1_000,
        };
        let bound = 1_100; // a 100 ms timeout
        let at = grid.instant(bound);
        assert_eq!(at, origin + Duration::from_millis(100));
        // In time up to the instant itself, late from the next nanosecond: the core's
        // `now <= bound` and `bound <= now` rules meet exactly there.
        for (t, ms) in [
            (origin, 1_000),
            (origin + Duration::from_nanos(1), 1_001),
            (origin + Duration::from_micros(99_999), 1_100),
            (at, 1_100),
            (at + Duration::from_nanos(1), 1_101),
            (at + Duration::from_micros(600), 1_101),
        ] {
            assert_eq!(grid.ms(t), ms, "{:?}", t - origin);
        }
        assert!(
            grid.ms(at + Duration::from_micros(600)) > bound,
            "an answer 0.6 ms late is late"
        );
        // The arrival, a fraction before the start, is the start's millisecond: a deadline
        // counted from it ends at most that fraction after the arrival's, never before.
        let arrived = origin - Duration::from_micros(300);
        assert_eq!(grid.arrival(arrived), 1_000);
        assert_eq!(grid.arrival(origin - Duration::from_micros(1_200)), 999);
        assert_eq!(grid.arrival(origin), 1_000);
        // A bound years away does not overflow.
        let _ = grid.instant(i64::MAX);
    }

    #[test]
    fn ids_are_what_format_would_build() {
        for n in [0usize, 1, 9, 10, 99, 100, 12_345, usize::MAX] {
            assert_eq!(message_id("au_x", n), format!("au_x.{n}"));
        }
        let id = new_id("pg_");
        assert_eq!(id.len(), 3 + 32);
        assert!(id.starts_with("pg_"));
        assert!(id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

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
