//! `act(x Wᵀ + b)` for all experts at once, as one autograd node on CPU.
//!
//! Written with candle's generic ops this layer is a transpose of `W`, a
//! batched matmul, a broadcast add and an activation: four graph nodes, and
//! candle's backward allocates a zero tensor and adds into it for every node
//! it visits (the `W` transposes alone are 2 x 9.4 M floats at the paper's
//! shape). This op computes the same values with `gemm.rs`'s products (tasks
//! split by expert and column block, the bias written into each output block
//! before `gemm` accumulates onto it), applies the activation in one
//! multi-threaded pass, keeps the pre-activation for its backward (PyTorch's
//! `save_for_backward`), and returns the input, weight and bias gradients
//! directly. Other devices and
//! dtypes take the composite path, which candle differentiates itself.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::activation::Activation;
use crate::activation::{activate, activate_in_place, activation_grad};
use crate::dispatch::{contiguous, fused_path, BinaryKernel, Op, Real, UnaryKernel};
use crate::gemm::{batched_linear, Strided};
use crate::matmul::matmul;

/// How the rows of a `(·, rows, width)` activation are grouped.
///
/// The experts compute on expert-major rows `(e, b·s, width)`: one matmul per
/// expert. The slots arrive batch-major, `(b, e·s, width)`. Converting inside
/// the op, rather than with reshape + transpose + copy + reshape around it,
/// leaves one autograd node instead of five; candle's backward allocates and
/// adds a gradient buffer for every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowOrder {
    /// `(e, rows, width)`: expert `i`'s rows are block `i`.
    ExpertMajor,
    /// `(batch, e·s, width)`: expert `i`'s rows are `[i·s, (i+1)·s)` of every
    /// batch entry.
    BatchMajor { batch: usize },
}

/// `act(x Wᵀ + b)` for `x (e, rows, in)`, `weight (e, out, in)`, `bias (e, out)`:
/// expert `i` applies its own linear to row block `i`, with the input and
/// output rows in the given orders. An expert-major result has shape
/// `(e, rows, out)`, a batch-major one `(batch, e·s, out)`.
pub(crate) fn expert_linear_ordered(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    act: Option<Activation>,
    input: RowOrder,
    output: RowOrder,
) -> Result<Tensor> {
    let fused = fused_path(x) && x.dtype() == weight.dtype() && x.dtype() == bias.dtype();
    if fused {
        let op = ExpertLinear::new(act, (input, output), false, [x, weight, bias]);
        let x = match input {
            RowOrder::ExpertMajor => x.clone(),
            RowOrder::BatchMajor { .. } => x.contiguous()?,
        };
        return x.apply_op3(weight, &bias.contiguous()?, op);
    }
    let e = weight.dim(0)?;
    let x = reorder(x, input, RowOrder::ExpertMajor, e)?;
    let product = x.matmul(&weight.transpose(1, 2)?)?;
    #[cfg(cuda_kernels)]
    if crate::dispatch::cuda_path(&product)
        && bias.dtype() == product.dtype()
        && crate::cuda_ops::bias_act_fits(&product, bias)
    {
        let y = crate::cuda_ops::bias_act(&product, bias, act)?;
        return reorder(&y, RowOrder::ExpertMajor, output, e);
    }
    let pre = product.broadcast_add(&bias.unsqueeze(1)?)?;
    let y = activate_composite(pre, act)?;
    reorder(&y, RowOrder::ExpertMajor, output, e)
}

