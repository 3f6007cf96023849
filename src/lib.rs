//! `uniattack`: unified physical-digital face attack detection with
//! La-SoftMoE CLIP (Zou et al., arXiv 2408.12793), on candle.
//!
//! The application layer over the workspace's libraries ([`softmoe`],
//! [`clip_moe`], [`fas_data`], [`fas_metrics`]), as burn-train sits over
//! burn's modules: the libraries never learn about training.
//!
//! * [`ExperimentConfig`]: a run as data (model, MoE, prompts, data, loader,
//!   optimiser, schedule, evaluation, seed), saved with every run.
//! * [`labels`]: the one mapping between the crates' label types, with the
//!   score polarity stated once (higher = attack).
//! * [`Detector`]: transform + model + prompt head -> attack probabilities;
//!   the same code in training's evaluation, `eval_uniattack` and `detect`.
//! * [`evaluator`]: splits -> scores -> `fas-metrics` reports, score files, plots.
//! * [`Trainer`]: the loop, [`Adam`] with saved state, schedules,
//!   checkpoints and exact resume; [`demo`] the offline demo.
//! * [`studies`]: the paper's MoE and prompt ablations as runs and a table.
//! * [`cli`]: the command lines of the examples `train_uniattack`,
//!   `eval_uniattack` and `detect`.

pub mod adam;
pub mod backbone;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod demo;
pub mod detector;
pub mod distributed;
mod error;
pub mod evaluator;
pub mod experiment;
pub mod gradient_exchange;
pub mod init;
pub mod labels;
pub mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod progress;
pub mod run_dir;
pub mod runtime;
pub mod schedule;
pub mod studies;
pub mod tensor_data;
pub mod trainer;
pub mod watchdog;

pub use adam::{Adam, AdamConfig, WeightDecay};
pub use detector::Detector;
pub use error::{Error, Result};
pub use experiment::ExperimentConfig;
pub use trainer::{TrainOptions, Trainer};

pub use clip_moe;
pub use fas_data;
pub use fas_metrics;
pub use softmoe;
