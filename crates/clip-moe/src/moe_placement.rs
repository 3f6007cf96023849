//! Where the vision tower gets a Soft MoE / La-SoftMoE branch, and of what
//! shape (paper Figure 2 and Algorithm 1: in every one of the 12 residual
//! blocks, parallel with the MLP, 4 experts x 49 slots).

use serde::{Deserialize, Serialize};
use softmoe::{Activation, Combine, ExpertInit, LinearAttentionConfig, SoftMoeConfig};

use crate::error::{Error, Result};

/// Which MoE layer, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeKind {
    /// Plain CLIP.
    None,
    /// Soft MoE (Puigcerver et al.): softmax combine weights.
    SoftMoe,
    /// La-SoftMoE (the paper): linear attention + instance norm combine.
    LaSoftMoe,
}

/// Which vision blocks get the branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoeLayers {
    /// Every block (the paper).
    All,
    /// The last `k` blocks.
    Last(usize),
    /// The listed blocks (0-based).
    List(Vec<usize>),
}

/// The MoE placement of the vision tower. Serialised as the `moe` entry of the
/// model's `config.json`.
///
/// The parameters of the branch of block `i` are named
/// `vision_model.encoder.layers.{i}.moe.*` (`phi`, `scale`,
/// `experts.fc{1,2}.{weight,bias}`, `combine.*`, as `softmoe` names them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// None, Soft MoE or La-SoftMoE.
    pub kind: MoeKind,
    /// Blocks that get the branch.
    #[serde(default = "default_layers")]
    pub layers: MoeLayers,
    /// Experts per layer.
    #[serde(default = "default_experts")]
    pub num_experts: usize,
    /// Slots per expert.
    #[serde(default = "default_slots")]
    pub slots_per_expert: usize,
    /// Hidden width of every expert; `None`: the block MLP's
    /// `intermediate_size` (3072 for ViT-B/16).
    #[serde(default)]
    pub expert_hidden_dim: Option<usize>,
    /// Expert initialisation. The default, [`ExpertInit::ZeroOutput`], zeroes
    /// the experts' output layer, so the patched model computes exactly what
    /// the pretrained one does until training moves it.
    #[serde(default = "default_init")]
    pub expert_init: ExpertInit,
    /// Expert activation; CLIP's quick GELU by default.
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// vmoe's normalised router (see `softmoe::SoftMoeConfig::normalize`).
    #[serde(default = "default_normalize")]
    pub normalize: bool,
    /// La-SoftMoE combine options (ignored for Soft MoE).
    #[serde(default)]
    pub linear_attention: LinearAttentionConfig,
}

fn default_layers() -> MoeLayers {
    MoeLayers::All
}
fn default_experts() -> usize {
    4
}
fn default_slots() -> usize {
    49
}
fn default_init() -> ExpertInit {
    ExpertInit::ZeroOutput
}
fn default_activation() -> Activation {
    Activation::QuickGelu
}
fn default_normalize() -> bool {
    true
}

impl MoeConfig {
    /// No MoE: plain CLIP.
    pub fn none() -> Self {
        Self {
            kind: MoeKind::None,
            ..Self::la_soft_moe()
        }
    }

    /// The paper's placement: La-SoftMoE, 4 experts x 49 slots, in every
    /// block, zero-initialised expert outputs.
    pub fn la_soft_moe() -> Self {
        Self {
            kind: MoeKind::LaSoftMoe,
            layers: default_layers(),
            num_experts: default_experts(),
            slots_per_expert: default_slots(),
            expert_hidden_dim: None,
            expert_init: default_init(),
            activation: default_activation(),
            normalize: default_normalize(),
            linear_attention: LinearAttentionConfig::default(),
        }
    }

    /// As [`MoeConfig::la_soft_moe`] with Soft MoE's softmax combine.
    pub fn soft_moe() -> Self {
        Self {
            kind: MoeKind::SoftMoe,
            ..Self::la_soft_moe()
        }
    }

    /// Whether block `layer` of `num_layers` gets a branch.
    pub fn applies_to(&self, layer: usize, num_layers: usize) -> bool {
        match (&self.kind, &self.layers) {
            (MoeKind::None, _) => false,
            (_, MoeLayers::All) => true,
            (_, MoeLayers::Last(k)) => layer + k >= num_layers,
            (_, MoeLayers::List(list)) => list.contains(&layer),
        }
    }

