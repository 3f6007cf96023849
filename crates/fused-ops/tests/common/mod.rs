//! The cases shared by `cuda_parity.rs` (a GPU) and `cuda_emulation.rs`
//! (the CPU emulator): this crate's CUDA kernels against the candle
//! composites they replace, on the same device and the same inputs:
//! softmax and the standardisation over the last axis and over other axes,
//! LayerNorm, the L2 normalisation of the last axis, elu + 1, attention
//! (whose softmax is the kernel), and the bias + activation of a dense
//! linear and of stacked experts, values and every gradient, in F32 and
//! BF16; also the fused Adam step against `torch.optim` (`adam.rs`), the
//! sums of squares of many tensors against their f64 definition
//! (`sums.rs`) and the scaled copy of many tensors into one vector against
//! the host's products (`copy_scaled.rs`). The caller runs them from one
//! test, because the switch between kernels and composites is
//! process-wide.

pub mod adam;
pub mod copy_scaled;
pub mod sums;

use candle_core::{DType, Device, Result, Tensor, Var};
use fused_ops::{Activation, ExpertMlp};

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// Whether every element is finite (a sum carries NaN and infinities,
/// which candle's max reduction on CUDA skips).
fn finite(a: &Tensor) -> Result<bool> {
    Ok(a.to_dtype(DType::F32)?
        .abs()?
        .sum_all()?
        .to_scalar::<f32>()?
        .is_finite())
}

fn max_abs(a: &Tensor) -> Result<f32> {
    a.to_dtype(DType::F32)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()
}

/// `f` on `inputs` (as variables in `dtype`), the output and each input's
/// gradient of `sum(output * probe)`.
fn run(
    inputs: &[Tensor],
    dtype: DType,
    probe: &Tensor,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(dtype)?))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&tensors)?;
    let grads = (out.to_dtype(DType::F32)? * probe)?.sum_all()?.backward()?;
    let mut all = vec![out];
    for v in &vars {
        all.push(grads.get(v).expect("a gradient").clone());
    }
    Ok(all)
}

/// Kernels in `dtype` against the composites in F32 for one case, both on
/// the inputs rounded to `dtype`; `tol` relative to the largest magnitude
/// of each compared tensor.
///
/// The reference runs in F32 because candle's BF16 composites round every
/// intermediate (a softmax's sum of 196 terms among them) to BF16, while
/// the kernels keep F32 statistics: against a BF16 composite, the more
/// accurate kernel was measured 4 % off (the emulator's first run).
fn compare(
    name: &str,
    inputs: &[Tensor],
    dtype: DType,
    tol: f32,
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let probe = {
        let out = f(inputs)?;
        Tensor::randn(0f32, 1.0, out.shape(), out.device())?
    };
    let rounded: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_dtype(dtype)?.to_dtype(DType::F32))
        .collect::<Result<_>>()?;
    fused_ops::set_fused_cuda_kernels(false);
    let composite = run(&rounded, DType::F32, &probe, f)?;
    fused_ops::set_fused_cuda_kernels(true);
    assert!(
        fused_ops::fused_cuda_kernels(),
        "the switch did not turn the kernels on"
    );
    let launched = kernel_launches(probe.device());
    let fused = run(&rounded, dtype, &probe, f)?;
    fused_ops::set_fused_cuda_kernels(false);
    // The kernels must have run (else both sides were composites).
    assert!(
        launched.is_none() || kernel_launches(probe.device()) > launched,
        "{name} {dtype:?}: no kernel ran"
    );
    for (i, (a, b)) in composite.iter().zip(&fused).enumerate() {
        let what = if i == 0 {
            "output".to_string()
        } else {
            format!("gradient {i}")
        };
        assert!(
            finite(a)? && finite(b)?,
            "{name} {dtype:?} {what}: not finite"
        );
        let (diff, scale) = (max_diff(a, b)?, max_abs(a)?.max(1e-6));
        println!("{name} {dtype:?} {what}: max diff {diff:e} (scale {scale:e})");
        assert!(
            diff <= tol * scale,
            "{name} {dtype:?} {what}: {diff} > {tol} x {scale}"
        );
    }
    Ok(())
}

/// This crate's kernel launches so far on `dev`'s kind of device: the CPU
/// emulator's for the CPU, the CUDA devices' for a GPU; `None` where the
/// build cannot count them.
fn kernel_launches(dev: &Device) -> Option<u64> {
    #[cfg(feature = "cuda-emulation")]
    if dev.is_cpu() {
        return Some(fused_ops::cuda_emulation_launches());
    }
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        return Some(fused_ops::cuda_kernel_launches());
    }
    let _ = dev;
    None
}

