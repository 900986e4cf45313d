//! One auction as a state machine: who to ping and until when, which answers count, and
//! the award. It does no I/O and reads no clock: the shell sends the pings it lists,
//! feeds back each answer (or the passing of a bound) with `now`, then asks for the award
//! and carries out the [`Effect`]s (cap settlement, ledger record, metrics, breakers).
//!
//! Life of an auction:
//! 1. [`Auction::new`]: eligibility (filters, caps headroom), then the fan-out limit and
//!    the breakers; each buyer to ping gets its bound `min(arrival + auction deadline -
//!    response reserve, now + buyer ping timeout)` and `tmax_ms = bound - now`. A buyer
//!    with no time left is recorded as a timeout and not pinged.
//! 2. Collection: [`Auction::poll_timeout`] is the earliest bound still pending (`None`
//!    once every buyer answered or timed out); [`Auction::on_answer`] takes an answer at
//!    `now` (used only if `now <= bound`; later answers are late and ignored);
//!    [`Auction::handle_timeout`] times out every pending buyer whose bound is `<= now`.
//! 3. [`Auction::finish`]: bids above the vertical's `bid_max` become no-bids
//!    (`bid_above_max`); fixed-price buyers join; bids are ranked under the seller's
//!    payout model against the reserve; the winner is the best bid whose cap can be
//!    reserved (walking down while reservations fail; test leads reserve nothing); the
//!    no-bid reason, if any, is decided; one auction record is emitted.
//!
//! Architecture invariant: every auction decision is made here; the shell only moves
//! bytes, keeps time, and executes effects.

use proto::buyer::BidOutcome;
use proto::seller::NoBidReason;
use proto::{Lead, Micros};

use super::award::{self, Bid, Ranked, Ranker};
use super::breaker::Admit;
use super::caps::Reservation;
use super::effect::Effect;
use super::eligibility::{self, SkipSummary};
use super::record::{
    AuctionRecord, BoundedBuyersRecord, BuyerLine, BuyerOutcome, Head, QuoteHoldRecord, Record,
    SkippedRecord,
};
use super::settlement::{BuyerHealth, Settlement};
use super::UnixMs;
use crate::config::{BuyerIdx, Config, SellerIdx, VerticalIdx};

/// `"detail"` of a buyer that was not pinged because no time was left.
pub const NO_TIME_LEFT: &str = "no_time_left";

/// `"detail"` of a ping's bid that holds for less than `server.quote_min_ms` (recorded
/// `bid_expired`: it cannot back a firm quote).
pub const SHORTER_THAN_QUOTE_MIN: &str = "quote_min_ms";

/// A duration in ms as a `UnixMs` difference, saturating (a huge duration never wraps to
/// a negative one).
pub fn ms(d: u64) -> i64 {
    i64::try_from(d).unwrap_or(i64::MAX)
}

/// When a bid made in an auction that started at `arrival` stops holding: `None` when the
/// buyer did not say (it holds as long as the quote). A huge `expires_in_ms` saturates:
/// it never wraps into the past.
pub fn bid_expires_at(arrival: UnixMs, expires_in_ms: Option<u64>) -> Option<UnixMs> {
    expires_in_ms.map(|e| arrival.saturating_add(ms(e)))
}

/// When a quote on a bid of an auction that started at `arrival` stops being firm: the
/// quote TTL or the bid's own expiry, whichever is sooner, and never before `now`.
pub fn quote_end(
    arrival: UnixMs,
    expires_in_ms: Option<u64>,
    quote_ttl_ms: u64,
    now: UnixMs,
) -> UnixMs {
    let ttl = expires_in_ms.unwrap_or(u64::MAX).min(quote_ttl_ms);
    arrival.saturating_add(ms(ttl)).max(now)
}

/// How long after a quote's expiry (or a post's deadline) its lead may still be sent to
/// the buyer: a post accepted at the last moment is sent a little later. A hold stays
/// firm this much longer in the caps' windows ([`crate::caps::CapBook::reserve_until`]).
pub const DELIVERY_SLACK_MS: i64 = 1_000;

