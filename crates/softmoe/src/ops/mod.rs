//! Fused CPU kernels with their backward passes.

mod activation;
mod expert_linear;
mod fast_math;

pub(crate) use expert_linear::expert_linear;
