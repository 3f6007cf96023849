//! Seedable training augmentations: random resized crop, horizontal flip and
//! colour jitter, with torchvision's semantics.
//!
//! Randomness comes from a caller-supplied RNG; the loader seeds one per
//! sample from (seed, epoch, position), so results do not depend on which
//! worker thread runs them.

use crate::error::{Error, Result};
use crate::preprocess::{normalize, resize_to_rgb, ClipTransform, TransformInput};
use crate::resample::Rect;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// torchvision's `RandomResizedCrop` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image. Default (0.75, 1.0)
    /// (MTFace's winning recipe): FAS cues such as print borders and screen
    /// bezels sit near the edges, and torchvision's (0.08, 1.0) would cut them away.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height). Default (3/4, 4/3).
    pub ratio: (f64, f64),
}

impl Default for RandomResizedCrop {
    fn default() -> Self {
        Self {
            scale: (0.75, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// torchvision's `ColorJitter` strengths; each factor is drawn uniformly from
/// `[max(0, 1 - s), 1 + s]` (hue: `[-s, s]`, at most 0.5), applied in random order.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    /// Default 0.2.
    pub brightness: f32,
    /// Default 0.2.
    pub contrast: f32,
    /// Default 0.2.
    pub saturation: f32,
    /// Default 0.02: colour casts are themselves a replay/print cue, so hue is kept mild.
    pub hue: f32,
}

impl Default for ColorJitter {
    fn default() -> Self {
        Self {
            brightness: 0.2,
            contrast: 0.2,
            saturation: 0.2,
            hue: 0.02,
        }
    }
}

/// The training augmentation pipeline. The default is random resized crop
/// (scale 0.75-1, ratio 3/4-4/3), flip with probability 0.5, and mild colour
/// jitter (0.2, 0.2, 0.2, 0.02).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Random resized crop; `None` uses CLIP's resize + centre crop instead.
    pub crop: Option<RandomResizedCrop>,
    /// Probability of a horizontal flip; default 0.5.
    pub hflip_probability: f64,
    /// Colour jitter; `None` disables it.
    pub color_jitter: Option<ColorJitter>,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            crop: Some(RandomResizedCrop::default()),
            hflip_probability: 0.5,
            color_jitter: Some(ColorJitter::default()),
        }
    }
}

impl AugmentConfig {
    /// Rejects ranges torchvision would also reject, and infinite or NaN values.
    pub fn validate(&self) -> Result<()> {
        if let Some(crop) = self.crop {
            let (s0, s1) = crop.scale;
            let (r0, r1) = crop.ratio;
            if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0 && 0.0 < r0 && r0 <= r1 && r1.is_finite()) {
                return Err(Error::Config(format!(
                    "random resized crop needs 0 < scale.0 <= scale.1 <= 1 and 0 < ratio.0 <= ratio.1 < infinity, got scale {:?} ratio {:?}",
                    crop.scale, crop.ratio
                )));
            }
        }
        if !(0.0..=1.0).contains(&self.hflip_probability) {
            return Err(Error::Config(format!(
                "flip probability must be in [0, 1], got {}",
                self.hflip_probability
            )));
        }
        if let Some(j) = self.color_jitter {
            if [j.brightness, j.contrast, j.saturation]
                .iter()
                .any(|s| !s.is_finite() || *s < 0.0)
                || !(0.0..=0.5).contains(&j.hue)
            {
                return Err(Error::Config(format!(
                    "colour jitter strengths must be finite and >= 0, and hue in [0, 0.5], got {j:?}"
                )));
            }
        }
        Ok(())
    }

    /// Augments `image` and returns it normalised, `CHW`, `transform.size` square.
    pub fn apply<R: Rng>(
        &self,
        image: &impl TransformInput,
        transform: &ClipTransform,
        rng: &mut R,
    ) -> Result<Vec<f32>> {
        self.validate()?;
        transform.validate()?;
        let mut rgb = match self.crop {
            Some(crop) => random_resized_crop(image, transform.size as usize, crop, rng)?,
            None => transform.resize_crop(image)?,
        };
        if rng.random::<f64>() < self.hflip_probability {
            image::imageops::flip_horizontal_in_place(&mut rgb);
        }
        if let Some(jitter) = self.color_jitter {
            color_jitter(&mut rgb, jitter, rng);
        }
        Ok(normalize(&rgb, transform.normalization))
    }
}

