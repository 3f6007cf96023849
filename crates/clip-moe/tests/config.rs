//! Configuration parsing: the bundled ViT-B/16 preset against
//! `openai/clip-vit-base-patch16`'s `config.json` (tests/fixtures/openai/,
//! see its README), legacy and compact layouts, and the MoE entry.

use std::path::PathBuf;

use clip_moe::{ClipConfig, Error, MoeConfig, MoeKind, MoeLayers};
use softmoe::{Activation, Combine, ExpertInit, FeatureMap, LinearAttentionConfig, SoftMoeOptions};

fn openai(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/openai")
        .join(name)
}

#[test]
fn vit_base_patch16_preset_is_the_published_config() -> anyhow::Result<()> {
    let preset = ClipConfig::vit_base_patch16();
    for file in ["config_compact.json", "config_legacy.json"] {
        let cfg = ClipConfig::from_file(openai(file))?;
        assert_eq!(cfg, preset, "{file}");
    }
    let v = &preset.vision_config;
    assert_eq!(
        (
            v.hidden_size,
            v.num_hidden_layers,
            v.num_attention_heads,
            v.intermediate_size
        ),
        (768, 12, 12, 3072)
    );
    assert_eq!(
        (v.patch_size, v.image_size, v.num_positions()),
        (16, 224, 197)
    );
    let t = &preset.text_config;
    assert_eq!(
        (
            t.vocab_size,
            t.hidden_size,
            t.num_attention_heads,
            t.num_hidden_layers
        ),
        (49408, 512, 8, 12)
    );
    assert_eq!((t.intermediate_size, t.max_position_embeddings), (2048, 77));
    assert_eq!(preset.projection_dim, 512);
    // The legacy eos_token_id 2 resolves to CLIP's <|endoftext|>.
    assert_eq!((t.eos_token_id, t.end_of_text_id()), (2, 49407));
    assert_eq!(preset.moe, MoeConfig::none());
    Ok(())
}

#[test]
fn moe_entry_round_trips() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = ClipConfig::vit_base_patch16().with_moe(MoeConfig {
        layers: MoeLayers::Last(6),
        ..MoeConfig::soft_moe()
    });
    let path = dir.path().join("config.json");
    cfg.save(&path)?;
    let back = ClipConfig::from_file(&path)?;
    assert_eq!(back, cfg);
    assert_eq!(back.moe.kind(), MoeKind::SoftMoe);
    Ok(())
}

#[test]
fn errors_name_the_file_and_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"vision_config": {"patch_size": 15}}"#)?;
    let err = ClipConfig::from_file(&path).unwrap_err();
    assert!(
        err.to_string().contains("vision_config.image_size"),
        "{err}"
    );
    std::fs::write(&path, r#"{"vision_config": {"hidden_act": "relu"}}"#)?;
    let err = ClipConfig::from_file(&path).unwrap_err();
    assert!(matches!(err, Error::ConfigParse { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
    let err = ClipConfig::from_file(dir.path().join("absent.json")).unwrap_err();
    assert!(err.to_string().contains("absent.json"), "{err}");
    Ok(())
}

/// `config.json` files written by the version before the MoE placement took
/// its options from `softmoe` (commit c1a3118; `fixtures/legacy_moe/`), read
/// back as the values they were written from.
#[test]
fn legacy_moe_entries_keep_loading() -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy_moe");
    let load = |name: &str| ClipConfig::from_file(dir.join(name));

    let custom = load("clip_la_custom.json")?;
    let options = SoftMoeOptions {
        num_experts: 3,
        slots_per_expert: 5,
        activation: Activation::QuickGelu,
        normalize: false,
        combine: Combine::LinearAttention(LinearAttentionConfig {
            feature_map: FeatureMap::Relu,
            normalizer_eps: None,
            ..LinearAttentionConfig::default()
        }),
        expert_init: ExpertInit::Normal { std: 0.02 },
    };
    let want = MoeConfig {
        layers: MoeLayers::List(vec![0, 1]),
        expert_hidden_dim: Some(24),
        layer: Some(options),
    };
    assert_eq!(custom, ClipConfig::tiny().with_moe(want));

    let soft = load("clip_soft_last1.json")?;
    let want = MoeConfig {
        layers: MoeLayers::Last(1),
        ..MoeConfig::soft_moe()
    };
    assert_eq!(soft, ClipConfig::tiny().with_moe(want));
    assert_eq!(load("clip_none.json")?, ClipConfig::tiny());

    // Saved again, they are written in the current layout and read back equal.
    let out = tempfile::tempdir()?;
    for cfg in [custom, soft] {
        let path = out.path().join("config.json");
        cfg.save(&path)?;
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        assert!(json["moe"].get("kind").is_none(), "{}", json["moe"]);
        assert_eq!(ClipConfig::from_file(&path)?, cfg);
    }
    Ok(())
}
