//! The ledger's one record type: every line of the ledger is a [`Record`], serialized as
//! JSON with its kind in `type`, the record format version in `v` and the runtime
//! generation (which configuration and models decided it) in `generation`.
//!
//! Owns: what an auction, a post attempt, a sale, an unsold post and a quote's hold on a
//! buyer's caps (reserved, released, expired) record, so an auction can be replayed and
//! explained: every buyer considered with its outcome (skipped and why, bid with its
//! price, no bid, bid above the ceiling, late, invalid), every post attempt, and timings.
//!
//! Never: carries PII. Records name leads, pings and auctions by id and carry only
//! prices, buyers, sellers, reasons and outcomes.

use serde::{Serialize, Serializer};

use super::caps::Windows;
use super::UnixMs;
use crate::config::{BuyerIdx, Config};

/// The record format version (`v`). 2: one tagged type with `v` and `generation`; the
/// `bid_above_max` buyer outcome; quote hold records. 3: an auction's filter skips are a
/// bounded `skipped` summary, no longer one `buyers` line each. 4: the durable
/// `post_sent` record written before a lead leaves for a buyer; a sale carries the cap
/// `windows` it counts in. 5: AI routing: an auction carries its features (`x`, each
/// bid line's `bx`), each bid's realization probability (`p_ppm`), the model versions
/// and whether it explored; `disposition` and `refund` records.
pub const RECORD_VERSION: u16 = 5;

/// RFC 3339 UTC with milliseconds, as the ledger has always written times.
pub fn rfc3339(unix_ms: UnixMs) -> String {
    match rfc3339_short(unix_ms) {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => rfc3339_chrono(unix_ms),
    }
}

/// chrono's RFC 3339 with milliseconds (`""` past its range).
fn rfc3339_chrono(unix_ms: UnixMs) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time in the years 0000-9999, the bytes chrono
/// writes, without its formatting machinery or an allocation (every ledger record has
/// one); `None` outside those years.
fn rfc3339_short(unix_ms: UnixMs) -> Option<[u8; 24]> {
    // Days to a civil date: Howard Hinnant's `civil_from_days`.
    let days = unix_ms.div_euclid(86_400_000);
    let ms_of_day = unix_ms.rem_euclid(86_400_000);
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, ms_of_day / 3_600_000);
    put(14, 2, ms_of_day / 60_000 % 60);
    put(17, 2, ms_of_day / 1_000 % 60);
    put(20, 3, ms_of_day % 1_000);
    Some(out)
}

/// Appends [`rfc3339`]'s text for `unix_ms` to `out` (the ledger's hand-written lines).
pub fn write_rfc3339(unix_ms: UnixMs, out: &mut Vec<u8>) {
    match rfc3339_short(unix_ms) {
        Some(b) => out.extend_from_slice(&b),
        None => out.extend_from_slice(rfc3339_chrono(unix_ms).as_bytes()),
    }
}

fn ser_rfc3339<S: Serializer>(at: &UnixMs, s: S) -> Result<S::Ok, S::Error> {
    match rfc3339_short(*at) {
        // Always ASCII digits and separators.
        Some(b) => s.serialize_str(std::str::from_utf8(&b).unwrap_or_default()),
        None => s.serialize_str(&rfc3339_chrono(*at)),
    }
}

/// What every record starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Head {
    /// [`RECORD_VERSION`].
    pub v: u16,
    /// The runtime generation (configuration and models) that made the decision.
    pub generation: u64,
    /// When it happened (written as RFC 3339).
    #[serde(serialize_with = "ser_rfc3339")]
    pub at: UnixMs,
}

impl Head {
    /// A head at `at` for `generation`.
    pub fn new(generation: u64, at: UnixMs) -> Head {
        Head {
            v: RECORD_VERSION,
            generation,
            at,
        }
    }
}

