//! `train_uniattack`: flags -> [`ExperimentConfig`] -> [`Trainer`].
//!
//! Every setting flag is optional: unset, it keeps the value of the preset
//! (the paper's settings, or with `--demo` the demo's). With `--resume` the
//! preset is the run's own settings instead (its `config.json`, or its
//! latest checkpoint's record where that file is damaged): `--resume
//! --output RUN` alone continues the run, `--data` moves its data root,
//! and other flags must agree with the run. A run that recorded no
//! settings resumes from the flags of its original command.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use clip_moe::{MoeKind, MoeLayers, PromptTemplate};
use fas_data::protocol::uniattack::{Modality, Protocol};
use fas_data::{Balance, ListFormat, ListSpec, Media, VideoIdRule};

use super::{parse_moe_kind, parse_moe_layers, parse_protocol, parse_template};
use crate::adam::WeightDecay;
use crate::error::{Error, Result};
use crate::evaluator::EvalReport;
use crate::experiment::{
    Dataset, EvalEvery, ExperimentConfig, FrozenPart, LossKind, ModelSource, Precision, Selection,
};
use crate::labels::IntegerLabels;
use crate::schedule::Decay;
use crate::trainer::{TrainOptions, Trainer};

/// Train a La-SoftMoE CLIP face attack detector.
///
/// Without --data, give --demo: it trains a tiny model on a synthetic
/// dataset on the CPU in about 1.5 minutes on 2 cores (no download). With --data and
/// --protocol it fine-tunes CLIP ViT-B/16 with La-SoftMoE on UniAttackData
/// as the paper does. The run directory (--output) receives config.json,
/// metrics.jsonl, checkpoints/, report.json, scores/ and plots/.
#[derive(Debug, Parser)]
#[command(name = "train_uniattack", version)]
pub struct TrainArgs {
    /// Train the offline demo: synthetic data, tiny CLIP, random weights.
    #[arg(long)]
    pub demo: bool,
    /// Run directory [default: runs/<name>-<date>-<time>].
    #[arg(long, alias = "out")]
    pub output: Option<PathBuf>,
    /// Also write the final report JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Continue the run in --output from its latest checkpoint (needs
    /// --output: the default directory is new on every start), with the
    /// run's own settings (its config.json): --data gives its data's new
    /// place, other setting flags must agree with the run.
    #[arg(long, requires = "output")]
    pub resume: bool,
    /// cpu, cuda or cuda:N [default: the first GPU if built with cuda, else cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Data parallelism over this many GPUs of this machine, one process
    /// per GPU launched by this one (needs a build with `--features nccl`):
    /// each GPU takes `--batch-size` images per step (the global batch is N
    /// times that, as with PyTorch DDP); rank 0 evaluates and writes.
    /// Multi-node: see docs/gpu.md.
    #[arg(long)]
    pub gpus: Option<usize>,
    /// With data parallelism: how long a rank waits for the others (to
    /// join, in a step's exchange) before it stops with an error (a rank
    /// that hangs would otherwise hold every GPU forever; NCCL itself waits
    /// without end). Waits for rank 0's evaluations and checkpoints, and
    /// for the start, have no limit; time the job spends suspended
    /// (Ctrl-Z, SIGSTOP) does not count, beyond a tick of at most 10 s.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub collective_timeout: u64,

