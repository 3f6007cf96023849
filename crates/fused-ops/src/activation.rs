//! Element-wise expert activations and their derivatives, as multi-threaded
//! loops over flat buffers (f32 through the vectorisable approximations of
//! [`crate::fast_math`], f64 through libm-accurate formulas for gradient
//! checks).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use crate::fast_math::{erf_f32, exp_f32};

/// Activation between the two linears of an MLP (an expert, or a dense
/// layer through [`crate::linear`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU, `x * Φ(x)`, as ViT / `torch.nn.GELU()`.
    #[default]
    Gelu,
    /// CLIP's approximation `x * sigmoid(1.702 x)`: use it when experts are
    /// initialised from a CLIP MLP.
    QuickGelu,
}

/// Elements handed to one rayon task: large enough to amortise scheduling.
const CHUNK: usize = 16 * 1024;

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const QUICK_GELU_ALPHA: f64 = 1.702;

/// Scalar maths of the activations.
pub(crate) trait ActivationFloat:
    Copy + Send + Sync + Default + std::ops::Mul<Output = Self>
{
    /// `act(x)`.
    fn activate(self, act: Activation) -> Self;
    /// `act'(x)`.
    fn derivative(self, act: Activation) -> Self;
    /// `e^x`: the vectorisable approximation for f32 (relative error 3e-7,
    /// saturating at `e^-87`), libm for f64.
    fn exp_fast(self) -> Self;
}

impl ActivationFloat for f32 {
    #[inline(always)]
    fn activate(self, act: Activation) -> f32 {
        match act {
            Activation::Gelu => {
                0.5 * self * (1.0 + erf_f32(self * std::f32::consts::FRAC_1_SQRT_2))
            }
            Activation::QuickGelu => self / (1.0 + exp_f32(-(QUICK_GELU_ALPHA as f32) * self)),
        }
    }

    #[inline(always)]
    fn derivative(self, act: Activation) -> f32 {
        match act {
            // Φ(x) + x φ(x)
            Activation::Gelu => {
                0.5 * (1.0 + erf_f32(self * std::f32::consts::FRAC_1_SQRT_2))
                    + self * (FRAC_1_SQRT_2PI as f32) * exp_f32(-0.5 * self * self)
            }
            // s + a x s (1 - s), s = sigmoid(a x)
            Activation::QuickGelu => {
                let alpha = QUICK_GELU_ALPHA as f32;
                let s = 1.0 / (1.0 + exp_f32(-alpha * self));
                s + alpha * self * s * (1.0 - s)
            }
        }
    }

    #[inline(always)]
    fn exp_fast(self) -> f32 {
        exp_f32(self)
    }
}

impl ActivationFloat for f64 {
    #[inline(always)]
    fn exp_fast(self) -> f64 {
        self.exp()
    }

    fn activate(self, act: Activation) -> f64 {
        match act {
            Activation::Gelu => {
                0.5 * self
                    * (1.0 + candle_core::cpu::erf::erf_f64(self * std::f64::consts::FRAC_1_SQRT_2))
            }
            Activation::QuickGelu => self / (1.0 + (-QUICK_GELU_ALPHA * self).exp()),
        }
    }

    fn derivative(self, act: Activation) -> f64 {
        match act {
            Activation::Gelu => {
                0.5 * (1.0 + candle_core::cpu::erf::erf_f64(self * std::f64::consts::FRAC_1_SQRT_2))
                    + self * FRAC_1_SQRT_2PI * (-0.5 * self * self).exp()
            }
            Activation::QuickGelu => {
                let s = 1.0 / (1.0 + (-QUICK_GELU_ALPHA * self).exp());
                s + QUICK_GELU_ALPHA * self * s * (1.0 - s)
            }
        }
    }
}

