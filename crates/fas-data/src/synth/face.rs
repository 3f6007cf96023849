//! Procedural faces: an identity (shape, skin tone, features, hair) drawn
//! under a capture (position, scale, roll, yaw, lighting, background).
//!
//! Faces are ellipses with Lambertian shading of an ellipsoid, almond eyes
//! with irises, brows, a shaded nose, lips and hair; every parameter is drawn
//! from the subject's seeded RNG, so a subject looks the same in every image.

use super::canvas::{lerp, smoothstep, Canvas};
use rand::Rng;

/// What stays the same across all images of one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Base skin colour (a wide range of tones).
    pub skin: [f32; 3],
    /// Face half-width and half-height as fractions of the image half-size.
    pub face_axes: (f32, f32),
    /// Eye half-width (fraction), eye spacing from the centre line, eye height.
    pub eye: (f32, f32, f32),
    /// Iris colour.
    pub iris: [f32; 3],
    /// Brow thickness and height above the eyes.
    pub brow: (f32, f32),
    /// Nose length and width.
    pub nose: (f32, f32),
    /// Mouth half-width, height position and smile curvature.
    pub mouth: (f32, f32, f32),
    /// Lip colour.
    pub lips: [f32; 3],
    /// Hair colour and hairline height (fraction of the face half-height from the top).
    pub hair: ([f32; 3], f32),
    /// Clothing colour.
    pub clothes: [f32; 3],
}

/// What changes between images: pose, light and scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Capture {
    /// Face centre in `[-1, 1]` image coordinates.
    pub center: (f32, f32),
    /// Face scale factor.
    pub scale: f32,
    /// In-plane rotation (radians).
    pub roll: f32,
    /// Out-of-plane turn, shifting features sideways (-1..1 of a small range).
    pub yaw: f32,
    /// Light direction (x, y; z is derived) and strength, plus ambient light.
    pub light: (f32, f32, f32, f32),
    /// Two background colours and the gradient angle.
    pub background: ([f32; 3], [f32; 3], f32),
    /// Background stripe frequency and amplitude (wallpaper, shelves).
    pub pattern: (f32, f32),
    /// Seed of the per-image sensor noise.
    pub noise_seed: u64,
}

fn colour<R: Rng>(rng: &mut R, lo: [f32; 3], hi: [f32; 3]) -> [f32; 3] {
    [0, 1, 2].map(|c| rng.random_range(lo[c]..=hi[c]))
}

impl Identity {
    /// A random identity.
    pub fn random<R: Rng>(rng: &mut R) -> Self {
        // Skin tones along a light-to-dark axis with a little hue variation.
        let depth: f32 = rng.random_range(0.0..=1.0);
        let light = [0.93, 0.78, 0.68];
        let dark = [0.32, 0.2, 0.14];
        let skin =
            lerp(light, dark, depth).map(|v| (v + rng.random_range(-0.03..=0.03)).clamp(0.0, 1.0));
        Self {
            skin,
            face_axes: (rng.random_range(0.34..=0.44), rng.random_range(0.46..=0.56)),
            eye: (
                rng.random_range(0.07..=0.1),
                rng.random_range(0.14..=0.19),
                rng.random_range(-0.14..=-0.06),
            ),
            iris: colour(rng, [0.1, 0.06, 0.02], [0.45, 0.45, 0.5]),
            brow: (
                rng.random_range(0.015..=0.035),
                rng.random_range(0.07..=0.1),
            ),
            nose: (rng.random_range(0.12..=0.2), rng.random_range(0.035..=0.06)),
            mouth: (
                rng.random_range(0.09..=0.15),
                rng.random_range(0.26..=0.33),
                rng.random_range(-0.04..=0.06),
            ),
            lips: colour(rng, [0.5, 0.15, 0.18], [0.8, 0.4, 0.4]),
            hair: (
                colour(rng, [0.03, 0.02, 0.02], [0.45, 0.33, 0.2]),
                rng.random_range(0.25..=0.5),
            ),
            clothes: colour(rng, [0.05, 0.05, 0.05], [0.9, 0.9, 0.9]),
        }
    }
}

