//! The router's element-wise maths as fused CPU ops with backward passes:
//! softmax along one axis of a `(b, n, m)` tensor (dispatch over tokens,
//! eq. 2; combine over slots, eq. 4) and vmoe's L2 normalisation.
//!
//! candle's composite softmax is five graph nodes (max, subtract, exp, sum,
//! divide) and its normalisation six, each a pass over the data forward and
//! a zero-and-add gradient buffer backward; at the paper's shape they cost
//! 6.4 ms (softmax over tokens) and 7.4 ms (normalisation) forward +
//! backward. Here each is one node whose backward is one fused pass:
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
//! All run in F32 or F64 (the router's dtype); other devices and dtypes use
//! candle's composites.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use num_traits::Float;
use rayon::prelude::*;

fn fused_path(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Softmax of `x` along `axis`, differentiable.
pub(crate) fn softmax(x: &Tensor, axis: usize) -> Result<Tensor> {
    if fused_path(x) {
        x.contiguous()?.apply_op1(Softmax { axis })
    } else {
        candle_nn::ops::softmax(x, axis)
    }
}

/// `x / sqrt(Σ x² + eps)` over the last axis (vmoe's `normalize`, epsilon
/// inside the root), differentiable.
pub(crate) fn l2_normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_path(x) {
        x.contiguous()?.apply_op1(L2Normalize { eps })
    } else {
        let inv_norm = (x.sqr()?.sum_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv_norm)
    }
}

/// `(x - mean) / sqrt(var + eps)` along `axis` with the biased variance
/// (`InstanceNorm1d` without affine or running statistics), differentiable.
pub(crate) fn standardize(x: &Tensor, axis: usize, eps: f64) -> Result<Tensor> {
    if fused_path(x) {
        x.contiguous()?.apply_op1(Standardize { axis, eps })
    } else {
        let centred = x.broadcast_sub(&x.mean_keepdim(axis)?)?;
        let var = centred.sqr()?.mean_keepdim(axis)?;
        centred.broadcast_div(&(var + eps)?.sqrt()?)
    }
}

/// `elu(x) + 1` (Katharopoulos et al.'s feature map: `x + 1` for `x > 0`,
/// `e^x` otherwise), differentiable. candle's `elu` and `+ 1` are two graph
/// nodes and `elu`'s backward alone about eight passes; here the backward is
/// one pass over the saved output (`dy/dx = 1` or `e^x = y`).
pub(crate) fn elu_plus_one(x: &Tensor) -> Result<Tensor> {
    if fused_path(x) {
        x.contiguous()?.apply_op1(EluPlusOne)
    } else {
        x.elu(1.0)? + 1.0
    }
}

struct EluPlusOne;

fn elu_plus_one_fwd<T: Float + Send + Sync>(x: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = if v > T::zero() { v + T::one() } else { v.exp() };
            }
        });
    out
}

/// `g` where the input was positive (output above 1), `g · y` elsewhere.
fn elu_plus_one_bwd<T: Float + Send + Sync>(y: &[T], g: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(4096)
        .zip(y.par_chunks(4096).zip(g.par_chunks(4096)))
        .for_each(|(o, (y, g))| {
            for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                *o = if y > T::one() { g } else { g * y };
            }
        });
    out
}

impl CustomOp1 for EluPlusOne {
    fn name(&self) -> &'static str {
        "softmoe-elu-plus-one"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(elu_plus_one_fwd(contiguous(x, layout, name)?)),
            CpuStorage::F64(x) => CpuStorage::F64(elu_plus_one_fwd(contiguous(x, layout, name)?)),
            _ => candle_core::bail!("{name}: needs an F32 or F64 tensor"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &EluPlusOneGrad)?,
        ))
    }
}

struct EluPlusOneGrad;

impl CustomOp2 for EluPlusOneGrad {
    fn name(&self) -> &'static str {
        "softmoe-elu-plus-one-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => CpuStorage::F32(elu_plus_one_bwd(
                contiguous(y, l1, name)?,
                contiguous(g, l2, name)?,
            )),
            (CpuStorage::F64(y), CpuStorage::F64(g)) => CpuStorage::F64(elu_plus_one_bwd(
                contiguous(y, l1, name)?,
                contiguous(g, l2, name)?,
            )),
            _ => candle_core::bail!("{name}: needs two F32 or two F64 tensors"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// `(outer, len, inner)`: the reduction runs over `len` with stride `inner`.
fn split_axis(shape: &Shape, axis: usize) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if axis >= dims.len() {
        candle_core::bail!("softmoe softmax: axis {axis} of a {:?} tensor", dims)
    }
    let outer = dims[..axis].iter().product();
    let inner = dims[axis + 1..].iter().product();
    Ok((outer, dims[axis], inner))
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}

