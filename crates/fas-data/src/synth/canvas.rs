//! A small floating-point RGB canvas the generator draws on.

use image::RgbImage;

/// Square RGB image with channels in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Canvas {
    /// Side in pixels.
    pub size: usize,
    /// Row-major pixels.
    pub pixels: Vec<[f32; 3]>,
}

impl Canvas {
    /// A canvas filled with `colour`.
    pub fn filled(size: usize, colour: [f32; 3]) -> Self {
        Self {
            size,
            pixels: vec![colour; size * size],
        }
    }

    /// Pixel at (x, y), clamped to the border.
    pub fn at(&self, x: isize, y: isize) -> [f32; 3] {
        let last = self.size as isize - 1;
        self.pixels[(y.clamp(0, last) * self.size as isize + x.clamp(0, last)) as usize]
    }

    /// Bilinear sample at continuous pixel coordinates (pixel centres at +0.5).
    pub fn sample(&self, x: f32, y: f32) -> [f32; 3] {
        let (fx, fy) = (x - 0.5, y - 0.5);
        let (x0, y0) = (fx.floor(), fy.floor());
        let (tx, ty) = (fx - x0, fy - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let mix = |a: [f32; 3], b: [f32; 3], t: f32| [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t);
        let top = mix(self.at(x0, y0), self.at(x0 + 1, y0), tx);
        let bottom = mix(self.at(x0, y0 + 1), self.at(x0 + 1, y0 + 1), tx);
        mix(top, bottom, ty)
    }

    /// 3x3 box blur, `passes` times: the softening of a camera recapture.
    pub fn blurred(&self, passes: usize) -> Self {
        let mut out = self.clone();
        for _ in 0..passes {
            let src = out.clone();
            for y in 0..self.size as isize {
                for x in 0..self.size as isize {
                    let mut sum = [0f32; 3];
                    for dy in -1..=1 {
                        for dx in -1..=1 {
                            let p = src.at(x + dx, y + dy);
                            (0..3).for_each(|c| sum[c] += p[c] / 9.0);
                        }
                    }
                    out.pixels[y as usize * self.size + x as usize] = sum;
                }
            }
        }
        out
    }

    /// Quantised 8-bit image.
    pub fn to_rgb8(&self) -> RgbImage {
        let side = self.size as u32;
        RgbImage::from_fn(side, side, |x, y| {
            let p = self.pixels[y as usize * self.size + x as usize];
            image::Rgb(p.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
        })
    }
}

/// Smooth 0 -> 1 transition between `edge0` and `edge1`.
pub fn smoothstep(edge0: f32, edge1: f32, x: f32) -> f32 {
    let t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Linear blend of two colours.
pub fn lerp(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t)
}
