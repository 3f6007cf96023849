//! The router's element-wise maths as fused CPU ops with backward passes:
//! softmax along one axis of a `(b, n, m)` tensor (dispatch over tokens,
//! eq. 2; combine over slots, eq. 4) and vmoe's L2 normalisation.
//!
//! candle's composite softmax is five graph nodes (max, subtract, exp, sum,
//! divide) and its normalisation six, each a pass over the data forward and
//! a zero-and-add gradient buffer backward. Here each is one node whose
//! backward is one fused pass:
//!
//! ```text
//! softmax:   dx = y ⊙ (g - Σ_axis g ⊙ y)
//! l2:        y = x r,  r = 1 / sqrt(Σ x² + eps),   dx = r (g - y Σ g ⊙ y)
//! ```
//!
//! La-SoftMoE's combine adds two more of the same kind: the instance norm
//! (`standardize`, `dx = r (g - mean g - y mean(g ⊙ y))`) and the elu+1
//! feature map of its linear attention.
//!
//! All run in F32 or F64 (the router's dtype) on the CPU; with the CUDA
//! switch on, F32 and BF16 CUDA tensors take this crate's CUDA kernels
//! (softmax and the instance norm along any axis, the L2 normalisation over
//! the last axis, elu + 1); everything else uses candle's composites.

use candle_core::{Result, Shape, Tensor, D};
use num_traits::Float;
use rayon::prelude::*;

use crate::dispatch::{fused_path, BinaryKernel, Op, Real, UnaryKernel};

/// Softmax of `x` along `axis`, differentiable: the router's dispatch
/// weights (eq. 2, over tokens) and Soft MoE's combine weights (eq. 4, over
/// slots), public for other layers (e.g. attention). This crate's fused
/// kernel on the CPU in F32/F64, candle's ops elsewhere.
///
/// The composite subtracts the row maximum as a constant (detached).
/// Softmax does not change when every input of a row moves by the same
/// amount, so the maximum's gradient is exactly zero. `candle_nn::ops::softmax`
/// still computes it in every backward pass: a mask, a product and a
/// reduction, plus a zeroed buffer and an add.
pub fn softmax(x: &Tensor, axis: usize) -> Result<Tensor> {
    if fused_path(x) {
        return x.contiguous()?.apply_op1(Op(Softmax { axis }));
    }
    #[cfg(cuda_kernels)]
    if axis < x.rank() && crate::dispatch::cuda_path(x) {
        return crate::cuda_ops::softmax(x, axis);
    }
    {
        let max = x.max_keepdim(axis)?.detach();
        let num = x.broadcast_sub(&max)?.exp()?;
        let den = num.sum_keepdim(axis)?;
        num.broadcast_div(&den)
    }
}

/// `x / sqrt(Σ x² + eps)` over the last axis (vmoe's `normalize`, epsilon
/// inside the root), differentiable.
pub fn l2_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_path(x) {
        return x.contiguous()?.apply_op1(Op(L2Normalize { eps }));
    }
    #[cfg(cuda_kernels)]
    if x.rank() > 0 && crate::dispatch::cuda_path(x) {
        return crate::cuda_ops::l2_normalize(x, eps as f32);
    }
    {
        let inv_norm = (x.sqr()?.sum_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_norm)
    }
}

/// `(x - mean) / sqrt(var + eps)` along `axis` with the biased variance
/// (`InstanceNorm1d` without affine or running statistics, or LayerNorm
/// without its affine part), differentiable: La-SoftMoE's instance norm
/// (eq. 7), public for other layers' norms.
pub fn standardize(x: &Tensor, axis: usize, eps: f64) -> Result<Tensor> {
    if fused_path(x) {
        return x.contiguous()?.apply_op1(Op(Standardize { axis, eps }));
    }
    #[cfg(cuda_kernels)]
    if axis < x.rank() && crate::dispatch::cuda_path(x) {
        return crate::cuda_ops::standardize(x, axis, eps as f32);
    }
    {
        let centred = x.broadcast_sub(&x.mean_keepdim(axis)?)?;
        let var = centred.sqr()?.mean_keepdim(axis)?;
        centred.broadcast_div(&(var + eps)?.sqrt()?)
    }
}