/// torchvision `RandomResizedCrop.get_params` (ten tries, then a centre crop
/// clamped to the ratio range), then crop and resize to `size`: bicubic, or
/// nearest-neighbour for the palette and 1-bit files Pillow resizes so.
fn random_resized_crop<R: Rng>(
    input: &impl TransformInput,
    size: usize,
    crop: RandomResizedCrop,
    rng: &mut R,
) -> Result<RgbImage> {
    let image = input.pixels();
    let (width, height) = (image.width() as usize, image.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::Preprocess(format!(
            "a {width}x{height} image has no pixels"
        )));
    }
    let area = (width * height) as f64;
    let (log_r0, log_r1) = (crop.ratio.0.ln(), crop.ratio.1.ln());
    let mut chosen = None;
    for _ in 0..10 {
        let target_area = area * rng.random_range(crop.scale.0..=crop.scale.1);
        let aspect = rng.random_range(log_r0..=log_r1).exp();
        let w = (target_area * aspect).sqrt().round() as usize;
        let h = (target_area / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let y = rng.random_range(0..=height - h);
            let x = rng.random_range(0..=width - w);
            chosen = Some(Rect {
                x,
                y,
                width: w,
                height: h,
            });
            break;
        }
    }
    let region = chosen.unwrap_or_else(|| {
        let in_ratio = width as f64 / height as f64;
        let (w, h) = if in_ratio < crop.ratio.0 {
            (
                width,
                ((width as f64 / crop.ratio.0).round() as usize).clamp(1, height),
            )
        } else if in_ratio > crop.ratio.1 {
            (
                ((height as f64 * crop.ratio.1).round() as usize).clamp(1, width),
                height,
            )
        } else {
            (width, height)
        };
        Rect {
            x: (width - w) / 2,
            y: (height - h) / 2,
            width: w,
            height: h,
        }
    });
    let window = Rect {
        x: 0,
        y: 0,
        width: size,
        height: size,
    };
    resize_to_rgb(input, region, size, size, window)
}

/// torchvision `ColorJitter` on the `[0, 1]` image (quantised back to `u8`,
/// as it is when jittering PIL images).
fn color_jitter<R: Rng>(rgb: &mut RgbImage, jitter: ColorJitter, rng: &mut R) {
    let factor = |rng: &mut R, s: f32| {
        if s > 0.0 {
            rng.random_range((1.0 - s).max(0.0)..=1.0 + s)
        } else {
            1.0
        }
    };
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    let brightness = factor(rng, jitter.brightness);
    let contrast = factor(rng, jitter.contrast);
    let saturation = factor(rng, jitter.saturation);
    let hue = if jitter.hue > 0.0 {
        rng.random_range(-jitter.hue..=jitter.hue)
    } else {
        0.0
    };
    let mut px: Vec<[f32; 3]> = rgb
        .pixels()
        .map(|p| {
            [
                f32::from(p[0]) / 255.0,
                f32::from(p[1]) / 255.0,
                f32::from(p[2]) / 255.0,
            ]
        })
        .collect();
    let grey = |p: &[f32; 3]| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let blend = |p: &mut [f32; 3], other: f32, f: f32| {
        for v in p.iter_mut() {
            *v = (f * *v + (1.0 - f) * other).clamp(0.0, 1.0);
        }
    };
    for step in order {
        match step {
            0 if brightness != 1.0 => px.iter_mut().for_each(|p| blend(p, 0.0, brightness)),
            1 if contrast != 1.0 => {
                let mean = px.iter().map(grey).sum::<f32>() / px.len().max(1) as f32;
                px.iter_mut().for_each(|p| blend(p, mean, contrast));
            }
            2 if saturation != 1.0 => px.iter_mut().for_each(|p| {
                let g = grey(p);
                blend(p, g, saturation)
            }),
            3 if hue != 0.0 => px.iter_mut().for_each(|p| *p = shift_hue(*p, hue)),
            _ => {}
        }
    }
    for (dst, p) in rgb.pixels_mut().zip(&px) {
        for c in 0..3 {
            dst[c] = (p[c] * 255.0).round().clamp(0.0, 255.0) as u8;
        }
    }
}

