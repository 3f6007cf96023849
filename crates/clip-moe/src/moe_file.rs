//! How a [`MoeConfig`] is written to and read from `config.json`: its own
//! layout (derived on the struct), and, read only, the flat layout of
//! versions up to commit c1a3118 (December 2026), so the `config.json` of
//! existing models, run directories and checkpoints keeps loading. An entry
//! with a `kind` field is the old layout.
//!
//! The old layout had the branch's options flat beside a `kind`, and
//! La-SoftMoE's options in a `linear_attention` field kept even for Soft
//! MoE. Its reader filled absent fields with the paper's placement, so this
//! one does too, from [`MoeConfig::paper_options`].

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use softmoe::{Activation, Combine, ExpertInit, LinearAttentionConfig};

use crate::moe_placement::{MoeConfig, MoeKind, MoeLayers};

/// The old layout. Unknown fields were accepted then and are now.
#[derive(Deserialize)]
struct LegacyMoeConfig {
    kind: MoeKind,
    layers: Option<MoeLayers>,
    num_experts: Option<usize>,
    slots_per_expert: Option<usize>,
    expert_hidden_dim: Option<usize>,
    expert_init: Option<ExpertInit>,
    activation: Option<Activation>,
    normalize: Option<bool>,
    linear_attention: Option<LinearAttentionConfig>,
}

impl From<LegacyMoeConfig> for MoeConfig {
    fn from(old: LegacyMoeConfig) -> Self {
        let paper = MoeConfig::paper_options();
        let combine = match old.kind {
            MoeKind::None => None,
            MoeKind::SoftMoe => Some(Combine::Softmax),
            MoeKind::LaSoftMoe => Some(Combine::LinearAttention(
                old.linear_attention.unwrap_or_default(),
            )),
        };
        MoeConfig {
            layers: old.layers.unwrap_or(MoeLayers::All),
            expert_hidden_dim: old.expert_hidden_dim,
            layer: combine.map(|combine| softmoe::SoftMoeOptions {
                num_experts: old.num_experts.unwrap_or(paper.num_experts),
                slots_per_expert: old.slots_per_expert.unwrap_or(paper.slots_per_expert),
                activation: old.activation.unwrap_or(paper.activation),
                normalize: old.normalize.unwrap_or(paper.normalize),
                combine,
                expert_init: old.expert_init.unwrap_or(paper.expert_init),
            }),
        }
    }
}

impl Serialize for MoeConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        MoeConfig::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for MoeConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let parsed = if value.get("kind").is_some() {
            LegacyMoeConfig::deserialize(value).map(Self::from)
        } else {
            MoeConfig::deserialize(value)
        };
        parsed.map_err(|e| serde::de::Error::custom(format!("in the MoE placement: {e}")))
    }
}