/// `elu(x) + 1` (Katharopoulos et al.'s feature map: `x + 1` for `x > 0`,
/// `e^x` otherwise), differentiable. candle's `elu` and `+ 1` are two graph
/// nodes and `elu`'s backward alone about eight passes; here the backward is
/// one pass over the saved output (`dy/dx = 1` or `e^x = y`).
pub fn elu_plus_one(x: &Tensor) -> Result<Tensor> {
    if fused_path(x) {
        return x.contiguous()?.apply_op1(Op(EluPlusOne));
    }
    #[cfg(cuda_kernels)]
    if crate::dispatch::cuda_path(x) {
        return crate::cuda_ops::elu_plus_one(x);
    }
    {
        x.elu(1.0)? + 1.0
    }
}

/// `(outer, len, inner)`: the reduction runs over `len` with stride `inner`.
fn split_axis(shape: &Shape, axis: usize) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if axis >= dims.len() {
        candle_core::bail!("fused softmax: axis {axis} of a {:?} tensor", dims)
    }
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    Ok((outer, dims[axis], inner))
}

fn last_dim(shape: &Shape) -> usize {
    shape.dims().last().copied().unwrap_or(1)
}

/// A new buffer of `len` elements where `f(start, chunk)` fills every
/// `(line_len, inner)` block in parallel (`start`: the block's first index);
/// with `inner == 1` the blocks are rows, chunked for rayon.
fn per_block<T: Real>(
    len: usize,
    (line_len, inner): (usize, usize),
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) -> Vec<T> {
    let mut out = vec![T::zero(); len];
    let block = (line_len * inner).max(1);
    out.par_chunks_mut(block)
        .enumerate()
        .with_min_len(if inner == 1 { 64 } else { 1 })
        .for_each(|(i, chunk)| f(i * block, chunk));
    out
}

/// `elu(x) + 1` forward.
struct EluPlusOne;

impl UnaryKernel for EluPlusOne {
    const NAME: &'static str = "fused-elu-plus-one";

    fn run<T: Real>(&self, x: &[T], _: &Shape) -> Result<Vec<T>> {
        Ok(per_block(x.len(), (4096, 1), |start, o| {
            for (o, &v) in o.iter_mut().zip(&x[start..]) {
                *o = if v > T::zero() { v + T::one() } else { v.exp() };
            }
        }))
    }

    fn backward(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(
            &grad.contiguous()?,
            &Op(EluPlusOneGrad),
        )?))
    }
}

/// `g` where the input was positive (output above 1), `g · y` elsewhere.
struct EluPlusOneGrad;

impl BinaryKernel for EluPlusOneGrad {
    const NAME: &'static str = "fused-elu-plus-one-grad";

    fn run<T: Real>(&self, y: &[T], g: &[T], _: &Shape) -> Result<Vec<T>> {
        Ok(per_block(y.len(), (4096, 1), |start, o| {
            for ((o, &y), &g) in o.iter_mut().zip(&y[start..]).zip(&g[start..]) {
                *o = if y > T::one() { g } else { g * y };
            }
        }))
    }
}

/// Softmax of every `len`-long line (stride `inner`) of one block, written
/// into `out`; lines run side by side so the inner loop is contiguous. f32
/// exponentials use the vectorisable approximation (relative error 3e-7),
/// compiled for AVX-512 when the CPU has it.
fn softmax_block<T: Real>(x: &[T], out: &mut [T], inner: usize) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == candle_core::DType::F32 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports the features the function enables.
        return unsafe { softmax_block_avx512(x, out, inner) };
    }
    softmax_block_body(x, out, inner)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_block_avx512<T: Real>(x: &[T], out: &mut [T], inner: usize) {
    softmax_block_body(x, out, inner)
}

