//! One post as a state machine: which buyer to deliver to next, with which cap hold, and
//! what each delivery's outcome means. No I/O, no clock: the shell delivers the attempt
//! [`PostPlan::next`] names (within its `timeout_ms`), reports the outcome with
//! [`PostPlan::on_result`], and carries out the [`Effect`]s.
//!
//! Rules:
//! - The winner goes first, on the reservation its quote holds. Then fallbacks in rank
//!   order whose own bid covers the quoted price ([`award::may_fall_back_to`]): at most
//!   `server.post_attempts_max` deliveries in all, from the candidates the quote kept
//!   ([`award::post_candidates`]). A candidate skipped without a delivery (below) does
//!   not count as one.
//! - A fallback whose bid has expired (counted from the auction's start; a huge
//!   `expires_in_ms` saturates, never wraps) is skipped; so is one whose cap is full
//!   (reserved through the settlement; test leads reserve nothing).
//! - Accepted: the hold is committed and the sale record written (durable: the shell
//!   answers `sold` only after it is on disk). Rejected, timed out, failed, invalid, or
//!   not sent at all: the hold is released and the next candidate comes.
//! - The whole post, every fallback included, ends by `server.post_deadline_ms` after it
//!   began: each attempt's timeout is `min(buyer post_timeout_ms, time left)`; past the
//!   deadline the post stops with `post_deadline`.
//! - The plan holds at most one reservation at a time and releases it on every path that
//!   does not commit it, including a delivery the shell never reported (the shell asked
//!   for the next attempt without reporting this one): no hold is ever overwritten.

use proto::seller::{PostAnswer, PostStatus};
use proto::Micros;

use super::auction::{bid_expires_at, ms, DELIVERY_SLACK_MS};
use super::award::{self, Ranked};
use super::caps::{Reservation, Windows};
use super::effect::{Effect, PostKind};
use super::quotes::EXPIRED_REASON;
use super::record::{
    Head, PostAttemptRecord, PostSentRecord, Record, SaleRecord, UnsoldRecord, LATE_ACCEPT,
    LATE_NO_ACCEPT,
};
use super::settlement::{drop_hold, release_reason, CapOp, Settlement};
use super::UnixMs;
use crate::config::{Buyer, BuyerIdx, BuyerKey, Config, SellerIdx, VerticalIdx};

/// The `reason` of a `timeout` post attempt whose timeout the post deadline cut below the
/// buyer's own `post_timeout_ms`: not the buyer's doing, so it teaches the rates (and the
/// pause's streak) nothing, live and at a restart.
pub const TIMEOUT_CUT_BY_DEADLINE: &str = "post_deadline";
/// The reason of an `error` attempt whose buyer could not be reached: the lead never left
/// (no `post_sent` was written for it).
pub const NOT_CONNECTED: &str = "not_connected";

/// Why a post sold to nobody (the `reason` of an `unsold` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsoldReason {
    /// There was no winner to deliver to.
    NoBids,
    /// Every candidate was skipped (capped or expired) before any delivery.
    NoBuyerAvailable,
    /// Every delivery was refused (rejected, timed out, failed).
    AllBuyersRejected,
    /// `server.post_deadline_ms` passed with candidates left.
    PostDeadline,
    /// Every candidate's buyer was removed by a reload since the quote.
    BuyerRemoved,
    /// The lead's vertical was removed by a reload since the quote: nothing is posted.
    VerticalRemoved,
}

impl UnsoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnsoldReason::NoBids => "no_bids",
            UnsoldReason::NoBuyerAvailable => "no_buyer_available",
            UnsoldReason::AllBuyersRejected => "all_buyers_rejected",
            UnsoldReason::PostDeadline => "post_deadline",
            UnsoldReason::BuyerRemoved => "buyer_removed",
            UnsoldReason::VerticalRemoved => "vertical_removed",
        }
    }
}

/// Everything a post is decided from, besides the ranking and `now`.
#[derive(Debug, Clone, Copy)]
pub struct PostParams<'a> {
    pub config: &'a Config,
    /// The runtime generation (written in every record).
    pub generation: u64,
    pub seller: SellerIdx,
    pub vertical: VerticalIdx,
    /// A test lead: no cap is reserved for fallbacks.
    pub test: bool,
    /// The seller price already quoted: what the seller is paid on a sale.
    pub quoted: Micros,
    /// The currency of the quote (the vertical's when the auction ran): the sale is
    /// recorded in it. A reload that changed the vertical's currency since never
    /// relabels a quote: the buyer bid and the seller was quoted in this one.
    pub currency: &'a str,
    pub auction_id: &'a str,
    pub ping_id: &'a str,
    pub lead_id: &'a str,
    /// When the auction started: bids' `expires_in_ms` count from here.
    pub auction_arrival: UnixMs,
    /// The winner's reservation is a quote's hold (a ping's quote, recorded as
    /// `quote_reserved`): its release is recorded as `quote_released`.
    pub from_quote: bool,
    /// Buyers of the ranking that a reload removed since the quote, with their former
    /// ids (for the records): they are skipped, never posted to. Usually empty.
    pub removed: &'a [(BuyerKey, String)],
    /// The seller's `Idempotency-Key` and request body, as hex SHA-256 each, when the
    /// request carried a key: written in every `post_sent` record, so a retry after a
    /// restart finds the post's outcome.
    pub idempotency: Option<(&'a str, &'a str)>,
    /// The lead's dedup keys as the sale record writes them (see
    /// [`crate::record::SaleRecord::dedup`]).
    pub dedup: &'a [String],
    /// The guard epoch of the models that scored the auction (the shell's; the quote
    /// carries it to the post): copied into every [`Effect::Post`].
    pub guard_epoch: u64,
}