/// One ledger line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// One auction: who was considered, what each did, who won.
    Auction(AuctionRecord<'a>),
    /// A lead is about to leave for a buyer (durable before the request starts).
    PostSent(PostSentRecord<'a>),
    /// One delivery attempt of a post that did not sell (or was skipped).
    PostAttempt(PostAttemptRecord<'a>),
    /// A lead sold (durable before the seller hears `sold`).
    Sale(SaleRecord<'a>),
    /// A post that sold to nobody.
    Unsold(UnsoldRecord<'a>),
    /// A firm quote was answered: what a post of it needs after a restart.
    QuoteOpened(QuoteOpenedRecord<'a>),
    /// A firm quote now holds a buyer's cap.
    QuoteReserved(QuoteHoldRecord<'a>),
    /// A quote's hold was dropped without a sale (post failed, mismatch, refused).
    QuoteReleased(QuoteHoldRecord<'a>),
    /// A quote expired unposted and its hold was dropped.
    QuoteExpired(QuoteHoldRecord<'a>),
    /// A durable marker: everything before it is on disk (shutdown, tests).
    Flush(FlushRecord<'a>),
    /// Continuous learning compared a retrained challenger with the champion.
    ModelDecision(ModelDecisionRecord<'a>),
    /// What became of a sold lead, as its buyer reported it (durable).
    Disposition(DispositionRecord<'a>),
    /// A `returned` lead inside the buyer's return window: the buyer is refunded and the
    /// seller's payout clawed back (durable).
    Refund(RefundRecord<'a>),
}

/// `type: "model_decision"`: a challenger model set was trained and compared with the
/// serving champion on the newest held-out window; `promoted` says whether it now serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelDecisionRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub vertical: &'a str,
    pub challenger: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub champion: Option<&'a str>,
    pub promoted: bool,
    /// The comparison, in words (log losses on the same held-out examples).
    pub reason: &'a str,
}

/// `type: "flush"`: a durable marker. Written at a shutdown, once every buyer still
/// answering a post late was heard out; and with `start` when the exchange starts
/// (after replaying the ledger, before serving), so a run that ended without a shutdown
/// (a crash) is told from the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FlushRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub start: bool,
    /// On a start's: the id of the key the run fingerprints and de-duplicates with (a
    /// keyed hash of the key, which reveals nothing of it), so the next start can tell a
    /// key swapped between runs (black-box round 62c: another valid key was taken in
    /// silence, and consumers sold within the window were sold again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
}

/// Where records go: the ledger's directory of JSON-lines segments today. Synchronous:
/// `append` hands the record over and returns at once; the shell waits on the receipt (a
/// durable record's receipt resolves once it is on disk).
pub trait LedgerSink {
    /// What the caller waits on.
    type Receipt;
    /// Hands `record` to the ledger (durable when [`Record::is_durable`]).
    fn append(&self, record: &Record<'_>) -> Self::Receipt;
}

impl Record<'_> {
    /// The `type` written for this record.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Auction(_) => "auction",
            Record::PostSent(_) => "post_sent",
            Record::PostAttempt(_) => "post_attempt",
            Record::Sale(_) => "sale",
            Record::Unsold(_) => "unsold",
            Record::QuoteOpened(_) => "quote_opened",
            Record::QuoteReserved(_) => "quote_reserved",
            Record::QuoteReleased(_) => "quote_released",
            Record::QuoteExpired(_) => "quote_expired",
            Record::Flush(_) => "flush",
            Record::ModelDecision(_) => "model_decision",
            Record::Disposition(_) => "disposition",
            Record::Refund(_) => "refund",
        }
    }

    /// Must the record be on disk before the exchange answers (or, for `post_sent`,
    /// before the lead leaves)? A sale and an unsold post, both outcomes a seller is
    /// told; the auction of a direct post that found no buyer, whose answer (`unsold`,
    /// `duplicate`, `suppressed`) it is, and from which a start rebuilds a keyed retry's
    /// answer (black-box round 55a: a retry after a crash ran a second auction); a
    /// delivery about to start; a flush marker.
    pub fn is_durable(&self) -> bool {
        matches!(
            self,
            Record::Sale(_)
                | Record::Unsold(_)
                | Record::Flush(_)
                | Record::PostSent(_)
                | Record::ModelDecision(_)
                | Record::Disposition(_)
                | Record::Refund(_)
        ) || matches!(self, Record::PostAttempt(a) if a.outcome == LATE_ACCEPT)
            || matches!(self, Record::Auction(a) if a.direct && a.winner.is_none())
    }
}

/// What happened to one buyer in one auction (the `outcome` of its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuyerOutcome {
    /// Its breaker is open.
    SkippedBreaker,
    /// It holds its `pings_in_flight_max` pings in flight: not pinged (black-box round
    /// 161b: one seller's bursts timed a shared buyer out and opened its breaker for
    /// every seller).
    SkippedBusy,
    /// No answer within its bound (or no time left to ping it).
    Timeout,
    /// A valid bid.
    Bid,
    /// A pass.
    NoBid,
    /// A bid above the vertical's `bid_max`: treated as a pass.
    BidAboveMax,
    /// A bid whose own `expires_in_ms` had run out by the award: it cannot back a firm
    /// quote, so it neither wins nor stands as a fallback.
    BidExpired,
    /// Not a valid answer (`detail` says why).
    Invalid,
    /// The call failed (connect, transport).
    Error,
    /// A fixed-price buyer's standing price.
    FixedPrice,
    /// Won the ranking but its cap was taken by another auction in between.
    CappedAtAward,
}

impl BuyerOutcome {
    /// The `outcome` written in a line (a skip for an open breaker was `skipped`, with the
    /// reason in `detail`, until such skips moved to the record's bounded `breaker_open`;
    /// buyers past the fan-out limit are counted in `fanout_limited`, not given a line).
    pub fn as_str(self) -> &'static str {
        match self {
            BuyerOutcome::SkippedBreaker | BuyerOutcome::SkippedBusy => "skipped",
            BuyerOutcome::Timeout => "timeout",
            BuyerOutcome::Bid => "bid",
            BuyerOutcome::NoBid => "no_bid",
            BuyerOutcome::BidAboveMax => "bid_above_max",
            BuyerOutcome::BidExpired => "bid_expired",
            BuyerOutcome::Invalid => "invalid",
            BuyerOutcome::Error => "error",
            BuyerOutcome::FixedPrice => "fixed_price",
            BuyerOutcome::CappedAtAward => "capped_at_award",
        }
    }

    /// Was this buyer pinged and did it answer in time (bid or not)? `None`: it was not
    /// pinged, so its breaker learns nothing.
    pub fn breaker_ok(self) -> Option<bool> {
        match self {
            BuyerOutcome::Bid
            | BuyerOutcome::NoBid
            | BuyerOutcome::BidAboveMax
            | BuyerOutcome::BidExpired => Some(true),
            BuyerOutcome::Timeout | BuyerOutcome::Invalid | BuyerOutcome::Error => Some(false),
            _ => None,
        }
    }
}

impl Serialize for BuyerOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One buyer's line in an auction record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuyerLine<'a> {
    /// The buyer's position in the configuration (not written).
    #[serde(skip)]
    pub idx: BuyerIdx,
    /// The buyer's id.
    pub buyer: &'a str,
    pub outcome: BuyerOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bid_micros: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
    /// A pass's reason as the buyer gave it (`{"no_bid": "outside_criteria"}`), when it
    /// is a code (`proto::buyer::reason_code`: short, no personal data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the buyer took to answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub took_us: Option<u64>,
    /// The bid's probability of realization (accepted and kept), in parts per million,
    /// as the award used it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_ppm: Option<u32>,
    /// The estimate `p_ppm` came from (the model's, or the cold-start rates'), when the
    /// award used another figure: scaled by the drift guard, drawn in an exploring
    /// auction, raised to the 1 ppm floor or set to 0 for a paused buyer (black-box round
    /// 62a: a guard-scaled `p_ppm` could not be told from an estimate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_est_ppm: Option<u32>,
    /// The buyer features the bid was ranked with (a missing value is `null`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bx: Option<Vec<f32>>,
}

/// The buyers that failed a filter in one auction, bounded whatever their number:
/// `{"total": 9999, "by_reason": {"state": 9990, "zip": 9}, "first": [{"buyer": "b1",
/// "reason": "state"}, ...]}`. `first` names the first
/// [`SKIP_NAMES_MAX`](crate::eligibility::SKIP_NAMES_MAX) in configuration order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedRecord<'a> {
    pub total: u32,
    /// Reasons with a non-zero count, in filter order.
    pub by_reason: ReasonCounts,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first: Vec<SkippedBuyer<'a>>,
}

/// Eligible buyers an auction did not ping, for its fan-out limit or an open breaker:
/// how many, and the first few by id (a bounded summary, not a line each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BoundedBuyersRecord<'a> {
    pub total: u32,
    /// The first [`SKIP_NAMES_MAX`](crate::eligibility::SKIP_NAMES_MAX), by id.
    pub first: Vec<&'a str>,
}

impl<'a> BoundedBuyersRecord<'a> {
    /// The record of a summary (count, first buyers by index), `None` when it is empty.
    pub fn of(
        summary: &(u32, Vec<BuyerIdx>),
        cfg: &'a crate::config::Config,
    ) -> Option<BoundedBuyersRecord<'a>> {
        (summary.0 > 0).then(|| BoundedBuyersRecord {
            total: summary.0,
            first: summary
                .1
                .iter()
                .filter_map(|&b| cfg.buyers.get(b).map(|x| x.id.as_str()))
                .collect(),
        })
    }
}

/// One named skipped buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedBuyer<'a> {
    pub buyer: &'a str,
    pub reason: &'static str,
}

/// Counts per [`SkipReason`](crate::eligibility::SkipReason), written as a map of the
/// non-zero ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReasonCounts(pub [u32; 5]);

impl Serialize for ReasonCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let nonzero = self.0.iter().filter(|c| **c > 0).count();
        let mut m = s.serialize_map(Some(nonzero))?;
        for (reason, count) in crate::eligibility::SkipReason::ALL.iter().zip(self.0) {
            if count > 0 {
                m.serialize_entry(reason.as_str(), &count)?;
            }
        }
        m.end()
    }
}