/// Everything an auction is decided from, besides the lead and `now`.
#[derive(Debug, Clone, Copy)]
pub struct AuctionParams<'a> {
    /// The runtime's configuration.
    pub config: &'a Config,
    /// The runtime's ranker (the award's objective).
    pub ranker: &'a dyn Ranker,
    /// The runtime generation (written in every record).
    pub generation: u64,
    pub seller: SellerIdx,
    pub vertical: VerticalIdx,
    /// The lead's score, if a model scored it.
    pub score: Option<u8>,
    /// The seller's `min_price` for this lead.
    pub min_price: Option<Micros>,
    /// The request's `consent` map, checked against the vertical's `consent_required`.
    pub consent: &'a std::collections::BTreeMap<String, String>,
    /// The lead was screened out before any buyer: `duplicate` (one of its dedup keys
    /// was sold within the vertical's window, [`crate::dedup::DedupBook::sold_within`]).
    /// It pings no buyer and is answered with this reason.
    pub screen: Option<NoBidReason>,
    /// A lead that may run its auction but not be sold: a direct post of a consumer
    /// another seller sold within the dedup window (`duplicate`). Buyers are pinged as
    /// usual; when a bid clears the reserve the award is this reason instead (nothing
    /// held), and otherwise the auction's own no-bid reason, so the answer tells the
    /// seller nothing a priced-out probe could learn (black-box round 29).
    pub refuse_award: Option<NoBidReason>,
    /// A test lead: buyers see `test: true` and no cap is reserved.
    pub test: bool,
    /// A direct post (`/v1/leads`) rather than a ping.
    pub direct: bool,
    pub auction_id: &'a str,
    pub ping_id: &'a str,
    /// When the request arrived: the auction deadline counts from here.
    pub arrival: UnixMs,
    /// The lead and context features the models saw (empty without a feature spec),
    /// recorded so training sees exactly what serving saw.
    pub lead_x: &'a [f32],
    /// The vertical's feature encoding version, when it declares features.
    pub features_version: Option<u32>,
    /// The model versions serving this auction.
    pub models: ModelVersions<'a>,
    /// The lead's keyed fingerprint (never the lead itself).
    pub lead_fingerprint: Option<&'a str>,
    /// A keyed ping's `Idempotency-Key` and body, as hex SHA-256 (never the key), so a
    /// retry after a restart gets the stored answer (see the shell's recovery).
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// Which model versions decided an auction (written in its record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelVersions<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lead_score: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub realization: Option<&'a str>,
}

impl ModelVersions<'_> {
    pub fn is_empty(&self) -> bool {
        self.lead_score.is_none() && self.realization.is_none()
    }
}

/// A buyer to ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingOrder {
    /// The handle to give back to [`Auction::on_answer`].
    pub slot: usize,
    pub buyer: BuyerIdx,
    /// The `tmax_ms` sent to the buyer.
    pub tmax_ms: u64,
    /// Answers after this instant are late.
    pub bound: UnixMs,
}

#[derive(Debug)]
enum Answer {
    Pending,
    /// In time: the outcome (`None`: the call failed) and how long it took.
    InTime(Option<BidOutcome>, u64),
    TimedOut,
}

#[derive(Debug)]
struct Slot {
    buyer: BuyerIdx,
    bound: UnixMs,
    tmax_ms: u64,
    answer: Answer,
}

