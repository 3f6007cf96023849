//! The transformer encoder shared by both towers (transformers'
//! `CLIPEncoder` / `CLIPEncoderLayer`), with the paper's MoE branch:
//!
//! ```text
//! X <- X + Attn(LN1(X))
//! X <- X + MLP(LN2(X)) + MoE(LN2(X))      (Algorithm 1, Figure 2)
//! ```
//!
//! The MLP and the MoE read the same LayerNorm output, as in CLIP's code;
//! Algorithm 1 abbreviates it. Blocks without a branch are plain CLIP blocks.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use softmoe::{SoftMoe, SoftMoeConfig};

use crate::attention::Attention;
use crate::config::{EncoderConfig, HiddenAct};
use crate::dense::Dense;
use crate::layer_norm::LayerNorm;
use crate::moe_placement::MoeConfig;

/// `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Dense,
    fc2: Dense,
    act: HiddenAct,
}

impl Mlp {
    fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let (d, h) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            fc1: Dense::new(d, h, vb.pp("fc1"))?,
            fc2: Dense::new(h, d, vb.pp("fc2"))?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for Mlp {
    /// softmoe's fused linear: bias and activation in the matmul's output
    /// pass, one autograd node per layer (the experts' own kernel).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.fc1.forward(xs, Some(self.act.to_softmoe()))?;
        self.fc2.forward(&hidden, None)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
    moe: Option<SoftMoe>,
}

impl EncoderLayer {
    fn new(
        cfg: &EncoderConfig,
        moe: Option<&SoftMoeConfig>,
        vb: VarBuilder,
    ) -> crate::Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            layer_norm1: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            moe: moe.map(|moe| SoftMoe::new(moe, vb.pp("moe"))).transpose()?,
        })
    }

    fn forward(&self, xs: &Tensor, causal: bool) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, causal)?;
        let xs = (xs + attended)?;
        let normed = self.layer_norm2.forward(&xs)?;
        let xs = (&xs + self.mlp.forward(&normed)?)?;
        match &self.moe {
            Some(moe) => xs + moe.forward(&normed)?,
            None => Ok(xs),
        }
    }
}

/// A stack of encoder layers under `layers.{i}`.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Builds `cfg.num_hidden_layers` layers; those `moe` selects get a branch.
    pub fn new(cfg: &EncoderConfig, moe: &MoeConfig, vb: VarBuilder) -> crate::Result<Self> {
        let n = cfg.num_hidden_layers;
        let moe_layer = moe.layer_config(cfg.hidden_size, cfg.intermediate_size);
        let layers = (0..n)
            .map(|i| {
                let branch = moe_layer.as_ref().filter(|_| moe.applies_to(i, n));
                EncoderLayer::new(cfg, branch, vb.pp("layers").pp(i))
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self { layers })
    }

    /// `causal`: token `i` attends only to tokens `j <= i` (the text tower).
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |xs, layer| layer.forward(&xs, causal))
    }
}