impl<'a> SkippedRecord<'a> {
    /// The record of `summary`, with buyer ids from `cfg`.
    pub fn new(summary: &crate::eligibility::SkipSummary, cfg: &'a Config) -> SkippedRecord<'a> {
        SkippedRecord {
            total: summary.total(),
            by_reason: ReasonCounts(summary.counts),
            first: summary
                .first
                .iter()
                .map(|&(idx, reason)| SkippedBuyer {
                    buyer: cfg.buyers.get(idx).map_or("", |b| b.id.as_str()),
                    reason: reason.as_str(),
                })
                .collect(),
        }
    }
}

/// `type: "auction"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuctionRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub auction_id: &'a str,
    pub ping_id: &'a str,
    pub seller: &'a str,
    pub vertical: &'a str,
    /// The vertical's currency when the auction ran: its bids and quote are in it (a
    /// reload may change the vertical's currency; finance counts the auction in this one).
    pub currency: &'a str,
    pub test: bool,
    pub direct: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    pub reserve_micros: i64,
    /// The buyers of the vertical that failed a filter, bounded: counts per reason and
    /// the first few by name.
    pub skipped: SkippedRecord<'a>,
    /// Eligible buyers not pinged for the fan-out limit (`server.buyers_per_auction_max`),
    /// bounded like `skipped`: how many, and the first few (configuration order) by id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout_limited: Option<BoundedBuyersRecord<'a>>,
    /// Eligible buyers skipped for an open breaker, bounded like `fanout_limited` (ledgers
    /// written before 2026-12-05 have a `skipped`/`breaker_open` line each instead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker_open: Option<BoundedBuyersRecord<'a>>,
    /// Eligible buyers skipped because they held their `pings_in_flight_max` pings in
    /// flight, bounded like `fanout_limited` (since 2026-12-06).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pings_in_flight_full: Option<BoundedBuyersRecord<'a>>,
    /// Every other buyer of the vertical: the ones not pinged for want of time, then
    /// pinged ones, fixed-price ones and award-time cap refusals.
    pub buyers: Vec<BuyerLine<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bid_micros: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seller_price_micros: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_bid: Option<&'static str>,
    /// From the request's arrival to the award.
    pub took_us: u64,
    /// The vertical's feature encoding version, when it declares features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features_version: Option<u32>,
    /// The lead and context features the models saw (a missing value is `null`).
    #[serde(skip_serializing_if = "<[f32]>::is_empty")]
    pub x: &'a [f32],
    /// The model versions that served the auction.
    #[serde(skip_serializing_if = "crate::auction::ModelVersions::is_empty")]
    pub models: crate::auction::ModelVersions<'a>,
    /// The auction explored: bids were ranked by Thompson draws of the buyers' rates.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub explore: bool,
    /// A keyed hash of the lead as pinged (HMAC-SHA256, 32 hex digits): the same lead
    /// has the same fingerprint, and it reveals nothing of the lead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_fingerprint: Option<&'a str>,
    /// A keyed ping's `Idempotency-Key`, as hex SHA-256 (never the key itself), and its
    /// body's: recovery restores the key with the ping's answer (rebuilt from this record
    /// and the ping's `quote_opened`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<&'a str>,
}