/// One delivery to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub buyer: BuyerIdx,
    /// Index of the bid in [`PostPlan::ranked`].
    pub rank: usize,
    /// 0 for the winner, then one per candidate considered.
    pub attempt: usize,
    /// How long to wait for the buyer's answer.
    pub timeout_ms: u64,
}

/// What a delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Accepted {
        buyer_lead_id: Option<String>,
    },
    Rejected {
        reason: Option<String>,
    },
    Invalid(&'static str),
    Timeout,
    /// The call failed (transport) after the lead started to leave.
    Error,
    /// The buyer could not be reached (its connection could not be made, or not within
    /// the attempt's time): nothing was sent, and no `post_sent` was written. Recorded as
    /// an `error` with reason [`NOT_CONNECTED`].
    NotConnected,
    /// The delivery could not be sent at all (the message could not be built, the
    /// shell failed before sending): nothing reached the buyer.
    NotSent,
}

/// Where the post is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostStep {
    /// Deliver to this buyer now.
    Deliver(Attempt),
    /// Sold to this attempt's buyer: the commit and the (durable) sale record are queued.
    Sold(Attempt),
    /// Sold to nobody: every hold is released and the (durable) unsold record queued.
    Unsold(UnsoldReason),
}

/// One post in progress.
#[derive(Debug)]
pub struct PostPlan<'a> {
    p: PostParams<'a>,
    ranked: Vec<Ranked>,
    /// The one hold the plan has (the winner's from the quote, or a fallback's).
    reservation: Option<Reservation>,
    /// `reservation` is the quote's hold (see [`PostParams::from_quote`]).
    quote_hold: bool,
    deadline: UnixMs,
    /// Next rank index to consider.
    cursor: usize,
    /// Candidates considered (delivered or skipped): the next one's attempt number.
    considered: usize,
    /// Deliveries actually sent.
    sent: usize,
    /// Candidates skipped because a reload removed their buyer.
    removed: usize,
    /// Candidates skipped for another reason (a bid expired, a cap or budget full).
    skipped: usize,
    current: Option<Attempt>,
    /// The current attempt's `post_sent` is queued ([`PostPlan::sending`]).
    announced: bool,
    done: Option<PostStep>,
    effects: Vec<Effect<'a>>,
    /// The hold of an attempt that timed out, kept for the buyer's late answer
    /// ([`PostPlan::take_late_hold`]).
    late_hold: Option<Reservation>,
}

