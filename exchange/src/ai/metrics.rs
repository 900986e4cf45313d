//! Metrics that judge a binary model on a held-out set: AUC, log loss, calibration.
//!
//! Conventions: `p` are predicted probabilities, `y` labels; a label counts as positive
//! when it is > 0.5. When `p` and `y` differ in length only the common prefix is used.

use serde::{Deserialize, Serialize};

/// Probabilities are clipped to `[LOGLOSS_EPS, 1 - LOGLOSS_EPS]` in [`logloss`].
pub const LOGLOSS_EPS: f64 = 1e-15;

/// Area under the ROC curve, rank-based (Mann-Whitney U): the probability that a random
/// positive is scored above a random negative, ties counting one half (tied scores get
/// their average rank). `None` when either class is absent. NaN scores sort lowest.
pub fn auc(p: &[f32], y: &[f32]) -> Option<f64> {
    let n = p.len().min(y.len());
    let mut idx: Vec<usize> = (0..n).collect();
    let key = |i: usize| {
        let v = p[i];
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    };
    idx.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let positives = (0..n).filter(|&i| y[i] > 0.5).count();
    let negatives = n - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && key(idx[j]) == key(idx[i]) {
            j += 1;
        }
        // ranks i+1 ..= j, average (i + 1 + j) / 2
        let avg = (i + 1 + j) as f64 / 2.0;
        let pos_in_group = idx[i..j].iter().filter(|&&k| y[k] > 0.5).count();
        rank_sum += avg * pos_in_group as f64;
        i = j;
    }
    let np = positives as f64;
    let nn = negatives as f64;
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Mean binary log loss (natural log), probabilities clipped to
/// `[LOGLOSS_EPS, 1 - LOGLOSS_EPS]`; a NaN probability counts as 0.5. 0.0 when empty.
pub fn logloss(p: &[f32], y: &[f32]) -> f64 {
    let n = p.len().min(y.len());
    if n == 0 {
        return 0.0;
    }
    let total: f64 = p
        .iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = if p.is_nan() { 0.5 } else { f64::from(p) };
            let p = p.clamp(LOGLOSS_EPS, 1.0 - LOGLOSS_EPS);
            if y > 0.5 {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / n as f64
}

/// One bin of a calibration table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge of the bin (inclusive).
    pub lo: f64,
    /// Upper edge (exclusive, except the last bin, which includes 1.0).
    pub hi: f64,
    /// Rows whose prediction falls in the bin.
    pub count: u64,
    /// Mean predicted probability of those rows (0.0 when empty).
    pub mean_predicted: f64,
    /// Share of those rows that are positive (0.0 when empty).
    pub observed_rate: f64,
}

