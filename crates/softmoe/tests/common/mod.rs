//! The parity check shared by `parity.rs` (fused CPU kernels, and GPU 0 under
//! `--features cuda`) and `composite_parity.rs` (candle's composites on the
//! CPU, the code path a GPU runs). Fixtures come from
//! `scripts/softmoe/gen_fixtures.py` (float64 einsum reference, see its
//! docstring).

#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use softmoe::{SoftMoe, SoftMoeConfig};

pub fn fixture(name: &str) -> Result<(SoftMoeConfig, HashMap<String, Tensor>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let json = std::fs::read_to_string(dir.join(format!("{name}.json")))?;
    let cfg: SoftMoeConfig = serde_json::from_str(&json).context("fixture config")?;
    let tensors =
        candle_core::safetensors::load(dir.join(format!("{name}.safetensors")), &Device::Cpu)?;
    Ok((cfg, tensors))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

/// Builds the layer in `dtype`, loads the fixture's parameters into its
/// variables, runs forward + backward and compares everything within `tol`
/// (absolute, relative to the tensor's scale for large values).
pub fn check(name: &str, dtype: DType, tol: f64, device: &Device) -> Result<()> {
    let (cfg, t) = fixture(name)?;
    let t: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(device)?)))
        .collect::<Result<_>>()?;
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let moe = SoftMoe::new(&cfg, vb)?;

    let param_names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    let expected_params = t
        .keys()
        .filter(|k| {
            !k.starts_with("grad.")
                && !matches!(
                    k.as_str(),
                    "input" | "loss_weight" | "output" | "dispatch" | "combine"
                )
        })
        .count();
    assert_eq!(
        param_names.len(),
        expected_params,
        "{name}: parameters {param_names:?}"
    );
    for pname in &param_names {
        let value = t
            .get(pname)
            .with_context(|| format!("{name}: fixture lacks {pname}"))?;
        varmap.set_one(pname, value.to_dtype(dtype)?)?;
    }

    let input = Var::from_tensor(&t["input"].to_dtype(dtype)?)?;
    let out = moe.forward_with_weights(input.as_tensor())?;
    let cmp = |what: &str, got: &Tensor, want: &Tensor| -> Result<()> {
        let largest = want
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        if largest < tol {
            // An absolute tolerance above the whole value cannot tell it
            // from zero: only the known cases, whose F64 runs check them.
            assert!(
                BELOW_F32_RESOLUTION.contains(&(name, what)),
                "{name} {dtype:?}: {what} is at most {largest:e}, below the tolerance {tol}; \
                 this comparison cannot fail (see BELOW_F32_RESOLUTION)"
            );
            eprintln!(
                "{name} {dtype:?}: {what} (at most {largest:e}) is below this precision's \
                 resolution; compared to {tol} absolute here, to its digits in F64"
            );
        }
        let scale = largest.max(1.0);
        let diff = max_abs_diff(got, want)?;
        assert!(
            diff <= tol * scale,
            "{name} {dtype:?} {device:?}: {what} differs by {diff} (tolerance {tol} x {scale})"
        );
        Ok(())
    };
    cmp("output", &out.output, &t["output"])?;
    cmp("dispatch", &out.dispatch_weights, &t["dispatch"])?;
    cmp("combine", &out.combine_weights, &t["combine"])?;

    let loss = (&out.output * t["loss_weight"].to_dtype(dtype)?)?.sum_all()?;
    let grads = loss.backward()?;
    let grad_input = grads.get(&input).context("no gradient for the input")?;
    cmp("grad.input", grad_input, &t["grad.input"])?;
    let vars = varmap.data().lock().unwrap();
    for pname in &param_names {
        let g = grads
            .get(vars[pname].as_tensor())
            .with_context(|| format!("{name}: no gradient for {pname}"))?;
        cmp(&format!("grad.{pname}"), g, &t[&format!("grad.{pname}")])?;
    }
    Ok(())
}

/// Gradients that come out of a cancellation of terms of order one: a bias
/// before `la_soft_moe_projected`'s per-token instance norm shifts every
/// slot alike, which the norm removes but for its epsilon, so its gradient
/// is of the epsilon's order (1.4e-6 in the fixture). F32 computes it to
/// about 1e-6 absolute, i.e. not at all; the F64 runs check it (1e-10
/// absolute). Any other tensor under the tolerance fails the check, so a
/// new one is looked at rather than passed unseen.
const BELOW_F32_RESOLUTION: &[(&str, &str)] =
    &[("la_soft_moe_projected", "grad.combine.v_proj.bias")];

pub const CASES: [&str; 6] = [
    "soft_moe_normalized",
    "soft_moe_raw",
    "la_soft_moe_default",
    "la_soft_moe_raw",
    "la_soft_moe_projected",
    "la_soft_moe_softmax_unnormalized",
];

/// The CPU, and GPU 0 when the tests are built with `--features cuda`.
pub fn devices() -> Result<Vec<Device>> {
    let mut devices = vec![Device::Cpu];
    if cfg!(feature = "cuda") {
        devices.push(Device::new_cuda(0).context("--features cuda needs GPU 0")?);
    }
    Ok(devices)
}
