//! Properties every Soft MoE / La-SoftMoE layer must have, whatever its
//! weights: normalised routing weights, token-permutation equivariance,
//! batch independence, gradients that reach every parameter and agree with
//! finite differences, and clear errors on bad input.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use softmoe::{Combine, ExpertInit, LinearAttentionConfig, QkvProjection, SoftMoe, SoftMoeConfig};

fn layer(cfg: &SoftMoeConfig, dtype: DType) -> Result<(VarMap, SoftMoe)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let moe = SoftMoe::new(cfg, vb.pp("moe"))?;
    Ok((varmap, moe))
}

fn variants() -> Vec<(&'static str, SoftMoeConfig)> {
    let mut projected = SoftMoeConfig::la_soft_moe(12, 3, 2);
    projected.options.combine = Combine::LinearAttention(LinearAttentionConfig {
        projection: QkvProjection::Linear,
        ..Default::default()
    });
    let mut raw = SoftMoeConfig::soft_moe(12, 3, 2);
    raw.options.normalize = false;
    vec![
        ("soft_moe", SoftMoeConfig::soft_moe(12, 3, 2)),
        ("soft_moe_raw", raw),
        ("la_soft_moe", SoftMoeConfig::la_soft_moe(12, 3, 2)),
        ("la_soft_moe_projected", projected),
    ]
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

#[test]
fn dispatch_columns_and_softmax_combine_rows_sum_to_one() -> Result<()> {
    for (name, cfg) in variants() {
        let (_, moe) = layer(&cfg, DType::F32)?;
        let x = Tensor::randn(0f32, 1.0, (2, 9, 12), &Device::Cpu)?;
        let out = moe.forward_with_weights(&x)?;
        // (b, n, e, s): sum over tokens n for each slot.
        let dispatch_sums = out.dispatch_weights.sum(1)?;
        assert!(
            max_abs(&(dispatch_sums - 1.0)?)? < 1e-5,
            "{name}: dispatch columns"
        );
        assert!(
            out.dispatch_weights
                .flatten_all()?
                .min(0)?
                .to_scalar::<f32>()?
                >= 0.0
        );
        if cfg.options.combine == Combine::Softmax {
            let combine_sums = out.combine_weights.flatten_from(2)?.sum(D::Minus1)?;
            assert!(
                max_abs(&(combine_sums - 1.0)?)? < 1e-5,
                "{name}: combine rows"
            );
        }
    }
    Ok(())
}

#[test]
fn la_soft_moe_default_combine_rows_are_instance_normalised() -> Result<()> {
    let (_, moe) = layer(&SoftMoeConfig::la_soft_moe(12, 3, 2), DType::F32)?;
    let x = Tensor::randn(0f32, 1.0, (2, 9, 12), &Device::Cpu)?;
    let c = moe
        .forward_with_weights(&x)?
        .combine_weights
        .flatten_from(2)?; // (b, n, m)
    assert!(
        max_abs(&c.mean(D::Minus1)?)? < 1e-5,
        "rows have zero mean over slots"
    );
    let var = c.sqr()?.mean(D::Minus1)?;
    // var / (var + eps) with the attention output's own small variance
    assert!(var.flatten_all()?.max(0)?.to_scalar::<f32>()? <= 1.0 + 1e-5);
    Ok(())
}

#[test]
fn permuting_tokens_permutes_the_output() -> Result<()> {
    let perm: Vec<u32> = vec![4, 0, 8, 2, 6, 1, 7, 3, 5];
    let idx = Tensor::new(perm.as_slice(), &Device::Cpu)?;
    for (name, cfg) in variants() {
        let (_, moe) = layer(&cfg, DType::F64)?;
        let x = Tensor::randn(0f64, 1.0, (2, 9, 12), &Device::Cpu)?;
        let permuted_then_moe = moe.forward(&x.index_select(&idx, 1)?)?;
        let moe_then_permuted = moe.forward(&x)?.index_select(&idx, 1)?;
        let diff = max_abs(&(permuted_then_moe - moe_then_permuted)?)?;
        assert!(diff < 1e-12, "{name}: equivariance broken by {diff}");
    }
    Ok(())
}

#[test]
fn batch_items_are_independent() -> Result<()> {
    for (name, cfg) in variants() {
        let (_, moe) = layer(&cfg, DType::F64)?;
        let x = Tensor::randn(0f64, 1.0, (3, 9, 12), &Device::Cpu)?;
        let batched = moe.forward(&x)?;
        for i in 0..3 {
            let alone = moe.forward(&x.narrow(0, i, 1)?)?;
            let diff = max_abs(&(alone - batched.narrow(0, i, 1)?)?)?;
            assert!(
                diff < 1e-12,
                "{name}: item {i} depends on the batch ({diff})"
            );
        }
    }
    Ok(())
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() -> Result<()> {
    for (name, cfg) in variants() {
        let (varmap, moe) = layer(&cfg, DType::F32)?;
        // The projections start at zero; perturb them so their own gradient
        // paths are generic too.
        for (pname, var) in varmap.data().lock().unwrap().iter() {
            if pname.contains("_proj") {
                var.set(&Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu)?)?;
            }
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 9, 12), &Device::Cpu)?)?;
        let w = Tensor::randn(0f32, 1.0, (2, 9, 12), &Device::Cpu)?;
        let grads = (moe.forward(x.as_tensor())? * w)?.sum_all()?.backward()?;
        let vars = varmap.data().lock().unwrap();
        // phi + 4 expert tensors, scale when normalising, q/k/v weight + bias
        // when projecting.
        let projected = matches!(&cfg.options.combine, Combine::LinearAttention(la) if la.projection == QkvProjection::Linear);
        let expected = 5 + usize::from(cfg.options.normalize) + if projected { 6 } else { 0 };
        assert_eq!(vars.len(), expected, "{name}: {:?}", vars.keys());
        for (pname, var) in vars.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: {pname} has no gradient"));
            assert!(max_abs(g)? > 0.0, "{name}: gradient of {pname} is zero");
        }
        assert!(max_abs(grads.get(x.as_tensor()).expect("input gradient"))? > 0.0);
    }
    Ok(())
}

