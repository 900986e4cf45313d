//! The seller API: authentication, the request's in-flight place and idempotency key
//! (both owned by the work, so a disconnect never tears it), body limits, and the three
//! routes `ping`, `post` and `direct_post`, which drive the core's auction and post.

use std::hash::Hash;

use super::*;
use crate::config::BuyerKey;
use crate::core::dedup::{DedupKey, Seen};
use crate::core::post::{quote_refused, refuse_before_delivery, BeforeDelivery, Refusal};
use crate::fingerprint::ConsumerKeys;
use crate::idempotency::IdempotencyStore;

/// One request's place under `server.requests_in_flight_max`. It is owned, not borrowed
/// from the handler: a seller request's work moves it into its own task, so a client that
/// disconnects frees its place only when the work it started has ended, and the limit
/// counts the work actually running.
pub(super) struct InFlight {
    state: Arc<AppState>,
    /// The party whose own count this request also holds a place in, once it is known:
    /// a seller (`sellers.ID.requests_in_flight_max`) or a buyer (its dispositions).
    party: Option<Party>,
}

/// Whose own count an [`InFlight`] holds a place in.
#[derive(Clone, Copy)]
enum Party {
    Seller(SellerKey),
    Buyer(BuyerKey),
}

impl Party {
    /// The party's count of requests in flight (`None`: one the registry does not hold,
    /// with nothing to count it against).
    fn count(self, state: &AppState) -> Option<&std::sync::atomic::AtomicUsize> {
        match self {
            Party::Seller(s) => state.seller_in_flight.get(s.slot()),
            Party::Buyer(b) => state.buyer_in_flight.get(b.slot()),
        }
    }
}

impl InFlight {
    pub(super) fn try_acquire(state: &Arc<AppState>) -> Option<InFlight> {
        // The permit is forgotten and given back in `drop`: that makes it owned without
        // changing how `AppState` holds the semaphore.
        state.in_flight.try_acquire().ok()?.forget();
        state.metrics.requests_in_flight.inc();
        Some(InFlight {
            state: state.clone(),
            party: None,
        })
    }

    /// Takes a place among `buyer`'s dispositions, of at most `own`
    /// ([`crate::dispositions::in_flight_per_buyer_max`]), and one among every buyer's, of
    /// at most `all` ([`crate::dispositions::in_flight_all_buyers_max`]); when either has
    /// none left, neither is taken and the error says which. Given back with the server's
    /// place.
    pub(super) fn take_buyer_place(
        &mut self,
        buyer: BuyerKey,
        own: usize,
        all: usize,
    ) -> Result<(), BuyerPlaces> {
        if !self.take_place(Party::Buyer(buyer), own) {
            return Err(BuyerPlaces::Own);
        }
        if !take_one(&self.state.dispositions_in_flight, all) {
            self.give_back_party();
            return Err(BuyerPlaces::AllBuyers);
        }
        Ok(())
    }

    /// Takes a place among `seller`'s requests, of at most `max` (black-box round 62d: one
    /// seller's slow work held every place of the server's limit, and the others' pings
    /// were refused); false when it has none left. Given back with the server's place.
    fn take_seller_place(&mut self, seller: SellerKey, max: usize) -> bool {
        self.take_place(Party::Seller(seller), max)
    }

    /// One more of `party`'s places, of at most `max`; true with no count to take it from.
    fn take_place(&mut self, party: Party, max: usize) -> bool {
        let taken = party.count(&self.state).is_none_or(|c| take_one(c, max));
        if taken {
            self.party = Some(party);
        }
        taken
    }

    /// Gives back the party's place (and, for a buyer, its place among every buyer's).
    fn give_back_party(&mut self) {
        use std::sync::atomic::Ordering;
        if let Some(party) = self.party.take() {
            if let Some(count) = party.count(&self.state) {
                count.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Which of a buyer's bounds on dispositions in flight refused one more.
pub(super) enum BuyerPlaces {
    /// Its own, [`crate::dispositions::in_flight_per_buyer_max`].
    Own,
    /// Every buyer's together, [`crate::dispositions::in_flight_all_buyers_max`].
    AllBuyers,
}

/// One more of `count`, of at most `max`; false when it is full.
fn take_one(count: &std::sync::atomic::AtomicUsize, max: usize) -> bool {
    use std::sync::atomic::Ordering;
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if matches!(self.party, Some(Party::Buyer(_))) {
            self.state
                .dispositions_in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
        self.give_back_party();
        self.state.in_flight.add_permits(1);
        self.state.metrics.requests_in_flight.dec();
    }
}

/// An `Idempotency-Key` that `begin` let through: unless `settle` stores an answer, it is
/// forgotten when dropped (an error, or a panic inside the work), so a retry runs again
/// instead of meeting `409` until the key expires. `P` is the party owning the key: a
/// seller (`AppState::idempotency`) or a buyer (`AppState::disposition_keys`).
pub(super) struct KeyClaim<P: Copy + Eq + Hash = SellerKey> {
    state: Arc<AppState>,
    store: KeyStore<P>,
    party: P,
    key: String,
    settled: bool,
}

/// Which of `AppState`'s idempotency stores a route's keys live in.
pub(super) type KeyStore<P> = fn(&AppState) -> &IdempotencyStore<P>;

impl<P: Copy + Eq + Hash> KeyClaim<P> {
    /// Stores the answer for replays.
    pub(super) fn settle(mut self, status: u16, body: &[u8]) {
        (self.store)(&self.state).complete(
            self.party,
            &self.key,
            status,
            Bytes::copy_from_slice(body),
        );
        self.settled = true;
    }

    /// The key and the body that carried it as ledger records name them: hex digests,
    /// keyed with the ledger's fingerprint key ([`IdempotencyStore::key_digest`]), never
    /// the key itself.
    pub(super) fn digests(&self, body: &[u8]) -> (String, String) {
        let store = (self.store)(&self.state);
        (
            hex::encode(store.key_digest(&self.key)),
            hex::encode(store.body_digest(body)),
        )
    }
}

impl<P: Copy + Eq + Hash> Drop for KeyClaim<P> {
    fn drop(&mut self) {
        if !self.settled {
            (self.store)(&self.state).forget(self.party, &self.key);
        }
    }
}

/// The request's `Idempotency-Key`, if it has one: more than one such header, or a key
/// that is not 1 to 255 visible ASCII characters, is `400 invalid_request`.
pub(super) fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, ApiError> {
    let mut keys = req.headers().get_all("idempotency-key").iter();
    let first = keys.next();
    if keys.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "send one Idempotency-Key header, not several",
        ));
    }
    match first.map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(k)) if idempotency::is_valid_key(k) => Ok(Some(k.to_string())),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// Looks `key` up for `party` (a `who`: `seller` or `buyer`, for the messages) in
/// `store` once the body is read: a first use is claimed (`Ok`; the claim must be settled
/// or dropped), anything else is answered at once (`Err`): the stored answer replayed, a
/// different body or a request still in flight `409`, the party's quota `429` with
/// `Retry-After`, a full store `503`.
#[allow(clippy::too_many_arguments)]
pub(super) fn claim_key<P: Copy + Eq + Hash>(
    state: &Arc<AppState>,
    store: KeyStore<P>,
    party: P,
    who: &str,
    route: &'static str,
    key: String,
    body: &[u8],
    quota: usize,
) -> Result<KeyClaim<P>, Box<Response<Body>>> {
    let begin = store(state).begin_within(party, route, &key, body, state.clock.now_ms(), quota);
    let e = match begin {
        Begin::Proceed => {
            return Ok(KeyClaim {
                state: state.clone(),
                store,
                party,
                key,
                settled: false,
            })
        }
        Begin::Replay { status, body } => {
            return Err(Box::new(json_response(status, body.to_vec())))
        }
        Begin::BodyMismatch => ApiError::new(
            ErrorCode::Conflict,
            "Idempotency-Key was used with a different body or on another route",
        ),
        Begin::InFlight => ApiError::new(
            ErrorCode::Conflict,
            "a request with this Idempotency-Key is still in flight",
        )
        .mark_retry_later(),
        Begin::SellerFull => {
            let mut resp = error_response(
                state,
                &ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "this {who} already holds its quota of {quota} idempotency keys \
                         (or more, when a reload or a restart lowered it); keys are freed as they \
                         expire, or send requests without one"
                    ),
                ),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(KEY_QUOTA_RETRY_AFTER_S),
            );
            return Err(Box::new(resp));
        }
        Begin::Full => {
            // Keys free up only as they expire (black-box round 99a: `Retry-After: 1` sent
            // every seller back within the second, for hours, and did not say that a
            // request without a key still runs).
            let mut resp = error_response(
                state,
                &ApiError::new(
                    ErrorCode::Overloaded,
                    "the exchange holds as many idempotency keys as it may; keys are \
                     freed as they expire, or send requests without one",
                ),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(KEY_QUOTA_RETRY_AFTER_S),
            );
            return Err(Box::new(resp));
        }
    };
    Err(Box::new(error_response(state, &e)))
}

