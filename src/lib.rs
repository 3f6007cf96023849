//! `uniattack`: unified physical-digital face attack detection with
//! La-SoftMoE CLIP (Zou et al., arXiv 2408.12793), on candle.
//!
//! This root package composes the workspace crates and re-exports them:
//! [`softmoe`] (Soft MoE and La-SoftMoE layers), [`clip_moe`] (CLIP with MoE
//! branches), [`fas_data`] (datasets and loading) and [`fas_metrics`] (the
//! field's metrics). Training and evaluation will live here; until then the
//! examples and tests exercise the layers through these re-exports.

pub use clip_moe;
pub use fas_data;
pub use fas_metrics;
pub use softmoe;