/// Central differences in F64 against the autograd gradient, for a few
/// entries of the input and of every parameter.
#[test]
fn gradients_match_finite_differences_in_f64() -> Result<()> {
    let h = 1e-6;
    for (name, cfg) in variants() {
        let mut cfg = cfg;
        cfg.expert_hidden_dim = 10;
        let (varmap, moe) = layer(&cfg, DType::F64)?;
        for (pname, var) in varmap.data().lock().unwrap().iter() {
            if pname.contains("_proj") {
                var.set(&Tensor::randn(0f64, 0.1, var.shape(), &Device::Cpu)?)?;
            }
        }
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 5, 12), &Device::Cpu)?)?;
        let w = Tensor::randn(0f64, 1.0, (2, 5, 12), &Device::Cpu)?;
        let loss = |moe: &SoftMoe| -> Result<f64> {
            Ok((moe.forward(x.as_tensor())? * &w)?
                .sum_all()?
                .to_scalar::<f64>()?)
        };
        let grads = (moe.forward(x.as_tensor())? * &w)?.sum_all()?.backward()?;

        let mut vars: HashMap<String, Var> = varmap.data().lock().unwrap().clone();
        vars.insert("input".into(), x.clone());
        for (pname, var) in vars {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .expect("gradient")
                .flatten_all()?
                .to_vec1()?;
            let original = var.as_tensor().copy()?;
            let flat: Vec<f64> = original.flatten_all()?.to_vec1()?;
            let step = (flat.len() / 7).max(1);
            for i in (0..flat.len()).step_by(step) {
                let mut plus = flat.clone();
                plus[i] += h;
                var.set(&Tensor::from_vec(plus, original.shape(), &Device::Cpu)?)?;
                let up = loss(&moe)?;
                let mut minus = flat.clone();
                minus[i] -= h;
                var.set(&Tensor::from_vec(minus, original.shape(), &Device::Cpu)?)?;
                let down = loss(&moe)?;
                var.set(&original)?;
                let numeric = (up - down) / (2.0 * h);
                let err = (numeric - analytic[i]).abs();
                assert!(
                    err <= 1e-6 * (1.0 + numeric.abs()),
                    "{name}: d loss / d {pname}[{i}]: finite difference {numeric}, autograd {}",
                    analytic[i]
                );
            }
        }
    }
    Ok(())
}