/// The SHA-256 of the bearer key in `Authorization: Bearer <key>`, for a party called
/// `who` in the messages (`seller`, `buyer`).
///
/// Timing: the key is hashed first, so a lookup by digest depends only on the digest,
/// which an attacker cannot steer towards a valid key's digest (that would need SHA-256
/// preimages); [`key_matches`] then compares with the party's stored digests in constant
/// time all the same, so no comparison on secret material short-circuits.
pub(super) fn bearer_digest(req: &Request<Incoming>, who: &str) -> Result<[u8; 32], ApiError> {
    let headers = req.headers();
    let key = bearer_token(headers).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthorized,
            no_bearer_message(headers, &format!("{who} key")),
        )
    })?;
    Ok(Sha256::digest(key.as_bytes()).into())
}

/// Why `headers` give no bearer key ([`bearer_token`] found none), for the `401` of a
/// listener whose key is called `what` (`seller key`, `admin token`). Names nothing
/// sent.
pub(super) fn no_bearer_message(headers: &http::HeaderMap, what: &str) -> String {
    match headers.get_all(header::AUTHORIZATION).iter().count() {
        0 => format!("missing Authorization: Bearer <{what}>"),
        // A key travels in a header: visible ASCII only (black-box round 136b: a
        // non-ASCII key's digest could be configured, and its 401 did not say why).
        1 if headers
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.to_str().is_err()) =>
        {
            format!(
                "Authorization must be Bearer <{what}>, in visible ASCII characters \
                 (a key is never sent in other characters)"
            )
        }
        // `Bearer`, a space, and a key: then only its length is wrong (round 192a:
        // `Basic …` and a `Bearer` without a key were told about words).
        1 if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches([' ', '\t']).split_once(' '))
            .is_some_and(|(scheme, key)| {
                scheme.eq_ignore_ascii_case("bearer") && !key.trim_matches([' ', '\t']).is_empty()
            }) =>
        {
            format!(
                "Authorization must be Bearer <{what}>, a key of at most {} words",
                crate::config::KEY_WORDS_MAX
            )
        }
        1 => format!(
            "Authorization must be Bearer <{what}>: the scheme Bearer, one or more spaces, and the key"
        ),
        n => format!("send one Authorization header, not {n}"),
    }
}

/// Is `digest` one of a party's key digests (the current one, or the next during a
/// rotation)? Constant time.
pub(super) fn key_matches(digest: &[u8; 32], current: &[u8; 32], next: Option<&[u8; 32]>) -> bool {
    let next = next.unwrap_or(current);
    bool::from(digest.ct_eq(current) | digest.ct_eq(next))
}

/// The buyer whose disposition key (current or next) `digest` is: the digest is looked
/// up, then compared in constant time with the buyer's own.
pub(super) fn buyer_of(rt: &Runtime, digest: &[u8; 32]) -> Option<crate::config::BuyerIdx> {
    let idx = *rt.config.buyer_by_key_sha256.get(digest)?;
    let b = rt.config.buyers.get(idx)?;
    let current = b.key_sha256?;
    key_matches(digest, &current, b.key_sha256_next.as_ref()).then_some(idx)
}

/// The seller whose key (current or next) `digest` is, checked as [`buyer_of`] does.
pub(super) fn seller_of(rt: &Runtime, digest: &[u8; 32]) -> Option<SellerIdx> {
    let idx = *rt.config.seller_by_key_sha256.get(digest)?;
    let s = rt.config.sellers.get(idx)?;
    key_matches(digest, &s.key_sha256, s.key_sha256_next.as_ref()).then_some(idx)
}

/// Authenticates a seller from `Authorization: Bearer <key>`: an unknown key is 401, a
/// buyer's disposition key 403 (CONTRACT.md: a valid key used where it does not belong).
fn authenticate(rt: &Runtime, req: &Request<Incoming>) -> Result<SellerIdx, ApiError> {
    let digest = bearer_digest(req, "seller")?;
    seller_of(rt, &digest).ok_or_else(|| match buyer_of(rt, &digest) {
        Some(_) => ApiError::new(
            ErrorCode::Forbidden,
            "a buyer key cannot use the seller API (it is for /v1/dispositions only)",
        ),
        None => ApiError::new(ErrorCode::Unauthorized, "unknown seller key"),
    })
}

pub(super) async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body is over {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body did not arrive in time",
        )),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(e)) => {
            let err = ApiError::new(ErrorCode::InvalidRequest, "the body could not be read");
            Err(if client_gone(&*e) {
                err.mark_unheard()
            } else {
                err
            })
        }
        Ok(Ok(c)) => {
            // Read to its end: the connection may carry the next request (an answer
            // sent before this says `Connection: close`, bidder_sdk::listener).
            bidder_sdk::listener::BodyRead::mark(&parts.extensions);
            Ok(c.to_bytes())
        }
    }
}

