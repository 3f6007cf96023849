//! Row-wise softmax over f32 buffers with a vectorised `exp`, for the fused
//! attention (per head).
//!
//! The row loop is written in 16-lane blocks with lane accumulators so the
//! compiler can vectorise the max, the `exp` (this crate's branch-free
//! `exp_f32`, relative error below 3e-7) and the sum; the loop is compiled
//! for AVX-512 and AVX2 and picked at run time.

use crate::fast_math::exp_f32;

const LANES: usize = 16;
/// Below this, `exp` underflows to subnormals: the probability is set to 0.
const MIN_EXPONENT: f32 = -87.0;

#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut blocks = row.chunks_exact(LANES);
    for block in blocks.by_ref() {
        for (m, &v) in lanes.iter_mut().zip(block) {
            *m = m.max(v);
        }
    }
    let max = blocks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sums = [0f32; LANES];
    let exp = |v: f32| {
        let d = v - max;
        if d < MIN_EXPONENT {
            0.0
        } else {
            exp_f32(d)
        }
    };
    let mut blocks = row.chunks_exact_mut(LANES);
    for block in blocks.by_ref() {
        for (s, v) in sums.iter_mut().zip(block.iter_mut()) {
            *v = exp(*v);
            *s += *v;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in blocks.into_remainder() {
        *v = exp(*v);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        let p = *v * inv;
        *v = if p < f32::MIN_POSITIVE { 0.0 } else { p };
    }
}

fn softmax_rows_generic(data: &mut [f32], width: usize, visible: &dyn Fn(usize) -> usize) {
    for (i, row) in data.chunks_exact_mut(width).enumerate() {
        let (row, hidden) = row.split_at_mut(visible(i).min(width));
        hidden.fill(0.0);
        if !row.is_empty() {
            softmax_row(row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_rows_avx512(data: &mut [f32], width: usize, visible: &dyn Fn(usize) -> usize) {
    softmax_rows_generic(data, width, visible)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2(data: &mut [f32], width: usize, visible: &dyn Fn(usize) -> usize) {
    softmax_rows_generic(data, width, visible)
}

/// In-place softmax of each `width`-long row of `data`, where row `i` uses
/// only its first `visible(i)` entries and the rest are set to 0 (a causal
/// mask is `|i| i + 1`; no mask is `|_| width`).
///
/// Probabilities below `f32::MIN_POSITIVE` are flushed to 0. Sharp
/// attention makes many of them subnormal, and x86 arithmetic on subnormals
/// is slow, for the following `P V` product too.
pub fn softmax_rows(data: &mut [f32], width: usize, visible: impl Fn(usize) -> usize) {
    if width == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function enables.
            return unsafe { softmax_rows_avx512(data, width, &visible) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { softmax_rows_avx2(data, width, &visible) };
        }
    }
    softmax_rows_generic(data, width, &visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 softmax, rows longer and shorter than one lane block,
    /// with and without a causal mask.
    #[test]
    fn matches_f64_softmax() {
        let width = 37;
        let data: Vec<f32> = (0..width * 5)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 6.0)
            .collect();
        for causal in [false, true] {
            let mut got = data.clone();
            softmax_rows(&mut got, width, |i| if causal { i + 1 } else { width });
            for (i, (row, out)) in data.chunks(width).zip(got.chunks(width)).enumerate() {
                let visible = if causal { i + 1 } else { width };
                let max = row[..visible]
                    .iter()
                    .fold(f64::MIN, |a, &b| a.max(b as f64));
                let sum: f64 = row[..visible].iter().map(|&v| (v as f64 - max).exp()).sum();
                for (j, (&v, &o)) in row.iter().zip(out).enumerate() {
                    let want = if j < visible {
                        (v as f64 - max).exp() / sum
                    } else {
                        0.0
                    };
                    assert!(
                        (o as f64 - want).abs() < 1e-6 * want.max(1e-3),
                        "row {i} col {j}: {o} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn subnormal_probabilities_are_flushed() {
        // exp(-100) = 3.7e-44 is subnormal in f32.
        let mut row = vec![0.0f32, -100.0, -1.0];
        softmax_rows(&mut row, 3, |_| 3);
        assert_eq!(row[1], 0.0);
        assert!((row[0] + row[2] - 1.0).abs() < 1e-6);
        assert!(row[2] > 0.2);
    }
}
