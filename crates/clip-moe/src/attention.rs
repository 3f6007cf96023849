//! Multi-head self-attention as transformers' `CLIPAttention` (and OpenAI's
//! `nn.MultiheadAttention`): separate `q_proj`, `k_proj`, `v_proj`,
//! `out_proj` with biases, logits scaled by `head_dim^-0.5`, and for the
//! text tower a causal mask.
//!
//! On CPU in F32 the heads run in `fused_attention`'s kernel (one autograd
//! node, heads in parallel, no head transposes); elsewhere the same maths runs
//! as candle ops with the additive `f32::MIN` mask transformers uses.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::EncoderConfig;
use crate::dense::Dense;

#[derive(Debug, Clone)]
pub(crate) struct Attention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let head_dim = d / cfg.num_attention_heads;
        Ok(Self {
            q_proj: Dense::new(d, d, vb.pp("q_proj"))?,
            k_proj: Dense::new(d, d, vb.pp("k_proj"))?,
            v_proj: Dense::new(d, d, vb.pp("v_proj"))?,
            out_proj: Dense::new(d, d, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `(batch, tokens, dim) -> (batch, tokens, dim)`; with `causal`, token
    /// `i` attends to tokens `j <= i` only.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Result<Tensor> {
        let q = self.q_proj.forward(xs, None)?;
        let k = self.k_proj.forward(xs, None)?;
        let v = self.v_proj.forward(xs, None)?;
        let context = fused_ops::attention(&q, &k, &v, self.num_heads, self.scale, causal)?;
        self.out_proj.forward(&context, None)
    }
}
