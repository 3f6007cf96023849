//! Multi-head self-attention as transformers' `CLIPAttention` (and OpenAI's
//! `nn.MultiheadAttention`): separate `q_proj`, `k_proj`, `v_proj`,
//! `out_proj` with biases, logits scaled by `head_dim^-0.5`, and for the
//! text tower a causal mask.
//!
//! On CPU in F32 the heads run in `fused_attention`'s kernel (one autograd
//! node, heads in parallel, no head transposes); elsewhere the same maths runs
//! as candle ops with the additive `f32::MIN` mask transformers uses.

use candle_core::{DType, Result, Tensor, D};
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
    head_dim: usize,
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
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `(batch, tokens, dim) -> (batch, tokens, dim)`; with `causal`, token
    /// `i` attends to tokens `j <= i` only.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Result<Tensor> {
        let q = self.q_proj.forward(xs, None)?;
        let k = self.k_proj.forward(xs, None)?;
        let v = self.v_proj.forward(xs, None)?;
        let context = if xs.device().is_cpu() && xs.dtype() == DType::F32 {
            crate::fused_attention::fused_attention(
                &q,
                &k,
                &v,
                self.num_heads,
                self.scale as f32,
                causal,
            )?
        } else {
            self.composite(&q, &k, &v, causal)?
        };
        self.out_proj.forward(&context, None)
    }

    /// The attention core with candle ops, for devices and dtypes the fused
    /// kernel does not cover.
    fn composite(&self, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
        let (b, n, d) = q.dims3()?;
        let heads = |t: &Tensor| -> Result<Tensor> {
            t.reshape((b, n, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (heads(q)? * self.scale)?;
        // (b, h, n, hd) x (b, h, hd, n) -> (b, h, n, n)
        let mut logits = q.matmul(&heads(k)?.t()?)?;
        if causal {
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (n, n), q.device())?.to_dtype(logits.dtype())?;
            logits = logits.broadcast_add(&mask)?;
        }
        let weights = candle_nn::ops::softmax(&logits, D::Minus1)?;
        // (b, h, n, n) x (b, h, n, hd) -> (b, h, n, hd) -> (b, n, d)
        weights
            .matmul(&heads(v)?)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, d))
    }
}
