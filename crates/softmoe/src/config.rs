//! Configuration of a Soft MoE / La-SoftMoE layer: plain data with serde, so a
//! layer is described by a JSON/TOML file rather than by code.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Activation between the two linears of every expert MLP (defined beside
/// the kernels that apply it).
pub use fused_ops::Activation;

/// How the expert MLP weights are initialised when they are not loaded from a
/// checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExpertInit {
    /// `torch.nn.Linear`'s default: weights and biases uniform in
    /// `±1/sqrt(fan_in)`. Every expert starts different.
    #[default]
    TorchLinear,
    /// `fc1` as [`ExpertInit::TorchLinear`], `fc2` weight and bias zero: the layer
    /// outputs exactly zero at step 0, so adding it to a pretrained network
    /// leaves that network's outputs unchanged until training moves `fc2`.
    ZeroOutput,
    /// Plain (untruncated) normal with the given standard deviation for the weights
    /// (ViT uses 0.02 with a truncated normal), zero biases.
    Normal {
        /// Standard deviation of the weights.
        std: f64,
    },
}

/// The map from routing logits to combine weights (paper eq. 4 vs eq. 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Soft MoE (Puigcerver et al., eq. 4): softmax over all `e·s` slots for
    /// every token.
    Softmax,
    /// La-SoftMoE (paper eq. 7, Algorithm 2 lines 6-8): linear attention over the
    /// logits followed by instance norm. See `docs/la-softmoe.md`.
    LinearAttention(LinearAttentionConfig),
}

/// Where the query, key and value of the La-SoftMoE linear attention come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QkvProjection {
    /// `Q = K = V = logits`: Algorithm 2 line 7 calls `LinearAttention(C)` with
    /// the logits alone and names no projection. No parameters.
    #[default]
    Identity,
    /// Learned residual projections over the slot axis (`m = e·s`):
    /// `Q = L + L W_qᵀ + b_q` (likewise K, V) with `combine.{q,k,v}_proj.weight`
    /// `(m, m)` and `.bias` `(m)` initialised to zero, so step 0 equals
    /// [`QkvProjection::Identity`].
    Linear,
}

/// The positive feature map φ of linear attention (paper eq. 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureMap {
    /// `elu(x) + 1`, the map of Katharopoulos et al. (the paper's reference 16).
    #[default]
    EluPlusOne,
    /// `relu(x)`: cheaper, but a token whose logits are all negative gets a zero
    /// query and so only the denominator's epsilon.
    Relu,
}

/// Which axis the La-SoftMoE instance norm normalises over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InstanceNormAxis {
    /// `InstanceNorm1d` applied to the `(batch, tokens, slots)` matrix as it
    /// stands: channels are tokens, each token's weights are normalised over
    /// its `m` slots. The literal reading of Algorithm 2 line 8.
    #[default]
    PerToken,
    /// Channels are slots: each slot's weights are normalised over the tokens
    /// (one reading of "slot-wise" instance norm).
    PerSlot,
}

/// Map applied to the instance-normalised weights before they combine slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CombineOutput {
    /// Use the normalised weights as they are (Algorithm 2): signed weights
    /// that sum to zero per token under [`InstanceNormAxis::PerToken`].
    #[default]
    Normalized,
    /// `sigmoid` of the normalised weights: each weight in (0, 1), the range the
    /// caption of the paper's Figure 3 claims for the instance norm's output.
    Sigmoid,
    /// Softmax over the slots of the normalised weights: non-negative and
    /// summing to one per token, like Soft MoE's combine.
    Softmax,
}

/// Options of the La-SoftMoE combine (paper section 3, eq. 6-7, Algorithm 2).
///
/// The paper leaves these choices open; defaults follow Algorithm 2 literally
/// and `docs/la-softmoe.md` gives the reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinearAttentionConfig {
    /// Source of Q, K and V.
    pub projection: QkvProjection,
    /// φ in `φ(Q) (φ(K)ᵀ V)`.
    pub feature_map: FeatureMap,
    /// `Some(eps)`: divide by `φ(Q)·Σ_j φ(K_j) + eps` as Katharopoulos et al.
    /// (eps 1e-6 in their reference code); `None`: the unnormalised eq. 6.
    pub normalizer_eps: Option<f64>,
    /// Instance-norm axis.
    pub norm_axis: InstanceNormAxis,
    /// Learnable per-channel scale and shift (`combine.norm.{weight,bias}`).
    /// Only with [`InstanceNormAxis::PerSlot`], whose channel count (slots) is
    /// fixed by the layer; per-token channels would tie the layer to one
    /// sequence length.
    pub norm_affine: bool,
    /// Epsilon added to the variance (PyTorch's `InstanceNorm1d` default 1e-5).
    pub norm_eps: f64,
    /// Map applied after the instance norm.
    pub output: CombineOutput,
}

