//! # bidder-sdk: what a pingpost buyer implements
//!
//! A buyer implements [`Bidder`] (`ping` answers a bid or a pass, `post` accepts or
//! rejects a lead) and hands it to [`serve`], which speaks the buyer protocol (the
//! pingpost repository's docs/API.md, "Buyer protocol") over HTTP/1.1 (keep-alive) and
//! HTTP/2 cleartext (prior knowledge) on one port, or over TLS with
//! [`ServeOptions::tls`]. [`testkit`] signs and sends pings and posts so a buyer can test
//! its own bidder; [`examples`] holds two bidders the exchange's demo and tests use.
//!
//! The secret must stand for at least [`proto::signing::SECRET_BYTES_MIN`] (16) key
//! bytes, as the exchange requires of a buyer's: [`serve`] refuses a shorter one. The
//! SDK keeps a bidder's answers to what the exchange reads as meant: a bid under 0 or
//! over 1e9 is refused (`500`, [`Refusal::InvalidBid`]), a `bid_id` over 128 characters
//! is left out (the bid goes without it, as the exchange would drop it), and an answer
//! over 64 KiB is refused ([`Refusal::ReplyTooLarge`]). A message's `lead` is a map
//! sorted by field name, whatever the order on the wire (schema order).
//!
//! ```no_run
//! use std::sync::Arc;
//! use bidder_sdk::{serve, BidReply, Bidder, Micros, PingMessage, PostMessage, PostReply, Secret, ServeOptions};
//!
//! struct TexasOnly;
//!
//! impl Bidder for TexasOnly {
//!     async fn ping(&self, ping: PingMessage) -> BidReply {
//!         match ping.lead.get("state").and_then(|s| s.as_str()) {
//!             Some("TX") => BidReply::Bid { bid: Micros(12_500_000), bid_id: None, expires_in_ms: Some(60_000) },
//!             _ => BidReply::NoBid { no_bid: "outside_criteria".into() },
//!         }
//!     }
//!     async fn post(&self, _post: PostMessage) -> PostReply {
//!         PostReply { accepted: true, buyer_lead_id: Some("crm-1".into()), reason: None }
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9101").await?;
//! let options = ServeOptions::new(Secret::new(&std::env::var("BUYER_SECRET")?)?);
//! serve(listener, Arc::new(TexasOnly), options, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! ## What the SDK guarantees
//! Your `ping` and `post` only ever see requests that passed every check below; anything
//! else is answered with the contract's JSON error body and never reaches your code.
//! - **Routing**: only `POST` to [`ServeOptions::ping_path`] / [`ServeOptions::post_path`];
//!   other paths get `404 not_found`, other methods `405 method_not_allowed`.
//! - **Size**: a body over [`ServeOptions::body_bytes_max`] (64 KiB by default) gets `413`,
//!   refused from its `Content-Length` without reading it, or cut off by a limited read
//!   when it has none. The body must arrive within [`ServeOptions::body_read_timeout_ms`].
//! - **Host**: an HTTP/1.1 request needs exactly one `Host`, a host and an optional port,
//!   and an HTTP/2 request's `host`, if any, must name its `:authority`; otherwise `400
//!   invalid_request`, before anything else is read, and the connection closes (RFC
//!   9112 3.2; the exchange's own rule, `listener::host_problem`).
//! - **Signatures** (Standard Webhooks): `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature` are checked against the raw body with your secret, and the
//!   timestamp must be within 300 s of your clock; otherwise `401 unauthorized` (an
//!   empty `webhook-id` counts as missing). A signed request whose `webhook-id` was
//!   already taken while its timestamp is within those 300 s is a replay: `409
//!   conflict`, before your bidder sees it (SECURITY.md N6). The ids are remembered in
//!   memory only (up to [`ServeOptions::replay_ids_max`], the oldest forgotten first;
//!   a large bound is kept in up to 64 shards by hash, each forgetting its own oldest, so
//!   that a growing memory never stalls every request while it is rehashed):
//!   across a restart of your server, or past that bound, reject a second post for the
//!   same `auction_id` in your bidder as well.
//! - **Parsing**: the body must parse (simd-json) into [`PingMessage`] / [`PostMessage`];
//!   otherwise `400 invalid_request`. A `Content-Type` other than JSON, more than one,
//!   a `charset` other than UTF-8, or a `Content-Encoding` other than `identity` gets
//!   `415` (the exchange's own rule, `listener::json_headers_problem`); a request with no
//!   `Content-Type` at all is read as JSON (its signature already says who sent it).
//! - **Robustness**: no input makes the server panic; a panic inside your bidder becomes
//!   `500 internal` for that one request. Connections are bounded
//!   ([`ServeOptions::connections_max`], optionally per client IP) and served through the
//!   shared accept loop ([`listener`], the same as the exchange's): a connection must
//!   deliver a complete request head within [`ServeOptions::header_read_timeout_ms`] of
//!   being accepted (one byte and silence, or a bare HTTP/2 preface, is closed), idle
//!   connections are closed after [`ServeOptions::idle_timeout_ms`], HTTP/2 gets keep-alive
//!   PINGs, and a head over [`ServeOptions::header_bytes_max`] or
//!   [`ServeOptions::headers_max`] gets `431 headers_too_large`. Shutdown is graceful: it
//!   stops accepting, lets in-flight requests finish (up to
//!   [`ServeOptions::drain_timeout_ms`]), then returns.
//! - **TLS**: set [`ServeOptions::tls`] ([`TlsAcceptor::from_pem_files`]) to serve HTTPS
//!   with ALPN `h2` and `http/1.1`; the exchange verifies your certificate (WebPKI roots, or
//!   its `server.buyer_ca_path`).
//!
//! Replies are written as `200 application/json`, a pass included
//! (`{"no_bid": "..."}`), which the exchange reads like an empty `204`. Simulations and
//! fault-injection tests can take over the whole ping answer with [`Bidder::answer_ping`]
//! (a raw status and body, or no answer at all).

