//! The training loop: micro-batches through the model and the prompt loss,
//! gradient accumulation, global-norm clipping, Adam with a schedule,
//! periodic evaluation with the threshold and model selection on dev,
//! atomic resumable checkpoints, and the final evaluation of the best
//! checkpoint.
//!
//! A run is a function of its configuration: the weights are drawn from the
//! seed ([`crate::init`]), the loader's order and augmentation from (seed,
//! epoch, position), so a run killed at any moment and resumed from its last
//! checkpoint ends with the same parameters and scores as one never stopped.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clip_moe::loss::{clip_loss_with_prompts, prompt_cross_entropy};
use clip_moe::{ClipConfig, ClipModel, ClipTokenizer, PromptClassifier};
use fas_data::protocol::uniattack::Split;
use fas_data::Loader;
use fas_metrics::{evaluate_protocol, ProtocolConfig};

use crate::adam::Adam;
use crate::backbone::{build, trainable_vars};
use crate::checkpoint::{
    read_checkpoint, write_checkpoint, BestRecord, Calibration, CheckpointKind, CheckpointMeta,
    ListDigest, LoadedCheckpoint, LoaderPosition, RunLists, TensorData, UnloggedSteps,
    CLASS_EMBEDDINGS, FORMAT,
};
use crate::data::{protocol_name, read_split_checked, training_loader, SplitData};
use crate::detector::{inference_model, prompt_embeddings, Detector};
use crate::distributed::GradientSync;
use crate::error::{Error, Result};
use crate::evaluator::{bpcer_table, score_split, write_plots, EvalReport, ThresholdOrigin};
use crate::experiment::{Dataset, EvalEvery, ExperimentConfig, FrozenPart, LossKind, Selection};
use crate::gradient_exchange::{GradientExchange, StepShare};
use crate::labels::{class_index, ScoreExport, SCORE_POLARITY};
use crate::progress::{MetricsLog, MetricsRecord, PhaseSeconds, Progress};
use crate::run_dir::RunDir;
use crate::schedule::Decay;

/// How a run is started.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory.
    pub output: PathBuf,
    /// Continue from the directory's latest checkpoint.
    pub resume: bool,
    /// Where the model runs.
    pub device: Device,
    /// Also write the final report here.
    pub report: Option<PathBuf>,
    /// Data parallelism: this rank's gradient averaging (`None`: one rank).
    /// Every rank loads its shard of each global batch of
    /// `batch_size x world` images; rank 0 alone evaluates, logs and writes.
    /// With the CLIP loss each rank contrasts its own `batch_size` images.
    pub sync: Option<crate::distributed::SyncHandle>,
    /// Accept a model whose every parameter is frozen: its run evaluates
    /// the model as loaded (a study's frozen baseline). A training command
    /// refuses it: nothing would train.
    pub frozen_baseline: bool,
    /// Decode every listed image at the start (`FileCheck::Decode`), not
    /// only check that it exists: a damaged one stops the run there, named
    /// with all the others, rather than at its batch or at the first
    /// evaluation, hours in.
    pub check_images: bool,
    /// Time each step's phases (loader, forward, backward, exchange,
    /// gradient norm, update) into `metrics.jsonl`, synchronising the
    /// device after each: a profile of where a GPU step's time goes, at
    /// the cost of the overlap the synchronisations remove.
    pub profile_phases: bool,
}

/// Everything a run needs, set up and (when resuming) restored.
pub struct Trainer {
    cfg: ExperimentConfig,
    run: RunDir,
    device: Device,
    clip: ClipConfig,
    model: ClipModel,
    varmap: candle_nn::VarMap,
    tokenizer: ClipTokenizer,
    classifier: PromptClassifier,
    adam: Adam,
    dev: SplitData,
    test: SplitData,
    loader: Loader,
    batches_per_epoch: usize,
    /// What the three lists hold (recorded in checkpoints, checked on
    /// resume).
    lists: RunLists,
    /// The train, dev and test list files, for errors.
    list_files: [std::path::PathBuf; 3],
    total_steps: u64,
    position: LoaderPosition,
    best: Option<BestRecord>,
    calibration: Option<Calibration>,
    metrics: Option<MetricsLog>,
    report_copy: Option<PathBuf>,
    progress: Progress,
    sync: Option<crate::distributed::SyncHandle>,
    /// The buffer the ranks exchange each step in (with `sync`).
    exchange: Option<GradientExchange>,
    /// Rank 0's exclusive lock on the run directory, held while this
    /// trainer lives.
    _lock: Option<std::fs::File>,
    /// The steps since the last logged record (checkpointed with them).
    window: LogWindow,
    /// `TrainOptions::profile_phases`.
    profile_phases: bool,
    /// The current step's phase times.
    step_phases: std::cell::Cell<PhaseSeconds>,
}

/// Settings a resumed run may change: how long it trains, how many threads
/// decode, how often it logs, and what none of its weights depend on: how
/// many rolling checkpoints it keeps and how often it writes one between
/// evaluations (a disk filling up, a machine that is preempted), and how
/// many images an evaluation batch holds (an evaluation that ran out of
/// GPU memory). Everything else must match the checkpoint; where the data
/// is, as [`data_moved`] allows.
fn comparable(cfg: &ExperimentConfig) -> ExperimentConfig {
    let mut cfg = cfg.clone();
    cfg.training.epochs = 0;
    cfg.training.max_steps = None;
    cfg.training.log_every = 1;
    cfg.training.keep_last = 1;
    cfg.training.checkpoint_every = None;
    cfg.loader.workers = 0;
    cfg.loader.eval_batch_size = 1;
    cfg
}

/// `cfg` with the data's place (root and list paths) left out.
fn without_data_place(cfg: &ExperimentConfig) -> ExperimentConfig {
    let mut cfg = cfg.clone();
    cfg.data.root = PathBuf::new();
    if let Dataset::Lists {
        train, dev, test, ..
    } = &mut cfg.data.dataset
    {
        for list in [train, dev, test] {
            *list = PathBuf::new();
        }
    }
    cfg
}

/// `cfg`'s data section with a relative root (an older run's) taken from
/// the current directory.
fn absolute_data(cfg: &ExperimentConfig) -> crate::experiment::DataConfig {
    let mut data = cfg.data.clone();
    data.root = std::path::absolute(&data.root).unwrap_or(data.root);
    data
}

/// Whether `now` differs from `saved` in where the data is (a root or list
/// files that moved) and in nothing else of the data section. A resume
/// allows that where the checkpoint recorded what its lists hold, and
/// checks it.
pub(crate) fn data_moved(saved: &ExperimentConfig, now: &ExperimentConfig) -> bool {
    absolute_data(saved) != absolute_data(now)
        && without_data_place(saved).data == without_data_place(now).data
}

/// The top-level sections in which two configurations differ, apart from
/// the settings a resumed run may change. Where the data is counts (a
/// resume decides apart whether data that moved is the same data:
/// [`data_moved`]).
pub(crate) fn differing_sections(a: &ExperimentConfig, b: &ExperimentConfig) -> Vec<&'static str> {
    let (a, b) = (comparable(a), comparable(b));
    let data_differs = absolute_data(&a) != absolute_data(&b);
    [
        ("seed", a.seed != b.seed),
        ("model", a.model != b.model),
        ("prompts", a.prompts != b.prompts),
        ("data", data_differs),
        ("loader", a.loader != b.loader),
        ("optim", a.optim != b.optim),
        ("schedule", a.schedule != b.schedule),
        ("training", a.training != b.training),
        ("eval", a.eval != b.eval),
    ]
    .into_iter()
    .filter_map(|(section, differs)| differs.then_some(section))
    .collect()
}

impl Trainer {
    /// Prepares a run: checks the configuration and the output directory,
    /// builds the model, reads and checks the splits, and on `resume`
    /// restores the latest checkpoint.
    ///
    /// With data parallelism every rank learns whether all ranks started:
    /// a rank whose start failed (rank 0 refusing the output directory, say)
    /// stops the others here instead of leaving them waiting in the first
    /// all-reduce.
    pub fn new(cfg: ExperimentConfig, options: TrainOptions) -> Result<Self> {
        let sync = options.sync.clone();
        let device = options.device.clone();
        let built = Self::build(cfg, options);
        match sync {
            None => built,
            Some(sync) => {
                // Patient: rank 0 may repair a resumed run's best
                // checkpoint (an evaluation) while the others wait.
                let trainer = all_ranks(&*sync.0, &device, built, "start", true)?;
                if let Some(exchange) = &trainer.exchange {
                    exchange.check_same_size(&*sync.0)?;
                }
                Ok(trainer)
            }
        }
    }