/// Applies `f` to every `(len, inner)` block of a contiguous buffer in
/// parallel; with `inner == 1` the blocks are rows, chunked for rayon.
fn per_block<T: Send + Sync>(
    out: &mut [T],
    (len, inner): (usize, usize),
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    let block = (len * inner).max(1);
    out.par_chunks_mut(block)
        .enumerate()
        .with_min_len(if inner == 1 { 64 } else { 1 })
        .for_each(|(i, chunk)| f(i * block, chunk));
}

/// Softmax of every `len`-long line (stride `inner`) of one block, written
/// into `out`; lines run side by side so the inner loop is contiguous.
fn softmax_block<T: Float>(x: &[T], out: &mut [T], (len, inner): (usize, usize)) {
    let mut max = vec![T::neg_infinity(); inner];
    for row in x.chunks_exact(inner) {
        for (m, &v) in max.iter_mut().zip(row) {
            *m = m.max(v);
        }
    }
    let mut sum = vec![T::zero(); inner];
    for (o_row, x_row) in out.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
        for (((o, &v), &m), s) in o_row.iter_mut().zip(x_row).zip(&max).zip(sum.iter_mut()) {
            *o = (v - m).exp();
            *s = *s + *o;
        }
    }
    let inv: Vec<T> = sum.iter().map(|&s| T::one() / s).collect();
    for row in out.chunks_exact_mut(inner) {
        for (o, &r) in row.iter_mut().zip(&inv) {
            *o = *o * r;
        }
    }
    let _ = len;
}

fn softmax_fwd<T: Float + Send + Sync>(x: &[T], (_, len, inner): (usize, usize, usize)) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    per_block(&mut out, (len, inner), |start, o| {
        softmax_block(&x[start..start + o.len()], o, (len, inner))
    });
    out
}

/// `y ⊙ (g - Σ_line g ⊙ y)` per line.
fn softmax_bwd<T: Float + Send + Sync>(
    y: &[T],
    g: &[T],
    (_, len, inner): (usize, usize, usize),
) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    per_block(&mut out, (len, inner), |start, o| {
        let (y, g) = (&y[start..start + o.len()], &g[start..start + o.len()]);
        let mut dot = vec![T::zero(); inner];
        for (y_row, g_row) in y.chunks_exact(inner).zip(g.chunks_exact(inner)) {
            for ((d, &a), &b) in dot.iter_mut().zip(y_row).zip(g_row) {
                *d = *d + a * b;
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
    });
    out
}

struct Softmax {
    axis: usize,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmoe-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = split_axis(layout.shape(), self.axis)?;
        let out = match storage {
            CpuStorage::F32(x) => {
                CpuStorage::F32(softmax_fwd(contiguous(x, layout, self.name())?, dims))
            }
            CpuStorage::F64(x) => {
                CpuStorage::F64(softmax_fwd(contiguous(x, layout, self.name())?, dims))
            }
            _ => candle_core::bail!("{}: needs an F32 or F64 tensor", self.name()),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { axis: self.axis })?;
        Ok(Some(grad))
    }
}

struct SoftmaxGrad {
    axis: usize,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmoe-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = split_axis(l1.shape(), self.axis)?;
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => CpuStorage::F32(softmax_bwd(
                contiguous(y, l1, name)?,
                contiguous(g, l2, name)?,
                dims,
            )),
            (CpuStorage::F64(y), CpuStorage::F64(g)) => CpuStorage::F64(softmax_bwd(
                contiguous(y, l1, name)?,
                contiguous(g, l2, name)?,
                dims,
            )),
            _ => candle_core::bail!("{name}: needs two F32 or two F64 tensors"),
        };
        Ok((out, l1.shape().clone()))
    }
}

fn inv_norm<T: Float>(row: &[T], eps: T) -> T {
    let sum = row.iter().fold(T::zero(), |acc, &v| acc + v * v);
    T::one() / (sum + eps).sqrt()
}

fn l2_fwd<T: Float + Send + Sync>(x: &[T], width: usize, eps: T) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    per_block(&mut out, (width, 1), |start, o| {
        let row = &x[start..start + o.len()];
        let r = inv_norm(row, eps);
        for (o, &v) in o.iter_mut().zip(row) {
            *o = v * r;
        }
    });
    out
}

