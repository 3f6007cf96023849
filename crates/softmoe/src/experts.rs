//! The expert MLPs, all experts in one batched matmul per linear.

use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};

use fused_ops::ExpertMlp;

use crate::config::{Activation, ExpertInit, SoftMoeConfig};

/// `e` two-layer MLPs `fc2(act(fc1(x)))` (the experts of eq. 3, each applied
/// to its own slots), stored stacked:
/// `fc1.weight (e, hidden, dim)`, `fc1.bias (e, hidden)`,
/// `fc2.weight (e, dim, hidden)`, `fc2.bias (e, dim)`, i.e. `torch.nn.Linear`
/// layouts with a leading expert axis.
///
/// Public so that a dense MLP (one expert over all tokens) shares exactly
/// these kernels, e.g. as the baseline in the benchmarks.
#[derive(Debug, Clone)]
pub struct Experts {
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    activation: Activation,
}

fn linear_inits(init: ExpertInit, fan_in: usize, zero: bool) -> (Init, Init) {
    if zero {
        return (Init::Const(0.0), Init::Const(0.0));
    }
    match init {
        ExpertInit::TorchLinear | ExpertInit::ZeroOutput => {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let uniform = Init::Uniform {
                lo: -bound,
                up: bound,
            };
            (uniform, uniform)
        }
        ExpertInit::Normal { std } => (
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            Init::Const(0.0),
        ),
    }
}

impl Experts {
    /// Builds the experts of `cfg` under `vb` (names `fc1.*`, `fc2.*`).
    pub fn new(cfg: &SoftMoeConfig, vb: VarBuilder) -> Result<Self> {
        let (e, d, h) = (cfg.options.num_experts, cfg.dim, cfg.expert_hidden_dim);
        let dtype = crate::param_dtype(&vb);
        let (w1, b1) = linear_inits(cfg.options.expert_init, d, false);
        let zero_out = cfg.options.expert_init == ExpertInit::ZeroOutput;
        let (w2, b2) = linear_inits(cfg.options.expert_init, h, zero_out);
        let fc1 = vb.pp("fc1");
        let fc2 = vb.pp("fc2");
        Ok(Self {
            fc1_weight: fc1.get_with_hints_dtype((e, h, d), "weight", w1, dtype)?,
            fc1_bias: fc1.get_with_hints_dtype((e, h), "bias", b1, dtype)?,
            fc2_weight: fc2.get_with_hints_dtype((e, d, h), "weight", w2, dtype)?,
            fc2_bias: fc2.get_with_hints_dtype((e, d), "bias", b2, dtype)?,
            activation: cfg.options.activation,
        })
    }

    /// Applies expert `i` to row block `i`: `(e, rows, dim) -> (e, rows, dim)`.
    /// Weights (F32 master copies) are cast to the input's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.with_mlp(x.dtype(), |mlp| mlp.forward(x))
    }

    /// The experts on slots as the layer holds them, `(batch, e·s, dim) ->
    /// (batch, e·s, dim)`: expert `i` takes slots `[i·s, (i+1)·s)` of every
    /// batch entry. The same values as [`Experts::forward`] on the
    /// expert-major rearrangement, without the rearrangement's graph nodes.
    pub fn forward_slots(&self, slots: &Tensor) -> Result<Tensor> {
        self.with_mlp(slots.dtype(), |mlp| mlp.forward_slots(slots))
    }

    /// Runs `f` on the weights cast to `dtype` (no copy when they have it).
    fn with_mlp(
        &self,
        dtype: candle_core::DType,
        f: impl FnOnce(ExpertMlp<'_>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (w1, b1, w2, b2) = (
            self.fc1_weight.to_dtype(dtype)?,
            self.fc1_bias.to_dtype(dtype)?,
            self.fc2_weight.to_dtype(dtype)?,
            self.fc2_bias.to_dtype(dtype)?,
        );
        f(ExpertMlp {
            fc1_weight: &w1,
            fc1_bias: &b1,
            fc2_weight: &w2,
            fc2_bias: &b2,
            activation: self.activation,
        })
    }
}