/// Random input `(e, rows, dim)` and weights of `e` experts `dim -> hidden
/// -> dim`, the weights scaled by `scale`.
fn expert_inputs(
    gpu: &Device,
    e: usize,
    rows: usize,
    dim: usize,
    hidden: usize,
    scale: f64,
) -> Result<[Tensor; 5]> {
    Ok([
        Tensor::randn(0f32, 1.0, (e, rows, dim), gpu)?,
        (Tensor::randn(0f32, 1.0, (e, hidden, dim), gpu)? * scale)?,
        Tensor::randn(0f32, 0.5, (e, hidden), gpu)?,
        (Tensor::randn(0f32, 1.0, (e, dim, hidden), gpu)? * scale)?,
        Tensor::randn(0f32, 0.5, (e, dim), gpu)?,
    ])
}

/// The experts whose weights are `t[1..5]` (fc1 weight and bias, fc2
/// weight and bias).
fn experts_of(t: &[Tensor], activation: Activation) -> ExpertMlp<'_> {
    ExpertMlp {
        fc1_weight: &t[1],
        fc1_bias: &t[2],
        fc2_weight: &t[3],
        fc2_bias: &t[4],
        activation,
    }
}

/// LayerNorm with a weight and bias that only broadcast to the input
/// (here one per token, `(tokens, width)`) takes the composite with the
/// kernels on, as the CPU path does: the kernel applies one row of
/// weights to every row.
pub fn layer_norm_takes_the_composite_for_broadcast_weights(gpu: &Device) -> anyhow::Result<()> {
    let x = Tensor::randn(0f32, 1.0, (3, 5, 8), gpu)?;
    let w = Tensor::randn(1f32, 0.5, (5, 8), gpu)?;
    let b = Tensor::randn(0f32, 0.5, (5, 8), gpu)?;
    fused_ops::set_fused_cuda_kernels(false);
    let composite = fused_ops::layer_norm(&x, &w, &b, 1e-5)?;
    fused_ops::set_fused_cuda_kernels(true);
    let launched = kernel_launches(gpu);
    let on = fused_ops::layer_norm(&x, &w, &b, 1e-5);
    let after = kernel_launches(gpu);
    fused_ops::set_fused_cuda_kernels(false);
    let on = on?;
    anyhow::ensure!(launched == after, "a kernel ran for a broadcast weight");
    anyhow::ensure!(
        max_diff(&composite, &on)? == 0.0,
        "not the composite's values"
    );
    Ok(())
}

