//! `act(x + bias)` for the expert hidden layer, fused into one pass forward
//! and one pass backward on CPU.
//!
//! Unfused, candle runs a broadcast add, then the activation, and its backward
//! builds the activation's derivative from five more element-wise tensors; each
//! pass allocates and walks 4.8 M floats at the paper's shape. Here the forward
//! is one multi-threaded loop and the backward one more, which is what brings
//! the layer to PyTorch speed on CPU (docs/benchmarks.md). Other devices and
//! dtypes take the composite path, which candle differentiates itself.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fast_math::{erf_f32, exp_f32};
use crate::config::Activation;

/// Rows handed to one rayon task: big enough to amortise scheduling.
const MIN_ROWS_PER_TASK: usize = 16;

/// `act(x + bias)` for `x` of shape `(groups, rows, hidden)` and `bias` of shape
/// `(groups, hidden)`: group `g` (an expert) adds its own bias row.
pub(crate) fn bias_activation(x: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    let fused = x.device().is_cpu()
        && x.dtype() == bias.dtype()
        && matches!(x.dtype(), DType::F32 | DType::F64);
    if fused {
        x.contiguous()?
            .apply_op2(&bias.contiguous()?, BiasActivation(act))
    } else {
        let pre = x.broadcast_add(&bias.unsqueeze(1)?)?;
        match act {
            Activation::Gelu => pre.gelu_erf(),
            Activation::QuickGelu => pre.clone() * candle_nn::ops::sigmoid(&(pre * 1.702)?)?,
        }
    }
}

/// Scalar maths of the two activations and their derivatives.
trait ActivationFloat: Copy + Send + Sync + std::ops::Mul<Output = Self> {
    fn activate(self, act: Activation) -> Self;
    fn derivative(self, act: Activation) -> Self;
}

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const QUICK_GELU_ALPHA: f64 = 1.702;

impl ActivationFloat for f32 {
    #[inline(always)]
    fn activate(self, act: Activation) -> f32 {
        match act {
            Activation::Gelu => {
                0.5 * self * (1.0 + erf_f32(self * std::f32::consts::FRAC_1_SQRT_2))
            }
            Activation::QuickGelu => self / (1.0 + exp_f32(-(QUICK_GELU_ALPHA as f32) * self)),
        }
    }

    #[inline(always)]
    fn derivative(self, act: Activation) -> f32 {
        match act {
            // Φ(x) + x φ(x)
            Activation::Gelu => {
                0.5 * (1.0 + erf_f32(self * std::f32::consts::FRAC_1_SQRT_2))
                    + self * (FRAC_1_SQRT_2PI as f32) * exp_f32(-0.5 * self * self)
            }
            // s + a x s (1 - s), s = sigmoid(a x)
            Activation::QuickGelu => {
                let alpha = QUICK_GELU_ALPHA as f32;
                let s = 1.0 / (1.0 + exp_f32(-alpha * self));
                s + alpha * self * s * (1.0 - s)
            }
        }
    }
}

impl ActivationFloat for f64 {
    fn activate(self, act: Activation) -> f64 {
        match act {
            Activation::Gelu => {
                0.5 * self
                    * (1.0 + candle_core::cpu::erf::erf_f64(self * std::f64::consts::FRAC_1_SQRT_2))
            }
            Activation::QuickGelu => self / (1.0 + (-QUICK_GELU_ALPHA * self).exp()),
        }
    }

    fn derivative(self, act: Activation) -> f64 {
        match act {
            Activation::Gelu => {
                0.5 * (1.0 + candle_core::cpu::erf::erf_f64(self * std::f64::consts::FRAC_1_SQRT_2))
                    + self * FRAC_1_SQRT_2PI * (-0.5 * self * self).exp()
            }
            Activation::QuickGelu => {
                let s = 1.0 / (1.0 + (-QUICK_GELU_ALPHA * self).exp());
                s + QUICK_GELU_ALPHA * self * s * (1.0 - s)
            }
        }
    }
}

/// Contiguous slice of a CPU storage, or an error naming the op.
fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input is not contiguous"),
    }
}

/// `(groups, rows, hidden)` of `x` and a check that `bias` is `(groups, hidden)`.
fn group_dims(x: &Layout, bias: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let (groups, rows, hidden) = x.shape().dims3()?;
    if bias.shape().dims() != [groups, hidden] {
        candle_core::bail!(
            "{op}: bias shape {:?} does not match input {:?}: expected ({groups}, {hidden})",
            bias.shape(),
            x.shape()
        )
    }
    Ok((groups, rows, hidden))
}

/// Writes `f(g, x_row, bias_row, out_row)` for every row, in parallel.
fn for_each_row<T: Copy + Send + Sync>(
    x: &[T],
    bias: &[T],
    (rows, hidden): (usize, usize),
    out: &mut [T],
    f: impl Fn(usize, &[T], &[T], &mut [T]) + Sync,
) {
    out.par_chunks_mut(hidden)
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(row, out_row)| {
            let g = row / rows;
            let x_row = &x[row * hidden..(row + 1) * hidden];
            f(row, x_row, &bias[g * hidden..(g + 1) * hidden], out_row)
        });
}

struct BiasActivation(Activation);

impl BiasActivation {
    fn forward<T: ActivationFloat + std::ops::Add<Output = T> + Default>(
        &self,
        x: &[T],
        bias: &[T],
        dims: (usize, usize),
    ) -> Vec<T> {
        let act = self.0;
        let mut out = vec![T::default(); x.len()];
        for_each_row(x, bias, dims, &mut out, |_, x_row, b_row, out_row| {
            for ((o, &xv), &bv) in out_row.iter_mut().zip(x_row).zip(b_row) {
                *o = (xv + bv).activate(act);
            }
        });
        out
    }
}

