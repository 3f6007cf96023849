//! What every fused CPU op of this crate shares: the process-wide switch
//! between the fused kernels and candle's composites, the test for whether a
//! tensor takes the fused path, the F32/F64 dispatch from candle's storage to
//! a generic kernel, and the one operand check (CPU, dtype, contiguous) whose
//! errors name the op and the operand.
//!
//! A kernel is written once over [`Real`] and implements [`UnaryKernel`] or
//! [`BinaryKernel`]; wrapped in [`Op`] it is a candle `CustomOp1` or
//! `CustomOp2`.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor, WithDType,
};
use num_traits::{Float, NumAssign};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::activation::ActivationFloat;

/// The element types the fused ops run in: F32, and F64 for the parity and
/// gradient checks.
pub(crate) trait Real: Float + NumAssign + WithDType + ActivationFloat {}

impl Real for f32 {}
impl Real for f64 {}

static FUSED_CPU_KERNELS: AtomicBool = AtomicBool::new(true);

/// Turns the fused CPU kernels of this crate on or off for the whole
/// process; they are on by default.
///
/// Off, the CPU runs the same differentiable candle composites that a GPU
/// runs. That lets a machine without a GPU test the GPU's code path (this
/// crate's `composite_parity` test does) and time the kernels against the
/// composites. The switch is global: flip it before building the graph, not
/// while other threads run layers.
pub fn set_fused_cpu_kernels(on: bool) {
    FUSED_CPU_KERNELS.store(on, Ordering::Relaxed);
}

/// Whether the fused CPU kernels are on (see [`set_fused_cpu_kernels`]).
pub fn fused_cpu_kernels() -> bool {
    FUSED_CPU_KERNELS.load(Ordering::Relaxed)
}

/// 0: not read yet, 1: off, 2: on.
static FUSED_CUDA_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Turns this crate's CUDA kernels (softmax, LayerNorm, the routing norms,
/// elu + 1, bias + activation, attention, forward and backward; and the
/// training step's end: [`crate::adam_update_many`],
/// [`crate::sums_of_squares`], [`crate::copy_scaled_into`]; `--features
/// cuda`) on or off for the whole process. Off by default, or on with
/// `FUSED_OPS_CUDA=1`: they have been checked against
/// the composites they replace on the CPU emulator
/// (`tests/cuda_emulation.rs`), not yet on a GPU (`tests/cuda_parity.rs`).
/// Without the `cuda` or `cuda-emulation` feature the switch has no effect;
/// with `cuda-emulation` it also sends F32/BF16 CPU tensors through the
/// kernels' emulation.
pub fn set_fused_cuda_kernels(on: bool) {
    FUSED_CUDA_KERNELS.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether this crate's CUDA kernels are on (see [`set_fused_cuda_kernels`]);
/// always `false` without the `cuda` or `cuda-emulation` feature.
/// `FUSED_OPS_CUDA=1` (exactly) turns them on when the process has not set
/// the switch.
pub fn fused_cuda_kernels() -> bool {
    let state = match FUSED_CUDA_KERNELS.load(Ordering::Relaxed) {
        0 => {
            let env = if std::env::var("FUSED_OPS_CUDA").is_ok_and(|v| v == "1") {
                2
            } else {
                1
            };
            // A switch set meanwhile wins over the environment.
            match FUSED_CUDA_KERNELS.compare_exchange(0, env, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => env,
                Err(set) => set,
            }
        }
        state => state,
    };
    cfg!(cuda_kernels) && state == 2
}

/// Whether `x` takes this crate's CUDA kernels: non-empty, F32 or BF16 on a
/// CUDA device (or on the CPU under `cuda-emulation`), the switch on, and
/// under 2^31 elements (the kernels take row, column and group counts as
/// 32-bit integers; larger tensors, 8 GB and up in F32, take the
/// composites).
#[cfg_attr(not(cuda_kernels), allow(dead_code))]
pub(crate) fn cuda_path(x: &Tensor) -> bool {
    (x.device().is_cuda() || (cfg!(feature = "cuda-emulation") && x.device().is_cpu()))
        && x.elem_count() > 0
        && x.elem_count() <= i32::MAX as usize
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && fused_cuda_kernels()
}

/// The address of `t`'s buffer, its lock taken and released: two tensors
/// with one address share a buffer.
pub(crate) fn buffer_address(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    &*storage as *const Storage as usize
}

/// Whether `x` takes the fused CPU kernels that run in F32 and F64 (else
/// candle's composites run).
pub(crate) fn fused_path(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) && fused_cpu_kernels()
}

/// Whether `x` takes the fused CPU kernels that run in F32 only (attention,
/// LayerNorm: their parity in F64 is checked through the composites).
pub(crate) fn fused_path_f32(x: &Tensor) -> bool {
    fused_path(x) && x.dtype() == DType::F32
}

