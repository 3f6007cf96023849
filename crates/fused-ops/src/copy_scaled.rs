//! Many tensors copied into one vector, each at its own offset and
//! multiplied by one scale: a data-parallel rank's gradients written into
//! its exchange buffer, divided by the world size so that the collective's
//! sum is the mean.
//!
//! Composed of tensor operations that is a scale (a gradient-sized
//! temporary) and a copy per tensor: for the ~470 gradients of ViT-B/16
//! with La-SoftMoE experts and CLIP's text tower, some 940 launches and
//! 1.5 GB of temporaries a step, each gradient read twice and written
//! twice. With the CUDA kernels on it is one launch (`copy_scaled_f32` in
//! `cuda/fused_ops.cu`) over a table of the tensors' addresses, each
//! gradient read once and written once into the vector.

use candle_core::{DType, Result, Tensor};

/// Writes each `(part, offset)`'s elements, in row-major order, times
/// `scale`, into `dst` from element `offset`, leaving the rest of `dst` as
/// it was. `dst` is a contiguous F32 vector; the parts are converted to
/// F32 first. A scale of 1 copies exactly (a NaN's payload aside: a GPU's
/// product gives the canonical NaN); another rounds each product once, as
/// candle's `affine(scale, 0)` does (which turns -0 into +0; the kernel
/// keeps -0).
///
/// A part that does not fit in `dst`, parts that overlap, a part on
/// another device or in `dst`'s own buffer is an error (nothing is
/// written). With this crate's CUDA kernels on
/// ([`crate::set_fused_cuda_kernels`]), `dst` on a CUDA device (or the CPU
/// under `cuda-emulation`) and every part contiguous F32, it is one kernel
/// launch; otherwise a scale and a copy per part.
pub fn copy_scaled_into(dst: &Tensor, parts: &[(&Tensor, usize)], scale: f64) -> Result<()> {
    check(dst, parts)?;
    #[cfg(cuda_kernels)]
    if kernels_take(dst, parts) {
        return kernel::run(dst, parts, scale as f32);
    }
    for (part, offset) in parts {
        let mut values = part.detach().to_dtype(DType::F32)?.flatten_all()?;
        if scale != 1.0 {
            values = values.affine(scale, 0.0)?;
        }
        dst.slice_set(&values.contiguous()?, 0, *offset)?;
    }
    Ok(())
}

/// `dst` a contiguous F32 vector, every part inside it on its device, and
/// no two parts overlapping.
fn check(dst: &Tensor, parts: &[(&Tensor, usize)]) -> Result<()> {
    if dst.rank() != 1 || dst.dtype() != DType::F32 || !dst.is_contiguous() {
        candle_core::bail!(
            "copy_scaled_into: the destination is a {:?} {:?} tensor, not a contiguous F32 vector",
            dst.dims(),
            dst.dtype()
        )
    }
    let len = dst.elem_count();
    let own = crate::dispatch::buffer_address(dst);
    for (i, (part, offset)) in parts.iter().enumerate() {
        // The kernel holds the destination's buffer for writing while it
        // reads the parts' (a second lock on one buffer would wait for
        // ever), and the composite's copies would read what earlier parts
        // wrote.
        if crate::dispatch::buffer_address(part) == own {
            candle_core::bail!("copy_scaled_into: part {i} is a view of the destination")
        }
        if !part.device().same_device(dst.device()) {
            candle_core::bail!(
                "copy_scaled_into: part {i} is on {:?}, the destination on {:?}",
                part.device().location(),
                dst.device().location()
            )
        }
        if offset
            .checked_add(part.elem_count())
            .is_none_or(|end| end > len)
        {
            candle_core::bail!(
                "copy_scaled_into: part {i} ({} elements from {offset}) passes the end of the \
                 {len}-element destination",
                part.elem_count()
            )
        }
    }
    let mut order: Vec<usize> = (0..parts.len())
        .filter(|&i| parts[i].0.elem_count() > 0)
        .collect();
    order.sort_by_key(|&i| parts[i].1);
    for pair in order.windows(2) {
        let (a, b) = (parts[pair[0]], parts[pair[1]]);
        if a.1 + a.0.elem_count() > b.1 {
            candle_core::bail!(
                "copy_scaled_into: parts {} and {} overlap in the destination",
                pair[0].min(pair[1]),
                pair[0].max(pair[1])
            )
        }
    }
    Ok(())
}