pub mod connect;
pub mod examples;
pub mod listener;
mod server;
pub mod testkit;

use std::future::Future;

use bytes::Bytes;

pub use listener::TlsAcceptor;
pub use proto;
pub use proto::buyer::{BidReply, PingMessage, PostMessage, PostReply};
pub use proto::signing::Secret;
pub use proto::Micros;
pub use server::{
    serve, spawn, spawn_on, Refusal, ServeOptions, ServerHandle, BODY_BYTES_MAX_DEFAULT,
    BODY_READ_TIMEOUT_MS_DEFAULT, CONNECTIONS_MAX_DEFAULT, DRAIN_TIMEOUT_MS_DEFAULT,
    PING_PATH_DEFAULT, POST_PATH_DEFAULT,
};

/// What a buyer implements: answer pings with a bid or a pass, and posts with an accept or
/// a reject.
///
/// The two required methods are all most bidders need. Both run for requests that have
/// already passed the SDK's checks (route, size, signature, parsing); see the crate docs.
///
/// Expected outcomes are values, not errors: a pass is [`BidReply::NoBid`], a rejection is
/// `PostReply { accepted: false, .. }`. The exchange waits at most `tmax_ms` (in the ping)
/// for an answer, so `ping` should not do slow I/O on its critical path.
///
/// `async fn` works in implementations; the returned futures must be `Send` because the
/// server runs them on a multi-threaded runtime.
pub trait Bidder: Send + Sync + 'static {
    /// Quotes a lead (no PII): a price with [`BidReply::Bid`], or a pass with
    /// [`BidReply::NoBid`] and a short reason such as `"outside_criteria"`.
    fn ping(&self, ping: PingMessage) -> impl Future<Output = BidReply> + Send;

    /// Receives the full lead this bidder won: accept it (optionally with the buyer's own
    /// id for it) or reject it with a reason such as `"duplicate"`.
    fn post(&self, post: PostMessage) -> impl Future<Output = PostReply> + Send;

    /// Optional hook: called when the SDK answers a request with an error instead of
    /// calling `ping` or `post` (bad signature, oversize or malformed body, unknown route,
    /// or a panic in this bidder). Useful for counting them: a run of
    /// [`Refusal::Unauthorized`] usually means the secret configured at the exchange and
    /// here differ. Called on the request's task, so it must be quick. Does nothing by
    /// default (the SDK already logs refusals at `debug` through `tracing`).
    fn on_refused(&self, refusal: &Refusal) {
        let _ = refusal;
    }

    /// Optional hook for simulations and fault-injection tests: decides the whole HTTP
    /// answer to a ping, not just the bid. The server calls this for every ping that passed
    /// its checks; the default calls [`ping`](Bidder::ping) and answers its reply as JSON,
    /// so a real bidder never needs it. Override it to make a buyer misbehave on purpose:
    /// answer a 500, a body that is not JSON, or never answer at all
    /// ([`PingAnswer::Hang`]). A panic here is caught like one in `ping`.
    fn answer_ping(&self, ping: PingMessage) -> impl Future<Output = PingAnswer> + Send {
        async move { PingAnswer::Reply(self.ping(ping).await) }
    }
}

/// The HTTP answer to a ping, as chosen by [`Bidder::answer_ping`]: the hook for
/// simulated buyers and fault-injection tests. Real bidders implement `ping` and never
/// see it.
#[derive(Debug, Clone, PartialEq)]
pub enum PingAnswer {
    /// The bidder's reply, written as `200 application/json` (what the default does).
    Reply(BidReply),
    /// Exactly this status, `Content-Type` and body, unchecked: for answers the exchange
    /// must treat as invalid (a 500, a 200 that is not JSON). A status outside 100..=999
    /// is sent as 500; an empty or invalid `content_type` sends no `Content-Type` header.
    Raw {
        /// The HTTP status code.
        status: u16,
        /// The `Content-Type` header value; empty for none.
        content_type: String,
        /// The body, sent as is.
        body: Bytes,
    },
    /// No answer: the request is held open until the client gives up (closes the
    /// connection or resets the stream) or the server shuts down, which then drops it
    /// without an answer. Simulates a buyer that hangs.
    Hang,
}