#[test]
fn zero_output_init_leaves_a_host_network_unchanged() -> Result<()> {
    let mut cfg = SoftMoeConfig::la_soft_moe(12, 3, 2);
    cfg.options.expert_init = ExpertInit::ZeroOutput;
    let (_, moe) = layer(&cfg, DType::F32)?;
    let x = Tensor::randn(0f32, 1.0, (2, 9, 12), &Device::Cpu)?;
    assert_eq!(max_abs(&moe.forward(&x)?)?, 0.0);
    Ok(())
}

#[test]
fn half_precision_input_keeps_an_f32_router() -> Result<()> {
    let (_, moe) = layer(&SoftMoeConfig::soft_moe(12, 3, 2), DType::BF16)?;
    let x = Tensor::randn(0f32, 1.0, (2, 9, 12), &Device::Cpu)?;
    let full = moe.forward(&x)?;
    let half = moe.forward_with_weights(&x.to_dtype(DType::BF16)?)?;
    assert_eq!(half.output.dtype(), DType::BF16);
    assert_eq!(half.dispatch_weights.dtype(), DType::F32);
    assert_eq!(half.combine_weights.dtype(), DType::F32);
    let diff = max_abs(&(half.output.to_dtype(DType::F32)? - &full)?)?;
    assert!(
        diff < 0.05 * max_abs(&full)?.max(1e-3),
        "bf16 output off by {diff}"
    );
    Ok(())
}

#[test]
fn bad_configuration_is_an_error_naming_the_field() {
    let mut cfg = SoftMoeConfig::soft_moe(12, 0, 2);
    let err = layer(&cfg, DType::F32)
        .err()
        .expect("invalid config accepted")
        .to_string();
    assert!(err.contains("num_experts"), "{err}");
    cfg.options.num_experts = 2;
    cfg.expert_hidden_dim = 0;
    let err = layer(&cfg, DType::F32)
        .err()
        .expect("invalid config accepted")
        .to_string();
    assert!(err.contains("expert_hidden_dim"), "{err}");
}

/// La-SoftMoE settings whose combine weights would not depend on the
/// input, or would be 0/0, are refused: a normaliser epsilon of 0, one slot
/// in all under a per-token norm, one token under a per-slot norm.
#[test]
fn constant_or_nan_combine_weights_are_refused() -> Result<()> {
    let mut zero_eps = SoftMoeConfig::la_soft_moe(12, 2, 2);
    if let Combine::LinearAttention(la) = &mut zero_eps.options.combine {
        la.normalizer_eps = Some(0.0);
    }
    let err = layer(&zero_eps, DType::F32)
        .err()
        .expect("eps 0 accepted")
        .to_string();
    assert!(err.contains("normalizer_eps"), "{err}");
    let one_slot = SoftMoeConfig::la_soft_moe(12, 1, 1);
    let err = layer(&one_slot, DType::F32)
        .err()
        .expect("one slot accepted")
        .to_string();
    assert!(
        err.contains("slots_per_expert") && err.contains("one slot"),
        "{err}"
    );

    let mut per_slot = SoftMoeConfig::la_soft_moe(12, 2, 2);
    if let Combine::LinearAttention(la) = &mut per_slot.options.combine {
        la.norm_axis = softmoe::InstanceNormAxis::PerSlot;
    }
    let (_, moe) = layer(&per_slot, DType::F32)?;
    let one_token = Tensor::ones((2, 1, 12), DType::F32, &Device::Cpu)?;
    let err = moe
        .forward_with_weights(&one_token)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2 tokens"), "{err}");
    moe.forward_with_weights(&Tensor::ones((2, 2, 12), DType::F32, &Device::Cpu)?)?;
    Ok(())
}