    /// CLIP weights: hub id or local directory [default: openai/clip-vit-base-patch16;
    /// demo: random:demo]. `random:vit-b16` is ViT-B/16 with random weights (benchmarks).
    #[arg(long)]
    pub model: Option<String>,
    /// MoE branch: none, soft (Soft MoE) or la (La-SoftMoE) [default: la].
    #[arg(long, value_parser = parse_moe_kind)]
    pub moe: Option<MoeKind>,
    /// Experts per MoE layer [default: 4].
    #[arg(long)]
    pub experts: Option<usize>,
    /// Slots per expert [default: 49; demo 16].
    #[arg(long)]
    pub slots: Option<usize>,
    /// Blocks with a MoE branch: all, last:K or a list like 0,5,11 [default: all].
    #[arg(long, value_parser = parse_moe_layers)]
    pub moe_layers: Option<MoeLayers>,
    /// Prompt template T-1 ... T-8; repeat to ensemble [default: T-8].
    #[arg(long = "prompt", value_parser = parse_template)]
    pub prompts: Vec<PromptTemplate>,
    /// Objective: clip (the paper's eq. 1) or cross-entropy [default: clip].
    #[arg(long, value_enum)]
    pub loss: Option<LossArg>,
    /// Keep a part fixed (repeatable): text, vision-backbone, logit-scale.
    #[arg(long, value_enum)]
    pub freeze: Vec<FreezeArg>,
    /// Training compute precision: f32, or bf16 (vision tower in BF16 from
    /// F32 master weights, loss and Adam in F32) [default: f32].
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// On CUDA, keep F32 matmuls in full F32 instead of TF32 (TF32 is on by
    /// default, as fast as PyTorch with `allow_tf32`).
    #[arg(long)]
    pub no_tf32: bool,

    /// Data root: the directory the list entries are relative to.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// UniAttackData protocol: p1, p1.1, p1.2, p1.3, p2.1, p2.2 [default: p1].
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// UniAttackData lists of images or of videos (frame directories) [default: image].
    #[arg(long, value_enum)]
    pub modality: Option<ModalityArg>,
    /// Instead of a protocol: three list files (relative to --data or absolute).
    #[arg(long, requires_all = ["dev_list", "test_list"])]
    pub train_list: Option<PathBuf>,
    /// Development list (threshold and model selection).
    #[arg(long, requires = "train_list")]
    pub dev_list: Option<PathBuf>,
    /// Test list.
    #[arg(long, requires = "train_list")]
    pub test_list: Option<PathBuf>,
    /// Format of --train-list etc.: uniattack-protocol, uniattack-protocol-video,
    /// challenge, binary, jfsfdb, or generic (then give --labels).
    #[arg(long, requires = "train_list")]
    pub format: Option<String>,
    /// Label integers of generic lists: live-one (1 live, 0 fake), live-zero
    /// (0 live, 1 fake) or detailed (0 live, 1 physical, 2 adversarial, 3 editing).
    #[arg(long, value_enum, requires = "train_list")]
    pub labels: Option<LabelsArg>,
    /// Accept list entries that lead out of --data with `..`.
    #[arg(long)]
    pub allow_outside_data: bool,
    /// Decode every listed image before training (on all cores, as
    /// inspect_dataset does), so a damaged file stops the run at its start,
    /// with all of them named, not at its batch or the first evaluation.
    #[arg(long)]
    pub check_images: bool,
    /// Record where each step's time goes (loader, forward, backward,
    /// exchange, gradient norm, update) in metrics.jsonl's `phases`, the
    /// device synchronised after each phase: for profiling, slightly
    /// slower. The loader's wait is always recorded (`data_wait_s`).
    #[arg(long)]
    pub profile_phases: bool,
    /// Oversample the smaller of live / attack to 1:1 every epoch.
    #[arg(long)]
    pub balance: bool,
    /// Train without augmentation (plain CLIP transform) [default: random
    /// resized crop, flip and colour jitter; demo: flips only].
    #[arg(long)]
    pub no_augment: bool,
    /// Decoding threads [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Images per micro-batch [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Images per evaluation batch [default: 64].
    #[arg(long)]
    pub eval_batch_size: Option<usize>,
    /// Seed of weights, data order and augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,

    /// Peak learning rate [default: 1e-6; demo 2e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Adam beta1 [default: 0.9].
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Adam beta2 [default: 0.999].
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Adam epsilon [default: 1e-8].
    #[arg(long)]
    pub eps: Option<f64>,
    /// Weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// coupled (torch.optim.Adam, FLIP) or decoupled (AdamW) [default: coupled].
    #[arg(long, value_enum)]
    pub decay: Option<DecayArg>,
    /// Linear warmup steps, at most the run's length [default: 0; demo 20].
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// constant or cosine after warmup [default: constant; demo cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Cosine floor as a fraction of the peak [default: 0; demo 0.05].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Epochs [default: 10; demo 40].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    pub accumulate: Option<usize>,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip_grad_norm: Option<f64>,

