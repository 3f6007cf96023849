//! This crate's CUDA kernels (`--features cuda`, GPU 0) against the candle
//! composites they replace, on the same GPU and the same inputs: the cases
//! of `common/mod.rs`, values and every gradient, in F32 and BF16.

#![cfg(feature = "cuda")]

mod common;

#[test]
fn cuda_kernels_match_the_composites() -> anyhow::Result<()> {
    common::kernels_match_composites(&candle_core::Device::new_cuda(0)?)
}