/// Converts `t` between row orders (a copy when they differ); `e` is the
/// number of experts. Contiguous F32/F64 CPU tensors take one parallel pass
/// ([`swap_outer`]), others candle's transpose + copy. Used on the composite
/// path and in backward, where the result records no graph.
fn reorder(t: &Tensor, from: RowOrder, to: RowOrder, e: usize) -> Result<Tensor> {
    let (d0, d1, w) = t.dims3()?;
    let parts = match (from, to) {
        (RowOrder::ExpertMajor, RowOrder::BatchMajor { batch }) => batch,
        (RowOrder::BatchMajor { .. }, RowOrder::ExpertMajor) => e,
        _ => 1,
    };
    if parts == 0 || d1 % parts != 0 {
        candle_core::bail!(
            "expert rows: {d1} rows of {:?} do not split into {parts} equal groups",
            t.shape()
        )
    }
    let (outer, shape) = match (from, to) {
        (RowOrder::ExpertMajor, RowOrder::BatchMajor { batch }) => {
            let s = d1 / batch.max(1);
            ((e, batch, s * w), Shape::from((batch, e * s, w)))
        }
        (RowOrder::BatchMajor { batch }, RowOrder::ExpertMajor) => {
            let s = d1 / e.max(1);
            ((d0, e, s * w), Shape::from((e, batch * s, w)))
        }
        _ => return Ok(t.clone()),
    };
    if t.device().is_cpu() && t.is_contiguous() && !t.track_op() {
        let (storage, layout) = t.storage_and_layout();
        let swapped = match &*storage {
            Storage::Cpu(CpuStorage::F32(v)) => {
                let v = swap_outer(contiguous(v, layout, "reorder")?, outer);
                Some(Tensor::from_vec(v, shape, t.device()))
            }
            Storage::Cpu(CpuStorage::F64(v)) => {
                let v = swap_outer(contiguous(v, layout, "reorder")?, outer);
                Some(Tensor::from_vec(v, shape, t.device()))
            }
            _ => None,
        };
        if let Some(swapped) = swapped {
            return swapped;
        }
    }
    match (from, to) {
        (RowOrder::ExpertMajor, RowOrder::BatchMajor { batch }) => {
            let s = d1 / batch.max(1);
            t.reshape((e, batch, s * w))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((batch, e * s, w))
        }
        (RowOrder::BatchMajor { batch }, RowOrder::ExpertMajor) => {
            let s = d1 / e.max(1);
            t.reshape((d0, e, s * w))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((e, batch * s, w))
        }
        _ => Ok(t.clone()),
    }
}

/// `(p, q, block) -> (q, p, block)` for a contiguous buffer: the row-order
/// conversion, one parallel pass.
fn swap_outer<T: Copy + Send + Sync>(data: &[T], (p, q, block): (usize, usize, usize)) -> Vec<T> {
    let len = p * q * block;
    let mut out = Vec::with_capacity(len);
    if block > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(block)
            .enumerate()
            .for_each(|(idx, dst)| {
                let (j, i) = (idx / p, idx % p);
                let src = &data[(i * q + j) * block..(i * q + j + 1) * block];
                for (d, &v) in dst.iter_mut().zip(src) {
                    d.write(v);
                }
            });
    }
    // SAFETY: the `p·q` blocks of `block` elements above cover all `len`
    // elements, each written once.
    unsafe { out.set_len(len) };
    out
}

/// `act(x Wᵀ + b)` for one dense linear layer in `torch.nn.Linear` layout:
/// `x (..., in)`, `weight (out, in)`, `bias (out)`, result `(..., out)`.
///
/// The same fused op as the experts use (one autograd node on CPU, bias and
/// activation applied in the matmul's output pass), for MLPs outside a MoE,
/// e.g. the CLIP block MLP that the MoE branch sits beside.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    act: Option<Activation>,
) -> Result<Tensor> {
    let (_, inner) = weight.dims2()?;
    if x.dims().last() != Some(&inner) {
        candle_core::bail!(
            "fused_ops::linear: input {:?} does not end in the weight's input size {inner}",
            x.shape()
        )
    }
    // An input width of 0 goes to the composite (the output is the bias,
    // broadcast): the kernel's row count would come out as 0.
    let fused =
        fused_path(x) && inner > 0 && x.dtype() == weight.dtype() && x.dtype() == bias.dtype();
    if fused {
        // The op takes the tensors as they are: no reshape or unsqueeze
        // nodes, whose backward would accumulate a second copy of every
        // gradient (the weight's included).
        let expert_major = RowOrder::ExpertMajor;
        let op = ExpertLinear::new(act, (expert_major, expert_major), true, [x, weight, bias]);
        return x.contiguous()?.apply_op3(weight, &bias.contiguous()?, op);
    }
    let product = x.broadcast_matmul(&weight.t()?)?;
    #[cfg(cuda_kernels)]
    if crate::dispatch::cuda_path(&product)
        && bias.dtype() == product.dtype()
        && crate::cuda_ops::bias_act_fits(&product, bias)
    {
        return crate::cuda_ops::bias_act(&product, bias, act);
    }
    activate_composite(product.broadcast_add(bias)?, act)
}

