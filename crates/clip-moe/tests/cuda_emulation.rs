//! The whole model on fused-ops' CUDA kernels, emulated on the CPU
//! (fused-ops' `cuda-emulation` feature: the kernels' source run thread by
//! thread), against the same model on candle's composite ops: loss and
//! every gradient of a training step with Soft MoE and La-SoftMoE branches
//! (the instance norm per token and per slot).
//! This is the code path `FUSED_OPS_CUDA=1` selects on a GPU (attention,
//! LayerNorm, the routing softmaxes and norms, elu + 1, the experts' and
//! MLPs' bias + activation), checked here without one; `cuda.rs` runs the
//! model on a GPU itself.
//!
//! A test binary of its own, since the switches are process-wide.

mod common;

use candle_core::Device;
use clip_moe::MoeConfig;
use common::{assert_same_training_step, build_model, loss_and_gradients, tiny_moe_config};
use softmoe::{Combine, InstanceNormAxis};

#[test]
fn emulated_cuda_kernels_take_the_composites_training_step() -> anyhow::Result<()> {
    // Both runs on the CPU without this workspace's fused CPU kernels: one
    // on candle's composites, one on the CUDA kernels.
    softmoe::set_fused_cpu_kernels(false);
    // La-SoftMoE as the paper's preset (instance norm per token), per slot
    // with an affine part (the norm along the tokens: the column kernel),
    // and Soft MoE.
    let mut per_slot = MoeConfig::la_soft_moe();
    if let Some(Combine::LinearAttention(la)) = per_slot.layer.as_mut().map(|o| &mut o.combine) {
        la.norm_axis = InstanceNormAxis::PerSlot;
        la.norm_affine = true;
    }
    for (name, moe) in [
        ("per token", MoeConfig::la_soft_moe()),
        ("per slot", per_slot),
        ("", MoeConfig::soft_moe()),
    ] {
        let cfg = tiny_moe_config(moe);
        let what = format!("{:?} {name}", cfg.moe.kind())
            .trim_end()
            .to_string();
        let (vars, model) = build_model(&cfg, &Device::Cpu, None)?;
        fused_ops::set_fused_cuda_kernels(false);
        let composite = loss_and_gradients(&model, &vars, &Device::Cpu)?;
        fused_ops::set_fused_cuda_kernels(true);
        let launched = fused_ops::cuda_emulation_launches();
        let kernels = loss_and_gradients(&model, &vars, &Device::Cpu)?;
        let launched = fused_ops::cuda_emulation_launches() - launched;
        fused_ops::set_fused_cuda_kernels(false);
        // Per block forward: 2 LayerNorms, attention, 2 bias + activations
        // at least; backward as many again: far more than 40 launches.
        println!("{what}: {launched} kernel launches");
        assert!(launched > 40, "{what}: only {launched} kernel launches");
        assert_same_training_step(&what, &composite, &kernels, 1e-4);
    }
    softmoe::set_fused_cpu_kernels(true);
    Ok(())
}