/// Whether the kernel takes the copy: `dst` on a CUDA device (the CPU
/// under emulation) and the parts as the table kernels take them.
#[cfg(cuda_kernels)]
fn kernels_take(dst: &Tensor, parts: &[(&Tensor, usize)]) -> bool {
    let tensors: Vec<&Tensor> = parts.iter().map(|(t, _)| *t).collect();
    crate::kernel_launch::table_kernels_take(dst.device(), &tensors)
}

#[cfg(cuda_kernels)]
mod kernel {
    use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};

    use crate::cuda_emulation::Emulator;
    #[cfg(feature = "cuda")]
    use crate::held_buffers::cuda_storage;
    use crate::held_buffers::{cpu_storage, HeldBuffers};
    use crate::kernel_launch::{chunk_launch, chunk_starts, start, Arg, KernelDevice};

    const NAME: &str = "copy_scaled_into";

    pub(super) fn run(dst: &Tensor, parts: &[(&Tensor, usize)], scale: f32) -> Result<()> {
        if parts.iter().all(|(t, _)| t.elem_count() == 0) {
            return Ok(());
        }
        dst.inplace_op1(&Pack { parts, scale })
    }

    /// The in-place op on the destination: its buffer held for writing,
    /// the parts' for reading (other buffers, checked before), each buffer
    /// locked once however many parts view it.
    struct Pack<'a> {
        parts: &'a [(&'a Tensor, usize)],
        scale: f32,
    }

    impl<'a> Pack<'a> {
        /// Read locks on the parts' buffers, one per buffer.
        fn held(&self) -> Result<HeldBuffers<'a>> {
            let tensors: Vec<&'a Tensor> = self.parts.iter().map(|(t, _)| *t).collect();
            HeldBuffers::new(&tensors, NAME)
        }
    }

    impl InplaceOp1 for Pack<'_> {
        fn name(&self) -> &'static str {
            NAME
        }

        fn cpu_fwd(&self, dst: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let at = start(layout, NAME, "the destination")?;
            let held = self.held()?;
            let buffers = held.buffers(cpu_storage, NAME)?;
            launch(&Emulator, (dst, at), &buffers, self.parts, self.scale)
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(&self, dst: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
            let at = start(layout, NAME, "the destination")?;
            let held = self.held()?;
            let buffers = held.buffers(cuda_storage, NAME)?;
            let device = dst.device.clone();
            launch(&device, (dst, at), &buffers, self.parts, self.scale)
        }
    }

    /// One launch over the parts (`buffers`, each with its first element)
    /// into `dst` from element `at`.
    fn launch<D: KernelDevice>(
        dev: &D,
        (dst, at): (&mut D::Storage, usize),
        buffers: &[(&D::Storage, usize)],
        parts: &[(&Tensor, usize)],
        scale: f32,
    ) -> Result<()> {
        let n = parts.len();
        let lens: Vec<usize> = parts.iter().map(|(t, _)| t.elem_count()).collect();
        let first = chunk_starts(&lens);
        let chunks = first[n] as usize;
        dev.with_addresses(buffers, &mut |addresses| {
            let mut table = Vec::with_capacity(4 * n + 1);
            table.extend_from_slice(addresses);
            table.extend(lens.iter().map(|&len| len as i64));
            table.extend(parts.iter().map(|(_, offset)| *offset as i64));
            table.extend_from_slice(&first);
            let table = dev.upload_i64(&table)?;
            dev.launch(
                "copy_scaled_f32",
                chunk_launch(chunks),
                &mut [
                    Arg::In(&table, 0),
                    Arg::I32(n as i32),
                    Arg::InPlace(&mut *dst, at),
                    Arg::F32(scale),
                ],
            )
        })
    }
}
