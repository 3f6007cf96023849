//! The fused Adam kernel against `torch.optim`: four steps of five
//! configurations (the paper's lr 1e-6, plain Adam, coupled and decoupled
//! weight decay, beta1 below 0.5), gradients on odd steps given as views
//! at offsets into one buffer, from this crate's fixture
//! (`tests/fixtures/adam_steps.*`, written by
//! `scripts/fused_ops/gen_adam_fixture.py` with `foreach=False`), every
//! parameter and moment after every step equal to the bit; the fixture's
//! parameters one launch at a time and all in one.
//!
//! Then launches of many parameters, more than one group's, of sizes
//! around the kernel's chunk, against the update computed on the host in
//! PyTorch's order and roundings (`host_step`, itself checked against the
//! fixture first), and the lists the kernel refuses.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use fused_ops::{
    adam_update, adam_update_fits, adam_update_many, adam_update_many_fits, AdamScalars,
    AdamTensors, ADAM_GROUP,
};

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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
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
            // Host copies for `host_step`, before the kernel writes.
            let mut host: Vec<[Vec<f32>; 4]> = Vec::with_capacity(names.len());
            for ([p, m, v], g) in state.iter().zip(&grads) {
                host.push([p, m, v, g].map(|t| {
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .unwrap_or_default()
                }));
            }
            let items: Vec<AdamTensors> = state
                .iter()
                .zip(&grads)
                .map(|([param, m, v], grad)| AdamTensors { param, grad, m, v })
                .collect();
            // Steps 0 and 2: one launch for every parameter; 1 and 3: one
            // launch each.
            let before = super::kernel_launches(device);
            if step % 2 == 0 {
                anyhow::ensure!(adam_update_many_fits(&items), "{case}: the kernel refused");
                adam_update_many(&items, &s)?;
            } else {
                for (n, i) in names.iter().zip(&items) {
                    anyhow::ensure!(
                        adam_update_fits(i.param, i.grad, i.m, i.v),
                        "{case}: the kernel refused {n}"
                    );
                    adam_update(i.param, i.grad, i.m, i.v, &s)?;
                }
            }
            if let (Some(before), Some(after)) = (before, super::kernel_launches(device)) {
                let launches = if step % 2 == 0 { 1 } else { names.len() as u64 };
                anyhow::ensure!(
                    after - before == launches,
                    "{case}: {} launches",
                    after - before
                );
            }
            for ((n, [p, m, v]), [hp, hm, hv, hg]) in names.iter().zip(&state).zip(&mut host) {
                for i in 0..hp.len() {
                    host_step(&mut hp[i], &mut hm[i], &mut hv[i], hg[i], &s);
                }
                for (what, ours, on_host) in [
                    ("param", p, &*hp),
                    ("exp_avg", m, &*hm),
                    ("exp_avg_sq", v, &*hv),
                ] {
                    let theirs = tensors[&format!("{case}/{what}{step}/{n}")]
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let ours = ours.flatten_all()?.to_vec1::<f32>()?;
                    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                        anyhow::ensure!(
                            a.to_bits() == b.to_bits(),
                            "{case} step {step} {what} {n}[{i}]: kernel {a:e}, torch {b:e}"
                        );
                        let h = on_host[i];
                        anyhow::ensure!(
                            h.to_bits() == b.to_bits(),
                            "{case} step {step} {what} {n}[{i}]: host {h:e}, torch {b:e}"
                        );
                    }
                    compared += ours.len();
                }
            }
        }
    }
    anyhow::ensure!(compared > 10_000, "compared only {compared} values");
    println!("fused Adam: {compared} values equal to torch.optim's to the bit");
    many_parameters_match_the_host(device)?;
    refusals(device)?;

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

/// PyTorch's single-tensor Adam step of one element, in its order and
/// roundings, on the host (`mul_add` where its CPU kernels fuse).
fn host_step(p: &mut f32, m: &mut f32, v: &mut f32, g: f32, s: &AdamScalars) {
    let mut pi = *p;
    if s.decoupled {
        pi *= s.decay_factor;
    }
    let mut gi = g;
    if s.coupled {
        gi = pi.mul_add(s.coupled_decay, gi);
    }
    let diff = gi - *m;
    let mi = if s.lerp_weight.abs() < 0.5 {
        s.lerp_weight.mul_add(diff, *m)
    } else {
        (s.lerp_weight - 1.0).mul_add(diff, gi)
    };
    let vi = (s.one_minus_beta2 * gi).mul_add(gi, *v * s.beta2);
    let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
    *p = pi + (s.neg_step_size * mi) / denom;
    *m = mi;
    *v = vi;
}