    fn build(cfg: ExperimentConfig, options: TrainOptions) -> Result<Self> {
        cfg.validate()?;
        let run = RunDir::new(options.output.clone());
        let (rank, world) = options
            .sync
            .as_ref()
            .map_or((0, 1), |s| (s.0.rank(), s.0.world_size()));
        if let Some(report) = &options.report {
            // Before anything is written or loaded: a refused --report
            // leaves no trace.
            let lists = [Split::Train, Split::Dev, Split::Test]
                .map(|split| crate::data::list_path(&cfg.data, split));
            check_report_copy(report, &lists, &run)?;
        }
        let lock = if rank == 0 {
            Some(prepare_output(&run, &cfg, options.resume)?)
        } else {
            None
        };
        let device = options.device.clone();
        if device.is_cuda() {
            candle_core::cuda::set_gemm_reduced_precision_f32(cfg.model.tf32);
        }

        let backbone = build(&cfg.model, cfg.seed, &device)?;
        let trainable = trainable_vars(&backbone.varmap, &cfg.model.frozen);
        if !options.frozen_baseline && trainable.is_empty() {
            return Err(Error::config(
                "--freeze",
                "leaves nothing to train: every parameter of this model is frozen (without a MoE \
                 branch, freezing text, vision-backbone and logit-scale freezes all of CLIP)",
            ));
        }
        let check = if options.check_images {
            fas_data::FileCheck::Decode
        } else {
            fas_data::FileCheck::Exists
        };
        let train = read_split_checked(&cfg.data, Split::Train, check)?;
        let dev = read_split_checked(&cfg.data, Split::Dev, check)?;
        let test = read_split_checked(&cfg.data, Split::Test, check)?;
        for split in [&train, &dev, &test] {
            split.require_both_classes()?;
        }
        let mut overlaps = Vec::new();
        let resuming = options.resume && run.latest_checkpoint()?.is_some();
        for (earlier, later) in [(&train, &dev), (&train, &test), (&dev, &test)] {
            // Selecting on test (to reproduce papers without a dev split)
            // says openly what one list for dev and test would hide.
            let test_selected = cfg.eval.select_on == Selection::Test;
            overlaps.extend(crate::data::check_distinct(
                earlier,
                later,
                test_selected,
                resuming,
                "only --select-on test, which reports say overstate, takes one list for both",
            )?);
        }
        let lists = RunLists {
            train: ListDigest::of(&train.samples),
            dev: ListDigest::of(&dev.samples),
            test: ListDigest::of(&test.samples),
        };
        let list_files = [
            train.source.clone(),
            dev.source.clone(),
            test.source.clone(),
        ];
        let image_size = backbone.clip.vision_config.image_size;
        let mut loader_config = training_loader(&cfg.loader, image_size, cfg.seed);
        if world > 1 {
            loader_config.batch_size *= world;
            loader_config.shard = Some((rank, world));
            // One decoding thread per core is for a single process: the
            // ranks of one machine share its cores. (The data order does
            // not depend on the thread count.)
            if loader_config.workers == 0 {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                loader_config.workers = (cores / world).max(1);
            }
        }
        let loader = Loader::new(train.samples.clone(), loader_config)?;
        let batches_per_epoch = loader.batches_per_epoch();
        if batches_per_epoch == 0 {
            return Err(Error::Split {
                split: "train".into(),
                source_name: train.source.clone(),
                reason: format!(
                    "{} training images do not fill one batch of {} (incomplete batches are \
                     dropped): lower --batch-size",
                    loader.items(),
                    cfg.loader.batch_size
                ),
            });
        }
        if cfg.training.accumulation > batches_per_epoch {
            return Err(Error::config(
                "--accumulate",
                format!(
                    "{} micro-batches per step exceed the {batches_per_epoch} batches of an \
                     epoch: every step would average only {batches_per_epoch}; lower it (or \
                     --batch-size)",
                    cfg.training.accumulation
                ),
            ));
        }
        let steps_per_epoch = batches_per_epoch.div_ceil(cfg.training.accumulation) as u64;
        let total_steps = run_length(&cfg.training, steps_per_epoch);
        // A run started before this refusal resumes as it was configured
        // (its settings cannot change on resume).
        let resuming = options.resume && run.latest_checkpoint()?.is_some();
        if cfg.schedule.warmup_steps > total_steps && !resuming {
            // The learning rate would never reach --lr, and a cosine would
            // never start: the run would not train as configured.
            return Err(Error::config(
                "--warmup-steps",
                format!(
                    "{} warmup steps exceed the run's {total_steps} optimizer steps: the \
                     learning rate would never reach its peak; give at most {total_steps} (0 \
                     for none) or a longer run (--epochs/--max-steps)",
                    cfg.schedule.warmup_steps
                ),
            ));
        }

        let adam = Adam::new(trainable, cfg.optim)?;
        // Allocated once, before the first step: a rank that cannot hold it
        // fails at the start, where every rank learns of it.
        let exchange = options
            .sync
            .as_ref()
            .map(|_| {
                GradientExchange::new(
                    adam.vars().map(|(name, var)| (name, var.as_tensor())),
                    &device,
                )
            })
            .transpose()?;
        let text_frozen = cfg.model.frozen.contains(&FrozenPart::Text);
        let classifier = PromptClassifier::new(
            &backbone.model,
            &backbone.tokenizer,
            &cfg.prompts.templates,
            text_frozen,
            &device,
        )?;
        let mut trainer = Self {
            run: run.clone(),
            device,
            clip: backbone.clip,
            model: backbone.model,
            varmap: backbone.varmap,
            tokenizer: backbone.tokenizer,
            classifier,
            adam,
            dev,
            test,
            loader,
            batches_per_epoch,
            total_steps,
            lists,
            list_files,
            position: LoaderPosition::default(),
            best: None,
            calibration: None,
            // Opened below, once the step to resume from is known: opening
            // it at step 0 first would empty the log of the run resumed.
            metrics: None,
            report_copy: options.report,
            progress: if rank == 0 {
                Progress::new(total_steps, 0)
            } else {
                Progress::silent()
            },
            sync: options.sync,
            exchange,
            _lock: lock,
            window: LogWindow::new(options.profile_phases),
            profile_phases: options.profile_phases,
            step_phases: Default::default(),
            cfg,
        };
        if rank == 0 {
            for note in &overlaps {
                trainer.progress.println(note);
            }
        }
        if options.resume {
            if let Some(latest) = run.latest_checkpoint()? {
                let checkpoint = read_checkpoint(&latest)?;
                trainer.restore(&checkpoint)?;
                if rank == 0 {
                    trainer.progress = Progress::new(total_steps, trainer.adam.step_count());
                    trainer.repair_best()?;
                }
            } else if rank == 0 {
                // A job script that always passes --resume starts here the
                // first time; a mistyped --output is made visible.
                trainer.progress.println(&format!(
                    "note: {} holds no checkpoint to resume from; starting a new run",
                    run.root().display()
                ));
            }
        }
        if rank == 0 {
            // Keeps the records up to the resumed step (none for a new run).
            trainer.metrics = Some(MetricsLog::open(
                &trainer.run.metrics(),
                trainer.adam.step_count(),
            )?);
            crate::evaluator::write_text(&trainer.run.config(), &trainer.cfg.to_json())?;
        }
        Ok(trainer)
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Optimizer steps per epoch (a last group of fewer than
    /// `accumulation` batches is a step too).
    fn steps_per_epoch(&self) -> u64 {
        self.batches_per_epoch
            .div_ceil(self.cfg.training.accumulation) as u64
    }

    /// This trainer's rank (0 without data parallelism).
    pub fn rank(&self) -> usize {
        self.sync.as_ref().map_or(0, |s| s.0.rank())
    }

    /// The number of ranks training together (1 without data parallelism).
    pub fn world_size(&self) -> usize {
        self.sync.as_ref().map_or(1, |s| s.0.world_size())
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> u64 {
        self.adam.step_count()
    }

    /// The run directory.
    pub fn run_dir(&self) -> &RunDir {
        &self.run
    }

    /// The model being trained.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// Its variables.
    pub fn varmap(&self) -> &candle_nn::VarMap {
        &self.varmap
    }

    /// Sets the model, optimizer and loop state from `checkpoint`.
    fn restore(&mut self, checkpoint: &LoadedCheckpoint) -> Result<()> {
        let meta = &checkpoint.meta;
        if meta.kind != CheckpointKind::Training {
            return Err(Error::checkpoint(
                &checkpoint.path,
                "holds no optimizer state (a best/model checkpoint); resume needs a step checkpoint",
            ));
        }
        let mut differ = differing_sections(&meta.experiment, &self.cfg);
        if differ.contains(&"data") && data_moved(&meta.experiment, &self.cfg) {
            if meta.lists.is_some() {
                // The lists' digests are compared below.
                differ.retain(|section| *section != "data");
                self.progress.println(&format!(
                    "note: the data moved from {} to {}; its lists are checked against the \
                     checkpoint's record of their entries and labels (the images' contents \
                     are not compared)",
                    meta.experiment.data.root.display(),
                    self.cfg.data.root.display()
                ));
            } else {
                differ.retain(|section| *section != "data");
                differ.push(
                    "data (this checkpoint predates the record of its lists, so data that moved \
                     cannot be checked: give the data root and lists it was trained on)",
                );
            }
        }
        if !differ.is_empty() || meta.clip != self.clip {
            return Err(Error::checkpoint(
                &checkpoint.path,
                format!(
                    "belongs to another configuration (differs in: {}); resume with the \
                     run's own settings, or start a new --output",
                    if differ.is_empty() {
                        "the model configuration".to_string()
                    } else {
                        differ.join(", ")
                    }
                ),
            ));
        }
        // Each rank takes a batch of the configured size and its own shard
        // of every global batch: another world size is another global
        // batch, another data order and another number of steps.
        if let Some(saved) = meta.world_size {
            if saved != self.world_size() {
                return Err(Error::config(
                    "--gpus",
                    format!(
                        "the run in {} was trained on {saved} rank(s) and this resume runs {}; \
                         the world size sets the global batch (--batch-size per rank) and each \
                         rank's shard, so the resumed run would not continue the same training. \
                         Resume with --gpus {saved}, or start a new --output",
                        self.run.root().display(),
                        self.world_size()
                    ),
                ));
            }
        }
        if let Some(saved) = &meta.lists {
            let splits = [
                ("train", &saved.train, &self.lists.train),
                ("dev", &saved.dev, &self.lists.dev),
                ("test", &saved.test, &self.lists.test),
            ];
            for ((split, then, now), file) in splits.into_iter().zip(&self.list_files) {
                if let Some(change) = now.change_since(then) {
                    return Err(Error::Split {
                        split: split.into(),
                        source_name: file.clone(),
                        reason: format!(
                            "changed since the run in {} was trained ({change}); a resumed run \
                             over other lists would not continue the same data order or compare \
                             its evaluations on the same images. Restore the list, or start a \
                             new --output",
                            self.run.root().display()
                        ),
                    });
                }
            }
        }
        if meta.step > self.total_steps {
            return Err(Error::config(
                "--epochs/--max-steps",
                format!(
                    "the run in {} is at step {}, past this resume's length of {} steps: it \
                     would end without training or evaluating those steps. Resume with a length \
                     of at least {}",
                    self.run.root().display(),
                    meta.step,
                    self.total_steps,
                    meta.step
                ),
            ));
        }
        // A cosine's learning rate at a step depends on the run's length:
        // a resumed run of another length would jump to another curve.
        let saved_length = meta
            .total_steps
            .unwrap_or_else(|| run_length(&meta.experiment.training, self.steps_per_epoch()));
        if self.cfg.schedule.decay == Decay::Cosine && saved_length != self.total_steps {
            return Err(Error::config(
                "--epochs/--max-steps",
                format!(
                    "the run in {} is {saved_length} steps long and this resume asks for {}; \
                     its cosine learning-rate schedule depends on the length, so a resumed run \
                     of another length would not continue its curve. Resume with the run's \
                     own --epochs, --max-steps and training list",
                    self.run.root().display(),
                    self.total_steps
                ),
            ));
        }
        let weights = checkpoint.weights()?;
        let vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::config("model", "variable map lock poisoned"))?;
        // Check everything before changing anything.
        for (name, var) in vars.iter() {
            let tensor = weights.get(name).ok_or_else(|| {
                Error::checkpoint(&checkpoint.path, format!("parameter {name} is missing"))
            })?;
            if tensor.dims() != var.dims() {
                return Err(Error::checkpoint(
                    &checkpoint.path,
                    format!(
                        "tensor {name} has shape {:?}, the model expects {:?}",
                        tensor.dims(),
                        var.dims()
                    ),
                ));
            }
        }
        for (name, var) in vars.iter() {
            var.set(
                &weights[name]
                    .to_device(var.device())?
                    .to_dtype(var.dtype())?,
            )?;
        }
        drop(vars);
        self.adam
            .load_state(&checkpoint.tensors, meta.step)
            .map_err(|e| Error::checkpoint(&checkpoint.path, e.to_string()))?;
        self.position = meta.position;
        self.best = meta.best.clone();
        self.calibration = meta.calibration;
        self.window = LogWindow::resumed(meta.unlogged, self.profile_phases);
        if !self.cfg.model.frozen.contains(&FrozenPart::Text) {
            return Ok(());
        }
        // The cached prompt embeddings came from the initial weights; the
        // text tower is frozen, so they are those of the restored ones too.
        self.classifier = PromptClassifier::new(
            &self.model,
            &self.tokenizer,
            &self.cfg.prompts.templates,
            true,
            &self.device,
        )?;
        Ok(())
    }

    /// Trains to the end, then evaluates the best checkpoint and writes the
    /// report, score files and plots.
    pub fn run(&mut self) -> Result<EvalReport> {
        self.train()?;
        self.finish()
    }

    /// The training loop, from the current position to the last step.
    pub fn train(&mut self) -> Result<()> {
        // Throughput counts from now (the steps' sums carry over).
        self.window.restart_clock();
        while self.adam.step_count() < self.total_steps {
            let epoch = self.position.epoch;
            let mut batches = self.loader.epoch_from(epoch, self.position.next_batch);
            while self.adam.step_count() < self.total_steps {
                let first = batches.next_index();
                if first >= self.batches_per_epoch {
                    self.position = LoaderPosition {
                        epoch: epoch + 1,
                        next_batch: 0,
                    };
                    break;
                }
                let group = self
                    .cfg
                    .training
                    .accumulation
                    .min(self.batches_per_epoch - first);
                // With data parallelism each step is two collectives, made
                // by every rank whatever happened to it: the exchange of the
                // gradients (which carries whether each rank computed its
                // step) and the agreement on the update. A rank's error (a
                // damaged image in its shard, rank 0's evaluation or
                // checkpoint write) stops the others at the same point
                // instead of leaving them waiting in a collective it skips.
                // The others wait for rank 0's evaluation or checkpoint
                // without a time limit (it may take long); every rank
                // knows which steps those are.
                let ends_epoch = first + group >= self.batches_per_epoch;
                let patient =
                    self.rank0_work(self.adam.step_count() + 1, ends_epoch) != Rank0Work::Nothing;
                let gathered = self.gather(&mut batches, group);
                let stepped = self
                    .share(gathered, self.adam.step_count() + 1)
                    .and_then(|step| self.finish_step(step, first, group, epoch));
                let epoch_done = self.all_ranks(stepped, "update", patient)?;
                if epoch_done {
                    break;
                }
            }
        }
        // A run resumed at its last step evaluates it, as an uninterrupted
        // run of this length does, unless the checkpoint's evaluation was
        // of that step (a run shortened to its checkpoint's step was last
        // evaluated earlier).
        let evaluated_last = self
            .calibration
            .is_some_and(|c| c.step.is_none_or(|step| step == self.total_steps));
        if self.rank() == 0 && !evaluated_last {
            self.evaluate_and_checkpoint(false)?;
        }
        self.progress.finish();
        Ok(())
    }

    /// Forward and backward of the `group` micro-batches of one step: the
    /// summed gradients, each micro-batch's loss (still on the device) and
    /// the images.
    fn gather(&self, batches: &mut fas_data::Epoch, group: usize) -> Result<Gathered> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.adam.vars().count()];
        let mut losses = Vec::with_capacity(group);
        let mut images = 0;
        for _ in 0..group {
            let waiting = Instant::now();
            let batch = batches.next();
            self.add_phase(|p| &mut p.data, waiting);
            let batch = batch.ok_or_else(|| {
                Error::config("loader", "the epoch ended before its last batch")
            })??;
            let (loss, n) = self.micro_batch(&batch, group, &mut grads)?;
            losses.push(loss);
            images += n;
        }
        Ok(Gathered {
            grads,
            loss: StepLoss::OnDevice(losses),
            images,
        })
    }

