//! Attacks made from a subject's live capture: physical recaptures (print,
//! replay) and digital manipulations (adversarial perturbation, face swap).
//!
//! Each simulates the artefacts a detector can learn, at strengths chosen so
//! they are visible on inspection but not a constant offset: see
//! `docs/synthetic-data.md` for what each one models.

use super::canvas::{lerp, smoothstep, Canvas};
use super::face::{render, Capture, Identity, NoiseRng};
use rand::Rng;

/// The two print settings of UniAttackData (`cloth-indoor`, `cloth-outdoor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrintSetting {
    /// Warm, dim indoor light with vignetting.
    Indoor,
    /// Bright, cool daylight with a shadow gradient.
    Outdoor,
}

/// Places `content` (a photo or a screen) inside a recapture: scaled by
/// `scale`, rotated by `angle`, shifted, with `frame` drawn in a margin of
/// `margin` around it and `surround` outside; returns the recaptured canvas.
fn recapture(
    content: &Canvas,
    scale: f32,
    angle: f32,
    shift: (f32, f32),
    margin: f32,
    frame: [f32; 3],
    surround: impl Fn(f32, f32) -> [f32; 3],
) -> Canvas {
    let size = content.size;
    let mut out = Canvas::filled(size, [0.0; 3]);
    let (sin_a, cos_a) = angle.sin_cos();
    let half = size as f32 / 2.0;
    let pixel = 1.0 / half;
    for y in 0..size {
        for x in 0..size {
            // Inverse map: output pixel -> content coordinates in [-1, 1].
            let u = (x as f32 + 0.5) / half - 1.0 - shift.0;
            let v = (y as f32 + 0.5) / half - 1.0 - shift.1;
            let cu = (cos_a * u + sin_a * v) / scale;
            let cv = (-sin_a * u + cos_a * v) / scale;
            let edge = cu.abs().max(cv.abs());
            let inside = 1.0 - smoothstep(1.0 - pixel, 1.0 + pixel, edge);
            let in_frame = 1.0 - smoothstep(1.0 + margin - pixel, 1.0 + margin + pixel, edge);
            let photo = content.sample((cu + 1.0) * half, (cv + 1.0) * half);
            let outside = surround(u, v);
            let c = lerp(lerp(outside, frame, in_frame), photo, inside);
            out.pixels[y * size + x] = c;
        }
    }
    out
}

fn add_noise(canvas: &mut Canvas, seed: u64, sigma: f32) {
    let mut noise = NoiseRng(seed);
    for p in &mut canvas.pixels {
        let n = noise.gaussian() * sigma;
        *p = p.map(|v| (v + n).clamp(0.0, 1.0));
    }
}

/// A print attack: the live image printed (reduced gamut, CMY halftone
/// screen, paper texture, white border) and photographed again.
pub fn print<R: Rng>(live: &Canvas, setting: PrintSetting, rng: &mut R) -> Canvas {
    let size = live.size;
    let period = (size as f32 / 42.0).max(2.2);
    let angles = [0.26f32, 1.31, 0.0];
    let halftone_strength = rng.random_range(0.25..=0.4);
    let paper_tint = [
        1.0,
        rng.random_range(0.96..=0.99),
        rng.random_range(0.88..=0.95),
    ];
    let mut paper_noise = NoiseRng(rng.random());
    let fibre_phase: f32 = rng.random_range(0.0..=6.0);
    let mut printed = live.clone();
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let grey = printed.pixels[i].iter().sum::<f32>() / 3.0;
            let mut c = printed.pixels[i].map(|v| 0.1 + 0.78 * (grey + (v - grey) * 0.75));
            for (ch, angle) in angles.iter().enumerate() {
                let (s, co) = angle.sin_cos();
                let (gx, gy) = (
                    (x as f32 * co + y as f32 * s) / period,
                    (-(x as f32) * s + y as f32 * co) / period,
                );
                let (dx, dy) = (gx - gx.round(), gy - gy.round());
                let ink = 1.0 - c[ch];
                let radius = ink.sqrt() * 0.62;
                let dot =
                    1.0 - smoothstep(radius - 0.08, radius + 0.08, (dx * dx + dy * dy).sqrt());
                c[ch] = lerp([c[ch]; 3], [1.0 - dot; 3], halftone_strength)[0];
            }
            let fibre = 0.025 * ((x as f32 * 0.9 + fibre_phase).sin() * (y as f32 * 0.23).cos())
                + 0.02 * paper_noise.gaussian();
            printed.pixels[i] =
                [0, 1, 2].map(|ch| (c[ch] * paper_tint[ch] + fibre).clamp(0.0, 1.0));
        }
    }
    let (light, falloff) = match setting {
        PrintSetting::Indoor => ([1.0, 0.86, 0.7], 0.45),
        PrintSetting::Outdoor => ([0.95, 1.0, 1.08], 0.15),
    };
    let wall = [
        rng.random_range(0.2..=0.6),
        rng.random_range(0.2..=0.6),
        rng.random_range(0.2..=0.6),
    ];
    let scale = rng.random_range(0.8..=0.9);
    let angle = rng.random_range(-0.07..=0.07);
    let shift = (
        rng.random_range(-0.05..=0.05),
        rng.random_range(-0.05..=0.05),
    );
    let shadow_angle: f32 = rng.random_range(0.0..=std::f32::consts::TAU);
    let mut out = recapture(
        &printed,
        scale,
        angle,
        shift,
        0.06,
        paper_tint.map(|p| p * 0.97),
        |u, v| {
            let t = 0.5 + 0.5 * (u * shadow_angle.cos() + v * shadow_angle.sin());
            wall.map(|w| w * (0.7 + 0.3 * t))
        },
    );
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (
                (x as f32 + 0.5) / size as f32 * 2.0 - 1.0,
                (y as f32 + 0.5) / size as f32 * 2.0 - 1.0,
            );
            let vignette = 1.0 - falloff * 0.5 * (u * u + v * v);
            let p = &mut out.pixels[y * size + x];
            *p = [0, 1, 2].map(|c| p[c] * light[c] * vignette);
        }
    }
    let mut out = out.blurred(1);
    add_noise(&mut out, rng.random(), 0.015);
    out
}

