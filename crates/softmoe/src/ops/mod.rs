//! Fused CPU kernels with their backward passes.

mod bias_activation;
mod fast_math;

pub(crate) use bias_activation::bias_activation;