/// Whether a body's read failed because the request's stream or connection is gone:
/// the client reset the stream or closed the connection mid-body, or the connection was
/// closed to make room (`bidder_sdk::listener`'s eviction; over HTTP/2 the request's task
/// outlives its connection and sees the close here). No answer can reach anyone then, so
/// it is not counted as an error answer (black-box rounds 144b and 151a: 852 such
/// requests counted as `invalid_request` for 284 evicted connections). Bad framing the
/// server can still answer (an invalid chunk size) is not "gone".
fn client_gone(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return true;
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.is_io() || h2.is_reset() || h2.is_go_away() {
                return true;
            }
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ) {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

/// Why the body is not one this API reads, for a `415`: a `Content-Type` other than
/// `application/json`, more than one `Content-Type` header (readers disagree on which
/// one counts, as with a repeated `Authorization`), a `charset` other than UTF-8, or a
/// `Content-Encoding` (the body would be read as if it were not compressed).
pub(super) fn json_body_problem(req: &Request<Incoming>) -> Option<&'static str> {
    bidder_sdk::listener::json_headers_problem(req.headers())
}

/// A connection's place among its party's connections (a seller's
/// `sellers.ID.connections_max`, a buyer's [`crate::dispositions::connections_per_buyer_max`]):
/// taken by the first request on it that carries a seller's or a buyer's key, for that
/// party, and given back when the connection closes (the connection's service, which
/// holds it, is dropped). Requests on it with another party's key count for the first.
#[derive(Debug, Default)]
pub struct PartyConnection(std::sync::OnceLock<ConnectionPlace>);

#[derive(Debug)]
struct ConnectionPlace {
    counts: Arc<crate::core::slots::Slots<std::sync::atomic::AtomicUsize>>,
    slot: usize,
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        if let Some(count) = self.counts.get(self.slot) {
            count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// Counts the request's connection in `counts` at `slot` (its party's) if it is not
/// counted yet, of at most `max`; when the party already holds `max`, the refusal to send
/// (`429` with `message`, the connection closed after it).
pub(super) fn take_connection_place(
    state: &Arc<AppState>,
    counts: &Arc<crate::core::slots::Slots<std::sync::atomic::AtomicUsize>>,
    slot: usize,
    max: Option<usize>,
    message: impl FnOnce() -> String,
    req: &Request<Incoming>,
) -> Option<Response<Body>> {
    let connection = req.extensions().get::<Arc<PartyConnection>>()?;
    if connection.0.get().is_some() {
        return None;
    }
    let count = counts.get(slot)?;
    if !take_one(count, max.unwrap_or(usize::MAX)) {
        return Some(closing(error_response(
            state,
            &ApiError::new(ErrorCode::RateLimited, message()),
        )));
    }
    // A request racing on the same HTTP/2 connection may have counted it first: then this
    // place is given back as it drops.
    let _ = connection.0.set(ConnectionPlace {
        counts: Arc::clone(counts),
        slot,
    });
    None
}

/// How many connections `seller`'s requests may hold open, and whether that is its own
/// `connections_max`: unset, half of `server.connections_max` (rounded up) when the
/// configuration has more than one seller, so that one seller's key cannot keep every
/// slot (black-box round 214a: 296 connections of one seller, each sending a request
/// every 3.7-4.0 s, kept 296 of 300 slots, and new connections waited 4.6-23.5 s); with
/// one seller, only the server's limit.
pub(super) fn seller_connections_max(
    config: &crate::config::Config,
    seller: SellerIdx,
) -> Option<(usize, bool)> {
    seller_share(
        config.sellers[seller].connections_max,
        config.server.connections_max,
        config.sellers.len(),
    )
}

/// A seller's limit of something the server limits to `server_max`, and whether it is its
/// own: `own` when set; else half of `server_max` (rounded up) when there are several
/// sellers; else none but the server's.
fn seller_share(own: Option<usize>, server_max: usize, sellers: usize) -> Option<(usize, bool)> {
    match own {
        Some(max) => Some((max, true)),
        None if sellers > 1 => Some((server_max.div_ceil(2), false)),
        None => None,
    }
}

/// How many of its requests `seller` may have in flight, and whether that is its own
/// `requests_in_flight_max`: unset, half of `server.requests_in_flight_max` (rounded up)
/// when the configuration has more than one seller, so that one seller cannot take every
/// place from the others (black-box round 114a: a seller's HTTP/2 requests whose bodies
/// never came held all 4,096 for the body budget, and the others got `503`); with one
/// seller, only the server's limit.
pub(super) fn seller_in_flight_max(
    config: &crate::config::Config,
    seller: SellerIdx,
) -> Option<(usize, bool)> {
    seller_share(
        config.sellers[seller].requests_in_flight_max,
        config.server.requests_in_flight_max,
        config.sellers.len(),
    )
}

pub(super) async fn seller_request(
    state: &Arc<AppState>,
    route: &'static str,
    req: Request<Incoming>,
    arrival: Instant,
    mut permit: InFlight,
) -> Response<Body> {
    let rt = state.runtime.load_full();
    let seller = match authenticate(&rt, &req) {
        Ok(s) => s,
        Err(e) => return error_response(state, &e),
    };
    // Per-seller state (rate, idempotency keys, quotes) is keyed by the stable key.
    let seller_key = rt.config.sellers[seller].key;
    // Its refusal counters, resolved (at 0) at its first request.
    let limited = rt.seller_metrics(&state.metrics, seller);
    let connections = seller_connections_max(&rt.config, seller);
    if let Some(refused) = take_connection_place(
        state,
        &state.seller_connections,
        seller_key.slot(),
        connections.map(|(max, _)| max),
        || {
            let (max, own) = connections.unwrap_or((0, true));
            let whose = if own {
                "its connections_max"
            } else {
                "half of server.connections_max, each seller's share when there are several and its own connections_max is not set"
            };
            format!("this seller holds its limit of {max} open connection(s) ({whose}; or more, when a reload lowered it): this connection is closed; send on the connections it has open, or retry once one has closed")
        },
        &req,
    ) {
        if let Some(m) = limited {
            m.connections.inc();
        }
        return refused;
    }
    if let Some((max, own)) = seller_in_flight_max(&rt.config, seller) {
        if !permit.take_seller_place(seller_key, max) {
            let whose = if own {
                "its requests_in_flight_max"
            } else {
                "half of server.requests_in_flight_max (rounded up), each seller's share when there are several and its own requests_in_flight_max is not set"
            };
            if let Some(m) = limited {
                m.requests_in_flight.inc();
            }
            return error_response(
                state,
                &ApiError::new(
                    ErrorCode::RateLimited,
                    format!("this seller holds its limit of {max} request(s) in flight ({whose}; or more, when a reload lowered it); retry when one has been answered"),
                ),
            );
        }
    }
    if let Some(rate) = rt.config.sellers[seller].rate_per_s {
        if !state
            .rate_limits
            .allow(seller_key, rate, state.clock.now_ms())
        {
            if let Some(m) = limited {
                m.rate.inc();
            }
            return error_response(
                state,
                &ApiError::new(
                    ErrorCode::RateLimited,
                    format!("over {rate} requests per second"),
                ),
            );
        }
    }
    if let Some(problem) = json_body_problem(&req) {
        return error_response(
            state,
            &ApiError::new(ErrorCode::UnsupportedMediaType, problem),
        );
    }
    let idem_key = match idempotency_key(&req) {
        Ok(k) => k,
        Err(e) => return error_response(state, &e),
    };
    let server = &rt.config.server;
    let body = match read_body(
        req,
        server.body_bytes_max,
        Duration::from_millis(server.header_read_timeout_ms),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return error_response(state, &e),
    };
    let claim = match idem_key {
        None => None,
        Some(key) => {
            let quota = rt.config.idempotency_keys_max_of(seller);
            let store: KeyStore<SellerKey> = |s| &s.idempotency;
            match claim_key(state, store, seller_key, "seller", route, key, &body, quota) {
                Ok(c) => Some(c),
                Err(resp) => {
                    // A 429 here is the seller's own key quota.
                    if resp.status() == hyper::StatusCode::TOO_MANY_REQUESTS {
                        if let Some(m) = limited {
                            m.idempotency_keys.inc();
                        }
                    }
                    return *resp;
                }
            }
        }
    };
    // The work runs in its own task, which also owns the in-flight permit and the
    // idempotency key: a client that disconnects mid-auction or mid-post cancels nothing,
    // so reservations, quotes, deliveries and the ledger reach a final state, the key is
    // settled (a retry gets the stored answer), and the permit is held until the work ends.
    let st = state.clone();
    let rt2 = rt.clone();
    // The key and body as the `post_sent` records carry them (hashes, never the key).
    let idem_tag = claim.as_ref().map(|c| c.digests(&body));
    let held = state.requests.hold();
    let task = tokio::spawn(async move {
        let _permit = permit;
        let _held = held;
        let mut buf = body.to_vec();
        let idem = idem_tag.as_ref().map(|(k, b)| (k.as_str(), b.as_str()));
        let result = match route {
            "ping" => ping(&st, &rt2, seller, &mut buf, arrival, idem).await,
            "leads" => direct_post(&st, &rt2, seller, &mut buf, arrival, idem).await,
            _ => post(&st, &rt2, seller, &mut buf, idem).await,
        };
        if let Some(claim) = claim {
            match &result {
                Ok(bytes) => claim.settle(200, bytes),
                // A 500 may come after a buyer got the lead (a sale the ledger could not
                // record): running it again could deliver twice, so it is stored too.
                Err(e) if e.code == ErrorCode::Internal => claim.settle(e.status(), &e.to_json()),
                // Any other error changed nothing: the key is forgotten and may be retried.
                Err(_) => drop(claim),
            }
        }
        result
    });
    let result = task.await.unwrap_or_else(|_| {
        Err(ApiError::new(
            ErrorCode::Internal,
            "the request failed inside the exchange",
        ))
    });
    match result {
        Ok(bytes) => json_response(200, bytes),
        Err(e) => error_response(state, &e),
    }
}

fn check_vertical(rt: &Runtime, seller: SellerIdx, vertical: &str) -> Result<usize, ApiError> {
    let (idx, _) = rt
        .config
        .vertical(vertical)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "vertical: unknown vertical"))?;
    if rt.config.sellers[seller].verticals.contains(&idx) {
        Ok(idx)
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this key may not sell in vertical {vertical}"),
        ))
    }
}

