//! Where the vision tower gets a Soft MoE / La-SoftMoE branch, and of what
//! shape (paper Figure 2 and Algorithm 1: in every one of the 12 residual
//! blocks, parallel with the MLP, 4 experts x 49 slots).

use serde::{Deserialize, Serialize};
use softmoe::{
    Activation, Combine, ExpertInit, LinearAttentionConfig, SoftMoeConfig, SoftMoeOptions,
};

use crate::error::{Error, Result};

/// Which MoE layer, if any: the three models the paper compares. Read from
/// a placement with [`MoeConfig::kind`] and applied with
/// [`MoeConfig::with_kind`]; a placement does not store it.
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

/// The MoE placement of the vision tower: which blocks get a branch, how
/// wide its experts are, and the `softmoe` options of the branch. Serialised
/// as the `moe` entry of the model's `config.json`:
///
/// ```json
/// {"layers": "all", "expert_hidden_dim": null,
///  "layer": {"num_experts": 4, "slots_per_expert": 49, "activation": "quick_gelu",
///            "normalize": true, "combine": {"linear_attention": {}},
///            "expert_init": "zero_output"}}
/// ```
///
/// `"layer": null` is plain CLIP. The flat layout of earlier versions
/// (`{"kind": "la_soft_moe", "num_experts": 4, ...}`) still loads (the
/// serde impls live in `moe_file.rs`).
///
/// The parameters of the branch of block `i` are named
/// `vision_model.encoder.layers.{i}.moe.*` (`phi`, `scale`,
/// `experts.fc{1,2}.{weight,bias}`, `combine.*`, as `softmoe` names them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct MoeConfig {
    /// Blocks that get the branch.
    #[serde(default = "MoeLayers::all")]
    pub layers: MoeLayers,
    /// Hidden width of every expert; `None`: the block MLP's
    /// `intermediate_size` (3072 for ViT-B/16), which a width-free
    /// [`SoftMoeOptions`] cannot say.
    #[serde(default)]
    pub expert_hidden_dim: Option<usize>,
    /// The branch's experts, slots, router and combine; `None`: no branch.
    pub layer: Option<SoftMoeOptions>,
}

impl MoeLayers {
    fn all() -> Self {
        Self::All
    }
}

impl MoeConfig {
    /// The paper's branch: La-SoftMoE, 4 experts x 49 slots (196 slots for
    /// ViT-B/16's 197 tokens), CLIP's quick GELU in the experts, vmoe's
    /// normalised router, and zero-initialised expert outputs, so the patched
    /// model computes exactly what the pretrained one does until training
    /// moves it.
    pub fn paper_options() -> SoftMoeOptions {
        SoftMoeOptions {
            activation: Activation::QuickGelu,
            expert_init: ExpertInit::ZeroOutput,
            ..SoftMoeOptions::la_soft_moe(4, 49)
        }
    }

    /// No MoE: plain CLIP.
    pub fn none() -> Self {
        Self {
            layers: MoeLayers::All,
            expert_hidden_dim: None,
            layer: None,
        }
    }

    /// The paper's placement: [`MoeConfig::paper_options`] in every block,
    /// experts as wide as the block's MLP.
    pub fn la_soft_moe() -> Self {
        Self {
            layer: Some(Self::paper_options()),
            ..Self::none()
        }
    }

    /// As [`MoeConfig::la_soft_moe`] with Soft MoE's softmax combine.
    pub fn soft_moe() -> Self {
        Self::la_soft_moe().with_kind(MoeKind::SoftMoe)
    }

    /// Which of the paper's three models this placement builds.
    pub fn kind(&self) -> MoeKind {
        match self.layer.as_ref().map(|options| &options.combine) {
            None => MoeKind::None,
            Some(Combine::Softmax) => MoeKind::SoftMoe,
            Some(Combine::LinearAttention(_)) => MoeKind::LaSoftMoe,
        }
    }

    /// This placement with a branch of `kind`: [`MoeKind::None`] drops the
    /// branch; the others keep the branch's options (the paper's when there
    /// is none) and set its combine, keeping La-SoftMoE's options when the
    /// combine already is La-SoftMoE's.
    pub fn with_kind(self, kind: MoeKind) -> Self {
        let combine = match kind {
            MoeKind::None => {
                return Self {
                    layer: None,
                    ..self
                }
            }
            MoeKind::SoftMoe => Combine::Softmax,
            MoeKind::LaSoftMoe => Combine::LinearAttention(LinearAttentionConfig::default()),
        };
        let mut options = self.layer.clone().unwrap_or_else(Self::paper_options);
        if self.kind() != kind {
            options.combine = combine;
        }
        Self {
            layer: Some(options),
            ..self
        }
    }

    /// Whether block `layer` of `num_layers` gets a branch.
    pub fn applies_to(&self, layer: usize, num_layers: usize) -> bool {
        match (&self.layer, &self.layers) {
            (None, _) => false,
            (_, MoeLayers::All) => true,
            (_, MoeLayers::Last(k)) => layer + k >= num_layers,
            (_, MoeLayers::List(list)) => list.contains(&layer),
        }
    }

    /// The `softmoe` layer configuration for a block of width `dim` whose
    /// MLP is `intermediate_size` wide; `None` without a branch.
    pub fn layer_config(&self, dim: usize, intermediate_size: usize) -> Option<SoftMoeConfig> {
        let hidden = self.expert_hidden_dim.unwrap_or(intermediate_size);
        self.layer
            .clone()
            .map(|options| options.with_widths(dim, hidden))
    }

