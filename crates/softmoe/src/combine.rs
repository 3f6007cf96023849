//! Combine weights `C` from the routing logits: Soft MoE's softmax (eq. 4) or
//! La-SoftMoE's linear attention + instance norm (eq. 7, Algorithm 2 lines
//! 6-8). All shapes are `(batch, tokens n, slots m)`.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::{
    Combine, CombineOutput, FeatureMap, InstanceNormAxis, LinearAttentionConfig, QkvProjection,
    SoftMoeConfig,
};
use fused_ops::{elu_plus_one, matmul, softmax, standardize};

/// The combine map of a layer.
#[derive(Debug, Clone)]
pub(crate) enum CombineWeights {
    Softmax,
    LinearAttention(Box<LinearAttentionCombine>),
}

impl CombineWeights {
    pub(crate) fn new(cfg: &SoftMoeConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match &cfg.options.combine {
            Combine::Softmax => Self::Softmax,
            Combine::LinearAttention(la) => Self::LinearAttention(Box::new(
                LinearAttentionCombine::new(la, cfg.num_slots(), vb)?,
            )),
        })
    }

    /// `(b, n, m)` logits -> `(b, n, m)` combine weights.
    pub(crate) fn forward(&self, logits: &Tensor) -> Result<Tensor> {
        match self {
            // eq. 4: softmax over all e·s slots of each token.
            Self::Softmax => softmax(logits, 2),
            Self::LinearAttention(la) => la.forward(logits),
        }
    }
}

/// Residual slot-axis projection `x + x Wᵀ + b` with an `(m, m)` weight.
///
/// `W` and `b` start at zero, so a projected layer starts exactly equal to
/// the unprojected one (Algorithm 2) and training moves it away from there.
#[derive(Debug, Clone)]
struct SlotProjection {
    weight: Tensor,
    bias: Tensor,
}

impl SlotProjection {
    fn new(slots: usize, vb: VarBuilder) -> Result<Self> {
        let dtype = crate::param_dtype(&vb);
        Ok(Self {
            weight: vb.get_with_hints_dtype((slots, slots), "weight", Init::Const(0.0), dtype)?,
            bias: vb.get_with_hints_dtype(slots, "bias", Init::Const(0.0), dtype)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (b, n, m) x (m, m), one weight for every batch entry.
        let delta = matmul(x, &self.weight.t()?)?.broadcast_add(&self.bias)?;
        x + delta
    }
}

/// La-SoftMoE's combine: `C = out(IN(LinearAttention(Q, K, V)))` with Q, K, V
/// the logits (or slot-axis projections of them), parameters under `combine.*`.
#[derive(Debug, Clone)]
pub(crate) struct LinearAttentionCombine {
    cfg: LinearAttentionConfig,
    qkv: Option<[SlotProjection; 3]>,
    norm_affine: Option<(Tensor, Tensor)>,
}

impl LinearAttentionCombine {
    fn new(cfg: &LinearAttentionConfig, slots: usize, vb: VarBuilder) -> Result<Self> {
        let qkv = match cfg.projection {
            QkvProjection::Identity => None,
            QkvProjection::Linear => Some([
                SlotProjection::new(slots, vb.pp("q_proj"))?,
                SlotProjection::new(slots, vb.pp("k_proj"))?,
                SlotProjection::new(slots, vb.pp("v_proj"))?,
            ]),
        };
        let norm_affine = if cfg.norm_affine {
            let dtype = crate::param_dtype(&vb);
            let norm = vb.pp("norm");
            Some((
                norm.get_with_hints_dtype(slots, "weight", Init::Const(1.0), dtype)?,
                norm.get_with_hints_dtype(slots, "bias", Init::Const(0.0), dtype)?,
            ))
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            qkv,
            norm_affine,
        })
    }

    fn feature_map(&self, x: &Tensor) -> Result<Tensor> {
        match self.cfg.feature_map {
            FeatureMap::EluPlusOne => elu_plus_one(x),
            FeatureMap::Relu => x.relu(),
        }
    }

    /// Linear attention along the token axis (eq. 6, Katharopoulos et al.):
    /// `V'_i = φ(Q_i) Σ_j φ(K_j)ᵀ V_j / (φ(Q_i) · Σ_j φ(K_j) + eps)`.
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        // Q and K are one tensor without projections: map it once.
        let shared = q.id() == k.id();
        let q_mapped = self.feature_map(q)?;
        let k = if shared {
            q_mapped.clone()
        } else {
            self.feature_map(k)?
        };
        let q = q_mapped;
        // (b, m, n) x (b, n, m) -> (b, m, m): cost O(n m²), linear in tokens.
        let kv = matmul(&k.transpose(1, 2)?, v)?;
        let num = matmul(&q, &kv)?;
        match self.cfg.normalizer_eps {
            None => Ok(num),
            Some(eps) => {
                // φ(Q_i) · Σ_j φ(K_j) as a product: (b, n, m) x (b, m, 1) -> (b, n, 1).
                let k_sum = k.sum_keepdim(1)?.transpose(1, 2)?;
                let den = (matmul(&q, &k_sum)? + eps)?;
                num.broadcast_div(&den)
            }
        }
    }

    /// `InstanceNorm1d` without running statistics: biased variance, eps inside
    /// the root, over slots (per token) or over tokens (per slot).
    fn instance_norm(&self, x: &Tensor) -> Result<Tensor> {
        let axis = match self.cfg.norm_axis {
            InstanceNormAxis::PerToken => 2,
            InstanceNormAxis::PerSlot => 1,
        };
        let normed = standardize(x, axis, self.cfg.norm_eps)?;
        match &self.norm_affine {
            // Per-slot channels: weight and bias indexed by slot.
            Some((weight, bias)) => normed.broadcast_mul(weight)?.broadcast_add(bias),
            None => Ok(normed),
        }
    }

    fn forward(&self, logits: &Tensor) -> Result<Tensor> {
        let attended = match &self.qkv {
            None => self.attend(logits, logits, logits)?,
            Some([q, k, v]) => self.attend(
                &q.forward(logits)?,
                &k.forward(logits)?,
                &v.forward(logits)?,
            )?,
        };
        let normed = self.instance_norm(&attended)?;
        match self.cfg.output {
            CombineOutput::Normalized => Ok(normed),
            CombineOutput::Sigmoid => candle_nn::ops::sigmoid(&normed),
            CombineOutput::Softmax => softmax(&normed, 2),
        }
    }
}
