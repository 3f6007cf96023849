//! This crate's CUDA kernels (`--features cuda`, GPU 0) against the candle
//! composites they replace, on the same GPU and the same inputs: the cases
//! of `common/mod.rs`, values and every gradient, in F32 and BF16; the
//! fused Adam step against `torch.optim`, bit for bit; and the sums of
//! squares of many tensors against f64 sums on the host, and their scaled copy into one
//! vector against the host's products.

#![cfg(feature = "cuda")]

mod common;

#[test]
fn cuda_kernels_match_the_composites() -> anyhow::Result<()> {
    let gpu = candle_core::Device::new_cuda(0)?;
    common::kernels_match_composites(&gpu)?;
    // In this test: the CUDA switch is process-wide.
    common::adam::adam_matches_torch(&gpu)?;
    common::sums::sums_of_squares_match(&gpu)?;
    common::copy_scaled::copy_scaled_matches(&gpu)?;
    common::layer_norm_takes_the_composite_for_broadcast_weights(&gpu)
}