/// `type: "post_sent"`: written and fsynced before the lead leaves for `buyer`, so a
/// crash after it can never hide a delivery. Its outcome is a later `sale` or
/// `post_attempt` with the same `lead_id` and `attempt`; one with neither (the exchange
/// died mid-delivery) counts against the buyer's caps at the next start and is listed as
/// "delivered, outcome unknown".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostSentRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub lead_id: &'a str,
    pub auction_id: &'a str,
    pub ping_id: &'a str,
    pub seller: &'a str,
    pub buyer: &'a str,
    /// 0 is the winner, then fallbacks in order.
    pub attempt: usize,
    /// The buyer's bid: what it pays on a sale (the cap hold's money).
    pub price_micros: i64,
    pub test: bool,
    /// The cap windows the lead counts in (the reservation's); absent for a test lead,
    /// which counts in no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Windows>,
    /// The buyer's time zone that `windows` are in (absent for a test lead, in records
    /// before it was written, and when the windows are not of the buyer's zone now): a
    /// start that finds the buyer in another zone holds the lead to this zone's windows
    /// still running, even where their numbers read the same in both zones (black-box
    /// round 60a: Los Angeles's week and UTC's had the same keys, and a restart in UTC
    /// sold a fourth lead in Los Angeles's week capped at 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<&'a str>,
    /// The seller's `Idempotency-Key`, as hex SHA-256 (never the key itself), when the
    /// request carried one: a retry after a restart finds its answer from this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key_sha256: Option<&'a str>,
    /// Hex SHA-256 of the request body that carried the key (a retry with another body
    /// is a conflict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<&'a str>,
    /// The lead's dedup keys (as the `sale` record's): a start counts a delivery whose
    /// outcome is unknown, or a late accept, as a sale of them.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub dedup: &'a [String],
}

