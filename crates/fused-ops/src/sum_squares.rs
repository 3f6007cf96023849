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
//!
//! On the CPU the composite squares each gradient into a temporary and
//! sums that: measured at 106 ms for the 314 M gradient elements of the
//! vision tower with La-SoftMoE, 5 % of its backward at batch 2 on two
//! cores (`docs/benchmarks.md`). The fused CPU pass reads each gradient
//! once, in parallel blocks whose sums, in f64, are added in order: the
//! same bits whatever the thread count, within an F32 rounding of the
//! exact sum.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel block of the fused CPU pass.
const CPU_BLOCK: usize = 16_384;

/// The sum of the squares of each tensor's elements, as an F32 vector with
/// one entry per tensor (its dtype converted to F32 first). A NaN or
/// infinite element makes its tensor's entry non-finite, as does a sum
/// past F32's range. Records no gradient.
///
/// With this crate's CUDA kernels on ([`crate::set_fused_cuda_kernels`])
/// and the tensors contiguous F32 on one CUDA device (or on the CPU under
/// `cuda-emulation`), it is two kernel launches; contiguous F32 tensors on
/// the CPU take one fused pass (unless [`crate::set_fused_cpu_kernels`] is
/// off); otherwise a square and a sum per tensor and a concatenation. An
/// empty list is an error (it has no device).
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
    if crate::fused_cpu_kernels()
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
    {
        return cpu_fused(tensors);
    }
    composite(tensors)
}

/// One pass over each tensor: blocks of [`CPU_BLOCK`] elements in
/// parallel, each summed in f64 (eight lanes, for the vector units), the
/// blocks' sums added in order, the total rounded to F32.
fn cpu_fused(tensors: &[&Tensor]) -> Result<Tensor> {
    let mut sums = Vec::with_capacity(tensors.len());
    for t in tensors {
        let (storage, layout) = t.storage_and_layout();
        let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("sums_of_squares: not a contiguous F32 CPU tensor")
        };
        let blocks: Vec<f64> = data[start..end]
            .par_chunks(CPU_BLOCK)
            .map(block_sum_of_squares)
            .collect();
        sums.push(blocks.iter().sum::<f64>() as f32);
    }
    Tensor::from_vec(sums, tensors.len(), &candle_core::Device::Cpu)
}

