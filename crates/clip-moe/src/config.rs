//! CLIP configuration with the field names of Hugging Face `transformers`'
//! `config.json` (`CLIPConfig`, `CLIPTextConfig`, `CLIPVisionConfig`), so a
//! published checkpoint's config is read unchanged. Absent fields take
//! transformers' defaults (those of OpenAI's ViT-B/32), which is what
//! transformers itself does with the compact configs it saves.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::{LIMITS, MAX_LAYERS, MAX_LOG_TEMPERATURE, MAX_PARAMETERS, MAX_WIDTH};
use crate::moe_placement::MoeConfig;

/// Activation inside the encoder MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HiddenAct {
    /// CLIP's `x * sigmoid(1.702 x)`, used by every OpenAI checkpoint.
    #[default]
    QuickGelu,
    /// Exact (erf) GELU.
    Gelu,
}

impl HiddenAct {
    /// The same activation for `softmoe` experts.
    pub fn to_softmoe(self) -> softmoe::Activation {
        match self {
            HiddenAct::QuickGelu => softmoe::Activation::QuickGelu,
            HiddenAct::Gelu => softmoe::Activation::Gelu,
        }
    }
}

/// The text tower (`text_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Hidden width of every MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Context length (number of position embeddings).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `<|startoftext|>` id.
    pub bos_token_id: u32,
    /// `<|endoftext|>` id. Configs saved before transformers PR #24773 say 2;
    /// see [`ClipTextConfig::end_of_text_id`].
    pub eos_token_id: u32,
    /// Padding id as stored in the config (unused by the model: the causal
    /// mask already hides what follows the end-of-text token).
    pub pad_token_id: u32,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` defaults (OpenAI's text tower).
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

impl ClipTextConfig {
    /// The id of `<|endoftext|>`, where the text tower pools.
    ///
    /// Legacy configs (OpenAI's own on the hub) store `eos_token_id: 2`, a
    /// wrong value that transformers keeps for compatibility by pooling at
    /// `argmax(input_ids)`, i.e. at the largest id; CLIP's `<|endoftext|>` is
    /// the last vocabulary entry, so that is `vocab_size - 1` here.
    pub fn end_of_text_id(&self) -> u32 {
        if self.eos_token_id == 2 {
            self.vocab_size.saturating_sub(1) as u32
        } else {
            self.eos_token_id
        }
    }
}

/// The vision tower (`vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    /// Width of the transformer.
    pub hidden_size: usize,
    /// Hidden width of every MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers (residual blocks).
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Input channels.
    pub num_channels: usize,
    /// Input side length in pixels (square images).
    pub image_size: usize,
    /// Patch side length in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: HiddenAct,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig()` defaults (OpenAI's ViT-B/32).
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// Patches per image side.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the patches plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }
}

/// What the text and vision encoders have in common: one encoder layer
/// implementation serves both.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
}

/// Both towers' configs keep the encoder's six fields flat under the same
/// names (transformers' `config.json` layout, which saved configs follow);
/// this one definition reads them out of either.
macro_rules! encoder_of_tower {
    ($($tower:ty),*) => {$(
        impl $tower {
            /// The tower's encoder shape.
            pub(crate) fn encoder(&self) -> EncoderConfig {
                EncoderConfig {
                    hidden_size: self.hidden_size,
                    intermediate_size: self.intermediate_size,
                    num_attention_heads: self.num_attention_heads,
                    num_hidden_layers: self.num_hidden_layers,
                    hidden_act: self.hidden_act,
                    layer_norm_eps: self.layer_norm_eps,
                }
            }
        }
    )*};
}
encoder_of_tower!(ClipTextConfig, ClipVisionConfig);

