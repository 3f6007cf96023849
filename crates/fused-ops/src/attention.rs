//! Scaled dot-product attention over all heads as one autograd node, on CPU
//! in F32: `softmax(scale · Q Kᵀ [+ causal mask]) V` for every (batch, head)
//! pair, with its backward pass.
//!
//! Why a kernel of its own:
//! - candle runs a batched matmul as a loop over the batch, each product
//!   spread over the thread pool. Attention's products are small
//!   (`197 x 64` per head at ViT-B/16) and the per-call synchronisation costs
//!   more than the arithmetic; here every head is one single-threaded `gemm`
//!   call and the heads run in parallel.
//! - The heads are read in place inside the `(batch, tokens, dim)` rows of
//!   the projections (strided `gemm` operands): no reshape + transpose +
//!   copy of Q, K and V, forward or back. Results are written per head and
//!   merged back into rows in one parallel pass.
//! - The softmax is [`crate::rows::softmax_rows`]: a vectorised `exp`, and
//!   probabilities below `f32::MIN_POSITIVE` flushed to zero. Sharp
//!   attention makes many probabilities subnormal, and x86 arithmetic on
//!   subnormals is slow (docs/benchmarks.md has the case that showed it).
//!   The flushed values are below 1.2e-38, so results move by less than
//!   that times |V|.
//!
//! The causal mask is the text tower's (`j > i` hidden), applied by giving
//! those positions probability zero, which is what adding `f32::MIN` to the
//! logits does in transformers.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::dispatch::{cpu_f32_operand, f32_operand, fused_path_f32};
use crate::gemm::{matmul_into, Strided};
use crate::routing::softmax;
use crate::rows::softmax_rows;

/// One attention call's geometry.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    tokens: usize,
    heads: usize,
    head_dim: usize,
}

impl Dims {
    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// An `(rows, cols)` matrix at `offset` in `data` with the given strides.
fn view(data: &[f32], offset: usize, row_stride: usize, col_stride: usize) -> Strided<'_, f32> {
    Strided {
        data,
        offset,
        batch_stride: 0,
        row_stride,
        col_stride,
    }
}

/// Copies per-head blocks `(batch, heads, tokens, head_dim)` into
/// `(batch, tokens, heads · head_dim)` rows.
fn merge_heads(per_head: &[f32], dims: Dims) -> Vec<f32> {
    let (n, h, hd, d) = (dims.tokens, dims.heads, dims.head_dim, dims.dim());
    let mut out = vec![0f32; per_head.len()];
    out.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
        let (b, t) = (row / n, row % n);
        for (head, out) in out.chunks_exact_mut(hd).enumerate() {
            let start = ((b * h + head) * n + t) * hd;
            out.copy_from_slice(&per_head[start..start + hd]);
        }
    });
    out
}

/// Multi-head attention on `(batch, tokens, heads · head_dim)` projections,
/// the context returned in the same layout: the fused kernel on CPU in F32
/// (unless [`crate::set_fused_cpu_kernels`]`(false)`); with the CUDA switch
/// on ([`crate::set_fused_cuda_kernels`]), this crate's memory-efficient
/// CUDA kernels for head widths 8, 16, 32, 64 and 128 in F32 and BF16 (no
/// `tokens x tokens` tensor is stored; the backward recomputes the
/// probabilities); candle's ops (`composite_attention`) elsewhere.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    // Empty inputs (no token, no width) go to the composite, which returns
    // empty results; the kernel's row chunks would be of length 0.
    if fused_path_f32(q) && q.elem_count() > 0 {
        return fused_attention(q, k, v, heads, scale as f32, causal);
    }
    #[cfg(cuda_kernels)]
    if crate::dispatch::cuda_path(q) && crate::cuda_ops::attention_fits(q, k, v, heads) {
        return crate::cuda_ops::attention(q, k, v, heads, scale as f32, causal);
    }
    composite_attention(q, k, v, heads, scale, causal)
}

/// The same maths with candle's ops (which candle differentiates), the
/// causal mask added as `f32::MIN` as transformers does.
fn composite_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Result<Tensor> {
    let (b, n, d) = q.dims3()?;
    let split = |t: &Tensor| -> Result<Tensor> {
        t.reshape((b, n, heads, d / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    // (b, h, n, hd) x (b, h, hd, n) -> (b, h, n, n)
    let mut logits = (split(q)? * scale)?.matmul(&split(k)?.t()?)?;
    if causal {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..n).map(move |j| if j > i { f32::MIN } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (n, n), q.device())?.to_dtype(logits.dtype())?;
        logits = logits.broadcast_add(&mask)?;
    }
    let probs = softmax(&logits, logits.rank() - 1)?;
    // (b, h, n, n) x (b, h, n, hd) -> (b, h, n, hd) -> (b, n, d)
    probs
        .matmul(&split(v)?)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, n, d))
}