/// `act(pre)` with candle's differentiable ops.
///
/// candle's `gelu_erf` backward rounds `1/sqrt(2π)` to `0.398942` (relative
/// error 7e-7): about one ulp in F32, but a gradient wrong from the seventh
/// digit in F64. In F64 the GELU is therefore built as `x Φ(x)` from `erf`,
/// whose backward is exact; other dtypes keep the single fused kernel.
fn activate_composite(pre: Tensor, act: Option<Activation>) -> Result<Tensor> {
    match act {
        None => Ok(pre),
        Some(Activation::Gelu) if pre.dtype() == DType::F64 => {
            let cdf = ((&pre * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)? * 0.5;
            &pre * cdf?
        }
        Some(Activation::Gelu) => pre.gelu_erf(),
        Some(Activation::QuickGelu) => &pre * candle_nn::ops::sigmoid(&(&pre * 1.702)?)?,
    }
}

struct ExpertLinear {
    act: Option<Activation>,
    /// One dense layer: `x (..., in)`, `weight (out, in)`, `bias (out)`,
    /// result `(..., out)`; computed as one expert over all rows.
    dense: bool,
    /// Row order of the input `x`.
    input: RowOrder,
    /// Row order of the result.
    output: RowOrder,
    /// Whether a backward pass can follow (some input tracks gradients).
    save_pre_activation: bool,
    /// `x Wᵀ + b`, kept for the activation's derivative in `bwd`.
    pre_activation: Mutex<Option<Tensor>>,
    /// A batch-major input rearranged expert-major, kept for the weight
    /// gradient in `bwd` (saves redoing the copy).
    gathered_input: Mutex<Option<Tensor>>,
}

fn lock<'a>(
    saved: &'a Mutex<Option<Tensor>>,
    op: &str,
) -> Result<std::sync::MutexGuard<'a, Option<Tensor>>> {
    saved
        .lock()
        .map_err(|_| candle_core::Error::msg(format!("{op}: saved tensor lock poisoned")))
}

impl ExpertLinear {
    const NAME: &'static str = "fused-expert-linear";

    /// The op for these operands (`x`, weight, bias). It keeps what its
    /// backward needs only when one can follow (some operand tracks
    /// gradients).
    fn new(
        act: Option<Activation>,
        (input, output): (RowOrder, RowOrder),
        dense: bool,
        operands: [&Tensor; 3],
    ) -> Self {
        Self {
            act,
            dense,
            input,
            output,
            save_pre_activation: operands.iter().any(|t| t.track_op()),
            pre_activation: Mutex::new(None),
            gathered_input: Mutex::new(None),
        }
    }