impl EncoderConfig {
    /// Errors unless the encoder's sizes and the tower's own `extra` sizes
    /// (each `(field, value, max)`) are in `1..=max`, the heads divide the
    /// width and the LayerNorm epsilon is a small positive number; errors
    /// name the field under `section`.
    fn validate(&self, section: &str, extra: &[(&str, usize, usize)]) -> Result<()> {
        let shared = [
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
        ];
        for (field, value, max) in extra.iter().chain(&shared) {
            if *value == 0 || value > max {
                return Err(Error::invalid_config(
                    format!("{section}.{field}"),
                    format!("({value}) must be 1 to {max}"),
                ));
            }
        }
        let eps = self.layer_norm_eps;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(Error::invalid_config(
                format!("{section}.layer_norm_eps"),
                format!("({eps}) must be a small positive number such as 1e-5"),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::invalid_config(
                format!("{section}.num_attention_heads"),
                format!(
                    "({}) must divide hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// About how many weights the blocks hold (attention and MLP matrices),
    /// without overflow.
    fn parameter_estimate(&self) -> u128 {
        let (h, inter) = (self.hidden_size as u128, self.intermediate_size as u128);
        self.num_hidden_layers as u128 * (4 * h * h + 2 * h * inter)
    }
}

/// A CLIP model: both towers, the shared embedding width and the MoE
/// placement in the vision tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "ClipConfigFile")]
pub struct ClipConfig {
    /// Text tower.
    pub text_config: ClipTextConfig,
    /// Vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the joint image-text embedding.
    pub projection_dim: usize,
    /// Initial value of the learned log temperature `logit_scale`
    /// (`ln(1/0.07)`).
    pub logit_scale_init_value: f64,
    /// Soft MoE / La-SoftMoE branches of the vision blocks. Not a transformers
    /// field: absent from a published `config.json`, which means no MoE.
    pub moe: MoeConfig,
}

/// `config.json` as stored: legacy files also carry `text_config_dict` /
/// `vision_config_dict`, which transformers lets override `text_config` /
/// `vision_config`.
#[derive(Deserialize)]
struct ClipConfigFile {
    #[serde(default)]
    text_config: ClipTextConfig,
    #[serde(default)]
    vision_config: ClipVisionConfig,
    text_config_dict: Option<ClipTextConfig>,
    vision_config_dict: Option<ClipVisionConfig>,
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    #[serde(default = "default_logit_scale")]
    logit_scale_init_value: f64,
    #[serde(default = "MoeConfig::none")]
    moe: MoeConfig,
}

fn default_projection_dim() -> usize {
    512
}

fn default_logit_scale() -> f64 {
    2.6592
}

impl From<ClipConfigFile> for ClipConfig {
    fn from(file: ClipConfigFile) -> Self {
        Self {
            text_config: file.text_config_dict.unwrap_or(file.text_config),
            vision_config: file.vision_config_dict.unwrap_or(file.vision_config),
            projection_dim: file.projection_dim,
            logit_scale_init_value: file.logit_scale_init_value,
            moe: file.moe,
        }
    }
}

impl ClipConfig {
    /// OpenAI CLIP ViT-B/16 (`openai/clip-vit-base-patch16`), without MoE,
    /// as transformers reads its `config.json`, including the legacy
    /// `bos_token_id` 0 / `eos_token_id` 2 (pooling still finds
    /// `<|endoftext|>`, see [`ClipTextConfig::end_of_text_id`]).
    pub fn vit_base_patch16() -> Self {
        Self {
            text_config: ClipTextConfig {
                bos_token_id: 0,
                eos_token_id: 2,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                patch_size: 16,
                ..ClipVisionConfig::default()
            },
            projection_dim: default_projection_dim(),
            logit_scale_init_value: default_logit_scale(),
            moe: MoeConfig::none(),
        }
    }

    /// A tiny CLIP for tests and examples, with the shapes of the model that
    /// `scripts/clip_moe/gen_fixtures.py` generates: 32 px images of 8 px
    /// patches, width 32, 2 layers and 4 heads per tower, 601 tokens
    /// (`<|startoftext|>` 599, `<|endoftext|>` 600), context 16,
    /// projection 24. No MoE.
    pub fn tiny() -> Self {
        Self {
            text_config: ClipTextConfig {
                vocab_size: 601,
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                max_position_embeddings: 16,
                bos_token_id: 599,
                eos_token_id: 600,
                pad_token_id: 600,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                image_size: 32,
                patch_size: 8,
                ..ClipVisionConfig::default()
            },
            projection_dim: 24,
            logit_scale_init_value: default_logit_scale(),
            moe: MoeConfig::none(),
        }
    }

    /// The same configuration with the given MoE placement.
    pub fn with_moe(self, moe: MoeConfig) -> Self {
        Self { moe, ..self }
    }

    /// Reads a `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| Error::ConfigParse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes the configuration as JSON (transformers' layout plus `moe`),
    /// atomically: a temporary file beside `path`, then a rename.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::ConfigParse {
            path: path.as_ref().to_path_buf(),
            source,
        })?;
        crate::files::write_atomically(path.as_ref(), |tmp| {
            std::fs::write(tmp, json.as_bytes()).map_err(|source| Error::Io {
                action: "writing",
                path: tmp.to_path_buf(),
                source,
            })
        })
    }

    /// Checks the shapes the model relies on, naming the first field at
    /// fault: every size positive and within [`LIMITS`], epsilons positive,
    /// the temperature finite, and the whole model below
    /// [`MAX_PARAMETERS`], so an absurd `config.json` is refused before
    /// anything is allocated.
    pub fn validate(&self) -> Result<()> {
        if self.projection_dim == 0 || self.projection_dim > MAX_WIDTH {
            return Err(Error::invalid_config(
                "projection_dim",
                format!("({}) must be 1 to {MAX_WIDTH}", self.projection_dim),
            ));
        }
        if !(self.logit_scale_init_value.is_finite()
            && self.logit_scale_init_value.abs() <= MAX_LOG_TEMPERATURE)
        {
            return Err(Error::invalid_config(
                "logit_scale_init_value",
                format!(
                    "({}) must be a finite log temperature within +-{MAX_LOG_TEMPERATURE} \
                     (CLIP's is ln(1/0.07) = 2.6592)",
                    self.logit_scale_init_value
                ),
            ));
        }
        self.vision_config.validate()?;
        self.text_config.validate()?;
        self.moe.validate(self.vision_config.num_hidden_layers)?;
        let parameters = self.parameter_estimate();
        if parameters > MAX_PARAMETERS {
            return Err(Error::invalid_config(
                "config",
                format!(
                    "describes a model of about {parameters} parameters, above the limit of \
                     {MAX_PARAMETERS} (CLIP ViT-B/16 has 1.5e8): is config.json corrupted?"
                ),
            ));
        }
        Ok(())
    }

    /// About how many parameters the model has (the large matrices and
    /// tables; biases and norms aside), computed without overflow.
    pub fn parameter_estimate(&self) -> u128 {
        let v = &self.vision_config;
        let t = &self.text_config;
        let n = |x: usize| x as u128;
        let vision = n(v.hidden_size) * n(v.num_channels) * n(v.patch_size) * n(v.patch_size)
            + n(v.num_positions()) * n(v.hidden_size)
            + v.encoder().parameter_estimate();
        let text = (n(t.vocab_size) + n(t.max_position_embeddings)) * n(t.hidden_size)
            + t.encoder().parameter_estimate();
        let moe = match self.moe.layer_config(v.hidden_size, v.intermediate_size) {
            Some(layer) => {
                let blocks = (0..v.num_hidden_layers)
                    .filter(|&i| self.moe.applies_to(i, v.num_hidden_layers))
                    .count();
                n(blocks)
                    * (n(layer.num_slots()) * n(v.hidden_size)
                        + 2 * n(layer.options.num_experts)
                            * n(v.hidden_size)
                            * n(layer.expert_hidden_dim))
            }
            None => 0,
        };
        let projections = n(self.projection_dim) * (n(v.hidden_size) + n(t.hidden_size));
        vision + text + moe + projections
    }
}

impl ClipVisionConfig {
    /// Checks the tower's shapes, naming the first field at fault.
    pub fn validate(&self) -> Result<()> {
        self.encoder().validate(
            "vision_config",
            &[
                ("num_channels", self.num_channels, 64),
                ("patch_size", self.patch_size, LIMITS.0),
                ("image_size", self.image_size, LIMITS.0),
            ],
        )?;
        if self.image_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::invalid_config(
                "vision_config.image_size",
                format!(
                    "({}) must be a positive multiple of patch_size ({})",
                    self.image_size, self.patch_size
                ),
            ));
        }
        Ok(())
    }
}

impl ClipTextConfig {
    /// Checks the tower's shapes, naming the first field at fault.
    pub fn validate(&self) -> Result<()> {
        self.encoder().validate(
            "text_config",
            &[
                ("vocab_size", self.vocab_size, LIMITS.1),
                (
                    "max_position_embeddings",
                    self.max_position_embeddings,
                    LIMITS.2,
                ),
            ],
        )?;
        if self.end_of_text_id() as usize >= self.vocab_size {
            return Err(Error::invalid_config(
                "text_config.eos_token_id",
                format!(
                    "({}) must be below vocab_size ({})",
                    self.eos_token_id, self.vocab_size
                ),
            ));
        }
        Ok(())
    }
}