/// Values of a fixed pseudo-random sequence in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// 150 parameters (three launches of at most [`ADAM_GROUP`]) of sizes
/// from empty to past two chunks of 16,384, two steps of two
/// configurations (AdamW with beta1 below 0.5, Adam with coupled decay),
/// each gradient in a buffer of its own on the first step and all views
/// into one on the second; every value against `host_step`. In the second
/// configuration parameters and moments are views at an offset into
/// buffers with elements on both sides, which must keep their values.
fn many_parameters_match_the_host(device: &Device) -> anyhow::Result<()> {
    const COUNT: usize = 150;
    let sizes: Vec<usize> = (0..COUNT)
        .map(|i| match i {
            0 => 0,
            7 => 16_384,
            70 => 16_385,
            140 => 40_000,
            _ => 1 + (i * 37) % 300,
        })
        .collect();
    let configs = [
        AdamScalars {
            decay_factor: 0.999,
            coupled_decay: 0.0,
            lerp_weight: 0.7,
            beta2: 0.99,
            one_minus_beta2: 0.01,
            bias_correction2_sqrt: 0.1,
            eps: 1e-8,
            neg_step_size: -3.3e-3,
            decoupled: true,
            coupled: false,
        },
        AdamScalars {
            decay_factor: 1.0,
            coupled_decay: 0.05,
            lerp_weight: 0.1,
            beta2: 0.999,
            one_minus_beta2: 1e-3,
            bias_correction2_sqrt: 0.044_710_17,
            eps: 1e-6,
            neg_step_size: -5.26e-6,
            decoupled: false,
            coupled: true,
        },
    ];
    fused_ops::set_fused_cuda_kernels(true);
    for (c, s) in configs.iter().enumerate() {
        let mut host: Vec<[Vec<f32>; 3]> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let seed = (c * COUNT + i) as u64;
                [
                    values(n, seed, 0.05),
                    values(n, seed + 1_000, 1e-3),
                    values(n, seed + 2_000, 1e-5)
                        .iter()
                        .map(|x| x.abs())
                        .collect(),
                ]
            })
            .collect();
        const PAD: f32 = 7.0;
        let (head, tail) = if c == 1 { (5, 3) } else { (0, 0) };
        let backing: Vec<[Tensor; 3]> = host
            .iter()
            .map(|pmv| {
                let t = |x: &Vec<f32>| {
                    let mut padded = vec![PAD; head];
                    padded.extend_from_slice(x);
                    padded.resize(head + x.len() + tail, PAD);
                    Tensor::from_vec(padded, head + x.len() + tail, device)
                };
                Ok([t(&pmv[0])?, t(&pmv[1])?, t(&pmv[2])?])
            })
            .collect::<anyhow::Result<_>>()?;
        let state: Vec<[Tensor; 3]> = backing
            .iter()
            .zip(&sizes)
            .map(|([p, m, v], &n)| {
                Ok([
                    p.narrow(0, head, n)?,
                    m.narrow(0, head, n)?,
                    v.narrow(0, head, n)?,
                ])
            })
            .collect::<anyhow::Result<_>>()?;
        for step in 0..2u64 {
            let grads: Vec<Vec<f32>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| values(n, 7_000 + 10 * (c * COUNT + i) as u64 + step, 0.2))
                .collect();
            let tensors: Vec<Tensor> = grads
                .iter()
                .map(|g| Tensor::from_slice(g, g.len(), device))
                .collect::<Result<_, _>>()?;
            let tensors = if step == 1 {
                views_into_one_buffer(&tensors)?
            } else {
                tensors
            };
            let items: Vec<AdamTensors> = state
                .iter()
                .zip(&tensors)
                .map(|([param, m, v], grad)| AdamTensors { param, grad, m, v })
                .collect();
            anyhow::ensure!(adam_update_many_fits(&items), "config {c}: refused");
            let before = super::kernel_launches(device);
            adam_update_many(&items, s)?;
            if let (Some(before), Some(after)) = (before, super::kernel_launches(device)) {
                anyhow::ensure!(
                    after - before == COUNT.div_ceil(ADAM_GROUP) as u64,
                    "config {c}: {} launches",
                    after - before
                );
            }
            for ([p, m, v], g) in host.iter_mut().zip(&grads) {
                for i in 0..p.len() {
                    host_step(&mut p[i], &mut m[i], &mut v[i], g[i], s);
                }
            }
            for (k, (pmv, tensors)) in host.iter().zip(&state).enumerate() {
                for (what, ours, theirs) in [
                    ("param", &tensors[0], &pmv[0]),
                    ("m", &tensors[1], &pmv[1]),
                    ("v", &tensors[2], &pmv[2]),
                ] {
                    let ours = ours.to_vec1::<f32>()?;
                    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
                        anyhow::ensure!(
                            a.to_bits() == b.to_bits(),
                            "config {c} step {step} {what} {k}[{i}]: kernel {a:e}, host {b:e}"
                        );
                    }
                }
            }
            for (k, buffers) in backing.iter().enumerate() {
                for (what, buffer) in ["param", "m", "v"].iter().zip(buffers) {
                    let all = buffer.to_vec1::<f32>()?;
                    let outside = all[..head].iter().chain(&all[all.len() - tail..]);
                    anyhow::ensure!(
                        outside.into_iter().all(|&x| x == PAD),
                        "config {c} step {step}: {what} {k}'s buffer changed outside its view"
                    );
                }
            }
        }
    }
    fused_ops::set_fused_cuda_kernels(false);
    println!("fused Adam: {COUNT} parameters in groups of {ADAM_GROUP} equal to the host's");
    Ok(())
}

