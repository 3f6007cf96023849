//! CLIP with a Soft MoE / La-SoftMoE branch in every vision block, on
//! [candle](https://github.com/huggingface/candle).
//!
//! The model of Zou et al., "La-SoftMoE CLIP for Unified Physical-Digital
//! Face Attack Detection" (arXiv 2408.12793, Figure 2, Algorithm 1): OpenAI
//! CLIP ViT-B/16 (Radford et al. 2021) whose vision residual blocks compute
//! `X <- X + Attn(LN1 X); X <- X + MLP(LN2 X) + MoE(LN2 X)` with
//! [`softmoe`]'s layers.
//!
//! * Weight names are Hugging Face `transformers`' (`vision_model.*`,
//!   `text_model.*`, `visual_projection`, `text_projection`, `logit_scale`),
//!   so `openai/clip-vit-base-patch16` loads unchanged; the MoE of block `i`
//!   lives under `vision_model.encoder.layers.{i}.moe.*`. Outputs match
//!   transformers' `CLIPModel` to 1e-4 (tests/parity.rs).
//! * Every operation has a backward pass (differentiable LayerNorm and
//!   softmax, patch embedding as a matmul), and every parameter, including
//!   `class_embedding` and `logit_scale`, is a trainable `Var`.
//! * [`MoeConfig`] places the branches; its default initialisation leaves
//!   the pretrained model's outputs unchanged at step 0.
//! * [`checkpoint`] loads pretrained weights into a `VarMap` with a report,
//!   saves full or delta checkpoints; [`hub`] finds the files; [`ClipTokenizer`]
//!   tokenises; [`PromptClassifier`] and [`loss`] score and train with the
//!   paper's live/fake prompts.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use clip_moe::{ClipConfig, ClipModel, MoeConfig, TextInput};
//!
//! let device = Device::Cpu;
//! let cfg = ClipConfig::tiny().with_moe(MoeConfig::la_soft_moe());
//! let varmap = VarMap::new();
//! let model = ClipModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
//!
//! let pixels = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &device)?;
//! let eot = cfg.text_config.end_of_text_id();
//! let text = TextInput::new(&[vec![599, 10, 20, eot, eot], vec![599, 30, eot, eot, eot]], eot, &device)?;
//! let out = model.forward(&pixels, &text)?;
//! assert_eq!(out.logits_per_image.dims(), &[2, 2]);
//! assert!(varmap.data().lock().unwrap().contains_key("vision_model.encoder.layers.1.moe.phi"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod attention;
pub mod checkpoint;
mod config;
mod dense;
mod embeddings;
mod encoder;
mod error;
pub mod files;
pub mod hub;
mod layer_norm;
mod limits;
pub mod loss;
mod model;
mod moe_file;
mod moe_placement;
mod pickle_guard;
mod prompts;
mod text;
mod tokenizer;
mod vision;

pub use checkpoint::{
    check_config_against_file, load_model, load_weights, save_checkpoint, save_weights,
    select_vars, LoadReport, LoadedModel, WeightSelection,
};
pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig, HiddenAct};
pub use error::{Error, Result};
pub use hub::{resolve, HubOptions, ModelFiles};
pub use limits::{LIMITS, MAX_LAYERS, MAX_LOG_TEMPERATURE, MAX_PARAMETERS, MAX_WIDTH};
pub use model::{l2_normalize, ClipModel, ClipOutput};
pub use moe_placement::{MoeConfig, MoeKind, MoeLayers};
pub use prompts::{attack_probability, FaceClass, PromptClassifier, PromptTemplate};
pub use text::{TextInput, TextTransformer};
pub use tokenizer::{ClipTokenizer, END_OF_TEXT};
pub use vision::VisionTransformer;