    /// `(e, rows, inner, out)` of the operands, checked.
    fn dims(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<(usize, usize, usize, usize)> {
        let misfit = || {
            candle_core::bail!(
                "{}: input {:?}, weight {:?} and bias {:?} do not fit {}",
                Self::NAME,
                l1.shape(),
                l2.shape(),
                l3.shape(),
                if self.dense {
                    "(..., in), (out, in), (out)"
                } else {
                    "(e, rows, in), (e, out, in), (e, out)"
                }
            )
        };
        if self.dense {
            let (out, win) = l2.shape().dims2()?;
            let inner = l1.shape().dims().last().copied().unwrap_or(0);
            if inner != win || l3.shape().dims() != [out] {
                return misfit();
            }
            return Ok((1, l1.shape().elem_count() / inner.max(1), inner, out));
        }
        let (we, out, win) = l2.shape().dims3()?;
        let (e, rows, inner) = match (self.input, l1.shape().dims3()?) {
            (RowOrder::ExpertMajor, dims) => dims,
            (RowOrder::BatchMajor { batch }, (b, es, inner))
                if b == batch && we > 0 && es % we == 0 =>
            {
                (we, b * (es / we), inner)
            }
            (RowOrder::BatchMajor { batch }, _) => candle_core::bail!(
                "{}: a batch-major input must be ({batch}, e·s, in) with e = {we}, got {:?}",
                Self::NAME,
                l1.shape()
            ),
        };
        if we != e || win != inner || l3.shape().dims() != [e, out] {
            return misfit();
        }
        Ok((e, rows, inner, out))
    }

    /// Applies the activation to `x Wᵀ + b`, keeping the pre-activation for
    /// the backward pass when one can follow.
    fn finish<T>(&self, mut pre: Vec<T>, (e, rows, out): (usize, usize, usize)) -> Result<Vec<T>>
    where
        T: Real,
    {
        let Some(act) = self.act else { return Ok(pre) };
        if !self.save_pre_activation {
            activate_in_place(&mut pre, act);
            return Ok(pre);
        }
        let activated = activate(&pre, act);
        let saved = Tensor::from_vec(pre, (e, rows, out), &Device::Cpu)?;
        *self.lock_saved()? = Some(saved);
        Ok(activated)
    }

    /// The forward on slices: reorders the input rows if needed, runs the
    /// product with its bias, the activation, and reorders the result.
    fn forward_typed<T>(
        &self,
        (x, xl): (&[T], &Layout),
        (w, wl): (&[T], &Layout),
        (b, bl): (&[T], &Layout),
        (e, rows, out): (usize, usize, usize),
        inner: usize,
    ) -> Result<Vec<T>>
    where
        T: Real,
    {
        let mut gathered = Vec::new();
        let x = match self.input {
            RowOrder::ExpertMajor if self.dense => {
                Strided::row_major(contiguous(x, xl, Self::NAME)?, rows, inner)
            }
            RowOrder::ExpertMajor => Strided::from_layout(x, xl)?,
            RowOrder::BatchMajor { batch } => {
                let x = contiguous(x, xl, Self::NAME)?;
                gathered = swap_outer(x, (batch, e, rows / batch.max(1) * inner));
                Strided::row_major(&gathered, rows, inner)
            }
        };
        let w = Strided::from_layout(w, wl)?.t();
        let bias = contiguous(b, bl, Self::NAME)?;
        let pre = batched_linear(e, (rows, out, inner), x, w, bias)?;
        if self.save_pre_activation && !gathered.is_empty() {
            let saved = Tensor::from_vec(gathered, (e, rows, inner), &Device::Cpu)?;
            *lock(&self.gathered_input, Self::NAME)? = Some(saved);
        }
        let y = self.finish(pre, (e, rows, out))?;
        Ok(match self.output {
            RowOrder::ExpertMajor => y,
            RowOrder::BatchMajor { batch } => swap_outer(&y, (e, batch, rows / batch.max(1) * out)),
        })
    }

    fn lock_saved(&self) -> Result<std::sync::MutexGuard<'_, Option<Tensor>>> {
        lock(&self.pre_activation, Self::NAME)
    }
}

