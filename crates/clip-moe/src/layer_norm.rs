//! LayerNorm that records its gradient.
//!
//! `candle_nn::LayerNorm` takes candle's fused kernel for contiguous inputs,
//! which records no backward pass (candle issues #2168, #2977): every
//! LayerNorm of CLIP would silently cut the graph. This one is this crate's
//! fused kernel with a backward pass (`ops.rs`) on the CPU, and the composite
//! `candle_nn::ops::layer_norm_slow` (F32 inside) on other devices.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

/// `torch.nn.LayerNorm(size, eps)` with parameters `weight` and `bias`.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps: eps as f32,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Statistics in F32 whatever the dtype of `xs`; the affine part in it.
        let dtype = xs.dtype();
        fused_ops::layer_norm(
            xs,
            &self.weight.to_dtype(dtype)?,
            &self.bias.to_dtype(dtype)?,
            self.eps,
        )
    }
}
