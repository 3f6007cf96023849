//! The sum of squares of each of many tensors, as one F32 vector: the parts
//! of a global gradient norm.
//!
//! Composed of tensor operations, that is a square and a sum per tensor and
//! a concatenation of the results: for the ~470 gradients of ViT-B/16 with
//! La-SoftMoE experts and CLIP's text tower, some 1,400 kernel launches and
//! a gradient-sized temporary per tensor, every step. On a GPU a launch
//! costs the host microseconds while these kernels have little to do, so
//! the phase is bound by the launches. With the CUDA kernels on, it is two
//! launches (`sum_squares_chunks_f32`, `sum_squares_finish_f32` in
//! `cuda/fused_ops.cu`) and one upload of a table of the tensors' addresses,
//! whatever their number, reading each gradient once.
//!
//! Each sum is accumulated in F32 in a fixed order (per thread, per block
//! of 16,384 elements, then the blocks in order), so it is the same from
//! run to run, though not rounded as the composite rounds it.

use candle_core::{DType, Result, Tensor};

/// The sum of the squares of each tensor's elements, as an F32 vector with
/// one entry per tensor (its dtype converted to F32 first). A NaN or
/// infinite element makes its tensor's entry non-finite, as does a sum
/// past F32's range. Records no gradient.
///
/// With this crate's CUDA kernels on ([`crate::set_fused_cuda_kernels`])
/// and the tensors contiguous F32 on one CUDA device (or on the CPU under
/// `cuda-emulation`), it is two kernel launches; otherwise a square and a
/// sum per tensor and a concatenation. An empty list is an error (it has
/// no device).
pub fn sums_of_squares(tensors: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = tensors.first() else {
        candle_core::bail!("sums_of_squares: no tensors")
    };
    for t in tensors {
        if !t.device().same_device(first.device()) {
            candle_core::bail!(
                "sums_of_squares: tensors on {:?} and on {:?}",
                first.device().location(),
                t.device().location()
            )
        }
    }
    #[cfg(cuda_kernels)]
    if crate::kernel_launch::table_kernels_take(first.device(), tensors) {
        return kernel::run(tensors);
    }
    composite(tensors)
}

/// A square and a sum per tensor, concatenated: what a device without the
/// kernels runs. Scalars are flattened first (a sum over no dimension is a
/// zero-byte shape buffer on CUDA).
fn composite(tensors: &[&Tensor]) -> Result<Tensor> {
    let sums = tensors
        .iter()
        .map(|t| {
            t.detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .sqr()?
                .sum_keepdim(0)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&sums, 0)
}

#[cfg(cuda_kernels)]
mod kernel {
    use candle_core::op::BackpropOp;
    use candle_core::{DType, Layout, Result, Shape, Storage, StorageRef, Tensor};

    use crate::cuda_emulation::Emulator;
    use crate::kernel_launch::{chunk_launch, chunk_starts, elementwise_launch, Arg, KernelDevice};

    pub(super) fn run(tensors: &[&Tensor]) -> Result<Tensor> {
        // Read locks on every tensor's buffer, held through the launches.
        // Gradients that are views of one buffer (a data-parallel exchange)
        // take its lock once per view: readers share it, and no thread
        // writes gradients while a step reads them.
        let held: Vec<(StorageRef<'_>, &Layout)> =
            tensors.iter().map(|t| t.storage_and_layout()).collect();
        let mut starts = Vec::with_capacity(tensors.len());
        for (_, layout) in &held {
            match layout.contiguous_offsets() {
                Some((start, _)) => starts.push(start),
                None => candle_core::bail!("sums_of_squares: a non-contiguous tensor"),
            }
        }
        let lens: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
        let shape = Shape::from(tensors.len());
        let storage = match &*held[0].0 {
            Storage::Cuda(first) => {
                #[cfg(feature = "cuda")]
                {
                    let mut buffers = Vec::with_capacity(held.len());
                    for ((storage, _), at) in held.iter().zip(&starts) {
                        match &**storage {
                            Storage::Cuda(s) => buffers.push((s, *at)),
                            _ => candle_core::bail!("sums_of_squares: tensors on two devices"),
                        }
                    }
                    Storage::Cuda(launch(&first.device, &buffers, &lens)?)
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = first;
                    unreachable!("CUDA storage without the cuda feature")
                }
            }
            Storage::Cpu(_) => {
                let mut buffers = Vec::with_capacity(held.len());
                for ((storage, _), at) in held.iter().zip(&starts) {
                    match &**storage {
                        Storage::Cpu(s) => buffers.push((s, *at)),
                        _ => candle_core::bail!("sums_of_squares: tensors on two devices"),
                    }
                }
                Storage::Cpu(Emulator::finish(
                    launch(&Emulator, &buffers, &lens)?,
                    &shape,
                )?)
            }
            Storage::Metal(_) => candle_core::bail!("sums_of_squares: no Metal kernels"),
        };
        drop(held);
        Ok(Tensor::from_storage(
            storage,
            shape,
            BackpropOp::none(),
            false,
        ))
    }

    /// The two launches over `buffers` (each with its first element) of
    /// `lens` elements.
    fn launch<D: KernelDevice>(
        dev: &D,
        buffers: &[(&D::Storage, usize)],
        lens: &[usize],
    ) -> Result<D::Storage> {
        let n = buffers.len();
        let first = chunk_starts(lens);
        let chunks = first[n] as usize;
        let mut out = dev.alloc(DType::F32, n)?;
        // Never read when there are no chunks (all tensors empty).
        let mut partial = dev.alloc(DType::F32, chunks.max(1))?;
        dev.with_addresses(buffers, &mut |addresses| {
            let mut table = Vec::with_capacity(3 * n + 1);
            table.extend_from_slice(addresses);
            table.extend(lens.iter().map(|&len| len as i64));
            table.extend_from_slice(&first);
            let table = dev.upload_i64(&table)?;
            if chunks > 0 {
                dev.launch(
                    "sum_squares_chunks_f32",
                    chunk_launch(chunks),
                    &mut [
                        Arg::In(&table, 0),
                        Arg::I32(n as i32),
                        Arg::Out(&mut partial, 0),
                    ],
                )?;
            }
            dev.launch(
                "sum_squares_finish_f32",
                elementwise_launch(n),
                &mut [
                    Arg::In(&table, 0),
                    Arg::I32(n as i32),
                    Arg::In(&partial, 0),
                    Arg::Out(&mut out, 0),
                ],
            )
        })?;
        Ok(out)
    }
}
