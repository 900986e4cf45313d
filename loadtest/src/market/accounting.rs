//! Revenue accounting, rolling series, drift-recovery detection, and the replay: what an
//! idealized exchange would realize under a ranking rule, from the same draws.

use serde::Serialize;

use super::world::World;

/// What became of one offered lead on one leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LeadOutcome {
    /// Index of the lead in the run.
    pub lead: u64,
    /// The ping got a bid.
    pub quoted: bool,
    /// A buyer accepted the post (`sold`).
    pub sold: bool,
    /// The buyer that accepted it.
    pub buyer: Option<usize>,
    /// What that buyer paid (its bid), micros.
    pub price_micros: i64,
    /// Accepted and kept: counts as realized revenue.
    pub kept: bool,
    /// Accepted and returned.
    pub returned: bool,
    /// Posts rejected for this lead (the winner and any fallbacks).
    pub rejected_posts: u32,
    /// Something failed for this lead (an HTTP error, an unexpected answer).
    pub error: bool,
}

impl LeadOutcome {
    /// The realized revenue: the price of a lead accepted and not returned.
    pub fn realized_micros(&self) -> i64 {
        if self.sold && self.kept && !self.returned {
            self.price_micros
        } else {
            0
        }
    }
}

/// A leg's totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LegSummary {
    /// Leads offered (pinged).
    pub leads: u64,
    /// Pings with a bid.
    pub quoted: u64,
    /// Posts sold.
    pub sold: u64,
    /// Sold and kept.
    pub kept: u64,
    /// Sold and returned.
    pub returned: u64,
    /// Posts rejected (counting every buyer tried).
    pub rejected_posts: u64,
    /// Leads with an error.
    pub errors: u64,
    /// Gross revenue of the sales (before returns), micros.
    pub sold_micros: i64,
    /// Realized revenue (kept sales), micros.
    pub realized_micros: i64,
    /// Realized revenue per lead offered, in dollars.
    pub realized_per_lead: f64,
    /// Sales per buyer, in buyer order.
    pub sold_by_buyer: Vec<u64>,
    /// Kept sales per buyer.
    pub kept_by_buyer: Vec<u64>,
}

/// Sums a leg's outcomes.
pub fn summarize(outcomes: &[LeadOutcome], buyers: usize) -> LegSummary {
    let mut s = LegSummary {
        sold_by_buyer: vec![0; buyers],
        kept_by_buyer: vec![0; buyers],
        ..LegSummary::default()
    };
    for o in outcomes {
        s.leads += 1;
        s.quoted += u64::from(o.quoted);
        s.rejected_posts += u64::from(o.rejected_posts);
        s.errors += u64::from(o.error);
        if o.sold {
            s.sold += 1;
            s.sold_micros += o.price_micros;
            if let Some(c) = o.buyer.and_then(|b| s.sold_by_buyer.get_mut(b)) {
                *c += 1;
            }
            if o.returned {
                s.returned += 1;
            } else if o.kept {
                s.kept += 1;
                if let Some(c) = o.buyer.and_then(|b| s.kept_by_buyer.get_mut(b)) {
                    *c += 1;
                }
            }
        }
        s.realized_micros += o.realized_micros();
    }
    s.realized_per_lead = if s.leads == 0 {
        0.0
    } else {
        s.realized_micros as f64 / 1e6 / s.leads as f64
    };
    s
}

/// Realized dollars per lead, lead by lead.
pub fn revenue_series(outcomes: &[LeadOutcome]) -> Vec<f64> {
    outcomes
        .iter()
        .map(|o| o.realized_micros() as f64 / 1e6)
        .collect()
}

/// The mean of the `window` values ending at each index; `None` until a whole window.
pub fn rolling_mean(series: &[f64], window: usize) -> Vec<Option<f64>> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(series.len());
    let mut sum = 0.0;
    for (i, x) in series.iter().enumerate() {
        sum += x;
        if i >= w {
            sum -= series[i - w];
        }
        out.push((i + 1 >= w).then(|| sum / w as f64));
    }
    out
}