/// Calibration table: `bins` equal-width bins over [0, 1] on the predicted probability
/// (predictions clipped into [0, 1]; NaN predictions are skipped). Every bin is listed,
/// empty ones with count 0. `bins == 0` gives an empty table.
pub fn calibration(p: &[f32], y: &[f32], bins: usize) -> Vec<CalibrationBin> {
    if bins == 0 {
        return Vec::new();
    }
    let mut count = vec![0u64; bins];
    let mut sum_p = vec![0.0f64; bins];
    let mut sum_y = vec![0.0f64; bins];
    for (&p, &y) in p.iter().zip(y) {
        if p.is_nan() {
            continue;
        }
        let p = f64::from(p).clamp(0.0, 1.0);
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        sum_p[b] += p;
        if y > 0.5 {
            sum_y[b] += 1.0;
        }
    }
    (0..bins)
        .map(|b| {
            let c = count[b];
            let (mean_predicted, observed_rate) = if c == 0 {
                (0.0, 0.0)
            } else {
                (sum_p[b] / c as f64, sum_y[b] / c as f64)
            };
            CalibrationBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: c,
                mean_predicted,
                observed_rate,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn auc_perfect_inverted_and_random() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[0.0, 0.0, 1.0, 1.0]), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[0.0, 0.0, 1.0, 1.0]), Some(0.0));
        // all tied: 0.5
        assert_eq!(auc(&[0.3; 4], &[0.0, 1.0, 0.0, 1.0]), Some(0.5));
    }

    #[test]
    fn auc_hand_computed_with_ties() {
        // positives 0.8, 0.4, 0.4; negatives 0.4, 0.1.
        // pairs (pos > neg): 0.8 beats both (2); each 0.4 ties 0.4 (0.5) and beats 0.1 (1)
        // => (2 + 1.5 + 1.5) / 6 = 5/6
        let p = [0.8, 0.4, 0.4, 0.4, 0.1];
        let y = [1.0, 1.0, 1.0, 0.0, 0.0];
        assert!(close(auc(&p, &y).unwrap(), 5.0 / 6.0));
        // order of rows does not matter
        let p2 = [0.4, 0.1, 0.8, 0.4, 0.4];
        let y2 = [0.0, 0.0, 1.0, 1.0, 1.0];
        assert!(close(auc(&p2, &y2).unwrap(), 5.0 / 6.0));
        // 1 inversion in 4 pairs: 0.75
        assert!(close(
            auc(&[0.1, 0.6, 0.5, 0.9], &[0.0, 0.0, 1.0, 1.0]).unwrap(),
            0.75
        ));
    }

    #[test]
    fn auc_none_for_one_class_or_empty() {
        assert_eq!(auc(&[0.1, 0.2], &[1.0, 1.0]), None);
        assert_eq!(auc(&[0.1, 0.2], &[0.0, 0.0]), None);
        assert_eq!(auc(&[], &[]), None);
    }

    #[test]
    fn logloss_hand_computed_and_clipped() {
        // -(ln 0.8 + ln 0.6) / 2
        let want = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        let got = logloss(&[0.8, 0.4], &[1.0, 0.0]);
        assert!((got - want).abs() < 1e-7, "{got} {want}");
        // a confident miss is clipped, not infinite
        let got = logloss(&[0.0], &[1.0]);
        assert!(close(got, -(LOGLOSS_EPS.ln())));
        let got = logloss(&[1.0], &[0.0]);
        assert!(got.is_finite() && got > 30.0);
        assert_eq!(logloss(&[], &[]), 0.0);
        assert!(close(logloss(&[f32::NAN], &[1.0]), 2f64.ln()));
    }

    #[test]
    fn calibration_hand_computed() {
        let p = [0.05, 0.15, 0.45, 0.55, 0.95, 1.0, 0.5];
        let y = [0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let t = calibration(&p, &y, 2);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].lo, t[0].hi, t[0].count), (0.0, 0.5, 3));
        assert!((t[0].mean_predicted - (0.05 + 0.15 + 0.45) / 3.0).abs() < 1e-7);
        assert!(close(t[0].observed_rate, 1.0 / 3.0));
        // 0.5 falls in the upper bin; 1.0 in the last bin
        assert_eq!((t[1].lo, t[1].hi, t[1].count), (0.5, 1.0, 4));
        assert!((t[1].mean_predicted - (0.55 + 0.95 + 1.0 + 0.5) / 4.0).abs() < 1e-7);
        assert!(close(t[1].observed_rate, 0.75));

        let t = calibration(&[0.05, f32::NAN], &[1.0, 1.0], 10);
        assert_eq!(t.len(), 10);
        assert_eq!(t[0].count, 1);
        assert!(t[1..]
            .iter()
            .all(|b| b.count == 0 && b.observed_rate == 0.0));
        assert!(close(t[9].hi, 1.0));
        assert!(calibration(&p, &y, 0).is_empty());
        // serializable for the manifest
        let json = serde_json::to_string(&t[0]).unwrap();
        let back: CalibrationBin = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t[0]);
    }
}