    /// Evaluate every epoch, or every N steps [default: epoch].
    #[arg(long)]
    pub eval_every: Option<String>,
    /// Average frame scores per video before the metrics.
    #[arg(long)]
    pub video_level: bool,
    /// Choose the best checkpoint on dev (honest) or test (to reproduce
    /// FLIP / FA3-CLIP / CASIA-FAS-Benchmark; reports are marked) [default: dev].
    #[arg(long, value_enum)]
    pub select_on: Option<SelectArg>,
    /// Do not score test at every evaluation (only at the end) [the demo
    /// does not score it during training either].
    #[arg(long)]
    pub no_test_during_training: bool,
    /// Also checkpoint every N optimizer steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Rolling checkpoints kept [default: 2].
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Log every N optimizer steps [default: 10].
    #[arg(long)]
    pub log_every: Option<u64>,
}

/// `--loss`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossArg {
    /// The paper's CLIP loss.
    Clip,
    /// Prompt cross-entropy.
    CrossEntropy,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    /// F32 throughout.
    F32,
    /// BF16 compute in the vision tower, F32 weights and optimizer.
    Bf16,
}

/// `--freeze`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FreezeArg {
    /// Text tower and projection (prompt embeddings cached).
    Text,
    /// Vision parameters other than the MoE branches.
    VisionBackbone,
    /// The temperature.
    LogitScale,
}

/// `--modality`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModalityArg {
    /// Image lists.
    Image,
    /// Video lists.
    Video,
}

/// `--labels`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LabelsArg {
    /// 1 live, 0 fake.
    LiveOne,
    /// 0 live, 1 fake.
    LiveZero,
    /// 0 live, 1 physical, 2 adversarial, 3 editing.
    Detailed,
}

/// `--decay`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DecayArg {
    /// Added to the gradient (torch.optim.Adam).
    Coupled,
    /// Applied to the weights (AdamW).
    Decoupled,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    /// Constant after warmup.
    Constant,
    /// Cosine after warmup.
    Cosine,
}

/// `--select-on`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SelectArg {
    /// Dev ACER.
    Dev,
    /// Test ACER (reproduction only).
    Test,
}