    /// This rank's step, or its failure, shared with the other ranks: the
    /// gradients and images of all ranks and their mean loss (read here:
    /// the exchange carries it). Without data parallelism, the step as it
    /// is, its losses still on the device.
    fn share(&self, mine: Result<Gathered>, step: u64) -> Result<Gathered> {
        match (&self.sync, &self.exchange) {
            (Some(sync), Some(exchange)) => {
                let mine = mine.and_then(|mine| {
                    Ok(StepShare {
                        loss: mine.loss.read(step)?,
                        grads: mine.grads,
                        images: mine.images,
                    })
                });
                let all =
                    self.profiled(|p| &mut p.exchange, || exchange.exchange(&*sync.0, mine))?;
                Ok(Gathered {
                    grads: all.grads,
                    loss: StepLoss::Read(all.loss),
                    images: all.images,
                })
            }
            _ => mine,
        }
    }

    /// Adds the time since `start` to the current step's `phase`.
    fn add_phase(&self, phase: fn(&mut PhaseSeconds) -> &mut f64, start: Instant) {
        let mut phases = self.step_phases.get();
        *phase(&mut phases) += start.elapsed().as_secs_f64();
        self.step_phases.set(phases);
    }

    /// `work()`, timed into the current step's `phase` when profiling, the
    /// device synchronised at its end so that the phase's kernels count
    /// there (without profiling, nothing is timed or synchronised).
    fn profiled<T>(
        &self,
        phase: fn(&mut PhaseSeconds) -> &mut f64,
        work: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if !self.profile_phases {
            return work();
        }
        let start = Instant::now();
        let out = work();
        let synced = self.device.synchronize();
        self.add_phase(phase, start);
        let out = out?;
        synced?;
        Ok(out)
    }