impl CustomOp3 for ExpertLinear {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (e, rows, inner, out) = self.dims(l1, l2, l3)?;
        let dims = (e, rows, out);
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.forward_typed((x, l1), (w, l2), (b, l3), dims, inner)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.forward_typed((x, l1), (w, l2), (b, l3), dims, inner)?)
            }
            _ => candle_core::bail!("{}: needs F32 or F64 tensors of one dtype", Self::NAME),
        };
        let shape = match self.output {
            RowOrder::ExpertMajor if self.dense => {
                let mut dims = l1.shape().dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = out;
                }
                Shape::from(dims)
            }
            RowOrder::ExpertMajor => Shape::from(dims),
            RowOrder::BatchMajor { batch } => Shape::from((batch, rows / batch.max(1) * e, out)),
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let e = if self.dense { 1 } else { weight.dim(0)? };
        let grad_res = if self.dense {
            // As the expert op with one expert: (1, rows, out).
            let out = weight.dim(0)?;
            let rows = grad_res.elem_count() / out.max(1);
            grad_res.contiguous()?.reshape((1, rows, out))?
        } else {
            reorder(
                &grad_res.contiguous()?,
                self.output,
                RowOrder::ExpertMajor,
                e,
            )?
        };
        let grad_pre = match self.act {
            None => grad_res,
            Some(act) => {
                let pre = self.lock_saved()?.clone().ok_or_else(|| {
                    candle_core::Error::msg(format!(
                        "{}: backward without a saved forward",
                        Self::NAME
                    ))
                })?;
                pre.apply_op2_no_bwd(&grad_res, &Op(ActivationGrad(act)))?
            }
        };
        let gathered = lock(&self.gathered_input, Self::NAME)?.clone();
        let x_shape = x.shape().clone();
        let x = match gathered {
            Some(x) => x,
            None if self.dense => {
                let inner = weight.dim(1)?;
                x.detach()
                    .reshape((1, x.elem_count() / inner.max(1), inner))?
            }
            None => reorder(&x.detach(), self.input, RowOrder::ExpertMajor, e)?,
        };
        let weight = weight.detach();
        // (e, rows, out) x (e, out, in), or x (out, in) when dense.
        let grad_x = matmul(&grad_pre, &weight)?;
        // (e, out, rows) x (e, rows, in)
        let grad_weight = matmul(&grad_pre.transpose(1, 2)?, &x)?;
        let grad_bias = grad_pre.apply_op1_no_bwd(&Op(SumRows))?;
        if self.dense {
            return Ok((
                Some(grad_x.reshape(x_shape)?),
                Some(grad_weight.squeeze(0)?),
                Some(grad_bias.squeeze(0)?),
            ));
        }
        let grad_x = reorder(&grad_x, RowOrder::ExpertMajor, self.input, e)?;
        Ok((Some(grad_x), Some(grad_weight), Some(grad_bias)))
    }
}

/// `(e, rows, n) -> (e, n)`: the bias gradient. candle's `sum(1)` walks the
/// middle axis with strides; summing whole rows is one vectorised pass.
struct SumRows;

impl UnaryKernel for SumRows {
    const NAME: &'static str = "fused-sum-rows";

    fn run<T: Real>(&self, data: &[T], shape: &Shape) -> Result<Vec<T>> {
        let (e, rows, n) = shape.dims3()?;
        let mut out = vec![T::zero(); e * n];
        out.par_chunks_mut(n.max(1))
            .enumerate()
            .for_each(|(group, acc)| {
                for row in data[group * rows * n..(group + 1) * rows * n].chunks_exact(n) {
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += v;
                    }
                }
            });
        Ok(out)
    }

    fn out_shape(&self, shape: &Shape) -> Result<Shape> {
        let (e, _, n) = shape.dims3()?;
        Ok(Shape::from((e, n)))
    }
}

/// `grad · act'(pre)` for two contiguous tensors of one shape.
struct ActivationGrad(Activation);

impl BinaryKernel for ActivationGrad {
    const NAME: &'static str = "fused-activation-grad";