/// The fused kernel: CPU, F32.
fn fused_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    causal: bool,
) -> Result<Tensor> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let op = FusedAttention {
        heads,
        scale,
        causal,
        save_probs: tracked,
        probs: Mutex::new(None),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct FusedAttention {
    heads: usize,
    scale: f32,
    causal: bool,
    /// Whether a backward pass can follow (some input tracks gradients).
    save_probs: bool,
    /// `(batch, heads, tokens, tokens)` probabilities, kept for `bwd`.
    probs: Mutex<Option<Arc<Vec<f32>>>>,
}

impl FusedAttention {
    const NAME: &'static str = "fused-attention";

    fn dims(&self, shape: &Shape) -> Result<Dims> {
        let (batch, tokens, dim) = shape.dims3()?;
        if self.heads == 0 || dim % self.heads != 0 {
            candle_core::bail!(
                "{}: width {dim} does not split into {} heads",
                Self::NAME,
                self.heads
            )
        }
        Ok(Dims {
            batch,
            tokens,
            heads: self.heads,
            head_dim: dim / self.heads,
        })
    }

    fn lock_probs(&self) -> Result<std::sync::MutexGuard<'_, Option<Arc<Vec<f32>>>>> {
        self.probs.lock().map_err(|_| {
            candle_core::Error::msg(format!("{}: saved probabilities lock poisoned", Self::NAME))
        })
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if ql.shape() != kl.shape() || ql.shape() != vl.shape() {
            candle_core::bail!(
                "{}: q {:?}, k {:?} and v {:?} must have one shape",
                Self::NAME,
                ql.shape(),
                kl.shape(),
                vl.shape()
            )
        }
        let dims = self.dims(ql.shape())?;
        let q = f32_operand(qs, ql, Self::NAME, "q")?;
        let k = f32_operand(ks, kl, Self::NAME, "k")?;
        let v = f32_operand(vs, vl, Self::NAME, "v")?;
        let (n, hd, d) = (dims.tokens, dims.head_dim, dims.dim());
        let pairs = dims.batch * dims.heads;
        // Training keeps every head's probabilities for the backward pass;
        // inference uses one cache-resident scratch block per head.
        let mut probs = vec![0f32; if self.save_probs { pairs * n * n } else { 0 }];
        let mut context = vec![0f32; pairs * n * hd];
        let head = |pair: usize, p: &mut [f32], ctx: &mut [f32]| -> Result<()> {
            let (b, h) = (pair / dims.heads, pair % dims.heads);
            let base = b * n * d + h * hd;
            // P = softmax(scale · Q Kᵀ): Kᵀ is K read column-wise.
            let (q, k) = (view(q, base, d, 1), view(k, base, 1, d));
            matmul_into((n, n, hd), p, n, q, k, self.scale)?;
            let causal = self.causal;
            softmax_rows(p, n, |i| if causal { i + 1 } else { n });
            // context = P V
            let (p, v) = (view(p, 0, n, 1), view(v, base, d, 1));
            matmul_into((n, hd, n), ctx, hd, p, v, 1.0)
        };
        if self.save_probs {
            probs
                .par_chunks_mut(n * n)
                .zip(context.par_chunks_mut(n * hd))
                .enumerate()
                .try_for_each(|(pair, (p, ctx))| head(pair, p, ctx))?;
            *self.lock_probs()? = Some(Arc::new(probs));
        } else {
            context
                .par_chunks_mut(n * hd)
                .enumerate()
                .try_for_each(|(pair, ctx)| head(pair, &mut vec![0f32; n * n], ctx))?;
        }
        Ok((
            CpuStorage::F32(merge_heads(&context, dims)),
            ql.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.lock_probs()?.clone().ok_or_else(|| {
            candle_core::Error::msg(format!("{}: backward without a saved forward", Self::NAME))
        })?;
        let dims = self.dims(q.shape())?;
        let grad = grad_res.contiguous()?;
        let (grads_q, grads_k, grads_v) = {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let q = cpu_f32_operand(&qs, ql, Self::NAME, "q")?;
            let k = cpu_f32_operand(&ks, kl, Self::NAME, "k")?;
            let v = cpu_f32_operand(&vs, vl, Self::NAME, "v")?;
            let g = cpu_f32_operand(&gs, gl, Self::NAME, "the output gradient")?;
            attention_backward(q, k, v, g, &probs, dims, self.scale)?
        };
        let shape = q.shape().clone();
        let to_tensor =
            |data: Vec<f32>| Tensor::from_vec(merge_heads(&data, dims), shape.clone(), q.device());
        Ok((
            Some(to_tensor(grads_q)?),
            Some(to_tensor(grads_k)?),
            Some(to_tensor(grads_v)?),
        ))
    }
}

/// Gradients w.r.t. Q, K and V, each as per-head blocks
/// `(batch, heads, tokens, head_dim)`:
///
/// ```text
/// dV = Pᵀ dO        dP = dO Vᵀ        dS = P ⊙ (dP - rowsum(P ⊙ dP))
/// dQ = scale · dS K                   dK = scale · dSᵀ Q
/// ```
fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    grad: &[f32],
    probs: &[f32],
    dims: Dims,
    scale: f32,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let (n, hd, d) = (dims.tokens, dims.head_dim, dims.dim());
    let pairs = dims.batch * dims.heads;
    let mut grad_q = vec![0f32; pairs * n * hd];
    let mut grad_k = vec![0f32; pairs * n * hd];
    let mut grad_v = vec![0f32; pairs * n * hd];
    grad_q
        .par_chunks_mut(n * hd)
        .zip(grad_k.par_chunks_mut(n * hd))
        .zip(grad_v.par_chunks_mut(n * hd))
        .enumerate()
        .try_for_each(|(pair, ((dq, dk), dv))| -> Result<()> {
            let (b, h) = (pair / dims.heads, pair % dims.heads);
            let base = b * n * d + h * hd;
            let p = &probs[pair * n * n..(pair + 1) * n * n];
            let g = view(grad, base, d, 1);
            // dV = Pᵀ dO: Pᵀ is P read column-wise.
            matmul_into((n, hd, n), dv, hd, view(p, 0, 1, n), g, 1.0)?;
            // dP = dO Vᵀ, then dS in place.
            let mut ds = vec![0f32; n * n];
            matmul_into((n, n, hd), &mut ds, n, g, view(v, base, 1, d), 1.0)?;
            for (ds, p) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                for (s, &p) in ds.iter_mut().zip(p) {
                    let x = p * (*s - dot);
                    *s = if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
                }
            }
            matmul_into(
                (n, hd, n),
                dq,
                hd,
                view(&ds, 0, n, 1),
                view(k, base, d, 1),
                scale,
            )?;
            matmul_into(
                (n, hd, n),
                dk,
                hd,
                view(&ds, 0, 1, n),
                view(q, base, d, 1),
                scale,
            )
        })?;
    Ok((grad_q, grad_k, grad_v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    fn check(causal: bool) -> Result<()> {
        let dev = Device::Cpu;
        let (b, n, heads, hd) = (2, 7, 3, 4);
        let var = |seed_std: f32| -> Result<Var> {
            Var::from_tensor(&Tensor::randn(0f32, seed_std, (b, n, heads * hd), &dev)?)
        };
        let (q, k, v) = (var(1.5)?, var(1.0)?, var(1.0)?);
        let scale = (hd as f64).powf(-0.5);
        let w = Tensor::randn(0f32, 1.0, (b, n, heads * hd), &dev)?;

        let fused = fused_attention(&q, &k, &v, heads, scale as f32, causal)?;
        let reference = composite_attention(&q, &k, &v, heads, scale, causal)?;
        let diff = max_diff(&fused, &reference)?;
        assert!(diff < 1e-5, "causal {causal}: forward differs by {diff}");
        // Untracked inputs take the inference path (no saved probabilities).
        let (qd, kd, vd) = (
            q.as_tensor().detach(),
            k.as_tensor().detach(),
            v.as_tensor().detach(),
        );
        let inference = fused_attention(&qd, &kd, &vd, heads, scale as f32, causal)?;
        assert_eq!(max_diff(&inference, &fused)?, 0.0, "inference path differs");

        let got = (fused * &w)?.sum_all()?.backward()?;
        let want = (reference * &w)?.sum_all()?.backward()?;
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let (got, want) = (
                got.get(var).expect("fused grad"),
                want.get(var).expect("grad"),
            );
            let diff = max_diff(got, want)?;
            assert!(diff < 1e-5, "causal {causal}: d{name} differs by {diff}");
            let norm = want.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 1e-3, "d{name} is zero: the check would be vacuous");
        }
        Ok(())
    }

    #[test]
    fn matches_composite_attention_forward_and_backward() -> Result<()> {
        check(false)
    }

    #[test]
    fn causal_mask_matches_additive_mask() -> Result<()> {
        check(true)
    }

    #[test]
    fn bad_head_count_is_an_error() -> Result<()> {
        let x = Tensor::zeros((1, 2, 6), DType::F32, &Device::Cpu)?;
        let err = fused_attention(&x, &x, &x, 4, 1.0, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not split into 4 heads"), "{err}");
        Ok(())
    }
}
