//! Soft Mixture-of-Experts layers for [candle](https://github.com/huggingface/candle).
//!
//! * **Soft MoE** (Puigcerver et al., "From Sparse to Soft Mixtures of
//!   Experts", arXiv 2308.00951) with the router of the reference
//!   implementation (google-research/vmoe `SoftRouter`): every slot is a
//!   softmax-weighted average of all tokens (eq. 2), every expert processes its
//!   slots, and every output token a softmax-weighted average of all slot
//!   outputs (eq. 4). No token dropping, fully differentiable.
//! * **La-SoftMoE** (Zou et al., "La-SoftMoE CLIP for Unified Physical-Digital
//!   Face Attack Detection", arXiv 2408.12793): the combine softmax replaced by
//!   linear attention over the routing logits and instance norm (eq. 7,
//!   Algorithm 2). The paper's open choices are [`LinearAttentionConfig`]
//!   fields; `docs/la-softmoe.md` in the repository explains the defaults.
//!
//! Every operation has a backward pass (candle's fused softmax/layer-norm
//! kernels, which record no gradient, are not used). On the CPU the layer
//! runs on the fused kernels of the `fused-ops` crate (experts, routing
//! softmaxes, norms), elsewhere on candle's composites;
//! [`set_fused_cpu_kernels`] switches between them.
//!
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod combine;
mod config;
mod error;
mod experts;
mod router;
mod soft_moe;

pub use config::{
    Activation, Combine, CombineOutput, ExpertInit, FeatureMap, InstanceNormAxis,
    LinearAttentionConfig, QkvProjection, SoftMoeConfig, SoftMoeOptions,
};
pub use error::{Error, Result};
pub use experts::Experts;
/// The process-wide switches between the fused kernels and candle's
/// composites, on the CPU (on by default) and on CUDA (off by default, see
/// `fused_ops::set_fused_cuda_kernels`), re-exported from `fused-ops`.
pub use fused_ops::{
    fused_cpu_kernels, fused_cuda_kernels, set_fused_cpu_kernels, set_fused_cuda_kernels,
};
pub use soft_moe::{SoftMoe, SoftMoeOutput};

/// Dtype of trainable parameters: F64 when the builder asks for it (gradient
/// checks), else F32 master copies even under a half-precision builder, since
/// small optimizer steps round away in bf16/f16.
pub(crate) fn param_dtype(vb: &candle_nn::VarBuilder) -> candle_core::DType {
    match vb.dtype() {
        candle_core::DType::F64 => candle_core::DType::F64,
        _ => candle_core::DType::F32,
    }
}
