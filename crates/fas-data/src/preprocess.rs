//! CLIP's image transform, exactly: `clip.py::_transform` of openai/CLIP,
//!
//! ```text
//! Resize(size, BICUBIC)   # shorter side -> size, longer = int(size * long / short)
//! CenterCrop(size)        # offsets int(round((h - size) / 2.0))
//! convert("RGB")          # after the resize, as CLIP does
//! ToTensor()              # / 255
//! Normalize(mean, std)    # CLIP's own statistics
//! ```
//!
//! on a PIL image, reproduced with this crate's port of Pillow's fixed-point
//! bicubic resampler (bit-exact). Images with alpha are resized premultiplied, as Pillow
//! does for `RGBA` and `LA`; grey images are resized as one channel and
//! replicated, as `convert("RGB")` does. When no resize is needed (the
//! image's short side already equals the size), Pillow returns the image
//! untouched and `convert("RGB")` simply drops alpha; so does this transform.
//!
//! What is exact and what is not:
//!
//! - Given the same decoded pixels, the output equals PIL + torchvision bit
//!   for bit (PNG fixtures in `tests/preprocess_parity.rs`).
//! - JPEG decoding is not bit-exact: this crate decodes with zune-jpeg, PIL
//!   with libjpeg-turbo, and their chroma upsampling and IDCT rounding
//!   differ. Measured after this transform at 224 px: 1 to 2/255 for
//!   4:4:4 JPEGs, 3/255 for a 640x480 4:2:0 face-like JPEG, 4/255 for the
//!   200x160 4:2:0 test fixture (upscaled, 13 % of values differ), and
//!   16/255 for a 4:2:0 JPEG of pure noise (the worst case for chroma
//!   upsampling). `tests/preprocess_parity.rs` holds the fixture to 4/255.
//! - PNG colour types that PIL opens in other modes than the decoder's
//!   output are handled as PIL handles them ([`DecodedImage`]): palette and
//!   1-bit files are resized nearest-neighbour (Pillow forces `NEAREST` for
//!   modes `P` and `1`), a tRNS chunk on a grey or RGB file is ignored, and
//!   16-bit files keep their high byte (fixtures in
//!   `tests/preprocess_parity.rs`). The one exception is a 16-bit grey PNG,
//!   which PIL saturates to white above 255 and this crate does not.
//!   Images given as a [`DynamicImage`] have no file behind them and are
//!   resized as PIL resizes their mode (bicubic).

use crate::error::{Error, Result};
use crate::image_io::{DecodedImage, Resampling};
use crate::resample::{resize_bicubic, resize_nearest, Image8, Rect};
use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

/// The largest output side accepted (a 4096 x 4096 float image is 200 MB).
pub const MAX_SIZE: u32 = 4096;

/// Per-channel normalisation applied after scaling to `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// CLIP's mean (0.48145466, 0.4578275, 0.40821073) and std
    /// (0.26862954, 0.26130258, 0.27577711): the statistics CLIP was trained with.
    #[default]
    Clip,
    /// ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225),
    /// which FLIP uses even with CLIP weights.
    ImageNet,
    /// Any other statistics.
    Custom {
        /// Per-channel mean (R, G, B).
        mean: [f32; 3],
        /// Per-channel standard deviation (R, G, B).
        std: [f32; 3],
    },
}

impl Normalization {
    /// `(mean, std)` per channel.
    // CLIP's statistics with the digits it publishes, though f32 keeps fewer.
    #[allow(clippy::excessive_precision)]
    pub fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalization::Clip => (
                [0.481_454_66, 0.457_827_5, 0.408_210_73],
                [0.268_629_54, 0.261_302_58, 0.275_777_11],
            ),
            Normalization::ImageNet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Normalization::Custom { mean, std } => (mean, std),
        }
    }
}

/// What the transforms take: decoded pixels, and how Pillow resamples them.
///
/// A file read by [`crate::image_io::load_image`] is a [`DecodedImage`],
/// which knows when Pillow would resize it nearest-neighbour; a
/// [`DynamicImage`] made in memory is resized bicubically.
pub trait TransformInput {
    /// The pixels.
    fn pixels(&self) -> &DynamicImage;
    /// The resampling Pillow's `Image.resize` would apply.
    fn resampling(&self) -> Resampling;
}