/// Parses a ping (`LeadMode::Ping`) or direct post (`LeadMode::Full`) body and checks
/// that the seller may sell in its vertical.
fn parse_seller_lead(
    rt: &Runtime,
    seller: SellerIdx,
    buf: &mut [u8],
    mode: LeadMode,
) -> Result<(proto::seller::PingRequest, usize), ApiError> {
    let cfg = &rt.config;
    let req = parse_ping(buf, mode, |v| cfg.vertical(v).map(|(_, x)| &*x.schema))?;
    let vertical = check_vertical(rt, seller, &req.vertical)?;
    Ok((req, vertical))
}

/// A request's consumer keys ([`crate::fingerprint::Fingerprinter::consumer_keys`];
/// given `full`, the posted lead's own too). A seller's hash that is not one is `400
/// invalid_request` naming it. A test lead has no dedup keys (it is never a duplicate,
/// nor makes one) but keeps its hashes: a listed consumer's PII reaches no buyer, test
/// or not (black-box round 30: `"test": true` sent it to one).
fn consumer_keys(
    state: &AppState,
    rt: &Runtime,
    v: &crate::config::Vertical,
    req: &proto::seller::PingRequest,
    full: Option<&proto::Lead>,
) -> Result<ConsumerKeys, ApiError> {
    let keys = state
        .fingerprint
        .consumer_keys(v, rt.config.suppression.is_on(), &req.dedup, full)
        .map_err(|p| ApiError::from_fields(ErrorCode::InvalidRequest, p))?;
    Ok(if req.test {
        ConsumerKeys {
            digests: Vec::new(),
            hashes: keys.hashes,
        }
    } else {
        keys
    })
}

/// A post's claim on its lead's dedup keys ([`crate::core::dedup::DedupBook::begin_post`]):
/// let go when dropped, stamped with the sale's time by [`DedupClaim::sold`].
struct DedupClaim<'s> {
    state: &'s AppState,
    keys: Vec<DedupKey>,
    /// The seller posting (the sale's, if it sells).
    seller: crate::config::SellerKey,
    sold: Option<crate::core::dedup::Sold>,
}

impl<'s> DedupClaim<'s> {
    /// Claims `keys` under vertical `v`'s window: `Err` says why not.
    fn begin(
        state: &'s AppState,
        v: &crate::config::Vertical,
        seller: crate::config::SellerKey,
        keys: Vec<DedupKey>,
    ) -> Result<DedupClaim<'s>, Seen> {
        let window = v.dedup.as_ref().map_or(0, |d| d.window_ms);
        state
            .dedup
            .begin_post(&keys, window, state.clock.now_ms())?;
        // The keys being delivered are counted from now (black-box round 86c: the gauge
        // moved only when a post ended, so it never showed them).
        if !keys.is_empty() {
            state.metrics.dedup_gauges(&state.dedup);
        }
        Ok(DedupClaim {
            state,
            keys,
            seller,
            sold: None,
        })
    }

    fn sold(&mut self) {
        self.sold = Some((self.state.clock.now_ms(), self.seller));
    }
}