/// The elements of a contiguous operand; an error naming `op` otherwise.
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    contiguous_operand(data, layout, op, "the input")
}

fn contiguous_operand<'a, T>(
    data: &'a [T],
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// The elements of operand `what` of `op`, which must be a contiguous F32
/// CPU storage.
pub(crate) fn f32_operand<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!(
            "{op}: {what} must be an F32 tensor, got {:?}",
            storage.dtype()
        )
    };
    contiguous_operand(data, layout, op, what)
}

/// [`f32_operand`] of a storage that must also live on the CPU (a saved
/// tensor read back in a backward pass).
pub(crate) fn cpu_f32_operand<'a>(
    storage: &'a Storage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let Storage::Cpu(storage) = storage else {
        candle_core::bail!("{op}: {what} must be a CPU tensor")
    };
    f32_operand(storage, layout, op, what)
}

/// A one-input kernel over a contiguous buffer.
pub(crate) trait UnaryKernel {
    /// The op's name, for `CustomOp::name` and errors.
    const NAME: &'static str;

    /// The output for input `x` of shape `shape`.
    fn run<T: Real>(&self, x: &[T], shape: &Shape) -> Result<Vec<T>>;

    /// The output's shape; the input's unless the kernel reduces.
    fn out_shape(&self, shape: &Shape) -> Result<Shape> {
        Ok(shape.clone())
    }

    /// The gradient w.r.t. the input `x`, given the output `res` and the
    /// incoming gradient; kernels used only inside backward passes have none.
    fn backward(&self, _x: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<Option<Tensor>> {
        candle_core::bail!("{} has no backward pass", Self::NAME)
    }
}

/// A two-input kernel over contiguous buffers of one shape (a forward
/// value and the incoming gradient, typically).
pub(crate) trait BinaryKernel {
    /// The op's name, for `CustomOp::name` and errors.
    const NAME: &'static str;

    /// The output (of `shape`) for inputs `a` and `b` of shape `shape`.
    fn run<T: Real>(&self, a: &[T], b: &[T], shape: &Shape) -> Result<Vec<T>>;
}

/// A kernel as a candle custom op: `CustomOp1` for a [`UnaryKernel`],
/// `CustomOp2` for a [`BinaryKernel`].
pub(crate) struct Op<K>(pub K);

impl<K: UnaryKernel + Send + Sync> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        unary(&self.0, storage, layout)
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        self.0.backward(x, res, grad)
    }
}

impl<K: BinaryKernel + Send + Sync> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary(&self.0, (s1, l1), (s2, l2))
    }
}

/// `cpu_fwd` of a [`UnaryKernel`].
fn unary<K: UnaryKernel>(
    kernel: &K,
    storage: &CpuStorage,
    layout: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let shape = layout.shape();
    let out = match storage {
        CpuStorage::F32(x) => CpuStorage::F32(kernel.run(contiguous(x, layout, K::NAME)?, shape)?),
        CpuStorage::F64(x) => CpuStorage::F64(kernel.run(contiguous(x, layout, K::NAME)?, shape)?),
        other => candle_core::bail!(
            "{}: needs an F32 or F64 tensor, got {:?}",
            K::NAME,
            other.dtype()
        ),
    };
    Ok((out, kernel.out_shape(shape)?))
}

/// `cpu_fwd` of a [`BinaryKernel`].
fn binary<K: BinaryKernel>(
    kernel: &K,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{}: shapes {:?} and {:?} differ",
            K::NAME,
            l1.shape(),
            l2.shape()
        )
    }
    let shape = l1.shape();
    let out = match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(kernel.run(
            contiguous(a, l1, K::NAME)?,
            contiguous(b, l2, K::NAME)?,
            shape,
        )?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(kernel.run(
            contiguous(a, l1, K::NAME)?,
            contiguous(b, l2, K::NAME)?,
            shape,
        )?),
        (a, b) => candle_core::bail!(
            "{}: needs two F32 or two F64 tensors, got {:?} and {:?}",
            K::NAME,
            a.dtype(),
            b.dtype()
        ),
    };
    Ok((out, shape.clone()))
}

/// The largest absolute difference of two tensors, as F64 (tests).
#[cfg(test)]
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUDA switch routes a CPU tensor to the CUDA kernels only under
    /// the emulator, and without a CUDA feature it stays off whatever is
    /// asked.
    #[test]
    fn cuda_switch_leaves_cpu_tensors_alone() -> Result<()> {
        let x = Tensor::zeros((2, 3), DType::F32, &candle_core::Device::Cpu)?;
        set_fused_cuda_kernels(true);
        assert_eq!(cuda_path(&x), cfg!(feature = "cuda-emulation"));
        assert_eq!(fused_cuda_kernels(), cfg!(cuda_kernels));
        set_fused_cuda_kernels(false);
        assert!(!fused_cuda_kernels());
        Ok(())
    }
}
