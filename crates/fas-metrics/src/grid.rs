//! The UniAttackData organisers' threshold grid (CASIA-FAS-Benchmark
//! `get_Threshold_Grid`, FA3-CLIP `get_thr`, SSDG `get_EER_states`): the
//! EER point both the threshold rule and the grid EER are read from.

use crate::score_set::{count_at_or_above, ScoreSet};

/// The organiser grid's EER point: FAR and FRR of the high-score class as
/// positive (CFB: positive = fake, so FAR = BPCER; FA3: positive = live, so
/// FAR = APCER).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GridPoint {
    pub threshold: f64,
    /// Negatives decided positive / negatives.
    pub far: f64,
    /// Positives decided negative / positives.
    pub frr: f64,
}

/// CFB `get_Threshold_Grid` in O(grid x log n): counts by binary search on
/// the sorted classes instead of a pass over all scores per threshold.
/// The grid value is `0.0 + i * 1.0 / 10000.0`, the reference's exact
/// arithmetic; `dist <= min_dist` starting from 1.0 keeps the last minimum.
/// Both classes are non-empty, so the reference's empty-class guards never fire.
pub(crate) fn organiser_grid(set: &ScoreSet) -> GridPoint {
    const GRID_DENSITY: u32 = 10_000;
    let (high, low) = (set.high_scores(), set.low_scores());
    let point_at = |threshold: f64| {
        let false_positives = count_at_or_above(low, threshold);
        let false_negatives = high.len() - count_at_or_above(high, threshold);
        GridPoint {
            threshold,
            far: false_positives as f64 / low.len() as f64,
            frr: false_negatives as f64 / high.len() as f64,
        }
    };
    // The reference starts from min_dist = 1.0, so its first grid point
    // (|FRR - FAR| <= 1 always) is always kept: start from it.
    let mut best = point_at(0.0);
    let mut min_dist = (best.frr - best.far).abs();
    let rest = (1..=GRID_DENSITY)
        .map(|i| 0.0 + f64::from(i) / f64::from(GRID_DENSITY))
        .chain(std::iter::once(1.1));
    for threshold in rest {
        let point = point_at(threshold);
        let dist = (point.frr - point.far).abs();
        if dist <= min_dist {
            min_dist = dist;
            best = point;
        }
    }
    best
}
