//! Training-path behaviour: MoE patching at step 0, gradients to every
//! parameter, checkpoint loading errors, save/reload round trips.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap, SGD};
use clip_moe::{
    load_model, load_weights, save_checkpoint, select_vars, ClipConfig, ClipModel, Error,
    MoeConfig, MoeLayers, WeightSelection,
};
use common::{
    build_model, expected, fixture_config, fixture_dir, fixture_text, four_pair_loss, max_abs_diff,
    three_slots, tiny_moe_config,
};

fn weights() -> std::path::PathBuf {
    fixture_dir().join("model.safetensors")
}

#[test]
fn patched_model_equals_pretrained_at_step_zero() -> anyhow::Result<()> {
    let plain = load_model(&fixture_config(), weights(), &Device::Cpu, true)?;
    let want = expected();
    let pixels = &want["pixel_values"];
    let text = fixture_text(&fixture_config());
    let reference = plain.model.forward(pixels, &text)?;
    for moe in [MoeConfig::la_soft_moe(), MoeConfig::soft_moe()] {
        let cfg = fixture_config().with_moe(three_slots(moe));
        let patched = load_model(&cfg, weights(), &Device::Cpu, false)?;
        let report = &patched.report;
        assert!(
            report.missing.is_empty() && report.unexpected.is_empty(),
            "{report:?}"
        );
        assert!(report
            .fresh
            .contains(&"vision_model.encoder.layers.1.moe.experts.fc2.weight".to_string()));
        let out = patched.model.forward(pixels, &text)?;
        let diff = max_abs_diff(&out.logits_per_image, &reference.logits_per_image);
        assert_eq!(diff, 0.0, "{:?}: logits moved by {diff}", cfg.moe.kind());
        let diff = max_abs_diff(&out.image_embeds, &reference.image_embeds);
        assert_eq!(diff, 0.0);
    }
    Ok(())
}

fn zero_gradients(varmap: &VarMap, loss: &Tensor) -> anyhow::Result<Vec<String>> {
    let grads = loss.backward()?;
    let mut zero = Vec::new();
    for (name, var) in select_vars(varmap, &WeightSelection::All) {
        let norm = match grads.get(var.as_tensor()) {
            Some(g) => g.abs()?.sum_all()?.to_scalar::<f32>()?,
            None => 0.0,
        };
        if !(norm > 0.0 && norm.is_finite()) {
            zero.push(name);
        }
    }
    Ok(zero)
}

#[test]
fn every_parameter_gets_a_gradient() -> anyhow::Result<()> {
    for moe in [MoeConfig::la_soft_moe(), MoeConfig::soft_moe()] {
        let cfg = tiny_moe_config(moe);
        let (varmap, model) = build_model(&cfg, &Device::Cpu, None)?;
        let names: Vec<String> = select_vars(&varmap, &WeightSelection::All)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        for must in [
            "vision_model.embeddings.class_embedding",
            "logit_scale",
            "vision_model.pre_layrnorm.weight",
            "vision_model.encoder.layers.0.moe.phi",
            "text_model.final_layer_norm.bias",
        ] {
            assert!(names.iter().any(|n| n == must), "{must} is not a Var");
        }
        let zero = zero_gradients(&varmap, &four_pair_loss(&model, &Device::Cpu)?)?;
        assert!(
            zero.is_empty(),
            "{:?}: no gradient for {zero:?}",
            cfg.moe.kind()
        );
    }
    Ok(())
}

#[test]
fn zero_output_init_trains_after_one_step() -> anyhow::Result<()> {
    // At step 0 only the experts' output layer sees a gradient (its input is
    // live, its output weights are zero); after one step every MoE parameter
    // does.
    let cfg = ClipConfig::tiny().with_moe(MoeConfig {
        layers: MoeLayers::Last(1),
        ..three_slots(MoeConfig::la_soft_moe())
    });
    let varmap = VarMap::new();
    let model = ClipModel::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let zero = zero_gradients(&varmap, &four_pair_loss(&model, &Device::Cpu)?)?;
    assert!(
        zero.iter()
            .all(|n| n.contains(".moe.") && !n.contains("fc2")),
        "{zero:?}"
    );
    assert!(zero.iter().any(|n| n.ends_with("moe.phi")), "{zero:?}");
    let mut sgd = SGD::new(varmap.all_vars(), 0.1)?;
    sgd.backward_step(&four_pair_loss(&model, &Device::Cpu)?)?;
    let zero = zero_gradients(&varmap, &four_pair_loss(&model, &Device::Cpu)?)?;
    assert!(zero.is_empty(), "{zero:?}");
    Ok(())
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(weights(), &Device::Cpu).expect("fixture weights")
}