impl<'a> PostPlan<'a> {
    /// A post beginning at `now` of `ranked` (the winner first) holding `reservation`.
    pub fn new(
        p: PostParams<'a>,
        ranked: Vec<Ranked>,
        reservation: Option<Reservation>,
        now: UnixMs,
    ) -> PostPlan<'a> {
        let deadline = now.saturating_add(ms(p.config.server.post_deadline_ms));
        PostPlan {
            quote_hold: p.from_quote && reservation.is_some(),
            p,
            ranked,
            reservation,
            deadline,
            cursor: 0,
            considered: 0,
            sent: 0,
            removed: 0,
            skipped: 0,
            current: None,
            announced: false,
            late_hold: None,
            done: None,
            effects: Vec::with_capacity(8),
        }
    }

    /// How many deliveries were sent (the lead went out to that many buyers).
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// The bids, best first ([`Attempt::rank`] indexes this).
    pub fn ranked(&self) -> &[Ranked] {
        &self.ranked
    }

    /// When the whole post must end.
    pub fn deadline(&self) -> UnixMs {
        self.deadline
    }

    /// Does the plan hold a reservation right now?
    pub fn holds(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// The next candidate's rank index, without taking it.
    fn peek(&self) -> Option<usize> {
        // Deliveries are what the limit counts: a skipped candidate was not tried.
        if self.sent >= self.p.config.server.post_attempts_max {
            return None;
        }
        if self.cursor == 0 {
            return (!self.ranked.is_empty()).then_some(0);
        }
        (self.cursor..self.ranked.len())
            .find(|&i| award::may_fall_back_to(&self.ranked[i], self.p.quoted))
    }

    fn buyer_id(&self, b: BuyerIdx) -> &'a str {
        self.p.config.buyers.get(b).map_or("", |x| x.id.as_str())
    }

    fn attempt_record(
        &mut self,
        a: Attempt,
        outcome: &'static str,
        reason: Option<String>,
        now: UnixMs,
    ) {
        let rec = PostAttemptRecord {
            head: Head::new(self.p.generation, now),
            lead_id: self.p.lead_id,
            auction_id: self.p.auction_id,
            buyer: self.buyer_id(a.buyer),
            attempt: a.attempt,
            outcome,
            reason,
            test: self.p.test,
        };
        self.effects.push(Effect::Record(Record::PostAttempt(rec)));
    }

    /// Records a candidate passed over without a delivery (`Capped`, `Busy`): its post
    /// metric (it teaches nothing) and its attempt record, whose outcome is the label.
    fn skip_undelivered(&mut self, a: Attempt, kind: PostKind, now: UnixMs) {
        self.effects.push(Effect::Post {
            buyer: a.buyer,
            outcome: kind,
            p_model_ppm: None,
            teaches: false,
            at: now,
            lead_id: self.p.lead_id,
            guard_epoch: self.p.guard_epoch,
        });
        self.attempt_record(a, kind.as_str(), None, now);
        self.skipped += 1;
    }

    /// Drops the plan's hold, if any, recording a quote hold's release.
    fn release(&mut self, why: &'static str, now: UnixMs) {
        self.release_or_keep(why, now, false);
    }

    /// Takes the plan's hold, if any, and records a quote hold's release. The caps give
    /// it back, unless `keep_for_late_answer`: then it moves to `late_hold` for
    /// [`PostPlan::take_late_hold`] (the ledger closes the quote's hold as any released
    /// one, and recovery treats the delivery by its `post_sent`; only the caps keep it).
    fn release_or_keep(&mut self, why: &'static str, now: UnixMs, keep_for_late_answer: bool) {
        let Some(r) = self.reservation.take() else {
            return;
        };
        let kept = keep_for_late_answer.then(|| r.clone());
        let (release, record) = if std::mem::take(&mut self.quote_hold) {
            let former = self.p.removed.iter().find(|(k, _)| *k == r.buyer);
            let [release, record] = drop_hold(
                self.p.config,
                self.p.generation,
                r,
                Some(self.p.ping_id),
                Some(why),
                former.map(|(_, id)| id.as_str()),
                now,
            );
            (release, Some(record))
        } else {
            (Effect::Cap(CapOp::Release(r)), None)
        };
        match kept {
            // A hold the shell never took (it should, after every timeout) is released,
            // never overwritten and lost.
            Some(k) => {
                if let Some(untaken) = self.late_hold.replace(k) {
                    self.effects.push(Effect::Cap(CapOp::Release(untaken)));
                }
            }
            None => self.effects.push(release),
        }
        self.effects.extend(record);
    }

    fn unsold(&mut self, reason: UnsoldReason, now: UnixMs) -> PostStep {
        let why = match reason {
            UnsoldReason::PostDeadline => release_reason::POST_DEADLINE,
            _ => release_reason::POST_FAILED,
        };
        self.release(why, now);
        if reason != UnsoldReason::NoBids {
            let cfg = self.p.config;
            let rec = UnsoldRecord {
                head: Head::new(self.p.generation, now),
                lead_id: self.p.lead_id,
                ping_id: self.p.ping_id,
                auction_id: self.p.auction_id,
                seller: cfg.sellers.get(self.p.seller).map_or("", |s| s.id.as_str()),
                reason: reason.as_str(),
                attempts: self.sent,
                test: self.p.test,
            };
            self.effects.push(Effect::Record(Record::Unsold(rec)));
        }
        let step = PostStep::Unsold(reason);
        self.done = Some(step);
        step
    }

    /// What to do next at `now`. Reserves a fallback's cap through `settlement`.
    pub fn next(&mut self, settlement: &Settlement<'_>, now: UnixMs) -> PostStep {
        self.next_admitting(settlement, now, &mut |_| true)
    }

    /// As [`PostPlan::next`], asking `admit` before delivering to a buyer whether it may
    /// be sent one more lead now (the shell's bound on a buyer's deliveries still heard
    /// out after their timeout). A buyer refused is not sent the lead: it is skipped as
    /// `busy` (a post attempt record, a post metric; a winner's hold is released with
    /// reason `buyer_busy`), and the post goes on to the next bid.
    pub fn next_admitting(
        &mut self,
        settlement: &Settlement<'_>,
        now: UnixMs,
        admit: &mut dyn FnMut(BuyerKey) -> bool,
    ) -> PostStep {
        if let Some(done) = self.done {
            return done;
        }
        if self.current.is_some() {
            // Asked for the next attempt without reporting this one: it was never sent.
            self.on_result(AttemptResult::NotSent, now);
        }
        loop {
            let Some(i) = self.peek() else {
                let reason = match (self.ranked.is_empty(), self.sent) {
                    (true, _) => UnsoldReason::NoBids,
                    // `buyer_removed` only when the reload is why no buyer was tried: a
                    // fallback still configured but skipped (expired, capped) makes it
                    // `no_buyer_available` (black-box round 16).
                    (false, 0) if self.removed > 0 && self.skipped == 0 => {
                        UnsoldReason::BuyerRemoved
                    }
                    (false, 0) => UnsoldReason::NoBuyerAvailable,
                    // The deadline cut the last attempt short: it ended the post.
                    (false, _) if now >= self.deadline => UnsoldReason::PostDeadline,
                    (false, _) => UnsoldReason::AllBuyersRejected,
                };
                return self.unsold(reason, now);
            };
            if now >= self.deadline {
                return self.unsold(UnsoldReason::PostDeadline, now);
            }
            self.cursor = i + 1;
            let attempt_no = self.considered;
            self.considered += 1;
            let bid = &self.ranked[i].bid;
            let price = bid.price;
            let Some((b, buyer)) = self.p.config.buyer_by_key(bid.buyer) else {
                // A reload removed this bidder after the quote: it cannot be posted to.
                // The winner's hold is released now (never leaked); a fallback holds none.
                let key = bid.buyer;
                self.removed += 1;
                if i == 0 {
                    self.release(release_reason::BUYER_REMOVED, now);
                }
                let former = self.p.removed.iter().find(|(k, _)| *k == key);
                let rec = PostAttemptRecord {
                    head: Head::new(self.p.generation, now),
                    lead_id: self.p.lead_id,
                    auction_id: self.p.auction_id,
                    buyer: former.map_or("", |(_, id)| id.as_str()),
                    attempt: attempt_no,
                    outcome: "buyer_removed",
                    reason: None,
                    test: self.p.test,
                };
                self.effects.push(Effect::Record(Record::PostAttempt(rec)));
                continue;
            };
            let a = Attempt {
                buyer: b,
                rank: i,
                attempt: attempt_no,
                timeout_ms: buyer
                    .post_timeout_ms
                    .min(u64::try_from(self.deadline.saturating_sub(now)).unwrap_or(0)),
            };
            if i > 0
                && bid_expires_at(self.p.auction_arrival, bid.expires_in_ms)
                    .is_some_and(|at| at < now)
            {
                self.attempt_record(a, "bid_expired", None, now);
                self.skipped += 1;
                continue;
            }
            if !admit(buyer.key) {
                // Too many of this buyer's deliveries are still unanswered: it is sent
                // nothing more until they are settled. The winner's hold goes back; a
                // fallback holds none yet.
                if i == 0 {
                    self.release(release_reason::BUYER_BUSY, now);
                }
                self.skip_undelivered(a, PostKind::Busy, now);
                continue;
            }
            // A fallback is reserved now (a test lead counts in no cap).
            if i > 0 && !self.p.test {
                let until = self.deadline.saturating_add(DELIVERY_SLACK_MS);
                match settlement.reserve(buyer, price, now, until) {
                    Ok(res) => {
                        // Never overwrite a hold: the previous one is settled first.
                        self.release(release_reason::POST_FAILED, now);
                        self.reservation = Some(res);
                    }
                    Err(_) => {
                        self.skip_undelivered(a, PostKind::Capped, now);
                        continue;
                    }
                }
            }
            self.sent += 1;
            self.current = Some(a);
            self.announced = false;
            return PostStep::Deliver(a);
        }
    }

    /// The buyer of the attempt [`next`](PostPlan::next) named is reachable (its
    /// connection is made): queues the attempt's durable `post_sent` record, which the
    /// shell writes before the first byte of the lead leaves (write-ahead). An attempt
    /// whose buyer cannot be reached is reported [`AttemptResult::NotConnected`] instead,
    /// and leaves no `post_sent`. Called twice, or with no attempt, it does nothing.
    pub fn sending(&mut self, now: UnixMs) {
        let Some(a) = self.current else {
            return;
        };
        if std::mem::replace(&mut self.announced, true) {
            return;
        }
        let price = self
            .ranked
            .get(a.rank)
            .map_or(Micros::ZERO, |r| r.bid.price);
        let Some(buyer) = self.p.config.buyers.get(a.buyer) else {
            return;
        };
        // Sent now: a sale counts in the held windows of this moment.
        self.reservation = self.reservation.take().map(|r| r.delivered_at(now));
        // Write-ahead: the shell sends nothing until this record is on disk.
        let cfg = self.p.config;
        let (windows, tz) = record_windows(
            self.reservation.as_ref().map(Reservation::counted_windows),
            Some(buyer),
            now,
        );
        let rec = PostSentRecord {
            head: Head::new(self.p.generation, now),
            lead_id: self.p.lead_id,
            auction_id: self.p.auction_id,
            ping_id: self.p.ping_id,
            seller: cfg.sellers.get(self.p.seller).map_or("", |s| s.id.as_str()),
            buyer: buyer.id.as_str(),
            attempt: a.attempt,
            price_micros: price.0,
            test: self.p.test,
            windows,
            tz,
            idempotency_key_sha256: self.p.idempotency.map(|(k, _)| k),
            body_sha256: self.p.idempotency.map(|(_, b)| b),
            dedup: self.p.dedup,
        };
        self.effects.push(Effect::Record(Record::PostSent(rec)));
    }

    /// Takes the outcome of the attempt [`next`](PostPlan::next) named, at `now`. After
    /// [`AttemptResult::Timeout`] the attempt's hold is kept for the buyer's late answer:
    /// take it with [`PostPlan::take_late_hold`].
    pub fn on_result(&mut self, result: AttemptResult, now: UnixMs) {
        // A result the buyer gave (or a failure once sending began) had its write-ahead
        // record: queued now if the shell did not ask for it.
        if !matches!(result, AttemptResult::NotSent | AttemptResult::NotConnected) {
            self.sending(now);
        }
        let Some(a) = self.current.take() else {
            return;
        };
        let (kind, outcome, reason) = match result {
            AttemptResult::Accepted { buyer_lead_id } => {
                let mut windows = None;
                let mut sent_at = now;
                if let Some(r) = self.reservation.take() {
                    self.quote_hold = false;
                    windows = Some(r.counted_windows());
                    sent_at = r.delivered().unwrap_or(now);
                    self.effects.push(Effect::Cap(CapOp::Commit(r)));
                }
                self.effects.push(Effect::Post {
                    buyer: a.buyer,
                    outcome: PostKind::Accepted,
                    p_model_ppm: self.ranked.get(a.rank).and_then(|r| r.p_model_ppm),
                    teaches: !self.p.test,
                    at: now,
                    lead_id: self.p.lead_id,
                    guard_epoch: self.p.guard_epoch,
                });
                let cfg = self.p.config;
                let (windows, tz) = record_windows(windows, cfg.buyers.get(a.buyer), sent_at);
                let bid = self
                    .ranked
                    .get(a.rank)
                    .map_or(Micros::ZERO, |r| r.bid.price);
                let v = cfg.verticals.get(self.p.vertical);
                let rec = SaleRecord {
                    head: Head::new(self.p.generation, now),
                    lead_id: self.p.lead_id,
                    ping_id: self.p.ping_id,
                    auction_id: self.p.auction_id,
                    seller: cfg.sellers.get(self.p.seller).map_or("", |s| s.id.as_str()),
                    buyer: self.buyer_id(a.buyer),
                    buyer_name: cfg.buyers.get(a.buyer).map(|b| b.name.as_str()),
                    vertical: v.map_or("", |v| v.name.as_str()),
                    currency: self.p.currency,
                    test: self.p.test,
                    bid_micros: bid.0,
                    seller_price_micros: self.p.quoted.0,
                    margin_micros: bid.0.saturating_sub(self.p.quoted.0),
                    attempt: a.attempt,
                    buyer_lead_id,
                    windows,
                    tz,
                    dedup: self.p.dedup,
                };
                self.effects.push(Effect::Record(Record::Sale(rec)));
                self.done = Some(PostStep::Sold(a));
                return;
            }
            AttemptResult::Rejected { reason } => (PostKind::Rejected, "rejected", reason),
            AttemptResult::Invalid(why) => (PostKind::Invalid, "invalid", Some(why.to_string())),
            // A timeout of an attempt the post deadline cut short (earlier attempts used
            // up the time) says nothing of the buyer: its reason says so, and it teaches
            // nothing (black-box round 28: a buyer ahead of an honest fallback stalled
            // until the deadline, and the fallback's forced timeouts paused it).
            AttemptResult::Timeout => {
                let cut = self
                    .p
                    .config
                    .buyers
                    .get(a.buyer)
                    .is_some_and(|b| a.timeout_ms < b.post_timeout_ms);
                (
                    PostKind::Timeout,
                    "timeout",
                    cut.then(|| TIMEOUT_CUT_BY_DEADLINE.to_string()),
                )
            }
            AttemptResult::Error => (PostKind::Error, "error", None),
            AttemptResult::NotSent => (PostKind::Error, "not_sent", None),
            AttemptResult::NotConnected => {
                (PostKind::Error, "error", Some(NOT_CONNECTED.to_string()))
            }
        };
        let cut_short = outcome == "timeout" && reason.as_deref() == Some(TIMEOUT_CUT_BY_DEADLINE);
        self.effects.push(Effect::Post {
            buyer: a.buyer,
            outcome: kind,
            p_model_ppm: self.ranked.get(a.rank).and_then(|r| r.p_model_ppm),
            // An unsent delivery never reached the buyer, a timeout the deadline cut short
            // is not the buyer's doing, and a test lead teaches nothing.
            teaches: !self.p.test && outcome != "not_sent" && !cut_short,
            at: now,
            lead_id: self.p.lead_id,
            guard_epoch: self.p.guard_epoch,
        });
        let why = if now >= self.deadline {
            release_reason::POST_DEADLINE
        } else {
            release_reason::POST_FAILED
        };
        // After a timeout the buyer may still accept, and then it has the lead: its hold
        // stays in its caps and budget until that answer is heard out
        // ([`PostPlan::take_late_hold`], [`settle_late`]), so no other auction can take
        // the same place meanwhile. The post moves on all the same.
        self.release_or_keep(why, now, kind == PostKind::Timeout);
        self.attempt_record(a, outcome, reason, now);
    }

    /// The hold of the attempt that just timed out, for the shell to keep until the
    /// buyer's late answer is in: hand it to [`settle_late`] then. `None` when the
    /// attempt held nothing (a test lead) or did not time out.
    pub fn take_late_hold(&mut self) -> Option<Reservation> {
        self.late_hold.take()
    }

    /// The effects so far, in order, for the shell to carry out.
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect<'a>> {
        self.effects.drain(..)
    }
}