/// One auction in progress.
#[derive(Debug)]
pub struct Auction<'a> {
    p: AuctionParams<'a>,
    slots: Vec<Slot>,
    lines: Vec<BuyerLine<'a>>,
    fixed: Vec<BuyerIdx>,
    /// Every buyer failed a filter, each on its cap.
    all_capped: bool,
    /// The request lacks a consent key its vertical requires: no buyer is pinged.
    /// Why the lead pings nobody: screened out, or without the consent it needs.
    screened: Option<NoBidReason>,
    /// The buyers that failed a filter (counts, and the first few by name).
    skipped: SkipSummary,
    /// Eligible buyers past `server.buyers_per_auction_max`: how many, and the first
    /// [`eligibility::SKIP_NAMES_MAX`] (a summary, not a line each: with thousands of
    /// eligible buyers a line and a metric series each would be the auction's cost).
    fanout_limited: (u32, Vec<BuyerIdx>),
    /// Eligible buyers skipped for an open breaker, bounded the same way (black-box round
    /// 133a: a line each made an auction record of 310 KB with 5,000 buyers down). Each
    /// still counts in its buyer's `skipped_breaker` metric.
    breaker_open: (u32, Vec<BuyerIdx>),
    /// Eligible buyers skipped because they held their `pings_in_flight_max` pings in
    /// flight, bounded the same way. Each counts in its buyer's `skipped_busy` metric.
    busy: (u32, Vec<BuyerIdx>),
    pending: usize,
    effects: Vec<Effect<'a>>,
}

/// The award: what the seller is answered and what the quote (or direct post) carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    /// The winner first (its cap reserved unless test), then the lower bids a post may
    /// fall back to, in rank order, at most `2 × server.post_attempts_max` in all
    /// ([`award::post_candidates`]). Empty with a no-bid.
    pub ranked: Vec<Ranked>,
    /// The winner's hold on its cap (`None` for a test lead or a no-bid).
    pub reservation: Option<Reservation>,
    /// Why there is no bid; `None` when there is a winner.
    pub no_bid: Option<NoBidReason>,
    /// When the auction started (bid expiry counts from here).
    pub arrival: UnixMs,
}

impl Award {
    /// The winner, if any.
    pub fn winner(&self) -> Option<&Ranked> {
        match self.no_bid {
            None => self.ranked.first(),
            Some(_) => None,
        }
    }

    /// When the quote stops being firm: the quote TTL or the winning bid's own expiry,
    /// whichever is sooner, counted from the auction's start, and never before `now`.
    pub fn quote_expires_at(&self, quote_ttl_ms: u64, now: UnixMs) -> UnixMs {
        quote_end(
            self.arrival,
            self.winner().and_then(|w| w.bid.expires_in_ms),
            quote_ttl_ms,
            now,
        )
    }

    /// The `quote_reserved` record of a quote kept in the book (none for a test lead).
    pub fn quote_reserved<'c>(
        &self,
        config: &'c Config,
        generation: u64,
        ping_id: &'c str,
        now: UnixMs,
    ) -> Option<Record<'c>> {
        let r = self.reservation.as_ref()?;
        Some(Record::QuoteReserved(QuoteHoldRecord {
            head: Head::new(generation, now),
            ping_id: Some(ping_id),
            buyer: config
                .buyer_by_key(r.buyer)
                .map_or("", |(_, b)| b.id.as_str()),
            price_micros: r.price.0,
            reason: None,
            changed_fields: &[],
            test: false,
        }))
    }
}

