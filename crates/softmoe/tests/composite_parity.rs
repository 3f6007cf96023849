//! The PyTorch parity cases of `parity.rs` with this crate's fused CPU
//! kernels switched off (`softmoe::set_fused_cpu_kernels(false)`), so the CPU
//! runs candle's differentiable composites: the code path every GPU and
//! every dtype other than F32/F64 takes. It catches, on a machine without a
//! GPU, what a GPU run would: candle's `gelu_erf` backward, whose rounded
//! constant puts F64 gradients off from the seventh digit, failed this check
//! before the composite GELU was rebuilt from `erf` (found on an H100).
//!
//! A test binary of its own, since the switch is process-wide.

mod common;

use anyhow::Result;
use candle_core::{DType, Device};
use common::{check, CASES};

#[test]
fn composites_match_pytorch_f32_to_1e5() -> Result<()> {
    softmoe::set_fused_cpu_kernels(false);
    for case in CASES {
        check(case, DType::F32, 1e-5, &Device::Cpu)?;
    }
    Ok(())
}

#[test]
fn composites_match_pytorch_f64_to_1e10() -> Result<()> {
    softmoe::set_fused_cpu_kernels(false);
    assert!(!softmoe::fused_cpu_kernels());
    for case in CASES {
        check(case, DType::F64, 1e-10, &Device::Cpu)?;
    }
    Ok(())
}
