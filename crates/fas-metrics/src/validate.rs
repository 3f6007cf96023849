//! Input checks shared by every public entry point, so each invalid input is
//! reported by one typed error in one place.

use crate::error::{MetricsError, Result};

/// `items` (labels, video ids) must run parallel to `scores`.
pub(crate) fn check_parallel(scores: usize, items: usize, what: &'static str) -> Result<()> {
    if scores == items {
        Ok(())
    } else {
        Err(MetricsError::LengthMismatch {
            scores,
            items,
            what,
        })
    }
}

/// At least one score, all finite.
pub(crate) fn check_scores(scores: &[f64]) -> Result<()> {
    if scores.is_empty() {
        return Err(MetricsError::NoSamples);
    }
    match scores.iter().position(|s| !s.is_finite()) {
        Some(index) => Err(MetricsError::NonFiniteScore {
            index,
            value: scores[index],
        }),
        None => Ok(()),
    }
}

/// A rate argument (target APCER, FPR) must lie in [0, 1].
pub(crate) fn check_rate(what: &'static str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(MetricsError::RateOutOfRange { what, value })
    }
}

/// A threshold may be infinite but not NaN.
pub(crate) fn check_threshold(threshold: f64) -> Result<()> {
    if threshold.is_nan() {
        Err(MetricsError::NanThreshold)
    } else {
        Ok(())
    }
}
