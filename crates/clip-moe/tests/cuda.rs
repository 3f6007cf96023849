//! The model on GPU 0 (`--features cuda` only): against transformers'
//! recorded values, and a CLIP with Soft MoE / La-SoftMoE branches against
//! the same weights on the CPU, loss and every gradient. On CUDA the layers
//! take candle's ops; on the CPU, this workspace's fused kernels.

#![cfg(feature = "cuda")]

mod common;

use candle_core::Device;
use clip_moe::{load_model, MoeConfig, TextInput};
use common::{
    assert_same_training_step, build_model, expected, fixture_config, fixture_dir, id_rows,
    loss_and_gradients, max_abs_diff, tiny_moe_config,
};

#[test]
fn matches_transformers_on_gpu() -> anyhow::Result<()> {
    let gpu = Device::new_cuda(0)?;
    let cfg = fixture_config();
    let loaded = load_model(&cfg, fixture_dir().join("model.safetensors"), &gpu, true)?;
    assert!(loaded.report.is_exact(), "{:?}", loaded.report);
    let want = expected();
    let pixels = want["pixel_values"].to_device(&gpu)?;
    let text = TextInput::new(
        &id_rows(&want["input_ids"]),
        cfg.text_config.end_of_text_id(),
        &gpu,
    )?;
    let out = loaded.model.forward(&pixels, &text)?;
    for (name, got) in [
        ("image_embeds", &out.image_embeds),
        ("text_embeds", &out.text_embeds),
        ("logits_per_image", &out.logits_per_image),
    ] {
        let diff = max_abs_diff(&got.to_device(&Device::Cpu)?, &want[name]);
        assert!(diff < 1e-4, "{name}: max |diff| {diff}");
    }
    Ok(())
}

#[test]
fn moe_model_on_gpu_matches_cpu_with_gradients() -> anyhow::Result<()> {
    let gpu = Device::new_cuda(0)?;
    for moe in [MoeConfig::la_soft_moe(), MoeConfig::soft_moe()] {
        let cfg = tiny_moe_config(moe);
        let (cpu_vars, cpu_model) = build_model(&cfg, &Device::Cpu, None)?;
        let (gpu_vars, gpu_model) = build_model(&cfg, &gpu, Some(&cpu_vars))?;
        let on_cpu = loss_and_gradients(&cpu_model, &cpu_vars, &Device::Cpu)?;
        let on_gpu = loss_and_gradients(&gpu_model, &gpu_vars, &gpu)?;
        assert_same_training_step(&format!("{:?}", cfg.moe.kind), &on_cpu, &on_gpu, 1e-4);
    }
    Ok(())
}
