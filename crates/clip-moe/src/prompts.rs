//! Class prompts and the prompt classifier (paper section 4, Table 4).
//!
//! An image is scored by the cosine similarity of its embedding with the
//! embeddings of a "live" and a "fake" prompt, times the model's logit scale;
//! the softmax over the two gives the attack probability (higher = more
//! likely an attack). Several templates can be ensembled: each class
//! embedding is then the normalised mean of its templates' normalised
//! embeddings (CLIP's zero-shot prompt ensembling).

use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{l2_normalize, ClipModel};
use crate::text::TextInput;
use crate::tokenizer::ClipTokenizer;

/// The two classes, in logit column order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaceClass {
    /// Bona fide face: column 0.
    Live,
    /// Attack (physical or digital): column 1.
    Fake,
}

impl FaceClass {
    /// Both classes in column order.
    pub const ALL: [FaceClass; 2] = [FaceClass::Live, FaceClass::Fake];

    /// The word the templates insert.
    pub fn word(self) -> &'static str {
        match self {
            FaceClass::Live => "live",
            FaceClass::Fake => "fake",
        }
    }

    /// Logit column (and class label) of the class.
    pub fn index(self) -> usize {
        match self {
            FaceClass::Live => 0,
            FaceClass::Fake => 1,
        }
    }
}

/// The paper's prompt templates T-1 to T-8 (Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum PromptTemplate {
    /// "There is a `<c>` face in this photo."
    T1,
    /// "`<c>` face is in this photo."
    T2,
    /// "A photo of a `<c>` face." (best ACC/AUC/EER in Table 5)
    T3,
    /// "This is an example of a `<c>` face."
    T4,
    /// "This is how a `<c>` face looks like."
    T5,
    /// "This photo contains `<c>` face."
    T6,
    /// "The picture is a `<c>` face."
    T7,
    /// "This is an image of a `<c>` face." (the paper's choice: best ACER)
    #[default]
    T8,
}

impl PromptTemplate {
    /// All eight templates, for an ensemble.
    pub const ALL: [PromptTemplate; 8] = [
        PromptTemplate::T1,
        PromptTemplate::T2,
        PromptTemplate::T3,
        PromptTemplate::T4,
        PromptTemplate::T5,
        PromptTemplate::T6,
        PromptTemplate::T7,
        PromptTemplate::T8,
    ];

    /// The sentence for `class`.
    pub fn sentence(self, class: FaceClass) -> String {
        let c = class.word();
        match self {
            PromptTemplate::T1 => format!("There is a {c} face in this photo."),
            PromptTemplate::T2 => {
                let mut word = c.to_string();
                word[..1].make_ascii_uppercase();
                format!("{word} face is in this photo.")
            }
            PromptTemplate::T3 => format!("A photo of a {c} face."),
            PromptTemplate::T4 => format!("This is an example of a {c} face."),
            PromptTemplate::T5 => format!("This is how a {c} face looks like."),
            PromptTemplate::T6 => format!("This photo contains {c} face."),
            PromptTemplate::T7 => format!("The picture is a {c} face."),
            PromptTemplate::T8 => format!("This is an image of a {c} face."),
        }
    }
}

/// Scores images against the live/fake prompts.
#[derive(Debug, Clone)]
pub struct PromptClassifier {
    /// Per class (column order), its tokenised templates.
    prompts: Vec<TextInput>,
    /// `(2, projection_dim)` class embeddings, computed once and detached
    /// when the text tower is frozen.
    cached: Option<Tensor>,
}

impl PromptClassifier {
    /// Tokenises `templates` for both classes. With `text_frozen`, the class
    /// embeddings are computed now and reused (no text forward per step, no
    /// gradient into the text tower); otherwise every call recomputes them.
    pub fn new(
        model: &ClipModel,
        tokenizer: &ClipTokenizer,
        templates: &[PromptTemplate],
        text_frozen: bool,
        device: &Device,
    ) -> Result<Self> {
        if templates.is_empty() {
            return Err(Error::invalid_input(
                "templates",
                "at least one prompt template is needed",
            ));
        }
        let prompts = FaceClass::ALL
            .iter()
            .map(|&class| {
                let sentences: Vec<String> = templates.iter().map(|t| t.sentence(class)).collect();
                tokenizer.encode(&sentences, device)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut classifier = Self {
            prompts,
            cached: None,
        };
        if text_frozen {
            classifier.cached = Some(classifier.compute_class_embeddings(model)?.detach());
        }
        Ok(classifier)
    }

    fn compute_class_embeddings(&self, model: &ClipModel) -> Result<Tensor> {
        let rows = self
            .prompts
            .iter()
            .map(|prompts| {
                let embeds = l2_normalize(&model.text_features(prompts)?)?;
                Ok(embeds.mean_keepdim(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        l2_normalize(&Tensor::cat(&rows, 0)?)
    }

    /// `(2, projection_dim)` L2-normalised class embeddings, rows live, fake.
    pub fn class_embeddings(&self, model: &ClipModel) -> Result<Tensor> {
        match &self.cached {
            Some(cached) => Ok(cached.clone()),
            None => self.compute_class_embeddings(model),
        }
    }

    /// `(batch, 2)` logits (columns live, fake) of L2-normalised image
    /// embeddings, scaled by the model's logit scale.
    pub fn logits(&self, model: &ClipModel, image_embeds: &Tensor) -> Result<Tensor> {
        model.similarity_logits(image_embeds, &self.class_embeddings(model)?)
    }

    /// `(batch, 2)` logits of images.
    pub fn image_logits(&self, model: &ClipModel, pixel_values: &Tensor) -> Result<Tensor> {
        let image_embeds = l2_normalize(&model.image_features(pixel_values)?)?;
        self.logits(model, &image_embeds)
    }
}

/// Per-image attack probability, `(batch,)`: the softmax over the two
/// prompts' logits, fake column. Higher = more likely an attack.
pub fn attack_probability(logits: &Tensor) -> Result<Tensor> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1)?;
    Ok(probs.narrow(1, FaceClass::Fake.index(), 1)?.squeeze(1)?)
}
