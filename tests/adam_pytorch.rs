//! `uniattack::Adam` against `torch.optim.Adam` / `torch.optim.AdamW`:
//! four steps of five configurations (the paper's lr 1e-6 on CLIP-sized
//! weights, plain Adam, coupled and decoupled weight decay, and beta1 below
//! 0.5, where PyTorch's lerp takes its other form), parameters and
//! both moments after every step. Fixture: fused-ops' (whose Adam kernel it
//! also checks), `crates/fused-ops/tests/fixtures/adam_steps.*`, written by
//! `scripts/fused_ops/gen_adam_fixture.py`. The comparison is
//! exact: every value equal to the bit.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use uniattack::adam::{exp_avg_name, exp_avg_sq_name, Adam, AdamConfig, WeightDecay};

fn fixture() -> Result<(HashMap<String, Tensor>, serde_json::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/fused-ops/tests/fixtures");
    let tensors = candle_core::safetensors::load(dir.join("adam_steps.safetensors"), &Device::Cpu)?;
    let meta = serde_json::from_str(&std::fs::read_to_string(dir.join("adam_steps.json"))?)?;
    Ok((tensors, meta))
}

/// Distance in units in the last place between two finite f32.
fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        if bits < 0 {
            i32::MIN - bits
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

#[test]
fn matches_torch_optim_step_by_step() -> Result<()> {
    check_against_torch(&Device::Cpu)
}

/// On a GPU with fused-ops' CUDA kernels on, a step updates its parameters
/// in one launch per [`fused_ops::ADAM_GROUP`] of them
/// (`fused_ops::adam_update_many`), counted: bit-equal to `torch.optim`
/// too (the composite of tensor operations, with the kernels off, is not:
/// it rounds in other places).
#[cfg(feature = "cuda")]
#[test]
fn on_a_gpu_the_fused_step_matches_torch_optim() -> Result<()> {
    fused_ops::set_fused_cuda_kernels(true);
    check_against_torch(&Device::new_cuda(0)?)
}

/// Every case of the fixture on `device`, every value compared to the bit.
fn check_against_torch(device: &Device) -> Result<()> {
    let (tensors, meta) = fixture()?;
    let steps = meta["steps"].as_u64().context("steps")? as usize;
    let names: Vec<String> = meta["shapes"]
        .as_object()
        .context("shapes")?
        .keys()
        .cloned()
        .collect();
    let mut worst = 0;
    let mut compared = 0usize;
    for (case, cfg) in meta["cases"].as_object().context("cases")? {
        let config = AdamConfig {
            lr: cfg["lr"].as_f64().context("lr")?,
            beta1: cfg["beta1"].as_f64().context("beta1")?,
            beta2: cfg["beta2"].as_f64().context("beta2")?,
            eps: cfg["eps"].as_f64().context("eps")?,
            weight_decay: cfg["weight_decay"].as_f64().context("wd")?,
            decay: match cfg["decay"].as_str() {
                Some("decoupled") => WeightDecay::Decoupled,
                _ => WeightDecay::Coupled,
            },
        };
        let vars: Vec<(String, Var)> = names
            .iter()
            .map(|n| {
                Ok((
                    n.clone(),
                    Var::from_tensor(&tensors[&format!("{case}/init/{n}")].to_device(device)?)?,
                ))
            })
            .collect::<Result<_>>()?;
        let mut adam = Adam::new(vars.clone(), config)?;
        for step in 0..steps {
            let grads: Vec<Option<Tensor>> = names
                .iter()
                .map(|n| {
                    tensors[&format!("{case}/grad{step}/{n}")]
                        .to_device(device)
                        .map(Some)
                })
                .collect::<candle_core::Result<_>>()?;
            #[cfg(feature = "cuda")]
            let launches = fused_ops::cuda_kernel_launches();
            adam.step(&grads, config.lr)?;
            #[cfg(feature = "cuda")]
            if device.is_cuda() {
                let launched = fused_ops::cuda_kernel_launches() - launches;
                let expected = names.len().div_ceil(fused_ops::ADAM_GROUP) as u64;
                assert_eq!(
                    launched,
                    expected,
                    "{case} step {step}: {launched} launches for {} parameters",
                    names.len()
                );
            }
            let state: HashMap<String, Tensor> = adam.state_tensors()?.into_iter().collect();
            for (n, var) in &vars {
                for (what, ours) in [
                    ("param", var.as_tensor().clone()),
                    ("exp_avg", state[&exp_avg_name(n)].clone()),
                    ("exp_avg_sq", state[&exp_avg_sq_name(n)].clone()),
                ] {
                    let theirs = tensors[&format!("{case}/{what}{step}/{n}")]
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let ours = ours.flatten_all()?.to_vec1::<f32>()?;
                    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                        let d = ulps(*a, *b);
                        worst = worst.max(d);
                        assert!(
                            d == 0,
                            "{case} step {step} {what} {n}[{i}]: ours {a:e}, torch {b:e} ({d} ulp)"
                        );
                    }
                    compared += ours.len();
                }
            }
        }
    }
    assert!(compared > 10_000, "compared only {compared} values");
    assert_eq!(worst, 0);
    Ok(())
}
