//! The CLIP model (transformers' `CLIPModel`, OpenAI CLIP, Radford et al.
//! 2021) with the paper's MoE branches in the vision tower: image and text
//! features, their L2-normalised embeddings and the scaled cosine
//! similarities.

use candle_core::{Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::config::ClipConfig;
use crate::error::Result;
use crate::text::{TextInput, TextTransformer};
use crate::vision::VisionTransformer;

/// Both towers, the projections to the joint space and the learned
/// temperature. Parameter names are transformers' (`vision_model.*`,
/// `text_model.*`, `visual_projection.weight`, `text_projection.weight`,
/// `logit_scale`), so published checkpoints load unchanged; built from a
/// `VarMap`, every parameter (`class_embedding` and `logit_scale`
/// included) is a trainable `Var`.
#[derive(Debug, Clone)]
pub struct ClipModel {
    vision_model: VisionTransformer,
    text_model: TextTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: Tensor,
    cfg: ClipConfig,
}

/// Everything a joint forward pass computes.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `(images, projection_dim)`, L2-normalised.
    pub image_embeds: Tensor,
    /// `(texts, projection_dim)`, L2-normalised.
    pub text_embeds: Tensor,
    /// `(images, texts)`: cosine similarities times `exp(logit_scale)`.
    pub logits_per_image: Tensor,
    /// `(texts, images)`: the transpose.
    pub logits_per_text: Tensor,
}

impl ClipModel {
    /// Builds the model, creating (in a `VarMap`) or reading its parameters.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (v, t, p) = (
            cfg.vision_config.hidden_size,
            cfg.text_config.hidden_size,
            cfg.projection_dim,
        );
        Ok(Self {
            vision_model: VisionTransformer::new(
                &cfg.vision_config,
                &cfg.moe,
                vb.pp("vision_model"),
            )?,
            text_model: TextTransformer::new(&cfg.text_config, vb.pp("text_model"))?,
            visual_projection: candle_nn::linear_no_bias(v, p, vb.pp("visual_projection"))?,
            text_projection: candle_nn::linear_no_bias(t, p, vb.pp("text_projection"))?,
            logit_scale: vb.get_with_hints(
                (),
                "logit_scale",
                Init::Const(cfg.logit_scale_init_value),
            )?,
            cfg: cfg.clone(),
        })
    }

    /// Projected image features, `(batch, projection_dim)`, not normalised
    /// (transformers' `get_image_features`). F32 whatever the pixels' dtype:
    /// with BF16 pixels the tower computes in BF16 and its pooled output is
    /// widened before the projection, so logits and loss are F32.
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_model.forward(pixel_values)?;
        Ok(self
            .visual_projection
            .forward(&pooled.to_dtype(candle_core::DType::F32)?)?)
    }

    /// Projected text features, `(batch, projection_dim)`, not normalised
    /// (transformers' `get_text_features`).
    pub fn text_features(&self, text: &TextInput) -> Result<Tensor> {
        let pooled = self.text_model.forward(text)?;
        Ok(self.text_projection.forward(&pooled)?)
    }

    /// `(images, texts)` logits from L2-normalised embeddings:
    /// `exp(logit_scale) · image_embeds · text_embedsᵀ`.
    pub fn similarity_logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let scale = self.logit_scale.exp()?;
        Ok(image_embeds
            .matmul(&text_embeds.t()?)?
            .broadcast_mul(&scale)?)
    }

    /// Images and texts through both towers.
    pub fn forward(&self, pixel_values: &Tensor, text: &TextInput) -> Result<ClipOutput> {
        let image_embeds = l2_normalize(&self.image_features(pixel_values)?)?;
        let text_embeds = l2_normalize(&self.text_features(text)?)?;
        let logits_per_image = self.similarity_logits(&image_embeds, &text_embeds)?;
        let logits_per_text = logits_per_image.t()?;
        Ok(ClipOutput {
            image_embeds,
            text_embeds,
            logits_per_image,
            logits_per_text,
        })
    }

    /// The log temperature, a scalar (the trained value, not its exp).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The vision tower.
    pub fn vision_model(&self) -> &VisionTransformer {
        &self.vision_model
    }

    /// The text tower.
    pub fn text_model(&self) -> &TextTransformer {
        &self.text_model
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }
}

/// Rows divided by their L2 norm (transformers' `x / x.norm(dim=-1)`).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(xs.broadcast_div(&norm)?)
}