/// Every case, kernels against composites on `gpu` (a CUDA device, or the
/// CPU under the emulator).
pub fn kernels_match_composites(gpu: &Device) -> anyhow::Result<()> {
    let gpu = gpu.clone();
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
        // Widths below a warp, the paper's 197 tokens and 196 slots,
        // ViT-B/16's 768 features, and more than a block's 512 threads.
        for cols in [7, 196, 197, 768, 1030] {
            let x = Tensor::randn(0f32, 2.0, (3, 5, cols), &gpu)?;
            compare(
                &format!("softmax {cols}"),
                std::slice::from_ref(&x),
                dtype,
                tol,
                &|t| fused_ops::softmax(&t[0], 2),
            )?;
            // La-SoftMoE's instance norm per token and vmoe's router
            // normalisation, both over the last axis.
            compare(
                &format!("standardize {cols}"),
                std::slice::from_ref(&x),
                dtype,
                tol,
                &|t| fused_ops::standardize(&t[0], 2, 1e-5),
            )?;
            compare(
                &format!("l2 normalize {cols}"),
                std::slice::from_ref(&x),
                dtype,
                tol,
                &|t| fused_ops::l2_normalize(&t[0], 1e-6),
            )?;
            let w = Tensor::randn(1f32, 0.5, cols, &gpu)?;
            let b = Tensor::randn(0f32, 0.5, cols, &gpu)?;
            compare(
                &format!("layer norm {cols}"),
                &[x, w, b],
                dtype,
                tol,
                &|t| fused_ops::layer_norm(&t[0], &t[1], &t[2], 1e-5),
            )?;
        }
        // Softmax and standardisation along an axis that is not the last
        // (one thread per column): Soft MoE's dispatch and La-SoftMoE's
        // instance norm per slot over the paper's 197 tokens into 196
        // slots, a first axis, columns off the 256-thread blocks, and a
        // column of one (its standardisation is 0).
        for (shape, axis) in [
            ((2, 197, 196), 1),
            ((6, 5, 7), 0),
            ((3, 33, 1030), 1),
            ((2, 1, 9), 1),
        ] {
            let x = Tensor::randn(0f32, 2.0, shape, &gpu)?;
            compare(
                &format!("softmax {shape:?} axis {axis}"),
                std::slice::from_ref(&x),
                dtype,
                tol,
                &|t| fused_ops::softmax(&t[0], axis),
            )?;
            compare(
                &format!("standardize {shape:?} axis {axis}"),
                std::slice::from_ref(&x),
                dtype,
                tol,
                &|t| fused_ops::standardize(&t[0], axis, 1e-5),
            )?;
        }
        // La-SoftMoE's feature map on combine logits `(2, 197, 196)`,
        // both signs, and on a length off the 256-thread blocks.
        for shape in [(2, 197, 196), (3, 7, 11)] {
            let x = Tensor::randn(0f32, 1.5, shape, &gpu)?;
            compare(
                &format!("elu + 1 {shape:?}"),
                std::slice::from_ref(&x),
                dtype,
                tol,
                &|t| fused_ops::elu_plus_one(&t[0]),
            )?;
        }
        // A ViT-B/16 block MLP's first linear at batch 2 with each
        // activation, and 4 experts of 128 on 2 x 49 slots each, both row
        // orders (bias gradients over several chunks of 64 rows).
        let x = Tensor::randn(0f32, 1.0, (2, 197, 768), &gpu)?;
        let w = (Tensor::randn(0f32, 1.0, (3072, 768), &gpu)? * 0.03)?;
        let b = Tensor::randn(0f32, 0.5, 3072, &gpu)?;
        for act in [None, Some(Activation::Gelu), Some(Activation::QuickGelu)] {
            let inputs = [x.clone(), w.clone(), b.clone()];
            compare(&format!("linear {act:?}"), &inputs, dtype, tol, &|t| {
                fused_ops::linear(&t[0], &t[1], &t[2], act)
            })?;
        }
        // Sizes that are no multiple of the 256-thread blocks: a 3-D and a
        // 2-D input into 1030 outputs.
        for x in [
            Tensor::randn(0f32, 1.0, (3, 7, 33), &gpu)?,
            Tensor::randn(0f32, 1.0, (5, 33), &gpu)?,
        ] {
            let inputs = [
                x,
                (Tensor::randn(0f32, 1.0, (1030, 33), &gpu)? * 0.2)?,
                Tensor::randn(0f32, 0.5, 1030, &gpu)?,
            ];
            compare("linear odd sizes", &inputs, dtype, tol, &|t| {
                fused_ops::linear(&t[0], &t[1], &t[2], Some(Activation::Gelu))
            })?;
        }
        // One expert on 37 rows of 33 into 65 hidden units.
        let single = expert_inputs(&gpu, 1, 37, 33, 65, 0.2)?;
        compare("one expert", &single, dtype, tol, &|t| {
            experts_of(t, Activation::QuickGelu).forward(&t[0])
        })?;
        let experts = expert_inputs(&gpu, 4, 98, 64, 128, 0.1)?;
        for act in [Activation::Gelu, Activation::QuickGelu] {
            let mlp = |t: &[Tensor]| experts_of(t, act).forward(&t[0]);
            compare(&format!("experts {act:?}"), &experts, dtype, tol, &mlp)?;
            let slots = |t: &[Tensor]| {
                let x = t[0].reshape((2, 196, 64))?;
                experts_of(t, act).forward_slots(&x)
            };
            compare(
                &format!("expert slots {act:?}"),
                &experts,
                dtype,
                tol,
                &slots,
            )?;
        }
        // ViT-B/16 attention at batch 2: 197 tokens, 12 heads of 64.
        let qkv: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (2, 197, 768), &gpu))
            .collect::<Result<_>>()?;
        compare("attention", &qkv, dtype, tol, &|t| {
            fused_ops::attention(&t[0], &t[1], &t[2], 12, 0.125, false)
        })?;
        compare("causal attention", &qkv, dtype, tol, &|t| {
            fused_ops::attention(&t[0], &t[1], &t[2], 12, 0.125, true)
        })?;
        // 4 heads of 32 over 70 tokens (a block of 64 queries and a
        // partial one) at batch 3, both ways; logits scaled up so the
        // softmax is sharp and the online maximum moves.
        let qkv: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (3, 70, 128), &gpu))
            .collect::<Result<_>>()?;
        for causal in [false, true] {
            compare(
                &format!("attention 4 x 32, causal {causal}"),
                &qkv,
                dtype,
                tol,
                &|t| fused_ops::attention(&t[0], &t[1], &t[2], 4, 0.6, causal),
            )?;
        }
        // The other compiled head widths, 8, 16 and 128 (the dk/dv
        // kernel's pair of threads per key splits each into halves), over
        // token counts off the 64-query blocks and the 32-key tiles of
        // width 128.
        for (heads, width, tokens) in [(3, 8, 33), (2, 16, 65), (2, 128, 41)] {
            let qkv: Vec<Tensor> = (0..3)
                .map(|_| Tensor::randn(0f32, 1.0, (2, tokens, heads * width), &gpu))
                .collect::<Result<_>>()?;
            let scale = 1.0 / (width as f64).sqrt();
            for causal in [false, true] {
                compare(
                    &format!("attention {heads} x {width} over {tokens}, causal {causal}"),
                    &qkv,
                    dtype,
                    tol,
                    &|t| fused_ops::attention(&t[0], &t[1], &t[2], heads, scale, causal),
                )?;
            }
        }
    }
    Ok(())
}
