//! `fused_ops::sums_of_squares` on a device with the CUDA kernels on,
//! against the definition: each tensor's squares summed in f64 on the host.

use candle_core::{DType, Device, Result, Tensor};

/// Elements per block of the first kernel (`TABLE_CHUNK`).
const CHUNK: usize = 16_384;

/// The kernels' error against the f64 sums: F32 rounding over chains of at
/// most 64 fused multiply-adds per thread, a block's tree of 8 levels and
/// a few chunks' sums, each step at most half an ulp of a growing positive
/// sum, is below 80 ulps (1e-5 relative).
const KERNEL_TOL: f64 = 1e-5;
/// The composite's: candle's reductions may add 50,000 terms in a chain.
const COMPOSITE_TOL: f64 = 1e-3;

/// The sums of squares of `tensors` on the host, in f64.
fn reference(tensors: &[&Tensor]) -> Result<Vec<f64>> {
    tensors
        .iter()
        .map(|t| {
            let v = t
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_device(&Device::Cpu)?
                .to_vec1::<f32>()?;
            Ok(v.iter().map(|&x| f64::from(x) * f64::from(x)).sum())
        })
        .collect()
}

/// This crate's kernel launches during `f` (`None` where the build cannot
/// count them), and its result.
fn counting<T>(dev: &Device, f: impl FnOnce() -> Result<T>) -> Result<(Option<u64>, T)> {
    let before = super::kernel_launches(dev);
    let out = f()?;
    Ok((
        before.map(|b| super::kernel_launches(dev).unwrap_or(b) - b),
        out,
    ))
}

/// `tensors`' sums with the kernels on: within `tol` (relative) of the f64
/// reference, the same bits on a second run, and `launches` of this
/// crate's kernels run.
fn check(name: &str, tensors: &[&Tensor], launches: u64, tol: f64) -> anyhow::Result<()> {
    let dev = tensors[0].device().clone();
    fused_ops::set_fused_cuda_kernels(true);
    let runs = (0..2)
        .map(|_| counting(&dev, || fused_ops::sums_of_squares(tensors)))
        .collect::<Result<Vec<_>>>();
    fused_ops::set_fused_cuda_kernels(false);
    let runs = runs?;
    let (launched, sums) = &runs[0];
    if let Some(launched) = launched {
        assert_eq!(*launched, launches, "{name}: kernels launched");
    }
    assert_eq!(sums.dims(), [tensors.len()], "{name}: shape");
    assert_eq!(sums.dtype(), DType::F32, "{name}: dtype");
    let ours = sums.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let again = runs[1].1.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&ours), bits(&again), "{name}: not deterministic");
    for (i, (ours, theirs)) in ours.iter().zip(reference(tensors)?).enumerate() {
        let ours = f64::from(*ours);
        if theirs.is_nan() {
            assert!(ours.is_nan(), "{name} [{i}]: {ours:e}, expected NaN");
        } else if theirs > f64::from(f32::MAX) {
            assert_eq!(ours, f64::INFINITY, "{name} [{i}]: past F32's range");
        } else {
            let diff = (ours - theirs).abs();
            println!("{name} [{i}]: {ours:e} vs {theirs:e} (diff {diff:e})");
            assert!(
                diff <= tol * theirs,
                "{name} [{i}]: {ours:e}, expected {theirs:e}"
            );
        }
    }
    Ok(())
}

/// Every case on `gpu` (a CUDA device, or the CPU under the emulator).
pub fn sums_of_squares_match(gpu: &Device) -> anyhow::Result<()> {
    let randn = |n: usize, scale: f32| Tensor::randn(0f32, scale, n, gpu);
    // Blocks that end early, a full chunk, chunks and a partial one, a
    // scalar and a matrix.
    let sizes = [
        1,
        7,
        255,
        256,
        257,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        3 * CHUNK + 17,
    ];
    let vectors = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| randn(n, 0.5 + i as f32))
        .collect::<Result<Vec<_>>>()?;
    let scalar = Tensor::new(3.5f32, gpu)?;
    let matrix = Tensor::randn(0f32, 0.02, (768, 65), gpu)?;
    let mut all: Vec<&Tensor> = vectors.iter().collect();
    all.push(&scalar);
    all.push(&matrix);
    check("sizes", &all, 2, KERNEL_TOL)?;

    // Empty tensors first, between and last: no chunks of their own.
    let empty = Tensor::zeros(0, DType::F32, gpu)?;
    let empty_matrix = Tensor::zeros((0, 4), DType::F32, gpu)?;
    check(
        "empty",
        &[&empty, &vectors[8], &empty_matrix, &vectors[0], &empty],
        2,
        KERNEL_TOL,
    )?;
    // Only empty tensors: the first kernel has nothing to do.
    check("all empty", &[&empty, &empty_matrix], 1, KERNEL_TOL)?;

    // Views into one buffer at offsets (a data-parallel exchange's
    // gradients), the whole buffer among them.
    let flat = randn(2 * CHUNK + 300, 1.0)?;
    let a = flat.narrow(0, 0, 100)?;
    let b = flat.narrow(0, 100, CHUNK + 3)?.reshape((CHUNK + 3, 1))?;
    let c = flat.narrow(0, CHUNK + 103, CHUNK + 197)?;
    check("views", &[&a, &b, &c, &flat], 2, KERNEL_TOL)?;

    // More tensors than the second kernel's block of 256 threads.
    let many = (0..600)
        .map(|i| randn(1 + i % 37, 1.0))
        .collect::<Result<Vec<_>>>()?;
    check(
        "600 tensors",
        &many.iter().collect::<Vec<_>>(),
        2,
        KERNEL_TOL,
    )?;

    // A NaN or an infinity shows in its own tensor's sum only; a finite
    // value whose square passes F32's range gives infinity.
    let with = |at: usize, v: f32| -> Result<Tensor> {
        let mut x = vec![0.25f32; 300];
        x[at] = v;
        Tensor::new(x, gpu)
    };
    let (nan, inf, big) = (
        with(3, f32::NAN)?,
        with(299, f32::INFINITY)?,
        with(0, 2e19)?,
    );
    check(
        "non-finite",
        &[&vectors[2], &nan, &vectors[3], &inf, &big],
        2,
        KERNEL_TOL,
    )?;

    // What the kernels do not take runs the composite (no launches): a
    // transposed matrix, a BF16 tensor.
    let transposed = matrix.t()?;
    let half = vectors[4].to_dtype(DType::BF16)?;
    check("composite", &[&transposed, &half], 0, COMPOSITE_TOL)?;
    check(
        "one transposed",
        &[&vectors[1], &transposed],
        0,
        COMPOSITE_TOL,
    )?;
    Ok(())
}
