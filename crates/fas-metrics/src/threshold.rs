//! Threshold selection: the organiser grid, the exact sweep over distinct
//! scores, a fixed value, and the threshold meeting a target APCER.

use serde::{Deserialize, Serialize};

use crate::confusion::{apcer_at, bpcer_at, ApcerPooling};
use crate::eer::{eer, EerMethod};
use crate::error::Result;
use crate::grid::organiser_grid;
use crate::label::Polarity;
use crate::roc::{IntermediatePoints, RocCurve};
use crate::score_set::ScoreSet;
use crate::validate::{check_rate, check_threshold};

/// How a threshold is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    /// The EER point of the UniAttackData organisers' grid, CFB
    /// `get_Threshold_Grid` / FA3 `get_thr` / SSDG `get_EER_states`:
    /// thresholds `i / 10000` for i = 0..=10000 plus 1.1, minimising
    /// |FRR - FAR|, ties to the largest threshold. Meaningful only for scores
    /// in [0, 1] (probabilities); other scores all fall beyond the grid.
    /// The default, as in every UniAttackData paper.
    #[default]
    OrganiserGrid,
    /// The threshold of [`EerMethod::RocIndex`] (SAFAS): on the full ROC
    /// curve, `thresholds[i]` with `i` the first `argmin |tpr + fpr - 1|`,
    /// i.e. the ROC threshold (a distinct score, or infinity) whose point lies
    /// nearest the EER line, the largest such threshold on ties.
    ///
    /// This is the ROC-index rule, not an organiser-style sweep (the grid's
    /// rule run over every distinct score instead of the grid, EER =
    /// (FAR + FRR) / 2). Both minimise |FAR - FRR| in exact arithmetic with
    /// ties to the largest threshold, but this one evaluates it from the ROC
    /// rates in SAFAS's floating-point order (so mathematically tied points
    /// can resolve differently), also considers `f64::INFINITY` (ROC index 0),
    /// and its EER is `fpr[i]`, not (FAR + FRR) / 2. The crate has no
    /// organiser-style exact sweep.
    ExactSweep,
    /// A fixed threshold (FLIP's unused `calculate()` takes 0.5); infinities
    /// are allowed (in JSON `"inf"` / `"-inf"`), NaN is an error.
    Fixed {
        /// The threshold.
        #[serde(with = "crate::serde_threshold")]
        threshold: f64,
    },
    /// The threshold giving the lowest BPCER with APCER <= `apcer`
    /// (BPCER20: `apcer = 0.05`; BPCER100: `0.01`; bob `calc_threshold('bpcer20')`).
    TargetApcer {
        /// The largest acceptable APCER, a fraction.
        apcer: f64,
        /// Pooled APCER or the ISO worst case over attack types.
        pooling: ApcerPooling,
    },
}

/// Chooses a threshold on `set` by `rule`.
pub fn select_threshold(set: &ScoreSet, rule: ThresholdRule) -> Result<f64> {
    match rule {
        ThresholdRule::OrganiserGrid => Ok(organiser_grid(set).threshold),
        ThresholdRule::ExactSweep => Ok(eer(set, EerMethod::RocIndex).threshold),
        ThresholdRule::Fixed { threshold } => check_threshold(threshold).map(|()| threshold),
        ThresholdRule::TargetApcer { apcer, pooling } => {
            Ok(bpcer_at_apcer(set, apcer, pooling)?.threshold)
        }
    }
}

/// An operating point: a threshold with its APCER and BPCER.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OperatingPoint {
    /// The threshold (may be `f64::INFINITY`: nothing decided for the high
    /// class; in JSON a number, or `"inf"`).
    #[serde(with = "crate::serde_threshold")]
    pub threshold: f64,
    /// APCER at the threshold, pooled as asked.
    pub apcer: f64,
    /// BPCER at the threshold.
    pub bpcer: f64,
}

