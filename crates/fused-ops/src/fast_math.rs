//! Branch-free `exp` and `erf` for f32 that the compiler vectorises.
//!
//! candle's CPU element-wise kernels call libm once per element; for the
//! 4.8 M-element expert activations of the paper's shape that is most of the
//! layer's non-matmul time. These approximations (exp: relative error 3e-7;
//! erf: absolute 1e-6; the tests below bound them against f64 references)
//! stay far inside the 1e-5 parity tolerance against PyTorch.

/// `1.5 · 2^23`: adding it rounds an f32 in ±2^22 to the nearest integer and
/// leaves that integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in a high part exact in f32 and a correction (Cody-Waite).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x`, relative error below 3e-7 on the whole f32 range; saturates to
/// `e^-87` / `e^88` outside it (the activations never go there usefully).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    // Integer n from the mantissa bits: no float->int conversion in the loop.
    let n_int = shifted.to_bits() as i32 - ROUND_MAGIC.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor polynomial of degree 6 on |r| <= ln2/2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `erf(x)` within 1e-6 absolute, as a rational function of `x²` on [-4, 4]
/// (erf(±4) rounds to ±1 in f32). Coefficients of the minimax approximation
/// used by XLA and Eigen for float erf.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published coefficients, kept verbatim
pub(crate) fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let num = -2.72614225801306e-10_f32;
    let num = num * x2 + 2.77068142495902e-08;
    let num = num * x2 - 2.10102402082508e-06;
    let num = num * x2 - 5.69250639462346e-05;
    let num = num * x2 - 7.34990630326855e-04;
    let num = num * x2 - 2.95459980854025e-03;
    let num = num * x2 - 1.60960333262415e-02;
    let den = -1.45660718464996e-05_f32;
    let den = den * x2 - 2.13374055278905e-04;
    let den = den * x2 - 1.68282697438203e-03;
    let den = den * x2 - 7.37332916720468e-03;
    let den = den * x2 - 1.42647390514189e-02;
    x * num / den
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::cpu::erf::erf_f64;

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_matches_f64_exp() {
        for x in sweep(-87.0, 88.0, 200_000) {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let rel = ((got - want) / want).abs();
            assert!(rel < 3e-7, "exp({x}): got {got}, want {want}, rel {rel}");
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1e4) > 0.0 && exp_f32(-1e4) < 1e-37);
        assert!(exp_f32(1e4).is_finite());
    }

    #[test]
    fn erf_matches_f64_erf() {
        for x in sweep(-6.0, 6.0, 200_000) {
            let want = erf_f64(x as f64);
            let got = erf_f32(x) as f64;
            assert!(
                (got - want).abs() < 1e-6,
                "erf({x}): got {got}, want {want}"
            );
        }
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!(erf_f32(-1.0), -erf_f32(1.0));
    }
}