/// `type: "post_attempt"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostAttemptRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub lead_id: &'a str,
    pub auction_id: &'a str,
    pub buyer: &'a str,
    /// 0 is the winner, then fallbacks in order.
    pub attempt: usize,
    /// `rejected`, `timeout`, `error`, `invalid`, `capped`, `bid_expired`, `not_sent`,
    /// `buyer_removed`, or [`LATE_ACCEPT`] (the buyer accepted after its timeout: it has
    /// the lead; written after the attempt's `timeout`, and durable).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A test lead's record (`"test": true`); absent for a real lead.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// The `post_attempt` outcome of a buyer that accepted after its post timeout.
pub const LATE_ACCEPT: &str = "late_accept";

/// The `post_attempt` outcome of a buyer heard out after its post timeout that did not
/// accept: it refused, failed, or said nothing within the wait. Written so a replay
/// after a crash knows the buyer does not have the lead (a timeout with neither record
/// may have been accepted).
pub const LATE_NO_ACCEPT: &str = "late_no_accept";

/// `type: "sale"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaleRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub lead_id: &'a str,
    pub ping_id: &'a str,
    pub auction_id: &'a str,
    pub seller: &'a str,
    pub buyer: &'a str,
    /// The buyer's display name the seller's `sold` answer gave, so a keyed retry after
    /// a restart gets it again byte for byte, whatever a reload renamed or removed since
    /// (absent in records written before it was added: recovery then looks the id up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_name: Option<&'a str>,
    pub vertical: &'a str,
    pub currency: &'a str,
    pub test: bool,
    pub bid_micros: i64,
    pub seller_price_micros: i64,
    pub margin_micros: i64,
    pub attempt: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_lead_id: Option<String>,
    /// The cap windows the sale counts in (absent for a test lead).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<Windows>,
    /// The buyer's time zone that `windows` are in (absent for a test lead, in records
    /// before it was written, and when the windows are not of the buyer's zone now): a
    /// start that finds the buyer in another zone holds the lead to this zone's windows
    /// still running, even where their numbers read the same in both zones (black-box
    /// round 60a: Los Angeles's week and UTC's had the same keys, and a restart in UTC
    /// sold a fourth lead in Los Angeles's week capped at 3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tz: Option<&'a str>,
    /// The lead's dedup keys (keyed digests, 32 hex digits each; never a hash of the
    /// consumer's data): a start reads them back, so the lead stays a duplicate for its
    /// vertical's window.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub dedup: &'a [String],
}