impl Capture {
    /// A random capture setting.
    pub fn random<R: Rng>(rng: &mut R) -> Self {
        let angle: f32 = rng.random_range(0.0..std::f32::consts::TAU);
        Self {
            center: (
                rng.random_range(-0.06..=0.06),
                rng.random_range(-0.04..=0.06),
            ),
            scale: rng.random_range(0.9..=1.08),
            roll: rng.random_range(-0.15..=0.15),
            yaw: rng.random_range(-1.0..=1.0),
            light: (
                angle.cos() * 0.6,
                angle.sin() * 0.6,
                rng.random_range(0.55..=0.8),
                rng.random_range(0.3..=0.45),
            ),
            background: (
                colour(rng, [0.1, 0.1, 0.1], [0.9, 0.9, 0.9]),
                colour(rng, [0.1, 0.1, 0.1], [0.9, 0.9, 0.9]),
                rng.random_range(0.0..std::f32::consts::TAU),
            ),
            pattern: (rng.random_range(2.0..=9.0), rng.random_range(0.0..=0.08)),
            noise_seed: rng.random(),
        }
    }

    /// A neighbouring frame of the same recording: small pose and light changes.
    pub fn next_frame<R: Rng>(&self, rng: &mut R) -> Self {
        let mut c = self.clone();
        c.center.0 += rng.random_range(-0.02..=0.02);
        c.center.1 += rng.random_range(-0.02..=0.02);
        c.roll += rng.random_range(-0.04..=0.04);
        c.yaw = (c.yaw + rng.random_range(-0.2..=0.2)).clamp(-1.0, 1.0);
        c.light.2 *= rng.random_range(0.93..=1.07);
        c.noise_seed = rng.random();
        c
    }
}

/// Coverage of an ellipse at a point, antialiased over about one pixel.
fn ellipse(px: f32, py: f32, cx: f32, cy: f32, ax: f32, ay: f32, pixel: f32) -> f32 {
    let (dx, dy) = ((px - cx) / ax, (py - cy) / ay);
    let distance = ((dx * dx + dy * dy).sqrt() - 1.0) * ax.min(ay);
    1.0 - smoothstep(-pixel, pixel, distance)
}

/// Draws `identity` under `capture` on a `size` x `size` canvas.
pub fn render(identity: &Identity, capture: &Capture, size: usize) -> Canvas {
    let mut canvas = Canvas::filled(size, [0.0; 3]);
    let pixel = 2.0 / size as f32;
    let (bg0, bg1, bg_angle) = capture.background;
    let (sin_r, cos_r) = capture.roll.sin_cos();
    let yaw_shift = capture.yaw * 0.06 * capture.scale;
    let (lx, ly, diffuse, ambient) = capture.light;
    let lz = (1.0 - lx * lx - ly * ly).max(0.0).sqrt();
    let mut noise = NoiseRng(capture.noise_seed);
    for y in 0..size {
        for x in 0..size {
            // Image coordinates in [-1, 1], then face coordinates (rotated, unscaled).
            let u = (x as f32 + 0.5) * pixel - 1.0;
            let v = (y as f32 + 0.5) * pixel - 1.0;
            let (du, dv) = (u - capture.center.0, v - capture.center.1);
            let fx = (cos_r * du + sin_r * dv) / capture.scale;
            let fy = (-sin_r * du + cos_r * dv) / capture.scale;
            let t = u * bg_angle.cos() + v * bg_angle.sin();
            let mut c = lerp(bg0, bg1, 0.5 + 0.5 * t);
            let stripes = (t * capture.pattern.0 * std::f32::consts::PI).sin() * capture.pattern.1;
            c = c.map(|ch| ch + stripes);
            // Shoulders and neck.
            let shoulders = ellipse(fx, fy, 0.0, 1.35, 0.95, 0.55, pixel);
            c = lerp(c, identity.clothes, shoulders);
            let neck = ellipse(fx, fy, 0.0, 0.55, 0.17, 0.4, pixel) * (1.0 - shoulders);
            c = lerp(c, identity.skin.map(|s| s * 0.75), neck);
            // Hair behind the head, ears.
            let (fa, fb) = identity.face_axes;
            c = lerp(
                c,
                identity.hair.0,
                ellipse(fx, fy, 0.0, -0.08, fa * 1.12, fb * 1.02, pixel),
            );
            for side in [-1.0, 1.0] {
                let ear = ellipse(fx, fy, side * fa * 0.98, -0.02, 0.05, 0.09, pixel);
                c = lerp(c, identity.skin.map(|s| s * 0.85), ear);
            }
            // Face: shaded ellipsoid.
            let face = ellipse(fx, fy, 0.0, 0.0, fa, fb, pixel);
            if face > 0.0 {
                let (nx, ny) = (fx / fa, fy / fb);
                let nz = (1.0 - nx * nx - ny * ny).max(0.0).sqrt();
                let shade = ambient + diffuse * (nx * lx + ny * ly + nz * lz).max(0.0);
                let mut skin = identity.skin.map(|s| s * shade);
                skin = features(identity, fx - yaw_shift * nz, fy, pixel, skin);
                let hairline = -fb + identity.hair.1 * fb * 0.6 + 0.03 * (fx * 25.0).sin();
                let fringe = 1.0 - smoothstep(hairline - pixel, hairline + pixel, fy);
                skin = lerp(skin, identity.hair.0, fringe);
                c = lerp(c, skin, face);
            }
            let grain = noise.gaussian() * 0.012;
            canvas.pixels[y * size + x] = c.map(|ch| (ch + grain).clamp(0.0, 1.0));
        }
    }
    canvas
}

