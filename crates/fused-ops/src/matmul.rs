//! A differentiable batched matmul on CPU with `gemm.rs`'s work split.
//!
//! Same values as candle's `matmul`; on CPU in F32/F64 the product and both
//! gradient products (`dA = dC Bᵀ`, `dB = Aᵀ dC`, read through transposed
//! strides, no copies) run as (batch entry, column block) tasks of
//! single-threaded `gemm` calls. Other devices and dtypes use candle's.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use crate::dispatch::fused_path;
use crate::gemm::{batched_matmul, Strided};

/// `a · b` for `(batch, m, k) x (batch, k, n)`, `(batch, m, k) x (k, n)`
/// (one `b` for every batch entry, as a linear layer's weight) or
/// `(m, k) x (k, n)`; any strides. Differentiable.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // Equal batch sizes only: `broadcast_matmul` handles a batch of 1
    // against many.
    let fast = fused_path(a)
        && a.dtype() == b.dtype()
        && match (a.dims(), b.dims()) {
            ([_, _], [_, _]) | ([_, _, _], [_, _]) => true,
            ([b1, _, _], [b2, _, _]) => b1 == b2,
            _ => false,
        };
    if fast {
        a.apply_op2(b, Matmul)
    } else {
        a.broadcast_matmul(b)
    }
}

struct Matmul;

impl Matmul {
    /// `(batch, m, n, k)` of a product; batch 1 for rank 2.
    fn dims(l1: &Layout, l2: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (b1, m, k1, b2, k2, n) = match (l1.shape().dims(), l2.shape().dims()) {
            (&[m, k1], &[k2, n]) => (1, m, k1, 1, k2, n),
            (&[b1, m, k1], &[b2, k2, n]) => (b1, m, k1, b2, k2, n),
            (&[b1, m, k1], &[k2, n]) => (b1, m, k1, b1, k2, n),
            (a, b) => candle_core::bail!("fused matmul: cannot multiply {a:?} by {b:?}"),
        };
        if b1 != b2 || k1 != k2 {
            candle_core::bail!(
                "fused matmul: cannot multiply {:?} by {:?}",
                l1.shape(),
                l2.shape()
            )
        }
        Ok((b1, m, n, k1))
    }

    fn run<T: WithDType>(
        a: &[T],
        l1: &Layout,
        b: &[T],
        l2: &Layout,
        (batch, m, n, k): (usize, usize, usize, usize),
    ) -> Result<Vec<T>> {
        let lhs = Strided::from_layout(a, l1)?;
        let rhs = Strided::from_layout(b, l2)?;
        batched_matmul(batch, (m, n, k), lhs, rhs, T::one())
    }
}

impl CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        "fused-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Self::dims(l1, l2)?;
        let (batch, m, n, _) = dims;
        let storage = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                CpuStorage::F32(Self::run(a, l1, b, l2, dims)?)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                CpuStorage::F64(Self::run(a, l1, b, l2, dims)?)
            }
            _ => candle_core::bail!(
                "fused matmul: needs two F32 or two F64 tensors, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        let shape = if l1.shape().rank() == 2 && l2.shape().rank() == 2 {
            Shape::from((m, n))
        } else {
            Shape::from((batch, m, n))
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (a, b) = (a.detach(), b.detach());
        let grad_a = grad.apply_op2_no_bwd(&b.t()?, &Matmul)?;
        let grad_b = if a.rank() == 3 && b.rank() == 2 {
            // One `b` for all batch entries: its gradient sums over them,
            // which is one product over the stacked rows.
            let (batch, m, k) = a.dims3()?;
            let n = b.dim(1)?;
            let a_rows = a.contiguous()?.reshape((batch * m, k))?;
            let grad_rows = grad.contiguous()?.reshape((batch * m, n))?;
            a_rows.t()?.apply_op2_no_bwd(&grad_rows, &Matmul)?
        } else {
            a.t()?.apply_op2_no_bwd(grad, &Matmul)?
        };
        Ok((Some(grad_a), Some(grad_b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::max_diff;
    use candle_core::{DType, Device, Var};

    /// Values and both gradients equal candle's matmul, on transposed
    /// (strided) views, for rank 3 and rank 2.
    #[test]
    fn matches_candle_matmul_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 6, 5), &dev)?.to_dtype(dtype)?)?;
            let b =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 40, 6), &dev)?.to_dtype(dtype)?)?;
            let w = Tensor::randn(0f32, 1.0, (3, 5, 40), &dev)?.to_dtype(dtype)?;
            // (3, 5, 6) x (3, 6, 40), both transposed views.
            let (at, bt) = (a.transpose(1, 2)?, b.transpose(1, 2)?);
            let got = matmul(&at, &bt)?;
            let want = at.matmul(&bt)?;
            assert!(max_diff(&got, &want)? < 1e-5);
            let g1 = (got * &w)?.sum_all()?.backward()?;
            let g2 = (want * &w)?.sum_all()?.backward()?;
            for v in [&a, &b] {
                let (x, y) = (g1.get(v).expect("grad"), g2.get(v).expect("grad"));
                assert!(max_diff(x, y)? < 1e-5, "{dtype:?}");
                assert!(
                    y.abs()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                        > 1e-3
                );
            }
            let a2 = a.get(0)?;
            let b2 = b.get(1)?.t()?;
            // (5, 6) x (6, 40), both strided.
            let got = matmul(&a2.t()?, &b2)?;
            assert_eq!(got.dims(), &[5, 40]);
            assert!(max_diff(&got, &a2.t()?.matmul(&b2)?)? < 1e-5);
        }
        Ok(())
    }

    /// A rank-2 right operand shared by every batch entry, as
    /// `broadcast_matmul`; its gradient sums over the batch.
    #[test]
    fn shared_right_operand_matches_broadcast_matmul() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 4, 5), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, (6, 5), &dev)?)?;
        let w = Tensor::randn(0f64, 1.0, (3, 4, 6), &dev)?;
        let got = matmul(&a, &b.t()?)?;
        let want = a.broadcast_matmul(&b.t()?)?;
        assert_eq!(got.dims(), &[3, 4, 6]);
        assert!(max_diff(&got, &want)? < 1e-12);
        let g1 = (got * &w)?.sum_all()?.backward()?;
        let g2 = (want * &w)?.sum_all()?.backward()?;
        for v in [&a, &b] {
            assert!(max_diff(g1.get(v).expect("grad"), g2.get(v).expect("grad"))? < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_an_error() -> Result<()> {
        let a = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros((2, 5, 4), DType::F32, &Device::Cpu)?;
        let err = matmul(&a, &b).unwrap_err().to_string();
        assert!(err.contains("cannot multiply"), "{err}");
        Ok(())
    }
}