/// `type: "unsold"`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnsoldRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub lead_id: &'a str,
    pub ping_id: &'a str,
    pub auction_id: &'a str,
    pub seller: &'a str,
    pub reason: &'static str,
    /// Deliveries actually sent.
    pub attempts: usize,
    /// A test lead's record (`"test": true`); absent for a real lead.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// `type: "quote_opened"`: a firm quote (a `bid` answer to a ping), with what its post
/// needs, so it stays firm across a restart: the ping-time lead (ping fields only, which
/// never include PII), the ranked bids and the winner's hold. Not waited for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuoteOpenedRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub ping_id: &'a str,
    pub auction_id: &'a str,
    pub seller: &'a str,
    pub vertical: &'a str,
    pub test: bool,
    /// The seller price quoted.
    pub price_micros: i64,
    pub currency: &'a str,
    /// The quote is firm until then (Unix ms).
    pub expires_at_ms: UnixMs,
    /// When the auction started (bids' `expires_in_ms` count from here; Unix ms).
    pub auctioned_at_ms: UnixMs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<u8>,
    /// The ping-time lead's ping fields (no PII: a ping carries none).
    pub lead: LeadFields<'a>,
    /// The bids, the winner first.
    pub ranked: Vec<RankedLine<'a>>,
    /// The winner's hold, if the quote holds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold: Option<HoldLine<'a>>,
    /// The ping's dedup keys (keyed digests, 32 hex digits each; never the seller's
    /// hashes): a post after a restart claims them again.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub dedup: &'a [String],
}

/// A lead's fields by name, written as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadFields<'a>(pub Vec<(&'a str, &'a proto::FieldValue)>);

impl Serialize for LeadFields<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            m.serialize_entry(name, value)?;
        }
        m.end()
    }
}

/// One bid of a [`QuoteOpenedRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RankedLine<'a> {
    pub buyer: &'a str,
    pub price_micros: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bid_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    pub fixed: bool,
    pub seller_price_micros: i64,
    pub value: i64,
    /// The bid's realization probability (parts per million) under expected value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_ppm: Option<u32>,
}

