//! A fused, multi-threaded CPU LayerNorm with its backward pass. (An MLP's
//! bias + activation is fused into [`crate::linear`], the attention softmax
//! into [`crate::attention`].)
//!
//! candle's composite versions make one pass (and one allocation) per
//! primitive op, single-threaded; at ViT-B/16 shapes that is a large share
//! of the forward pass (docs/benchmarks.md). candle's own fused
//! `layer_norm` records no gradient, so it cannot be used for training.
//! Here the op is one `CustomOp3` whose backward is one fused pass over the
//! rows giving the input, weight and bias gradients together. On other
//! devices or dtypes the composite path runs; the results agree (checked by
//! the unit tests below and by the `composite` integration test).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::dispatch::{f32_operand, fused_path_f32};

/// LayerNorm over the last dimension with affine `weight` and `bias`
/// (`torch.nn.LayerNorm`); statistics in F32.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    // The kernels (CPU and CUDA) take rows of the weight's length: only a
    // 1-D weight and bias as long as the last dimension fit them (others
    // go to the composite, which broadcasts them or says why it cannot).
    let width = xs.dims().last().copied().unwrap_or(0);
    let fits = width > 0 && weight.dims() == [width] && bias.dims() == [width];
    if fits && fused_path_f32(xs) && weight.dtype() == DType::F32 && bias.dtype() == DType::F32 {
        return xs.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNorm { eps },
        );
    }
    #[cfg(cuda_kernels)]
    if fits
        && crate::dispatch::cuda_path(xs)
        && weight.dtype() == xs.dtype()
        && bias.dtype() == xs.dtype()
    {
        return crate::cuda_ops::layer_norm(xs, weight, bias, eps);
    }
    candle_nn::ops::layer_norm_slow(xs, weight, bias, eps)
}

/// Per row: mean and `1 / sqrt(var + eps)`.
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_operand(x_storage, x_layout, self.name(), "x")?;
        let weight = f32_operand(w_storage, w_layout, self.name(), "weight")?;
        let bias = f32_operand(b_storage, b_layout, self.name(), "bias")?;
        let n = weight.len().max(1);
        if bias.len() != weight.len() || x_layout.shape().dims().last() != Some(&weight.len()) {
            candle_core::bail!(
                "{}: weight ({}) and bias ({}) must be as long as the rows of x {:?}",
                self.name(),
                weight.len(),
                bias.len(),
                x_layout.shape()
            )
        }
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(n)
            .zip(xs.par_chunks(n))
            .for_each(|(out, row)| {
                let (mean, rstd) = row_stats(row, self.eps);
                for (((o, &x), &w), &b) in out.iter_mut().zip(row).zip(weight).zip(bias) {
                    *o = (x - mean) * rstd * w + b;
                }
            });
        Ok((CpuStorage::F32(out), x_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = weight.elem_count();
        let rows = xs.elem_count() / d.max(1);
        // One pass gives all three gradients, packed as
        // [input gradient (rows·d) | weight gradient (d) | bias gradient (d)].
        let packed = xs.apply_op3_no_bwd(
            weight,
            &grad_res.contiguous()?,
            &LayerNormBackward { eps: self.eps },
        )?;
        let grad_x = packed.narrow(0, 0, rows * d)?.reshape(xs.shape())?;
        let grad_weight = packed.narrow(0, rows * d, d)?;
        let grad_bias = packed.narrow(0, rows * d + d, d)?;
        Ok((Some(grad_x), Some(grad_weight), Some(grad_bias)))
    }
}

/// Rows per task of the backward pass: each task also sums its rows' weight
/// and bias gradients, and the tasks' sums are added at the end.
const BACKWARD_ROWS_PER_TASK: usize = 16;

