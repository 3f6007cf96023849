//! The vision tower (transformers' `CLIPVisionTransformer`): patch
//! embeddings, `pre_layrnorm` (sic, the checkpoint's name), the encoder with
//! its MoE branches, and `post_layernorm` of the class token.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use crate::config::ClipVisionConfig;
use crate::embeddings::VisionEmbeddings;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::layer_norm::LayerNorm;
use crate::moe_placement::MoeConfig;

/// The ViT image encoder, parameters under `vision_model.*`.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    embeddings: VisionEmbeddings,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    cfg: ClipVisionConfig,
}

impl VisionTransformer {
    /// Builds the tower with the MoE branches `moe` places.
    pub fn new(cfg: &ClipVisionConfig, moe: &MoeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        moe.validate(cfg.num_hidden_layers)?;
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            embeddings: VisionEmbeddings::new(cfg, vb.pp("embeddings"))?,
            pre_layrnorm: LayerNorm::new(d, eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(&cfg.encoder(), moe, vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(d, eps, vb.pp("post_layernorm"))?,
            cfg: cfg.clone(),
        })
    }

    /// `(batch, C, image_size, image_size)` pixels -> `(batch, hidden)`
    /// pooled class-token states (transformers' `pooler_output`).
    ///
    /// The tower computes in the pixels' dtype: F32, or BF16 for mixed
    /// precision, where every layer casts its F32 master weights to BF16
    /// (their gradients flow back to the F32 weights), LayerNorm statistics
    /// and the MoE routing stay in F32, and the result is BF16.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (c, s) = (self.cfg.num_channels, self.cfg.image_size);
        match pixel_values.dims() {
            &[b, pc, h, w] if b > 0 && pc == c && h == s && w == s => {}
            dims => {
                return Err(Error::invalid_input(
                    "pixel_values",
                    format!("expected shape (batch, {c}, {s}, {s}), got {dims:?}"),
                ))
            }
        }
        if !matches!(pixel_values.dtype(), DType::F32 | DType::BF16) {
            return Err(Error::invalid_input(
                "pixel_values",
                format!("expected F32 or BF16, got {:?}", pixel_values.dtype()),
            ));
        }
        let tokens = self.embeddings.forward(pixel_values)?;
        let tokens = self.pre_layrnorm.forward(&tokens)?;
        let tokens = self.encoder.forward(&tokens, false)?;
        let class_token = tokens.narrow(1, 0, 1)?.squeeze(1)?;
        Ok(self.post_layernorm.forward(&class_token)?)
    }

    /// The tower's configuration.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }
}