impl Default for LinearAttentionConfig {
    fn default() -> Self {
        Self {
            projection: QkvProjection::Identity,
            feature_map: FeatureMap::EluPlusOne,
            normalizer_eps: Some(1e-6),
            norm_axis: InstanceNormAxis::PerToken,
            norm_affine: false,
            norm_eps: 1e-5,
            output: CombineOutput::Normalized,
        }
    }
}

/// Everything that shapes a Soft MoE layer except its two widths: the
/// choices a host network makes once and applies to layers of different
/// widths (clip-moe's placement holds one for all its vision blocks).
/// Serialised flat inside [`SoftMoeConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoftMoeOptions {
    /// Number of experts `e`.
    pub num_experts: usize,
    /// Slots per expert `s`; the layer has `m = e·s` slots.
    pub slots_per_expert: usize,
    /// Expert activation.
    pub activation: Activation,
    /// vmoe's router normalisation: L2-normalise tokens and slot vectors
    /// (`x * rsqrt(Σx² + 1e-6)`) and multiply the logits by a learnable scalar
    /// `scale` (init 1). Off: raw dot products, as Algorithm 2 and fkodom.
    pub normalize: bool,
    /// Combine-weight map: Soft MoE or La-SoftMoE.
    pub combine: Combine,
    /// Expert initialisation.
    #[serde(default)]
    pub expert_init: ExpertInit,
}

impl SoftMoeOptions {
    /// Soft MoE (Puigcerver et al.) with vmoe's normalised router and GELU
    /// experts initialised as `torch.nn.Linear`.
    pub fn soft_moe(num_experts: usize, slots_per_expert: usize) -> Self {
        Self {
            num_experts,
            slots_per_expert,
            activation: Activation::Gelu,
            normalize: true,
            combine: Combine::Softmax,
            expert_init: ExpertInit::TorchLinear,
        }
    }

    /// La-SoftMoE (paper Algorithm 2) with the default [`LinearAttentionConfig`].
    pub fn la_soft_moe(num_experts: usize, slots_per_expert: usize) -> Self {
        Self {
            combine: Combine::LinearAttention(LinearAttentionConfig::default()),
            ..Self::soft_moe(num_experts, slots_per_expert)
        }
    }

    /// Total number of slots `m = e·s`.
    pub fn num_slots(&self) -> usize {
        self.num_experts * self.slots_per_expert
    }

    /// The layer of token width `dim` with experts `expert_hidden_dim` wide.
    pub fn with_widths(self, dim: usize, expert_hidden_dim: usize) -> SoftMoeConfig {
        SoftMoeConfig {
            dim,
            expert_hidden_dim,
            options: self,
        }
    }

