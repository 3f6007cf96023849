//! The experiment configuration: everything a training run depends on, as
//! data. It is saved as `config.json` in every run directory and inside
//! every checkpoint, so a run can be resumed, re-evaluated and reproduced
//! from its files alone.

use std::path::PathBuf;

use clip_moe::{MoeConfig, PromptTemplate};
use fas_data::protocol::uniattack::{Modality, Protocol};
use fas_data::{AugmentConfig, Balance, ListFormat};
use fas_metrics::ThresholdRule;
use serde::{Deserialize, Serialize};

use crate::adam::AdamConfig;
use crate::error::{Error, Result};
use crate::schedule::ScheduleConfig;

/// One training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Seed of the weight initialisation, the data order and augmentation.
    pub seed: u64,
    /// Backbone and MoE branches.
    pub model: ModelConfig,
    /// Class prompts and the loss over them.
    pub prompts: PromptConfig,
    /// Which dataset and protocol.
    pub data: DataConfig,
    /// Batching, balancing, augmentation, threads.
    pub loader: LoaderSettings,
    /// Adam.
    pub optim: AdamConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Length of training and what is done per step.
    pub training: TrainingConfig,
    /// Periodic and final evaluation.
    pub eval: EvalConfig,
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelSource {
    /// Pretrained CLIP weights: a hub id (`openai/clip-vit-base-patch16`) or
    /// a local directory with `config.json`, the weights and `tokenizer.json`.
    Pretrained {
        /// Hub id or directory.
        model: String,
    },
    /// The demo's tiny CLIP with seeded random weights and the bundled tiny
    /// tokenizer (no download; see [`crate::demo`]).
    DemoTiny,
    /// CLIP ViT-B/16's shapes with seeded random weights and the bundled
    /// tiny tokenizer: the paper's model, for benchmarks and smoke tests
    /// without a download (`--model random:vit-b16`).
    RandomVitB16,
}

/// Which parameters stay fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrozenPart {
    /// The text tower and its projection: the class prompt embeddings are
    /// then computed once and cached.
    Text,
    /// Every vision parameter except the MoE branches (the visual
    /// projection included).
    VisionBackbone,
    /// The learned temperature.
    LogitScale,
}

/// The precision of the training step's forward and backward passes.
/// Weights, gradients and Adam state are F32 in every case: a BF16 update
/// of 1e-6 on a weight of 0.02 would round to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// F32 throughout.
    #[default]
    F32,
    /// Mixed precision, as PyTorch's `autocast(dtype=bfloat16)`: the vision
    /// tower computes in BF16 from F32 master weights (LayerNorm statistics
    /// and MoE routing in F32); the text tower, the projections, the logits
    /// and the loss stay F32. Evaluation runs in F32.
    Bf16,
}

impl Precision {
    /// The dtype the vision tower computes in.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

fn yes() -> bool {
    true
}

/// Backbone and MoE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Pretrained weights or the demo model.
    pub source: ModelSource,
    /// The MoE branches of the vision tower (blocks, expert width, and the
    /// branch's `softmoe` options; see `clip_moe::MoeConfig`).
    pub moe: MoeConfig,
    /// Parameters that do not train; empty = all train (the field's code).
    #[serde(default)]
    pub frozen: Vec<FrozenPart>,
    /// Compute precision.
    #[serde(default)]
    pub precision: Precision,
    /// On CUDA, let F32 matmuls use TF32 tensor cores (candle's
    /// `set_gemm_reduced_precision_f32`; PyTorch's `allow_tf32`): about 10
    /// mantissa bits per product, F32 accumulation. No effect on the CPU.
    #[serde(default = "yes")]
    pub tf32: bool,
}

/// The training objective over the live/fake prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// The paper's eq. 1: CLIP's symmetric contrastive loss with each image's
    /// class prompt as its text (`clip_moe::loss::clip_loss_with_prompts`).
    #[default]
    Clip,
    /// Cross-entropy of each image over the two prompts (FLIP-style heads).
    CrossEntropy,
}

/// Prompts and loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    /// Templates; several are ensembled (mean of normalised embeddings).
    /// Default: T-8, the paper's choice.
    pub templates: Vec<PromptTemplate>,
    /// Objective.
    #[serde(default)]
    pub loss: LossKind,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            templates: vec![PromptTemplate::T8],
            loss: LossKind::Clip,
        }
    }
}