impl TransformInput for DynamicImage {
    fn pixels(&self) -> &DynamicImage {
        self
    }
    fn resampling(&self) -> Resampling {
        Resampling::Bicubic
    }
}

impl TransformInput for DecodedImage {
    fn pixels(&self) -> &DynamicImage {
        &self.image
    }
    fn resampling(&self) -> Resampling {
        self.resampling
    }
}

/// The evaluation transform (and the last step of training ones).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClipTransform {
    /// Output side; default 224 (ViT-B/16 at 224 px).
    pub size: u32,
    /// Default [`Normalization::Clip`].
    pub normalization: Normalization,
}

impl Default for ClipTransform {
    fn default() -> Self {
        Self {
            size: 224,
            normalization: Normalization::Clip,
        }
    }
}

impl ClipTransform {
    /// Rejects an output size of 0 or above [`MAX_SIZE`], and statistics
    /// that would divide by zero or spread NaN.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 || self.size > MAX_SIZE {
            return Err(Error::Config(format!(
                "image size must be 1 to {MAX_SIZE} pixels, got {}",
                self.size
            )));
        }
        let (mean, std) = self.normalization.mean_std();
        if !mean.iter().all(|m| m.is_finite()) || !std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(Error::Config(format!(
                "normalization needs finite means and positive finite standard deviations, got \
                 mean {mean:?}, std {std:?}"
            )));
        }
        Ok(())
    }

    /// Resize + centre crop + RGB, before scaling and normalisation: the
    /// `uint8` picture torchvision's `ToTensor` would receive.
    pub fn resize_crop(&self, input: &impl TransformInput) -> Result<RgbImage> {
        self.validate()?;
        let image = input.pixels();
        let size = self.size as usize;
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::Preprocess(format!(
                "a {}x{} image has no pixels",
                image.width(),
                image.height()
            )));
        }
        let (w, h) = (image.width() as usize, image.height() as usize);
        // torchvision `_compute_resized_output_size`: the long side truncates.
        let (out_w, out_h) = if w <= h {
            (size, (size as f64 * h as f64 / w as f64) as usize)
        } else {
            ((size as f64 * w as f64 / h as f64) as usize, size)
        };
        // torchvision `center_crop`: Python's round (half to even) of the margin / 2.
        let left = ((out_w - size) as f64 / 2.0).round_ties_even() as usize;
        let top = ((out_h - size) as f64 / 2.0).round_ties_even() as usize;
        let full = Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        };
        let window = Rect {
            x: left,
            y: top,
            width: size,
            height: size,
        };
        resize_to_rgb(input, full, out_w, out_h, window)
    }

    /// The normalised `(3, size, size)` image, channel-major (`CHW`).
    pub fn apply(&self, image: &impl TransformInput) -> Result<Vec<f32>> {
        Ok(normalize(&self.resize_crop(image)?, self.normalization))
    }

    /// [`ClipTransform::apply`] as a CPU tensor `(3, size, size)`.
    pub fn to_tensor(&self, image: &impl TransformInput) -> Result<Tensor> {
        let size = self.size as usize;
        Ok(Tensor::from_vec(
            self.apply(image)?,
            (3, size, size),
            &Device::Cpu,
        )?)
    }
}

/// Pixels as Pillow holds them for resampling: 1 (L), 2 (La), 3 (RGB) or 4
/// (RGBa) channels, alpha premultiplied.
fn resampling_pixels(image: &DynamicImage) -> (Vec<u8>, usize) {
    match image {
        DynamicImage::ImageLuma8(im) => (im.as_raw().clone(), 1),
        DynamicImage::ImageRgb8(im) => (im.as_raw().clone(), 3),
        DynamicImage::ImageLumaA8(im) => (premultiply::<2>(im.as_raw()), 2),
        DynamicImage::ImageRgba8(im) => (premultiply::<4>(im.as_raw()), 4),
        other if other.color().has_alpha() => (premultiply::<4>(other.to_rgba8().as_raw()), 4),
        other => (other.to_rgb8().into_raw(), 3),
    }
}

