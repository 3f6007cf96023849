//! ROC curve over all distinct thresholds, exactly as scikit-learn's
//! `roc_curve`, and TPR at a given FPR in the two ways the field reads it.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::label::Polarity;
use crate::score_set::ScoreSet;
use crate::validate::check_rate;

/// Which ROC points to keep, as scikit-learn's `drop_intermediate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntermediatePoints {
    /// Every distinct score is a threshold: `roc_curve(..., drop_intermediate=False)`
    /// (SAFAS). Needed for an EER index that can fall inside a straight run.
    #[default]
    Keep,
    /// Drop points collinear with equal steps either side (`np.diff(_, 2) == 0`
    /// on both counts): scikit-learn's default `roc_curve(...)`, used by FA3's
    /// test EER, CFB `get_Threshold_List`, CFB's `Recall` interpolation,
    /// CDCN's threshold and SSDG/FLIP's `TPR@FPR=1%`.
    Drop,
}

/// ROC curve with the class high scores mean as the positive class
/// (`pos_label`). With higher = attack, `fpr` is BPCER and `tpr` is 1 - APCER;
/// with higher = bona fide, `fpr` is APCER and `tpr` is 1 - BPCER.
///
/// Like scikit-learn >= 1.3 the first point is (0, 0) at threshold
/// `f64::INFINITY`; the other thresholds are the distinct scores, descending,
/// and point `i` counts `score >= thresholds[i]` as positive.
///
/// Built only by [`RocCurve::new`] and read through its getters, so every
/// curve holds at least two points with three arrays of equal length.
#[derive(Debug, Clone, PartialEq)]
pub struct RocCurve {
    polarity: Polarity,
    thresholds: Vec<f64>,
    fpr: Vec<f64>,
    tpr: Vec<f64>,
}

impl RocCurve {
    /// The ROC curve of `set` in O(n) (the set is already sorted).
    pub fn new(set: &ScoreSet, points: IntermediatePoints) -> Self {
        let (high, low) = (set.high_scores(), set.low_scores());
        // Merge both ascending arrays from the top, one point per distinct score.
        let (mut i, mut j) = (high.len(), low.len());
        let capacity = high.len() + low.len() + 1;
        let mut thresholds = Vec::with_capacity(capacity);
        let mut tps = Vec::with_capacity(capacity);
        let mut fps = Vec::with_capacity(capacity);
        thresholds.push(f64::INFINITY);
        tps.push(0usize);
        fps.push(0usize);
        while i > 0 || j > 0 {
            let next = match (i, j) {
                (0, _) => low[j - 1],
                (_, 0) => high[i - 1],
                _ => high[i - 1].max(low[j - 1]),
            };
            while i > 0 && high[i - 1] == next {
                i -= 1;
            }
            while j > 0 && low[j - 1] == next {
                j -= 1;
            }
            thresholds.push(next);
            tps.push(high.len() - i);
            fps.push(low.len() - j);
        }
        if points == IntermediatePoints::Drop {
            (thresholds, tps, fps) = drop_intermediate(&thresholds, &tps, &fps);
        }
        let (n_high, n_low) = (high.len() as f64, low.len() as f64);
        Self {
            polarity: set.polarity(),
            thresholds,
            fpr: fps.iter().map(|&f| f as f64 / n_low).collect(),
            tpr: tps.iter().map(|&t| t as f64 / n_high).collect(),
        }
    }

    /// The set's polarity; the positive class is `polarity().high_class()`.
    pub fn polarity(&self) -> Polarity {
        self.polarity
    }

    /// Decreasing thresholds; `thresholds()[0] = f64::INFINITY`.
    pub fn thresholds(&self) -> &[f64] {
        &self.thresholds
    }

    /// False positive rate at each threshold, non-decreasing, from 0 to 1.
    pub fn fpr(&self) -> &[f64] {
        &self.fpr
    }

    /// True positive rate at each threshold, non-decreasing, from 0 to 1.
    pub fn tpr(&self) -> &[f64] {
        &self.tpr
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.thresholds.len()
    }

    /// Always false: a curve has at least its (0, 0) and (1, 1) points.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// TPR at `fpr` by linear interpolation, bit for bit NumPy's
    /// `np.interp(fpr, self.fpr(), self.tpr())` on this curve (CFB
    /// `Recall2/3/4` via `scipy.interp`, FA3 `Recall2`). At a repeated FPR it
    /// takes the last (highest) TPR, as NumPy does. The references interpolate
    /// scikit-learn's default curve: build it with [`IntermediatePoints::Drop`]
    /// for their exact values.
    pub fn tpr_at_fpr_interpolated(&self, fpr: f64) -> Result<f64> {
        check_rate("FPR", fpr)?;
        let (xs, ys) = (&self.fpr, &self.tpr);
        let last = xs.len() - 1;
        // Last index with xs[j] <= fpr: NumPy's binary_search_with_guess.
        let j = xs.partition_point(|&x| x <= fpr).saturating_sub(1);
        if fpr > xs[last] || j == last || xs[j] == fpr {
            return Ok(ys[j]);
        }
        if fpr < xs[0] {
            return Ok(ys[0]);
        }
        let slope = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]);
        Ok(slope * (fpr - xs[j]) + ys[j])
    }

    /// TPR at `fpr` without interpolation: `tpr[fpr <= x][-1]` on this curve,
    /// the TPR of the last point whose FPR does not exceed `fpr`.
    ///
    /// SSDG/FLIP (`utils/evaluate.py`, `TPR@FPR=1%`) run this on scikit-learn's
    /// default curve, `roc_curve(...)` with `drop_intermediate=True`: their
    /// value needs a curve built with [`IntermediatePoints::Drop`]. On the full
    /// curve ([`IntermediatePoints::Keep`]) the result can be higher, when
    /// the last point within `fpr` is a dropped one on a diagonal run.
    pub fn tpr_at_fpr_floor(&self, fpr: f64) -> Result<f64> {
        check_rate("FPR", fpr)?;
        let count = self.fpr.partition_point(|&x| x <= fpr);
        // fpr[0] = 0 <= any valid rate, so count >= 1.
        Ok(self.tpr[count.saturating_sub(1)])
    }
}

