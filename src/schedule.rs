//! Learning-rate schedules: a function of the optimizer step alone, so a
//! resumed run continues on exactly the curve it left.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The shape of the curve after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// The peak learning rate throughout (the paper's: constant 1e-6).
    #[default]
    Constant,
    /// Half a cosine from the peak down to `min_lr_ratio` of it at the last step
    /// (`torch.optim.lr_scheduler.CosineAnnealingLR` over the post-warmup steps).
    Cosine,
}

/// Linear warmup, then [`Decay`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Steps of linear warmup from `lr / warmup_steps` up to `lr`; 0 = none.
    pub warmup_steps: u64,
    /// After warmup.
    pub decay: Decay,
    /// Floor of the cosine as a fraction of the peak, in [0, 1].
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            decay: Decay::Constant,
            min_lr_ratio: 0.0,
        }
    }
}

impl ScheduleConfig {
    /// Checks the ratio.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(
                "schedule.min_lr_ratio",
                format!("must be in [0, 1], got {}", self.min_lr_ratio),
            ));
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (1-based) of `total_steps`,
    /// for peak `lr`.
    pub fn lr_at(&self, lr: f64, step: u64, total_steps: u64) -> f64 {
        let step = step.max(1);
        if step <= self.warmup_steps {
            return lr * step as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => lr,
            Decay::Cosine => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1);
                // Progress 0 at the first post-warmup step, 1 at the last.
                let done = (step - self.warmup_steps - 1) as f64 / (span.max(2) - 1) as f64;
                let done = done.min(1.0);
                let floor = lr * self.min_lr_ratio;
                floor + (lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * done).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_the_peak() {
        let s = ScheduleConfig::default();
        assert_eq!(s.lr_at(1e-6, 1, 100), 1e-6);
        assert_eq!(s.lr_at(1e-6, 100, 100), 1e-6);
    }

    /// Hand-worked: warmup 4 of peak 1.0 gives 0.25, 0.5, 0.75, 1.0; the
    /// cosine over the remaining 5 steps (progress 0, 1/4, 1/2, 3/4, 1) gives
    /// 1, (1 + cos(π/4))/2, 1/2, (1 - cos(π/4))/2, then the floor 0.1.
    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = ScheduleConfig {
            warmup_steps: 4,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        };
        let lrs: Vec<f64> = (1..=9).map(|t| s.lr_at(1.0, t, 9)).collect();
        let c = std::f64::consts::FRAC_1_SQRT_2;
        let expected = [
            0.25,
            0.5,
            0.75,
            1.0,
            1.0,
            0.1 + 0.9 * (1.0 + c) / 2.0,
            0.1 + 0.9 * 0.5,
            0.1 + 0.9 * (1.0 - c) / 2.0,
            0.1,
        ];
        for (got, want) in lrs.iter().zip(expected) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        // Past the end it stays at the floor.
        assert!((s.lr_at(1.0, 20, 9) - 0.1).abs() < 1e-12);
        assert!(ScheduleConfig {
            min_lr_ratio: 1.5,
            ..s
        }
        .validate()
        .is_err());
    }
}
