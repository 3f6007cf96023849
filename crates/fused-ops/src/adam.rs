//! Adam's step of many parameters and their moments, in place, in one CUDA
//! kernel launch per group of up to 64 parameters (`adam_update_many_f32`
//! in `cuda/fused_ops.cu`).
//!
//! Composed of tensor operations, the same update launches about a dozen
//! kernels per parameter and allocates a buffer for each: thousands of
//! launches per step for a ViT with Soft MoE experts, each reading and
//! writing whole parameters. One kernel per parameter still leaves some 470
//! launches for ViT-B/16 with La-SoftMoE and CLIP's text tower, each a few
//! microseconds of the host's time while the GPU waits (the step reads the
//! gradient norm back first, so nothing else is queued). The kernel reads
//! the parameters, gradients and moments once and writes them back once,
//! for 64 parameters a launch, through a table of their addresses.
//!
//! It computes PyTorch's single-tensor update (`torch.optim.Adam`/`AdamW`
//! with `foreach=False`) in that implementation's order and roundings, as
//! uniattack's CPU path does: `tests/cuda_emulation.rs` checks it bit for
//! bit against `torch.optim` on the CPU emulator, `tests/cuda_parity.rs` on
//! a GPU. Like the crate's other CUDA kernels it is off until
//! [`crate::set_fused_cuda_kernels`] or `FUSED_OPS_CUDA=1` turns it on.

use candle_core::{Result, Tensor};

/// Parameters per launch. candle hands out one writable buffer per in-place
/// op, so a launch holds its 3 x 64 written buffers through as many nested
/// ops (a unit test holds them on a 512 KiB stack); the ~470 parameters of
/// ViT-B/16 with La-SoftMoE and the text tower take eight launches.
pub const ADAM_GROUP: usize = 64;

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

/// One parameter's tensors for an Adam step: the parameter, its gradient,
/// and its first (`m`) and second (`v`) moments.
#[derive(Debug, Clone, Copy)]
pub struct AdamTensors<'a> {
    /// The parameter, updated in place.
    pub param: &'a Tensor,
    /// Its gradient, read.
    pub grad: &'a Tensor,
    /// The first moment, updated in place.
    pub m: &'a Tensor,
    /// The second moment, updated in place.
    pub v: &'a Tensor,
}

impl AdamTensors<'_> {
    fn all(&self) -> [&Tensor; 4] {
        [self.param, self.grad, self.m, self.v]
    }
}

/// Whether [`adam_update`] takes these tensors: [`adam_update_many_fits`]
/// for one parameter.
pub fn adam_update_fits(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    adam_update_many_fits(&[AdamTensors { param, grad, m, v }])
}

/// One Adam step of one parameter: [`adam_update_many`] for one.
pub fn adam_update(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    scalars: &AdamScalars,
) -> Result<()> {
    adam_update_many(&[AdamTensors { param, grad, m, v }], scalars)
}

