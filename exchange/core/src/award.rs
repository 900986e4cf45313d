//! Ranking bids and the order of fallbacks.
//!
//! Owns: the seller price of each bid (the payout model: the exchange's margin), the
//! reserve (seller's `min_price`, seller reserve and vertical floor, whichever is highest),
//! the rank order with a deterministic tie-break, and which lower bids may take a post
//! after the winner fails. The value a bid is ranked by comes from a [`Ranker`]: price
//! today, expected value (bid times the chance the buyer accepts and keeps the lead) when
//! a model plugs in.
//!
//! Never: pays a seller more than the buyer pays (the margin is never negative), lets
//! floats touch money, or depends on the order bids arrived in.

use std::cmp::Ordering;

use proto::Micros;

use crate::config::{BuyerKey, PayoutModel};

/// One buyer's offer for a lead: a ping answer, or a fixed-price buyer's standing price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bid {
    /// Who bid (the buyer's stable key: a quote's bids outlive a reload).
    pub buyer: BuyerKey,
    /// What the buyer pays if it takes the lead.
    pub price: Micros,
    /// The buyer's own id for the bid, echoed in the post.
    pub bid_id: Option<String>,
    /// How long the buyer holds its bid; the quote expires no later.
    pub expires_in_ms: Option<u64>,
    /// A fixed-price buyer's standing price (not pinged).
    pub fixed: bool,
}

/// A bid that passed the reserve, with what the seller would be paid and its rank value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    /// The bid as the buyer made it (its price is what the buyer pays).
    pub bid: Bid,
    /// The seller's payout for this bid under the seller's payout model.
    pub seller_price: Micros,
    /// What the bid is ranked by (higher first); from the [`Ranker`]. Under expected
    /// value, the bid in micros times the realization probability.
    pub value: i64,
    /// The probability that the buyer accepts and keeps the lead, in parts per million,
    /// when the ranker predicted one (`None` under the price ranker).
    pub p_ppm: Option<u32>,
    /// The model's (or the cold-start rates') own estimate of that probability, before
    /// the drift guard and exploration changed it: what the drift guard compares the
    /// buyer's outcomes with. Not recorded (`None` for a quote restored from the ledger).
    pub p_model_ppm: Option<u32>,
}

/// The seam where the award's objective plugs in: the value of each bid to the exchange,
/// higher is better. Implementations must be deterministic (a replayed auction must rank
/// the same) and cheap (it runs for every auction). They see all the bids of one auction
/// at once, so a model scores them in one pass.
pub trait Ranker: Send + Sync + std::fmt::Debug {
    /// Sets `value` (and `p_ppm`, if the ranker predicts one) of every bid in `bids`, for
    /// a lead that scored `score` (if a model scored it).
    fn rank_values(&self, bids: &mut [Ranked], score: Option<u8>);

    /// Whether this auction explored (ranked by draws rather than the best estimate).
    fn explored(&self) -> bool {
        false
    }

    /// The buyer features `buyer`'s bid was ranked with, for the auction record.
    fn buyer_features(&self, _buyer: BuyerKey) -> Option<Vec<f32>> {
        None
    }
}

/// Ranks by what the seller is paid (seller price in micros): the classic price auction
/// (`routing.award = "price"`).
#[derive(Debug, Clone, Copy, Default)]
pub struct PriceRanker;

impl Ranker for PriceRanker {
    fn rank_values(&self, bids: &mut [Ranked], _score: Option<u8>) {
        for r in bids {
            r.value = r.seller_price.0;
            r.p_ppm = None;
        }
    }
}

