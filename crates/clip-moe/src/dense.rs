//! A `torch.nn.Linear` (weight `(out, in)`, bias `(out)`) applied with
//! `fused_ops::linear`: matmul, bias and optional activation in one pass and
//! one autograd node whose backward writes contiguous gradients (candle's
//! `Linear` adds a transposed, strided weight gradient to a zero tensor).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use fused_ops::Activation;

#[derive(Debug, Clone)]
pub(crate) struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    /// Loads `weight` and `bias` under `vb`, initialised as
    /// `candle_nn::linear` does when they are not in the checkpoint.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        Ok(Self {
            weight: vb.get_with_hints(
                (out_dim, in_dim),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            bias: vb.get_with_hints(
                out_dim,
                "bias",
                candle_nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?,
        })
    }

    /// `act(x Wᵀ + b)` over the last dimension of `xs`, in `xs`'s dtype (the
    /// F32 master weights are cast to it; a no-op in F32).
    pub fn forward(&self, xs: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let dtype = xs.dtype();
        fused_ops::linear(
            xs,
            &self.weight.to_dtype(dtype)?,
            &self.bias.to_dtype(dtype)?,
            act,
        )
    }
}
