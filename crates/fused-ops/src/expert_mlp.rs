//! The experts of a Soft MoE layer as one operation: `e` two-layer MLPs
//! `fc2(act(fc1(x)))`, expert `i` on its own rows, each linear one fused op.
//!
//! The layer holds its slots batch-major, `(batch, e·s, dim)`, while the
//! experts compute expert-major, one product per expert. The conversion
//! happens inside the linears' kernels (no reshape or transpose nodes, whose
//! backward would each add a zeroed gradient buffer), so callers only say
//! which of the two layouts their rows are in by calling
//! [`ExpertMlp::forward`] or [`ExpertMlp::forward_slots`].

use candle_core::{Result, Tensor};

use crate::activation::Activation;
use crate::expert_linear::{expert_linear_ordered, RowOrder};

/// The stacked weights of `e` expert MLPs, in `torch.nn.Linear` layouts
/// with a leading expert axis. All four tensors and the input share a dtype.
#[derive(Debug, Clone, Copy)]
pub struct ExpertMlp<'a> {
    /// `(e, hidden, dim)`.
    pub fc1_weight: &'a Tensor,
    /// `(e, hidden)`.
    pub fc1_bias: &'a Tensor,
    /// `(e, dim, hidden)`.
    pub fc2_weight: &'a Tensor,
    /// `(e, dim)`.
    pub fc2_bias: &'a Tensor,
    /// Between the two linears.
    pub activation: Activation,
}

impl ExpertMlp<'_> {
    /// Expert `i` on row block `i`: `(e, rows, dim) -> (e, rows, dim)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.ordered(x, RowOrder::ExpertMajor, RowOrder::ExpertMajor)
    }

    /// The experts on slots as a Soft MoE layer holds them, `(batch, e·s,
    /// dim) -> (batch, e·s, dim)`: expert `i` takes slots `[i·s, (i+1)·s)` of
    /// every batch entry. The same values as [`ExpertMlp::forward`] on the
    /// expert-major rearrangement.
    pub fn forward_slots(&self, slots: &Tensor) -> Result<Tensor> {
        let order = RowOrder::BatchMajor {
            batch: slots.dim(0)?,
        };
        self.ordered(slots, order, order)
    }

    fn ordered(&self, x: &Tensor, input: RowOrder, output: RowOrder) -> Result<Tensor> {
        let hidden = expert_linear_ordered(
            x,
            self.fc1_weight,
            self.fc1_bias,
            Some(self.activation),
            input,
            RowOrder::ExpertMajor,
        )?;
        expert_linear_ordered(
            &hidden,
            self.fc2_weight,
            self.fc2_bias,
            None,
            RowOrder::ExpertMajor,
            output,
        )
    }
}
