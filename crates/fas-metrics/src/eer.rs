//! Equal error rate in the variants the field uses, which differ in the last
//! digits: the organiser grid and the ROC index, the latter on two curves and
//! with two floating-point formulas for the distance to the EER line.

use serde::{Deserialize, Serialize};

use crate::grid::organiser_grid;
use crate::roc::{IntermediatePoints, RocCurve};
use crate::score_set::ScoreSet;

/// Which EER definition. The ROC-index variants pick the first index of
/// minimal distance; the two distance formulas are equal in exact arithmetic
/// but round differently, so on points at mathematically equal distance
/// (frequent with tied scores) their first minimum can differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EerMethod {
    /// (FAR + FRR) / 2 at the organiser grid's threshold of minimal |FRR - FAR|
    /// (ties to the largest): CFB `get_Threshold_Grid` (its reported EER and
    /// HTER), FA3 `get_thr`, SSDG/FLIP `get_EER_states`.
    #[default]
    OrganiserGrid,
    /// SAFAS (`utils/performance.py`): on the full ROC curve
    /// (`roc_curve(..., drop_intermediate=False)`,
    /// [`IntermediatePoints::Keep`]), `i = argmin |tpr + fpr - 1|`
    /// ([`RocIndexDistance::TprPlusFprMinusOne`]); EER = `fpr[i]`, threshold
    /// `thresholds[i]`.
    RocIndex,
    /// FA3's test EER (`compute_eer`) and CFB `get_Threshold_List`: on
    /// scikit-learn's default curve (`roc_curve(labels, probs)`,
    /// `drop_intermediate=True`, [`IntermediatePoints::Drop`]),
    /// `fnr = 1 - tpr; i = nanargmin |fnr - fpr|`
    /// ([`RocIndexDistance::FnrMinusFpr`]); EER = `fpr[i]`, threshold
    /// `thresholds[i]`.
    RocIndexDropIntermediate,
    /// CDCN `get_err_threhold` (also BM `utils_FAS_Deepfake_new.py`): on
    /// scikit-learn's default curve ([`IntermediatePoints::Drop`]),
    /// `i = argmin |tpr + fpr - 1|` ([`RocIndexDistance::TprPlusFprMinusOne`]);
    /// EER = `fpr[i]`, threshold `thresholds[i]`.
    RocIndexCdcn,
}

/// The distance to the EER line that a ROC-index EER minimises, evaluated in
/// the reference's floating-point order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RocIndexDistance {
    /// `|(1 - tpr) - fpr|`: FA3 and CFB (`fnr = 1 - tpr`,
    /// `np.absolute(fnr - fpr)`), scikit-learn-style.
    FnrMinusFpr,
    /// `|(tpr + fpr) - 1|`: CDCN and SAFAS (`np.abs(tpr + fpr - 1.0)`).
    TprPlusFprMinusOne,
}

impl RocIndexDistance {
    fn at(self, fpr: f64, tpr: f64) -> f64 {
        match self {
            Self::FnrMinusFpr => ((1.0 - tpr) - fpr).abs(),
            Self::TprPlusFprMinusOne => (tpr + fpr - 1.0).abs(),
        }
    }
}

/// An EER with the threshold that gives it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Eer {
    /// The equal error rate, a fraction.
    pub eer: f64,
    /// The threshold at the EER point (`f64::INFINITY` if the ROC index is 0;
    /// in JSON a number, or `"inf"`).
    #[serde(with = "crate::serde_threshold")]
    pub threshold: f64,
    /// APCER at the threshold (pooled).
    pub apcer: f64,
    /// BPCER at the threshold.
    pub bpcer: f64,
}

/// The EER of `set` by `method`, O(n) after the set's sort (grid: O(grid x log n)).
pub fn eer(set: &ScoreSet, method: EerMethod) -> Eer {
    let roc_index = |points, distance| roc_index_eer(&RocCurve::new(set, points), distance);
    match method {
        EerMethod::OrganiserGrid => {
            let point = organiser_grid(set);
            let (apcer, bpcer) = set.polarity().apcer_bpcer(point.far, point.frr);
            Eer {
                eer: (point.far + point.frr) / 2.0,
                threshold: point.threshold,
                apcer,
                bpcer,
            }
        }
        EerMethod::RocIndex => roc_index(
            IntermediatePoints::Keep,
            RocIndexDistance::TprPlusFprMinusOne,
        ),
        EerMethod::RocIndexDropIntermediate => {
            roc_index(IntermediatePoints::Drop, RocIndexDistance::FnrMinusFpr)
        }
        EerMethod::RocIndexCdcn => roc_index(
            IntermediatePoints::Drop,
            RocIndexDistance::TprPlusFprMinusOne,
        ),
    }
}