#[test]
fn wrong_shape_names_the_tensor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut tensors = fixture_tensors();
    tensors.insert(
        "vision_model.post_layernorm.weight".into(),
        Tensor::ones(31, DType::F32, &Device::Cpu)?,
    );
    let path = dir.path().join("bad.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    for strict in [true, false] {
        let err = match load_model(&fixture_config(), &path, &Device::Cpu, strict) {
            Ok(_) => panic!("a mis-shaped tensor loaded"),
            Err(err) => err,
        };
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("vision_model.post_layernorm.weight") && msg.contains("31"),
            "{msg}"
        );
    }
    Ok(())
}

#[test]
fn strict_mode_rejects_missing_and_unexpected() -> anyhow::Result<()> {
    let cfg = fixture_config().with_moe(three_slots(MoeConfig::soft_moe()));
    let err = load_model(&cfg, weights(), &Device::Cpu, true)
        .err()
        .expect("strict error");
    assert!(err.to_string().contains(".moe."), "{err}");

    let dir = tempfile::tempdir()?;
    let mut tensors = fixture_tensors();
    tensors.remove("text_projection.weight");
    tensors.insert(
        "extra.weight".into(),
        Tensor::ones(2, DType::F32, &Device::Cpu)?,
    );
    // A buffer older transformers versions saved: skipped, never unexpected.
    tensors.insert(
        "text_model.embeddings.position_ids".into(),
        Tensor::arange(0i64, 16, &Device::Cpu)?.unsqueeze(0)?,
    );
    let path = dir.path().join("partial.safetensors");
    candle_core::safetensors::save(&tensors, &path)?;
    let err = load_model(&fixture_config(), &path, &Device::Cpu, true)
        .err()
        .expect("strict");
    let msg = err.to_string();
    assert!(
        msg.contains("text_projection.weight") && msg.contains("extra.weight"),
        "{msg}"
    );
    let lenient = load_model(&fixture_config(), &path, &Device::Cpu, false)?;
    assert_eq!(
        lenient.report.missing,
        vec!["text_projection.weight".to_string()]
    );
    assert_eq!(lenient.report.unexpected, vec!["extra.weight".to_string()]);
    assert_eq!(
        lenient.report.ignored,
        vec!["text_model.embeddings.position_ids".to_string()]
    );
    Ok(())
}

/// Every variable's values, in name order.
fn values(varmap: &VarMap) -> anyhow::Result<Vec<Vec<f32>>> {
    select_vars(varmap, &WeightSelection::All)
        .into_iter()
        .map(|(_, var)| Ok(var.as_tensor().flatten_all()?.to_vec1::<f32>()?))
        .collect()
}

/// Weights stored as an integer type (a quantised export) are refused
/// naming the tensor, and a bad tensor late in the file leaves every
/// variable as it was: all are checked before any is set.
#[test]
fn bad_tensors_are_refused_before_anything_is_set() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let model = load_model(&fixture_config(), weights(), &Device::Cpu, true)?;
    // The last tensor read: every other one comes before it.
    let last = select_vars(&model.varmap, &WeightSelection::All)
        .into_iter()
        .last()
        .expect("parameters")
        .0;
    let mut quantised = fixture_tensors();
    let shape = quantised[&last].dims().to_vec();
    quantised.insert(
        last.clone(),
        Tensor::ones(shape.as_slice(), DType::U8, &Device::Cpu)?,
    );
    let mut damaged = fixture_tensors();
    let nan = Tensor::full(f32::NAN, shape.as_slice(), &Device::Cpu)?;
    damaged.insert(last.clone(), nan);
    for (file, tensors, expected) in [
        ("quantised.safetensors", quantised, "not as a float type"),
        ("damaged.safetensors", damaged, "non-finite"),
    ] {
        // Everything else moved, so a partial load would show.
        for (_, var) in select_vars(&model.varmap, &WeightSelection::All) {
            var.set(&(var.as_tensor() * 0.0)?)?;
        }
        let zeroed = values(&model.varmap)?;
        let path = dir.path().join(file);
        candle_core::safetensors::save(&tensors, &path)?;
        let err = load_weights(&model.varmap, &path, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&last) && err.contains(expected), "{err}");
        let after = values(&model.varmap)?;
        assert!(
            after == zeroed,
            "{file}: variables changed before the error"
        );
    }
    Ok(())
}