/// The expected value of a bid of `price` that realizes with probability `p_ppm` parts
/// per million: integer micros, rounded down, exact (no float touches money).
pub fn expected_value(price: Micros, p_ppm: u32) -> i64 {
    let v = i128::from(price.0) * i128::from(p_ppm) / 1_000_000;
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The bids that can win, best first, and those the reserve turned away (so the seller
/// hears `below_reserve` rather than `no_bids`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranking {
    /// Best first: value desc, then a bid at probability 0 (a paused buyer's) after the
    /// others of its value, then bid price desc, then buyer key asc.
    pub ranked: Vec<Ranked>,
    /// Bids whose own seller price fell below the reserve (or to nothing): they never
    /// win, but one whose bid covers the price quoted for the winner may still take the
    /// post as a fallback, after every ranked one ([`post_candidates`]). Bid price desc,
    /// then buyer key asc; not valued by the ranker (`value` 0, no `p_ppm`).
    pub below: Vec<Ranked>,
}

/// Ranks `bids`. Each bid's seller price is `payout.seller_price(bid.price)`, capped at the
/// bid price; bids of zero or less are passes and are dropped silently; bids whose seller
/// price is below `reserve`, or zero, are not ranked and go to [`Ranking::below`]. The order
/// is total and independent of the input order: value desc, a bid at `p_ppm` 0 (a paused
/// buyer's) after the others of the same value, bid price desc (the buyer that pays more,
/// so more margin), buyer key asc.
pub fn rank(
    bids: Vec<Bid>,
    payout: PayoutModel,
    reserve: Micros,
    ranker: &dyn Ranker,
    score: Option<u8>,
) -> Ranking {
    let mut out = Ranking::default();
    for bid in bids {
        if bid.price <= Micros::ZERO {
            continue;
        }
        let seller_price = payout.seller_price(bid.price).min(bid.price);
        let to = if seller_price < reserve || seller_price <= Micros::ZERO {
            &mut out.below
        } else {
            &mut out.ranked
        };
        to.push(Ranked {
            bid,
            seller_price,
            value: 0,
            p_ppm: None,
            p_model_ppm: None,
        });
    }
    ranker.rank_values(&mut out.ranked, score);
    out.ranked.sort_by(rank_order);
    out.below.sort_by(|a, b| {
        b.bid
            .price
            .cmp(&a.bid.price)
            .then_with(|| a.bid.buyer.cmp(&b.bid.buyer))
    });
    out
}

/// The rank order: best first.
fn rank_order(a: &Ranked, b: &Ranked) -> Ordering {
    b.value
        .cmp(&a.value)
        .then_with(|| no_chance(a).cmp(&no_chance(b)))
        .then_with(|| b.bid.price.cmp(&a.bid.price))
        .then_with(|| a.bid.buyer.cmp(&b.bid.buyer))
}

/// A bid ranked at probability 0 (`p_ppm` 0: under expected value only a buyer paused
/// for a streak of unaccepted posts has it): after every other bid of the same value.
fn no_chance(r: &Ranked) -> bool {
    r.p_ppm == Some(0)
}

/// The fallbacks after the winner (`ranking[0]`), in rank order: only bids whose own price
/// still covers the seller price already quoted (`bid.price >= quoted`), so the seller is
/// paid what it was promised and the exchange's margin shrinks at worst to zero, never
/// below. A post delivers to at most `post_attempts_max - 1` of them.
pub fn fallback_order(ranking: &[Ranked], quoted: Micros) -> impl Iterator<Item = &Ranked> + '_ {
    ranking
        .iter()
        .skip(1)
        .filter(move |r| may_fall_back_to(r, quoted))
}

/// How many candidates (the winner included) a quote keeps for a post that may deliver
/// to `attempts_max` buyers: twice as many, so that fallbacks skipped without a delivery
/// (a bid expired, a cap or budget full, a buyer a reload removed) do not use up the
/// post's deliveries (black-box round 15: four expired fallbacks left a post that could
/// deliver to five buyers with one, and a sale was lost), while a quote's size stays
/// bounded whatever the number of bidders.
pub fn candidates_max(attempts_max: usize) -> usize {
    attempts_max.saturating_mul(2)
}