/// scikit-learn's `drop_intermediate`: on the curve without its leading (0, 0)
/// point, keep the first and last points and every point where either count's
/// second difference is non-zero (only when there are more than two points).
fn drop_intermediate(
    thresholds: &[f64],
    tps: &[usize],
    fps: &[usize],
) -> (Vec<f64>, Vec<usize>, Vec<usize>) {
    let n = thresholds.len() - 1;
    let corner = |k: usize| {
        // k indexes the curve without the leading point, i.e. index k + 1 here.
        let second_diff = |c: &[usize]| c[k + 2] + c[k] != 2 * c[k + 1];
        k == 0 || k + 1 == n || second_diff(tps) || second_diff(fps)
    };
    let keep: Vec<usize> = std::iter::once(0)
        .chain((0..n).filter(|&k| n <= 2 || corner(k)).map(|k| k + 1))
        .collect();
    (
        keep.iter().map(|&k| thresholds[k]).collect(),
        keep.iter().map(|&k| tps[k]).collect(),
        keep.iter().map(|&k| fps[k]).collect(),
    )
}

/// Area under the ROC curve as the Mann-Whitney statistic, ties counted 1/2:
/// P(high-class score > low-class score) + P(tie) / 2, equal to scikit-learn's
/// `roc_auc_score` (the trapezoid area of the full ROC curve) with the class
/// high scores mean as positive. Counted exactly in integers, O(n).
pub fn auc(set: &ScoreSet) -> f64 {
    let (high, low) = (set.high_scores(), set.low_scores());
    // Twice the number of (high, low) pairs ordered correctly, ties once.
    let mut twice_wins: u128 = 0;
    let mut j = 0;
    let mut i = 0;
    while i < high.len() {
        let score = high[i];
        let mut ties_high = 0u128;
        while i < high.len() && high[i] == score {
            ties_high += 1;
            i += 1;
        }
        while j < low.len() && low[j] < score {
            j += 1;
        }
        let below = j as u128;
        let tied = low[j..].iter().take_while(|&&s| s == score).count() as u128;
        twice_wins += ties_high * (2 * below + tied);
    }
    twice_wins as f64 / (2 * high.len() as u128 * low.len() as u128) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MetricsError;

    fn set(scores: &[f64], attack: &[bool]) -> ScoreSet {
        ScoreSet::from_binary(scores, attack, Polarity::HigherIsAttack).unwrap()
    }

    /// Hand-worked: attacks 0.8, 0.4, 0.4; bona fide 0.4, 0.1.
    /// Thresholds inf, 0.8, 0.4, 0.1 -> TP 0,1,3,3 and FP 0,0,1,2.
    /// AUC: pairs (0.8 vs 0.4, 0.1) = 2 wins, each 0.4 attack: tie + win = 1.5,
    /// total 5 / 6.
    #[test]
    fn hand_worked_curve_and_auc() {
        let s = set(
            &[0.8, 0.4, 0.4, 0.4, 0.1],
            &[true, true, true, false, false],
        );
        let roc = RocCurve::new(&s, IntermediatePoints::Keep);
        assert_eq!(roc.thresholds(), [f64::INFINITY, 0.8, 0.4, 0.1]);
        assert_eq!(roc.tpr(), [0.0, 1.0 / 3.0, 1.0, 1.0]);
        assert_eq!(roc.fpr(), [0.0, 0.0, 0.5, 1.0]);
        assert_eq!(roc.polarity().high_class(), crate::label::Class::Attack);
        assert_eq!(auc(&s), 5.0 / 6.0);
        let interpolated = roc.tpr_at_fpr_interpolated(0.25).unwrap();
        assert!((interpolated - 2.0 / 3.0).abs() < 1e-15, "{interpolated}");
        assert_eq!(roc.tpr_at_fpr_interpolated(0.0).unwrap(), 1.0 / 3.0);
        assert_eq!(roc.tpr_at_fpr_floor(0.25).unwrap(), 1.0 / 3.0);
        assert_eq!(roc.tpr_at_fpr_floor(1.0).unwrap(), 1.0);
        assert!(matches!(
            roc.tpr_at_fpr_floor(1.5),
            Err(MetricsError::RateOutOfRange { .. })
        ));
    }

    /// Three single negatives after a positive: each of 0.7 and 0.6 sits between
    /// two equal steps (one more negative), so both go, as scikit-learn's
    /// `roc_curve([1,0,0,0,1], [.9,.7,.6,.5,.1])` gives `[inf, .9, .5, .1]`.
    #[test]
    fn drop_intermediate_removes_collinear_equal_steps() {
        let s = set(
            &[0.9, 0.7, 0.6, 0.5, 0.1],
            &[true, false, false, false, true],
        );
        let full = RocCurve::new(&s, IntermediatePoints::Keep);
        assert_eq!(full.thresholds(), [f64::INFINITY, 0.9, 0.7, 0.6, 0.5, 0.1]);
        let dropped = RocCurve::new(&s, IntermediatePoints::Drop);
        assert_eq!(dropped.thresholds(), [f64::INFINITY, 0.9, 0.5, 0.1]);
    }
}
