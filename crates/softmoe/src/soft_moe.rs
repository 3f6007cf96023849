//! The Soft MoE layer (Puigcerver et al., arXiv 2308.00951) and its
//! La-SoftMoE variant (Zou et al., arXiv 2408.12793, Algorithm 2).

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::combine::CombineWeights;
use crate::config::SoftMoeConfig;
use crate::error::{Error, Result};
use crate::experts::Experts;
use crate::router::Router;
use fused_ops::{matmul, softmax};

/// A Soft MoE layer: `(batch, tokens, dim) -> (batch, tokens, dim)`.
///
/// Parameters under the layer's prefix: `phi (e, s, d)`, `scale ()` (only with
/// `normalize`), `experts.fc{1,2}.{weight,bias}` and, for La-SoftMoE, its
/// combine parameters under `combine.*`. Trainable parameters are F32; the
/// router (logits, dispatch and combine weights) always runs in F32, the
/// token mixing and experts in the input's dtype.
#[derive(Debug, Clone)]
pub struct SoftMoe {
    cfg: SoftMoeConfig,
    router: Router,
    experts: Experts,
    combine: CombineWeights,
}

/// A forward pass together with its routing weights, for inspection and
/// monitoring (e.g. vmoe's `combine_weights_{min,max}_mean` metrics).
#[derive(Debug, Clone)]
pub struct SoftMoeOutput {
    /// `(batch, tokens, dim)`, the layer's output.
    pub output: Tensor,
    /// `(batch, tokens, experts, slots)` in the router's dtype: softmax over tokens (eq. 2), so
    /// each slot's column sums to 1.
    pub dispatch_weights: Tensor,
    /// `(batch, tokens, experts, slots)` in the router's dtype: softmax over all slots (eq. 4),
    /// or La-SoftMoE's normalised linear attention (eq. 7).
    pub combine_weights: Tensor,
}

impl SoftMoe {
    /// Builds the layer, creating or loading its parameters through `vb`.
    /// Shapes of loaded tensors are checked; a mismatch names the tensor.
    pub fn new(cfg: &SoftMoeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg: cfg.clone(),
            router: Router::new(cfg, &vb)?,
            experts: Experts::new(cfg, vb.pp("experts"))?,
            combine: CombineWeights::new(cfg, vb.pp("combine"))?,
        })
    }

    /// The configuration the layer was built with.
    pub fn config(&self) -> &SoftMoeConfig {
        &self.cfg
    }

    /// Forward pass returning the routing weights as well: logits `X Φ`,
    /// dispatch (eq. 2), slots `Dᵀ X`, experts (eq. 3), combine (eq. 4 for
    /// Soft MoE, eq. 7 for La-SoftMoE) and `Y = C Ỹ`.
    ///
    /// Errors with [`Error::InputShape`] unless `xs` is `(batch, tokens, dim)`
    /// with non-zero batch and tokens.
    pub fn forward_with_weights(&self, xs: &Tensor) -> Result<SoftMoeOutput> {
        let (b, n, _) = match xs.dims() {
            &[b, n, d] if d == self.cfg.dim && b > 0 && n > 0 => (b, n, d),
            dims => {
                return Err(Error::InputShape {
                    expected_dim: self.cfg.dim,
                    got: dims.to_vec(),
                })
            }
        };
        if let crate::config::Combine::LinearAttention(la) = &self.cfg.options.combine {
            if la.norm_axis == crate::config::InstanceNormAxis::PerSlot && n == 1 {
                return Err(Error::InvalidConfig {
                    field: "combine.norm_axis",
                    reason: "per_slot normalises each slot over the tokens: one token gives \
                             weights of exactly 0; give at least 2 tokens"
                        .into(),
                });
            }
        }
        let (e, s) = (
            self.cfg.options.num_experts,
            self.cfg.options.slots_per_expert,
        );
        let dtype = xs.dtype();

        // (b, n, m), in the router's dtype.
        let logits = self.router.logits(&xs.to_dtype(self.router.dtype())?)?;
        // eq. 2: each slot is a convex combination of the tokens.
        let dispatch = softmax(&logits, 1)?;
        let combine = self.combine.forward(&logits)?;

        // Slots from the raw tokens: (b, m, n) x (b, n, d) -> (b, m, d).
        let slots = matmul(&dispatch.to_dtype(dtype)?.transpose(1, 2)?, xs)?;
        // Expert i takes slots [i·s, (i+1)·s) of every batch entry: one
        // matmul per linear over its b·s rows (the reordering is inside).
        let slot_out = self.experts.forward_slots(&slots)?;
        // eq. 4 / eq. 7: (b, n, m) x (b, m, d) -> (b, n, d).
        let output = matmul(&combine.to_dtype(dtype)?, &slot_out)?;

        Ok(SoftMoeOutput {
            output,
            dispatch_weights: dispatch.reshape((b, n, e, s))?,
            combine_weights: combine.reshape((b, n, e, s))?,
        })
    }
}

impl Module for SoftMoe {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_with_weights(xs)?.output)
    }
}
