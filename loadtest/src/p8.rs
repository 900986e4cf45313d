//! P8, the post path: a sale is durable and answered <= 2 ms p99 after the buyer accepts
//! (group commit), at 1,000 posts/s.
//!
//! The exchange times every sale itself, from the moment it has read the buyer's accept to
//! the moment the seller's `sold` answer is ready with the sale's record on disk
//! (`pingpost_sale_after_accept_seconds`, a histogram on the admin listener's `/metrics`).
//! `loadtest run p8-post` drives direct posts (`/v1/leads`) at the rate, scrapes that
//! histogram before and after each run and reports the quantiles of the difference. A
//! histogram gives each quantile as the bucket it falls in: the report gives the bucket's
//! upper bound (what the target is judged on: conservative) and the linear interpolation
//! inside it (as Prometheus' `histogram_quantile` does).

use std::net::SocketAddr;

use serde::Serialize;

/// The exchange's histogram.
pub const METRIC: &str = "pingpost_sale_after_accept_seconds";
/// The variable that carries the admin token to the exchange.
pub const ADMIN_TOKEN_ENV: &str = "PINGPOST_ADMIN_TOKEN";
/// P8's target for the p99, seconds.
pub const TARGET_P99_S: f64 = 0.002;

/// TOML appended to the generated configuration: the admin listener (for `/metrics`).
pub fn exchange_config_extra(admin_listen: SocketAddr) -> String {
    format!("\n[admin]\nlisten = \"{admin_listen}\"\ntoken_env = \"{ADMIN_TOKEN_ENV}\"\n")
}

/// One scrape of a Prometheus histogram without labels: cumulative counts by upper bound.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// `(le, cumulative count)`, in increasing `le`; the last is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
}

/// Where a quantile falls.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantile {
    pub q: f64,
    /// The lower bound of its bucket, seconds.
    pub lower_s: f64,
    /// The upper bound of its bucket (`+Inf` for the overflow bucket), seconds.
    pub upper_s: f64,
    /// Linear interpolation inside the bucket, seconds.
    pub interpolated_s: f64,
}

impl Histogram {
    /// Reads `name`'s `_bucket`, `_count` and `_sum` lines from a text exposition. `None`
    /// if it has no buckets or a line does not parse.
    pub fn parse(text: &str, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket{{le=\"");
        let count = format!("{name}_count ");
        let sum = format!("{name}_sum ");
        let mut h = Histogram::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let (le, value) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                h.buckets.push((le, value.trim().parse().ok()?));
            } else if let Some(v) = line.strip_prefix(&count) {
                h.count = v.trim().parse().ok()?;
            } else if let Some(v) = line.strip_prefix(&sum) {
                h.sum = v.trim().parse().ok()?;
            }
        }
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        (!h.buckets.is_empty()).then_some(h)
    }

    /// What was observed between `before` and `self` (two scrapes of the same histogram).
    pub fn minus(&self, before: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| {
                    let b = before
                        .buckets
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0, |x| x.1);
                    (*le, c.saturating_sub(b))
                })
                .collect(),
            count: self.count.saturating_sub(before.count),
            sum: self.sum - before.sum,
        }
    }

    /// The bucket quantile `q` (0 < q <= 1) falls in; `None` with no observations.
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let total = self.buckets.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for &(le, cum) in &self.buckets {
            if cum >= rank {
                let inside = (cum - below).max(1) as f64;
                let interpolated = if le.is_finite() {
                    lower + (le - lower) * ((rank - below) as f64 / inside)
                } else {
                    lower
                };
                return Some(Quantile {
                    q,
                    lower_s: lower,
                    upper_s: le,
                    interpolated_s: interpolated,
                });
            }
            lower = le;
            below = cum;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP pingpost_sale_after_accept_seconds x
# TYPE pingpost_sale_after_accept_seconds histogram
pingpost_sale_after_accept_seconds_bucket{le=\"0.0005\"} 10
pingpost_sale_after_accept_seconds_bucket{le=\"0.001\"} 90
pingpost_sale_after_accept_seconds_bucket{le=\"0.002\"} 99
pingpost_sale_after_accept_seconds_bucket{le=\"0.005\"} 100
pingpost_sale_after_accept_seconds_bucket{le=\"+Inf\"} 100
pingpost_sale_after_accept_seconds_sum 0.08
pingpost_sale_after_accept_seconds_count 100
pingpost_other_bucket{le=\"1\"} 7
";

    #[test]
    fn parses_and_finds_the_bucket_of_each_quantile() {
        let h = Histogram::parse(TEXT, METRIC).unwrap();
        assert_eq!(h.count, 100);
        assert_eq!(h.buckets.len(), 5);
        assert_eq!(h.buckets[4], (f64::INFINITY, 100));
        let p50 = h.quantile(0.5).unwrap();
        assert_eq!((p50.lower_s, p50.upper_s), (0.0005, 0.001));
        // Rank 50 is the 40th of the 80 in (0.5, 1] ms.
        assert!((p50.interpolated_s - 0.00075).abs() < 1e-12, "{p50:?}");
        let p99 = h.quantile(0.99).unwrap();
        assert_eq!((p99.lower_s, p99.upper_s), (0.001, 0.002));
        let p999 = h.quantile(0.999).unwrap();
        assert_eq!(p999.upper_s, 0.005);
    }

    #[test]
    fn the_difference_of_two_scrapes_is_what_happened_between() {
        let after = Histogram::parse(TEXT, METRIC).unwrap();
        let before_text = TEXT
            .replace("\"0.001\"} 90", "\"0.001\"} 10")
            .replace("\"0.002\"} 99", "\"0.002\"} 10")
            .replace("\"0.005\"} 100", "\"0.005\"} 10")
            .replace("\"+Inf\"} 100", "\"+Inf\"} 10")
            .replace("_count 100", "_count 10");
        let before = Histogram::parse(&before_text, METRIC).unwrap();
        let d = after.minus(&before);
        assert_eq!(d.count, 90);
        assert_eq!(d.buckets[0], (0.0005, 0));
        // All 90 new ones are above 0.5 ms: the median is in (0.5, 1] ms.
        assert_eq!(d.quantile(0.5).unwrap().upper_s, 0.001);
        assert_eq!(d.quantile(0.999).unwrap().upper_s, 0.005);
    }

    #[test]
    fn nothing_observed_or_nothing_to_read_is_none() {
        assert!(Histogram::parse("pingpost_other 1\n", METRIC).is_none());
        assert!(Histogram::parse(
            "pingpost_sale_after_accept_seconds_bucket{le=\"x\"} 1\n",
            METRIC
        )
        .is_none());
        let empty = Histogram::parse(TEXT, METRIC)
            .unwrap()
            .minus(&Histogram::parse(TEXT, METRIC).unwrap());
        assert_eq!(empty.quantile(0.99), None);
    }
}