/// How the EV leg came back after the drift.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recovery {
    /// Index (in the series) of the first drifted lead.
    pub drift_at: usize,
    /// The rolling window, leads.
    pub window: usize,
    /// The ratio to reach.
    pub threshold: f64,
    /// Leads from the drift to the end of the first window, lying wholly after the drift,
    /// from which on every window's EV/oracle ratio is at least `threshold` to the end of
    /// the run (so at least `window`); `None`: the last window is still below it.
    pub recovered_after_leads: Option<usize>,
    /// The lowest rolling ratio of a window ending at or after the drift.
    pub min_ratio_after_drift: Option<f64>,
    /// Some window ending after the drift had a ratio below the threshold (the drift
    /// showed at all).
    pub dipped: bool,
}

fn window_ratio(ev: &[f64], oracle: &[f64], end: usize, w: usize) -> Option<f64> {
    let lo = end + 1 - w;
    let e: f64 = ev.get(lo..=end)?.iter().sum();
    let o: f64 = oracle.get(lo..=end)?.iter().sum();
    (o > 0.0).then_some(e / o)
}

/// Finds when the rolling EV/oracle revenue ratio gets back to `threshold` after
/// `drift_at` (see [`Recovery`]). The two series are lead-aligned.
pub fn recovery(
    ev: &[f64],
    oracle: &[f64],
    drift_at: usize,
    window: usize,
    threshold: f64,
) -> Recovery {
    let w = window.max(1);
    let n = ev.len().min(oracle.len());
    let mut min: Option<f64> = None;
    // The first window end (wholly after the drift) of the run's final stretch at or above
    // the threshold.
    let mut since: Option<usize> = None;
    let first_end = drift_at.max(w - 1);
    for end in first_end..n {
        let Some(r) = window_ratio(ev, oracle, end, w) else {
            continue;
        };
        min = Some(min.map_or(r, |m: f64| m.min(r)));
        if end + 1 < drift_at + w {
            continue;
        }
        if r >= threshold {
            since.get_or_insert(end);
        } else {
            since = None;
        }
    }
    let recovered = since.map(|end| end + 1 - drift_at);
    Recovery {
        drift_at,
        window: w,
        threshold,
        recovered_after_leads: recovered,
        min_ratio_after_drift: min,
        dipped: min.is_some_and(|m| m < threshold),
    }
}

/// How a replay ranks the bids of an auction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// By bid (the price-only exchange).
    Price,
    /// By bid x the true P(realization) (what the oracle exchange approximates).
    TrueEv,
}

/// The seller's share of the winning bid in the market's configuration (revenue share).
pub const SELLER_SHARE_PCT: i64 = 80;
/// Buyers a post tries at most (the exchange's default `server.post_attempts_max`).
pub const POST_ATTEMPTS_MAX: usize = 5;

/// What an idealized exchange (no exploration, no estimation error) would do with lead
/// `i`: rank the bids, post to the winner, fall back down the ranking to bids that still
/// cover the seller's price, as the exchange does.
pub fn replay_lead(world: &World, i: u64, features: &[f32; 4], rank: Rank) -> LeadOutcome {
    let mut bids: Vec<(usize, i64, f64)> = (0..world.buyers.len())
        .filter_map(|k| {
            let b = world.bid(i, features, k)?;
            let key = match rank {
                Rank::Price => b.0 as f64,
                Rank::TrueEv => b.0 as f64 * f64::from(world.realize(i, features, k).p),
            };
            Some((k, b.0, key))
        })
        .collect();
    let mut out = LeadOutcome {
        lead: i,
        ..LeadOutcome::default()
    };
    if bids.is_empty() {
        return out;
    }
    out.quoted = true;
    // Highest key first; ties by bid, then by buyer id (as the exchange breaks them).
    bids.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then(b.1.cmp(&a.1))
            .then_with(|| world.ids[a.0].cmp(&world.ids[b.0]))
    });
    let seller_price = bids[0].1 * SELLER_SHARE_PCT / 100;
    for (n, (k, bid, _)) in bids.iter().filter(|b| b.1 >= seller_price).enumerate() {
        if n >= POST_ATTEMPTS_MAX {
            break;
        }
        let r = world.realize(i, features, *k);
        if r.kept || r.returns {
            out.sold = true;
            out.buyer = Some(*k);
            out.price_micros = *bid;
            out.kept = r.kept;
            out.returned = !r.kept;
            return out;
        }
        out.rejected_posts += 1;
    }
    out
}