/// Where the train, dev and test splits come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// UniAttackData protocol lists under
    /// `<root>/UniAttackData/protocol/UniAttackData@<protocol>_<modality>_<split>.txt`.
    UniAttack {
        /// `p1` ... `p2.2`.
        protocol: Protocol,
        /// Image lists (frames) or video lists (frame directories).
        modality: Modality,
    },
    /// Any three list files (relative to the data root or absolute) in a
    /// named or explicit format (JFSFDB lists: `ListFormat::Jfsfdb`).
    Lists {
        /// Format, including its label convention.
        format: ListFormat,
        /// Training list.
        train: PathBuf,
        /// Development list (threshold, model selection).
        dev: PathBuf,
        /// Test list.
        test: PathBuf,
    },
}

/// The dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The directory list entries are relative to.
    pub root: PathBuf,
    /// Lists and format.
    pub dataset: Dataset,
    /// Follow `../` entries out of the data root (refused by default).
    #[serde(default)]
    pub allow_outside_root: bool,
}

/// Loader settings of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderSettings {
    /// Images per optimizer micro-batch.
    pub batch_size: usize,
    /// Images per evaluation batch.
    pub eval_batch_size: usize,
    /// Decoding threads; 0 = one per core.
    pub workers: usize,
    /// Live/attack oversampling to 1:1 (as FA3-CLIP does).
    pub balance: Balance,
    /// Training augmentation; `None` = the plain CLIP transform.
    pub augment: Option<AugmentConfig>,
}

impl Default for LoaderSettings {
    fn default() -> Self {
        Self {
            batch_size: 32,
            eval_batch_size: 64,
            workers: 0,
            balance: Balance::None,
            augment: Some(AugmentConfig::default()),
        }
    }
}

/// The length of training and what happens per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Passes over the training list.
    pub epochs: u64,
    /// Stop after this many optimizer steps, if fewer than the epochs give.
    pub max_steps: Option<u64>,
    /// Micro-batches per optimizer step (gradient accumulation).
    pub accumulation: usize,
    /// Clip the global gradient norm to this value (`clip_grad_norm_`).
    pub clip_grad_norm: Option<f64>,
    /// Log the loss every this many optimizer steps.
    pub log_every: u64,
    /// Also checkpoint every this many optimizer steps (besides every
    /// evaluation), so a crash mid-epoch loses little.
    pub checkpoint_every: Option<u64>,
    /// Rolling checkpoints kept (the best one is kept apart).
    pub keep_last: usize,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: None,
            accumulation: 1,
            clip_grad_norm: None,
            log_every: 10,
            checkpoint_every: None,
            keep_last: 2,
        }
    }
}

/// The split the best checkpoint is chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Lowest dev ACER (at dev's own EER threshold): the honest choice.
    #[default]
    Dev,
    /// Lowest test ACER, as FLIP, FA3-CLIP and CASIA-FAS-Benchmark select;
    /// only to reproduce their numbers. Reports say so.
    Test,
}

/// When evaluation runs during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalEvery {
    /// After every epoch.
    Epoch,
    /// Every this many optimizer steps (and after the last).
    Steps(u64),
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// When to evaluate.
    pub every: EvalEvery,
    /// Average frame scores per video before the metrics (SSDG/FLIP).
    #[serde(default)]
    pub video_level: bool,
    /// Where the best checkpoint is chosen.
    #[serde(default)]
    pub select_on: Selection,
    /// How the threshold is chosen on dev (default: the organisers' EER grid).
    #[serde(default)]
    pub threshold_rule: ThresholdRule,
    /// Also score the test split at every evaluation (for the log; never
    /// used for selection unless `select_on` is `test`).
    #[serde(default = "default_true")]
    pub test_during_training: bool,
}

fn default_true() -> bool {
    true
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: EvalEvery::Epoch,
            video_level: false,
            select_on: Selection::Dev,
            threshold_rule: ThresholdRule::OrganiserGrid,
            test_during_training: true,
        }
    }
}

impl ExperimentConfig {
    /// The paper's settings on UniAttackData under `root`: CLIP ViT-B/16 with
    /// La-SoftMoE (4 experts x 49 slots) in all 12 blocks, prompt T-8, CLIP
    /// loss, Adam at lr 1e-6.
    pub fn paper(root: PathBuf, protocol: Protocol) -> Self {
        Self {
            seed: 0,
            model: ModelConfig {
                source: ModelSource::Pretrained {
                    model: clip_moe::hub::DEFAULT_MODEL_ID.to_string(),
                },
                moe: MoeConfig::la_soft_moe(),
                frozen: Vec::new(),
                precision: Precision::F32,
                tf32: true,
            },
            prompts: PromptConfig::default(),
            data: DataConfig {
                root,
                dataset: Dataset::UniAttack {
                    protocol,
                    modality: Modality::Image,
                },
                allow_outside_root: false,
            },
            loader: LoaderSettings::default(),
            optim: AdamConfig::default(),
            schedule: ScheduleConfig::default(),
            training: TrainingConfig::default(),
            eval: EvalConfig::default(),
        }
    }