/// Settles the hold of a post attempt that timed out ([`PostPlan::take_late_hold`]) once
/// the buyer's late answer is in: an accept is a delivery, so the hold becomes a lead
/// sold and money spent in the windows it was held in (the place was kept for it, so no
/// cap or budget is passed); anything else, or no answer at all, releases it.
pub fn settle_late(hold: Reservation, accepted: bool) -> Effect<'static> {
    if accepted {
        Effect::Cap(CapOp::Commit(hold))
    } else {
        Effect::Cap(CapOp::Release(hold))
    }
}

/// What the shell's watch over a timed-out post attempt knows once the buyer's late
/// answer is in (or the wait is over): see [`settle_late_answer`].
#[derive(Debug, Clone)]
pub struct LateAnswer<'a> {
    /// The runtime generation (written in the record).
    pub generation: u64,
    pub lead_id: &'a str,
    pub auction_id: &'a str,
    /// The attempt's number ([`Attempt::attempt`]).
    pub attempt: usize,
    /// The attempt's buyer in the current configuration; `None` when a reload removed it
    /// (its late accept is not counted: only the hold, if any, is released).
    pub buyer: Option<&'a Buyer>,
    /// What the buyer pays for the lead.
    pub price: Micros,
    /// The windows of the hold the post had when the attempt timed out, if it had one.
    pub windows: Option<Windows>,
    /// A test lead: counted in no cap.
    pub test: bool,
    /// The attempt's hold, kept for its late answer ([`PostPlan::take_late_hold`]).
    pub hold: Option<Reservation>,
}

