//! CLIP preprocessing parity with PIL + torchvision.
//!
//! Expected values come from `scripts/fas_data/gen_preprocess_fixtures.py`
//! (Pillow 13.0.0, torchvision 0.29.2; see `tests/fixtures/preprocess/manifest.json`),
//! never from this crate. PNG inputs must match exactly; the JPEG input only
//! within the measured decoder tolerance.

use candle_core::Device;
use fas_data::image_io::load_image;
use fas_data::{ClipTransform, Normalization};
use std::path::PathBuf;

/// Lossless (PNG) inputs: the same decoded pixels as PIL's, so the output
/// must be exact.
const PNG_INPUTS: [&str; 9] = [
    "gradient_112x112",
    "noise_150x100",
    "checker_97x250",
    "tall_224x301",
    "upscale_40x23",
    "grey_150x120",
    "rgba_130x180",
    "la_90x60",
    // No resize at 224: alpha is dropped without premultiplying.
    "rgba_224x260",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess")
        .join(name)
}

/// Resize + centre crop + RGB of `file` at `size` against
/// `<name>.expected<size>.png`: (largest difference in 1/255, values that differ).
fn compare(file: &str, size: u32) -> anyhow::Result<(i32, usize)> {
    let name = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
    let image = load_image(&fixture(file))?;
    let ours = ClipTransform {
        size,
        ..Default::default()
    }
    .resize_crop(&image)?;
    let expected = image::open(fixture(&format!("{name}.expected{size}.png")))?.to_rgb8();
    assert_eq!(ours.dimensions(), expected.dimensions(), "{name} at {size}");
    let diffs: Vec<i32> = ours
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .collect();
    let max = diffs.iter().copied().max().unwrap_or(0);
    Ok((max, diffs.iter().filter(|d| **d > 0).count()))
}

/// Resize + centre crop + RGB against `<name>.expected{224,64}.png` written by
/// `scripts/fas_data/gen_preprocess_fixtures.py` (torchvision `Resize(S, BICUBIC)`,
/// `CenterCrop(S)`, `convert("RGB")` on the PIL image). Given PIL's decoded
/// pixels (PNG), the port of Pillow's fixed-point resampler is exact.
#[test]
fn resize_crop_matches_pil_torchvision() -> anyhow::Result<()> {
    for size in [224u32, 64] {
        for name in PNG_INPUTS {
            let (max, differing) = compare(&format!("{name}.png"), size)?;
            assert_eq!(
                (max, differing),
                (0, 0),
                "{name} at {size}: {differing} values differ, by up to {max}/255"
            );
        }
    }
    Ok(())
}

/// A 4:2:0 JPEG (Pillow, quality 90): zune-jpeg and PIL's libjpeg-turbo
/// decode it slightly differently (chroma upsampling, IDCT rounding), so
/// only a tolerance holds. Measured on this fixture: up to 4/255 at 224 px
/// (19,510 of 150,528 values differ, 13 %) and 2/255 at 64 px (1,695 of
/// 12,288); the bounds are exactly these maxima, so a decoder change that
/// moves further from PIL fails here. See the module docs of
/// `fas_data::preprocess` for other measurements.
#[test]
fn jpeg_420_is_within_the_documented_tolerance() -> anyhow::Result<()> {
    for (size, bound) in [(224u32, 4), (64, 2)] {
        let (max, differing) = compare("face_200x160_q90.jpg", size)?;
        eprintln!("face_200x160_q90.jpg at {size}: max {max}/255, {differing} values differ");
        assert!(
            max <= bound,
            "at {size}: max difference {max}/255 > {bound}/255"
        );
    }
    Ok(())
}

/// `ToTensor` + `Normalize` against `normalized32.safetensors` written by
/// `scripts/fas_data/gen_preprocess_fixtures.py` (the full CLIP transform at 32 px
/// of one input, CLIP statistics; ImageNet statistics for `<name>.imagenet`).
/// Normalisation is plain arithmetic on the exact `u8` image, so one input suffices.
#[test]
fn normalized_tensor_matches_torchvision() -> anyhow::Result<()> {
    let expected =
        candle_core::safetensors::load(fixture("normalized32.safetensors"), &Device::Cpu)?;
    let cases = [
        ("gradient_112x112", Normalization::Clip),
        ("gradient_112x112.imagenet", Normalization::ImageNet),
    ];
    for (key, normalization) in cases {
        let name = key.split('.').next().unwrap_or(key);
        let image = load_image(&fixture(&format!("{name}.png")))?;
        let ours = ClipTransform {
            size: 32,
            normalization,
        }
        .to_tensor(&image)?;
        let theirs = &expected[key];
        assert_eq!(ours.dims(), theirs.dims(), "{key}");
        let max = (ours - theirs)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(max < 1e-5, "{key}: max difference {max}");
    }
    Ok(())
}
