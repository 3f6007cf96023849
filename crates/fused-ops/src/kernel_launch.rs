//! What the host side of this crate's CUDA kernels needs from a device, and
//! the launch geometry every op shares.
//!
//! The ops in `cuda_ops.rs` are written once against [`KernelDevice`]: a
//! CUDA device runs them (`cuda_device.rs`, `--features cuda`), and so does
//! the CPU emulator (`cuda_emulation.rs`, `--features cuda-emulation`), which
//! compiles `cuda/fused_ops.cu` as C++ and runs its kernels thread by thread.
//! The emulator lets a machine without a GPU test the kernels, the launch
//! geometry and the host code around them through the public API.

use candle_core::backend::BackendStorage;
use candle_core::{DType, Result};

/// A kernel argument, in the order of the kernel's signature.
pub(crate) enum Arg<'a, S> {
    /// A contiguous operand the kernel reads, from element `start`.
    In(&'a S, usize),
    /// A buffer the kernel writes, from element `start`.
    Out(&'a mut S, usize),
    /// A caller's buffer the kernel updates in place, from element `start`
    /// (an `Out` the op did not allocate, so without guard elements of its
    /// own: the emulator hands the kernel a guarded copy).
    InPlace(&'a mut S, usize),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Grid and block dimensions of a launch, `(x, y, z)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grid {
    pub(crate) grid: (u32, u32, u32),
    pub(crate) block: (u32, u32, u32),
}

/// A device that allocates kernel buffers and launches this crate's kernels.
pub(crate) trait KernelDevice {
    /// The device's storage (candle's `CudaStorage` or `CpuStorage`).
    type Storage: BackendStorage;

    /// `n` elements of `dtype` that the next kernels fill. Uninitialised on
    /// a GPU; NaN under emulation, so an element no kernel wrote shows.
    fn alloc(&self, dtype: DType, n: usize) -> Result<Self::Storage>;

    /// Runs `kernel` (its full name, dtype suffix included) over `grid`.
    fn launch(&self, kernel: &str, grid: Grid, args: &mut [Arg<'_, Self::Storage>]) -> Result<()>;

    /// A buffer holding `values`: a table of counts and buffer addresses
    /// for a kernel that reads many buffers in one launch.
    fn upload_i64(&self, values: &[i64]) -> Result<Self::Storage>;

    /// Runs `f` with the address at which a kernel finds element `at` of
    /// each F32 or BF16 buffer, for a table that `f` uploads and launches
    /// kernels on. The buffers stay borrowed until `f` returns, and on a
    /// GPU their use is recorded on candle's stream once the launches are
    /// queued, as for a launch's own buffer arguments. Kernels only read
    /// through these addresses.
    fn with_addresses(
        &self,
        buffers: &[(&Self::Storage, usize)],
        f: &mut dyn FnMut(&[i64]) -> Result<()>,
    ) -> Result<()>;

    /// [`KernelDevice::with_addresses`] for F32 buffers that the kernels in
    /// `f` write through the table: held exclusively until `f` returns, and
    /// on a GPU their use recorded as a write.
    fn with_write_addresses(
        &self,
        buffers: &mut [(&mut Self::Storage, usize)],
        f: &mut dyn FnMut(&[i64]) -> Result<()>,
    ) -> Result<()>;
}

/// The first element of operand `what` of `op`, which must be contiguous.
pub(crate) fn start(l: &candle_core::Layout, op: &str, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((start, _)) => Ok(start),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// The kernel name for `dtype`: `{kernel}_f32` or `{kernel}_bf16`.
pub(crate) fn kernel_name(kernel: &str, dtype: DType, op: &str) -> Result<String> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        other => candle_core::bail!("{op}: CUDA kernels run in F32 and BF16, not {other:?}"),
    };
    Ok(format!("{kernel}_{suffix}"))
}

/// Threads per row: a multiple of 32 covering the row, at most 512.
fn block_for(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 512) as u32
}

/// One block per row of `cols`.
pub(crate) fn row_launch(rows: usize, cols: usize) -> Grid {
    Grid {
        grid: (rows as u32, 1, 1),
        block: (block_for(cols), 1, 1),
    }
}

/// One thread per element, 256 to a block.
pub(crate) fn elementwise_launch(n: usize) -> Grid {
    Grid {
        grid: (n.div_ceil(256) as u32, 1, 1),
        block: (256, 1, 1),
    }
}

/// Elements per block of the kernels that walk many buffers through a table
/// (`TABLE_CHUNK` in `cuda/fused_ops.cu`).
pub(crate) const TABLE_CHUNK: usize = 16_384;

/// Each buffer's first chunk of [`TABLE_CHUNK`] elements, for buffers of
/// `lens` elements, and the total after the last (`lens.len() + 1`
/// entries): the part of a table that maps a block to its buffer.
pub(crate) fn chunk_starts(lens: &[usize]) -> Vec<i64> {
    let mut first = Vec::with_capacity(lens.len() + 1);
    let mut chunks = 0usize;
    for len in lens {
        first.push(chunks as i64);
        chunks += len.div_ceil(TABLE_CHUNK);
    }
    first.push(chunks as i64);
    first
}

/// Whether the table kernels take `tensors` on `device`: the switch on, a
/// CUDA device (the CPU under emulation), every tensor contiguous F32, at
/// most 2^30 tensors (the kernels' 32-bit indices) and a chunk count the
/// grid holds.
pub(crate) fn table_kernels_take(
    device: &candle_core::Device,
    tensors: &[&candle_core::Tensor],
) -> bool {
    let chunks: usize = tensors
        .iter()
        .map(|t| t.elem_count().div_ceil(TABLE_CHUNK))
        .sum();
    crate::fused_cuda_kernels()
        && (device.is_cuda() || (cfg!(feature = "cuda-emulation") && device.is_cpu()))
        && tensors.len() <= 1 << 30
        && chunks <= i32::MAX as usize
        && tensors
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.is_contiguous())
}

/// One block of 256 threads per chunk: `chunks` blocks.
pub(crate) fn chunk_launch(chunks: usize) -> Grid {
    Grid {
        grid: (chunks as u32, 1, 1),
        block: (256, 1, 1),
    }
}

/// Rows per block of the parameter-gradient reductions.
const ROWS_PER_CHUNK: usize = 64;

/// Rows per block of a column reduction over `rows`: at least
/// [`ROWS_PER_CHUNK`], more when the chunks would exceed the grid's 65535
/// in y.
pub(crate) fn rows_per_chunk(rows: usize) -> usize {
    ROWS_PER_CHUNK.max(rows.div_ceil(65_535))
}

/// Column tiles of 256 threads (x) over `chunks` row chunks (y) of
/// `groups` groups (z): the first half of a parameter-gradient reduction.
pub(crate) fn chunked_launch(cols: usize, chunks: usize, groups: usize) -> Grid {
    Grid {
        grid: (cols.div_ceil(256) as u32, chunks as u32, groups as u32),
        block: (256, 1, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_stays_inside_cuda_limits() {
        assert_eq!(row_launch(5, 7).block, (32, 1, 1));
        assert_eq!(row_launch(5, 197).block, (224, 1, 1));
        assert_eq!(row_launch(5, 4096).block, (512, 1, 1));
        assert_eq!(rows_per_chunk(10), 64);
        // 5M rows: chunks stay within the grid's 65535 in y.
        let rows: usize = 5_000_000;
        assert!(rows.div_ceil(rows_per_chunk(rows)) <= 65_535);
        assert_eq!(elementwise_launch(257).grid, (2, 1, 1));
    }
}