fn block_sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut groups = x.chunks_exact(8);
    for group in &mut groups {
        for (lane, &v) in lanes.iter_mut().zip(group) {
            *lane += f64::from(v) * f64::from(v);
        }
    }
    let rest: f64 = groups
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    lanes.iter().sum::<f64>() + rest
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
    use candle_core::{DType, Result, Shape, Storage, Tensor};

    use crate::cuda_emulation::Emulator;
    #[cfg(feature = "cuda")]
    use crate::held_buffers::cuda_storage;
    use crate::held_buffers::{cpu_storage, HeldBuffers};
    use crate::kernel_launch::{chunk_launch, chunk_starts, elementwise_launch, Arg, KernelDevice};

    const NAME: &str = "sums_of_squares";

    pub(super) fn run(tensors: &[&Tensor]) -> Result<Tensor> {
        // Read locks on the tensors' buffers, held through the launches.
        let held = HeldBuffers::new(tensors, NAME)?;
        let lens: Vec<usize> = tensors.iter().map(|t| t.elem_count()).collect();
        let shape = Shape::from(tensors.len());
        let storage = match held.first() {
            #[cfg(feature = "cuda")]
            Some(Storage::Cuda(first)) => {
                let buffers = held.buffers(cuda_storage, NAME)?;
                Storage::Cuda(launch(&first.device, &buffers, &lens)?)
            }
            Some(Storage::Cpu(_)) => {
                let buffers = held.buffers(cpu_storage, NAME)?;
                Storage::Cpu(Emulator::finish(
                    launch(&Emulator, &buffers, &lens)?,
                    &shape,
                )?)
            }
            _ => candle_core::bail!("{NAME}: no kernels for these tensors' device"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The sums in f64 on the host: the definition.
    fn reference(tensors: &[&Tensor]) -> Vec<f64> {
        tensors
            .iter()
            .map(|t| {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|&x| f64::from(x) * f64::from(x)).sum()
            })
            .collect()
    }

    /// The fused CPU pass is the exact sum rounded to F32 (within an ulp:
    /// its f64 additions round too), agrees with the composite, and runs
    /// for contiguous F32 CPU tensors only.
    #[test]
    fn the_fused_cpu_pass_is_the_rounded_exact_sum() -> Result<()> {
        let cpu = Device::Cpu;
        let mut owned = Vec::new();
        for (i, n) in [0, 1, 7, 8, 9, CPU_BLOCK, CPU_BLOCK + 1, 3 * CPU_BLOCK + 5]
            .into_iter()
            .enumerate()
        {
            owned.push(Tensor::randn(0f32, 0.5 + i as f32, n, &cpu)?);
        }
        owned.push(Tensor::new(-2.5f32, &cpu)?);
        owned.push(Tensor::randn(0f32, 0.02, (768, 65), &cpu)?);
        let flat = Tensor::randn(0f32, 1.0, CPU_BLOCK + 900, &cpu)?;
        owned.push(flat.narrow(0, 300, CPU_BLOCK + 11)?);
        let tensors: Vec<&Tensor> = owned.iter().collect();
        let ours = cpu_fused(&tensors)?.to_vec1::<f32>()?;
        let composite = composite(&tensors)?.to_vec1::<f32>()?;
        for (i, (ours, exact)) in ours.iter().zip(reference(&tensors)).enumerate() {
            let rounded = exact as f32;
            let ulp = (f32::from_bits(rounded.to_bits() + 1) - rounded).max(f32::MIN_POSITIVE);
            assert!(
                (ours - rounded).abs() <= ulp,
                "[{i}]: {ours:e}, exact {exact:e}"
            );
            assert!(
                (ours - composite[i]).abs() <= 1e-5 * ours.abs(),
                "[{i}]: {ours:e}, composite {:e}",
                composite[i]
            );
        }
        // The public function takes the pass for these, the composite for a
        // transposed matrix: both right.
        let transposed = owned[9].t()?;
        let mixed = [&owned[3], &transposed];
        let public = sums_of_squares(&mixed)?.to_vec1::<f32>()?;
        for (got, exact) in public.iter().zip(reference(&mixed)) {
            assert!(
                (f64::from(*got) - exact).abs() <= 1e-5 * exact,
                "{got:e} vs {exact:e}"
            );
        }
        Ok(())
    }

    /// An empty list has no device to put its sums on: an error, not an
    /// empty tensor on a guessed device.
    #[test]
    fn an_empty_list_is_an_error() {
        let err = sums_of_squares(&[]).unwrap_err().to_string();
        assert!(err.contains("no tensors"), "{err}");
    }

    /// A NaN or an infinity shows in its own tensor's sum only, and a
    /// finite value whose square passes F32's range gives infinity.
    #[test]
    fn non_finite_values_stay_in_their_sum() -> Result<()> {
        let cpu = Device::Cpu;
        let with = |at: usize, v: f32| {
            let mut x = vec![0.5f32; 40_000];
            x[at] = v;
            Tensor::from_vec(x, 40_000, &cpu)
        };
        let (nan, inf, big, fine) = (
            with(20_000, f32::NAN)?,
            with(39_999, f32::NEG_INFINITY)?,
            with(0, 2e19)?,
            with(0, 0.5)?,
        );
        let sums = cpu_fused(&[&nan, &inf, &big, &fine])?.to_vec1::<f32>()?;
        assert!(sums[0].is_nan());
        assert_eq!(sums[1], f32::INFINITY);
        assert_eq!(sums[2], f32::INFINITY);
        assert_eq!(sums[3], 10_000.0);
        Ok(())
    }
}