    /// The `softmoe` layer configuration for a block of width `dim` whose
    /// MLP is `intermediate_size` wide; `None` when the kind is
    /// [`MoeKind::None`].
    pub fn layer_config(&self, dim: usize, intermediate_size: usize) -> Option<SoftMoeConfig> {
        let combine = match self.kind {
            MoeKind::None => return None,
            MoeKind::SoftMoe => Combine::Softmax,
            MoeKind::LaSoftMoe => Combine::LinearAttention(self.linear_attention.clone()),
        };
        Some(SoftMoeConfig {
            dim,
            num_experts: self.num_experts,
            slots_per_expert: self.slots_per_expert,
            expert_hidden_dim: self.expert_hidden_dim.unwrap_or(intermediate_size),
            activation: self.activation,
            normalize: self.normalize,
            combine,
            expert_init: self.expert_init,
        })
    }

    /// Checks the placement against a tower of `num_layers` blocks.
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        if self.kind == MoeKind::None {
            return Ok(());
        }
        match &self.layers {
            MoeLayers::All => {}
            MoeLayers::Last(k) if *k > num_layers => {
                return Err(Error::invalid_config(
                    "moe.layers.last",
                    format!("({k}) exceeds the {num_layers} vision blocks"),
                ))
            }
            MoeLayers::Last(_) => {}
            MoeLayers::List(list) => {
                if let Some(bad) = list.iter().find(|&&i| i >= num_layers) {
                    return Err(Error::invalid_config(
                        "moe.layers.list",
                        format!("block {bad} does not exist (the tower has {num_layers} blocks, 0-based)"),
                    ));
                }
            }
        }
        if let Some(cfg) = self.layer_config(1, 1) {
            cfg.validate()?;
        }
        for (field, value, max) in [
            ("moe.num_experts", self.num_experts, 4_096),
            ("moe.slots_per_expert", self.slots_per_expert, 65_536),
            (
                "moe.expert_hidden_dim",
                self.expert_hidden_dim.unwrap_or(1),
                crate::limits::MAX_WIDTH,
            ),
        ] {
            if value > max {
                return Err(Error::invalid_config(
                    field,
                    format!("({value}) must be at most {max}"),
                ));
            }
        }
        if self.expert_hidden_dim == Some(0) {
            return Err(Error::invalid_config(
                "moe.expert_hidden_dim",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_selects_blocks() {
        let all = MoeConfig::la_soft_moe();
        assert!((0..12).all(|i| all.applies_to(i, 12)));
        let last = MoeConfig {
            layers: MoeLayers::Last(3),
            ..MoeConfig::soft_moe()
        };
        let chosen: Vec<_> = (0..12).filter(|&i| last.applies_to(i, 12)).collect();
        assert_eq!(chosen, vec![9, 10, 11]);
        let list = MoeConfig {
            layers: MoeLayers::List(vec![0, 5]),
            ..MoeConfig::soft_moe()
        };
        let chosen: Vec<_> = (0..12).filter(|&i| list.applies_to(i, 12)).collect();
        assert_eq!(chosen, vec![0, 5]);
        assert!(!(0..12).any(|i| MoeConfig::none().applies_to(i, 12)));
    }

    #[test]
    fn paper_defaults_and_layer_config() {
        let cfg = MoeConfig::la_soft_moe();
        let layer = cfg.layer_config(768, 3072).expect("a MoE layer");
        assert_eq!(layer.num_slots(), 196);
        assert_eq!(layer.expert_hidden_dim, 3072);
        assert_eq!(layer.expert_init, ExpertInit::ZeroOutput);
        assert!(matches!(layer.combine, Combine::LinearAttention(_)));
        assert_eq!(MoeConfig::none().layer_config(768, 3072), None);
    }

    #[test]
    fn validation_names_the_field() {
        let cfg = MoeConfig {
            layers: MoeLayers::List(vec![3, 12]),
            ..MoeConfig::la_soft_moe()
        };
        let err = cfg.validate(12).unwrap_err().to_string();
        assert!(
            err.contains("moe.layers.list") && err.contains("12"),
            "{err}"
        );
        let cfg = MoeConfig {
            num_experts: 0,
            ..MoeConfig::soft_moe()
        };
        assert!(cfg
            .validate(12)
            .unwrap_err()
            .to_string()
            .contains("num_experts"));
    }

    #[test]
    fn serde_round_trip_with_defaults() {
        let cfg: MoeConfig =
            serde_json::from_str(r#"{"kind": "soft_moe", "layers": {"last": 4}}"#).unwrap();
        assert_eq!(cfg.layers, MoeLayers::Last(4));
        assert_eq!(cfg.num_experts, 4);
        assert_eq!(cfg.slots_per_expert, 49);
        let back: MoeConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }
}
