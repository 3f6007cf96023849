//! Multi-head self-attention as transformers' `CLIPAttention` (and OpenAI's
//! `nn.MultiheadAttention`): separate `q_proj`, `k_proj`, `v_proj`,
//! `out_proj` with biases, queries scaled by `head_dim^-0.5`, an optional
//! additive mask (the text tower's causal mask). The softmax is this
//! crate's fused kernel with a backward pass (`ops.rs`); candle's fused
//! `softmax_last_dim` records no gradient.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::config::EncoderConfig;

#[derive(Debug, Clone)]
pub(crate) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    pub fn new(cfg: &EncoderConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let head_dim = d / cfg.num_attention_heads;
        Ok(Self {
            q_proj: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k_proj: candle_nn::linear(d, d, vb.pp("k_proj"))?,
            v_proj: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out_proj: candle_nn::linear(d, d, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `(batch, tokens, dim) -> (batch, tokens, dim)`; `mask` is added to the
    /// `(tokens, tokens)` attention logits of every head.
    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        // Linears on (b·n, d) rows: one plain matmul each way in backward.
        let rows = xs.reshape((b * n, d))?;
        let heads = |proj: &Linear| -> Result<Tensor> {
            proj.forward(&rows)?
                .reshape((b, n, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (heads(&self.q_proj)? * self.scale)?;
        let k = heads(&self.k_proj)?;
        let v = heads(&self.v_proj)?;
        // (b, h, n, hd) x (b, h, hd, n) -> (b, h, n, n)
        let logits = q.matmul(&k.t()?)?;
        let logits = match mask {
            Some(mask) => logits.broadcast_add(mask)?,
            None => logits,
        };
        let weights = crate::ops::softmax_last_dim(&logits)?;
        // (b, h, n, n) x (b, h, n, hd) -> (b, h, n, hd) -> (b·n, d)
        let context = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * n, d))?;
        self.out_proj.forward(&context)?.reshape((b, n, d))
    }
}