/// BPCER at a target APCER (ISO/IEC 30107-3 BPCER20 = `bpcer_at_apcer(set, 0.05, ..)`,
/// BPCER100 = `0.01`): over the thresholds `f64::INFINITY` and every distinct
/// score, the lowest BPCER with APCER <= `target_apcer`; among equal BPCER,
/// the lowest APCER. O(n x types x log n): each of the O(n) candidate
/// thresholds costs a binary search per attack type (worst case) or one
/// (pooled), plus one for BPCER.
pub fn bpcer_at_apcer(
    set: &ScoreSet,
    target_apcer: f64,
    pooling: ApcerPooling,
) -> Result<OperatingPoint> {
    check_rate("target APCER", target_apcer)?;
    let roc = RocCurve::new(set, IntermediatePoints::Keep);
    let point_at = |threshold: f64| OperatingPoint {
        threshold,
        apcer: apcer_at(set, threshold, pooling),
        bpcer: bpcer_at(set, threshold),
    };
    // Start from the threshold deciding every sample attack: APCER 0, always
    // feasible (the lowest score when attacks score high, infinity otherwise).
    let reject_all = match set.polarity() {
        Polarity::HigherIsAttack => roc.thresholds()[roc.len() - 1],
        Polarity::HigherIsBonafide => f64::INFINITY,
    };
    let mut best = point_at(reject_all);
    for point in roc
        .thresholds()
        .iter()
        .map(|&threshold| point_at(threshold))
    {
        let better =
            point.bpcer < best.bpcer || (point.bpcer == best.bpcer && point.apcer < best.apcer);
        if point.apcer <= target_apcer && better {
            best = point;
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MetricsError;
    use crate::label::Label;

    /// Hand-worked grid: attacks 0.3, 0.8; bona fide 0.2, 0.5 (higher = attack).
    /// FAR = bona fide >= thr, FRR = attacks < thr: (0.2, 0.3] gives 1/2 and 0,
    /// (0.3, 0.5] gives 1/2 and 1/2 (dist 0, the minimum), (0.5, 0.8] gives 0
    /// and 1/2. The last grid value with dist 0 is 0.5.
    #[test]
    fn grid_keeps_largest_of_tied_thresholds() {
        let set = ScoreSet::new(
            &[0.3, 0.8, 0.2, 0.5],
            &[
                Label::attack(),
                Label::attack(),
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsAttack,
        )
        .unwrap();
        let point = organiser_grid(&set);
        assert_eq!(point.threshold, 0.5);
        assert_eq!((point.far, point.frr), (0.5, 0.5));
        assert_eq!(
            select_threshold(&set, ThresholdRule::OrganiserGrid).unwrap(),
            0.5
        );
        assert!(matches!(
            select_threshold(
                &set,
                ThresholdRule::Fixed {
                    threshold: f64::NAN
                }
            ),
            Err(MetricsError::NanThreshold)
        ));
    }

    /// Hand-worked BPCER@APCER, higher = bona fide: attacks 0.1, 0.2, 0.6, 0.9;
    /// bona fide 0.5, 0.7, 0.8. APCER <= 0.25 needs thr > 0.6 (only 0.9
    /// accepted): thr 0.7 gives BPCER 1/3 (0.5 rejected), the best feasible.
    #[test]
    fn bpcer_at_apcer_hand_worked() {
        let set = ScoreSet::new(
            &[0.1, 0.2, 0.6, 0.9, 0.5, 0.7, 0.8],
            &[
                Label::attack(),
                Label::attack(),
                Label::attack(),
                Label::attack(),
                Label::Bonafide,
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsBonafide,
        )
        .unwrap();
        let point = bpcer_at_apcer(&set, 0.25, ApcerPooling::Pooled).unwrap();
        assert_eq!(point.threshold, 0.7);
        assert_eq!((point.apcer, point.bpcer), (0.25, 1.0 / 3.0));
        let strict = bpcer_at_apcer(&set, 0.0, ApcerPooling::Pooled).unwrap();
        assert_eq!(
            (strict.threshold, strict.apcer, strict.bpcer),
            (f64::INFINITY, 0.0, 1.0)
        );
        assert!(bpcer_at_apcer(&set, 5.0, ApcerPooling::Pooled).is_err());
    }
}
