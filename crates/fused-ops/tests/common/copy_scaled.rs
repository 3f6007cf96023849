//! `fused_ops::copy_scaled_into` on a device with the CUDA kernels on,
//! against the definition computed on the host: each part's F32 values
//! times the scale (rounded to F32, one rounding per product) at its
//! offset, every other element of the destination untouched.

use candle_core::{DType, Device, Result, Tensor};

/// Elements per block of the kernel (`TABLE_CHUNK`).
const CHUNK: usize = 16_384;
/// What the destination holds before the copy.
const UNTOUCHED: f32 = -7.25;

/// The destination after the copy, computed on the host.
fn expected(len: usize, parts: &[(&Tensor, usize)], scale: f64) -> Result<Vec<f32>> {
    let mut dst = vec![UNTOUCHED; len];
    for (part, offset) in parts {
        let values = part
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        for (i, v) in values.iter().enumerate() {
            dst[offset + i] = v * scale as f32;
        }
    }
    Ok(dst)
}

/// Elements of the destination's buffer before and after the window the
/// copy writes (a view at an offset, as the kernel's `at` must honour).
const MARGIN: usize = 17;

/// The copy with the kernels on into a fresh destination of `len`
/// elements (a view into a larger buffer): equal to the bit to
/// [`expected`], the buffer around it untouched, and `launches` of this
/// crate's kernels run (counted on the emulator and on a GPU).
fn check(
    name: &str,
    len: usize,
    parts: &[(&Tensor, usize)],
    scale: f64,
    launches: u64,
) -> anyhow::Result<()> {
    let dev = parts[0].0.device().clone();
    let buffer = Tensor::full(UNTOUCHED, len + 2 * MARGIN, &dev)?;
    let dst = buffer.narrow(0, MARGIN, len)?;
    fused_ops::set_fused_cuda_kernels(true);
    let before = super::kernel_launches(&dev);
    let copied = fused_ops::copy_scaled_into(&dst, parts, scale);
    let after = super::kernel_launches(&dev);
    fused_ops::set_fused_cuda_kernels(false);
    copied?;
    if let (Some(before), Some(after)) = (before, after) {
        assert_eq!(after - before, launches, "{name}: kernels launched");
    }
    let ours = buffer.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    let mut theirs = vec![UNTOUCHED; MARGIN];
    theirs.extend(expected(len, parts, scale)?);
    theirs.extend([UNTOUCHED; MARGIN]);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{name} [{i}]: {a:e}, expected {b:e}"
        );
    }
    println!("{name}: {len} elements equal");
    Ok(())
}

/// Every case on `gpu` (a CUDA device, or the CPU under the emulator).
pub fn copy_scaled_matches(gpu: &Device) -> anyhow::Result<()> {
    let randn = |n: usize| Tensor::randn(0f32, 1.0, n, gpu);
    let sizes = [1, 257, CHUNK, CHUNK + 1, 3 * CHUNK + 17];
    let vectors = sizes
        .iter()
        .map(|&n| randn(n))
        .collect::<Result<Vec<_>>>()?;
    let scalar = Tensor::new(-3.5f32, gpu)?;
    let matrix = Tensor::randn(0f32, 1.0, (65, 33), gpu)?;
    let empty = Tensor::zeros(0, DType::F32, gpu)?;
    // Signed zeros: the kernel keeps -0 (x 0.25 is -0), where candle's
    // affine, the composite, gives +0.
    let signed = Tensor::new(&[-0.0f32, 1.5, -0.0], gpu)?;
    // A view at an offset into another buffer.
    let flat = randn(CHUNK + 500)?;
    let view = flat.narrow(0, 300, CHUNK + 100)?;
    // Out of order, with gaps between them and at both ends.
    let mut parts: Vec<(&Tensor, usize)> = Vec::new();
    let mut offset = 5;
    for t in [
        &vectors[4],
        &scalar,
        &vectors[0],
        &empty,
        &vectors[2],
        &matrix,
        &view,
        &vectors[1],
        &vectors[3],
        &signed,
    ] {
        parts.push((t, offset));
        offset += t.elem_count() + 3;
    }
    parts.reverse();
    let len = offset + 11;
    // A world of 4 (exact), of 3 (rounded), of 1 (a copy).
    for scale in [0.25, 1.0 / 3.0, 1.0] {
        check(&format!("parts x {scale}"), len, &parts, scale, 1)?;
    }
    // Parts back to back, the whole destination.
    let tight = [(&vectors[1], 0), (&scalar, 257), (&vectors[0], 258)];
    check("back to back", 259, &tight, 0.5, 1)?;
    // Nothing to copy: no launch.
    check("empty", 4, &[(&empty, 2)], 0.5, 0)?;
    // What the kernel does not take runs the composite (no launch): a
    // transposed matrix, a BF16 part.
    let transposed = matrix.t()?;
    let half = vectors[1].to_dtype(DType::BF16)?;
    check(
        "composite",
        3000,
        &[(&transposed, 10), (&half, 2500)],
        0.25,
        0,
    )?;

    // Refused, with the destination untouched: a part past the end,
    // overlapping parts, a view of the destination, a destination that is
    // not an F32 vector.
    let dst = Tensor::full(UNTOUCHED, 300, gpu)?;
    fused_ops::set_fused_cuda_kernels(true);
    let refusals = [
        fused_ops::copy_scaled_into(&dst, &[(&vectors[0], 0), (&vectors[1], 44)], 0.5),
        fused_ops::copy_scaled_into(&dst, &[(&vectors[1], 0), (&scalar, 256)], 0.5),
        fused_ops::copy_scaled_into(&dst, &[(&dst.narrow(0, 0, 10)?, 100)], 0.5),
        fused_ops::copy_scaled_into(&dst.reshape((10, 30))?, &[(&scalar, 0)], 0.5),
    ];
    fused_ops::set_fused_cuda_kernels(false);
    let expected_errors = [
        "part 1 (257 elements from 44) passes the end of the 300-element destination",
        "parts 0 and 1 overlap",
        "part 0 is a view of the destination",
        "not a contiguous F32 vector",
    ];
    for (result, message) in refusals.into_iter().zip(expected_errors) {
        match result {
            Ok(()) => panic!("accepted, expected an error with {message:?}"),
            Err(e) => assert!(e.to_string().contains(message), "{e}"),
        }
    }
    let after = dst.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    assert!(
        after.iter().all(|&v| v == UNTOUCHED),
        "a refused copy wrote"
    );
    Ok(())
}
