//! Slots that do not split evenly among the experts are an error on every
//! path (the composite path's fast reorder used to mix rows and return
//! fewer of them). A binary of its own: it switches the process-wide
//! kernel setting, which would turn another test's kernel-against-composite
//! comparison into the composite against itself.

use candle_core::{Device, Result, Tensor};
use fused_ops::{set_fused_cpu_kernels, Activation, ExpertMlp};

#[test]
fn slots_that_do_not_split_among_the_experts_are_refused() -> Result<()> {
    let (e, d, h) = (2, 3, 4);
    let values = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)?
            .affine(0.1, -0.3)?
            .reshape(shape)
    };
    let (w1, b1) = (values(&[e, h, d])?, values(&[e, h])?);
    let (w2, b2) = (values(&[e, d, h])?, values(&[e, d])?);
    let mlp = ExpertMlp {
        fc1_weight: &w1,
        fc1_bias: &b1,
        fc2_weight: &w2,
        fc2_bias: &b2,
        activation: Activation::Gelu,
    };
    // 7 slots among 2 experts.
    let odd = values(&[2, 7, d])?;
    for fused in [true, false] {
        set_fused_cpu_kernels(fused);
        let result = mlp.forward_slots(&odd);
        assert!(
            result.is_err(),
            "fused {fused}: {:?}",
            result.map(|t| t.shape().clone())
        );
    }
    Ok(())
}
