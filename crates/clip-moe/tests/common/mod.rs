//! Shared helpers of the integration tests. The fixtures under
//! `tests/fixtures/tiny_clip/` come from `scripts/clip_moe/gen_fixtures.py`
//! (a tiny random transformers `CLIPModel` and CLIP tokenizer, with the
//! outputs transformers computes).

#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clip_moe::loss::clip_loss;
use clip_moe::{select_vars, ClipConfig, ClipModel, MoeConfig, TextInput, WeightSelection};
use softmoe::ExpertInit;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip")
}

pub fn fixture_config() -> ClipConfig {
    ClipConfig::from_file(fixture_dir().join("config.json")).expect("fixture config")
}

pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors")
}

/// `(rows, len)` i64 ids as u32 rows.
pub fn id_rows(ids: &Tensor) -> Vec<Vec<u32>> {
    ids.to_dtype(DType::U32)
        .and_then(|t| t.to_vec2::<u32>())
        .expect("u32 ids")
}

/// The fixture's three prompts, as transformers fed them.
pub fn fixture_text(cfg: &ClipConfig) -> TextInput {
    fixture_text_on(cfg, &Device::Cpu)
}

/// [`fixture_text`] on `device`.
pub fn fixture_text_on(cfg: &ClipConfig, device: &Device) -> TextInput {
    let rows = id_rows(&expected()["input_ids"]);
    TextInput::new(&rows, cfg.text_config.end_of_text_id(), device).expect("text input")
}

/// The CPU, and GPU 0 when the tests are built with `--features cuda`.
pub fn devices() -> anyhow::Result<Vec<Device>> {
    let mut devices = vec![Device::Cpu];
    if cfg!(feature = "cuda") {
        devices.push(Device::new_cuda(0)?);
    }
    Ok(devices)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference")
}

/// The tiny CLIP with a MoE branch of `moe`'s kind (3 slots per expert,
/// live expert outputs) in every vision block.
pub fn tiny_moe_config(moe: MoeConfig) -> ClipConfig {
    let mut moe = three_slots(moe);
    if let Some(options) = moe.layer.as_mut() {
        options.expert_init = ExpertInit::TorchLinear;
    }
    ClipConfig::tiny().with_moe(moe)
}

/// `moe` with 3 slots per expert (12 slots for the tiny tower's 17 tokens).
#[allow(dead_code)] // not every test binary uses it
pub fn three_slots(mut moe: MoeConfig) -> MoeConfig {
    if let Some(options) = moe.layer.as_mut() {
        options.slots_per_expert = 3;
    }
    moe
}

/// Builds `cfg` on `device` from random weights, or with the values of
/// `source`'s variables when given.
pub fn build_model(
    cfg: &ClipConfig,
    device: &Device,
    source: Option<&VarMap>,
) -> anyhow::Result<(VarMap, ClipModel)> {
    let mut varmap = VarMap::new();
    let model = ClipModel::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    if let Some(source) = source {
        for (name, var) in source.data().lock().unwrap().iter() {
            varmap.set_one(name, var.as_tensor().to_device(device)?)?;
        }
    }
    Ok((varmap, model))
}

/// Contrastive loss (eq. 1) of four images (the fixture's two and the same
/// scaled by -0.5) against four of the fixture's prompts, on `device`.
pub fn four_pair_loss(model: &ClipModel, device: &Device) -> anyhow::Result<Tensor> {
    let want = expected();
    let pixels = want["pixel_values"].to_device(device)?;
    let pixels = Tensor::cat(&[&pixels, &(&pixels * -0.5)?], 0)?;
    let ids = id_rows(&want["input_ids"]);
    let rows = vec![
        ids[0].clone(),
        ids[1].clone(),
        ids[2].clone(),
        ids[1].clone(),
    ];
    let text = TextInput::new(&rows, model.config().text_config.end_of_text_id(), device)?;
    let out = model.forward(&pixels, &text)?;
    Ok(clip_loss(&out.logits_per_image)?)
}

/// Loss and every parameter's gradient of [`four_pair_loss`], on the CPU.
pub fn loss_and_gradients(
    model: &ClipModel,
    varmap: &VarMap,
    device: &Device,
) -> anyhow::Result<(f32, HashMap<String, Tensor>)> {
    let loss = four_pair_loss(model, device)?;
    let grads = loss.backward()?;
    let mut by_name = HashMap::new();
    for (name, var) in select_vars(varmap, &WeightSelection::All) {
        if let Some(g) = grads.get(var.as_tensor()) {
            by_name.insert(name, g.to_device(&Device::Cpu)?);
        }
    }
    let loss = loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?;
    Ok((loss, by_name))
}

/// Asserts two runs' losses and gradients agree within `tol` (relative to
/// each gradient's largest magnitude, at least 1), gradient for gradient;
/// the key biases' gradients, zero in exact arithmetic, must both be
/// rounding noise, and a gradient smaller than `tol` must agree to 1 % of
/// its size.
pub fn assert_same_training_step(
    what: &str,
    (loss_a, grads_a): &(f32, HashMap<String, Tensor>),
    (loss_b, grads_b): &(f32, HashMap<String, Tensor>),
    tol: f32,
) {
    assert!(
        (loss_a - loss_b).abs() < tol,
        "{what}: loss {loss_a} vs {loss_b}"
    );
    let mut names: Vec<_> = grads_a.keys().collect();
    names.sort();
    assert_eq!(
        names.len(),
        grads_b.len(),
        "{what}: gradients for different parameters"
    );
    assert!(names.len() > 50, "{what}: only {} gradients", names.len());
    for name in names {
        let a = &grads_a[name];
        let b = grads_b
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no second gradient for {name}"));
        let largest = |t: &Tensor| {
            t.abs()
                .and_then(|t| t.flatten_all()?.max(0)?.to_scalar::<f32>())
                .expect("gradient scale")
        };
        let scale = largest(a);
        let diff = max_abs_diff(a, b);
        if name.ends_with("self_attn.k_proj.bias") {
            // Zero in exact arithmetic: a key bias adds the same q.b to
            // every score of a query's row, which the softmax removes. Both
            // sides hold rounding noise (about 1e-7 here), not a value to
            // compare digit for digit.
            let noise = scale.max(largest(b));
            assert!(
                noise <= 1e-5,
                "{what}: gradient of {name}, zero in exact arithmetic, is {noise}"
            );
            continue;
        }
        // A gradient smaller than the absolute tolerance could not fail
        // it: those (the MoE output scale's, 5e-5 to 1e-3 with the random
        // initialisation) are compared to 1 % of their own size instead,
        // which a zero or sign-flipped gradient fails and F32 rounding
        // (about 1e-9 here) does not.
        let allowed = if scale < tol {
            1e-2 * scale
        } else {
            tol * scale.max(1.0)
        };
        assert!(
            diff <= allowed,
            "{what}: gradient of {name} differs by {diff} (scale {scale}, allowed {allowed})"
        );
    }
}