impl CustomOp2 for BiasActivation {
    fn name(&self) -> &'static str {
        "softmoe-bias-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, rows, hidden) = group_dims(l1, l2, self.name())?;
        let storage = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(b)) => CpuStorage::F32(self.forward(
                contiguous_slice(x, l1, self.name())?,
                contiguous_slice(b, l2, self.name())?,
                (rows, hidden),
            )),
            (CpuStorage::F64(x), CpuStorage::F64(b)) => CpuStorage::F64(self.forward(
                contiguous_slice(x, l1, self.name())?,
                contiguous_slice(b, l2, self.name())?,
                (rows, hidden),
            )),
            _ => candle_core::bail!("{}: needs two F32 or two F64 tensors", self.name()),
        };
        Ok((storage, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_pre =
            x.apply_op3_no_bwd(bias, &grad_res.contiguous()?, &BiasActivationGrad(self.0))?;
        let grad_bias = grad_pre.sum(1)?;
        Ok((Some(grad_pre), Some(grad_bias)))
    }
}

/// `grad · act'(x + bias)`: the gradient with respect to the pre-activation,
/// which is also the input gradient (the bias gradient is its sum over rows).
struct BiasActivationGrad(Activation);

impl BiasActivationGrad {
    fn backward<T: ActivationFloat + std::ops::Add<Output = T> + Default>(
        &self,
        x: &[T],
        bias: &[T],
        grad: &[T],
        dims: (usize, usize),
    ) -> Vec<T> {
        let act = self.0;
        let hidden = dims.1;
        let mut out = vec![T::default(); x.len()];
        for_each_row(x, bias, dims, &mut out, |row, x_row, b_row, out_row| {
            let g_row = &grad[row * hidden..(row + 1) * hidden];
            for (((o, &xv), &bv), &gv) in out_row.iter_mut().zip(x_row).zip(b_row).zip(g_row) {
                *o = gv * (xv + bv).derivative(act);
            }
        });
        out
    }
}

impl CustomOp3 for BiasActivationGrad {
    fn name(&self) -> &'static str {
        "softmoe-bias-activation-grad"
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
        let (_, rows, hidden) = group_dims(l1, l2, self.name())?;
        if l3.shape() != l1.shape() {
            candle_core::bail!(
                "{}: gradient shape {:?} != input shape {:?}",
                self.name(),
                l3.shape(),
                l1.shape()
            )
        }
        let name = self.name();
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(b), CpuStorage::F32(g)) => {
                CpuStorage::F32(self.backward(
                    contiguous_slice(x, l1, name)?,
                    contiguous_slice(b, l2, name)?,
                    contiguous_slice(g, l3, name)?,
                    (rows, hidden),
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(b), CpuStorage::F64(g)) => {
                CpuStorage::F64(self.backward(
                    contiguous_slice(x, l1, name)?,
                    contiguous_slice(b, l2, name)?,
                    contiguous_slice(g, l3, name)?,
                    (rows, hidden),
                ))
            }
            _ => candle_core::bail!("{name}: needs three F32 or three F64 tensors"),
        };
        Ok((storage, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The fused op and candle's composite ops agree, forward and backward.
    fn check(act: Activation, dtype: DType, tol: f64) -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 5, 7), &dev)?.to_dtype(dtype)?))?;
        let b = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (3, 7), &dev)?.to_dtype(dtype)?))?;
        let w = Tensor::randn(0f32, 1.0, (3, 5, 7), &dev)?.to_dtype(dtype)?;

        let fused = bias_activation(x.as_tensor(), b.as_tensor(), act)?;
        let pre = x.broadcast_add(&b.unsqueeze(1)?)?;
        let reference = match act {
            Activation::Gelu => pre.gelu_erf()?,
            Activation::QuickGelu => (&pre * candle_nn::ops::sigmoid(&(&pre * 1.702)?)?)?,
        };
        let diff = (&fused - &reference)?
            .abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        assert!(diff < tol, "{act:?} {dtype:?} forward differs by {diff}");

        let grads_fused = (fused * &w)?.sum_all()?.backward()?;
        let grads_ref = (reference * &w)?.sum_all()?.backward()?;
        for var in [&x, &b] {
            let a = grads_fused.get(var).expect("fused gradient");
            let r = grads_ref.get(var).expect("reference gradient");
            let diff = (a - r)?
                .abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            assert!(
                diff < tol * 10.0,
                "{act:?} {dtype:?} gradient differs by {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_matches_composite_f32() -> Result<()> {
        check(Activation::Gelu, DType::F32, 1e-5)?;
        check(Activation::QuickGelu, DType::F32, 1e-5)
    }

    #[test]
    fn fused_matches_composite_f64() -> Result<()> {
        // candle's own GELU backward rounds 1/sqrt(2π) to 0.398942, hence 1e-6.
        check(Activation::Gelu, DType::F64, 1e-6)?;
        check(Activation::QuickGelu, DType::F64, 1e-12)
    }

    #[test]
    fn mismatched_bias_is_an_error() -> Result<()> {
        let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros((2, 5), DType::F32, &Device::Cpu)?;
        let err = bias_activation(&x, &b, Activation::Gelu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bias shape"), "{err}");
        Ok(())
    }
}