/// MoE parameters absent from a file that holds some MoE weights are
/// missing (a checkpoint of another placement), not fresh.
#[test]
fn moe_parameters_absent_beside_others_are_missing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let one_block = fixture_config().with_moe(MoeConfig {
        layers: MoeLayers::List(vec![1]),
        ..three_slots(MoeConfig::la_soft_moe())
    });
    let tuned = load_model(&one_block, weights(), &Device::Cpu, false)?;
    let saved = save_checkpoint(
        &tuned.varmap,
        &one_block,
        dir.path().join("one-block"),
        &WeightSelection::All,
    )?;
    let every_block = fixture_config().with_moe(three_slots(MoeConfig::la_soft_moe()));
    let loaded = load_model(&every_block, &saved, &Device::Cpu, false)?;
    assert!(loaded.report.fresh.is_empty(), "{:?}", loaded.report.fresh);
    assert!(
        !loaded.report.missing.is_empty()
            && loaded
                .report
                .missing
                .iter()
                .all(|n| n.contains(".moe.") && !n.contains("layers.1.")),
        "{:?}",
        loaded.report.missing
    );
    // A plain CLIP file: the MoE parameters are fresh, as before.
    let patched = load_model(&every_block, weights(), &Device::Cpu, false)?;
    assert!(patched.report.missing.is_empty() && !patched.report.fresh.is_empty());
    Ok(())
}

/// Moves every variable a little, as training would.
fn perturb(varmap: &VarMap) -> anyhow::Result<()> {
    for (_, var) in select_vars(varmap, &WeightSelection::All) {
        let t = var.as_tensor();
        var.set(&(t + Tensor::randn(0f32, 0.01, t.shape(), t.device())?)?)?;
    }
    Ok(())
}

fn logits(model: &ClipModel) -> anyhow::Result<Tensor> {
    let want = expected();
    Ok(model
        .forward(&want["pixel_values"], &fixture_text(model.config()))?
        .logits_per_image)
}

#[test]
fn full_and_delta_checkpoints_round_trip() -> anyhow::Result<()> {
    let cfg = fixture_config().with_moe(MoeConfig {
        layers: MoeLayers::List(vec![1]),
        ..three_slots(MoeConfig::la_soft_moe())
    });
    let tuned = load_model(&cfg, weights(), &Device::Cpu, false)?;
    perturb(&tuned.varmap)?;
    let want = logits(&tuned.model)?;
    let dir = tempfile::tempdir()?;

    let full = save_checkpoint(
        &tuned.varmap,
        &cfg,
        dir.path().join("full"),
        &WeightSelection::All,
    )?;
    let saved_cfg = ClipConfig::from_file(dir.path().join("full/config.json"))?;
    assert_eq!(saved_cfg, cfg);
    let reloaded = load_model(&saved_cfg, &full, &Device::Cpu, true)?;
    assert_eq!(max_abs_diff(&logits(&reloaded.model)?, &want), 0.0);

    // Delta: MoE + the post-layernorm; reloaded over the pretrained weights it
    // reproduces the tuned model only where the delta holds everything that
    // moved, so train just those here.
    let selection = WeightSelection::Delta {
        extra_prefixes: vec!["vision_model.post_layernorm.".into()],
    };
    let partial = load_model(&cfg, weights(), &Device::Cpu, false)?;
    for (_, var) in select_vars(&partial.varmap, &selection) {
        let t = var.as_tensor();
        var.set(&(t + 0.01)?)?;
    }
    let want = logits(&partial.model)?;
    let delta = save_checkpoint(&partial.varmap, &cfg, dir.path().join("delta"), &selection)?;
    let saved: HashMap<String, Tensor> = candle_core::safetensors::load(&delta, &Device::Cpu)?;
    assert!(saved
        .keys()
        .all(|k| k.contains(".moe.") || k.starts_with("vision_model.post_layernorm.")));
    assert!(saved.contains_key("vision_model.encoder.layers.1.moe.phi"));
    let base = load_model(&cfg, weights(), &Device::Cpu, false)?;
    let report = load_weights(&base.varmap, &delta, false)?;
    assert!(report.unexpected.is_empty());
    assert_eq!(max_abs_diff(&logits(&base.model)?, &want), 0.0);
    Ok(())
}

#[test]
fn trainable_selection_for_an_optimizer() -> anyhow::Result<()> {
    let cfg = ClipConfig::tiny().with_moe(three_slots(MoeConfig::soft_moe()));
    let varmap = VarMap::new();
    ClipModel::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let selection = WeightSelection::Delta {
        extra_prefixes: vec!["logit_scale".into()],
    };
    let vars: Vec<Var> = select_vars(&varmap, &selection)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    // phi, scale and 4 expert tensors in each of 2 blocks, plus logit_scale.
    assert_eq!(vars.len(), 2 * 6 + 1);
    Ok(())
}