    /// Checks the options, naming the first field at fault.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("num_experts", self.num_experts),
            ("slots_per_expert", self.slots_per_expert),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if let ExpertInit::Normal { std } = self.expert_init {
            if !(std.is_finite() && std > 0.0) {
                return Err(Error::InvalidConfig {
                    field: "expert_init.std",
                    reason: format!("must be finite and positive, got {std}"),
                });
            }
        }
        if let Combine::LinearAttention(la) = &self.combine {
            if let Some(eps) = la.normalizer_eps {
                // Zero divides 0 by 0 for a token whose features are all
                // zero (ReLU features of negative logits; elu + 1 where
                // exp underflows): use None for no normaliser at all.
                if !(eps.is_finite() && eps > 0.0) {
                    return Err(Error::InvalidConfig {
                        field: "combine.normalizer_eps",
                        reason: format!(
                            "must be finite and positive (None: no normaliser), got {eps}"
                        ),
                    });
                }
            }
            if la.norm_axis == InstanceNormAxis::PerToken && self.num_slots() == 1 {
                return Err(Error::InvalidConfig {
                    field: "slots_per_expert",
                    reason: "one slot in all: a per-token instance norm over one slot is \
                             identically 0, so the combine weights would not depend on the \
                             input"
                        .into(),
                });
            }
            if !(la.norm_eps.is_finite() && la.norm_eps > 0.0) {
                return Err(Error::InvalidConfig {
                    field: "combine.norm_eps",
                    reason: format!("must be finite and positive, got {}", la.norm_eps),
                });
            }
            if la.norm_affine && la.norm_axis == InstanceNormAxis::PerToken {
                return Err(Error::InvalidConfig {
                    field: "combine.norm_affine",
                    reason: "an affine instance norm needs norm_axis = per_slot: per-token \
                             channels would fix the number of tokens"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

/// Configuration of a [`crate::SoftMoe`] layer: its widths and its
/// [`SoftMoeOptions`], which serialise as fields of this struct
/// (`{"dim": .., "expert_hidden_dim": .., "num_experts": .., ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoftMoeConfig {
    /// Token dimension `d` of input and output.
    pub dim: usize,
    /// Hidden width of every expert MLP.
    pub expert_hidden_dim: usize,
    /// Experts, slots, activation, router and combine.
    #[serde(flatten)]
    pub options: SoftMoeOptions,
}

impl SoftMoeConfig {
    /// Soft MoE (Puigcerver et al.) with vmoe's normalised router, GELU experts
    /// of width `4·dim`.
    pub fn soft_moe(dim: usize, num_experts: usize, slots_per_expert: usize) -> Self {
        SoftMoeOptions::soft_moe(num_experts, slots_per_expert).with_widths(dim, 4 * dim)
    }

    /// La-SoftMoE (paper Algorithm 2) with the default [`LinearAttentionConfig`].
    pub fn la_soft_moe(dim: usize, num_experts: usize, slots_per_expert: usize) -> Self {
        SoftMoeOptions::la_soft_moe(num_experts, slots_per_expert).with_widths(dim, 4 * dim)
    }

    /// The paper's layer for CLIP ViT-B/16: d = 768, 4 experts × 49 slots
    /// (196 slots for 197 tokens).
    pub fn paper_vit_b16() -> Self {
        Self::la_soft_moe(768, 4, 49)
    }

    /// Total number of slots `m = e·s`.
    pub fn num_slots(&self) -> usize {
        self.options.num_slots()
    }

    /// Checks the configuration, naming the first field at fault.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("dim", self.dim),
            ("expert_hidden_dim", self.expert_hidden_dim),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        self.options.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_issue_defaults() {
        let cfg = SoftMoeConfig::soft_moe(768, 4, 49);
        assert_eq!(cfg.expert_hidden_dim, 3072);
        assert_eq!(cfg.options.activation, Activation::Gelu);
        assert!(cfg.options.normalize);
        assert_eq!(cfg.options.combine, Combine::Softmax);
        assert_eq!(cfg.num_slots(), 196);
        let la = SoftMoeConfig::la_soft_moe(768, 4, 49);
        assert!(matches!(la.options.combine, Combine::LinearAttention(_)));
        assert_eq!(la.expert_hidden_dim, 3072);
        assert_eq!(SoftMoeConfig::paper_vit_b16(), la);
    }

    #[test]
    fn serde_names_are_stable() {
        let json = serde_json::to_string(&Activation::QuickGelu).unwrap();
        assert_eq!(json, "\"quick_gelu\"");
        let json = serde_json::to_string(&Activation::Gelu).unwrap();
        assert_eq!(json, "\"gelu\"");
        let cfg: SoftMoeConfig = serde_json::from_str(
            r#"{"dim": 8, "num_experts": 2, "slots_per_expert": 3, "expert_hidden_dim": 16,
                "activation": "quick_gelu", "normalize": false,
                "combine": {"linear_attention": {"norm_axis": "per_slot", "norm_affine": true}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.options.activation, Activation::QuickGelu);
        assert_eq!(cfg.options.expert_init, ExpertInit::TorchLinear);
        let Combine::LinearAttention(la) = &cfg.options.combine else {
            panic!("expected linear attention, got {:?}", cfg.options.combine)
        };
        assert_eq!(la.norm_axis, InstanceNormAxis::PerSlot);
        assert_eq!(la.feature_map, FeatureMap::EluPlusOne);
        assert_eq!(la.normalizer_eps, Some(1e-6));
        let back: SoftMoeConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn options_serialise_flat_inside_the_layer_config() {
        // The layout the committed fixtures and earlier versions wrote: one
        // flat object, no `options` key.
        let value = serde_json::to_value(SoftMoeConfig::la_soft_moe(8, 2, 3)).unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "activation",
                "combine",
                "dim",
                "expert_hidden_dim",
                "expert_init",
                "normalize",
                "num_experts",
                "slots_per_expert"
            ]
        );
        assert_eq!(value["num_experts"], 2);
        assert_eq!(value["expert_hidden_dim"], 32);
    }

    #[test]
    fn validation_names_the_field() {
        let mut cfg = SoftMoeConfig::soft_moe(8, 0, 2);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("num_experts"), "{err}");
        cfg.options.num_experts = 2;
        cfg.options.slots_per_expert = 0;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("slots_per_expert"));
        let mut la = SoftMoeConfig::la_soft_moe(8, 2, 2);
        if let Combine::LinearAttention(c) = &mut la.options.combine {
            c.norm_affine = true;
        }
        let err = la.validate().unwrap_err().to_string();
        assert!(err.contains("norm_affine"), "{err}");
    }
}