/// Resizes `region` of `image` to `out_w x out_h` Pillow's way, keeps `window`,
/// and converts the result to RGB as `Image.convert("RGB")` does.
///
/// When `region` already has the output size, Pillow's `resize` returns the
/// image unchanged (no premultiplied round trip), so the window is cut out
/// and converted directly: alpha is dropped, colour under alpha 0 kept.
/// Nearest-neighbour resizing (palette and 1-bit files) copies pixels, so
/// it needs no premultiplying either: what a palette image's alpha came
/// from (tRNS) is dropped by `convert("RGB")`.
pub(crate) fn resize_to_rgb(
    input: &impl TransformInput,
    region: Rect,
    out_w: usize,
    out_h: usize,
    window: Rect,
) -> Result<RgbImage> {
    let image = input.pixels();
    if input.resampling() == Resampling::Nearest {
        // `to_rgb8` drops alpha without blending, as `convert("RGB")` does.
        let rgb = image.to_rgb8();
        let src = Image8 {
            data: rgb.as_raw(),
            width: rgb.width() as usize,
            channels: 3,
        };
        return rgb_image(resize_nearest(src, region, out_w, out_h, window), window);
    }
    if (out_w, out_h) == (region.width, region.height) {
        return Ok(image
            .crop_imm(
                (region.x + window.x) as u32,
                (region.y + window.y) as u32,
                window.width as u32,
                window.height as u32,
            )
            .to_rgb8());
    }
    let (pixels, channels) = resampling_pixels(image);
    let src = Image8 {
        data: &pixels,
        width: image.width() as usize,
        channels,
    };
    let resized = resize_bicubic(src, region, out_w, out_h, window);
    let rgb: Vec<u8> = match channels {
        1 => resized.iter().flat_map(|&v| [v, v, v]).collect(),
        2 => resized
            .chunks_exact(2)
            .flat_map(|p| {
                let v = unpremultiply(p[0], p[1]);
                [v, v, v]
            })
            .collect(),
        3 => resized,
        _ => resized
            .chunks_exact(4)
            .flat_map(|p| {
                [
                    unpremultiply(p[0], p[3]),
                    unpremultiply(p[1], p[3]),
                    unpremultiply(p[2], p[3]),
                ]
            })
            .collect(),
    };
    rgb_image(rgb, window)
}

/// Packed RGB values as an image of `window`'s size.
fn rgb_image(rgb: Vec<u8>, window: Rect) -> Result<RgbImage> {
    let len = rgb.len();
    RgbImage::from_raw(window.width as u32, window.height as u32, rgb).ok_or_else(|| {
        Error::Preprocess(format!(
            "resampling produced {len} values for a {}x{} window",
            window.width, window.height
        ))
    })
}

/// Pillow's `RGBA -> RGBa` (`MULDIV255`, rounded).
fn premultiply<const C: usize>(raw: &[u8]) -> Vec<u8> {
    let mut out = raw.to_vec();
    for px in out.chunks_exact_mut(C) {
        let alpha = u32::from(px[C - 1]);
        for v in &mut px[..C - 1] {
            let t = u32::from(*v) * alpha + 128;
            *v = (((t >> 8) + t) >> 8) as u8;
        }
    }
    out
}

/// Pillow's `RGBa -> RGBA`: `255 * v / alpha`, clipped; alpha 0 and 255 unchanged.
fn unpremultiply(value: u8, alpha: u8) -> u8 {
    if alpha == 0 || alpha == 255 {
        value
    } else {
        (255 * u32::from(value) / u32::from(alpha)).min(255) as u8
    }
}

/// `ToTensor` + `Normalize` of a packed RGB image, `CHW`, in `f32` as
/// torchvision computes it.
pub(crate) fn normalize(rgb: &RgbImage, normalization: Normalization) -> Vec<f32> {
    let (mean, std) = normalization.mean_std();
    let plane = rgb.width() as usize * rgb.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
        r[i] = (f32::from(px[0]) / 255.0 - mean[0]) / std[0];
        g[i] = (f32::from(px[1]) / 255.0 - mean[1]) / std[1];
        b[i] = (f32::from(px[2]) / 255.0 - mean[2]) / std[2];
    }
    out
}
