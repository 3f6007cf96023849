//! The model against Hugging Face transformers' `CLIPModel` (values recorded
//! by `scripts/clip_moe/gen_fixtures.py`) and against candle-transformers'
//! CLIP on the same weights, with MoE off. Built with `--features cuda`, the
//! transformers comparison also runs on GPU 0.

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::clip as reference;
use clip_moe::{l2_normalize, load_model, ClipConfig};
use common::{
    devices, expected, fixture_config, fixture_dir, fixture_text, fixture_text_on, max_abs_diff,
};

const TOL: f32 = 1e-4;

#[test]
fn tiny_preset_is_the_fixture_config() {
    assert_eq!(fixture_config(), ClipConfig::tiny());
}

/// On the CPU, and on GPU 0 too under `--features cuda`.
#[test]
fn matches_transformers() -> anyhow::Result<()> {
    for device in devices()? {
        matches_transformers_on(&device)?;
    }
    Ok(())
}

fn matches_transformers_on(device: &Device) -> anyhow::Result<()> {
    let cfg = fixture_config();
    let loaded = load_model(&cfg, fixture_dir().join("model.safetensors"), device, true)?;
    assert!(loaded.report.is_exact(), "{:?}", loaded.report);
    let model = &loaded.model;
    let want = expected();
    let pixels = &want["pixel_values"].to_device(device)?;
    let text = fixture_text_on(&cfg, device);

    let out = model.forward(pixels, &text)?;
    let checks = [
        ("vision_pooled", model.vision_model().forward(pixels)?),
        ("text_pooled", model.text_model().forward(&text)?),
        ("image_features", model.image_features(pixels)?),
        ("text_features", model.text_features(&text)?),
        ("image_embeds", out.image_embeds),
        ("text_embeds", out.text_embeds),
        ("logits_per_image", out.logits_per_image),
        ("logits_per_text", out.logits_per_text),
    ];
    for (name, got) in checks {
        let diff = max_abs_diff(&got.to_device(&Device::Cpu)?, &want[name]);
        assert!(diff < TOL, "{name} on {device:?}: max |diff| {diff}");
    }
    Ok(())
}

#[test]
fn pooling_ignores_end_of_text_padding() -> anyhow::Result<()> {
    // Row 2 ("a photo of a cat") is padded with 9 copies of <|endoftext|>:
    // pooled at the first one, as transformers does.
    let cfg = fixture_config();
    let text = fixture_text(&cfg);
    assert_eq!(text.eos_positions(), &[10, 10, 6]);
    Ok(())
}

#[test]
fn matches_candle_transformers() -> anyhow::Result<()> {
    let cfg = fixture_config();
    let (t, v) = (&cfg.text_config, &cfg.vision_config);
    let ref_cfg = reference::ClipConfig {
        text_config: reference::text_model::ClipTextConfig {
            vocab_size: t.vocab_size,
            embed_dim: t.hidden_size,
            activation: reference::text_model::Activation::QuickGelu,
            intermediate_size: t.intermediate_size,
            max_position_embeddings: t.max_position_embeddings,
            pad_with: None,
            num_hidden_layers: t.num_hidden_layers,
            num_attention_heads: t.num_attention_heads,
            projection_dim: cfg.projection_dim,
        },
        vision_config: reference::vision_model::ClipVisionConfig {
            embed_dim: v.hidden_size,
            activation: reference::text_model::Activation::QuickGelu,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            projection_dim: cfg.projection_dim,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
        },
        logit_scale_init_value: cfg.logit_scale_init_value as f32,
        image_size: v.image_size,
    };
    let weights = fixture_dir().join("model.safetensors");
    // SAFETY: the fixture is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu)? };
    let reference = reference::ClipModel::new(vb, &ref_cfg)?;
    let ours = load_model(&cfg, &weights, &Device::Cpu, true)?.model;

    let want = expected();
    let pixels = &want["pixel_values"];
    let text = fixture_text(&cfg);
    // candle-transformers pools at argmax(ids): the same position here, since
    // <|endoftext|> is the largest id and CPU argmax returns the first maximum.
    let ids = text.input_ids();

    let diff = max_abs_diff(
        &ours.image_features(pixels)?,
        &reference.get_image_features(pixels)?,
    );
    assert!(diff < TOL, "image features: {diff}");
    let diff = max_abs_diff(
        &ours.text_features(&text)?,
        &reference.get_text_features(ids)?,
    );
    assert!(diff < TOL, "text features: {diff}");
    let (_, ref_logits_per_image) = reference.forward(pixels, ids)?;
    let out = ours.forward(pixels, &text)?;
    let diff = max_abs_diff(&out.logits_per_image, &ref_logits_per_image);
    assert!(diff < TOL, "logits: {diff}");
    let diff = max_abs_diff(
        &out.image_embeds,
        &l2_normalize(&reference.get_image_features(pixels)?)?,
    );
    assert!(diff < TOL, "image embeds: {diff}");
    Ok(())
}