/// What a late answer comes to ([`settle_late_answer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LateSettlement<'a> {
    /// The buyer accepted late and has the lead: a `late_accept` is recorded and counted.
    pub sold: bool,
    /// For the shell to carry out, in order: the (durable) `post_attempt` record with
    /// outcome `late_accept` first, then the cap operation. The cap operation is carried
    /// out even when the record could not be written (the buyer has the lead all the
    /// same).
    pub effects: Vec<Effect<'a>>,
}

/// Settles a post attempt that timed out once its late answer is in (`accepted`) or the
/// wait for it is over, at `now`.
///
/// - An accept by a buyer still configured is a delivery: the `post_attempt` record with
///   outcome [`LATE_ACCEPT`] (durable), then the sale counted against the buyer's caps and
///   budget: in the place its hold kept ([`settle_late`], never past a cap), or with no
///   hold (the attempt held none) in the hold's windows, else the windows of `now` in the
///   buyer's zone, whatever the headroom ([`CapOp::CountSold`]). A test lead with no hold
///   counts in no cap; `now` off the calendar counts nowhere.
/// - Anything else (a refusal, no answer, a buyer a reload removed): the `post_attempt`
///   record with outcome [`LATE_NO_ACCEPT`] (not durable: lost in a crash, the replay
///   counts the delivery, erring on the safe side; none for a buyer this runtime does not
///   have, whose id is unknown), then the hold, if any, released.
pub fn settle_late_answer<'a>(
    late: LateAnswer<'a>,
    accepted: bool,
    now: UnixMs,
) -> LateSettlement<'a> {
    let (true, Some(buyer)) = (accepted, late.buyer) else {
        let record = (!accepted).then_some(late.buyer).flatten().map(|buyer| {
            Effect::Record(Record::PostAttempt(PostAttemptRecord {
                head: Head::new(late.generation, now),
                lead_id: late.lead_id,
                auction_id: late.auction_id,
                buyer: &buyer.id,
                attempt: late.attempt,
                outcome: LATE_NO_ACCEPT,
                reason: None,
                test: late.test,
            }))
        });
        return LateSettlement {
            sold: false,
            effects: record
                .into_iter()
                .chain(late.hold.map(|h| settle_late(h, false)))
                .collect(),
        };
    };
    let mut effects = Vec::with_capacity(2);
    effects.push(Effect::Record(Record::PostAttempt(PostAttemptRecord {
        head: Head::new(late.generation, now),
        lead_id: late.lead_id,
        auction_id: late.auction_id,
        buyer: &buyer.id,
        attempt: late.attempt,
        outcome: LATE_ACCEPT,
        reason: None,
        test: late.test,
    })));
    if let Some(hold) = late.hold {
        // In the place kept for it: never past a cap or budget.
        effects.push(settle_late(hold, true));
    } else if !late.test {
        if let Some(windows) = late.windows.or_else(|| Windows::at(buyer.timezone, now)) {
            effects.push(Effect::Cap(CapOp::CountSold {
                buyer: buyer.key,
                windows,
                price: late.price,
            }));
        }
    }
    LateSettlement {
        sold: true,
        effects,
    }
}