/// A replay attack: the live image shown on a screen (gamma and colour
/// change, pixel grid, moire, glare, bezel) and filmed.
pub fn replay<R: Rng>(live: &Canvas, rng: &mut R) -> Canvas {
    let size = live.size;
    let gamma = if rng.random_bool(0.5) {
        rng.random_range(0.75..=0.88)
    } else {
        rng.random_range(1.15..=1.35)
    };
    let tint = [
        rng.random_range(0.9..=0.97),
        rng.random_range(0.96..=1.0),
        1.0,
    ];
    let pitch = rng.random_range(2.5..=3.5f32);
    let moire_k = (
        rng.random_range(0.05..=0.12f32),
        rng.random_range(-0.06..=0.06f32),
    );
    let moire_amp = rng.random_range(0.05..=0.1);
    let glare = (
        rng.random_range(-0.6..=0.6f32),
        rng.random_range(-0.6..=0.6f32),
        rng.random_range(0.2..=0.45f32),
    );
    let mut screen = live.clone();
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let sub = ((x as f32 / pitch * 3.0) as usize) % 3;
            let row_gap = if (y as f32 / pitch).fract() < 0.2 {
                0.8
            } else {
                1.0
            };
            let moire = 1.0
                + moire_amp
                    * (std::f32::consts::TAU
                        * (moire_k.0 * x as f32 + moire_k.1 * y as f32 + 0.002 * (x * y) as f32))
                        .cos();
            let (u, v) = (
                (x as f32 + 0.5) / size as f32 * 2.0 - 1.0,
                (y as f32 + 0.5) / size as f32 * 2.0 - 1.0,
            );
            let shine = glare.2 * (-((u - glare.0).powi(2) + (v - glare.1).powi(2)) / 0.08).exp();
            let p = screen.pixels[i];
            screen.pixels[i] = [0, 1, 2].map(|c| {
                let subpixel = if c == sub { 1.0 } else { 0.86 };
                (p[c].powf(gamma) * tint[c] * subpixel * row_gap * moire + shine).clamp(0.0, 1.0)
            });
        }
    }
    let desk = [
        rng.random_range(0.3..=0.7),
        rng.random_range(0.3..=0.7),
        rng.random_range(0.3..=0.7),
    ];
    let scale = rng.random_range(0.84..=0.94);
    let angle = rng.random_range(-0.05..=0.05);
    let shift = (
        rng.random_range(-0.04..=0.04),
        rng.random_range(-0.04..=0.04),
    );
    let mut out = recapture(
        &screen,
        scale,
        angle,
        shift,
        0.07,
        [0.04, 0.04, 0.05],
        |_, _| desk,
    );
    add_noise(&mut out, rng.random(), 0.015);
    out
}

/// Adversarial perturbation families, named like UniAttackData's method folders.
pub const ADVERSARIAL_METHODS: [&str; 3] = ["sign-grid", "lowfreq-wave", "face-patch"];