/// Lists the kernel refuses, so that the caller composes the update, and
/// the error from a call that ignores that.
fn refusals(device: &Device) -> anyhow::Result<()> {
    let t = |n: usize| Tensor::ones(n, DType::F32, device);
    let (p, g, m, v) = (t(4)?, t(4)?, t(4)?, t(4)?);
    let (p2, g2, m2, v2) = (t(4)?, t(4)?, t(4)?, t(4)?);
    let item = |param, grad, m, v| AdamTensors { param, grad, m, v };
    fused_ops::set_fused_cuda_kernels(true);
    let ok = [item(&p, &g, &m, &v), item(&p2, &g2, &m2, &v2)];
    anyhow::ensure!(
        adam_update_many_fits(&ok),
        "two separate parameters refused"
    );
    let cases: Vec<(&str, Vec<AdamTensors>)> = vec![
        ("no parameters", vec![]),
        (
            "a parameter twice",
            vec![item(&p, &g, &m, &v), item(&p, &g2, &m2, &v2)],
        ),
        (
            "one parameter's m as another's v",
            vec![item(&p, &g, &m, &v), item(&p2, &g2, &m2, &m)],
        ),
        (
            "a gradient that is a parameter",
            vec![item(&p, &g, &m, &v), item(&p2, &p, &m2, &v2)],
        ),
    ];
    for (what, items) in &cases {
        anyhow::ensure!(!adam_update_many_fits(items), "taken: {what}");
    }
    let long = t(5)?;
    anyhow::ensure!(
        !adam_update_many_fits(&[item(&p, &long, &m, &v)]),
        "taken: a gradient of another size"
    );
    let half = p.to_dtype(DType::BF16)?;
    anyhow::ensure!(
        !adam_update_many_fits(&[item(&half, &g, &m, &v)]),
        "taken: a BF16 parameter"
    );
    // A 2 x 2 parameter and moments, each transposed in turn (the kernel
    // walks elements in memory order, the gradient's in its own).
    let square = |x: &Tensor| x.reshape((2, 2));
    let (ps, gs, ms, vs) = (square(&p)?, square(&g)?, square(&m)?, square(&v)?);
    anyhow::ensure!(
        adam_update_many_fits(&[item(&ps, &gs, &ms, &vs)]),
        "a 2 x 2 parameter refused"
    );
    for (what, transposed) in [("parameter", 0), ("m", 1), ("v", 2), ("gradient", 3)] {
        let mut four = [ps.clone(), ms.clone(), vs.clone(), gs.clone()];
        four[transposed] = four[transposed].t()?;
        let [param, m, v, grad] = &four;
        anyhow::ensure!(
            !adam_update_many_fits(&[AdamTensors { param, grad, m, v }]),
            "taken: a transposed {what}"
        );
    }
    // A refused list is an error, and nothing is written.
    let err = adam_update_many(&cases[1].1, &scalars_for_refusals()).unwrap_err();
    anyhow::ensure!(err.to_string().contains("buffer of its own"), "{err}");
    anyhow::ensure!(p.to_vec1::<f32>()? == [1.0; 4], "written by a refused call");
    // No parameters: nothing to do.
    adam_update_many(&[], &scalars_for_refusals())?;
    fused_ops::set_fused_cuda_kernels(false);
    Ok(())
}

fn scalars_for_refusals() -> AdamScalars {
    AdamScalars {
        decay_factor: 1.0,
        coupled_decay: 0.0,
        lerp_weight: 0.1,
        beta2: 0.999,
        one_minus_beta2: 1e-3,
        bias_correction2_sqrt: 1.0,
        eps: 1e-8,
        neg_step_size: -1.0,
        decoupled: false,
        coupled: false,
    }
}