#[inline(always)]
fn softmax_block_body<T: Real>(x: &[T], out: &mut [T], inner: usize) {
    if inner == 1 {
        // One contiguous line: max and sum are short scalar reductions, the
        // exponentials one vectorised pass.
        let max = x.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v));
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - max).exp_fast();
        }
        let inv = T::one() / out.iter().fold(T::zero(), |s, &v| s + v);
        for o in out.iter_mut() {
            *o *= inv;
        }
        return;
    }
    let mut max = vec![T::neg_infinity(); inner];
    for row in x.chunks_exact(inner) {
        for (m, &v) in max.iter_mut().zip(row) {
            *m = Float::max(*m, v);
        }
    }
    let mut sum = vec![T::zero(); inner];
    for (o_row, x_row) in out.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
        for (((o, &v), &m), s) in o_row.iter_mut().zip(x_row).zip(&max).zip(sum.iter_mut()) {
            *o = (v - m).exp_fast();
            *s += *o;
        }
    }
    let inv: Vec<T> = sum.iter().map(|&s| T::one() / s).collect();
    for row in out.chunks_exact_mut(inner) {
        for (o, &r) in row.iter_mut().zip(&inv) {
            *o *= r;
        }
    }
}

struct Softmax {
    axis: usize,
}

impl UnaryKernel for Softmax {
    const NAME: &'static str = "fused-softmax";

    fn run<T: Real>(&self, x: &[T], shape: &Shape) -> Result<Vec<T>> {
        let (_, len, inner) = split_axis(shape, self.axis)?;
        Ok(per_block(x.len(), (len, inner), |start, o| {
            softmax_block(&x[start..start + o.len()], o, inner)
        }))
    }

    fn backward(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad =
            res.apply_op2_no_bwd(&grad.contiguous()?, &Op(SoftmaxGrad { axis: self.axis }))?;
        Ok(Some(grad))
    }
}

/// `y ⊙ (g - Σ_line g ⊙ y)` per line.
struct SoftmaxGrad {
    axis: usize,
}

impl BinaryKernel for SoftmaxGrad {
    const NAME: &'static str = "fused-softmax-grad";

    fn run<T: Real>(&self, y: &[T], g: &[T], shape: &Shape) -> Result<Vec<T>> {
        let (_, len, inner) = split_axis(shape, self.axis)?;
        Ok(per_block(y.len(), (len, inner), |start, o| {
            let (y, g) = (&y[start..start + o.len()], &g[start..start + o.len()]);
            let mut dot = vec![T::zero(); inner];
            for (y_row, g_row) in y.chunks_exact(inner).zip(g.chunks_exact(inner)) {
                for ((d, &a), &b) in dot.iter_mut().zip(y_row).zip(g_row) {
                    *d += a * b;
                }
            }
            for ((o_row, y_row), g_row) in o
                .chunks_exact_mut(inner)
                .zip(y.chunks_exact(inner))
                .zip(g.chunks_exact(inner))
            {
                for (((o, &a), &b), &d) in o_row.iter_mut().zip(y_row).zip(g_row).zip(&dot) {
                    *o = a * (b - d);
                }
            }
        }))
    }
}

fn inv_norm<T: Float>(row: &[T], eps: T) -> T {
    let sum = row.iter().fold(T::zero(), |acc, &v| acc + v * v);
    T::one() / (sum + eps).sqrt()
}

struct L2Normalize {
    eps: f64,
}

impl UnaryKernel for L2Normalize {
    const NAME: &'static str = "fused-l2-normalize";

    fn run<T: Real>(&self, x: &[T], shape: &Shape) -> Result<Vec<T>> {
        let eps = T::from_f64(self.eps);
        Ok(per_block(x.len(), (last_dim(shape), 1), |start, o| {
            let row = &x[start..start + o.len()];
            let r = inv_norm(row, eps);
            for (o, &v) in o.iter_mut().zip(row) {
                *o = v * r;
            }
        }))
    }

    fn backward(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad =
            x.apply_op2_no_bwd(&grad.contiguous()?, &Op(L2NormalizeGrad { eps: self.eps }))?;
        Ok(Some(grad))
    }
}

/// `r (g - y Σ g ⊙ y)` per row, from the input `x` (`y = x r`).
struct L2NormalizeGrad {
    eps: f64,
}

impl BinaryKernel for L2NormalizeGrad {
    const NAME: &'static str = "fused-l2-normalize-grad";

    fn run<T: Real>(&self, x: &[T], g: &[T], shape: &Shape) -> Result<Vec<T>> {
        let eps = T::from_f64(self.eps);
        Ok(per_block(x.len(), (last_dim(shape), 1), |start, o| {
            let (x, g) = (&x[start..start + o.len()], &g[start..start + o.len()]);
            let r = inv_norm(x, eps);
            // Σ g ⊙ y with y = x r
            let dot = x.iter().zip(g).fold(T::zero(), |acc, (&a, &b)| acc + a * b) * r;
            for ((o, &a), &b) in o.iter_mut().zip(x).zip(g) {
                *o = r * (b - a * r * dot);
            }
        }))
    }
}

