//! Token embeddings of both towers (transformers' `CLIPVisionEmbeddings`,
//! `CLIPTextEmbeddings`).

use candle_core::{Result, Tensor};
use candle_nn::{Embedding, Init, Module, VarBuilder};

use crate::config::{ClipTextConfig, ClipVisionConfig};

/// Class token + patch embedding + learned positions.
///
/// The patch embedding is `Conv2d(C, D, kernel = stride = P, bias = False)`,
/// computed exactly as a reshape and one matmul: non-overlapping `P x P`
/// patches flattened in `(c, y, x)` order, times the conv weight viewed as
/// `(D, C·P·P)`. Both directions are plain matmuls, unlike candle's naive
/// conv2d backward.
#[derive(Debug, Clone)]
pub(crate) struct VisionEmbeddings {
    class_embedding: Tensor,
    patch_weight: Tensor,
    position_embedding: Tensor,
    num_channels: usize,
    patch_size: usize,
    grid: usize,
}

impl VisionEmbeddings {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let fan_in = (c * p * p) as f64;
        // A trainable Var (candle-transformers' CLIP only reads it if the
        // VarMap already holds it, else makes a constant).
        let class_embedding = vb.get_with_hints(
            d,
            "class_embedding",
            Init::Randn {
                mean: 0.0,
                stdev: (d as f64).powf(-0.5),
            },
        )?;
        let patch_weight = vb.pp("patch_embedding").get_with_hints(
            (d, c, p, p),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: fan_in.powf(-0.5),
            },
        )?;
        let position_embedding = vb.pp("position_embedding").get_with_hints(
            (cfg.num_positions(), d),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        Ok(Self {
            class_embedding,
            patch_weight,
            position_embedding,
            num_channels: c,
            patch_size: p,
            grid: cfg.grid_size(),
        })
    }

    /// `(batch, C, H, W)` pixels (shape checked by the caller) ->
    /// `(batch, 1 + grid², D)` tokens.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let b = pixel_values.dim(0)?;
        let (c, p, g) = (self.num_channels, self.patch_size, self.grid);
        let d = self.class_embedding.dim(0)?;
        // (b, c, g·p, g·p) -> (b, c, gy, p, gx, p) -> (b, gy, gx, c, p, p)
        let patches = pixel_values
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        // (b·g², c·p²) x (c·p², d) -> (b, g², d), in the pixels' dtype.
        let dtype = pixel_values.dtype();
        let weight = self.patch_weight.to_dtype(dtype)?.reshape((d, c * p * p))?;
        let patch_embeds = fused_ops::matmul(&patches, &weight.t()?)?.reshape((b, g * g, d))?;
        let class_embeds = self
            .class_embedding
            .to_dtype(dtype)?
            .reshape((1, 1, d))?
            .expand((b, 1, d))?;
        Tensor::cat(&[&class_embeds, &patch_embeds], 1)?
            .broadcast_add(&self.position_embedding.to_dtype(dtype)?.unsqueeze(0)?)
    }
}

/// Token embedding + learned positions.
#[derive(Debug, Clone)]
pub(crate) struct TextEmbeddings {
    token_embedding: Embedding,
    position_embedding: Tensor,
}

impl TextEmbeddings {
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            token_embedding: candle_nn::embedding(cfg.vocab_size, d, vb.pp("token_embedding"))?,
            position_embedding: vb.pp("position_embedding").get_with_hints(
                (cfg.max_position_embeddings, d),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.01,
                },
            )?,
        })
    }

    /// `(batch, len)` u32 ids (range-checked by the caller) ->
    /// `(batch, len, D)`.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let len = input_ids.dim(1)?;
        let tokens = self.token_embedding.forward(input_ids)?;
        tokens.broadcast_add(&self.position_embedding.narrow(0, 0, len)?.unsqueeze(0)?)
    }
}
