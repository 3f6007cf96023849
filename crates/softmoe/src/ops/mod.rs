//! Fused CPU kernels with their backward passes. Public: [`linear`] (a dense
//! layer on the experts' kernel), [`matmul`] (differentiable batched matmul),
//! and for other crates' kernels the [`gemm`] helpers they are built on and
//! the vectorised row softmax of [`rows`].

mod activation;
mod dispatch;
mod expert_linear;
mod fast_math;
pub mod gemm;
mod matmul;
mod routing;
pub mod rows;

pub use dispatch::{fused_cpu_kernels, set_fused_cpu_kernels};
pub use expert_linear::linear;
pub(crate) use expert_linear::{expert_linear_ordered, RowOrder};
pub use matmul::matmul;
pub(crate) use routing::{elu_plus_one, l2_normalize};
pub use routing::{softmax, standardize};