/// Per line: mean and `1 / sqrt(var + eps)`, lines side by side.
fn line_stats<T: Real>(x: &[T], (len, inner): (usize, usize), eps: T) -> (Vec<T>, Vec<T>) {
    let n = T::from_f64(len as f64);
    let mut mean = vec![T::zero(); inner];
    for row in x.chunks_exact(inner) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![T::zero(); inner];
    for row in x.chunks_exact(inner) {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m);
        }
    }
    let rstd = var
        .iter()
        .map(|&v| T::one() / (v / n + eps).sqrt())
        .collect();
    (mean, rstd)
}

struct Standardize {
    axis: usize,
    eps: f64,
}

impl UnaryKernel for Standardize {
    const NAME: &'static str = "fused-standardize";

    fn run<T: Real>(&self, x: &[T], shape: &Shape) -> Result<Vec<T>> {
        let (_, len, inner) = split_axis(shape, self.axis)?;
        let eps = T::from_f64(self.eps);
        Ok(per_block(x.len(), (len, inner), |start, o| {
            let x = &x[start..start + o.len()];
            let (mean, rstd) = line_stats(x, (len, inner), eps);
            for (o_row, x_row) in o.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
                for (((o, &v), &m), &r) in o_row.iter_mut().zip(x_row).zip(&mean).zip(&rstd) {
                    *o = (v - m) * r;
                }
            }
        }))
    }

    fn backward(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = StandardizeGrad {
            axis: self.axis,
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &Op(op))?))
    }
}

/// `r (g - mean(g) - y mean(g ⊙ y))` per line, `y` the standardised input.
struct StandardizeGrad {
    axis: usize,
    eps: f64,
}

impl BinaryKernel for StandardizeGrad {
    const NAME: &'static str = "fused-standardize-grad";

