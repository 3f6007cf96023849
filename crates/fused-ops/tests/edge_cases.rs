//! Shapes at the edges on the CPU: empty dimensions, operands that do not
//! fit a kernel's layout and batch broadcasting. The fused entry points
//! either give what candle's composites give or an error naming the
//! problem; none panics or returns a tensor whose data does not match its
//! shape.

use candle_core::{Device, Result, Tensor};
use fused_ops::{attention, layer_norm, linear, matmul, Activation};

fn ramp(shape: &[usize]) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Tensor::arange(0f32, n as f32, &Device::Cpu)?
        .affine(0.37, -0.5)?
        .sin()?
        .reshape(shape)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    a.sub(b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Weights as long as the rows take the kernel; a weight of another length
/// is an error (it normalised rows of the weight's length), and a `(1, d)`
/// weight broadcasts as in the composite.
#[test]
fn layer_norm_weights_must_fit_the_rows() -> Result<()> {
    let x = ramp(&[2, 6])?;
    let short = ramp(&[4])?;
    assert!(layer_norm(&x, &short, &short, 1e-5).is_err());
    let (w, b) = (ramp(&[6])?.affine(0.5, 1.0)?, ramp(&[6])?);
    let expected = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-5)?;
    assert!(max_diff(&layer_norm(&x, &w, &b, 1e-5)?, &expected)? < 1e-6);
    let (w2, b2) = (w.unsqueeze(0)?, b.unsqueeze(0)?);
    assert!(max_diff(&layer_norm(&x, &w2, &b2, 1e-5)?, &expected)? < 1e-6);
    Ok(())
}

/// A linear with no output or no input features: an empty product, or
/// the bias broadcast over the rows, as the composite gives.
#[test]
fn linears_with_an_empty_side() -> Result<()> {
    let x = ramp(&[2, 4])?;
    let none_out = linear(&x, &ramp(&[0, 4])?, &ramp(&[0])?, None)?;
    assert_eq!(none_out.dims(), [2, 0]);
    let x0 = ramp(&[5, 0])?;
    let bias = ramp(&[3])?;
    let only_bias = linear(&x0, &ramp(&[3, 0])?, &bias, Some(Activation::Gelu))?;
    let expected = bias
        .gelu_erf()?
        .unsqueeze(0)?
        .broadcast_as((5, 3))?
        .contiguous()?;
    assert_eq!(only_bias.to_vec2::<f32>()?, expected.to_vec2::<f32>()?);
    Ok(())
}

/// Attention over no token or a width of 0 returns an empty result.
#[test]
fn attention_over_nothing_is_empty() -> Result<()> {
    for (shape, heads) in [([2, 0, 12], 3), ([2, 5, 0], 1)] {
        let q = ramp(&shape)?;
        let out = attention(&q, &q, &q, heads, 0.5, false)?;
        assert_eq!(out.dims(), shape);
    }
    Ok(())
}

/// A batch of one against a batch of four broadcasts, as candle's
/// `broadcast_matmul` does.
#[test]
fn matmul_broadcasts_a_batch_of_one() -> Result<()> {
    let (a, b) = (ramp(&[4, 3, 5])?, ramp(&[1, 5, 2])?);
    let expected = a.broadcast_matmul(&b)?;
    assert!(max_diff(&matmul(&a, &b)?, &expected)? < 1e-6);
    Ok(())
}
