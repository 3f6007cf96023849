//! One Adam step of a parameter and its two moments, in place, in one CUDA
//! kernel launch (`adam_update_f32` in `cuda/fused_ops.cu`).
//!
//! Composed of tensor operations, the same update launches about a dozen
//! kernels per parameter and allocates a buffer for each: thousands of
//! launches per step for a ViT with Soft MoE experts, each reading and
//! writing whole parameters. The kernel reads the parameter, gradient and
//! moments once and writes them back once.
//!
//! It computes PyTorch's single-tensor update (`torch.optim.Adam`/`AdamW`
//! with `foreach=False`) in that implementation's order and roundings, as
//! uniattack's CPU path does: `tests/cuda_emulation.rs` checks it bit for
//! bit against `torch.optim` on the CPU emulator, `tests/cuda_parity.rs` on
//! a GPU. Like the crate's other CUDA kernels it is off until
//! [`crate::set_fused_cuda_kernels`] or `FUSED_OPS_CUDA=1` turns it on.

use candle_core::{DType, Result, Tensor};

/// Adam's per-step scalars as PyTorch's kernels receive them (rounded to
/// F32 from the double-precision values Python computes), and which weight
/// decay applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamScalars {
    /// `1 - lr·wd`: AdamW's decay, applied when `decoupled`.
    pub decay_factor: f32,
    /// `wd`: Adam's L2 term, added to the gradient when `coupled`.
    pub coupled_decay: f32,
    /// `1 - β₁`, the first moment's lerp weight.
    pub lerp_weight: f32,
    /// `β₂`.
    pub beta2: f32,
    /// `1 - β₂`.
    pub one_minus_beta2: f32,
    /// `sqrt(1 - β₂ᵗ)`.
    pub bias_correction2_sqrt: f32,
    /// The denominator's epsilon.
    pub eps: f32,
    /// `-lr / (1 - β₁ᵗ)`.
    pub neg_step_size: f32,
    /// Decoupled weight decay (AdamW): `θ ← θ·decay_factor` first.
    pub decoupled: bool,
    /// Coupled weight decay (Adam): `g ← g + wd·θ` first.
    pub coupled: bool,
}

/// Whether [`adam_update`] takes these tensors: the CUDA kernels on, all
/// four F32, contiguous, of one element count (at most `i32::MAX`), on one
/// CUDA device (or the CPU under `cuda-emulation`), and four separate
/// buffers. Otherwise the caller composes the update itself.
pub fn adam_update_fits(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let all = [param, grad, m, v];
    crate::dispatch::cuda_path(param)
        && all.iter().all(|t| {
            t.dtype() == DType::F32
                && t.is_contiguous()
                && t.elem_count() == param.elem_count()
                && t.device().same_device(param.device())
        })
        && distinct_storages(&all)
}

/// Whether no two of `tensors` share a buffer: each is locked in turn, and
/// a second lock on one buffer would wait for ever.
fn distinct_storages(tensors: &[&Tensor]) -> bool {
    let addresses: Vec<usize> = tensors
        .iter()
        .map(|t| {
            let (storage, _) = t.storage_and_layout();
            &*storage as *const candle_core::Storage as usize
        })
        .collect();
    addresses
        .iter()
        .enumerate()
        .all(|(i, a)| !addresses[..i].contains(a))
}

/// One Adam step: `param`, `m` (the first moment) and `v` (the second)
/// updated in place from `grad`, as [`adam_update_fits`] accepts them
/// (an error otherwise).
pub fn adam_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    scalars: &AdamScalars,
) -> Result<()> {
    if !adam_update_fits(param, grad, m, v) {
        candle_core::bail!(
            "fused-adam: the CUDA kernels are off, or the parameter, gradient and moments are \
             not four separate contiguous F32 tensors of one size on one CUDA device"
        )
    }
    #[cfg(cuda_kernels)]
    {
        kernel::run(param, grad, m, v, scalars)
    }
    #[cfg(not(cuda_kernels))]
    {
        let _ = scalars;
        unreachable!("adam_update_fits is false without the CUDA kernels")
    }
}

/// The launch, from inside three nested in-place ops: candle hands an
/// in-place op one writable buffer, so the first moment's op holds its
/// buffer while the second moment's runs, which holds both while the
/// parameter's launches the kernel.
#[cfg(cuda_kernels)]
mod kernel {
    use std::cell::RefCell;

