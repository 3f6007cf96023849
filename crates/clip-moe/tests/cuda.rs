//! The model on GPU 0 (`--features cuda` only): a CLIP with Soft MoE /
//! La-SoftMoE branches against the same weights on the CPU, loss and every
//! gradient (`parity.rs` compares the GPU with transformers too). On CUDA the
//! layers take candle's ops; on the CPU, this workspace's fused kernels.

#![cfg(feature = "cuda")]

mod common;

use candle_core::Device;
use clip_moe::MoeConfig;
use common::{assert_same_training_step, build_model, loss_and_gradients, tiny_moe_config};

#[test]
fn moe_model_on_gpu_matches_cpu_with_gradients() -> anyhow::Result<()> {
    let gpu = Device::new_cuda(0)?;
    for moe in [MoeConfig::la_soft_moe(), MoeConfig::soft_moe()] {
        let cfg = tiny_moe_config(moe);
        let (cpu_vars, cpu_model) = build_model(&cfg, &Device::Cpu, None)?;
        let (gpu_vars, gpu_model) = build_model(&cfg, &gpu, Some(&cpu_vars))?;
        let on_cpu = loss_and_gradients(&cpu_model, &cpu_vars, &Device::Cpu)?;
        let on_gpu = loss_and_gradients(&gpu_model, &gpu_vars, &gpu)?;
        assert_same_training_step(&format!("{:?}", cfg.moe.kind()), &on_cpu, &on_gpu, 1e-4);
    }
    Ok(())
}
