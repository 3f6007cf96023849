//! The contiguous F32 elements behind a tensor's storage, for this crate's
//! fused CPU kernels (attention, LayerNorm). Errors name the op and the
//! operand.

use candle_core::{CpuStorage, Layout, Result, Storage};

/// The elements of a contiguous F32 CPU storage.
pub(crate) fn f32_elements<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: {what} must be an F32 tensor")
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// [`f32_elements`] of a storage that must also live on the CPU.
pub(crate) fn cpu_f32_elements<'a>(
    storage: &'a Storage,
    layout: &Layout,
    op: &str,
    what: &str,
) -> Result<&'a [f32]> {
    let Storage::Cpu(storage) = storage else {
        candle_core::bail!("{op}: {what} must be a CPU tensor")
    };
    f32_elements(storage, layout, op, what)
}