    /// Takes the optimizer step with the step's (averaged) gradients, logs,
    /// and on rank 0 evaluates and checkpoints when due. Whether the step
    /// ended the epoch.
    fn finish_step(
        &mut self,
        gathered: Gathered,
        first: usize,
        group: usize,
        epoch: u64,
    ) -> Result<bool> {
        let step = self.adam.step_count() + 1;
        let Gathered {
            mut grads,
            loss,
            images,
        } = gathered;
        let (loss, grad_norm) = self.profiled(
            |p| &mut p.clip,
            || self.clip_gradients(&mut grads, loss, step),
        )?;
        let cfg = &self.cfg;
        let lr = cfg.schedule.lr_at(cfg.optim.lr, step, self.total_steps);
        let start = Instant::now();
        self.adam.step(&grads, lr)?;
        if self.profile_phases {
            self.device.synchronize()?;
            self.add_phase(|p| &mut p.update, start);
        }
        let next = first + group;
        self.position = if next >= self.batches_per_epoch {
            LoaderPosition {
                epoch: epoch + 1,
                next_batch: 0,
            }
        } else {
            LoaderPosition {
                epoch,
                next_batch: next,
            }
        };
        self.window
            .add(loss, grad_norm, images, &self.step_phases.take());
        if step.is_multiple_of(self.cfg.training.log_every) || step == self.total_steps {
            let record = self.window.record(step, epoch, lr);
            if let Some(metrics) = &mut self.metrics {
                metrics.append(&record)?;
            }
            self.progress.train(&record, self.total_steps);
        }
        let epoch_done = self.position.next_batch == 0;
        // Only rank 0 evaluates and writes: the parameters are the same on
        // every rank.
        if self.rank() == 0 {
            match self.rank0_work(step, epoch_done) {
                Rank0Work::Evaluate => self.evaluate_and_checkpoint(false)?,
                Rank0Work::Checkpoint => self.save_step_checkpoint()?,
                Rank0Work::Nothing => {}
            }
        }
        Ok(epoch_done)
    }

    /// What rank 0 does after optimizer step `step` (which ended an epoch
    /// when `epoch_done`): every rank can tell, so the others know when
    /// they will wait for it.
    fn rank0_work(&self, step: u64, epoch_done: bool) -> Rank0Work {
        let last = step == self.total_steps;
        let eval_due = match self.cfg.eval.every {
            EvalEvery::Epoch => epoch_done || last,
            EvalEvery::Steps(n) => step.is_multiple_of(n) || last,
        };
        if eval_due {
            Rank0Work::Evaluate
        } else if self
            .cfg
            .training
            .checkpoint_every
            .is_some_and(|n| step.is_multiple_of(n))
        {
            Rank0Work::Checkpoint
        } else {
            Rank0Work::Nothing
        }
    }

    /// `result`, once every rank has said whether its own succeeded
    /// (nothing to agree on without data parallelism).
    fn all_ranks<T>(&self, result: Result<T>, phase: &str, patient: bool) -> Result<T> {
        match &self.sync {
            None => result,
            Some(sync) => all_ranks(&*sync.0, &self.device, result, phase, patient),
        }
    }

    /// Forward and backward of one micro-batch; its gradients, divided by
    /// `group` (the micro-batches of this step), are added into `grads`.
    /// Returns the loss (an F32 `[1]` on the device) and the batch size.
    ///
    /// The loss is not read here: a read waits for the device, which would
    /// then idle until the backward's first kernels are launched (and its
    /// launch queue refilled). It is read with the step's gradient norms
    /// (or before the exchange of a data-parallel step), and checked there.
    fn micro_batch(
        &self,
        batch: &fas_data::Batch,
        group: usize,
        grads: &mut [Option<Tensor>],
    ) -> Result<(Tensor, usize)> {
        let (loss, n) = self.profiled(
            |p| &mut p.forward,
            || {
                let pixels = batch
                    .images
                    .to_device(&self.device)?
                    .to_dtype(self.cfg.model.precision.compute_dtype())?;
                let targets: Vec<u32> = batch
                    .labels
                    .iter()
                    .zip(&batch.entries)
                    .map(|(label, entry)| {
                        label.as_ref().map(class_index).ok_or_else(|| {
                            Error::config("train split", format!("entry {entry} has no label"))
                        })
                    })
                    .collect::<Result<_>>()?;
                let n = targets.len();
                let targets = Tensor::from_vec(targets, n, &self.device)?;
                let logits = self.classifier.image_logits(&self.model, &pixels)?;
                let loss = match self.cfg.prompts.loss {
                    LossKind::Clip => clip_loss_with_prompts(&logits, &targets)?,
                    LossKind::CrossEntropy => prompt_cross_entropy(&logits, &targets)?,
                };
                Ok((loss, n))
            },
        )?;
        self.profiled(
            |p| &mut p.backward,
            || {
                let backward = (&loss / group as f64)?.backward()?;
                for (slot, (_, var)) in grads.iter_mut().zip(self.adam.vars()) {
                    if let Some(grad) = backward.get(var.as_tensor()) {
                        let grad = grad.detach();
                        *slot = Some(match slot.take() {
                            Some(sum) => (sum + grad)?,
                            None => grad,
                        });
                    }
                }
                Ok(())
            },
        )?;
        Ok((loss.detach().to_dtype(DType::F32)?.reshape(1)?, n))
    }

