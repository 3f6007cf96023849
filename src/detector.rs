//! The detector: CLIP's transform, the MoE CLIP image tower and the
//! live/fake prompt head, from pixels (or images) to attack probabilities.
//!
//! One type serves training's periodic evaluation, `eval_uniattack` and
//! `detect`, so their scores are the same numbers for the same images.
//!
//! candle has no `no_grad`: any operation on a tensor that tracks gradients
//! records its inputs for a backward pass, which keeps every activation of a
//! forward alive. The detector's model is therefore built on *detached*
//! views of the weights: they share storage with the training variables
//! (no copy, and they see every optimizer update), but nothing computed
//! from them is recorded.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clip_moe::{
    attack_probability, l2_normalize, ClipConfig, ClipModel, ClipTokenizer, PromptClassifier,
    PromptTemplate,
};
use fas_data::{ClipTransform, TransformInput};

use crate::checkpoint::{LoadedCheckpoint, CLASS_EMBEDDINGS};
use crate::data::transform;
use crate::error::{Error, Result};

/// Scores face images: attack probability per image (higher = attack).
#[derive(Debug, Clone)]
pub struct Detector {
    model: ClipModel,
    /// `(2, projection_dim)` L2-normalised prompt embeddings, rows live, fake.
    class_embeddings: Tensor,
    transform: ClipTransform,
    /// On CUDA, whether F32 matmuls use TF32 while this detector scores.
    tf32: bool,
}

/// Detached (untracked) views of every variable in `varmap`, by name.
pub fn detached_weights(varmap: &VarMap) -> HashMap<String, Tensor> {
    let vars = match varmap.data().lock() {
        Ok(vars) => vars,
        Err(poisoned) => poisoned.into_inner(),
    };
    vars.iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect()
}

/// A model over detached views of `varmap`'s variables (see the module docs).
pub fn inference_model(cfg: &ClipConfig, varmap: &VarMap, device: &Device) -> Result<ClipModel> {
    let vb = VarBuilder::from_tensors(detached_weights(varmap), DType::F32, device);
    Ok(ClipModel::new(cfg, vb)?)
}

/// The class embeddings of `templates` through `model`'s text tower, detached.
pub fn prompt_embeddings(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    templates: &[PromptTemplate],
    device: &Device,
) -> Result<Tensor> {
    let classifier = PromptClassifier::new(model, tokenizer, templates, true, device)?;
    Ok(classifier.class_embeddings(model)?.detach())
}

impl Detector {
    /// A detector over `model` (built on untracked weights, see
    /// [`inference_model`]) with the given `(2, projection_dim)` class
    /// embeddings.
    ///
    /// Its F32 matmuls run in full F32 on CUDA (PyTorch's default for
    /// inference); see [`Detector::with_tf32`].
    pub fn new(model: ClipModel, class_embeddings: Tensor) -> Self {
        let transform = transform(model.config().vision_config.image_size);
        Self {
            model,
            class_embeddings: class_embeddings.detach(),
            transform,
            tf32: false,
        }
    }

    /// On CUDA, lets the F32 matmuls of scoring use TF32 (candle's
    /// `set_gemm_reduced_precision_f32`, a process-wide switch that is set
    /// for each scoring call and restored after it). A run trained with
    /// TF32 is evaluated with it, during training and afterwards
    /// ([`Detector::from_checkpoint`] takes the run's setting), so its
    /// checkpoint's dev threshold meets the scores it was chosen on. No
    /// effect on the CPU.
    pub fn with_tf32(mut self, tf32: bool) -> Self {
        self.tf32 = tf32;
        self
    }

    /// Whether scoring on CUDA uses TF32 matmuls.
    pub fn tf32(&self) -> bool {
        self.tf32
    }

    /// The detector a checkpoint holds: its weights, model configuration and
    /// prompt embeddings.
    pub fn from_checkpoint(checkpoint: &LoadedCheckpoint, device: &Device) -> Result<Self> {
        let weights = checkpoint.weights()?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, device);
        let model = ClipModel::new(&checkpoint.meta.clip, vb).map_err(|e| {
            Error::checkpoint(
                &checkpoint.path,
                format!("does not fit its own model configuration: {e}"),
            )
        })?;
        let embeddings = checkpoint.class_embeddings(device)?;
        let expected = [2, checkpoint.meta.clip.projection_dim];
        if embeddings.dims() != expected {
            return Err(Error::checkpoint(
                &checkpoint.path,
                format!(
                    "tensor {CLASS_EMBEDDINGS} has shape {:?}, expected {expected:?}",
                    embeddings.dims()
                ),
            ));
        }
        Ok(Self::new(model, embeddings.to_dtype(DType::F32)?)
            .with_tf32(checkpoint.meta.experiment.model.tf32))
    }

    /// The transform images go through (CLIP's, at the model's image size).
    pub fn transform(&self) -> ClipTransform {
        self.transform
    }

    /// The model's configuration.
    pub fn config(&self) -> &ClipConfig {
        self.model.config()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        self.class_embeddings.device()
    }

    /// The `(2, projection_dim)` prompt embeddings.
    pub fn class_embeddings(&self) -> &Tensor {
        &self.class_embeddings
    }

    /// `(batch, 2)` prompt logits (columns live, fake) of preprocessed
    /// `(batch, 3, S, S)` pixels.
    pub fn logits(&self, pixels: &Tensor) -> Result<Tensor> {
        let _precision = MatmulPrecision::set(self.device(), self.tf32);
        let pixels = pixels.to_device(self.device())?;
        let embeds = l2_normalize(&self.model.image_features(&pixels)?)?;
        Ok(self
            .model
            .similarity_logits(&embeds, &self.class_embeddings)?)
    }

    /// Attack probability per image of preprocessed pixels.
    pub fn attack_probabilities(&self, pixels: &Tensor) -> Result<Vec<f64>> {
        let probs = attack_probability(&self.logits(pixels)?)?;
        Ok(probs
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f64>()?)
    }

    /// Attack probability per decoded image (transform, then
    /// [`Detector::attack_probabilities`]): files read with
    /// `fas_data::image_io::load_image` ([`fas_data::DecodedImage`], which
    /// resizes palette and 1-bit files as Pillow does), or images made in
    /// memory (`image::DynamicImage`).
    pub fn score_images<I: TransformInput>(&self, images: &[I]) -> Result<Vec<f64>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let size = self.transform.size as usize;
        let mut pixels = Vec::with_capacity(images.len() * 3 * size * size);
        for image in images {
            pixels.extend(self.transform.apply(image)?);
        }
        let pixels = Tensor::from_vec(pixels, (images.len(), 3, size, size), &Device::Cpu)?;
        self.attack_probabilities(&pixels)
    }
}

/// Sets candle's process-wide TF32 switch for F32 matmuls on CUDA while it
/// lives, and puts back the previous setting when dropped (the training
/// steps' own setting, around an evaluation during training). Nothing on
/// other devices.
struct MatmulPrecision {
    previous: Option<bool>,
}

impl MatmulPrecision {
    fn set(device: &Device, tf32: bool) -> Self {
        if !device.is_cuda() {
            return Self { previous: None };
        }
        let previous = candle_core::cuda::gemm_reduced_precision_f32();
        candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
        Self {
            previous: Some(previous),
        }
    }
}

impl Drop for MatmulPrecision {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            candle_core::cuda::set_gemm_reduced_precision_f32(previous);
        }
    }
}