impl Drop for DedupClaim<'_> {
    fn drop(&mut self) {
        // Nothing was claimed (no dedup keys): no lock, no gauge to move.
        if self.keys.is_empty() {
            return;
        }
        let now = self.state.clock.now_ms();
        self.state.dedup.end_post(&self.keys, self.sold, now);
        self.state.metrics.dedup_gauges(&self.state.dedup);
    }
}

/// Another post is delivering a lead with one of this one's dedup keys (a direct post
/// holds them from its auction on, since it delivers at its end: black-box round 206c),
/// or hears out a buyer that timed out on it (black-box round 114b: a 409 right after that post was
/// answered `unsold` did not say why): `409`, and nothing changes (a quote stays open
/// for a retry).
fn dedup_in_flight() -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "a post of a lead with the same dedup key (the same consumer) is in flight: a direct post in its auction or a post being delivered, or a buyer that timed out on it is still heard out (up to {} s after its timeout: it may accept late); retry when it has ended",
            crate::auction::LATE_POST_WAIT_MS / 1000
        ),
    )
    .mark_retry_later()
}

async fn ping(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    seller: SellerIdx,
    buf: &mut [u8],
    arrival: Instant,
    idempotency: Option<(&str, &str)>,
) -> Result<Vec<u8>, ApiError> {
    let cfg = &rt.config;
    let (req, vertical) = parse_seller_lead(rt, seller, buf, LeadMode::Ping)?;
    let v = &cfg.verticals[vertical];
    let keys = consumer_keys(state, rt, v, &req, None)?;
    ledger_gate(state)?;
    // A consumer on the suppression list, or sold within the window, is screened out: no
    // buyer is pinged.
    let window = v.dedup.as_ref().map_or(0, |d| d.window_ms);
    // Another seller's sale is found at the post unless `ping_scope = "all"`: an
    // answer here would let any seller test guessed phone numbers for free (black-box
    // round 29).
    let by = match &v.dedup {
        Some(d) if d.ping_scope_all => None,
        _ => Some(cfg.sellers[seller].key),
    };
    let screen = if cfg.suppression.lists_any(&keys.hashes) {
        Some(NoBidReason::Suppressed)
    } else {
        state
            .dedup
            .sold_within(&keys.digests, window, state.clock.now_ms(), by)
            .then_some(NoBidReason::Duplicate)
    };
    let dedup = keys.digests;
    // The quote's place, taken before any buyer is pinged: a ping past the book's or the
    // seller's open-quote limit is refused here, however many race (given back below
    // when the auction has no winner, or if this request is dropped).
    let seller_open_max = cfg.sellers[seller].quotes_open_max;
    let claim = state
        .quotes
        .claim(cfg.sellers[seller].key, seller_open_max)
        .map_err(|refused| {
            quote_refusal(
                rt.seller_metrics(&state.metrics, seller),
                refused,
                seller_open_max,
            )
        })?;
    let result = run_auction(
        state,
        rt,
        AuctionInput {
            seller,
            vertical,
            req: &req,
            lead: &req.lead,
            arrival,
            direct: false,
            idempotency,
            screen,
            refuse_award: None,
        },
    )
    .await;
    let award = result.award;
    let answer = match award.winner() {
        Some(winner) => {
            let now = state.clock.now_ms();
            let expires_at = award.quote_expires_at(cfg.server.quote_ttl_ms, now);
            let price = winner.seller_price;
            let reserved = award.quote_reserved(cfg, rt.generation, &result.ping_id, now);
            // What the `quote_opened` record needs once the quote is in the book.
            let (lead_copy, ranked_copy) = (req.lead.clone(), award.ranked.clone());
            let dedup_hex = crate::fingerprint::dedup_hex(&dedup);
            let quote = Quote {
                ping_id: result.ping_id.clone(),
                auction_id: result.auction_id.clone(),
                seller: cfg.sellers[seller].key,
                vertical,
                vertical_name: v.name.clone(),
                // The request is done with: the quote takes its lead without a copy.
                lead: req.lead,
                schema: std::sync::Arc::clone(&v.schema),
                test: req.test,
                price,
                currency: v.currency.clone(),
                expires_at,
                auctioned_at: award.arrival,
                reservation: award.reservation.clone(),
                ranked: award.ranked,
                score: result.score,
                dedup,
                guard_epoch: rt.guard_epoch,
            };
            if let Err(refused) = state.quotes.insert_claimed(claim, quote) {
                // The hold existed: the ledger gets it and its release as a pair.
                if let Some(rec) = &reserved {
                    effects::record(state, rec).await;
                }
                if let Some((r, why)) = quote_refused(award.reservation) {
                    release_hold(state, rt, r, Some(&result.ping_id), why, &[], now).await;
                }
                return Err(quote_refusal(
                    rt.seller_metrics(&state.metrics, seller),
                    refused,
                    seller_open_max,
                ));
            }
            if let Some(rec) = reserved {
                effects::record(state, &rec).await;
            }
            let opened = quote_opened_record(
                rt,
                QuoteSnapshot {
                    ping_id: &result.ping_id,
                    auction_id: &result.auction_id,
                    seller,
                    vertical,
                    test: req.test,
                    price,
                    expires_at,
                    auctioned_at: award.arrival,
                    score: result.score,
                    lead: &lead_copy,
                    ranked: &ranked_copy,
                    hold: award.reservation.as_ref(),
                    dedup: &dedup_hex,
                },
                now,
            );
            effects::record(state, &opened).await;
            PingAnswer {
                ping_id: result.ping_id,
                status: PingStatus::Bid,
                price: Some(price),
                currency: Some(v.currency.clone()),
                expires_at: Some(rfc3339(expires_at)),
                reason: None,
                score: result.score,
            }
        }
        None => PingAnswer {
            ping_id: result.ping_id,
            status: PingStatus::NoBid,
            price: None,
            currency: None,
            expires_at: None,
            reason: Some(award.no_bid.unwrap_or(NoBidReason::NoBids)),
            score: result.score,
        },
    };
    Ok(to_json(&answer))
}

/// A quote as the `quote_opened` record writes it.
struct QuoteSnapshot<'a> {
    ping_id: &'a str,
    auction_id: &'a str,
    seller: SellerIdx,
    vertical: usize,
    test: bool,
    price: proto::Micros,
    expires_at: crate::core::UnixMs,
    auctioned_at: crate::core::UnixMs,
    score: Option<u8>,
    lead: &'a proto::Lead,
    ranked: &'a [crate::core::award::Ranked],
    hold: Option<&'a crate::core::caps::Reservation>,
    dedup: &'a [String],
}