    /// The step's loss and global gradient norm; errors naming the loss or
    /// the first gradient that is not finite; scales the gradients as
    /// `torch.nn.utils.clip_grad_norm_` when clipping is on.
    ///
    /// Each gradient's sum of squares stays on the device, and all of them
    /// come back in one read, with the micro-batches' losses when they are
    /// still on the device: a read per parameter would wait for the GPU
    /// some 200 times a step. With fused-ops' CUDA kernels on, the sums are
    /// two launches for all gradients (`fused_ops::sums_of_squares`), not
    /// three per gradient.
    fn clip_gradients(
        &self,
        grads: &mut [Option<Tensor>],
        loss: StepLoss,
        step: u64,
    ) -> Result<(f64, f64)> {
        let mut names = Vec::new();
        let mut sums = Vec::new();
        let (known, losses) = match loss {
            StepLoss::Read(loss) => (Some(loss), 0),
            StepLoss::OnDevice(losses) => {
                let n = losses.len();
                sums.extend(losses);
                (None, n)
            }
        };
        let mut present = Vec::new();
        for (grad, (name, _)) in grads.iter().zip(self.adam.vars()) {
            let Some(grad) = grad else { continue };
            names.push(name);
            present.push(grad);
        }
        if !present.is_empty() {
            sums.push(fused_ops::sums_of_squares(&present)?);
        }
        let sums = if sums.is_empty() {
            Vec::new()
        } else {
            Tensor::cat(&sums, 0)?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?
        };
        let loss = match known {
            Some(loss) => loss,
            None => mean_loss(&sums[..losses], step)?,
        };
        let mut sum_sq = 0.0f64;
        for (name, sq) in names.into_iter().zip(&sums[losses..]) {
            let sq = f64::from(*sq);
            if !sq.is_finite() {
                return Err(Error::NonFinite {
                    step,
                    what: format!("the gradient of {name}"),
                });
            }
            sum_sq += sq;
        }
        let norm = sum_sq.sqrt();
        if let Some(max) = self.cfg.training.clip_grad_norm {
            let coefficient = (max / (norm + 1e-6)).min(1.0);
            if coefficient < 1.0 {
                for grad in grads.iter_mut().flatten() {
                    *grad = grad.affine(coefficient, 0.0)?;
                }
            }
        }
        Ok((loss, norm))
    }

    /// The loss and the gradient of every trainable parameter on batch
    /// `index` of `epoch`, without taking a step: what a step on that batch
    /// alone would log and apply (before clipping).
    pub fn gradients_of_batch(&self, epoch: u64, index: usize) -> Result<BatchGradients> {
        let batch = self
            .loader
            .epoch_from(epoch, index)
            .next()
            .ok_or_else(|| {
                Error::config("batch", format!("epoch {epoch} has no batch {index}"))
            })??;
        let mut grads = vec![None; self.adam.vars().count()];
        let computed = self.micro_batch(&batch, 1, &mut grads);
        // Not a training step: its times stay out of the next step's.
        self.step_phases.take();
        let (loss, _) = computed?;
        let loss = StepLoss::OnDevice(vec![loss]).read(self.adam.step_count() + 1)?;
        Ok(BatchGradients {
            loss,
            grads: self
                .adam
                .vars()
                .map(|(name, _)| name.to_string())
                .zip(grads)
                .collect(),
        })
    }

    /// A detector over the current weights (no copy, no autograd graph).
    pub fn detector(&self) -> Result<Detector> {
        let model = inference_model(&self.clip, &self.varmap, &self.device)?;
        let embeddings = prompt_embeddings(
            &model,
            &self.tokenizer,
            &self.cfg.prompts.templates,
            &self.device,
        )?;
        Ok(Detector::new(model, embeddings).with_tf32(self.cfg.model.tf32))
    }

    /// Scores dev (and test), updates the best checkpoint, writes the step
    /// checkpoint, and logs the evaluation unless `logged` says the log
    /// holds this step's evaluation already.
    fn evaluate_and_checkpoint(&mut self, logged: bool) -> Result<()> {
        let cfg = &self.cfg.eval;
        let detector = self.detector()?;
        let (batch, workers) = (self.cfg.loader.eval_batch_size, self.cfg.loader.workers);
        let dev_set =
            score_split(&detector, &self.dev, batch, workers)?.score_set(cfg.video_level)?;
        let protocol = ProtocolConfig {
            threshold_rule: cfg.threshold_rule,
            ..ProtocolConfig::default()
        };
        let dev = evaluate_protocol(Some(&dev_set), &dev_set, protocol)?;
        let test = if cfg.test_during_training || cfg.select_on == Selection::Test {
            let test_set =
                score_split(&detector, &self.test, batch, workers)?.score_set(cfg.video_level)?;
            Some(evaluate_protocol(Some(&dev_set), &test_set, protocol)?)
        } else {
            None
        };
        let step = self.adam.step_count();
        let epoch = self.position.epoch;
        let candidate = BestRecord {
            step,
            epoch,
            selected_on: cfg.select_on,
            dev: dev.clone(),
            test: test.clone(),
        };
        let improved = self
            .best
            .as_ref()
            .is_none_or(|best| is_better(&candidate, best));
        self.calibration = Some(Calibration {
            threshold: dev.threshold,
            rule: cfg.threshold_rule,
            split: Split::Dev,
            step: Some(step),
            video_level: Some(cfg.video_level),
        });
        let record = MetricsRecord::Eval {
            step,
            epoch,
            dev_acer: dev.acer,
            dev_auc: dev.auc,
            dev_eer: dev.eer,
            threshold: dev.threshold,
            test_acer: test.as_ref().map(|t| t.acer),
            test_auc: test.as_ref().map(|t| t.auc),
            best: improved,
        };
        if let Some(metrics) = self.metrics.as_mut().filter(|_| !logged) {
            metrics.append(&record)?;
        }
        let test_text = test.as_ref().map_or(String::new(), |t| {
            format!(
                "  |  test ACER {:.2} % AUC {:.2} %",
                100.0 * t.acer,
                100.0 * t.auc
            )
        });
        self.progress.println(&format!(
            "eval step {step}: dev ACER {:.2} % AUC {:.2} % EER {:.2} %{test_text}{}",
            100.0 * dev.acer,
            100.0 * dev.auc,
            100.0 * dev.eer,
            if improved { "  (best)" } else { "" }
        ));
        tracing::info!(step, dev_acer = dev.acer, improved, "evaluated");
        if !improved {
            return self.save_step_checkpoint();
        }
        self.best = Some(candidate);
        // The step checkpoint first: it records this step as the best and
        // holds its weights, so a kill before the best file is replaced is
        // repaired on resume from the same weights. The other order left a
        // best file that no checkpoint recorded, from a step the resumed
        // run replays (bit-identical on the CPU, not on a GPU).
        self.save_step_checkpoint()?;
        self.write_best(&detector)
    }

    /// Writes `best.safetensors` from the current weights and `detector`'s
    /// prompt embeddings.
    fn write_best(&self, detector: &Detector) -> Result<()> {
        let meta = self.meta(CheckpointKind::Model);
        let tensors = self.model_tensors(detector);
        write_checkpoint(&self.run.best_checkpoint(), meta, tensors)
    }

    /// After a restore: makes `best.safetensors` hold the best the
    /// checkpoint records. When that best is the checkpoint's own step (a
    /// kill between the two writes, or a damaged or missing best file), the
    /// restored weights are those weights and the file is written again.
    fn repair_best(&mut self) -> Result<()> {
        let Some(best) = &self.best else {
            return Ok(());
        };
        let path = self.run.best_checkpoint();
        let held = if path.is_file() {
            crate::checkpoint::verify_checkpoint(&path).map(|meta| meta.step)
        } else {
            Err(Error::checkpoint(&path, "is missing"))
        };
        match held {
            Ok(step) if step == best.step => Ok(()),
            _ if best.step == self.adam.step_count() => {
                tracing::warn!(
                    path = %path.display(),
                    step = best.step,
                    "the best checkpoint does not hold the recorded best; writing it again from \
                     the resumed step, which is that best"
                );
                let detector = self.detector()?;
                self.write_best(&detector)
            }
            Ok(step) => {
                // A best from a later step than the checkpoint resumed from
                // (its later checkpoints were removed): the replayed
                // evaluations compare against the recorded best and replace
                // the file when they beat it; the final report names the
                // step whose weights it evaluates either way.
                self.progress.println(&format!(
                    "note: {} holds step {step}, the resumed checkpoint records step {} as the \
                     best; the replayed run replaces it if an evaluation beats the record",
                    path.display(),
                    best.step
                ));
                Ok(())
            }
            // Not readable now (permissions, a network file system's
            // error) is not damaged: stop, and keep the record and the file.
            Err(e @ Error::Io { .. })
                if !matches!(&e, Error::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::UnexpectedEof) =>
            {
                Err(e)
            }
            Err(e) => {
                // The recorded best's weights are in no file any more. The
                // run chooses its best again among the evaluations still to
                // come (on dev as before; the final evaluation scores the
                // last weights when none are left). A damaged file is kept
                // beside it, not overwritten.
                if path.is_file() {
                    // Beside any earlier damaged file, not over it.
                    let aside = (1..)
                        .map(|n: u32| match n {
                            1 => path.with_extension("safetensors.damaged"),
                            n => path.with_extension(format!("safetensors.damaged-{n}")),
                        })
                        .find(|candidate| !candidate.exists())
                        .unwrap_or_else(|| path.with_extension("safetensors.damaged"));
                    std::fs::rename(&path, &aside)
                        .map_err(|io| Error::io("renaming", &path, io))?;
                }
                self.progress.println(&format!(
                    "note: the resumed checkpoint records step {} as the best, and {} cannot \
                     be used ({e}); that step's weights are in no step checkpoint, so this run \
                     chooses its best again among its evaluations from step {} on",
                    best.step,
                    path.display(),
                    self.adam.step_count()
                ));
                self.best = None;
                Ok(())
            }
        }
    }