/// Rotates the hue of one RGB pixel by `shift` turns (HSV round trip).
fn shift_hue([r, g, b]: [f32; 3], shift: f32) -> [f32; 3] {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    if delta <= 0.0 {
        return [r, g, b];
    }
    let h = if max == r {
        ((g - b) / delta).rem_euclid(6.0)
    } else if max == g {
        (b - r) / delta + 2.0
    } else {
        (r - g) / delta + 4.0
    } / 6.0;
    let h = (h + shift).rem_euclid(1.0) * 6.0;
    let (s, v) = (delta / max, max);
    let sector = h.floor();
    let f = h - sector;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match sector as u32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::DynamicImage;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn hue_round_trip_is_identity_at_zero_shift() {
        let p = [0.8, 0.3, 0.1];
        let q = shift_hue(p, 0.0);
        for c in 0..3 {
            assert!((p[c] - q[c]).abs() < 1e-6);
        }
    }

    #[test]
    fn same_seed_same_augmentation() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(90, 60, |x, y| {
            image::Rgb([x as u8 * 2, y as u8 * 3, 77])
        }));
        let config = AugmentConfig::default();
        let transform = ClipTransform {
            size: 32,
            ..Default::default()
        };
        let a = config
            .apply(&image, &transform, &mut ChaCha8Rng::seed_from_u64(7))
            .unwrap();
        let b = config
            .apply(&image, &transform, &mut ChaCha8Rng::seed_from_u64(7))
            .unwrap();
        let c = config
            .apply(&image, &transform, &mut ChaCha8Rng::seed_from_u64(8))
            .unwrap();
        assert_eq!(a.len(), 3 * 32 * 32);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rejects_bad_ranges() {
        let bad = AugmentConfig {
            hflip_probability: 1.5,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let infinite_ratio = AugmentConfig {
            crop: Some(RandomResizedCrop {
                ratio: (0.5, f64::INFINITY),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(infinite_ratio.validate().is_err());
        let infinite_jitter = AugmentConfig {
            color_jitter: Some(ColorJitter {
                contrast: f32::INFINITY,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(infinite_jitter.validate().is_err());
        assert!(AugmentConfig::default().validate().is_ok());
    }

    /// A crop that is already `size x size` is not resized (torchvision's
    /// `resized_crop` then PIL's `resize` returns it unchanged), so
    /// `convert("RGB")` just drops alpha: colour under alpha 0 survives.
    #[test]
    fn full_size_crop_of_rgba_drops_alpha_without_premultiplying() {
        let rgba = image::RgbaImage::from_fn(16, 16, |x, y| {
            image::Rgba([x as u8 * 15, y as u8 * 15, 200, (x * 16) as u8])
        });
        let config = AugmentConfig {
            crop: Some(RandomResizedCrop {
                scale: (1.0, 1.0),
                ratio: (1.0, 1.0),
            }),
            hflip_probability: 0.0,
            color_jitter: None,
        };
        let transform = ClipTransform {
            size: 16,
            normalization: crate::Normalization::Custom {
                mean: [0.0; 3],
                std: [1.0 / 255.0; 3],
            },
        };
        let out = config
            .apply(
                &DynamicImage::ImageRgba8(rgba.clone()),
                &transform,
                &mut ChaCha8Rng::seed_from_u64(1),
            )
            .unwrap();
        for (i, px) in rgba.pixels().enumerate() {
            for c in 0..3 {
                let value = out[c * 256 + i];
                assert!(
                    (value - f32::from(px[c])).abs() < 1e-3,
                    "pixel {i} channel {c}"
                );
            }
        }
    }
}