impl<'a> Auction<'a> {
    /// Starts an auction at `now` for `lead` (what buyers may see). Runs eligibility
    /// against `settlement`'s cap store and admission against `health`.
    pub fn new(
        p: AuctionParams<'a>,
        lead: &Lead,
        settlement: &Settlement<'_>,
        health: &dyn BuyerHealth,
        now: UnixMs,
    ) -> Auction<'a> {
        let cfg = p.config;
        // A screened-out lead (a duplicate), or one without the consent its vertical
        // requires, goes to no buyer: it is answered so before any filter or cap is
        // looked at.
        let screened = p.screen.or_else(|| {
            cfg.verticals
                .get(p.vertical)
                .and_then(|v| v.consent_missing(p.consent))
                .map(|_| NoBidReason::ConsentRequired)
        });
        if screened.is_some() {
            return Auction {
                p,
                slots: Vec::new(),
                lines: Vec::new(),
                fixed: Vec::new(),
                all_capped: false,
                screened,
                skipped: SkipSummary::default(),
                fanout_limited: (0, Vec::new()),
                breaker_open: (0, Vec::new()),
                busy: (0, Vec::new()),
                pending: 0,
                effects: Vec::new(),
            };
        }
        let elig = eligibility::select(cfg, p.vertical, lead, p.score, now, settlement.store());
        let all_capped = elig.all_capped();
        let n = elig.ping.len() + elig.fixed.len();
        let mut a = Auction {
            p,
            slots: Vec::with_capacity(elig.ping.len()),
            lines: Vec::with_capacity(n + 1),
            fixed: elig.fixed,
            all_capped,
            screened: None,
            skipped: elig.skipped,
            fanout_limited: (0, Vec::new()),
            breaker_open: (0, Vec::new()),
            busy: (0, Vec::new()),
            pending: 0,
            effects: Vec::with_capacity(n + 5),
        };
        if a.skipped.total() > 0 {
            a.effects.push(Effect::Skipped {
                counts: a.skipped.counts,
            });
        }
        let deadline_ms = cfg
            .verticals
            .get(p.vertical)
            .map_or(0, |v| v.auction_deadline_ms);
        let collect_until = p
            .arrival
            .saturating_add(ms(deadline_ms))
            .saturating_sub(ms(cfg.server.response_reserve_ms))
            .max(p.arrival);
        let mut admitted = 0usize;
        for &b in &elig.ping {
            let Some(buyer) = cfg.buyers.get(b) else {
                continue;
            };
            if admitted >= cfg.server.buyers_per_auction_max {
                count_bounded(&mut a.fanout_limited, b);
                continue;
            }
            let bound = collect_until.min(now.saturating_add(ms(buyer.ping_timeout_ms)));
            let tmax_ms = u64::try_from(bound.saturating_sub(now)).unwrap_or(0);
            // No time left: not pinged, and the breaker is not asked (asking it may
            // spend a half-open probe on a ping that never goes out).
            if tmax_ms == 0 {
                admitted += 1;
                a.line(b, BuyerOutcome::Timeout, None, Some(NO_TIME_LEFT), None);
                continue;
            }
            // A place among the buyer's pings in flight first, so that a buyer at its
            // limit does not spend a half-open breaker's probe on a ping never sent.
            if !health.take_ping_place(buyer.key, buyer.pings_in_flight_max) {
                skip(&mut a.busy, &mut a.effects, b, BuyerOutcome::SkippedBusy);
                continue;
            }
            if health.admit(buyer.key, now) == Admit::No {
                health.give_back_ping_place(buyer.key);
                skip(
                    &mut a.breaker_open,
                    &mut a.effects,
                    b,
                    BuyerOutcome::SkippedBreaker,
                );
                continue;
            }
            admitted += 1;
            a.slots.push(Slot {
                buyer: b,
                bound,
                tmax_ms,
                answer: Answer::Pending,
            });
        }
        if a.fanout_limited.0 > 0 {
            a.effects.push(Effect::FanoutLimited {
                count: a.fanout_limited.0,
            });
        }
        a.pending = a.slots.len();
        a
    }

    fn line(
        &mut self,
        idx: BuyerIdx,
        outcome: BuyerOutcome,
        bid_micros: Option<i64>,
        detail: Option<&'static str>,
        took_us: Option<u64>,
    ) {
        let buyer = self.p.config.buyers.get(idx).map_or("", |b| b.id.as_str());
        self.lines.push(BuyerLine {
            idx,
            buyer,
            outcome,
            bid_micros,
            detail,
            reason: None,
            took_us,
            p_ppm: None,
            p_est_ppm: None,
            bx: None,
        });
        // A buyer not pinged for want of time did nothing wrong: its breaker learns nothing.
        let breaker = match detail {
            Some(NO_TIME_LEFT) => None,
            _ => outcome.breaker_ok(),
        };
        self.effects.push(Effect::Ping {
            buyer: idx,
            outcome,
            took_us,
            breaker,
        });
    }

    /// The buyers to ping, each with its `tmax_ms` and bound.
    pub fn pings(&self) -> impl Iterator<Item = PingOrder> + '_ {
        self.slots.iter().enumerate().map(|(slot, s)| PingOrder {
            slot,
            buyer: s.buyer,
            tmax_ms: s.tmax_ms,
            bound: s.bound,
        })
    }

    /// Every buyer line so far (not pinged for the fan-out limit or an open breaker,
    /// pinged, then after `finish`, empty: the lines moved into the auction record).
    /// Buyers that failed a filter are in [`Auction::skipped`] instead.
    pub fn lines(&self) -> &[BuyerLine<'a>] {
        &self.lines
    }

    /// The buyers of the vertical that failed a filter.
    pub fn skipped(&self) -> &SkipSummary {
        &self.skipped
    }

    /// How many buyers are pinged.
    pub fn ping_count(&self) -> usize {
        self.slots.len()
    }

    /// When to stop waiting: the earliest bound of a buyer that has not answered; `None`
    /// once collection is over (everyone answered or timed out).
    pub fn poll_timeout(&self) -> Option<UnixMs> {
        if self.pending == 0 {
            return None;
        }
        self.slots
            .iter()
            .filter(|s| matches!(s.answer, Answer::Pending))
            .map(|s| s.bound)
            .min()
    }

    /// Takes buyer `slot`'s answer at `now` (`None`: the call failed), which took `took_us`.
    /// Used only when `now <= bound` and the buyer has not timed out; otherwise it is late
    /// and only counted.
    pub fn on_answer(
        &mut self,
        slot: usize,
        answer: Option<BidOutcome>,
        took_us: u64,
        now: UnixMs,
    ) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if matches!(s.answer, Answer::Pending) && now <= s.bound {
            s.answer = Answer::InTime(answer, took_us);
            self.pending -= 1;
        } else {
            let buyer = s.buyer;
            self.effects.push(Effect::LateAnswer { buyer });
        }
    }

    /// Times out every buyer still pending whose bound is `<= now`.
    pub fn handle_timeout(&mut self, now: UnixMs) {
        for s in &mut self.slots {
            if matches!(s.answer, Answer::Pending) && s.bound <= now {
                s.answer = Answer::TimedOut;
                self.pending -= 1;
            }
        }
    }

    /// Ends the auction at `now` (a buyer still pending counts as timed out) and decides
    /// the award. `took_us` is the time from the request's arrival (for the record).
    pub fn finish(&mut self, settlement: &Settlement<'_>, now: UnixMs, took_us: u64) -> Award {
        let p = self.p;
        let cfg = p.config;
        let bid_max = cfg.verticals.get(p.vertical).and_then(|v| v.bid_max);
        let vertical_currency = cfg.verticals.get(p.vertical).map(|v| v.currency.as_bytes());
        // The least life a ping's winning bid must give its quote; a direct post delivers
        // at once and needs none.
        let quote_min_ms = if p.direct {
            0
        } else {
            cfg.server.quote_min_ms.min(cfg.server.quote_ttl_ms)
        };
        let mut bids: Vec<Bid> = Vec::with_capacity(self.slots.len() + self.fixed.len());
        let slots = std::mem::take(&mut self.slots);
        for s in slots {
            let b = s.buyer;
            match s.answer {
                Answer::Pending | Answer::TimedOut => {
                    self.line(b, BuyerOutcome::Timeout, None, None, None);
                }
                Answer::InTime(None, took) => {
                    self.line(b, BuyerOutcome::Error, None, None, Some(took));
                }
                Answer::InTime(Some(BidOutcome::NoBid { reason }), took) => {
                    self.line(b, BuyerOutcome::NoBid, None, None, Some(took));
                    if let Some(line) = self.lines.last_mut() {
                        line.reason = reason;
                    }
                }
                Answer::InTime(Some(BidOutcome::Invalid(why)), took) => {
                    self.line(b, BuyerOutcome::Invalid, None, Some(why), Some(took));
                }
                Answer::InTime(
                    Some(BidOutcome::Bid {
                        price,
                        bid_id,
                        expires_in_ms,
                        currency,
                    }),
                    took,
                ) => {
                    // A bid in another currency than the vertical's is no bid: its
                    // amount means something else (black-box round 21).
                    if currency.is_some_and(|c| Some(&c[..]) != vertical_currency) {
                        self.line(b, BuyerOutcome::Invalid, None, Some("currency"), Some(took));
                        continue;
                    }
                    if bid_max.is_some_and(|max| price > max) {
                        self.line(
                            b,
                            BuyerOutcome::BidAboveMax,
                            Some(price.0),
                            None,
                            Some(took),
                        );
                        continue;
                    }
                    // A bid that no longer holds at the award cannot back a firm
                    // quote (`expires_in_ms: 0`, or shorter than the auction took).
                    if bid_expires_at(p.arrival, expires_in_ms).is_some_and(|t| t <= now) {
                        self.line(b, BuyerOutcome::BidExpired, Some(price.0), None, Some(took));
                        continue;
                    }
                    // Nor can a ping's bid that holds for less than the quote's least life:
                    // its quote would expire before the seller could post, and a high bid
                    // that expires at once would block every sale at no cost to its buyer
                    // (black-box round 26).
                    if expires_in_ms.is_some_and(|e| e < quote_min_ms) {
                        self.line(
                            b,
                            BuyerOutcome::BidExpired,
                            Some(price.0),
                            Some(SHORTER_THAN_QUOTE_MIN),
                            Some(took),
                        );
                        continue;
                    }
                    self.line(b, BuyerOutcome::Bid, Some(price.0), None, Some(took));
                    let Some(key) = cfg.buyers.get(b).map(|x| x.key) else {
                        continue;
                    };
                    bids.push(Bid {
                        buyer: key,
                        price,
                        bid_id,
                        expires_in_ms,
                        fixed: false,
                    });
                }
            }
        }
        let fixed = std::mem::take(&mut self.fixed);
        for &b in &fixed {
            let Some(buyer) = cfg.buyers.get(b) else {
                continue;
            };
            if let Some(price) = buyer.fixed_price {
                self.line(b, BuyerOutcome::FixedPrice, Some(price.0), None, None);
                bids.push(Bid {
                    buyer: buyer.key,
                    price,
                    bid_id: None,
                    expires_in_ms: None,
                    fixed: true,
                });
            }
        }
        // A buyer skipped (breaker open) or left out for want of time was never pinged.
        let pinged_or_fixed = self.lines.iter().any(|l| {
            !matches!(
                l.outcome,
                BuyerOutcome::SkippedBreaker | BuyerOutcome::SkippedBusy
            ) && l.detail != Some(NO_TIME_LEFT)
        });

        let (seller_payout, seller_reserve, seller_id) = match cfg.sellers.get(p.seller) {
            Some(s) => (s.payout, s.reserve, s.id.as_str()),
            None => (
                crate::config::PayoutModel::RevenueShare { share_bp: 0 },
                None,
                "",
            ),
        };
        let (floor, vertical_name, currency) = cfg
            .verticals
            .get(p.vertical)
            .map_or((Micros::ZERO, "", ""), |v| {
                (v.floor, v.name.as_str(), v.currency.as_str())
            });
        let reserve = award::reserve_price(p.min_price, seller_reserve, floor);
        let any_bid = !bids.is_empty();
        let ranking = award::rank(bids, seller_payout, reserve, p.ranker, p.score);
        let ranking_p: Vec<(crate::config::BuyerKey, Option<u32>, Option<u32>)> = ranking
            .ranked
            .iter()
            .map(|r| (r.bid.buyer, r.p_ppm, r.p_model_ppm))
            .collect();
        let mut reservation = None;
        let mut winner_pos = None;
        let mut refused = None;
        for (i, r) in ranking.ranked.iter().enumerate() {
            if p.refuse_award.is_some() {
                refused = p.refuse_award;
                break;
            }
            if p.test {
                winner_pos = Some(i);
                break;
            }
            let Some((idx, buyer)) = cfg.buyer_by_key(r.bid.buyer) else {
                continue;
            };
            // Firm until the quote's end: its lead may be delivered in the next hour. A
            // direct post holds no quote: its delivery starts now and ends by the post's
            // deadline (black-box round 90a: held for the quote TTL, it was refused
            // `capped` for a whole TTL before a window whose successor was full).
            let until = if p.direct {
                now.saturating_add(ms(cfg.server.post_deadline_ms))
            } else {
                quote_end(p.arrival, r.bid.expires_in_ms, cfg.server.quote_ttl_ms, now)
            }
            .saturating_add(DELIVERY_SLACK_MS);
            match settlement.reserve(buyer, r.bid.price, now, until) {
                Ok(res) => {
                    reservation = Some(res);
                    winner_pos = Some(i);
                    break;
                }
                Err(_) => {
                    let price = r.bid.price.0;
                    self.effects.push(Effect::CappedAtAward { buyer: idx });
                    self.lines.push(BuyerLine {
                        idx,
                        buyer: buyer.id.as_str(),
                        outcome: BuyerOutcome::CappedAtAward,
                        bid_micros: Some(price),
                        detail: None,
                        reason: None,
                        took_us: None,
                        p_ppm: r.p_ppm,
                        p_est_ppm: estimate_if_other(r.p_ppm, r.p_model_ppm),
                        bx: None,
                    });
                }
            }
        }
        let no_bid = match winner_pos {
            Some(_) => None,
            None if self.screened.is_some() => self.screened,
            None if refused.is_some() => refused,
            None if !ranking.ranked.is_empty() => Some(NoBidReason::Capped),
            None if !ranking.below.is_empty() => Some(NoBidReason::BelowReserve),
            None if any_bid => Some(NoBidReason::NoBids),
            None if self.all_capped => Some(NoBidReason::Capped),
            None if !pinged_or_fixed => Some(NoBidReason::NoEligibleBuyers),
            None => Some(NoBidReason::NoBids),
        };
        let ranked: Vec<Ranked> = match winner_pos {
            Some(pos) => award::post_candidates(
                ranking.ranked.into_iter().skip(pos).collect(),
                ranking.below,
                cfg.server.post_attempts_max,
            ),
            None => Vec::new(),
        };
        // Each bid's realization probability and the buyer features it was ranked with.
        for l in self.lines.iter_mut() {
            if !matches!(l.outcome, BuyerOutcome::Bid | BuyerOutcome::FixedPrice) {
                continue;
            }
            let Some(key) = cfg.buyers.get(l.idx).map(|b| b.key) else {
                continue;
            };
            if let Some(r) = ranking_p.iter().find(|(k, _, _)| *k == key) {
                l.p_ppm = r.1;
                l.p_est_ppm = estimate_if_other(r.1, r.2);
            }
            l.bx = p.ranker.buyer_features(key);
        }
        let winner = ranked.first();
        let record = AuctionRecord {
            head: Head::new(p.generation, now),
            auction_id: p.auction_id,
            ping_id: p.ping_id,
            seller: seller_id,
            vertical: vertical_name,
            currency,
            test: p.test,
            direct: p.direct,
            score: p.score,
            reserve_micros: reserve.0,
            skipped: SkippedRecord::new(&self.skipped, cfg),
            fanout_limited: BoundedBuyersRecord::of(&self.fanout_limited, cfg),
            breaker_open: BoundedBuyersRecord::of(&self.breaker_open, cfg),
            pings_in_flight_full: BoundedBuyersRecord::of(&self.busy, cfg),
            buyers: std::mem::take(&mut self.lines),
            winner: winner
                .and_then(|w| cfg.buyer_by_key(w.bid.buyer))
                .map(|(_, b)| b.id.as_str()),
            bid_micros: winner.map(|w| w.bid.price.0),
            seller_price_micros: winner.map(|w| w.seller_price.0),
            no_bid: no_bid.map(NoBidReason::as_str),
            took_us,
            features_version: p.features_version,
            x: p.lead_x,
            models: p.models,
            explore: p.ranker.explored(),
            lead_fingerprint: p.lead_fingerprint,
            idempotency_key_sha256: p.idempotency.map(|(k, _)| k),
            body_sha256: p.idempotency.map(|(_, b)| b),
        };
        self.effects.push(Effect::Record(Record::Auction(record)));
        self.effects.push(Effect::Auction { no_bid });
        let deadline_us = cfg
            .verticals
            .get(p.vertical)
            .map_or(0, |v| v.auction_deadline_ms)
            .saturating_mul(1000);
        if took_us > deadline_us {
            self.effects.push(Effect::DeadlineOverrun {
                late_us: took_us - deadline_us,
            });
        }
        Award {
            ranked,
            reservation,
            no_bid,
            arrival: p.arrival,
        }
    }

    /// The effects so far, in order, for the shell to carry out.
    pub fn effects(&mut self) -> std::vec::Drain<'_, Effect<'a>> {
        self.effects.drain(..)
    }
}