    /// Checks the placement against a tower of `num_layers` blocks.
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        let Some(options) = &self.layer else {
            return Ok(());
        };
        match &self.layers {
            MoeLayers::All => {}
            MoeLayers::Last(0) => {
                return Err(Error::invalid_config(
                    "moe.layers.last",
                    "(0) puts the branch on no block; plain CLIP has no branch (moe none)",
                ))
            }
            MoeLayers::List(list) if list.is_empty() => return Err(Error::invalid_config(
                "moe.layers.list",
                "is empty: the branch would be on no block; plain CLIP has no branch (moe none)",
            )),
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
        options.validate()?;
        for (field, value, max) in [
            ("moe.layer.num_experts", options.num_experts, 4_096),
            (
                "moe.layer.slots_per_expert",
                options.slots_per_expert,
                65_536,
            ),
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
        assert_eq!(layer.options.expert_init, ExpertInit::ZeroOutput);
        assert_eq!(layer.options.activation, Activation::QuickGelu);
        assert!(matches!(layer.options.combine, Combine::LinearAttention(_)));
        assert_eq!(MoeConfig::none().layer_config(768, 3072), None);
    }

    /// A branch placed on no block is refused (it would train plain CLIP
    /// while the configuration says MoE); plain CLIP is `layer: None`.
    #[test]
    fn a_branch_on_no_block_is_refused() {
        for layers in [MoeLayers::Last(0), MoeLayers::List(Vec::new())] {
            let cfg = MoeConfig {
                layers,
                ..MoeConfig::la_soft_moe()
            };
            let err = cfg.validate(12).unwrap_err().to_string();
            assert!(err.contains("no block"), "{err}");
        }
        let plain = MoeConfig {
            layers: MoeLayers::Last(0),
            ..MoeConfig::none()
        };
        plain.validate(12).unwrap();
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
        let mut cfg = MoeConfig::soft_moe();
        cfg.layer.as_mut().unwrap().num_experts = 0;
        assert!(cfg
            .validate(12)
            .unwrap_err()
            .to_string()
            .contains("num_experts"));
    }

    #[test]
    fn kind_is_read_from_the_branch_and_set_on_it() {
        assert_eq!(MoeConfig::none().kind(), MoeKind::None);
        assert_eq!(MoeConfig::soft_moe().kind(), MoeKind::SoftMoe);
        assert_eq!(MoeConfig::la_soft_moe().kind(), MoeKind::LaSoftMoe);
        // Switching keeps the rest of the branch and the placement.
        let mut eight = MoeConfig {
            layers: MoeLayers::Last(2),
            ..MoeConfig::la_soft_moe()
        };
        let options = eight.layer.as_mut().unwrap();
        options.num_experts = 8;
        let Combine::LinearAttention(la) = &mut options.combine else {
            unreachable!()
        };
        la.norm_eps = 1e-3;
        let soft = eight.clone().with_kind(MoeKind::SoftMoe);
        assert_eq!(soft.layers, MoeLayers::Last(2));
        assert_eq!(soft.layer.as_ref().unwrap().num_experts, 8);
        assert_eq!(soft.layer.as_ref().unwrap().combine, Combine::Softmax);
        // The same kind changes nothing, La-SoftMoE's options included.
        assert_eq!(eight.clone().with_kind(MoeKind::LaSoftMoe), eight);
        assert_eq!(
            MoeConfig::none().with_kind(MoeKind::LaSoftMoe),
            MoeConfig::la_soft_moe()
        );
        let none = eight.with_kind(MoeKind::None);
        assert_eq!(
            (none.kind(), none.layer_config(768, 3072)),
            (MoeKind::None, None)
        );
    }

    #[test]
    fn current_layout_round_trips_and_rejects_unknown_fields() {
        for cfg in [
            MoeConfig::none(),
            MoeConfig::soft_moe(),
            MoeConfig::la_soft_moe(),
        ] {
            let json = serde_json::to_value(&cfg).unwrap();
            assert!(json.get("kind").is_none(), "{json}");
            let back: MoeConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back, cfg);
        }
        let plain: MoeConfig = serde_json::from_str(r#"{"layer": null}"#).unwrap();
        assert_eq!(plain, MoeConfig::none());
        let err = serde_json::from_str::<MoeConfig>(r#"{"layer": null, "num_expert": 8}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_expert"), "{err}");
    }

    #[test]
    fn legacy_flat_entry_fills_the_paper_defaults() {
        // Written by hand in the old layout, as a user could have.
        let cfg: MoeConfig =
            serde_json::from_str(r#"{"kind": "soft_moe", "layers": {"last": 4}}"#).unwrap();
        assert_eq!(cfg.layers, MoeLayers::Last(4));
        let options = cfg.layer.as_ref().unwrap();
        assert_eq!((options.num_experts, options.slots_per_expert), (4, 49));
        assert_eq!(options.combine, Combine::Softmax);
        assert_eq!(options.activation, Activation::QuickGelu);
        assert_eq!(options.expert_init, ExpertInit::ZeroOutput);
        assert!(options.normalize);
        let none: MoeConfig = serde_json::from_str(r#"{"kind": "none"}"#).unwrap();
        assert_eq!(none, MoeConfig::none());
        let err = serde_json::from_str::<MoeConfig>(r#"{"kind": "big_moe"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("big_moe"), "{err}");
    }
}
