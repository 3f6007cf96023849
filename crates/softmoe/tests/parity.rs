//! Parity with an independent PyTorch implementation written from the papers'
//! equations: forward output, dispatch and combine weights, and the gradients
//! of `sum(output * loss_weight)` with respect to the input and every
//! parameter. Fixtures come from `scripts/softmoe/gen_fixtures.py` (float64
//! einsum reference, see its docstring).
//!
//! Built with `--features cuda`, every case also runs on GPU 0, where the
//! layer takes candle's ops instead of this crate's CPU kernels.

mod common;

use anyhow::Result;
use candle_core::DType;
use common::{check, devices, CASES};

#[test]
fn f32_matches_pytorch_to_1e5() -> Result<()> {
    for device in devices()? {
        for case in CASES {
            check(case, DType::F32, 1e-5, &device)?;
        }
    }
    Ok(())
}

/// In F64 the only differences left are summation order: a far tighter check
/// that would catch, e.g., a wrong epsilon or a missing constant.
#[test]
fn f64_matches_pytorch_to_1e10() -> Result<()> {
    for device in devices()? {
        for case in CASES {
            check(case, DType::F64, 1e-10, &device)?;
        }
    }
    Ok(())
}