/// Eyes, brows, nose and mouth over the shaded skin, in face coordinates.
fn features(id: &Identity, fx: f32, fy: f32, pixel: f32, mut c: [f32; 3]) -> [f32; 3] {
    let (eye_w, eye_dx, eye_y) = id.eye;
    for side in [-1.0, 1.0] {
        let ex = side * eye_dx;
        let white = ellipse(fx, fy, ex, eye_y, eye_w, eye_w * 0.45, pixel);
        c = lerp(c, [0.92, 0.9, 0.88], white);
        let iris = ellipse(fx, fy, ex, eye_y, eye_w * 0.42, eye_w * 0.42, pixel) * white;
        c = lerp(c, id.iris, iris);
        let pupil = ellipse(fx, fy, ex, eye_y, eye_w * 0.18, eye_w * 0.18, pixel) * white;
        c = lerp(c, [0.02, 0.02, 0.02], pupil);
        let lid = ellipse(
            fx,
            fy,
            ex,
            eye_y - eye_w * 0.38,
            eye_w * 1.05,
            id.brow.0 * 0.6,
            pixel,
        );
        c = lerp(c, id.hair.0.map(|h| h * 0.6), lid * 0.8);
        let brow_y = eye_y - id.brow.1 - 0.01 * (fx - ex).abs() * 10.0 * side.abs();
        let brow = ellipse(fx, fy, ex, brow_y, eye_w * 1.25, id.brow.0, pixel);
        c = lerp(c, id.hair.0, brow);
    }
    let (nose_len, nose_w) = id.nose;
    let bridge = ellipse(
        fx,
        fy,
        nose_w * 0.4,
        eye_y + nose_len * 0.6,
        nose_w * 0.25,
        nose_len * 0.6,
        pixel,
    );
    c = c.map(|v| v * (1.0 - 0.18 * bridge));
    for side in [-1.0, 1.0] {
        let nostril = ellipse(
            fx,
            fy,
            side * nose_w * 0.55,
            eye_y + nose_len * 1.15,
            nose_w * 0.3,
            nose_w * 0.18,
            pixel,
        );
        c = c.map(|v| v * (1.0 - 0.5 * nostril));
    }
    let (mouth_w, mouth_y, smile) = id.mouth;
    let curve = mouth_y - smile * (1.0 - (fx / mouth_w).powi(2));
    let lips = ellipse(fx, fy, 0.0, curve, mouth_w, 0.028, pixel);
    c = lerp(c, id.lips, lips);
    let gap = ellipse(fx, fy, 0.0, curve, mouth_w * 0.9, 0.006, pixel);
    lerp(c, [0.25, 0.08, 0.08], gap)
}

/// A tiny deterministic Gaussian source for sensor noise (Box-Muller on SplitMix64).
pub struct NoiseRng(pub u64);

impl NoiseRng {
    /// Next uniform in (0, 1].
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 + 1.0 / (1u64 << 25) as f32
    }

    /// Next standard normal.
    pub fn gaussian(&mut self) -> f32 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
    }
}