    fn meta(&self, kind: CheckpointKind) -> CheckpointMeta {
        let parameters = clip_moe::select_vars(&self.varmap, &clip_moe::WeightSelection::All)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        CheckpointMeta {
            format: FORMAT.to_string(),
            kind,
            step: self.adam.step_count(),
            position: self.position,
            experiment: self.cfg.clone(),
            clip: self.clip.clone(),
            calibration: self.calibration,
            best: self.best.clone(),
            unlogged: self.window.unlogged(),
            world_size: Some(self.world_size()),
            total_steps: Some(self.total_steps),
            lists: Some(self.lists.clone()),
            parameters,
            checksum: String::new(),
        }
    }

    /// The weights and the detector's prompt embeddings.
    fn model_tensors(&self, detector: &Detector) -> Vec<(String, TensorData<'static>)> {
        let mut tensors: Vec<(String, TensorData<'static>)> =
            clip_moe::select_vars(&self.varmap, &clip_moe::WeightSelection::All)
                .into_iter()
                .map(|(name, var)| (name, TensorData::Tensor(var.as_tensor().detach())))
                .collect();
        tensors.push((
            CLASS_EMBEDDINGS.to_string(),
            TensorData::Tensor(detector.class_embeddings().clone()),
        ));
        tensors
    }

    /// Writes the resumable checkpoint of the current step and prunes old ones.
    fn save_step_checkpoint(&self) -> Result<()> {
        let detector = self.detector()?;
        let mut tensors = self.model_tensors(&detector);
        tensors.extend(self.adam.state_data());
        let meta = self.meta(CheckpointKind::Training);
        let path = self.run.step_checkpoint(meta.step);
        write_checkpoint(&path, meta, tensors)?;
        tracing::info!(path = %path.display(), "checkpoint written");
        self.run.prune_checkpoints(self.cfg.training.keep_last)
    }

    /// Evaluates the best checkpoint: threshold on dev, metrics on test,
    /// `report.json`, score files and plots.
    pub fn finish(&mut self) -> Result<EvalReport> {
        let best_path = self.run.best_checkpoint();
        if !best_path.is_file() {
            // No evaluation made a best (a lost best's record was dropped on
            // resume): the last weights are the best. When the resumed
            // checkpoint evaluated this step, its record is in the log.
            let step = self.adam.step_count();
            // As `train` decides whether the last step was evaluated (a
            // calibration from before steps were recorded counts as this
            // step's). Its record keeps `best: false` when it did not beat
            // the best that was lost; `best.safetensors` now holds it.
            let logged = self
                .calibration
                .is_some_and(|c| c.step.is_none_or(|s| s == step));
            self.evaluate_and_checkpoint(logged)?;
        }
        let best = crate::checkpoint::read_model_checkpoint(&best_path)?;
        let detector = Detector::from_checkpoint(&best, &self.device)?;
        let report = evaluate_run(
            &detector,
            &self.cfg,
            &self.dev,
            &self.test,
            &self.run,
            Some(&best),
        )?;
        let json = report_json(&report)?;
        crate::evaluator::write_text(&self.run.report(), &json)?;
        if let Some(copy) = &self.report_copy {
            crate::evaluator::write_text(copy, &json)?;
        }
        Ok(report)
    }
}

/// Whether `candidate` beats `best`: lower ACER on the selection split,
/// then higher AUC, then lower EER; full ties go to the later checkpoint.
fn is_better(candidate: &BestRecord, best: &BestRecord) -> bool {
    let pick = |r: &BestRecord| match (r.selected_on, &r.test) {
        (Selection::Test, Some(test)) => (test.acer, test.auc, test.eer),
        _ => (r.dev.acer, r.dev.auc, r.dev.eer),
    };
    let (a, b) = (pick(candidate), pick(best));
    if a.0 != b.0 {
        return a.0 < b.0;
    }
    if a.1 != b.1 {
        return a.1 > b.1;
    }
    a.2 <= b.2
}

/// Scores dev and test with `detector`, writes `scores/{dev,test}.txt` and
/// the test plots into `run`, and returns the report (threshold on dev).
pub fn evaluate_run(
    detector: &Detector,
    cfg: &ExperimentConfig,
    dev: &SplitData,
    test: &SplitData,
    run: &RunDir,
    checkpoint: Option<&LoadedCheckpoint>,
) -> Result<EvalReport> {
    let (batch, workers) = (cfg.loader.eval_batch_size, cfg.loader.workers);
    let dev_scores = score_split(detector, dev, batch, workers)?;
    let test_scores = score_split(detector, test, batch, workers)?;
    dev_scores.write(&run.scores("dev"), ScoreExport::AttackProbability)?;
    test_scores.write(&run.scores("test"), ScoreExport::AttackProbability)?;
    let dev_set = dev_scores.score_set(cfg.eval.video_level)?;
    let test_set = test_scores.score_set(cfg.eval.video_level)?;
    let (test_report, dev_report) =
        crate::evaluator::evaluate(Some(&dev_set), &test_set, cfg.eval.threshold_rule, None)?;
    write_plots(&test_set, &run.plots())?;
    Ok(EvalReport {
        protocol: protocol_name(&cfg.data),
        level: if cfg.eval.video_level {
            "video"
        } else {
            "image"
        }
        .into(),
        score_polarity: SCORE_POLARITY.to_string(),
        threshold_origin: ThresholdOrigin::Dev,
        selected_on: Some(cfg.eval.select_on),
        score_files: Some(ScoreExport::AttackProbability),
        checkpoint: checkpoint.map(|c| c.path.clone()),
        step: checkpoint.map(|c| c.meta.step),
        test: test_report,
        dev: dev_report,
        bpcer_at_apcer: bpcer_table(&test_set)?,
    })
}

/// The report as pretty JSON.
pub fn report_json(report: &EvalReport) -> Result<String> {
    serde_json::to_string_pretty(report).map_err(|source| Error::Json {
        path: PathBuf::from("report.json"),
        source,
    })
}

/// The loss of one batch and its gradients: [`Trainer::gradients_of_batch`].
#[derive(Debug)]
pub struct BatchGradients {
    /// The batch's loss, as a step logs it.
    pub loss: f64,
    /// Every trainable parameter's gradient (name order), `None` where no
    /// gradient reached it.
    pub grads: Vec<(String, Option<Tensor>)>,
}

/// One step's gradients (summed over its micro-batches), loss and images:
/// a rank's, or after a data-parallel exchange all ranks'.
struct Gathered {
    grads: Vec<Option<Tensor>>,
    loss: StepLoss,
    images: usize,
}

/// A step's loss: each micro-batch's, still on the device, or their mean,
/// read.
enum StepLoss {
    OnDevice(Vec<Tensor>),
    Read(f64),
}

impl StepLoss {
    /// The mean loss, read from the device in one read if it is still
    /// there; an error if it is not finite.
    fn read(self, step: u64) -> Result<f64> {
        match self {
            StepLoss::Read(loss) => Ok(loss),
            StepLoss::OnDevice(losses) => {
                let values = Tensor::cat(&losses, 0)?
                    .to_device(&Device::Cpu)?
                    .to_vec1::<f32>()?;
                mean_loss(&values, step)
            }
        }
    }
}

/// The mean of a step's micro-batch losses (summed in f64, in order); an
/// error naming the step if one is not finite.
fn mean_loss(losses: &[f32], step: u64) -> Result<f64> {
    let mut sum = 0.0;
    for &loss in losses {
        let loss = f64::from(loss);
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                step,
                what: format!("the loss ({loss})"),
            });
        }
        sum += loss;
    }
    Ok(sum / losses.len() as f64)
}

/// What rank 0 does after an optimizer step, besides logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rank0Work {
    Evaluate,
    Checkpoint,
    Nothing,
}

