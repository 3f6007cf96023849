//! The text tower (transformers' `CLIPTextTransformer`): token and position
//! embeddings, the causal encoder, `final_layer_norm`, pooled at the
//! end-of-text token.
//!
//! Pooling position: OpenAI's code and transformers' legacy path take
//! `argmax(input_ids)`, which relies on `<|endoftext|>` being the largest id
//! and unique in the row. Batches padded with `<|endoftext|>` (as CLIP's
//! tokenizer pads) have ties, and GPU argmax does not promise the first of
//! tied maxima. Here the position is the first occurrence of the end-of-text
//! id, found on the host when the [`TextInput`] is built, and gathered.

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::config::ClipTextConfig;
use crate::embeddings::TextEmbeddings;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::layer_norm::LayerNorm;
use crate::moe_placement::MoeConfig;

/// A batch of token ids with each row's end-of-text position.
#[derive(Debug, Clone)]
pub struct TextInput {
    input_ids: Tensor,
    eos_positions: Vec<usize>,
    max_id: u32,
}

impl TextInput {
    /// Builds the batch from equal-length rows of ids. Every row must contain
    /// `end_of_text_id`; the first occurrence is where the row is pooled.
    pub fn new(rows: &[Vec<u32>], end_of_text_id: u32, device: &Device) -> Result<Self> {
        let len = match rows.first() {
            Some(row) if !row.is_empty() => row.len(),
            _ => {
                return Err(Error::invalid_input(
                    "input_ids",
                    "empty batch or empty row",
                ))
            }
        };
        let mut eos_positions = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if row.len() != len {
                return Err(Error::invalid_input(
                    format!("input_ids row {i}"),
                    format!("has {} ids, row 0 has {len}: pad the batch", row.len()),
                ));
            }
            let eos = row
                .iter()
                .position(|&id| id == end_of_text_id)
                .ok_or_else(|| {
                    Error::invalid_input(
                        format!("input_ids row {i}"),
                        format!("has no end-of-text token ({end_of_text_id}) to pool at"),
                    )
                })?;
            eos_positions.push(eos);
        }
        let flat: Vec<u32> = rows.iter().flatten().copied().collect();
        let max_id = flat.iter().copied().max().unwrap_or(0);
        Ok(Self {
            input_ids: Tensor::from_vec(flat, (rows.len(), len), device)?,
            eos_positions,
            max_id,
        })
    }

    /// `(batch, len)` u32 ids.
    pub fn input_ids(&self) -> &Tensor {
        &self.input_ids
    }

    /// Per row, the position of its first end-of-text token.
    pub fn eos_positions(&self) -> &[usize] {
        &self.eos_positions
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.eos_positions.len()
    }

    /// Whether the batch has no rows (never true for a built input).
    pub fn is_empty(&self) -> bool {
        self.eos_positions.is_empty()
    }
}

/// The text encoder, parameters under `text_model.*`.
#[derive(Debug, Clone)]
pub struct TextTransformer {
    embeddings: TextEmbeddings,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    cfg: ClipTextConfig,
}

impl TextTransformer {
    /// Builds the tower (never with MoE: the paper patches the image encoder).
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            embeddings: TextEmbeddings::new(cfg, vb.pp("embeddings"))?,
            encoder: Encoder::new(&cfg.encoder(), &MoeConfig::none(), vb.pp("encoder"))?,
            final_layer_norm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            cfg: cfg.clone(),
        })
    }

    /// Pooled end-of-text states, `(batch, hidden)` (transformers'
    /// `pooler_output`).
    pub fn forward(&self, text: &TextInput) -> Result<Tensor> {
        let (b, len) = text.input_ids.dims2()?;
        if len > self.cfg.max_position_embeddings {
            return Err(Error::invalid_input(
                "input_ids",
                format!(
                    "{len} tokens per row, the model has {} positions: truncate",
                    self.cfg.max_position_embeddings
                ),
            ));
        }
        if text.max_id as usize >= self.cfg.vocab_size {
            return Err(Error::invalid_input(
                "input_ids",
                format!(
                    "id {} is outside the vocabulary of {} tokens",
                    text.max_id, self.cfg.vocab_size
                ),
            ));
        }
        let device = text.input_ids.device();
        let tokens = self.embeddings.forward(&text.input_ids)?;
        let tokens = self.encoder.forward(&tokens, true)?;
        let d = tokens.dim(2)?;
        let rows: Vec<u32> = text
            .eos_positions
            .iter()
            .enumerate()
            .map(|(i, &pos)| (i * len + pos) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, b, device)?;
        let pooled = tokens.reshape((b * len, d))?.index_select(&rows, 0)?;
        // LayerNorm is per token: normalising only the pooled rows equals
        // transformers' normalise-then-pool.
        Ok(self.final_layer_norm.forward(&pooled)?)
    }

    /// The tower's configuration.
    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }
}
