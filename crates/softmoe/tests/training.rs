//! The MoE layers train with candle-nn's optimizer as the rest of the
//! workspace will use them: F32 variables in a `VarMap`, AdamW steps, and a
//! student layer approaching a randomly initialised teacher layer of the same
//! configuration (a target the layer can represent exactly).

use anyhow::Result;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use softmoe::{SoftMoe, SoftMoeConfig};

fn train(cfg: &SoftMoeConfig) -> Result<(f32, f32)> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let moe = SoftMoe::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let teacher_vars = VarMap::new();
    let teacher = SoftMoe::new(
        cfg,
        VarBuilder::from_varmap(&teacher_vars, DType::F32, &device),
    )?;
    let x = Tensor::randn(0f32, 1.0, (4, 10, 16), &device)?;
    let target = teacher.forward(&x)?.detach();
    let params = ParamsAdamW {
        lr: 1e-2,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..60 {
        let loss = (moe.forward(&x)? - &target)?.sqr()?.mean_all()?;
        last = loss.to_scalar::<f32>()?;
        first.get_or_insert(last);
        opt.backward_step(&loss)?;
    }
    Ok((first.expect("at least one step"), last))
}

#[test]
fn both_variants_approach_a_teacher_layer() -> Result<()> {
    for cfg in [
        SoftMoeConfig::soft_moe(16, 2, 5),
        SoftMoeConfig::la_soft_moe(16, 2, 5),
    ] {
        let (first, last) = train(&cfg)?;
        assert!(
            last < 0.5 * first,
            "{:?}: loss {first} -> {last}",
            cfg.options.combine
        );
    }
    Ok(())
}