/// The `quote_opened` record of a quote just put in the book: what a post of it needs
/// after a restart (see docs/LEDGER.md, Start-up recovery).
fn quote_opened_record<'a>(
    rt: &'a Runtime,
    q: QuoteSnapshot<'a>,
    now: crate::core::UnixMs,
) -> crate::core::record::Record<'a> {
    use crate::core::record::{HoldLine, LeadFields, QuoteOpenedRecord, RankedLine, Record};
    let cfg = &rt.config;
    let v = &cfg.verticals[q.vertical];
    let buyer_id = |k| cfg.buyer_by_key(k).map_or("", |(_, b)| b.id.as_str());
    Record::QuoteOpened(QuoteOpenedRecord {
        head: crate::core::record::Head::new(rt.generation, now),
        ping_id: q.ping_id,
        auction_id: q.auction_id,
        seller: cfg.sellers[q.seller].id.as_str(),
        vertical: v.name.as_str(),
        test: q.test,
        price_micros: q.price.0,
        currency: v.currency.as_str(),
        expires_at_ms: q.expires_at,
        auctioned_at_ms: q.auctioned_at,
        score: q.score,
        lead: LeadFields(
            q.lead
                .iter(&v.schema)
                .filter(|(name, _)| {
                    v.schema
                        .fields
                        .iter()
                        .any(|f| f.name == *name && f.ping && !f.pii)
                })
                .collect(),
        ),
        ranked: q
            .ranked
            .iter()
            .map(|r| RankedLine {
                buyer: buyer_id(r.bid.buyer),
                price_micros: r.bid.price.0,
                bid_id: r.bid.bid_id.as_deref(),
                expires_in_ms: r.bid.expires_in_ms,
                fixed: r.bid.fixed,
                seller_price_micros: r.seller_price.0,
                value: r.value,
                p_ppm: r.p_ppm,
            })
            .collect(),
        hold: q.hold.map(|h| HoldLine {
            buyer: buyer_id(h.buyer),
            price_micros: h.price.0,
            windows: h.windows,
        }),
        dedup: q.dedup,
    })
}

/// Fail-stop: while the ledger is failed (see [`crate::ledger`]) the exchange neither
/// quotes nor sells; a ping, post or direct post is answered 503 `unavailable` before any
/// buyer is contacted, and changes nothing (a quote stays as it was). The reason (a file
/// and an OS error) is on `/readyz` and in the log, not in the seller's answer.
fn ledger_gate(state: &AppState) -> Result<(), ApiError> {
    if state.ledger.is_healthy() {
        return Ok(());
    }
    Err(ledger_unavailable())
}

fn ledger_unavailable() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "the exchange cannot record sales and sells nothing until it is restarted",
    )
}

/// A quote the book refused: the seller's limit is 429 ([`seller_quotes_limited`]), a full
/// book (or a ping id already in it) 503.
fn quote_refusal(
    limited: Option<&crate::metrics::SellerMetrics>,
    refused: QuoteRefused,
    seller_open_max: usize,
) -> ApiError {
    match refused {
        QuoteRefused::SellerLimit => {
            if let Some(m) = limited {
                m.quotes_open.inc();
            }
            seller_quotes_limited(seller_open_max)
        }
        // Pings still in their auction hold places too (a winner must find one), so the
        // message says so (black-box round 175b: "too many open quotes" while none was).
        QuoteRefused::BookFull => ApiError::new(
            ErrorCode::Overloaded,
            "the exchange holds its server.quotes_open_max open quotes, pings still in their auction counted as quotes; retry in a moment",
        ),
    }
}

/// A seller holding its `sellers.ID.quotes_open_max` open quotes: 429 with `Retry-After`.
fn seller_quotes_limited(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::RateLimited,
        // The limit, not a count: after a reload lowered it, the seller may hold more
        // (black-box round 155a: "already holds 2" for a seller holding dozens).
        format!("the seller holds its quotes_open_max of {max} open quotes and pings in flight (or more, when a reload lowered it); post or let some expire first"),
    )
}

async fn direct_post(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    seller: SellerIdx,
    buf: &mut [u8],
    arrival: Instant,
    idempotency: Option<(&str, &str)>,
) -> Result<Vec<u8>, ApiError> {
    let cfg = &rt.config;
    let (req, vertical) = parse_seller_lead(rt, seller, buf, LeadMode::Full)?;
    let v = &cfg.verticals[vertical];
    let keys = consumer_keys(state, rt, v, &req, Some(&req.lead))?;
    ledger_gate(state)?;
    // A consumer on the suppression list is screened out. Otherwise the lead's dedup keys
    // are claimed for the whole direct post: a consumer sold within the window is a
    // duplicate (no buyer is pinged), one being posted now waits.
    // A consumer another seller sold is screened out only under `ping_scope = "all"`;
    // otherwise the auction runs and a winner is refused after the award (`cross_seller`),
    // so the answer tells a seller nothing it could not learn by selling the lead.
    let seller_key = cfg.sellers[seller].key;
    let mut cross_seller = false;
    let (mut claim, screen) = if cfg.suppression.lists_any(&keys.hashes) {
        (None, Some(NoBidReason::Suppressed))
    } else {
        let window = v.dedup.as_ref().map_or(0, |d| d.window_ms);
        let scope_all = v.dedup.as_ref().is_some_and(|d| d.ping_scope_all);
        let digests = keys.digests.clone();
        match DedupClaim::begin(state, v, seller_key, keys.digests) {
            Ok(c) => (Some(c), None),
            Err(Seen::Sold)
                if scope_all
                    || state.dedup.sold_within(
                        &digests,
                        window,
                        state.clock.now_ms(),
                        Some(seller_key),
                    ) =>
            {
                (None, Some(NoBidReason::Duplicate))
            }
            Err(Seen::Sold) => {
                cross_seller = true;
                (None, None)
            }
            Err(Seen::Posting) => return Err(dedup_in_flight()),
        }
    };
    let schema = &v.schema;
    let projection = req.lead.ping_projection(schema);
    let result = run_auction(
        state,
        rt,
        AuctionInput {
            seller,
            vertical,
            req: &req,
            lead: &projection,
            arrival,
            direct: true,
            // In the auction record too, so a start rebuilds the key of a direct post
            // that delivered nothing (black-box round 21: its retry ran again and sold).
            idempotency,
            screen,
            // Another seller sold this consumer within the window: the auction runs, and
            // its award is `duplicate` if a bid clears the reserve (decided and recorded
            // by the core, so a keyed retry gets it again after a restart: round 30).
            refuse_award: cross_seller.then_some(NoBidReason::Duplicate),
        },
    )
    .await;
    let award = result.award;
    let answer = match award.winner().map(|w| w.seller_price) {
        Some(quoted) => {
            let d = Delivery {
                auction_id: &result.auction_id,
                ping_id: &result.ping_id,
                seller,
                vertical,
                lead: &req.lead,
                consent: &req.consent,
                test: req.test,
                quoted,
                currency: &cfg.verticals[vertical].currency,
                ranked: award.ranked,
                reservation: award.reservation,
                auction_started_ms: award.arrival,
                guard_epoch: rt.guard_epoch,
                from_quote: false,
                idempotency,
                dedup: claim.as_ref().map_or(&[], |c| c.keys.as_slice()),
            };
            let a = deliver(state, rt, d).await.map_err(|e| {
                // The line OPERATIONS.md says to alert on, as a post's failure logs it
                // (black-box round 40: a direct post's was not logged).
                tracing::error!(error = %e, "sale not recorded");
                match e {
                    DeliveryError::Unavailable => ledger_unavailable(),
                    // The same answer as a post's (black-box round 91a: it named the
                    // ledger's segment and the OS error).
                    DeliveryError::Ledger(_) | DeliveryError::OutcomeUnknown(_) => {
                        crate::recovery::outcome_unknown()
                    }
                }
            })?;
            if a.status == PostStatus::Sold {
                if let Some(c) = &mut claim {
                    c.sold();
                }
            }
            a
        }
        None => {
            // The auction record is this answer, and a keyed retry after a restart gets
            // it from there: it is on disk before the seller hears it.
            result.recorded.map_err(|e| {
                tracing::error!(error = %e, "direct post's answer not recorded");
                ledger_unavailable()
            })?;
            let reason = award.no_bid.unwrap_or(NoBidReason::NoBids);
            let mut a = direct_no_bid_answer(reason);
            a.ping_id = Some(result.ping_id);
            a
        }
    };
    drop(claim);
    Ok(post_answer(state, &answer))
}