/// A quote's hold: one lead and `price_micros` of `buyer`'s caps in `windows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldLine<'a> {
    pub buyer: &'a str,
    pub price_micros: i64,
    pub windows: Windows,
}

/// `type: "quote_reserved" | "quote_released" | "quote_expired"`: a quote's hold on one
/// lead and `price_micros` of a buyer's caps and budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuoteHoldRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    /// The quote's ping id (the sweeper's `quote_expired` has it too, so recovery can
    /// answer a later post of that ping `expired`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_id: Option<&'a str>,
    pub buyer: &'a str,
    pub price_micros: i64,
    /// Why a hold was released (`post_failed`, `mismatch`, `quote_refused`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// A `mismatch`'s changed ping fields (field names, never values), so a start
    /// answers its repeat as the seller was answered, byte for byte.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub changed_fields: &'a [String],
    /// A test quote's end (`"test": true`: the `quote_released` with no buyer that
    /// closes a quote that held nothing); absent otherwise (a hold is never a test lead's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub test: bool,
}

/// `type: "disposition"`: what became of a sold lead, reported by the buyer that bought
/// it (`POST /v1/dispositions`). Durable: the buyer's `200` comes after the fsync. At most
/// one per (`lead_id`, `outcome`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DispositionRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub lead_id: &'a str,
    pub auction_id: &'a str,
    pub buyer: &'a str,
    pub seller: &'a str,
    pub vertical: &'a str,
    /// `contacted`, `no_contact`, `quoted`, `sold`, `disqualified` or `returned`.
    pub outcome: &'a str,
    /// The buyer's reason code (bounded, charset-limited: never free text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The lead was a test lead (nothing was paid, nothing is refunded).
    pub test: bool,
    /// The buyer's `Idempotency-Key`, as hex SHA-256 (never the key itself), when the
    /// request carried one: recovery restores the key with this disposition's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key_sha256: Option<&'a str>,
    /// Hex SHA-256 of the request body that carried the key (a retry with another body
    /// is a conflict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_sha256: Option<&'a str>,
}

