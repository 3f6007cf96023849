//! Fused CPU kernels for transformer and Soft MoE layers on
//! [candle](https://github.com/huggingface/candle), each a candle custom op
//! with its own backward pass, each beside the differentiable candle
//! composite that other devices and dtypes run (and that the unit tests
//! compare it with).
//!
//! - [`linear`] and [`ExpertMlp`]: matmul, bias and activation in one op, for
//!   a dense layer or for all experts of a MoE at once;
//! - [`matmul`]: a batched product on strided operands with a work split that
//!   suits small batches;
//! - [`softmax`], [`standardize`], [`l2_normalize`], [`elu_plus_one`]: the
//!   routing maths of Soft MoE and La-SoftMoE, one node each;
//! - [`layer_norm`] and [`attention`] (all heads in one node): the rest of a
//!   ViT block.
//!
//! Why fuse at all: candle's backward allocates a zeroed buffer and adds
//! into it for every graph node it visits, and its CPU batched matmul
//! threads each small product separately; a block written from primitive
//! ops spends much of its time there (`docs/benchmarks.md` in the
//! repository has the measurements). candle's own fused softmax and
//! LayerNorm record no gradient, so they cannot train.
//!
//! [`adam_update_many`], [`sums_of_squares`] and [`copy_scaled_into`] serve
//! the end of a training step rather than a layer: an optimizer step (one
//! kernel for up to 64 parameters instead of a dozen tensor operations per
//! parameter), the parts of
//! a global gradient norm (two kernels for all gradients instead of three
//! per gradient; one pass per gradient on the CPU) and a data-parallel
//! rank's gradients written into its exchange buffer (one kernel instead of
//! two per gradient). The first and last are for GPUs only (a CPU optimizer
//! updates host memory directly; the CPU copies with the composite).
//!
//! [`set_fused_cpu_kernels`]`(false)` makes the CPU run the composites too:
//! a machine without a GPU can test the GPU's code path that way.
//!
//! With `--features cuda` (nvcc at build time, `CUDA_COMPUTE_CAP`),
//! [`softmax`] and [`standardize`] along any axis, [`layer_norm`] and
//! [`l2_normalize`] over the last axis, [`elu_plus_one`], [`attention`]
//! (memory-efficient, all heads in one launch) and the bias + activation
//! of [`linear`] and [`ExpertMlp`] also have CUDA kernels with backward
//! passes, off by default until they have been checked on a GPU:
//! [`set_fused_cuda_kernels`] or `FUSED_OPS_CUDA=1` turns them on. With
//! `--features cuda-emulation` (a C++ compiler, no CUDA toolkit) the same
//! kernels run on the CPU, thread by thread, for tests: the switch then
//! sends F32 and BF16 CPU tensors through them.
//!
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod activation;
mod adam;
mod attention;
mod copy_scaled;
#[cfg(feature = "cuda")]
mod cuda_device;
#[cfg(cuda_kernels)]
mod cuda_emulation;
#[cfg(cuda_kernels)]
mod cuda_ops;
mod dispatch;
mod expert_linear;
mod expert_mlp;
mod fast_math;
mod gemm;
#[cfg(cuda_kernels)]
mod held_buffers;
#[cfg(cuda_kernels)]
mod kernel_launch;
mod layer_norm;
mod matmul;
mod routing;
mod rows;
mod sum_squares;

pub use activation::Activation;
pub use adam::{
    adam_update, adam_update_fits, adam_update_many, adam_update_many_fits, AdamScalars,
    AdamTensors, ADAM_GROUP,
};
pub use attention::attention;
pub use copy_scaled::copy_scaled_into;
#[cfg(feature = "cuda")]
pub use cuda_device::cuda_kernel_launches;
#[cfg(feature = "cuda-emulation")]
pub use cuda_emulation::cuda_emulation_launches;
pub use dispatch::{
    fused_cpu_kernels, fused_cuda_kernels, set_fused_cpu_kernels, set_fused_cuda_kernels,
};
pub use expert_linear::linear;
pub use expert_mlp::ExpertMlp;
pub use layer_norm::layer_norm;
pub use matmul::matmul;
pub use routing::{elu_plus_one, l2_normalize, softmax, standardize};
pub use sum_squares::sums_of_squares;