    use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor};

    use super::AdamScalars;
    use crate::cuda_emulation::Emulator;
    use crate::kernel_launch::{elementwise_launch, Arg, KernelDevice};

    const NAME: &str = "fused-adam";

    /// A buffer an enclosing op holds, with its first element.
    enum Held<'a> {
        Cpu(&'a mut CpuStorage, usize),
        #[cfg(feature = "cuda")]
        Cuda(&'a mut candle_core::CudaStorage, usize),
    }

    fn start(layout: &Layout) -> Result<usize> {
        match layout.contiguous_offsets() {
            Some((start, _)) => Ok(start),
            None => candle_core::bail!("{NAME}: a non-contiguous operand"),
        }
    }

    fn taken<'a>(cell: &RefCell<Option<Held<'a>>>) -> Result<Held<'a>> {
        match cell.borrow_mut().take() {
            Some(held) => Ok(held),
            None => candle_core::bail!("{NAME}: a moment's buffer was used twice"),
        }
    }

    pub(super) fn run(
        param: &Tensor,
        grad: &Tensor,
        m: &Tensor,
        v: &Tensor,
        scalars: &AdamScalars,
    ) -> Result<()> {
        m.inplace_op1(&Holding(|m: Held<'_>| {
            let m = RefCell::new(Some(m));
            v.inplace_op1(&Holding(|v: Held<'_>| {
                let update = Update {
                    m: RefCell::new(Some(taken(&m)?)),
                    v: RefCell::new(Some(v)),
                    scalars: *scalars,
                };
                param.inplace_op2(grad, &update)
            }))
        }))
    }

    /// An in-place op that holds its tensor's buffer while `.0` runs.
    struct Holding<F>(F);

    impl<F: Fn(Held<'_>) -> Result<()>> InplaceOp1 for Holding<F> {
        fn name(&self) -> &'static str {
            NAME
        }

        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let at = start(layout)?;
            (self.0)(Held::Cpu(storage, at))
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
            let at = start(layout)?;
            (self.0)(Held::Cuda(storage, at))
        }
    }

    /// The parameter's op: launches the kernel on all four buffers.
    struct Update<'m, 'v> {
        m: RefCell<Option<Held<'m>>>,
        v: RefCell<Option<Held<'v>>>,
        scalars: AdamScalars,
    }

    impl InplaceOp2 for Update<'_, '_> {
        fn name(&self) -> &'static str {
            NAME
        }

        fn cpu_fwd(
            &self,
            param: &mut CpuStorage,
            layout: &Layout,
            grad: &CpuStorage,
            grad_layout: &Layout,
        ) -> Result<()> {
            // Irrefutable without the `cuda` feature.
            #[allow(irrefutable_let_patterns)]
            let (Held::Cpu(m, m_at), Held::Cpu(v, v_at)) = (taken(&self.m)?, taken(&self.v)?) else {
                candle_core::bail!("{NAME}: the moments are not on the parameter's device")
            };
            let n = layout.shape().elem_count();
            let buffers = (param, start(layout)?, m, m_at, v, v_at);
            launch(
                &Emulator,
                buffers,
                (grad, start(grad_layout)?),
                n,
                &self.scalars,
            )
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            param: &mut candle_core::CudaStorage,
            layout: &Layout,
            grad: &candle_core::CudaStorage,
            grad_layout: &Layout,
        ) -> Result<()> {
            let (Held::Cuda(m, m_at), Held::Cuda(v, v_at)) = (taken(&self.m)?, taken(&self.v)?)
            else {
                candle_core::bail!("{NAME}: the moments are not on the parameter's device")
            };
            let n = layout.shape().elem_count();
            let device = param.device.clone();
            let buffers = (param, start(layout)?, m, m_at, v, v_at);
            launch(
                &device,
                buffers,
                (grad, start(grad_layout)?),
                n,
                &self.scalars,
            )
        }
    }

    /// The parameter, first and second moments, each with its first element.
    type Buffers<'a, S> = (&'a mut S, usize, &'a mut S, usize, &'a mut S, usize);

    fn launch<D: KernelDevice>(
        dev: &D,
        (p, p_at, m, m_at, v, v_at): Buffers<'_, D::Storage>,
        (g, g_at): (&D::Storage, usize),
        n: usize,
        s: &AdamScalars,
    ) -> Result<()> {
        dev.launch(
            "adam_update_f32",
            elementwise_launch(n),
            &mut [
                Arg::InPlace(p, p_at),
                Arg::InPlace(m, m_at),
                Arg::InPlace(v, v_at),
                Arg::In(g, g_at),
                Arg::I64(n as i64),
                Arg::F32(s.decay_factor),
                Arg::F32(s.coupled_decay),
                Arg::F32(s.lerp_weight),
                Arg::F32(s.beta2),
                Arg::F32(s.one_minus_beta2),
                Arg::F32(s.bias_correction2_sqrt),
                Arg::F32(s.eps),
                Arg::F32(s.neg_step_size),
                Arg::I32(i32::from(s.decoupled)),
                Arg::I32(i32::from(s.coupled)),
            ],
        )
    }
}