/// A quote's hold to drop without a sale, and why: `None` records it `quote_expired`,
/// a reason `quote_released` (see [`drop_hold`]).
pub type HoldRelease = (Reservation, Option<&'static str>);

/// Why a post of a quote is refused before anything is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeDelivery {
    /// The quote expired before its post.
    Expired,
    /// A reload removed the quote's vertical: nothing can be delivered.
    VerticalRemoved,
    /// The posted lead changed ping fields the buyers bid on.
    Mismatch,
    /// A lead with one of its dedup keys was sold within the vertical's window.
    Duplicate,
    /// The posted lead's consumer is on the suppression list.
    Suppressed,
}

/// The `reason` of a post or direct post answered `duplicate`.
pub const DUPLICATE_REASON: &str = "sold_within_window";

/// The `reason` of a post or direct post answered `suppressed`.
pub const SUPPRESSED_REASON: &str = "suppression_list";

/// A post refused before delivery: its answer, and what becomes of the quote's hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: PostStatus,
    pub reason: &'static str,
    /// The hold to drop (through [`drop_hold`]), and why; `None` when the quote held none.
    pub release: Option<HoldRelease>,
    /// Why the quote ended (the release reason), hold or not: a quote that held nothing
    /// (a test lead's) is closed by [`Refusal::holdless_end`] so a restart answers its
    /// repeat the same (black-box round 32: it came back open). `None` for an expiry.
    pub why: Option<&'static str>,
}

impl Refusal {
    /// The answer to the seller for `ping_id` (a mismatch adds its changed fields).
    pub fn answer(&self, ping_id: &str) -> PostAnswer {
        let mut a = PostAnswer::status_only(self.status, Some(self.reason));
        a.ping_id = Some(ping_id.to_string());
        a
    }

    /// The record that closes a refused quote that held nothing: a `quote_released` with
    /// no buyer and no money, its reason and changed fields (`None` when the quote held
    /// a hold, whose release records it, or for an expiry).
    pub fn holdless_end<'a>(
        &self,
        generation: u64,
        ping_id: &'a str,
        changed_fields: &'a [String],
        now: UnixMs,
    ) -> Option<Record<'a>> {
        if self.release.is_some() {
            return None;
        }
        let why = self.why?;
        Some(Record::QuoteReleased(crate::record::QuoteHoldRecord {
            head: Head::new(generation, now),
            ping_id: Some(ping_id),
            buyer: "",
            price_micros: 0,
            reason: Some(why),
            changed_fields,
            // Only a test lead's quote holds nothing (a real award reserves its cap).
            test: true,
        }))
    }
}

/// The answer to a post refused for `kind` before delivery, and the release of the
/// quote's `hold`: an expired quote's hold expires (`quote_expired`, answered `expired`);
/// a removed vertical's is released for [`release_reason::VERTICAL_REMOVED`] (answered
/// `unsold`, `vertical_removed`); a mismatch's for [`release_reason::MISMATCH`]
/// (answered `mismatch`, `ping_fields_changed`).
pub fn refuse_before_delivery(kind: BeforeDelivery, hold: Option<Reservation>) -> Refusal {
    let (status, reason, why) = match kind {
        BeforeDelivery::Expired => (PostStatus::Expired, EXPIRED_REASON, None),
        BeforeDelivery::VerticalRemoved => (
            PostStatus::Unsold,
            UnsoldReason::VerticalRemoved.as_str(),
            Some(release_reason::VERTICAL_REMOVED),
        ),
        BeforeDelivery::Mismatch => (
            PostStatus::Mismatch,
            "ping_fields_changed",
            Some(release_reason::MISMATCH),
        ),
        BeforeDelivery::Duplicate => (
            PostStatus::Duplicate,
            DUPLICATE_REASON,
            Some(release_reason::DUPLICATE),
        ),
        BeforeDelivery::Suppressed => (
            PostStatus::Suppressed,
            SUPPRESSED_REASON,
            Some(release_reason::SUPPRESSED),
        ),
    };
    Refusal {
        status,
        reason,
        release: hold.map(|r| (r, why)),
        why,
    }
}

/// The release of an auction's hold when its quote could not be kept (the quote book or
/// the seller's open-quote limit was full): [`release_reason::QUOTE_REFUSED`].
pub fn quote_refused(hold: Option<Reservation>) -> Option<HoldRelease> {
    hold.map(|r| (r, Some(release_reason::QUOTE_REFUSED)))
}