/// The bids a post can ever try, in order: the winner (first, `ranked[0]`), then the
/// first `candidates_max(attempts_max) - 1` others that [`may_fall_back_to`] the winner's
/// seller price (the price quoted): the ranked ones in rank order, then those below the
/// reserve (`below`, in its order). A bid below the reserve never wins, but the seller is
/// paid the quoted price whoever takes the lead, so one whose bid covers it is a fallback
/// as API.md states the rule (black-box round 130b: a 9.00 bid was never tried after the
/// 10.00 winner rejected a lead quoted 8.25 under a `min_price` of 8, and the lead went
/// unsold). A post delivers to at most `attempts_max` of exactly these, in this order, so
/// nothing dropped here could ever be tried; a quote keeps only these, and its size does
/// not grow with the number of bidders. A quote made under one configuration keeps that
/// configuration's `server.post_attempts_max`.
pub fn post_candidates(
    mut ranked: Vec<Ranked>,
    below: Vec<Ranked>,
    attempts_max: usize,
) -> Vec<Ranked> {
    let kept_max = candidates_max(attempts_max);
    let Some(quoted) = ranked.first().map(|w| w.seller_price) else {
        return ranked;
    };
    ranked.extend(below);
    let mut position = 0usize;
    let mut fallbacks = 0usize;
    ranked.retain(|r| {
        let keep = position == 0
            || (fallbacks.saturating_add(1) < kept_max && may_fall_back_to(r, quoted));
        if position > 0 && keep {
            fallbacks += 1;
        }
        position += 1;
        keep
    });
    ranked.shrink_to_fit();
    ranked
}

/// Whether a bid below the winner may take the post: its own bid covers the seller price
/// already quoted. The one statement of the rule ([`fallback_order`] and the post plan).
pub fn may_fall_back_to(r: &Ranked, quoted: Micros) -> bool {
    r.bid.price >= quoted
}

