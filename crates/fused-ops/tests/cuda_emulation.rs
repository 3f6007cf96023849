//! This crate's CUDA kernels on the CPU emulator (`--features
//! cuda-emulation`: `cuda/fused_ops.cu` compiled as C++ and run thread by
//! thread, barriers and warp shuffles as on a GPU) against the candle
//! composites they replace: the cases `cuda_parity.rs` runs on a GPU
//! (`common/mod.rs`), values and every gradient, in F32 and BF16, through
//! the public API and the same host code a GPU runs. What a GPU adds
//! (its arithmetic, timing, the memory model, launch limits) still needs
//! `cuda_parity.rs` on one. The fused Adam step is checked against
//! `torch.optim` itself, bit for bit, and the sums of squares of many
//! tensors against f64 sums on the host, and their scaled copy into one
//! vector against the host's products.

#![cfg(feature = "cuda-emulation")]

mod common;

#[test]
fn emulated_cuda_kernels_match_the_composites() -> anyhow::Result<()> {
    // The composites on the CPU, not this crate's fused CPU kernels.
    fused_ops::set_fused_cpu_kernels(false);
    common::kernels_match_composites(&candle_core::Device::Cpu)?;
    // In this test: the CUDA switch is process-wide.
    common::adam::adam_matches_torch(&candle_core::Device::Cpu)?;
    common::sums::sums_of_squares_match(&candle_core::Device::Cpu)?;
    common::copy_scaled::copy_scaled_matches(&candle_core::Device::Cpu)?;
    common::layer_norm_takes_the_composite_for_broadcast_weights(&candle_core::Device::Cpu)
}