/// `result` of this rank's `phase`, once every rank has said whether its
/// own succeeded: a rank that failed returns its own error, the others an
/// error saying a rank failed. Every rank calls this at the same points of
/// the run, so the agreement is the next collective of all of them.
fn all_ranks<T>(
    sync: &dyn GradientSync,
    device: &Device,
    result: Result<T>,
    phase: &str,
    patient: bool,
) -> Result<T> {
    let agreed = if patient {
        sync.all_ok_patiently(result.is_ok(), device)
    } else {
        sync.all_ok(result.is_ok(), device)
    };
    match (agreed, result) {
        (_, Err(e)) => Err(e),
        (Ok(true), Ok(value)) => Ok(value),
        (Ok(false), Ok(_)) => Err(Error::config(
            "data parallel",
            format!(
                "rank {}: another rank failed to {phase} (its error is in its output); this \
                 rank stopped with it",
                sync.rank()
            ),
        )),
        (Err(e), Ok(_)) => Err(e),
    }
}

/// Optimizer steps of a run of `training` with `steps_per_epoch`.
fn run_length(training: &crate::experiment::TrainingConfig, steps_per_epoch: u64) -> u64 {
    // Saturating: `--epochs <huge> --max-steps N` means "stop by steps".
    let total = training.epochs.saturating_mul(steps_per_epoch);
    match training.max_steps {
        Some(max) if training.epochs == 0 => max,
        Some(max) => total.min(max),
        None => total,
    }
}

/// What `run`'s `config.json` holds.
pub(crate) enum ConfigFile {
    /// A uniattack experiment (of any version).
    Experiment,
    /// Someone else's JSON, such as a model directory's `config.json`.
    Foreign,
    /// No JSON at all (cut short, overwritten): why not.
    Damaged(String),
}

/// What `run`'s `config.json` is: an experiment, someone else's file, or
/// damaged.
pub(crate) fn config_file(run: &RunDir) -> Result<ConfigFile> {
    let bytes = std::fs::read(run.config()).map_err(|e| Error::io("reading", run.config(), e))?;
    let json = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => json,
        Err(e) => return Ok(ConfigFile::Damaged(format!("not JSON: {e}"))),
    };
    // Any version's experiment has these sections; a model's config
    // (CLIP's `vision_config`, ...) has none of them.
    let experiment = ["seed", "model", "data", "training"]
        .iter()
        .all(|key| json.get(key).is_some());
    Ok(if experiment {
        ConfigFile::Experiment
    } else {
        ConfigFile::Foreign
    })
}

/// Whether `run` holds a run worth keeping: a checkpoint, a report or a
/// logged record. A directory holding only the `config.json` of a start
/// that failed before its first record (a missing list, a batch too large
/// for the split, a failed download) does not, so that start can be
/// retried with other settings.
fn holds_run(run: &RunDir) -> Result<bool> {
    if !run.step_checkpoints()?.is_empty()
        || run.best_checkpoint().is_file()
        || run.report().is_file()
    {
        return Ok(true);
    }
    Ok(std::fs::metadata(run.metrics()).is_ok_and(|m| m.len() > 0))
}