/// A direct post's answer when its auction found no buyer: `unsold` with the no-bid
/// reason, or `duplicate` for a consumer sold within the window.
pub fn direct_no_bid_answer(reason: NoBidReason) -> PostAnswer {
    match reason {
        NoBidReason::Duplicate => PostAnswer::status_only(
            PostStatus::Duplicate,
            Some(crate::core::post::DUPLICATE_REASON),
        ),
        NoBidReason::Suppressed => PostAnswer::status_only(
            PostStatus::Suppressed,
            Some(crate::core::post::SUPPRESSED_REASON),
        ),
        r => PostAnswer::status_only(PostStatus::Unsold, Some(r.as_str())),
    }
}

async fn post(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    seller: SellerIdx,
    buf: &mut [u8],
    idempotency: Option<(&str, &str)>,
) -> Result<Vec<u8>, ApiError> {
    let cfg = &rt.config;
    let seller_key = cfg.sellers[seller].key;
    // An envelope with problems lists the lead's too, checked against the vertical of the
    // seller's open quote it names (every field problem at once; another seller's ping,
    // or a finished one, gets the envelope's problems only, as an unknown one does).
    let env = PostEnvelope::parse_listing_lead(buf, |ping_id| {
        let name = state.quotes.open_vertical(ping_id, seller_key)?;
        cfg.vertical(&name).map(|(_, v)| &*v.schema)
    })?;
    ledger_gate(state)?;
    let now = state.clock.now_ms();
    let quote = match state.quotes.begin_post(&env.ping_id, seller_key, now) {
        BeginPost::NotFound => {
            // A ping answered `no_bid` gave no quote, so its id is unknown here too
            // (black-box round 130a: the bare "unknown ping_id" read as a lost quote).
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "unknown ping_id: no quote of this seller's has it (never issued, answered no_bid, or forgotten)",
            ));
        }
        BeginPost::InFlight => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "a post for this ping_id is still in flight",
            )
            .mark_retry_later())
        }
        // Counted as what it answers, like every post answered 200: the first post of a
        // quote the sweeper expired is answered from here, and so is a repeated post.
        BeginPost::Done(answer)
            if answer.reason.as_deref() == Some(crate::recovery::OUTCOME_UNKNOWN) =>
        {
            return Err(crate::recovery::outcome_unknown())
        }
        BeginPost::Done(answer) => return Ok(post_answer(state, &answer)),
        BeginPost::Expired(reservation) => {
            let refusal = refuse_before_delivery(BeforeDelivery::Expired, reservation);
            let a = refuse(state, rt, refusal, &env.ping_id, &[], now).await;
            return Ok(post_answer(state, &a));
        }
        BeginPost::Post(q) => q,
    };
    // The quote may predate a reload that moved verticals: find its vertical by name.
    let vertical = match cfg.verticals.get(quote.vertical) {
        Some(v) if v.name == quote.vertical_name => Some(quote.vertical),
        _ => cfg.vertical(&quote.vertical_name).map(|(i, _)| i),
    };
    let Some(vertical) = vertical else {
        // The vertical left the configuration: nothing can be delivered, and the quote's
        // hold is released (recorded) through the one settlement path.
        let refusal =
            refuse_before_delivery(BeforeDelivery::VerticalRemoved, quote.reservation.clone());
        return Ok(refuse_quote(state, rt, refusal, &quote.ping_id, now).await);
    };
    // The seller's leave to sell in the vertical, as it is now: a reload that took it
    // away stops the quote's post, as it stops the seller's pings (black-box round 248d:
    // the quote still sold, its lead delivered). Refused as a ping would be; nothing
    // changes: the quote stays open until it expires (its hold released then), or until
    // a reload gives the leave back.
    if !cfg.sellers[seller].verticals.contains(&vertical) {
        state.quotes.abandon(&env.ping_id, quote);
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this key may not sell in vertical {}",
                cfg.verticals[vertical].name
            ),
        ));
    }
    let schema = &cfg.verticals[vertical].schema;
    let lead = match env.validate_lead(schema) {
        Ok(l) => l,
        Err(e) => {
            // Nothing was delivered: the quote stays open for a corrected post.
            state.quotes.abandon(&env.ping_id, quote);
            return Err(e);
        }
    };
    // The consent the vertical requires travels with the lead to the buyer: a post
    // without it is refused, and the quote stays open for one that carries it.
    let missing: Vec<&str> = cfg.verticals[vertical]
        .consents_missing(&env.consent)
        .collect();
    if !missing.is_empty() {
        let e = consent_refusal(&missing, &cfg.verticals[vertical].name);
        state.quotes.abandon(&env.ping_id, quote);
        return Err(e);
    }
    let changed = quote.lead.ping_field_changes(&quote.schema, &lead, schema);
    let answer = if !changed.is_empty() {
        let refusal = refuse_before_delivery(BeforeDelivery::Mismatch, quote.reservation.clone());
        let now = state.clock.now_ms();
        let changed: Vec<String> = changed.iter().map(|s| s.to_string()).collect();
        // The record keeps the changed fields, so a start answers a repeat the same.
        let mut a = refuse(state, rt, refusal, &quote.ping_id, &changed, now).await;
        a.changed_fields = changed;
        a
    } else {
        // The ping's dedup keys with the posted lead's own, claimed while it is delivered:
        // a consumer sold within the window is a duplicate (the hold is released), one
        // being posted now waits (the quote stays open).
        let v = &cfg.verticals[vertical];
        let mut own = state
            .fingerprint
            .consumer_keys(
                v,
                cfg.suppression.is_on(),
                &std::collections::BTreeMap::new(),
                Some(&lead),
            )
            .unwrap_or_default();
        if quote.test {
            // A test lead is checked against the suppression list, never de-duplicated.
            own.digests.clear();
        }
        // The posted consumer on the suppression list (as it is now): nothing is
        // delivered and the hold is released.
        if cfg.suppression.lists_any(&own.hashes) {
            let refusal =
                refuse_before_delivery(BeforeDelivery::Suppressed, quote.reservation.clone());
            let now = state.clock.now_ms();
            return Ok(refuse_quote(state, rt, refusal, &quote.ping_id, now).await);
        }
        let mut keys = quote.dedup.clone();
        keys.extend(own.digests);
        keys.sort_unstable();
        keys.dedup();
        let mut claim = match DedupClaim::begin(state, v, seller_key, keys) {
            Ok(c) => c,
            Err(Seen::Posting) => {
                state.quotes.abandon(&env.ping_id, quote);
                return Err(dedup_in_flight());
            }
            Err(Seen::Sold) => {
                let refusal =
                    refuse_before_delivery(BeforeDelivery::Duplicate, quote.reservation.clone());
                let now = state.clock.now_ms();
                return Ok(refuse_quote(state, rt, refusal, &quote.ping_id, now).await);
            }
        };
        let d = Delivery {
            auction_id: &quote.auction_id,
            ping_id: &quote.ping_id,
            seller,
            vertical,
            lead: &lead,
            consent: &env.consent,
            test: quote.test,
            quoted: quote.price,
            // The quote keeps the currency it was made in (a reload may have changed the
            // vertical's since): the buyer bid and the seller was quoted in it.
            currency: &quote.currency,
            ranked: quote.ranked.clone(),
            reservation: quote.reservation.clone(),
            auction_started_ms: quote.auctioned_at,
            guard_epoch: quote.guard_epoch,
            from_quote: true,
            idempotency,
            dedup: &claim.keys,
        };
        match deliver(state, rt, d).await {
            Ok(a) => {
                if a.status == PostStatus::Sold {
                    claim.sold();
                }
                a
            }
            Err(e) => {
                // The reservation was committed or released inside; the post's outcome is
                // unknown to the seller, so the ping stays in flight-safe Done with an error.
                tracing::error!(error = %e, "sale not recorded");
                let mut a = PostAnswer::status_only(PostStatus::Unsold, Some("ledger_unavailable"));
                a.ping_id = Some(quote.ping_id.to_string());
                state.quotes.finish(&quote.ping_id, a, state.clock.now_ms());
                return Err(match e {
                    // The ledger failed before the lead left: nothing was delivered.
                    DeliveryError::Unavailable => ledger_unavailable(),
                    // A buyer accepted but the sale could not be recorded (never `sold`),
                    // or the lead reached a buyer that did not accept (yet): the answer
                    // its keyed retry gets after the restart, in the same words (rounds
                    // 94a, 110a). The ledger's own words (a path, an OS error) are the
                    // log's.
                    DeliveryError::Ledger(_) | DeliveryError::OutcomeUnknown(_) => {
                        crate::recovery::outcome_unknown()
                    }
                });
            }
        }
    };
    state
        .quotes
        .finish(&quote.ping_id, answer.clone(), state.clock.now_ms());
    Ok(post_answer(state, &answer))
}