impl TrainArgs {
    /// The experiment these flags describe (writing the demo data first
    /// with `--demo`). With `--resume`, the run's own settings are the
    /// base the flags change, where the run recorded them.
    pub fn experiment(&self) -> Result<ExperimentConfig> {
        let saved = if self.resume {
            self.saved_config()?
        } else {
            None
        };
        let mut cfg =
            match (self.demo, &self.data, saved) {
                // A demo run resumed: its own settings, on its data, or on the
                // demo data written again after the cache was removed.
                (true, data, Some(mut cfg)) => {
                    cfg.data.root = match data {
                        Some(root) => root.clone(),
                        None if cfg.data.root.is_dir() => cfg.data.root,
                        None => crate::demo::ensure_dataset(
                            &crate::demo::cache_dir(),
                            &crate::demo::synth_config(),
                        )?,
                    };
                    cfg
                }
                (true, data, None) => {
                    let root = match data {
                        Some(root) => root.clone(),
                        None => crate::demo::ensure_dataset(
                            &crate::demo::cache_dir(),
                            &crate::demo::synth_config(),
                        )?,
                    };
                    crate::demo::experiment(&root)
                }
                // A run resumed over data that moved: its own settings, the new
                // root (its lists' contents are checked against the
                // checkpoint's record).
                (false, Some(root), Some(mut cfg)) => {
                    cfg.data.root = root.clone();
                    cfg
                }
                (false, Some(root), None) => {
                    ExperimentConfig::paper(root.clone(), self.protocol.unwrap_or(Protocol::P1))
                }
                (false, None, Some(cfg)) => cfg,
                (false, None, None) if self.resume => return Err(self.no_saved_config()),
                (false, None, None) => return Err(Error::config(
                    "--data",
                    "give the data root (with --protocol or --train-list/--dev-list/--test-list), \
                     or --demo for the offline demo",
                )),
            };
        self.apply_model(&mut cfg)?;
        self.apply_data(&mut cfg)?;
        self.apply_optim(&mut cfg)?;
        // Absolute, so that the run resumes and evaluates from any working
        // directory.
        cfg.data.root = std::path::absolute(&cfg.data.root)
            .map_err(|e| Error::io("resolving", &cfg.data.root, e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The settings the run in `--output` recorded: its `config.json`, or
    /// (that file damaged) its latest checkpoint's. `None` where it
    /// recorded none (no `config.json`, or a damaged one and no
    /// checkpoint): the flags describe the run then.
    fn saved_config(&self) -> Result<Option<ExperimentConfig>> {
        let Some(run) = &self.output else {
            return Ok(None);
        };
        let dir = crate::run_dir::RunDir::new(run.clone());
        if !dir.config().is_file() {
            return Ok(None);
        }
        let cfg = match crate::trainer::config_file(&dir)? {
            crate::trainer::ConfigFile::Experiment => ExperimentConfig::from_file(&dir.config())?,
            crate::trainer::ConfigFile::Foreign => {
                return Err(Error::config(
                    "--output",
                    format!(
                        "{} holds a config.json that is not a uniattack experiment (a model \
                         directory?): there is no run to resume",
                        run.display()
                    ),
                ))
            }
            // Every checkpoint records the experiment too; the resume
            // writes config.json again from it.
            crate::trainer::ConfigFile::Damaged(why) => match dir.latest_checkpoint()? {
                Some(latest) => {
                    crate::runtime::note(&format!(
                        "note: {} is damaged ({why}); continuing with the settings recorded in \
                         {}",
                        dir.config().display(),
                        latest.display()
                    ));
                    crate::checkpoint::read_header(&latest)?.experiment
                }
                None => return Ok(None),
            },
        };
        // Where it is not there, the data root's own error (or the demo's
        // data, written again) speaks instead.
        if cfg.data.root.is_relative() && self.data.is_none() && cfg.data.root.is_dir() {
            // Older runs stored the data root as given.
            crate::runtime::note(&format!(
                "note: {} records the relative data root {}, taken from the current directory \
                 as {}; give --data to use another",
                run.display(),
                cfg.data.root.display(),
                std::path::absolute(&cfg.data.root)
                    .unwrap_or_else(|_| cfg.data.root.clone())
                    .display()
            ));
        }
        Ok(Some(cfg))
    }

    /// Why `--resume` without `--data` or `--demo` has no settings to go on.
    fn no_saved_config(&self) -> Error {
        let Some(run) = &self.output else {
            return Error::config("--resume", "needs --output, the run directory to continue");
        };
        let config = crate::run_dir::RunDir::new(run.clone()).config();
        let what = if config.is_file() {
            format!(
                "{} is damaged and no checkpoint records the run's settings",
                config.display()
            )
        } else {
            format!("{} holds no config.json", run.display())
        };
        Error::config(
            "--data",
            format!(
                "--resume without --data or --demo continues with the run's own settings, and \
                 {what}; give the original command's flags"
            ),
        )
    }

    fn apply_model(&self, cfg: &mut ExperimentConfig) -> Result<()> {
        if let Some(model) = &self.model {
            cfg.model.source = match model.as_str() {
                "random:vit-b16" => ModelSource::RandomVitB16,
                "random:demo" => ModelSource::DemoTiny,
                _ => ModelSource::Pretrained {
                    model: model.clone(),
                },
            };
        }
        let moe = &mut cfg.model.moe;
        if let Some(kind) = self.moe {
            *moe = moe.clone().with_kind(kind);
        }
        match moe.layer.as_mut() {
            Some(options) => {
                set(&mut options.num_experts, self.experts);
                set(&mut options.slots_per_expert, self.slots);
            }
            None if self.experts.is_some() || self.slots.is_some() => {
                return Err(Error::config(
                    "--experts/--slots",
                    "set the experts of a MoE branch, and this run has none (--moe none)",
                ))
            }
            None => {}
        }
        set(&mut moe.layers, self.moe_layers.clone());
        if !self.prompts.is_empty() {
            cfg.prompts.templates = self.prompts.clone();
        }
        if let Some(loss) = self.loss {
            cfg.prompts.loss = match loss {
                LossArg::Clip => LossKind::Clip,
                LossArg::CrossEntropy => LossKind::CrossEntropy,
            };
        }
        if let Some(precision) = self.precision {
            cfg.model.precision = match precision {
                PrecisionArg::F32 => Precision::F32,
                PrecisionArg::Bf16 => Precision::Bf16,
            };
        }
        if self.no_tf32 {
            cfg.model.tf32 = false;
        }
        for part in &self.freeze {
            let part = match part {
                FreezeArg::Text => FrozenPart::Text,
                FreezeArg::VisionBackbone => FrozenPart::VisionBackbone,
                FreezeArg::LogitScale => FrozenPart::LogitScale,
            };
            if !cfg.model.frozen.contains(&part) {
                cfg.model.frozen.push(part);
            }
        }
        Ok(())
    }

    fn apply_data(&self, cfg: &mut ExperimentConfig) -> Result<()> {
        let modality = self.modality.map(|m| match m {
            ModalityArg::Image => Modality::Image,
            ModalityArg::Video => Modality::Video,
        });
        if let (Some(train), Some(dev), Some(test)) =
            (&self.train_list, &self.dev_list, &self.test_list)
        {
            if self.protocol.is_some() {
                return Err(Error::config(
                    "--protocol",
                    "give either --protocol or --train-list/--dev-list/--test-list",
                ));
            }
            if self.modality.is_some() {
                return Err(Error::config(
                    "--modality",
                    "applies to UniAttackData protocols; with --train-list/--dev-list/--test-list \
                     the list format decides (--format uniattack-protocol-video for folders of \
                     frames)",
                ));
            }
            cfg.data.dataset = Dataset::Lists {
                format: self.list_format()?,
                train: train.clone(),
                dev: dev.clone(),
                test: test.clone(),
            };
        } else if let Dataset::UniAttack {
            protocol,
            modality: current,
        } = &mut cfg.data.dataset
        {
            set(protocol, self.protocol);
            set(current, modality);
        } else if self.protocol.is_some() || self.modality.is_some() {
            // A run trained from list files, resumed from its config.json.
            return Err(Error::config(
                "--protocol/--modality",
                "this run was trained from --train-list/--dev-list/--test-list, not a \
                 UniAttackData protocol",
            ));
        }
        cfg.data.allow_outside_root |= self.allow_outside_data;
        let loader = &mut cfg.loader;
        if self.balance {
            loader.balance = Balance::LiveAttack;
        }
        if self.no_augment {
            loader.augment = None;
        }
        set(&mut loader.workers, self.workers);
        set(&mut loader.batch_size, self.batch_size);
        set(&mut loader.eval_batch_size, self.eval_batch_size);
        set(&mut cfg.seed, self.seed);
        Ok(())
    }

    fn list_format(&self) -> Result<ListFormat> {
        let name = self.format.as_deref().unwrap_or("uniattack-protocol");
        if name == "generic" {
            let labels = self.labels.ok_or_else(|| {
                Error::config(
                    "--labels",
                    "generic lists need their label convention: live-one, live-zero or detailed",
                )
            })?;
            let labels = match labels {
                LabelsArg::LiveOne => IntegerLabels::LiveOne,
                LabelsArg::LiveZero => IntegerLabels::LiveZero,
                LabelsArg::Detailed => IntegerLabels::Detailed,
            };
            return Ok(ListFormat::Generic(ListSpec {
                convention: labels.convention(),
                media: Media::Image,
                video_id: VideoIdRule::Entry,
                path_hints: false,
            }));
        }
        if self.labels.is_some() {
            return Err(Error::config(
                "--labels",
                format!(
                    "the {name} format states its own labels; --labels is for --format generic"
                ),
            ));
        }
        ListFormat::from_name(name).ok_or_else(|| {
            Error::config(
                "--format",
                format!(
                    "unknown list format {name:?}; expected {} or generic",
                    ListFormat::NAMES.join(", ")
                ),
            )
        })
    }

    fn apply_optim(&self, cfg: &mut ExperimentConfig) -> Result<()> {
        let optim = &mut cfg.optim;
        set(&mut optim.lr, self.lr);
        set(&mut optim.beta1, self.beta1);
        set(&mut optim.beta2, self.beta2);
        set(&mut optim.eps, self.eps);
        set(&mut optim.weight_decay, self.weight_decay);
        if let Some(decay) = self.decay {
            optim.decay = match decay {
                DecayArg::Coupled => WeightDecay::Coupled,
                DecayArg::Decoupled => WeightDecay::Decoupled,
            };
        }
        let schedule = &mut cfg.schedule;
        set(&mut schedule.warmup_steps, self.warmup_steps);
        set(&mut schedule.min_lr_ratio, self.min_lr_ratio);
        if let Some(kind) = self.schedule {
            schedule.decay = match kind {
                ScheduleArg::Constant => Decay::Constant,
                ScheduleArg::Cosine => Decay::Cosine,
            };
        }
        let training = &mut cfg.training;
        set(&mut training.epochs, self.epochs);
        if self.max_steps.is_some() {
            training.max_steps = self.max_steps;
        }
        set(&mut training.accumulation, self.accumulate);
        if self.clip_grad_norm.is_some() {
            training.clip_grad_norm = self.clip_grad_norm;
        }
        if self.checkpoint_every.is_some() {
            training.checkpoint_every = self.checkpoint_every;
        }
        set(&mut training.keep_last, self.keep_last);
        set(&mut training.log_every, self.log_every);
        let eval = &mut cfg.eval;
        if let Some(every) = &self.eval_every {
            eval.every = match every.as_str() {
                "epoch" => EvalEvery::Epoch,
                n => EvalEvery::Steps(n.parse().map_err(|_| {
                    Error::config(
                        "--eval-every",
                        format!("expected epoch or a step count, got {n:?}"),
                    )
                })?),
            };
        }
        eval.video_level |= self.video_level;
        if let Some(select) = self.select_on {
            eval.select_on = match select {
                SelectArg::Dev => Selection::Dev,
                SelectArg::Test => Selection::Test,
            };
        }
        if self.no_test_during_training {
            eval.test_during_training = false;
        }
        Ok(())
    }

    /// A short name of the run for its default directory.
    fn run_name(&self, cfg: &ExperimentConfig) -> String {
        if self.demo {
            return "demo".into();
        }
        crate::data::protocol_name(&cfg.data).replace([' ', '(', ')'], "")
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Runs `train_uniattack`: trains, evaluates the best checkpoint, prints
/// the metrics table and returns the report (`None` on the ranks other
/// than 0 of a data-parallel run, which only train).
pub fn run(args: &TrainArgs) -> Result<Option<EvalReport>> {
    crate::runtime::init();
    let cfg = args.experiment()?;
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| crate::runtime::default_run_dir(&args.run_name(&cfg)));
    let rank = crate::launch::RankEnv::from_env()?;
    let leader = rank.as_ref().is_none_or(|r| r.rank == 0);
    // A launched rank 0 leaves this line to the launcher, which printed it.
    if leader && !rank.as_ref().is_some_and(|r| r.launched) {
        crate::runtime::say(&format!("run directory: {}", output.display()));
    }
    let gpus = args.gpus.unwrap_or(1);
    if gpus == 0 {
        return Err(Error::config("--gpus", "must be at least 1"));
    }
    if gpus > 1 && rank.is_none() {
        // Every launched rank gets these arguments: a device named here
        // would put them all on one GPU.
        if let Some(spec) = args.device.as_deref().filter(|spec| *spec != "cuda") {
            return Err(Error::config(
                "--device",
                format!(
                    "--gpus {gpus} puts rank r on cuda:r; --device {spec} would put every rank \
                     on one device. Leave --device out (or give cuda), and choose the GPUs with \
                     CUDA_VISIBLE_DEVICES"
                ),
            ));
        }
        // Before the launcher creates the directory and its NCCL id file:
        // a refused --output (the data root, another program's results) is
        // left as it was.
        let run = crate::run_dir::RunDir::new(output.clone());
        crate::trainer::check_output(&run, &cfg, args.resume)?;
        crate::launch::require_nccl(gpus)?;
        // The model's files, once, before the ranks start: N ranks
        // downloading at once contend for the hub cache's lock, which lets
        // one wait only seconds (a rank would fail, or fall back to another
        // weights file). The ranks then find them in the cache.
        if let crate::experiment::ModelSource::Pretrained { model } = &cfg.model.source {
            clip_moe::hub::resolve(model, &clip_moe::HubOptions::from_env())?;
        }
        // Rank 0 prints the table and the report's path (on this
        // process's standard output).
        let report = crate::launch::launch_ranks(gpus, &output, args.output.is_none())?;
        return Ok(Some(report));
    }
    let (device, sync) = match &rank {
        Some(rank) => rank.join(
            args.device.as_deref(),
            &output,
            std::time::Duration::from_secs(args.collective_timeout),
        )?,
        None => (crate::runtime::device(args.device.as_deref())?, None),
    };
    if leader {
        crate::runtime::say(&format!("device: {}", crate::runtime::describe(&device)));
    }
    if args.demo && leader {
        crate::runtime::say(&format!(
            "demo: synthetic data in {} (demo numbers say nothing about real data)",
            cfg.data.root.display()
        ));
    }
    let mut trainer = Trainer::new(
        cfg,
        TrainOptions {
            output: output.clone(),
            resume: args.resume,
            device,
            report: args.report.clone(),
            sync,
            frozen_baseline: false,
            check_images: args.check_images,
            profile_phases: args.profile_phases,
        },
    )?;
    if !leader {
        trainer.train()?;
        return Ok(None);
    }
    let report = trainer.run()?;
    crate::runtime::say(&summary_table(&report));
    crate::runtime::say(&format!("report: {}", trainer.run_dir().report().display()));
    Ok(Some(report))
}

/// The dev and test metrics as a markdown table, in percent.
pub fn summary_table(report: &EvalReport) -> String {
    let pct = |x: f64| format!("{:.2}", 100.0 * x);
    let mut out = format!(
        "| {} | ACER (%) | APCER (%) | BPCER (%) | ACC (%) | AUC (%) | EER (%) |\n|---|---:|---:|---:|---:|---:|---:|\n",
        report.protocol
    );
    if let Some(dev) = &report.dev {
        out.push_str(&format!(
            "| dev (own threshold) | {} | {} | {} | {} | {} | {} |\n",
            pct(dev.acer),
            pct(dev.apcer),
            pct(dev.bpcer),
            pct(dev.acc),
            pct(dev.auc),
            pct(dev.eer)
        ));
    }
    let t = &report.test;
    out.push_str(&format!(
        "| test (threshold {:.4} from {}) | {} | {} | {} | {} | {} | {} |\n",
        t.threshold,
        match report.threshold_origin {
            crate::evaluator::ThresholdOrigin::Dev => "dev",
            crate::evaluator::ThresholdOrigin::Checkpoint => "checkpoint",
            crate::evaluator::ThresholdOrigin::Fixed => "command line",
        },
        pct(t.acer),
        pct(t.apcer),
        pct(t.bpcer),
        pct(t.acc),
        pct(t.auc),
        pct(t.eer)
    ));
    if report.selected_on == Some(Selection::Test) {
        out.push_str("\nNOTE: the checkpoint was selected on TEST (--select-on test): these test numbers overstate.\n");
    }
    out
}