/// All three gradients of the LayerNorm in one pass over the rows, with
/// `x̂` the standardised row and `gw = grad * weight`:
/// input `rstd * (gw - mean(gw) - x̂ * mean(gw * x̂))`, weight `Σ grad * x̂`,
/// bias `Σ grad` (sums over rows). The result is flat:
/// `[input (rows·d) | weight (d) | bias (d)]`.
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "fused-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        g_storage: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_operand(x_storage, x_layout, self.name(), "x")?;
        let weight = f32_operand(w_storage, w_layout, self.name(), "weight")?;
        let grads = f32_operand(g_storage, g_layout, self.name(), "the output gradient")?;
        let n = weight.len().max(1);
        if xs.len() % n != 0 || grads.len() != xs.len() {
            candle_core::bail!(
                "{}: x ({} elements) and its gradient ({}) must be the same whole rows of {n}",
                self.name(),
                xs.len(),
                grads.len()
            )
        }
        let task = n * BACKWARD_ROWS_PER_TASK;
        let mut out = vec![0f32; xs.len() + 2 * n];
        let (grad_x, param_grads) = out.split_at_mut(xs.len());
        // Per-task partial sums, collected in task order and added up in
        // that order: the result does not depend on how rayon schedules the
        // tasks (a parallel `reduce` would sum in a run-dependent order, and
        // training would not be reproducible to the bit).
        let partials: Vec<(Vec<f32>, Vec<f32>)> = grad_x
            .par_chunks_mut(task)
            .zip(xs.par_chunks(task).zip(grads.par_chunks(task)))
            .map(|(out, (rows, grad_rows))| {
                let (mut gw_sum, mut gb_sum) = (vec![0f32; n], vec![0f32; n]);
                for ((out, row), grad) in out
                    .chunks_exact_mut(n)
                    .zip(rows.chunks_exact(n))
                    .zip(grad_rows.chunks_exact(n))
                {
                    self.row(out, row, grad, weight, (&mut gw_sum, &mut gb_sum));
                }
                (gw_sum, gb_sum)
            })
            .collect();
        let (mut sum_gw, mut sum_gb) = (vec![0f32; n], vec![0f32; n]);
        for (task_w, task_b) in &partials {
            sum_gw.iter_mut().zip(task_w).for_each(|(a, b)| *a += b);
            sum_gb.iter_mut().zip(task_b).for_each(|(a, b)| *a += b);
        }
        param_grads[..n].copy_from_slice(&sum_gw);
        param_grads[n..].copy_from_slice(&sum_gb);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

impl LayerNormBackward {
    /// One row's input gradient into `out`, and its weight and bias
    /// gradients added into `sums`.
    fn row(
        &self,
        out: &mut [f32],
        row: &[f32],
        grad: &[f32],
        weight: &[f32],
        (gw_sum, gb_sum): (&mut [f32], &mut [f32]),
    ) {
        let n = row.len() as f32;
        let (mean, rstd) = row_stats(row, self.eps);
        let (mut sum_gw, mut sum_gw_xhat) = (0f32, 0f32);
        for ((((&x, &g), &w), sw), sb) in row
            .iter()
            .zip(grad)
            .zip(weight)
            .zip(gw_sum.iter_mut())
            .zip(gb_sum.iter_mut())
        {
            let xhat = (x - mean) * rstd;
            let gw = g * w;
            sum_gw += gw;
            sum_gw_xhat += gw * xhat;
            *sw += g * xhat;
            *sb += g;
        }
        let (mean_gw, mean_gw_xhat) = (sum_gw / n, sum_gw_xhat / n);
        for (((o, &x), &g), &w) in out.iter_mut().zip(row).zip(grad).zip(weight) {
            let xhat = (x - mean) * rstd;
            *o = rstd * (g * w - mean_gw - xhat * mean_gw_xhat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("difference")
    }

    #[test]
    fn fused_layer_norm_matches_composite() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (2, 9, 48), &dev)? + 0.5)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 48, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 48, &dev)?)?;
        let loss_w = Tensor::randn(0f32, 1.0, (2, 9, 48), &dev)?;
        let run = |f: fn(&Tensor, &Tensor, &Tensor, f32) -> Result<Tensor>| -> Result<Vec<Tensor>> {
            let y = f(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
            let grads = (&y * &loss_w)?.sum_all()?.backward()?;
            let mut out = vec![y];
            for v in [&x, &w, &b] {
                out.push(grads.get(v.as_tensor()).expect("gradient").clone());
            }
            Ok(out)
        };
        let composite = run(candle_nn::ops::layer_norm_slow)?;
        let fused = run(layer_norm)?;
        for (a, b) in composite.iter().zip(&fused) {
            assert!(max_diff(a, b) < 1e-4, "{}", max_diff(a, b));
        }
        Ok(())
    }
}