#[test]
fn wrong_input_dim_is_an_error_not_a_panic() -> Result<()> {
    let (_, moe) = layer(&SoftMoeConfig::soft_moe(12, 3, 2), DType::F32)?;
    for shape in [vec![2, 9, 11], vec![9, 12], vec![2, 0, 12]] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?;
        let err = moe.forward_with_weights(&x).unwrap_err();
        assert!(
            matches!(
                err,
                softmoe::Error::InputShape {
                    expected_dim: 12,
                    ..
                }
            ),
            "{err}"
        );
        let via_module = moe.forward(&x).unwrap_err().to_string();
        assert!(
            via_module.contains("expected shape (batch, tokens, 12)"),
            "{via_module}"
        );
    }
    Ok(())
}

#[test]
fn wrong_weight_shape_in_a_checkpoint_names_the_tensor() -> Result<()> {
    let cfg = SoftMoeConfig::soft_moe(12, 3, 2);
    let (varmap, _) = layer(&cfg, DType::F32)?;
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    // A checkpoint built for 4 experts.
    tensors.insert(
        "moe.experts.fc1.weight".into(),
        Tensor::zeros((4, 48, 12), DType::F32, &Device::Cpu)?,
    );
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let err = SoftMoe::new(&cfg, vb.pp("moe"))
        .expect_err("wrong shape accepted")
        .to_string();
    assert!(err.contains("moe.experts.fc1.weight"), "{err}");
    assert!(err.contains("shape mismatch"), "{err}");
    Ok(())
}

#[test]
fn parameter_names_and_shapes_are_the_documented_ones() -> Result<()> {
    let mut cfg = SoftMoeConfig::la_soft_moe(12, 3, 2);
    cfg.expert_hidden_dim = 20;
    cfg.options.combine = Combine::LinearAttention(LinearAttentionConfig {
        projection: QkvProjection::Linear,
        norm_axis: softmoe::InstanceNormAxis::PerSlot,
        norm_affine: true,
        ..Default::default()
    });
    let (varmap, _) = layer(&cfg, DType::F32)?;
    let mut got: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    got.sort();
    let mut want: Vec<(String, Vec<usize>)> = [
        ("moe.phi", vec![3, 2, 12]),
        ("moe.scale", vec![]),
        ("moe.experts.fc1.weight", vec![3, 20, 12]),
        ("moe.experts.fc1.bias", vec![3, 20]),
        ("moe.experts.fc2.weight", vec![3, 12, 20]),
        ("moe.experts.fc2.bias", vec![3, 12]),
        ("moe.combine.q_proj.weight", vec![6, 6]),
        ("moe.combine.q_proj.bias", vec![6]),
        ("moe.combine.k_proj.weight", vec![6, 6]),
        ("moe.combine.k_proj.bias", vec![6]),
        ("moe.combine.v_proj.weight", vec![6, 6]),
        ("moe.combine.v_proj.bias", vec![6]),
        ("moe.combine.norm.weight", vec![6]),
        ("moe.combine.norm.bias", vec![6]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    want.sort();
    assert_eq!(got, want);
    // dtype of the master copies under a half-precision builder
    let (varmap, _) = layer(&cfg, DType::F16)?;
    for var in varmap.all_vars() {
        assert_eq!(var.dtype(), DType::F32);
    }
    Ok(())
}
