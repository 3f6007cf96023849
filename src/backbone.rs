//! Building the model a run trains: pretrained CLIP (hub id or local
//! directory) with freshly initialised MoE branches, or the demo's tiny CLIP
//! with seeded random weights; and choosing which parameters train.

use candle_core::{DType, Device, Var};
use candle_nn::VarMap;
use clip_moe::checkpoint::is_moe_parameter;
use clip_moe::hub::{resolve, HubOptions};
use clip_moe::{load_weights, ClipConfig, ClipModel, ClipTokenizer, LoadReport};

use crate::error::{Error, Result};
use crate::experiment::{FrozenPart, ModelConfig, ModelSource};
use crate::init::SeededVarMap;

/// A model ready to train.
pub struct Backbone {
    /// The model's configuration, MoE placement included.
    pub clip: ClipConfig,
    /// The model (every parameter a `Var` of `varmap`).
    pub model: ClipModel,
    /// Its parameters.
    pub varmap: VarMap,
    /// The tokenizer for the class prompts.
    pub tokenizer: ClipTokenizer,
    /// What loading pretrained weights did (`None` for the demo model).
    pub load_report: Option<LoadReport>,
}

/// Builds `cfg`'s model on `device`, weights drawn from `seed` where the
/// source does not provide them (the MoE branches; all of the demo model).
pub fn build(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Backbone> {
    let (clip, weights, tokenizer) = match &cfg.source {
        ModelSource::Pretrained { model } => {
            let files = resolve(model, &HubOptions::from_env())?;
            let clip = ClipConfig::from_file(&files.config)?.with_moe(cfg.moe.clone());
            let context = clip.text_config.max_position_embeddings;
            let tokenizer = ClipTokenizer::from_file(&files.tokenizer, context)?;
            (clip, Some(files.weights), tokenizer)
        }
        ModelSource::DemoTiny => {
            let clip = crate::demo::clip_config(cfg.moe.clone());
            let tokenizer = crate::demo::tokenizer(&clip)?;
            (clip, None, tokenizer)
        }
        ModelSource::RandomVitB16 => {
            let clip = ClipConfig::vit_base_patch16().with_moe(cfg.moe.clone());
            let tokenizer = crate::demo::tokenizer(&clip)?;
            (clip, None, tokenizer)
        }
    };
    clip.validate()?;
    if let Some(path) = &weights {
        clip_moe::check_config_against_file(&clip, path)?;
    }
    let seeded = SeededVarMap::new(seed);
    let model = ClipModel::new(&clip, seeded.var_builder(DType::F32, device))?;
    let varmap = seeded.varmap().clone();
    let load_report = match weights {
        Some(path) => {
            let report = load_weights(&varmap, &path, false)?;
            if !report.missing.is_empty() {
                return Err(Error::Model(clip_moe::Error::StrictLoad {
                    path,
                    missing: report.missing,
                    unexpected: report.unexpected,
                }));
            }
            if !report.unexpected.is_empty() {
                tracing::warn!(
                    "{} tensor(s) in {} are not model parameters and were ignored: {}",
                    report.unexpected.len(),
                    path.display(),
                    report.unexpected.join(", ")
                );
            }
            Some(report)
        }
        None => None,
    };
    Ok(Backbone {
        clip,
        model,
        varmap,
        tokenizer,
        load_report,
    })
}

/// Whether parameter `name` belongs to a frozen part.
pub fn is_frozen(name: &str, frozen: &[FrozenPart]) -> bool {
    frozen.iter().any(|part| match part {
        FrozenPart::Text => name.starts_with("text_model.") || name.starts_with("text_projection."),
        FrozenPart::VisionBackbone => {
            (name.starts_with("vision_model.") || name.starts_with("visual_projection."))
                && !is_moe_parameter(name)
        }
        FrozenPart::LogitScale => name == "logit_scale",
    })
}

/// The parameters that train, sorted by name.
pub fn trainable_vars(varmap: &VarMap, frozen: &[FrozenPart]) -> Vec<(String, Var)> {
    clip_moe::select_vars(varmap, &clip_moe::WeightSelection::All)
        .into_iter()
        .filter(|(name, _)| !is_frozen(name, frozen))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_parts_select_by_name() {
        let text = [FrozenPart::Text];
        assert!(is_frozen(
            "text_model.encoder.layers.0.mlp.fc1.weight",
            &text
        ));
        assert!(is_frozen("text_projection.weight", &text));
        assert!(!is_frozen("vision_model.embeddings.class_embedding", &text));
        let vision = [FrozenPart::VisionBackbone];
        assert!(is_frozen(
            "vision_model.encoder.layers.3.mlp.fc2.bias",
            &vision
        ));
        assert!(is_frozen("visual_projection.weight", &vision));
        assert!(!is_frozen("vision_model.encoder.layers.3.moe.phi", &vision));
        assert!(!is_frozen("logit_scale", &vision));
        assert!(is_frozen("logit_scale", &[FrozenPart::LogitScale]));
    }
}
