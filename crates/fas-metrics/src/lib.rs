#![doc = include_str!("../README.md")]
//!
//! ## Modules and the reference implementations they match
//!
//! - [`label`]: [`Label`], [`Class`], [`Polarity`] (decision `score >= threshold`).
//! - [`score_set`]: [`ScoreSet`], validated and sorted once.
//! - [`confusion`]: rates at a threshold, [`metrics_at_threshold`] (CFB
//!   `get_Metrics_at_Threshold`, FA3 `get_Metrics_at_thr`, bob `apcer_bpcer`).
//! - [`roc`]: [`RocCurve`] (scikit-learn `roc_curve`), [`auc()`] (`roc_auc_score`),
//!   TPR@FPR (`np.interp`, SSDG/FLIP floor).
//! - [`eer`](mod@eer): [`eer()`] by [`EerMethod`] (organiser grid; ROC index
//!   as SAFAS, FA3/CFB and CDCN compute it).
//! - [`threshold`]: [`select_threshold`] by [`ThresholdRule`], [`bpcer_at_apcer`].
//! - [`report`]: [`evaluate_protocol`] and [`ProtocolReport`] (CFB `evaluator.py`).
//! - [`video`]: [`mean_score_per_video`] (SSDG/FLIP).
//! - [`score_file`]: [`read_score_file`], [`parse_score_file`].
//! - [`cli`]: the `evaluate_scores` command line, [`cli::run`].
#![cfg_attr(feature = "plot", doc = "- [`plot`]: ROC, DET and histogram PNGs.")]

pub mod cli;
pub mod confusion;
pub mod eer;
pub mod error;
mod grid;
pub mod label;
#[cfg(feature = "plot")]
pub mod plot;
pub mod report;
pub mod roc;
pub mod score_file;
pub mod score_set;
pub mod serde_threshold;
pub mod threshold;
mod validate;
pub mod video;

pub use confusion::{
    metrics_at_threshold, ApcerPooling, AttackTypeRate, ConfusionCounts, ThresholdMetrics,
};
pub use eer::{eer, roc_index_eer, Eer, EerMethod, RocIndexDistance};
pub use error::{MetricsError, Result};
pub use label::{Class, Label, Polarity, ScoredSample};
pub use report::{evaluate_protocol, ProtocolConfig, ProtocolReport, ThresholdSource};
pub use roc::{auc, IntermediatePoints, RocCurve};
pub use score_file::{parse_score_file, read_score_file};
pub use score_set::{AttackTypeScores, ScoreSet};
pub use threshold::{bpcer_at_apcer, select_threshold, OperatingPoint, ThresholdRule};
pub use video::mean_score_per_video;