/// Whether [`adam_update_many`] takes `items`: the CUDA kernels on, every
/// tensor F32 and contiguous on the first parameter's CUDA device (or the
/// CPU under `cuda-emulation`), each parameter's four tensors of one
/// element count, and every parameter and moment in a buffer of its own
/// that no gradient shares (gradients may share one buffer: the views of a
/// data-parallel exchange). Otherwise (or for no items) the caller composes
/// the update itself.
pub fn adam_update_many_fits(items: &[AdamTensors<'_>]) -> bool {
    let Some(first) = items.first() else {
        return false;
    };
    let device = first.param.device();
    #[cfg(cuda_kernels)]
    let switch_and_types = {
        let all: Vec<&Tensor> = items.iter().flat_map(|i| i.all()).collect();
        crate::kernel_launch::table_kernels_take(device, &all)
    };
    #[cfg(not(cuda_kernels))]
    let switch_and_types = false;
    switch_and_types
        && items.iter().all(|item| {
            let n = item.param.elem_count();
            item.all()
                .iter()
                .all(|t| t.elem_count() == n && t.device().same_device(device))
        })
        && buffers_apart(items)
}

/// Whether every parameter and moment has a buffer of its own that no
/// gradient views: each written buffer is locked for writing once, and a
/// second lock on one buffer would wait for ever.
fn buffers_apart(items: &[AdamTensors<'_>]) -> bool {
    use crate::dispatch::buffer_address;
    let mut written: Vec<usize> = items
        .iter()
        .flat_map(|i| [i.param, i.m, i.v])
        .map(buffer_address)
        .collect();
    written.sort_unstable();
    let n = written.len();
    written.dedup();
    n == written.len()
        && items
            .iter()
            .all(|i| written.binary_search(&buffer_address(i.grad)).is_err())
}

/// One Adam step of every parameter in `items`: each `param`, `m` and `v`
/// updated in place from its `grad`, one kernel launch per
/// [`ADAM_GROUP`] parameters, as [`adam_update_many_fits`] accepts them
/// (an error otherwise; nothing for no items).
pub fn adam_update_many(items: &[AdamTensors<'_>], scalars: &AdamScalars) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    if !adam_update_many_fits(items) {
        candle_core::bail!(
            "fused-adam: the CUDA kernels are off, or a parameter, gradient or moment is not \
             contiguous F32 on the first parameter's CUDA device, of its parameter's size, in a \
             buffer of its own"
        )
    }
    #[cfg(cuda_kernels)]
    {
        items
            .chunks(ADAM_GROUP)
            .try_for_each(|group| kernel::run(group, scalars))
    }
    #[cfg(not(cuda_kernels))]
    {
        let _ = scalars;
        unreachable!("adam_update_many_fits is false without the CUDA kernels")
    }
}

/// The launch: the group's parameters and moments held for writing, its
/// gradients for reading, one table of their addresses.
#[cfg(cuda_kernels)]
mod kernel {
    use candle_core::{Result, Tensor};

    use super::{AdamScalars, AdamTensors};
    use crate::cuda_emulation::Emulator;
    #[cfg(feature = "cuda")]
    use crate::held_buffers::cuda_storage;
    use crate::held_buffers::{buffers_mut, cpu_storage, with_held_mut, HeldBuffers, HeldMut};
    use crate::kernel_launch::{chunk_launch, chunk_starts, Arg, KernelDevice};

    const NAME: &str = "fused-adam";

    pub(super) fn run(items: &[AdamTensors<'_>], scalars: &AdamScalars) -> Result<()> {
        let lens: Vec<usize> = items.iter().map(|i| i.param.elem_count()).collect();
        if lens.iter().all(|&n| n == 0) {
            return Ok(());
        }
        // Parameter, first and second moment of each item in turn.
        let written: Vec<&Tensor> = items.iter().flat_map(|i| [i.param, i.m, i.v]).collect();
        let grads: Vec<&Tensor> = items.iter().map(|i| i.grad).collect();
        with_held_mut(&written, NAME, &mut |held| {
            let reads = HeldBuffers::new(&grads, NAME)?;
            match held.first() {
                Some(HeldMut::Cpu(..)) => {
                    let mut writes = buffers_mut(held, HeldMut::cpu, NAME)?;
                    let reads = reads.buffers(cpu_storage, NAME)?;
                    launch(&Emulator, &mut writes, &reads, &lens, scalars)
                }
                #[cfg(feature = "cuda")]
                Some(HeldMut::Cuda(first, _)) => {
                    let device = first.device.clone();
                    let mut writes = buffers_mut(held, HeldMut::cuda, NAME)?;
                    let reads = reads.buffers(cuda_storage, NAME)?;
                    launch(&device, &mut writes, &reads, &lens, scalars)
                }
                None => Ok(()),
            }
        })
    }

    /// One launch over parameters of `lens` elements: `writes` holds each
    /// parameter's, first and second moment's buffer in turn, `grads` each
    /// gradient's, each with its first element.
    fn launch<D: KernelDevice>(
        dev: &D,
        writes: &mut [(&mut D::Storage, usize)],
        grads: &[(&D::Storage, usize)],
        lens: &[usize],
        s: &AdamScalars,
    ) -> Result<()> {
        let n = lens.len();
        let first = chunk_starts(lens);
        let chunks = first[n] as usize;
        dev.with_write_addresses(writes, &mut |written| {
            dev.with_addresses(grads, &mut |grads| {
                let mut table = Vec::with_capacity(6 * n + 1);
                for which in 0..3 {
                    table.extend((0..n).map(|i| written[3 * i + which]));
                }
                table.extend_from_slice(grads);
                table.extend(lens.iter().map(|&len| len as i64));
                table.extend_from_slice(&first);
                let table = dev.upload_i64(&table)?;
                dev.launch(
                    "adam_update_many_f32",
                    chunk_launch(chunks),
                    &mut [
                        Arg::In(&table, 0),
                        Arg::I32(n as i32),
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
            })
        })
    }
}