/// The ROC-index EER on a given curve: `i` = first index of minimal
/// `distance`; EER = `fpr[i]`, threshold `thresholds[i]`.
pub fn roc_index_eer(roc: &RocCurve, distance: RocIndexDistance) -> Eer {
    let (fprs, tprs) = (roc.fpr(), roc.tpr());
    let mut best = 0;
    let mut best_dist = f64::INFINITY;
    for (i, (&fpr, &tpr)) in fprs.iter().zip(tprs).enumerate() {
        let dist = distance.at(fpr, tpr);
        if dist < best_dist {
            best_dist = dist;
            best = i;
        }
    }
    let (apcer, bpcer) = roc.polarity().apcer_bpcer(fprs[best], 1.0 - tprs[best]);
    Eer {
        eer: fprs[best],
        threshold: roc.thresholds()[best],
        apcer,
        bpcer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::{Label, Polarity};

    /// Hand-worked: attacks 0.9, 0.6, 0.35; bona fide 0.7, 0.3, 0.2, 0.1
    /// (higher = attack). Full ROC: thr inf, 0.9, 0.7, 0.6, 0.35, 0.3, ...;
    /// at 0.6: tpr 2/3, fpr 1/4, |1/3 - 1/4| = 1/12; at 0.35: tpr 1, fpr 1/4,
    /// |0 - 1/4| = 1/4; at 0.7: tpr 1/3, fpr 1/4, |2/3 - 1/4|. Minimum at 0.6:
    /// EER = fpr = 1/4, APCER = 1/3, BPCER = 1/4.
    #[test]
    fn roc_index_hand_worked() {
        let set = ScoreSet::new(
            &[0.9, 0.6, 0.35, 0.7, 0.3, 0.2, 0.1],
            &[
                Label::attack(),
                Label::attack(),
                Label::attack(),
                Label::Bonafide,
                Label::Bonafide,
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsAttack,
        )
        .unwrap();
        let e = eer(&set, EerMethod::RocIndex);
        assert_eq!(e.threshold, 0.6);
        assert_eq!(e.eer, 0.25);
        assert_eq!(e.bpcer, 0.25);
        assert!((e.apcer - 1.0 / 3.0).abs() < 1e-15);
        // Grid: thr in (0.35, 0.6] gives FAR 1/4 (0.7), FRR 1/3 (0.35);
        // (0.3, 0.35] gives FAR 1/4, FRR 0; (0.6, 0.7] FAR 1/4, FRR 2/3.
        // Minimum |FRR - FAR| = 1/12 over (0.35, 0.6], last grid value 0.6.
        let g = eer(&set, EerMethod::OrganiserGrid);
        assert_eq!(g.threshold, 0.6);
        assert_eq!(g.eer, (0.25 + 1.0 / 3.0) / 2.0);
    }

    /// A mathematical tie that the two formulas break differently (found
    /// with scikit-learn, checked with NumPy): attacks 0.0, 0.25, 0.75, 1.0,
    /// 1.0; bona fide 0.25, 0.75, 1.0 (higher = attack). Full ROC points
    /// (fpr, tpr): thr 1.0 -> (1/3, 2/5), thr 0.75 -> (2/3, 3/5), both at
    /// distance 4/15 from the EER line. In doubles `(1 - tpr) - fpr` is
    /// smaller at thr 0.75 and `(tpr + fpr) - 1` at thr 1.0: NumPy's
    /// `nanargmin(abs(fnr - fpr))` gives index 2, `argmin(abs(tpr + fpr - 1))`
    /// index 1.
    #[test]
    fn distances_break_ties_as_the_references() {
        let set = ScoreSet::from_binary(
            &[0.0, 0.25, 0.75, 1.0, 1.0, 0.25, 0.75, 1.0],
            &[true, true, true, true, true, false, false, false],
            Polarity::HigherIsAttack,
        )
        .unwrap();
        let roc = RocCurve::new(&set, IntermediatePoints::Keep);
        let fa3 = roc_index_eer(&roc, RocIndexDistance::FnrMinusFpr);
        assert_eq!((fa3.threshold, fa3.eer), (0.75, 2.0 / 3.0));
        let safas = roc_index_eer(&roc, RocIndexDistance::TprPlusFprMinusOne);
        assert_eq!((safas.threshold, safas.eer), (1.0, 1.0 / 3.0));
        assert_eq!(eer(&set, EerMethod::RocIndex), safas);
    }
}