/// Writes `f(a[i], b[i])` to `out[i]`; `#[inline(always)]` so each caller
/// below compiles it (and the inlined activation maths) for its own SIMD width.
#[inline(always)]
fn zip_map<T: Copy, F: Fn(T, T) -> T>(out: &mut [MaybeUninit<T>], a: &[T], b: &[T], f: &F) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        o.write(f(x, y));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn zip_map_avx512<T: Copy, F: Fn(T, T) -> T>(out: &mut [MaybeUninit<T>], a: &[T], b: &[T], f: &F) {
    zip_map(out, a, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn zip_map_avx2<T: Copy, F: Fn(T, T) -> T>(out: &mut [MaybeUninit<T>], a: &[T], b: &[T], f: &F) {
    zip_map(out, a, b, f)
}

/// `out[i] = f(a[i], b[i])` on all cores, with the widest SIMD the CPU has
/// (checked at run time: the default x86-64 target only assumes SSE2), over
/// the shorter of `a` and `b`. The result is written once, into an
/// uninitialised buffer: zeroing it first cost a memset of the experts'
/// whole hidden layer per call.
fn par_zip_map<T: ActivationFloat>(a: &[T], b: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut out: Vec<T> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function enables.
                    return unsafe { zip_map_avx512(o, a, b, &f) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { zip_map_avx2(o, a, b, &f) };
                }
            }
            zip_map(o, a, b, &f)
        });
    // SAFETY: the chunks above cover `out`'s first `len` slots, each chunk
    // as long as its `a` and `b` chunks (all three have `len` elements), and
    // `zip_map` wrote every slot of its chunk.
    unsafe { out.set_len(len) };
    out
}

fn map_in_place<T: Copy, F: Fn(T) -> T>(values: &mut [T], f: &F) {
    for v in values.iter_mut() {
        *v = f(*v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn map_in_place_avx512<T: Copy, F: Fn(T) -> T>(values: &mut [T], f: &F) {
    map_in_place(values, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn map_in_place_avx2<T: Copy, F: Fn(T) -> T>(values: &mut [T], f: &F) {
    map_in_place(values, f)
}

/// `values[i] = f(values[i])` on all cores, SIMD dispatched as above.
fn par_map_in_place<T: ActivationFloat>(values: &mut [T], f: impl Fn(T) -> T + Sync) {
    values.par_chunks_mut(CHUNK).for_each(|chunk| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function enables.
                return unsafe { map_in_place_avx512(chunk, &f) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                return unsafe { map_in_place_avx2(chunk, &f) };
            }
        }
        map_in_place(chunk, &f)
    });
}

/// `values[i] = act(values[i])`, for inference where the pre-activation is
/// not kept: no second buffer.
pub(crate) fn activate_in_place<T: ActivationFloat>(values: &mut [T], act: Activation) {
    match act {
        Activation::Gelu => par_map_in_place(values, |p| p.activate(Activation::Gelu)),
        Activation::QuickGelu => par_map_in_place(values, |p| p.activate(Activation::QuickGelu)),
    }
}

/// `out[i] = act(pre[i])`.
pub(crate) fn activate<T: ActivationFloat>(pre: &[T], act: Activation) -> Vec<T> {
    // One monomorphised loop per activation: no branch inside the loop.
    match act {
        Activation::Gelu => par_zip_map(pre, pre, |p, _| p.activate(Activation::Gelu)),
        Activation::QuickGelu => par_zip_map(pre, pre, |p, _| p.activate(Activation::QuickGelu)),
    }
}

/// `out[i] = grad[i] · act'(pre[i])`.
pub(crate) fn activation_grad<T: ActivationFloat>(
    pre: &[T],
    grad: &[T],
    act: Activation,
) -> Vec<T> {
    match act {
        Activation::Gelu => par_zip_map(pre, grad, |p, g| g * p.derivative(Activation::Gelu)),
        Activation::QuickGelu => {
            par_zip_map(pre, grad, |p, g| g * p.derivative(Activation::QuickGelu))
        }
    }
}
