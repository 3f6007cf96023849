//! `uniattack`: training and evaluation of La-SoftMoE CLIP face attack detectors.
//!
//! This root package composes the workspace crates ([`softmoe`], [`clip_moe`],
//! [`fas_data`], [`fas_metrics`]). The training and evaluation pipeline is not
//! written yet; see the repository README for what each crate provides today.

pub use clip_moe;
pub use fas_data;
pub use fas_metrics;
pub use softmoe;