/// A digital adversarial example: the live image plus a small, structured,
/// L-infinity bounded perturbation (at most 8/255), like gradient-sign and
/// low-frequency attacks leave.
pub fn adversarial<R: Rng>(live: &Canvas, method: usize, strength: f32, rng: &mut R) -> Canvas {
    let size = live.size;
    let eps = rng.random_range(5.0..=8.0) / 255.0 * strength;
    let block = rng.random_range(1..=2usize);
    let signs: Vec<[f32; 3]> = (0..size * size)
        .map(|_| [0; 3].map(|_: i32| if rng.random_bool(0.5) { 1.0 } else { -1.0 }))
        .collect();
    let phases = [0; 3].map(|_: i32| rng.random_range(0.0..=std::f32::consts::TAU));
    let freq = rng.random_range(0.15..=0.45f32);
    let mut out = live.clone();
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let (u, v) = (
                (x as f32 + 0.5) / size as f32 * 2.0 - 1.0,
                (y as f32 + 0.5) / size as f32 * 2.0 - 1.0,
            );
            let delta: [f32; 3] = match method % ADVERSARIAL_METHODS.len() {
                0 => signs[(y / block) * size + x / block].map(|s| s * eps),
                1 => [0, 1, 2].map(|c| {
                    eps * (freq * (x as f32 + 0.7 * y as f32) + phases[c])
                        .sin()
                        .signum()
                }),
                _ => {
                    let mask = 1.0 - smoothstep(0.75, 0.9, (u * u / 0.5 + v * v / 0.7).sqrt());
                    signs[(y / 2) * size + x / 2].map(|s| eps * mask * s)
                }
            };
            out.pixels[i] = [0, 1, 2].map(|c| (out.pixels[i][c] + delta[c]).clamp(0.0, 1.0));
        }
    }
    out
}

/// Face-editing methods, named like UniAttackData's top-level method folders.
pub const EDITING_METHODS: [&str; 2] = ["SwapFeather", "SwapResample"];

/// A face swap: the inner face of `donor` rendered in the target's pose,
/// degraded by down- and up-sampling, partly colour-matched, and pasted into
/// the target's live image with a blended (feathered or hard) seam.
pub fn editing<R: Rng>(
    target: &Canvas,
    target_capture: &Capture,
    donor: &Identity,
    target_identity: &Identity,
    method: usize,
    strength: f32,
    rng: &mut R,
) -> Canvas {
    let size = target.size;
    let feathered = method.is_multiple_of(EDITING_METHODS.len());
    // The donor's face geometry placed on the target's head, as a swap network aligns it.
    let donor_identity = Identity {
        face_axes: target_identity.face_axes,
        hair: target_identity.hair,
        clothes: target_identity.clothes,
        ..donor.clone()
    };
    let mut capture = target_capture.clone();
    capture.center.0 += rng.random_range(-0.015..=0.015) * strength;
    capture.center.1 += rng.random_range(-0.015..=0.015) * strength;
    let rendered = render(&donor_identity, &capture, size);
    let base_factor: f32 = if feathered { 2.0 } else { 3.0 };
    let degraded = resample_down_up(&rendered, (base_factor * strength).round() as usize);
    // Partial colour transfer: a swap network matches skin tone, but not fully.
    let transfer = rng.random_range(0.4..=0.7) / strength;
    let shift = [0, 1, 2].map(|c| (target_identity.skin[c] - donor.skin[c]) * transfer);
    let (sin_r, cos_r) = target_capture.roll.sin_cos();
    let (fa, fb) = target_identity.face_axes;
    let mut out = target.clone();
    for y in 0..size {
        for x in 0..size {
            let u = (x as f32 + 0.5) / size as f32 * 2.0 - 1.0 - target_capture.center.0;
            let v = (y as f32 + 0.5) / size as f32 * 2.0 - 1.0 - target_capture.center.1;
            let fx = (cos_r * u + sin_r * v) / target_capture.scale;
            let fy = (-sin_r * u + cos_r * v) / target_capture.scale;
            let r = ((fx / (fa * 0.8)).powi(2) + ((fy - 0.08) / (fb * 0.72)).powi(2)).sqrt();
            let mask = if feathered {
                1.0 - smoothstep(0.8, 1.0, r)
            } else {
                1.0 - smoothstep(0.97, 1.0, r)
            };
            let i = y * size + x;
            let face = degraded.pixels[i].map(|v| v.clamp(0.0, 1.0));
            let face = [0, 1, 2].map(|c| (face[c] + shift[c]).clamp(0.0, 1.0));
            out.pixels[i] = lerp(out.pixels[i], face, mask);
        }
    }
    out
}

/// Box-downsample by `factor`, then bilinear upsample: the blur and blockiness
/// of a generator working at a lower resolution.
fn resample_down_up(canvas: &Canvas, factor: usize) -> Canvas {
    let small_size = canvas.size.div_ceil(factor);
    let mut small = Canvas::filled(small_size, [0.0; 3]);
    for y in 0..small_size {
        for x in 0..small_size {
            let mut sum = [0f32; 3];
            for dy in 0..factor {
                for dx in 0..factor {
                    let p = canvas.at((x * factor + dx) as isize, (y * factor + dy) as isize);
                    (0..3).for_each(|c| sum[c] += p[c]);
                }
            }
            small.pixels[y * small_size + x] = sum.map(|s| s / (factor * factor) as f32);
        }
    }
    let mut out = canvas.clone();
    let ratio = small_size as f32 / canvas.size as f32;
    for y in 0..canvas.size {
        for x in 0..canvas.size {
            out.pixels[y * canvas.size + x] =
                small.sample((x as f32 + 0.5) * ratio, (y as f32 + 0.5) * ratio);
        }
    }
    out
}
