//! What the state machines ask the shell to do. The shell carries every effect out in one
//! function, in order, and never decides anything while doing so.

use proto::seller::NoBidReason;

use super::record::{BuyerOutcome, Record};
use super::settlement::CapOp;
use crate::config::BuyerIdx;

/// What became of one post attempt at one buyer (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostKind {
    Accepted,
    Rejected,
    Timeout,
    Error,
    Invalid,
    /// The fallback's cap was full: not delivered.
    Capped,
    /// The buyer had too many deliveries unanswered after their timeout: not delivered.
    Busy,
}

impl PostKind {
    /// The label (and the `outcome` of a post attempt record).
    pub fn as_str(self) -> &'static str {
        match self {
            PostKind::Accepted => "accepted",
            PostKind::Rejected => "rejected",
            PostKind::Timeout => "timeout",
            PostKind::Error => "error",
            PostKind::Invalid => "invalid",
            PostKind::Capped => "capped",
            PostKind::Busy => "busy",
        }
    }
}

/// One thing for the shell to do.
///
/// The `Record` variant is the large one (an auction record); effects live a few
/// microseconds in one auction's small vector, so boxing it would cost an allocation per
/// record for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Effect<'a> {
    /// Settle a reservation (through [`Settlement::settle`](super::settlement::Settlement::settle)).
    Cap(CapOp),
    /// Append a record to the ledger (durable when [`Record::is_durable`]).
    Record(Record<'a>),
    /// A buyer's ping outcome: its metric, its latency (`took_us`) and, when it was pinged,
    /// its breaker (`BuyerOutcome::breaker_ok`).
    Ping {
        buyer: BuyerIdx,
        outcome: BuyerOutcome,
        took_us: Option<u64>,
        /// What the buyer's breaker learns: `Some(ok)` when it was pinged.
        breaker: Option<bool>,
    },
    /// Buyers of the vertical failed a filter: how many per reason, in
    /// [`SkipReason::ALL`](super::eligibility::SkipReason::ALL) order (one metric per
    /// reason, not per buyer).
    Skipped { counts: [u32; 5] },
    /// Eligible buyers not pinged for the fan-out limit (`server.buyers_per_auction_max`):
    /// one count, not a metric per buyer.
    FanoutLimited { count: u32 },
    /// The auction ended `late_us` µs after its vertical's `auction_deadline_ms`, counted
    /// from the request's arrival (`took_us`): the seller's answer is late (a host whose
    /// cores are busy runs the timers late: black-box round 219a). Counted.
    DeadlineOverrun { late_us: u64 },
    /// A buyer answered after its bound: counted, never used.
    LateAnswer { buyer: BuyerIdx },
    /// A buyer's bid ranked above the winner's but its cap or budget had no room for it
    /// when the award tried to reserve it (`capped_at_award`): counted, so a buyer that
    /// keeps bidding past what its budget has left shows (black-box round 38).
    CappedAtAward { buyer: BuyerIdx },
    /// A post attempt's outcome at a buyer (metric, cold-start rates, drift guard), with
    /// the model's estimate of the chance it is kept when the award had one.
    Post {
        buyer: BuyerIdx,
        outcome: PostKind,
        p_model_ppm: Option<u32>,
        /// Whether the outcome teaches the buyer's cold-start rates and drift guard: a
        /// real lead (not a test lead) that reached the buyer (not capped, not unsent).
        /// Exactly the posts a restart's ledger replay counts (`recovery::Scan`), so the
        /// live rates and the rebuilt ones agree.
        teaches: bool,
        /// When (the time its record carries, so the streak a restart rebuilds from the
        /// ledger is the live one to the millisecond).
        at: crate::UnixMs,
        /// The lead: a return names it, and takes back from the drift guard exactly what
        /// the guard counted of it (black-box round 77a: matched by the sale's
        /// millisecond, the return of a lead the guard never counted took off another
        /// lead sold in the same millisecond).
        lead_id: &'a str,
        /// The guard epoch of the models that made `p_model_ppm`, as the shell gave it in
        /// [`crate::post::PostParams::guard_epoch`] (opaque to the core): the drift guard
        /// counts the estimate only while those models still serve (black-box round 78a:
        /// judged by the auction's start against the swap's millisecond, an auction in
        /// the swap's own millisecond was counted in neither guard).
        guard_epoch: u64,
    },
    /// An auction ended: `None` is a bid (metric).
    Auction { no_bid: Option<NoBidReason> },
}