/// A delivery record's `windows` and `tz`: the hold's windows of the moment the lead was
/// sent, `sent_at`, with `buyer`'s zone when they are its zone's; when they are another
/// zone's (the buyer's `timezone` changed by reload while its quote was open), the
/// windows of `sent_at` in the buyer's zone now, with that zone (black-box round 125a:
/// the record kept the old zone's windows without `tz`, and a restart into the old zone
/// did not count the lead in the new zone's hour still running, which was sold a lead
/// past its cap).
fn record_windows(
    counted: Option<Windows>,
    buyer: Option<&crate::config::Buyer>,
    sent_at: UnixMs,
) -> (Option<Windows>, Option<&'static str>) {
    match (zone_of(counted, buyer), counted, buyer) {
        (None, Some(w), Some(b)) => match Windows::at(b.timezone, sent_at) {
            Some(now) => (Some(now), Some(b.timezone.name())),
            None => (Some(w), None),
        },
        (tz, w, _) => (w, tz),
    }
}

/// The name of `buyer`'s zone when `windows` are its windows (those of their own hour in
/// that zone), for a record's `tz`; `None` otherwise, or without windows.
fn zone_of(windows: Option<Windows>, buyer: Option<&crate::config::Buyer>) -> Option<&'static str> {
    let (w, b) = (windows?, buyer?);
    (Windows::at(b.timezone, w.hour_start_ms) == Some(w)).then(|| b.timezone.name())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::caps::CapBook;
    use crate::config::Caps;
    use crate::testutil::{buyer, utc_ms};

    fn m(units: i64) -> Micros {
        Micros(units * 1_000_000)
    }

    /// A buyer that may take one lead an hour.
    fn one_an_hour() -> Buyer {
        Buyer {
            caps: Caps {
                hourly: Some(1),
                ..Caps::default()
            },
            ..buyer(0)
        }
    }

    fn late<'a>(b: Option<&'a Buyer>, hold: Option<Reservation>, test: bool) -> LateAnswer<'a> {
        LateAnswer {
            generation: 7,
            lead_id: "ld_1",
            auction_id: "au_1",
            attempt: 2,
            buyer: b,
            price: m(5),
            windows: hold.as_ref().map(|r| r.windows),
            test,
            hold,
        }
    }

    /// Carries out the cap effects as the shell does (through the settlement).
    fn carry_out(book: &CapBook, effects: &[Effect<'_>]) {
        let s = Settlement::new(book);
        for e in effects {
            if let Effect::Cap(op) = e {
                assert!(s.settle(op), "{op:?} changed nothing");
            }
        }
    }

    fn late_accept_record(e: &Effect<'_>, at: UnixMs) {
        let Effect::Record(rec @ Record::PostAttempt(a)) = e else {
            panic!("not a post attempt record: {e:?}");
        };
        assert!(rec.is_durable(), "a late accept is durable");
        assert_eq!(a.head, Head::new(7, at));
        assert_eq!(
            (a.lead_id, a.auction_id, a.buyer, a.attempt, a.outcome),
            ("ld_1", "au_1", "b0", 2, LATE_ACCEPT)
        );
        assert_eq!(a.reason, None);
    }

    #[test]
    fn a_late_accept_with_a_hold_is_recorded_then_commits_the_hold() {
        let b = one_an_hour();
        let book = CapBook::new(1);
        let t = utc_ms(2026, 11, 30, 10, 5);
        let hold = book.reserve(b.key, &b, m(5), t).unwrap();
        let now = t + 3_000;
        let s = settle_late_answer(late(Some(&b), Some(hold.clone()), false), true, now);
        assert!(s.sold);
        assert_eq!(s.effects.len(), 2, "{:?}", s.effects);
        late_accept_record(&s.effects[0], now);
        assert_eq!(s.effects[1], Effect::Cap(CapOp::Commit(hold)));
        carry_out(&book, &s.effects);
        let u = book.usage(b.key, &b, now);
        assert_eq!((u.sold_hour, u.reserved, u.spent_day), (1, 0, m(5)));
    }

    #[test]
    fn a_late_accept_with_no_hold_counts_in_the_windows_of_now_whatever_the_headroom() {
        let b = Buyer {
            timezone: chrono_tz::America::Chicago,
            ..one_an_hour()
        };
        let book = CapBook::new(1);
        let now = utc_ms(2026, 11, 30, 10, 5);
        // The hour's one lead is taken already.
        let sold = book.reserve(b.key, &b, m(1), now).unwrap();
        assert!(book.commit(&sold));
        assert!(
            book.reserve(b.key, &b, m(1), now).is_err(),
            "the cap is full"
        );
        let s = settle_late_answer(late(Some(&b), None, false), true, now);
        assert!(s.sold);
        assert_eq!(s.effects.len(), 2, "{:?}", s.effects);
        late_accept_record(&s.effects[0], now);
        let windows = Windows::at(chrono_tz::America::Chicago, now).unwrap();
        assert_eq!(
            s.effects[1],
            Effect::Cap(CapOp::CountSold {
                buyer: b.key,
                windows,
                price: m(5),
            })
        );
        carry_out(&book, &s.effects);
        let u = book.usage(b.key, &b, now);
        assert_eq!(
            (u.sold_hour, u.spent_day),
            (2, m(6)),
            "counted past the cap"
        );
    }

    #[test]
    fn a_late_accept_with_no_hold_counts_in_the_windows_the_post_knew() {
        let b = buyer(0);
        let quoted = utc_ms(2026, 11, 30, 23, 59);
        let now = utc_ms(2026, 12, 1, 0, 1);
        let known = Windows::at(b.timezone, quoted).unwrap();
        let mut l = late(Some(&b), None, false);
        l.windows = Some(known);
        let s = settle_late_answer(l, true, now);
        assert_eq!(
            s.effects[1],
            Effect::Cap(CapOp::CountSold {
                buyer: b.key,
                windows: known,
                price: m(5),
            }),
            "the day it was sent in, not the day of the answer"
        );
        let book = CapBook::new(1);
        carry_out(&book, &s.effects);
        assert_eq!(book.usage(b.key, &b, quoted).sold_day, 1);
        assert_eq!(book.usage(b.key, &b, now).sold_day, 0);
        // A buyer the cap store does not know: nothing is counted.
        let Effect::Cap(op) = &s.effects[1] else {
            panic!("not a cap operation");
        };
        assert!(!Settlement::new(&CapBook::new(0)).settle(op));
    }

    #[test]
    fn a_test_lead_accepted_late_is_recorded_and_counted_in_no_cap() {
        let b = buyer(0);
        let now = utc_ms(2026, 11, 30, 10, 5);
        let s = settle_late_answer(late(Some(&b), None, true), true, now);
        assert!(s.sold);
        assert_eq!(s.effects.len(), 1, "{:?}", s.effects);
        late_accept_record(&s.effects[0], now);
    }

    #[test]
    fn a_late_accept_off_the_calendar_is_recorded_and_counted_nowhere() {
        let b = buyer(0);
        let now = UnixMs::MAX;
        assert_eq!(Windows::at(b.timezone, now), None);
        let s = settle_late_answer(late(Some(&b), None, false), true, now);
        assert!(s.sold);
        assert_eq!(s.effects.len(), 1, "{:?}", s.effects);
        late_accept_record(&s.effects[0], now);
    }

    /// No accept: recorded (`late_no_accept`, so a replay after a crash knows the buyer
    /// does not have the lead: black-box round 10), then the hold released.
    #[test]
    fn no_late_accept_is_recorded_and_releases_the_hold() {
        let b = one_an_hour();
        let book = CapBook::new(1);
        let now = utc_ms(2026, 11, 30, 10, 5);
        let hold = book.reserve(b.key, &b, m(5), now).unwrap();
        let s = settle_late_answer(late(Some(&b), Some(hold.clone()), false), false, now);
        assert!(!s.sold);
        fn recorded(e: &Effect<'_>) -> Option<(String, String, usize, &'static str)> {
            match e {
                Effect::Record(Record::PostAttempt(a)) => {
                    assert!(!Record::PostAttempt(a.clone()).is_durable());
                    Some((a.lead_id.into(), a.buyer.into(), a.attempt, a.outcome))
                }
                _ => None,
            }
        }
        assert_eq!(s.effects.len(), 2, "{:?}", s.effects);
        assert_eq!(
            recorded(&s.effects[0]),
            Some(("ld_1".into(), b.id.clone(), 2, LATE_NO_ACCEPT))
        );
        assert_eq!(s.effects[1], Effect::Cap(CapOp::Release(hold)));
        carry_out(&book, &s.effects);
        let u = book.usage(b.key, &b, now);
        assert_eq!((u.sold_hour, u.reserved), (0, 0));
        // No hold (a test lead's attempt): the record only.
        for test in [false, true] {
            let s = settle_late_answer(late(Some(&b), None, test), false, now);
            assert!(!s.sold);
            assert_eq!(s.effects.len(), 1, "{:?}", s.effects);
            assert_eq!(recorded(&s.effects[0]).map(|r| r.3), Some(LATE_NO_ACCEPT));
        }
    }

    #[test]
    fn a_late_accept_by_a_buyer_a_reload_removed_only_releases_the_hold() {
        let b = buyer(0);
        let book = CapBook::new(1);
        let now = utc_ms(2026, 11, 30, 10, 5);
        let hold = book.reserve(b.key, &b, m(5), now).unwrap();
        let s = settle_late_answer(late(None, Some(hold.clone()), false), true, now);
        assert!(!s.sold);
        assert_eq!(s.effects, vec![Effect::Cap(CapOp::Release(hold))]);
        let s = settle_late_answer(late(None, None, false), true, now);
        assert!(!s.sold);
        assert!(s.effects.is_empty(), "{:?}", s.effects);
    }

    #[test]
    fn refusals_before_delivery_answer_and_release_as_before() {
        let b = buyer(0);
        let book = CapBook::new(1);
        let now = utc_ms(2026, 11, 30, 10, 5);
        let hold = book.reserve(b.key, &b, m(5), now).unwrap();
        let cases = [
            (
                BeforeDelivery::Expired,
                PostStatus::Expired,
                "quote_expired",
                None,
            ),
            (
                BeforeDelivery::VerticalRemoved,
                PostStatus::Unsold,
                "vertical_removed",
                Some("vertical_removed"),
            ),
            (
                BeforeDelivery::Mismatch,
                PostStatus::Mismatch,
                "ping_fields_changed",
                Some("mismatch"),
            ),
        ];
        for (kind, status, reason, why) in cases {
            let r = refuse_before_delivery(kind, Some(hold.clone()));
            assert_eq!((r.status, r.reason), (status, reason), "{kind:?}");
            assert_eq!(r.release, Some((hold.clone(), why)), "{kind:?}");
            let a = r.answer("pg_1");
            assert_eq!(a.status, status);
            assert_eq!(a.reason.as_deref(), Some(reason));
            assert_eq!(a.ping_id.as_deref(), Some("pg_1"));
            assert_eq!(
                (a.lead_id, a.price, a.currency, a.buyer),
                (None, None, None, None)
            );
            assert!(a.changed_fields.is_empty());
            // No hold (a test lead's quote): the same answer, nothing to release.
            let r = refuse_before_delivery(kind, None);
            assert_eq!((r.status, r.reason, r.release), (status, reason, None));
        }
    }

    #[test]
    fn a_quote_not_kept_releases_its_hold_for_quote_refused() {
        let b = buyer(0);
        let book = CapBook::new(1);
        let now = utc_ms(2026, 11, 30, 10, 5);
        let hold = book.reserve(b.key, &b, m(5), now).unwrap();
        assert_eq!(
            quote_refused(Some(hold.clone())),
            Some((hold, Some("quote_refused")))
        );
        assert_eq!(quote_refused(None), None);
    }
}
