//! Fused CPU kernels with their backward passes; [`linear`] is public.

mod activation;
mod expert_linear;
mod fast_math;

pub(crate) use expert_linear::expert_linear;
pub use expert_linear::linear;