/// A post without consent keys its vertical requires (`consent_required`): 400
/// `invalid_request` naming every such key at once (operators' names, never the
/// seller's values; black-box round 100b: only the first was named).
fn consent_refusal(keys: &[&str], vertical: &str) -> ApiError {
    ApiError::from_fields(
        ErrorCode::InvalidRequest,
        keys.iter()
            .map(|key| {
                proto::error::FieldProblem::new(
                    format!("consent.{key}"),
                    format!(
                        "is required by vertical {vertical} (consent_required): the post must carry it, non-blank; the quote stays open"
                    ),
                )
            })
            .collect(),
    )
}

/// Carries out the core's refusal of a post before delivery ([`refuse_before_delivery`]):
/// drops the quote's hold as it says, at `now`, and returns its answer for `ping_id`.
async fn refuse(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    refusal: Refusal,
    ping_id: &str,
    changed_fields: &[String],
    now: crate::core::UnixMs,
) -> PostAnswer {
    let answer = refusal.answer(ping_id);
    if let Some(rec) = refusal.holdless_end(rt.generation, ping_id, changed_fields, now) {
        effects::record(state, &rec).await;
    }
    if let Some((r, why)) = refusal.release {
        release_hold(state, rt, r, Some(ping_id), why, changed_fields, now).await;
    }
    answer
}

/// [`refuse`] for a quote taken for its post: the book remembers the answer for a
/// repeat, and the answer is returned as the `200` body.
async fn refuse_quote(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    refusal: Refusal,
    ping_id: &str,
    now: crate::core::UnixMs,
) -> Vec<u8> {
    let a = refuse(state, rt, refusal, ping_id, &[], now).await;
    state.quotes.finish(ping_id, a.clone(), now);
    post_answer(state, &a)
}

/// Drops a quote's hold without a sale through the core's settlement (`drop_hold`: the cap
/// operation and its record): expired when `reason` is `None`, else released for it.
async fn release_hold(
    state: &Arc<AppState>,
    rt: &Arc<Runtime>,
    r: crate::core::caps::Reservation,
    ping_id: Option<&str>,
    reason: Option<&'static str>,
    changed_fields: &[String],
    now: crate::core::UnixMs,
) {
    let former = state.ids.buyer_id(r.buyer);
    let mut drop = drop_hold(
        &rt.config,
        rt.generation,
        r,
        ping_id,
        reason,
        former.as_deref(),
        now,
    );
    if let crate::core::effect::Effect::Record(crate::core::record::Record::QuoteReleased(h)) =
        &mut drop[1]
    {
        h.changed_fields = changed_fields;
    }
    // Only durable records can fail, and hold records are not durable.
    let _ = effects::execute(state, rt, drop.into_iter()).await;
}

/// A post's (or direct post's) answer as JSON, counted in `pingpost_posts_total` by status:
/// every `200` answer of `/v1/post` and `/v1/leads` goes through here, a repeated post of a
/// finished `ping_id` included (only idempotency-key replays are not counted).
fn post_answer(state: &AppState, answer: &PostAnswer) -> Vec<u8> {
    state
        .metrics
        .posts
        .with_label_values(&[answer.status.as_str()])
        .inc();
    to_json(answer)
}