/// `type: "refund"`: a `returned` lead inside the buyer's return window. The buyer gets
/// its bid back (`buyer_refund_micros` = the sale's `bid_micros`), the seller's payout is
/// clawed back (`seller_clawback_micros` = the sale's `seller_price_micros`), and the
/// exchange's margin on the lead is reversed (`margin_reversed_micros` = the sale's
/// `margin_micros`). Written just before its `disposition` (same batch), durable; at most
/// one per lead.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RefundRecord<'a> {
    #[serde(flatten)]
    pub head: Head,
    pub lead_id: &'a str,
    pub auction_id: &'a str,
    pub buyer: &'a str,
    pub seller: &'a str,
    pub vertical: &'a str,
    pub currency: &'a str,
    pub buyer_refund_micros: i64,
    pub seller_clawback_micros: i64,
    pub margin_reversed_micros: i64,
    /// When the lead was sold (the sale's `at`, Unix ms): the window counts from here.
    pub sold_at_ms: UnixMs,
    /// The buyer's `return_window_days` that allowed the refund.
    pub return_window_days: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_tagged_versioned_and_carry_the_generation() {
        let r = Record::Auction(AuctionRecord {
            head: Head::new(7, 0),
            auction_id: "au_1",
            ping_id: "pg_1",
            seller: "s",
            vertical: "v",
            currency: "USD",
            test: false,
            direct: false,
            score: None,
            reserve_micros: 1,
            skipped: SkippedRecord {
                total: 3,
                by_reason: ReasonCounts([2, 0, 0, 0, 1]),
                first: vec![SkippedBuyer {
                    buyer: "a",
                    reason: "state",
                }],
            },
            fanout_limited: None,
            breaker_open: None,
            pings_in_flight_full: None,
            buyers: vec![BuyerLine {
                idx: 3,
                buyer: "b",
                outcome: BuyerOutcome::BidAboveMax,
                bid_micros: Some(1_850_000_000),
                detail: None,
                reason: None,
                took_us: Some(5),
                p_ppm: Some(250_000),
                p_est_ppm: None,
                bx: Some(vec![1.5, f32::NAN]),
            }],
            winner: None,
            bid_micros: None,
            seller_price_micros: None,
            no_bid: Some("no_bids"),
            took_us: 9,
            features_version: Some(3),
            x: &[2.0, f32::NAN],
            models: crate::auction::ModelVersions {
                lead_score: None,
                realization: Some("r1"),
            },
            explore: true,
            lead_fingerprint: Some("0123456789abcdef0123456789abcdef"),
            idempotency_key_sha256: None,
            body_sha256: None,
        });
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "auction");
        assert_eq!(v["v"], RECORD_VERSION);
        assert_eq!(v["generation"], 7);
        assert_eq!(v["at"], "1970-01-01T00:00:00.000Z");
        // Features as the models saw them; a missing one is null, never zero.
        assert_eq!(v["x"], serde_json::json!([2.0, null]));
        assert_eq!(v["features_version"], 3);
        assert_eq!(v["models"], serde_json::json!({"realization": "r1"}));
        assert_eq!(v["explore"], true);
        assert_eq!(v["buyers"][0]["p_ppm"], 250_000);
        assert_eq!(v["buyers"][0]["bx"], serde_json::json!([1.5, null]));
        assert_eq!(v["buyers"][0]["outcome"], "bid_above_max");
        assert_eq!(
            v["skipped"],
            serde_json::json!({"total": 3, "by_reason": {"state": 2, "capped": 1},
                "first": [{"buyer": "a", "reason": "state"}]})
        );
        assert!(v["buyers"][0].get("idx").is_none());
        assert_eq!(r.kind(), "auction");
        // A ping's auction is not waited for; a direct post's that found no buyer is the
        // seller's answer, and is (one with a winner is followed by its durable
        // `post_sent` or `unsold`).
        assert!(!r.is_durable());
        let Record::Auction(a) = &r else {
            unreachable!()
        };
        let direct = Record::Auction(AuctionRecord {
            direct: true,
            ..a.clone()
        });
        assert!(direct.is_durable());
        let direct_won = Record::Auction(AuctionRecord {
            direct: true,
            winner: Some("b"),
            ..a.clone()
        });
        assert!(!direct_won.is_durable());
        let q = Record::QuoteExpired(QuoteHoldRecord {
            head: Head::new(0, 0),
            ping_id: None,
            buyer: "b",
            price_micros: 5,
            reason: None,
            changed_fields: &[],
            test: false,
        });
        let v: serde_json::Value = serde_json::to_value(&q).unwrap();
        assert_eq!(v["type"], "quote_expired");
        // `test` is written only for a test lead's record.
        assert!(v.get("test").is_none());
        assert!(!q.is_durable());
    }

    #[test]
    fn times_are_written_as_chrono_writes_them_at_the_edges_of_its_range_and_past_them() {
        let edges = [
            0,
            -1,
            1,
            86_399_999,
            -86_400_000,
            951_782_400_000,     // 2000-02-29
            4_107_542_399_999,   // 2100-02-28T23:59:59.999
            -62_167_219_200_000, // 0000-01-01
            -62_167_219_200_001, // one ms before: year -1
            253_402_300_799_999, // 9999-12-31T23:59:59.999
            253_402_300_800_000, // 10000-01-01
            i64::MIN,
            i64::MAX,
        ];
        for ms in edges {
            assert_eq!(rfc3339(ms), rfc3339_chrono(ms), "{ms}");
        }
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }

    proptest::proptest! {
        #[test]
        fn any_time_is_written_as_chrono_writes_it(
            ms in -70_000_000_000_000i64..260_000_000_000_000,
            any in proptest::prelude::any::<i64>()
        ) {
            proptest::prop_assert_eq!(rfc3339(ms), rfc3339_chrono(ms));
            proptest::prop_assert_eq!(rfc3339(any), rfc3339_chrono(any));
        }
    }
}
