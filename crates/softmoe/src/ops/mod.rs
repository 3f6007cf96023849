//! Fused CPU kernels with their backward passes. Public: [`linear`] (a dense
//! layer on the experts' kernel), [`matmul`] (differentiable batched matmul)
//! and the [`gemm`] helpers they are built on, for other crates' kernels.

mod activation;
mod expert_linear;
mod fast_math;
pub mod gemm;
mod matmul;

pub(crate) use expert_linear::expert_linear;
pub use expert_linear::linear;
pub use matmul::matmul;
