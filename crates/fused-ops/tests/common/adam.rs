//! The fused Adam kernel against `torch.optim`: four steps of five
//! configurations (the paper's lr 1e-6, plain Adam, coupled and decoupled
//! weight decay, beta1 below 0.5), gradients on odd steps given as views
//! at offsets into one buffer, from the workspace's fixture
//! (`tests/fixtures/adam_steps.*` at the repository's root, written by
//! `scripts/uniattack/gen_adam_fixture.py` with `foreach=False`), every
//! parameter and moment after every step equal to the bit.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use fused_ops::{adam_update, adam_update_fits, AdamScalars};

/// The scalars of step `t` as PyTorch derives them: in double precision
/// (Python floats), rounded to F32 where its kernels take them.
fn scalars(cfg: &serde_json::Value, t: u64) -> anyhow::Result<AdamScalars> {
    let get = |key: &str| cfg[key].as_f64().with_context(|| key.to_string());
    let (lr, beta1, beta2, eps, wd) = (
        get("lr")?,
        get("beta1")?,
        get("beta2")?,
        get("eps")?,
        get("weight_decay")?,
    );
    let decoupled = wd != 0.0 && cfg["decay"] == "decoupled";
    let coupled = wd != 0.0 && !decoupled;
    let t = t as f64;
    Ok(AdamScalars {
        decay_factor: if decoupled { 1.0 - lr * wd } else { 1.0 } as f32,
        coupled_decay: if coupled { wd } else { 0.0 } as f32,
        lerp_weight: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        bias_correction2_sqrt: (1.0 - beta2.powf(t)).sqrt() as f32,
        eps: eps as f32,
        neg_step_size: -(lr / (1.0 - beta1.powf(t))) as f32,
        decoupled,
        coupled,
    })
}

/// `tensors` copied one after another into one buffer, behind a header of
/// 3 values, and handed back as views into it (contiguous, at offsets).
fn views_into_one_buffer(tensors: &[Tensor]) -> anyhow::Result<Vec<Tensor>> {
    const HEADER: usize = 3;
    let first = tensors.first().context("no tensors")?;
    let mut parts = vec![Tensor::full(f32::NAN, HEADER, first.device())?];
    parts.extend(
        tensors
            .iter()
            .map(|t| t.flatten_all())
            .collect::<Result<Vec<_>, _>>()?,
    );
    let buffer = Tensor::cat(&parts, 0)?;
    let mut offset = HEADER;
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let view = buffer
            .narrow(0, offset, t.elem_count())?
            .reshape(t.shape())?;
        anyhow::ensure!(view.is_contiguous() && offset > 0);
        views.push(view);
        offset += t.elem_count();
    }
    Ok(views)
}

/// Runs the fixture's steps through the kernel on `device` (the CUDA
/// switch on) and compares every value; then checks that the switch off
/// leaves the kernel out.
pub fn adam_matches_torch(device: &Device) -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("adam_steps.safetensors"), device)?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adam_steps.json"))?)?;
    let steps = meta["steps"].as_u64().context("steps")?;
    let names: Vec<&String> = meta["shapes"]
        .as_object()
        .context("shapes")?
        .keys()
        .collect();
    fused_ops::set_fused_cuda_kernels(true);
    let mut compared = 0;
    for (case, cfg) in meta["cases"].as_object().context("cases")? {
        // Copies: the kernel writes in place.
        let state: Vec<[Tensor; 3]> = names
            .iter()
            .map(|n| {
                let p = tensors[&format!("{case}/init/{n}")].copy()?;
                Ok([p.copy()?, p.zeros_like()?, p.zeros_like()?])
            })
            .collect::<anyhow::Result<_>>()?;
        for step in 0..steps {
            let s = scalars(cfg, step + 1)?;
            let grads: Vec<Tensor> = names
                .iter()
                .map(|n| tensors[&format!("{case}/grad{step}/{n}")].clone())
                .collect();
            // Odd steps hand each gradient as a view at an offset into one
            // buffer, as uniattack's data-parallel exchange does.
            let grads = if step % 2 == 1 {
                views_into_one_buffer(&grads)?
            } else {
                grads
            };
            for ((n, [p, m, v]), g) in names.iter().zip(&state).zip(&grads) {
                anyhow::ensure!(
                    adam_update_fits(p, g, m, v),
                    "{case}: the kernel refused {n}"
                );
                adam_update(p, g, m, v, &s)?;
                for (what, ours) in [("param", p), ("exp_avg", m), ("exp_avg_sq", v)] {
                    let theirs = tensors[&format!("{case}/{what}{step}/{n}")]
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let ours = ours.flatten_all()?.to_vec1::<f32>()?;
                    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                        anyhow::ensure!(
                            a.to_bits() == b.to_bits(),
                            "{case} step {step} {what} {n}[{i}]: kernel {a:e}, torch {b:e}"
                        );
                    }
                    compared += ours.len();
                }
            }
        }
    }
    anyhow::ensure!(compared > 10_000, "compared only {compared} values");
    println!("fused Adam: {compared} values equal to torch.optim's to the bit");

    // Off: refused, so a caller composes the step itself.
    let p = Tensor::ones(4, DType::F32, device)?;
    let (g, m, v) = (p.copy()?, p.zeros_like()?, p.zeros_like()?);
    fused_ops::set_fused_cuda_kernels(false);
    anyhow::ensure!(
        !adam_update_fits(&p, &g, &m, &v),
        "taken with the switch off"
    );
    fused_ops::set_fused_cuda_kernels(true);
    // Shared buffers (m passed as v) would lock one buffer twice.
    anyhow::ensure!(
        !adam_update_fits(&p, &g, &m, &m),
        "taken with m and v shared"
    );
    fused_ops::set_fused_cuda_kernels(false);
    Ok(())
}