fn l2_bwd<T: Float + Send + Sync>(x: &[T], g: &[T], width: usize, eps: T) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    per_block(&mut out, (width, 1), |start, o| {
        let (x, g) = (&x[start..start + o.len()], &g[start..start + o.len()]);
        let r = inv_norm(x, eps);
        // Σ g ⊙ y with y = x r
        let dot = x.iter().zip(g).fold(T::zero(), |acc, (&a, &b)| acc + a * b) * r;
        for ((o, &a), &b) in o.iter_mut().zip(x).zip(g) {
            *o = r * (b - a * r * dot);
        }
    });
    out
}

struct L2Normalize {
    eps: f64,
}

fn last_dim(shape: &Shape) -> usize {
    shape.dims().last().copied().unwrap_or(1)
}

impl CustomOp1 for L2Normalize {
    fn name(&self) -> &'static str {
        "softmoe-l2-normalize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let width = last_dim(layout.shape());
        let name = self.name();
        let out = match storage {
            CpuStorage::F32(x) => {
                CpuStorage::F32(l2_fwd(contiguous(x, layout, name)?, width, self.eps as f32))
            }
            CpuStorage::F64(x) => {
                CpuStorage::F64(l2_fwd(contiguous(x, layout, name)?, width, self.eps))
            }
            _ => candle_core::bail!("{name}: needs an F32 or F64 tensor"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = x.apply_op2_no_bwd(&grad.contiguous()?, &L2NormalizeGrad { eps: self.eps })?;
        Ok(Some(grad))
    }
}

struct L2NormalizeGrad {
    eps: f64,
}

impl CustomOp2 for L2NormalizeGrad {
    fn name(&self) -> &'static str {
        "softmoe-l2-normalize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let width = last_dim(l1.shape());
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(l2_bwd(
                contiguous(x, l1, name)?,
                contiguous(g, l2, name)?,
                width,
                self.eps as f32,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(l2_bwd(
                contiguous(x, l1, name)?,
                contiguous(g, l2, name)?,
                width,
                self.eps,
            )),
            _ => candle_core::bail!("{name}: needs two F32 or two F64 tensors"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Per line: mean and `1 / sqrt(var + eps)`, lines side by side.
fn line_stats<T: Float>(x: &[T], (len, inner): (usize, usize), eps: T) -> (Vec<T>, Vec<T>) {
    let n = T::from(len).unwrap_or_else(T::one);
    let mut mean = vec![T::zero(); inner];
    for row in x.chunks_exact(inner) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m = *m + v;
        }
    }
    mean.iter_mut().for_each(|m| *m = *m / n);
    let mut var = vec![T::zero(); inner];
    for row in x.chunks_exact(inner) {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            *s = *s + (v - m) * (v - m);
        }
    }
    let rstd = var
        .iter()
        .map(|&v| T::one() / (v / n + eps).sqrt())
        .collect();
    (mean, rstd)
}

fn standardize_fwd<T: Float + Send + Sync>(
    x: &[T],
    (_, len, inner): (usize, usize, usize),
    eps: T,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    per_block(&mut out, (len, inner), |start, o| {
        let x = &x[start..start + o.len()];
        let (mean, rstd) = line_stats(x, (len, inner), eps);
        for (o_row, x_row) in o.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
            for (((o, &v), &m), &r) in o_row.iter_mut().zip(x_row).zip(&mean).zip(&rstd) {
                *o = (v - m) * r;
            }
        }
    });
    out
}

/// `r (g - mean(g) - y mean(g ⊙ y))` per line, `y` the standardised input.
fn standardize_bwd<T: Float + Send + Sync>(
    x: &[T],
    g: &[T],
    (_, len, inner): (usize, usize, usize),
    eps: T,
) -> Vec<T> {
    let n = T::from(len).unwrap_or_else(T::one);
    let mut out = vec![T::zero(); x.len()];
    per_block(&mut out, (len, inner), |start, o| {
        let (x, g) = (&x[start..start + o.len()], &g[start..start + o.len()]);
        let (mean, rstd) = line_stats(x, (len, inner), eps);
        let (mut g_mean, mut gy_mean) = (vec![T::zero(); inner], vec![T::zero(); inner]);
        for (x_row, g_row) in x.chunks_exact(inner).zip(g.chunks_exact(inner)) {
            for i in 0..inner {
                let y = (x_row[i] - mean[i]) * rstd[i];
                g_mean[i] = g_mean[i] + g_row[i];
                gy_mean[i] = gy_mean[i] + g_row[i] * y;
            }
        }
        g_mean
            .iter_mut()
            .chain(gy_mean.iter_mut())
            .for_each(|v| *v = *v / n);
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
    });
    out
}

struct Standardize {
    axis: usize,
    eps: f64,
}

impl CustomOp1 for Standardize {
    fn name(&self) -> &'static str {
        "softmoe-standardize"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = split_axis(layout.shape(), self.axis)?;
        let name = self.name();
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(standardize_fwd(
                contiguous(x, layout, name)?,
                dims,
                self.eps as f32,
            )),
            CpuStorage::F64(x) => CpuStorage::F64(standardize_fwd(
                contiguous(x, layout, name)?,
                dims,
                self.eps,
            )),
            _ => candle_core::bail!("{name}: needs an F32 or F64 tensor"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = StandardizeGrad {
            axis: self.axis,
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

struct StandardizeGrad {
    axis: usize,
    eps: f64,
}

impl CustomOp2 for StandardizeGrad {
    fn name(&self) -> &'static str {
        "softmoe-standardize-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = split_axis(l1.shape(), self.axis)?;
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => CpuStorage::F32(standardize_bwd(
                contiguous(x, l1, name)?,
                contiguous(g, l2, name)?,
                dims,
                self.eps as f32,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(standardize_bwd(
                contiguous(x, l1, name)?,
                contiguous(g, l2, name)?,
                dims,
                self.eps,
            )),
            _ => candle_core::bail!("{name}: needs two F32 or two F64 tensors"),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    /// Value and gradient of `f` on the transposed (strided) `x` under a
    /// random linear loss.
    fn run(f: impl Fn(&Tensor) -> Result<Tensor>, x: &Var, w: &Tensor) -> Result<(Tensor, Tensor)> {
        let y = f(&x.transpose(1, 2)?)?;
        let grads = (&y * w)?.sum_all()?.backward()?;
        Ok((y, grads.get(x).expect("gradient").clone()))
    }

    /// The fused ops against candle's composites in F64 (tight) and F32, on
    /// a transposed (non-contiguous) input, for every axis.
    #[test]
    fn fused_ops_match_composites_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 2.0, (3, 6, 5), &dev)?.to_dtype(dtype)?)?;
            let w = Tensor::randn(0f64, 1.0, (3, 5, 6), &dev)?.to_dtype(dtype)?;
            for axis in 0..3 {
                let fused = |x: &Tensor| softmax(x, axis);
                let composite = |x: &Tensor| candle_nn::ops::softmax(x, axis);
                let (y1, g1) = run(fused, &x, &w)?;
                let (y2, g2) = run(composite, &x, &w)?;
                assert!(max_diff(&y1, &y2)? < tol, "softmax axis {axis} {dtype:?}");
                assert!(
                    max_diff(&g1, &g2)? < tol,
                    "softmax grad axis {axis} {dtype:?}"
                );
            }
            for axis in 0..3 {
                let fused = |x: &Tensor| standardize(x, axis, 1e-5);
                let composite = |x: &Tensor| -> Result<Tensor> {
                    let centred = x.broadcast_sub(&x.mean_keepdim(axis)?)?;
                    let var = centred.sqr()?.mean_keepdim(axis)?;
                    centred.broadcast_div(&(var + 1e-5)?.sqrt()?)
                };
                let (y1, g1) = run(fused, &x, &w)?;
                let (y2, g2) = run(composite, &x, &w)?;
                assert!(
                    max_diff(&y1, &y2)? < tol,
                    "standardize axis {axis} {dtype:?}"
                );
                assert!(
                    max_diff(&g1, &g2)? < tol * 10.0,
                    "standardize grad axis {axis} {dtype:?}"
                );
            }
            let fused = |x: &Tensor| elu_plus_one(x);
            let composite = |x: &Tensor| x.elu(1.0)? + 1.0;
            let (y1, g1) = run(fused, &x, &w)?;
            let (y2, g2) = run(composite, &x, &w)?;
            assert!(max_diff(&y1, &y2)? < tol, "elu+1 {dtype:?}");
            assert!(max_diff(&g1, &g2)? < tol, "elu+1 grad {dtype:?}");
            let fused = |x: &Tensor| l2_normalize(x, 1e-6);
            let composite = |x: &Tensor| -> Result<Tensor> {
                let inv = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-6)?.sqrt()?.recip()?;
                x.broadcast_mul(&inv)
            };
            let (y1, g1) = run(fused, &x, &w)?;
            let (y2, g2) = run(composite, &x, &w)?;
            assert!(max_diff(&y1, &y2)? < tol, "l2 {dtype:?}");
            assert!(max_diff(&g1, &g2)? < tol, "l2 grad {dtype:?}");
            assert!(
                g2.abs()?
                    .sum_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?
                    > 1e-3
            );
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