    fn run<T: Real>(&self, x: &[T], g: &[T], shape: &Shape) -> Result<Vec<T>> {
        let (_, len, inner) = split_axis(shape, self.axis)?;
        let (eps, n) = (T::from_f64(self.eps), T::from_f64(len as f64));
        Ok(per_block(x.len(), (len, inner), |start, o| {
            let (x, g) = (&x[start..start + o.len()], &g[start..start + o.len()]);
            let (mean, rstd) = line_stats(x, (len, inner), eps);
            let (mut g_mean, mut gy_mean) = (vec![T::zero(); inner], vec![T::zero(); inner]);
            for (x_row, g_row) in x.chunks_exact(inner).zip(g.chunks_exact(inner)) {
                for i in 0..inner {
                    let y = (x_row[i] - mean[i]) * rstd[i];
                    g_mean[i] += g_row[i];
                    gy_mean[i] += g_row[i] * y;
                }
            }
            g_mean
                .iter_mut()
                .chain(gy_mean.iter_mut())
                .for_each(|v| *v /= n);
            for ((o_row, x_row), g_row) in o
                .chunks_exact_mut(inner)
                .zip(x.chunks_exact(inner))
                .zip(g.chunks_exact(inner))
            {
                for i in 0..inner {
                    let y = (x_row[i] - mean[i]) * rstd[i];
                    o_row[i] = rstd[i] * (g_row[i] - g_mean[i] - y * gy_mean[i]);
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::max_diff;
    use candle_core::{DType, Device, Var};

    /// Value and gradient of `f` on the transposed (strided) `x` under a
    /// random linear loss.
    fn run(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Var, w: &Tensor) -> Result<(Tensor, Tensor)> {
        let y = f(&x.transpose(1, 2)?)?;
        let grads = (&y * w)?.sum_all()?.backward()?;
        Ok((y, grads.get(x).expect("gradient").clone()))
    }

    /// `fused` in `x`'s dtype against `reference` in F64 on the same values,
    /// value and gradient, within `tol` relative to the reference's largest
    /// magnitude (at least 1). The reference runs in F64 so that an F32 check
    /// measures the fused op's rounding, not the composite's: candle's F32
    /// composites lose digits on short, nearly constant lines.
    fn check(
        what: &str,
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        reference: impl Fn(&Tensor) -> Result<Tensor>,
        (x, w): (&Var, &Tensor),
        tol: f64,
    ) -> Result<()> {
        let (y1, g1) = run(fused, x, w)?;
        let x64 = Var::from_tensor(&x.to_dtype(DType::F64)?)?;
        let (y2, g2) = run(reference, &x64, &w.to_dtype(DType::F64)?)?;
        for (kind, got, want) in [("value", &y1, &y2), ("gradient", &g1, &g2)] {
            let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            let diff = max_diff(&got.to_dtype(DType::F64)?, want)?;
            assert!(
                diff <= tol * scale.max(1.0),
                "{what} {:?}: {kind} differs by {diff} (scale {scale})",
                x.dtype()
            );
        }
        Ok(())
    }

    /// The softmax against candle's on lines longer than one AVX-512
    /// register (the f32 kernel's vectorised exponentials), every axis.
    #[test]
    fn softmax_matches_composite_on_long_lines() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let x =
                Var::from_tensor(&Tensor::randn(0f64, 4.0, (2, 37, 20), &dev)?.to_dtype(dtype)?)?;
            let w = Tensor::randn(0f64, 1.0, (2, 20, 37), &dev)?.to_dtype(dtype)?;
            check_softmax_every_axis(&x, &w, tol)?;
        }
        Ok(())
    }

    /// [`check`] of the softmax against candle's along each of `x`'s axes.
    fn check_softmax_every_axis(x: &Var, w: &Tensor, tol: f64) -> Result<()> {
        for axis in 0..x.rank() {
            check(
                &format!("softmax axis {axis}"),
                |x| softmax(x, axis),
                |x| candle_nn::ops::softmax(x, axis),
                (x, w),
                tol,
            )?;
        }
        Ok(())
    }

    /// The fused ops against candle's composites (computed in F64), in F64
    /// (tight) and F32, on a transposed (non-contiguous) input, for every
    /// axis. The input is fixed, with all 90 values distinct and at least
    /// 1/12 apart: the instance norm over a 3-element axis is ill-conditioned
    /// when its three values nearly coincide, which random inputs
    /// occasionally do.
    #[test]
    fn fused_ops_match_composites_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        // 37 is invertible mod 101, so i·37 mod 101 is distinct for i < 101.
        let values: Vec<f64> = (0..90)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 12.0)
            .collect();
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let x = Tensor::from_vec(values.clone(), (3, 6, 5), &dev)?;
            let x = Var::from_tensor(&x.to_dtype(dtype)?)?;
            let w = Tensor::randn(0f64, 1.0, (3, 5, 6), &dev)?.to_dtype(dtype)?;
            check_softmax_every_axis(&x, &w, tol)?;
            for axis in 0..3 {
                check(
                    &format!("standardize axis {axis}"),
                    |x| standardize(x, axis, 1e-5),
                    |x| {
                        let centred = x.broadcast_sub(&x.mean_keepdim(axis)?)?;
                        let var = centred.sqr()?.mean_keepdim(axis)?;
                        centred.broadcast_div(&(var + 1e-5)?.sqrt()?)
                    },
                    (&x, &w),
                    tol,
                )?;
            }
            check("elu+1", elu_plus_one, |x| x.elu(1.0)? + 1.0, (&x, &w), tol)?;
            check(
                "l2 normalisation",
                |x| l2_normalize(x, 1e-6),
                |x| {
                    let inv = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?.recip()?;
                    x.broadcast_mul(&inv)
                },
                (&x, &w),
                tol,
            )?;
            // The loss reaches the input through the normalisation.
            let (_, g) = run(|x| l2_normalize(x, 1e-6), &x, &w)?;
            let g = g
                .abs()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            assert!(g > 1e-3, "l2 normalisation: no gradient ({g})");
        }
        Ok(())
    }

    #[test]
    fn softmax_axis_out_of_range_is_an_error() -> Result<()> {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?;
        let err = softmax(&x, 2).unwrap_err().to_string();
        assert!(err.contains("axis 2"), "{err}");
        Ok(())
    }
}