/// The least seller price that may be quoted: the highest of the seller's `min_price` for
/// this lead, the seller's configured reserve, and the vertical's floor.
pub fn reserve_price(
    min_price: Option<Micros>,
    seller_reserve: Option<Micros>,
    floor: Micros,
) -> Micros {
    floor
        .max(min_price.unwrap_or(Micros::ZERO))
        .max(seller_reserve.unwrap_or(Micros::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quote_keeps_only_the_candidates_a_post_can_try() {
        let r = |buyer: u32, price: i64, seller_price: i64| Ranked {
            bid: bid(buyer, m(price)),
            seller_price: m(seller_price),
            value: price,
            p_ppm: None,
            p_model_ppm: None,
        };
        // Winner quoted at 16; bids of 18 and 16 may fall back, 15 may not.
        let ranked = vec![
            r(0, 20, 16),
            r(1, 18, 14),
            r(2, 15, 12),
            r(3, 16, 13),
            r(4, 17, 13),
        ];
        let kept = |max| -> Vec<u32> {
            post_candidates(ranked.clone(), Vec::new(), max)
                .iter()
                .map(|x| x.bid.buyer.0)
                .collect()
        };
        // Twice the deliveries: room for fallbacks skipped without one.
        assert_eq!(kept(5), [0, 1, 3, 4]);
        assert_eq!(kept(2), [0, 1, 3, 4]);
        assert_eq!(kept(1), [0, 1]);
        assert_eq!(kept(0), [0]);
        assert!(post_candidates(Vec::new(), Vec::new(), 5).is_empty());
        // The same candidates, in the same order, as the fallback rule gives.
        let full: Vec<u32> = std::iter::once(&ranked[0])
            .chain(fallback_order(&ranked, m(16)))
            .take(2)
            .map(|x| x.bid.buyer.0)
            .collect();
        assert_eq!(kept(1), full);
    }

    /// Black-box round 130b: a bid whose own seller price is under the reserve never
    /// wins, but covers the quoted price and so falls back, after every ranked fallback;
    /// among those below the reserve, the higher bid first. One under the quote does not.
    #[test]
    fn a_bid_below_the_reserve_that_covers_the_quote_falls_back_last() {
        // 82.5 %: seller prices 8.25 (10), 7.425 (9), 7.59 (9.2), 6.6 (8), 8.25 (10).
        let share = PayoutModel::RevenueShare { share_bp: 8250 };
        let bids = vec![
            bid(0, m(10)),
            bid(1, m(9)),
            bid(2, Micros(9_200_000)),
            bid(3, m(8)),
            bid(4, m(10)),
        ];
        let r = rank(bids, share, m(8), &PriceRanker, None);
        assert_eq!(buyers(&r), [0, 4]);
        let below: Vec<u32> = r.below.iter().map(|x| x.bid.buyer.0).collect();
        assert_eq!(below, [2, 1, 3]);
        assert!(r.below.iter().all(|x| x.value == 0 && x.p_ppm.is_none()));
        let kept: Vec<u32> = post_candidates(r.ranked.clone(), r.below.clone(), 5)
            .iter()
            .map(|x| x.bid.buyer.0)
            .collect();
        // Quoted 8.25: 10 (ranked), then 9.2 and 9 (below, covering); 8 does not cover.
        assert_eq!(kept, [0, 4, 2, 1]);
        // The bound counts them: twice one delivery keeps the winner and one fallback.
        let kept: Vec<u32> = post_candidates(r.ranked, r.below, 1)
            .iter()
            .map(|x| x.bid.buyer.0)
            .collect();
        assert_eq!(kept, [0, 4]);
    }

    fn m(units: i64) -> Micros {
        Micros(units * 1_000_000)
    }

    fn bid(buyer: u32, price: Micros) -> Bid {
        Bid {
            buyer: BuyerKey(buyer),
            price,
            bid_id: Some(format!("b{buyer}")),
            expires_in_ms: None,
            fixed: false,
        }
    }

    const SHARE_80: PayoutModel = PayoutModel::RevenueShare { share_bp: 8000 };

    fn buyers(r: &Ranking) -> Vec<u32> {
        r.ranked.iter().map(|x| x.bid.buyer.0).collect()
    }

    #[test]
    fn revenue_share_margin() {
        let r = rank(
            vec![bid(0, m(20)), bid(1, Micros(1))],
            SHARE_80,
            Micros::ZERO,
            &PriceRanker,
            None,
        );
        assert_eq!(r.ranked[0].seller_price, m(16));
        assert_eq!(r.ranked[0].value, 16_000_000);
        // 80 % of one micro rounds down to nothing: nothing to quote.
        assert_eq!((r.ranked.len(), r.below.len()), (1, 1));
    }

    #[test]
    fn fixed_margin() {
        let model = PayoutModel::FixedMargin { margin: m(3) };
        let r = rank(
            vec![bid(0, m(20)), bid(1, m(3)), bid(2, m(2))],
            model,
            Micros::ZERO,
            &PriceRanker,
            None,
        );
        assert_eq!(buyers(&r), [0]);
        assert_eq!(r.ranked[0].seller_price, m(17));
        assert_eq!(r.below.len(), 2);
    }

    #[test]
    fn seller_never_paid_more_than_the_bid() {
        let generous = PayoutModel::RevenueShare { share_bp: 12_000 };
        let r = rank(
            vec![bid(0, m(10))],
            generous,
            Micros::ZERO,
            &PriceRanker,
            None,
        );
        assert_eq!(r.ranked[0].seller_price, m(10));
        let negative = PayoutModel::FixedMargin { margin: Micros(-5) };
        let r = rank(
            vec![bid(0, m(10))],
            negative,
            Micros::ZERO,
            &PriceRanker,
            None,
        );
        assert_eq!(r.ranked[0].seller_price, m(10));
    }

    #[test]
    fn below_reserve_is_counted_zero_bids_are_not() {
        let bids = vec![
            bid(0, m(10)),
            bid(1, m(5)),
            bid(2, Micros::ZERO),
            bid(3, Micros(-1)),
            bid(4, Micros(6_250_000)),
        ];
        // Seller prices 8, 4, -, -, 5. Reserve 5: 4 is below, 5 is not.
        let r = rank(bids, SHARE_80, m(5), &PriceRanker, None);
        assert_eq!(buyers(&r), [0, 4]);
        assert_eq!(r.below.len(), 1);
        assert_eq!(r.below[0].bid.buyer, BuyerKey(1));
        assert_eq!(r.below[0].seller_price, m(4));
    }

    #[derive(Debug)]
    struct Flat;
    impl Ranker for Flat {
        fn rank_values(&self, bids: &mut [Ranked], _: Option<u8>) {
            for r in bids {
                r.value = 7;
            }
        }
    }

    /// Value 0 for all; buyer 1 at p 0 (paused), the others with a chance.
    #[derive(Debug)]
    struct ZeroValues;
    impl Ranker for ZeroValues {
        fn rank_values(&self, bids: &mut [Ranked], _: Option<u8>) {
            for r in bids {
                r.value = 0;
                r.p_ppm = Some(if r.bid.buyer == BuyerKey(1) { 0 } else { 1 });
            }
        }
    }

    /// Black-box round 46: on a tie of value, a bid at probability 0 (a paused buyer's)
    /// ranks after the others, whatever its price; the rest by price as before.
    #[test]
    fn a_bid_at_probability_zero_ranks_after_the_others_of_its_value() {
        let bids = vec![bid(1, m(30)), bid(2, Micros(500_000)), bid(3, m(10))];
        let r = rank(bids, SHARE_80, Micros::ZERO, &ZeroValues, None);
        assert_eq!(buyers(&r), [3, 2, 1]);
    }

    #[test]
    fn tie_break_is_price_then_buyer_whatever_the_input_order() {
        let bids = vec![bid(3, m(10)), bid(1, m(12)), bid(2, m(10)), bid(0, m(9))];
        let expected = [1, 2, 3, 0];
        // Every one of the 24 input orders ranks the same.
        let mut orders = 0;
        for n in 0..4 * 4 * 4 * 4 {
            let order = [n % 4, n / 4 % 4, n / 16 % 4, n / 64];
            if (0..4).any(|i| !order.contains(&i)) {
                continue;
            }
            orders += 1;
            let perm: Vec<Bid> = order.iter().map(|&i| bids[i].clone()).collect();
            let r = rank(perm.clone(), SHARE_80, Micros::ZERO, &Flat, None);
            assert_eq!(buyers(&r), expected, "{perm:?}");
        }
        assert_eq!(orders, 24);
        // Equal seller price under the price ranker: same rule.
        let r = rank(bids, SHARE_80, Micros::ZERO, &PriceRanker, None);
        assert_eq!(buyers(&r), [1, 2, 3, 0]);
    }

    /// An expected-value ranker: price times an acceptance probability per buyer, in basis
    /// points, the shape a model will have.
    #[derive(Debug)]
    struct Expected(Vec<i64>);
    impl Ranker for Expected {
        fn rank_values(&self, bids: &mut [Ranked], score: Option<u8>) {
            for r in bids {
                let p_bp = self.0.get(r.bid.buyer.slot()).copied().unwrap_or(0);
                let score_bp = i64::from(score.unwrap_or(100)) * 100;
                r.value = r.seller_price.0 / 10_000 * p_bp / 10_000 * score_bp;
            }
        }
    }

    #[test]
    fn the_ranker_decides_the_order() {
        // Buyer 0 bids more but accepts 30 % of posts; buyer 1 accepts 90 %.
        let ev = Expected(vec![3_000, 9_000]);
        let r = rank(
            vec![bid(0, m(20)), bid(1, m(12))],
            SHARE_80,
            Micros::ZERO,
            &ev,
            Some(50),
        );
        assert_eq!(buyers(&r), [1, 0]);
        let r = rank(
            vec![bid(0, m(20)), bid(1, m(12))],
            SHARE_80,
            Micros::ZERO,
            &PriceRanker,
            Some(50),
        );
        assert_eq!(buyers(&r), [0, 1]);
    }

    #[test]
    fn fallbacks_must_cover_the_quoted_price() {
        let r = rank(
            vec![
                bid(0, m(20)),
                bid(1, m(18)),
                bid(2, m(16)),
                bid(3, m(15)),
                bid(4, m(17)),
            ],
            SHARE_80,
            Micros::ZERO,
            &PriceRanker,
            None,
        );
        let quoted = r.ranked[0].seller_price; // 16
        let fb: Vec<_> = fallback_order(&r.ranked, quoted)
            .map(|x| x.bid.buyer)
            .collect();
        // 18 and 17 cover 16; 16 covers it with zero margin; 15 would lose money.
        assert_eq!(fb, [BuyerKey(1), BuyerKey(4), BuyerKey(2)]);
        assert_eq!(fallback_order(&r.ranked[..1], quoted).count(), 0);
        assert_eq!(fallback_order(&[], quoted).count(), 0);
    }

    #[test]
    fn reserve_is_the_highest() {
        assert_eq!(reserve_price(None, None, m(1)), m(1));
        assert_eq!(reserve_price(Some(m(5)), Some(m(3)), m(1)), m(5));
        assert_eq!(reserve_price(Some(m(2)), Some(m(3)), m(1)), m(3));
        assert_eq!(reserve_price(Some(m(2)), None, m(4)), m(4));
    }
}