/// An eligible buyer skipped before its ping (`outcome`): counted in its bounded
/// `summary` and in its own metric, with no line and nothing for its breaker to learn.
fn skip(
    summary: &mut (u32, Vec<BuyerIdx>),
    effects: &mut Vec<Effect<'_>>,
    buyer: BuyerIdx,
    outcome: BuyerOutcome,
) {
    count_bounded(summary, buyer);
    effects.push(Effect::Ping {
        buyer,
        outcome,
        took_us: None,
        breaker: outcome.breaker_ok(),
    });
}

/// Counts `buyer` in a bounded summary: how many, and the first
/// [`eligibility::SKIP_NAMES_MAX`] in configuration order.
fn count_bounded(summary: &mut (u32, Vec<BuyerIdx>), buyer: BuyerIdx) {
    let (count, first) = summary;
    *count = count.saturating_add(1);
    if first.len() < eligibility::SKIP_NAMES_MAX {
        first.push(buyer);
    }
}

/// The estimate a bid's `p_ppm` came from, when the award used another figure (see
/// [`BuyerLine::p_est_ppm`]).
fn estimate_if_other(p_ppm: Option<u32>, estimate: Option<u32>) -> Option<u32> {
    match (p_ppm, estimate) {
        // A paused buyer's 0 (only a pause gives 0) is recorded with its estimate even
        // when that is 0 too, so a replay can say it was paused (black-box round 63c).
        (Some(p), Some(e)) if p != e || p == 0 => Some(e),
        _ => None,
    }
}

#[cfg(test)]
mod estimate_tests {
    use super::estimate_if_other;

    /// The estimate is kept where the award used another figure, and for every paused
    /// buyer (p 0), even one whose estimate was 0 (black-box round 63c).
    #[test]
    fn the_estimate_is_kept_where_the_award_used_another_figure_or_a_pause() {
        assert_eq!(
            estimate_if_other(Some(397_634), Some(754_460)),
            Some(754_460)
        );
        assert_eq!(estimate_if_other(Some(500_000), Some(500_000)), None);
        assert_eq!(estimate_if_other(Some(0), Some(508_783)), Some(508_783));
        assert_eq!(estimate_if_other(Some(0), Some(0)), Some(0));
        assert_eq!(estimate_if_other(Some(1), Some(0)), Some(0));
        assert_eq!(estimate_if_other(None, Some(5)), None);
    }
}