    fn run<T: Real>(&self, pre: &[T], grad: &[T], _: &Shape) -> Result<Vec<T>> {
        Ok(activation_grad(pre, grad, self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::max_diff;
    use candle_core::{DType, Var};

    /// The op with expert-major rows in and out.
    fn expert_linear(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        act: Option<Activation>,
    ) -> Result<Tensor> {
        expert_linear_ordered(
            x,
            weight,
            bias,
            act,
            RowOrder::ExpertMajor,
            RowOrder::ExpertMajor,
        )
    }

    /// The fused op and candle's composite ops agree, forward and backward,
    /// with few rows per expert (the transposed product of `gemm.rs`) and
    /// with more than its 128-row threshold.
    fn check(act: Option<Activation>, dtype: DType, tol: f64) -> Result<()> {
        check_rows(act, dtype, tol, 5)?;
        check_rows(act, dtype, tol, 131)
    }

    fn check_rows(act: Option<Activation>, dtype: DType, tol: f64, rows: usize) -> Result<()> {
        let dev = Device::Cpu;
        let randn = |shape: (usize, usize, usize), std: f32| -> Result<Var> {
            Var::from_tensor(&Tensor::randn(0f32, std, shape, &dev)?.to_dtype(dtype)?)
        };
        let x = randn((3, rows, 4), 1.0)?;
        let w = randn((3, 6, 4), 0.7)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 6), &dev)?.to_dtype(dtype)?)?;
        let loss_weight = Tensor::randn(0f32, 1.0, (3, rows, 6), &dev)?.to_dtype(dtype)?;

        let fused = expert_linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), act)?;
        let pre = x
            .matmul(&w.transpose(1, 2)?)?
            .broadcast_add(&b.unsqueeze(1)?)?;
        let reference = activate_composite(pre, act)?;
        let diff = max_diff(&fused, &reference)?;
        assert!(
            diff < tol,
            "{act:?} {dtype:?} {rows} rows: forward differs by {diff}"
        );

        let grads_fused = (fused * &loss_weight)?.sum_all()?.backward()?;
        let grads_ref = (reference * &loss_weight)?.sum_all()?.backward()?;
        for (name, var) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let got = grads_fused.get(var).expect("fused gradient");
            let want = grads_ref.get(var).expect("reference gradient");
            let diff = max_diff(got, want)?;
            assert!(
                diff < tol * 10.0,
                "{act:?} {dtype:?} {rows} rows: gradient of {name} differs by {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_matches_composite_f32() -> Result<()> {
        for act in [None, Some(Activation::Gelu), Some(Activation::QuickGelu)] {
            check(act, DType::F32, 1e-5)?;
        }
        Ok(())
    }

    #[test]
    fn fused_matches_composite_f64() -> Result<()> {
        for act in [None, Some(Activation::Gelu), Some(Activation::QuickGelu)] {
            check(act, DType::F64, 1e-12)?;
        }
        Ok(())
    }

    /// The composite path's GELU gradient against central differences of
    /// `x Φ(x)` in F64 (a step of 1e-5 leaves an error near 1e-10, where
    /// candle's `gelu_erf` backward is off by up to 1.7e-7).
    #[test]
    fn composite_gelu_gradient_matches_finite_differences_f64() -> Result<()> {
        let xs: Vec<f64> = (-40..=40).map(|i| i as f64 * 0.1).collect();
        let x = Var::from_vec(xs.clone(), xs.len(), &Device::Cpu)?;
        let y = activate_composite(x.as_tensor().clone(), Some(Activation::Gelu))?;
        let grads = y.sum_all()?.backward()?;
        let got = grads.get(&x).expect("gradient").to_vec1::<f64>()?;
        let gelu = |v: f64| -> Result<f64> {
            let t = Tensor::new(&[v], &Device::Cpu)?;
            activate_composite(t, Some(Activation::Gelu))?
                .squeeze(0)?
                .to_scalar::<f64>()
        };
        let h = 1e-5;
        for (&v, &g) in xs.iter().zip(&got) {
            let numeric = (gelu(v + h)? - gelu(v - h)?) / (2.0 * h);
            assert!(
                (g - numeric).abs() < 1e-9,
                "x = {v}: gradient {g}, central difference {numeric}"
            );
        }
        Ok(())
    }

    /// Batch-major input and output give the expert-major results
    /// rearranged, values and all gradients (F64, exact up to rounding).
    #[test]
    fn batch_major_rows_match_rearranged_expert_major_rows() -> Result<()> {
        let dev = Device::Cpu;
        let (b, e, s, d, h) = (3, 2, 4, 5, 6);
        let var = |shape: &[usize]| -> Result<Var> {
            Var::from_tensor(&Tensor::randn(0f64, 1.0, shape, &dev)?)
        };
        let (x, w, bias) = (var(&[b, e * s, d])?, var(&[e, h, d])?, var(&[e, h])?);
        let loss_w = Tensor::randn(0f64, 1.0, (b, e * s, h), &dev)?;
        let order = RowOrder::BatchMajor { batch: b };
        let act = Some(Activation::QuickGelu);
        let fused = expert_linear_ordered(&x, &w, &bias, act, order, order)?;
        let manual = {
            let xe = reorder(&x, order, RowOrder::ExpertMajor, e)?;
            let y = expert_linear(&xe, &w, &bias, act)?;
            reorder(&y, RowOrder::ExpertMajor, order, e)?
        };
        assert_eq!(fused.dims(), &[b, e * s, h]);
        assert!(max_diff(&fused, &manual)? < 1e-12);
        let g1 = (fused * &loss_w)?.sum_all()?.backward()?;
        let g2 = (manual * &loss_w)?.sum_all()?.backward()?;
        for v in [&x, &w, &bias] {
            assert!(max_diff(g1.get(v).expect("grad"), g2.get(v).expect("grad"))? < 1e-12);
        }
        // A batch that does not divide the rows is an error.
        let bad = RowOrder::BatchMajor { batch: 2 };
        let err = expert_linear_ordered(&x, &w, &bias, act, bad, bad).unwrap_err();
        assert!(err.to_string().contains("batch-major input"), "{err}");
        Ok(())
    }

    /// Untracked inputs take the in-place activation path; tracked ones keep
    /// the pre-activation. Both give the same values.
    #[test]
    fn inference_path_matches_training_path() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 5), &dev)?;
        let w = Tensor::randn(0f32, 0.7, (2, 9, 5), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (2, 9), &dev)?;
        for act in [Activation::Gelu, Activation::QuickGelu] {
            let plain = expert_linear(&x, &w, &b, Some(act))?;
            let tracked = expert_linear(Var::from_tensor(&x)?.as_tensor(), &w, &b, Some(act))?;
            let diff = (plain - tracked)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{act:?}");
        }
        Ok(())
    }

    /// The dense op (rank-3 input, rank-2 weight, no reshape nodes) against
    /// candle's ops, values and the input, weight and bias gradients in F64.
    #[test]
    fn dense_linear_gradients_match_composite() -> Result<()> {
        let dev = Device::Cpu;
        let var = |shape: &[usize]| -> Result<Var> {
            Var::from_tensor(&Tensor::randn(0f64, 1.0, shape, &dev)?)
        };
        let (x, w, b) = (var(&[2, 5, 4])?, var(&[6, 4])?, var(&[6])?);
        let loss_w = Tensor::randn(0f64, 1.0, (2, 5, 6), &dev)?;
        for act in [None, Some(Activation::QuickGelu)] {
            let fused = linear(&x, &w, &b, act)?;
            let pre = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
            let reference = activate_composite(pre, act)?;
            assert_eq!(fused.dims(), &[2, 5, 6]);
            assert!(max_diff(&fused, &reference)? < 1e-12, "{act:?}");
            let g1 = (fused * &loss_w)?.sum_all()?.backward()?;
            let g2 = (reference * &loss_w)?.sum_all()?.backward()?;
            for v in [&x, &w, &b] {
                let (got, want) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
                assert_eq!(got.dims(), v.dims());
                assert!(max_diff(got, want)? < 1e-12, "{act:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn dense_linear_matches_candle_nn_linear() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev)?;
        let w = Tensor::randn(0f32, 0.5, (6, 4), &dev)?;
        let b = Tensor::randn(0f32, 0.5, 6, &dev)?;
        let want =
            candle_nn::Module::forward(&candle_nn::Linear::new(w.clone(), Some(b.clone())), &x)?;
        let got = linear(&x, &w, &b, None)?;
        assert_eq!(got.dims(), &[2, 5, 6]);
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        let err = linear(&x, &w.t()?, &b, None).unwrap_err().to_string();
        assert!(err.contains("input size"), "{err}");
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_an_error() -> Result<()> {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
        let w = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros((2, 6), DType::F32, &Device::Cpu)?;
        let err = expert_linear(&x, &w, &b, None).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        Ok(())
    }
}
