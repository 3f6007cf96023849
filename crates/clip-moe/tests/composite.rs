//! The whole model with the fused CPU kernels (attention, LayerNorm and
//! `softmoe`'s) against the same model on candle's composite ops, the code
//! path a GPU runs (`softmoe::set_fused_cpu_kernels(false)`): loss and every
//! gradient of a training step, with Soft MoE and La-SoftMoE branches.
//! `cuda.rs` compares the GPU itself under `--features cuda`.
//!
//! A test binary of its own, since the switch is process-wide.

mod common;

use candle_core::Device;
use clip_moe::MoeConfig;
use common::{assert_same_training_step, build_model, loss_and_gradients, tiny_moe_config};

#[test]
fn fused_kernels_and_composites_take_the_same_training_step() -> anyhow::Result<()> {
    for moe in [MoeConfig::la_soft_moe(), MoeConfig::soft_moe()] {
        let cfg = tiny_moe_config(moe);
        let (vars, model) = build_model(&cfg, &Device::Cpu, None)?;
        softmoe::set_fused_cpu_kernels(true);
        let fused = loss_and_gradients(&model, &vars, &Device::Cpu)?;
        softmoe::set_fused_cpu_kernels(false);
        let composite = loss_and_gradients(&model, &vars, &Device::Cpu)?;
        softmoe::set_fused_cpu_kernels(true);
        assert_same_training_step(&format!("{:?}", cfg.moe.kind()), &fused, &composite, 1e-4);
    }
    Ok(())
}