    /// Checks every section, naming the first setting at fault.
    pub fn validate(&self) -> Result<()> {
        self.optim.validate()?;
        self.schedule.validate()?;
        if self.prompts.templates.is_empty() {
            return Err(Error::config(
                "prompts.templates",
                "give at least one template",
            ));
        }
        if self.loader.batch_size == 0 {
            return Err(Error::config("loader.batch_size", "must be at least 1"));
        }
        if self.loader.eval_batch_size == 0 {
            return Err(Error::config(
                "loader.eval_batch_size",
                "must be at least 1",
            ));
        }
        if self.prompts.loss == LossKind::Clip && self.loader.batch_size < 2 {
            return Err(Error::config(
                "loader.batch_size",
                "the CLIP loss contrasts the images of a batch: use at least 2",
            ));
        }
        if self.training.accumulation == 0 {
            return Err(Error::config("training.accumulation", "must be at least 1"));
        }
        if self.training.epochs == 0 && self.training.max_steps.is_none() {
            return Err(Error::config("training.epochs", "must be at least 1"));
        }
        if self.training.max_steps == Some(0) {
            return Err(Error::config(
                "training.max_steps",
                "must be at least 1 (a run of no step would report the untrained model)",
            ));
        }
        if self.training.log_every == 0 {
            return Err(Error::config("training.log_every", "must be at least 1"));
        }
        if self.training.keep_last == 0 {
            return Err(Error::config(
                "training.keep_last",
                "keep at least the last checkpoint, or a run cannot be resumed",
            ));
        }
        if let Some(norm) = self.training.clip_grad_norm {
            if !(norm.is_finite() && norm > 0.0) {
                return Err(Error::config(
                    "training.clip_grad_norm",
                    format!("must be a positive number, got {norm}"),
                ));
            }
        }
        if matches!(self.training.checkpoint_every, Some(0))
            || matches!(self.eval.every, EvalEvery::Steps(0))
        {
            return Err(Error::config(
                "training.checkpoint_every / eval.every",
                "must be at least 1",
            ));
        }
        if let Some(augment) = &self.loader.augment {
            augment.validate()?;
        }
        Ok(())
    }

    /// Reads a saved `config.json`.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of plain data always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_config_round_trips_through_json() {
        let cfg = ExperimentConfig::paper("/data".into(), Protocol::P2_1);
        cfg.validate().unwrap();
        let back: ExperimentConfig = serde_json::from_str(&cfg.to_json()).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(cfg.optim.lr, 1e-6);
        assert_eq!(cfg.optim.weight_decay, 0.0);
        assert_eq!(cfg.prompts.templates, vec![PromptTemplate::T8]);
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let mut cfg = ExperimentConfig::paper("/data".into(), Protocol::P1);
        let mut eval_zero = cfg.clone();
        eval_zero.loader.eval_batch_size = 0;
        let err = eval_zero.validate().unwrap_err().to_string();
        assert!(err.contains("loader.eval_batch_size"), "{err}");
        cfg.loader.batch_size = 1;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("loader.batch_size"), "{err}");
        let mut cfg = ExperimentConfig::paper("/data".into(), Protocol::P1);
        cfg.optim.lr = f64::NAN;
        assert!(cfg.validate().unwrap_err().to_string().contains("optim.lr"));
        // Unknown fields are refused, not ignored.
        let mut json: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap();
        json["trainig"] = serde_json::json!({});
        assert!(serde_json::from_value::<ExperimentConfig>(json).is_err());
    }

    /// Run configurations written before the MoE placement took its options
    /// from `softmoe` (commit c1a3118's demo preset with data root
    /// `/data/demo`, La-SoftMoE and no MoE; `tests/fixtures/legacy/`) still
    /// load, so old run directories resume and old checkpoints evaluate.
    #[test]
    fn legacy_run_configs_keep_loading() {
        use clip_moe::MoeKind;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/legacy");
        let la = ExperimentConfig::from_file(&dir.join("experiment_demo_la.json")).unwrap();
        let options = la.model.moe.layer.as_ref().expect("a MoE branch");
        assert_eq!(la.model.moe.kind(), MoeKind::LaSoftMoe);
        assert_eq!((options.num_experts, options.slots_per_expert), (4, 16));
        assert_eq!(la.model.moe.layers, clip_moe::MoeLayers::All);
        assert_eq!(la.model.moe.expert_hidden_dim, None);
        let demo = crate::demo::experiment(std::path::Path::new("/data/demo"));
        assert_eq!(la, demo);
        let none = ExperimentConfig::from_file(&dir.join("experiment_demo_none.json")).unwrap();
        assert_eq!(none.model.moe, MoeConfig::none());
        assert_eq!(none.training, demo.training);
    }
}
