//! Routing logits `X Φ` (paper eq. 2 and 4, Algorithm 2 line 4) with vmoe's
//! optional normalisation.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::SoftMoeConfig;
use fused_ops::matmul;

/// vmoe `normalize(x, axis)`: `x * rsqrt(Σ x² + 1e-6)`, epsilon inside the root.
pub(crate) const L2_EPS: f64 = 1e-6;

/// Slot parameters Φ and the logit scale.
#[derive(Debug, Clone)]
pub(crate) struct Router {
    /// `(m, d)` view of Φ, stored as `(e, s, d)`.
    phi: Tensor,
    /// Learnable scalar multiplying the logits (only when normalising).
    scale: Option<Tensor>,
}

/// L2-normalises the last axis, vmoe style.
pub(crate) fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    fused_ops::l2_normalize(x, L2_EPS)
}

impl Router {
    pub(crate) fn new(cfg: &SoftMoeConfig, vb: &VarBuilder) -> Result<Self> {
        let (e, s, d) = (
            cfg.options.num_experts,
            cfg.options.slots_per_expert,
            cfg.dim,
        );
        let dtype = crate::param_dtype(vb);
        // LeCun normal (variance 1/d, as vmoe's mu_init). Untruncated; with
        // `normalize` only the direction of each slot vector matters anyway.
        let init = Init::Randn {
            mean: 0.0,
            stdev: 1.0 / (d as f64).sqrt(),
        };
        let phi = vb.get_with_hints_dtype((e, s, d), "phi", init, dtype)?;
        let scale = if cfg.options.normalize {
            Some(vb.get_with_hints_dtype((), "scale", Init::Const(1.0), dtype)?)
        } else {
            None
        };
        Ok(Self {
            phi: phi.reshape((e * s, d))?,
            scale,
        })
    }

    /// Dtype the routing arithmetic runs in: the parameters' (F32 or F64).
    pub(crate) fn dtype(&self) -> DType {
        self.phi.dtype()
    }

    /// Logits `(b, n, m)` for tokens `x` `(b, n, d)` already in [`Router::dtype`].
    pub(crate) fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (x, phi) = match &self.scale {
            // scale·cos(x, φ): multiplying the smaller (m, d) operand by the
            // scale is the same product as scaling the logits.
            Some(scale) => (
                l2_normalize(x)?,
                l2_normalize(&self.phi)?.broadcast_mul(scale)?,
            ),
            None => (x.clone(), self.phi.clone()),
        };
        // (b, n, d) x (d, m) -> (b, n, m)
        matmul(&x, &phi.t()?)
    }
}