/// The first entry of `run`'s directory, which holds no run yet, that the
/// run would write over: `scores/`, `plots/`, a `report.json`, or a
/// `checkpoints/` holding anything but a killed write's temporaries
/// (`config.json` is checked apart). A person's or another program's
/// results there are refused rather than replaced; other files (a job's
/// log that the shell created before the run started) are left alone.
fn foreign_entry(run: &RunDir) -> Result<Option<PathBuf>> {
    let checkpoints = run.checkpoints();
    if std::fs::symlink_metadata(&checkpoints).is_ok() {
        if !checkpoints.is_dir() {
            return Ok(Some(checkpoints));
        }
        for entry in
            std::fs::read_dir(&checkpoints).map_err(|e| Error::io("listing", &checkpoints, e))?
        {
            let entry = entry.map_err(|e| Error::io("listing", &checkpoints, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // An earlier version's leaked safetensors temporary is a kill's
            // leftover too (removed under the lock).
            if !atomic_io::is_temporary_name(&name)
                && !crate::run_dir::is_safetensors_temporary(&name)
            {
                return Ok(Some(entry.path()));
            }
        }
    }
    // An empty folder holds nothing to write over.
    let empty_dir = |path: &std::path::Path| {
        std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
    };
    Ok([run.root().join("scores"), run.plots(), run.report()]
        .into_iter()
        .find(|path| std::fs::symlink_metadata(path).is_ok() && !empty_dir(path)))
}

/// Takes the run directory's lock (`.lock`, released when the returned
/// file closes, also by a kill): a second process on the same run would
/// append to a log the first has replaced and race its checkpoints.
fn lock_run(run: &RunDir) -> Result<std::fs::File> {
    let path = run.root().join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::config(
            "--output",
            format!(
                "{} is in use by another training process (it holds {}); wait for it or \
                 choose another directory",
                run.root().display(),
                path.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("locking", &path, e)),
    }
}

/// Refuses to start a new run over an existing one, creates the directory
/// and locks it; the lock is held while the returned file is open. On
/// resume, the saved configuration must match `cfg` except in the settings
/// a resumed run may change. A new run's `config.json` is written here; a
/// resumed run's is written again by [`Trainer::new`] once everything else
/// has succeeded, so a refused or failed resume leaves the run's own
/// configuration as it was.
fn prepare_output(run: &RunDir, cfg: &ExperimentConfig, resume: bool) -> Result<std::fs::File> {
    check_output(run, cfg, resume)?;
    let exists = holds_run(run)?;
    std::fs::create_dir_all(run.root()).map_err(|e| Error::io("creating", run.root(), e))?;
    let lock = lock_run(run)?;
    if exists {
        check_saved_settings(run, cfg)?;
    }
    // Under the lock: a temporary is a write a killed process left (even
    // before the run recorded anything, such as a first checkpoint).
    run.remove_stale_temporaries()?;
    if !exists {
        // A new run's settings, at once: a start killed or failed before
        // its first record (loading or downloading the model, reading the
        // lists) is retried with `--resume --output RUN` alone.
        crate::evaluator::write_text(&run.config(), &cfg.to_json())?;
    }
    Ok(lock)
}

/// Errors when the run in `run` (one that exists) was started with settings
/// a resume may not change ([`differing_sections`]; data that moved is for
/// the checkpoint's record to judge). A damaged `config.json` of a run with
/// a checkpoint is left to the checkpoint's own record of the experiment,
/// which the resume checks.
pub(crate) fn check_saved_settings(run: &RunDir, cfg: &ExperimentConfig) -> Result<()> {
    let left_to_checkpoint = matches!(config_file(run), Ok(ConfigFile::Damaged(_)))
        && !run.step_checkpoints()?.is_empty();
    if !run.config().is_file() || left_to_checkpoint {
        return Ok(());
    }
    let saved = ExperimentConfig::from_file(&run.config())?;
    let mut differ = differing_sections(&saved, cfg);
    if data_moved(&saved, cfg) {
        differ.retain(|section| *section != "data");
    }
    if !differ.is_empty() {
        return Err(Error::config(
            "--resume",
            format!(
                "the run in {} was started with other settings (differs in: {}); resume \
                 it with the same flags",
                run.root().display(),
                differ.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The refusals of [`prepare_output`], which write nothing: a file, the
/// data root, another program's results or configuration, a run that
/// `--resume` would start over. `train_uniattack --gpus N` runs them before
/// it creates the directory and its NCCL id file, so a refused `--output`
/// is left as it was.
pub(crate) fn check_output(run: &RunDir, cfg: &ExperimentConfig, resume: bool) -> Result<()> {
    if run.root().exists() && !run.root().is_dir() {
        return Err(Error::config(
            "--output",
            format!(
                "{} exists and is not a directory; give a directory for the run",
                run.root().display()
            ),
        ));
    }
    let exists = holds_run(run)?;
    if exists && !resume {
        return Err(Error::config(
            "--output",
            format!(
                "{} already holds a run; pass --resume to continue it, or choose another \
                 directory",
                run.root().display()
            ),
        ));
    }
    if resume
        && exists
        && run.step_checkpoints()?.is_empty()
        && (run.best_checkpoint().is_file() || run.report().is_file())
    {
        return Err(Error::config(
            "--resume",
            format!(
                "{} holds a run's best checkpoint or report but no step checkpoint to resume \
                 from (a finished run whose step checkpoints were removed?); resuming would \
                 start over and replace them. Evaluate it with eval_uniattack, or train into a \
                 new --output",
                run.root().display()
            ),
        ));
    }
    if resolved(run.root()) == resolved(&cfg.data.root) {
        return Err(Error::config(
            "--output",
            format!(
                "{} is the data root; the run would write its files among the dataset's: \
                 choose another directory",
                run.root().display()
            ),
        ));
    }
    // A run without a step checkpoint starts over, whatever else is there:
    // only what a start of a run leaves may be replaced.
    let starts_over = !exists || run.step_checkpoints()?.is_empty();
    // A damaged config.json beside this trainer's lock is a run's of ours
    // (killed or damaged before its first checkpoint): it may be replaced.
    let ours_damaged = matches!(config_file(run), Ok(ConfigFile::Damaged(_)))
        && run.root().join(".lock").is_file();
    let ours = ours_damaged || matches!(config_file(run), Ok(ConfigFile::Experiment));
    if exists && starts_over && !ours {
        return Err(Error::config(
            "--output",
            format!(
                "{} holds a metrics.jsonl but no uniattack config.json or checkpoint: it is \
                 not a uniattack run, and a run there would replace its files: choose another \
                 directory",
                run.root().display()
            ),
        ));
    }
    if starts_over {
        if let Some(entry) = foreign_entry(run)? {
            return Err(Error::config(
                "--output",
                format!(
                    "{} holds {}, which this run would write over and no uniattack run wrote \
                     (the directory holds no checkpoint, report or log of one): choose a new \
                     or empty directory",
                    run.root().display(),
                    entry.display()
                ),
            ));
        }
    }
    if !exists && run.config().is_file() {
        // A failed start's own config.json may be replaced; anyone else's
        // (a model directory given as --output) may not.
        let what = match config_file(run)? {
            ConfigFile::Experiment => None,
            ConfigFile::Foreign => {
                Some("is not a uniattack experiment (a model directory?)".to_string())
            }
            ConfigFile::Damaged(_) if ours_damaged => None,
            ConfigFile::Damaged(why) => Some(format!("is damaged ({why})")),
        };
        if let Some(what) = what {
            return Err(Error::config(
                "--output",
                format!(
                    "{} holds a config.json that {what} and no run; training there would \
                     replace it: choose another directory",
                    run.root().display()
                ),
            ));
        }
    }
    Ok(())
}

/// Errors now, not after the whole run, when `--report` could not be
/// written or would replace anything but an earlier report: an input, a
/// file of the run (its checkpoints, scores and plots), or any other file
/// (an image of the dataset, a person's notes).
fn check_report_copy(report: &std::path::Path, lists: &[PathBuf], run: &RunDir) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::config(
            "--report",
            format!("{}: {why}", report.display()),
        ))
    };
    if report.is_dir() {
        return refuse("is a directory; give a file path".to_string());
    }
    let (config, metrics) = (run.config(), run.metrics());
    let mut inputs: Vec<&std::path::Path> = lists.iter().map(PathBuf::as_path).collect();
    inputs.extend([config.as_path(), metrics.as_path()]);
    atomic_io::refuse_input_as_output(report, &inputs)
        .map_err(|e| Error::config("--report", e.to_string()))?;
    // The run's own files and folders; another name in the run directory
    // (`runs/p1/final.json`) is the copy's own.
    let root = resolved(run.root());
    let own = [
        "report.json",
        "config.json",
        "metrics.jsonl",
        ".lock",
        ".nccl-id",
        "checkpoints",
        "scores",
        "plots",
    ];
    if own
        .iter()
        .any(|name| resolved(report).starts_with(root.join(name)))
    {
        return refuse(format!(
            "is one of the files of the run in {} (its report.json, checkpoints, scores or \
             plots), which a copy must not replace; give another path",
            run.root().display()
        ));
    }
    if let Some(ancestor) = report.ancestors().skip(1).find(|a| a.exists()) {
        if !ancestor.is_dir() {
            return refuse(format!(
                "{} is not a directory, so the report cannot be written there",
                ancestor.display()
            ));
        }
    }
    let exists = std::fs::symlink_metadata(report).is_ok();
    if let Some(dir) = report.parent().filter(|dir| exists && holds_results(dir)) {
        return refuse(format!(
            "is the report of the run or evaluation in {}, which this would replace; give \
             another path",
            dir.display()
        ));
    }
    if exists && !holds_report(report) {
        return refuse(
            "exists and is not a uniattack report; refusing to replace it (give a new path, or \
             the path of an earlier report)"
                .to_string(),
        );
    }
    Ok(())
}

/// Whether `dir` is a training run's or an evaluation's directory (its
/// `report.json` belongs to it, not to a copy).
fn holds_results(dir: &std::path::Path) -> bool {
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    ["checkpoints", "scores", "metrics.jsonl", "report.csv"]
        .iter()
        .any(|name| dir.join(name).exists())
}

/// The largest file taken for an earlier report (a report is a few KiB).
const MAX_REPORT_BYTES: u64 = 16 << 20;

/// Whether `path` is a regular file holding a uniattack report (`report.json`
/// or a `--report` copy), which a new report may replace.
fn holds_report(path: &std::path::Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() > MAX_REPORT_BYTES {
        return false;
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|json| {
            ["protocol", "level", "score_polarity", "threshold_origin"]
                .iter()
                .all(|key| json.get(key).is_some())
        })
}

/// `path` made absolute, with its longest existing ancestor's links
/// resolved and the `..` of the rest (which does not exist, so holds no
/// links) taken lexically, so that two spellings of a place compare equal
/// even when the file itself does not exist yet.
pub(crate) fn resolved(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let Some((real, rest)) = absolute.ancestors().find_map(|ancestor| {
        let real = std::fs::canonicalize(ancestor).ok()?;
        Some((real, absolute.strip_prefix(ancestor).ok()?.to_path_buf()))
    }) else {
        return absolute;
    };
    let mut out = real;
    for component in rest.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Loss, gradient norm and throughput since the last logged step.
struct LogWindow {
    losses: f64,
    norms: f64,
    steps: u64,
    images: usize,
    started: Instant,
    /// The steps timed since the clock started (a resumed window holds
    /// steps of the interrupted run, whose times are gone).
    timed_steps: u64,
    phases: PhaseSeconds,
    /// Whether `phases` beyond the loader's are measured.
    profiled: bool,
}

impl LogWindow {
    fn new(profiled: bool) -> Self {
        Self {
            losses: 0.0,
            norms: 0.0,
            steps: 0,
            images: 0,
            started: Instant::now(),
            timed_steps: 0,
            phases: PhaseSeconds::default(),
            profiled,
        }
    }

    /// A window holding the steps a checkpoint had not logged yet; its
    /// throughput counts only what comes after.
    fn resumed(unlogged: UnloggedSteps, profiled: bool) -> Self {
        Self {
            losses: f64::from_bits(unlogged.loss_sum_bits),
            norms: f64::from_bits(unlogged.grad_norm_sum_bits),
            steps: unlogged.steps,
            ..Self::new(profiled)
        }
    }

    /// What a checkpoint keeps of this window.
    fn unlogged(&self) -> UnloggedSteps {
        UnloggedSteps {
            steps: self.steps,
            loss_sum_bits: self.losses.to_bits(),
            grad_norm_sum_bits: self.norms.to_bits(),
        }
    }

    /// Starts the throughput clock (and image count, and step times)
    /// afresh.
    fn restart_clock(&mut self) {
        self.images = 0;
        self.timed_steps = 0;
        self.phases = PhaseSeconds::default();
        self.started = Instant::now();
    }

    fn add(&mut self, loss: f64, norm: f64, images: usize, phases: &PhaseSeconds) {
        self.losses += loss;
        self.norms += norm;
        self.steps += 1;
        self.images += images;
        self.timed_steps += 1;
        self.phases.add(phases);
    }

    /// The record of the window, and a fresh window.
    fn record(&mut self, step: u64, epoch: u64, lr: f64) -> MetricsRecord {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let steps = self.steps.max(1) as f64;
        let per_step = self.phases.divided(self.timed_steps.max(1) as f64);
        let record = MetricsRecord::Train {
            step,
            epoch,
            loss: self.losses / steps,
            lr,
            grad_norm: self.norms / steps,
            images_per_second: self.images as f64 / seconds,
            data_wait_s: per_step.data,
            phases: self.profiled.then_some(per_step),
        };
        *self = Self::new(self.profiled);
        record
    }
}
