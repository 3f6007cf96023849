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

/// PNG files whose colour type changes what Pillow does with them: palette
/// and 1-bit images are resized nearest-neighbour whatever the filter asked
/// for; a tRNS chunk on a grey or RGB file is metadata that `convert("RGB")`
/// drops (no premultiplied resize); 16-bit RGB, RGBA and grey + alpha are
/// opened keeping each sample's high byte; 2-bit grey is scaled to 0..255.
const PILLOW_MODE_INPUTS: [&str; 13] = [
    "palette_120x90",
    "palette16_33x47",
    // 1 bit per index.
    "palette2_37x23",
    "palette_trns_75x110",
    // Several alpha levels in tRNS, which convert("RGB") ignores.
    "palette_alpha_41x29",
    "bilevel_101x77",
    "grey_trns_80x100",
    "grey2_45x31",
    "rgb_trns_100x70",
    "rgb16_70x52",
    "rgb16_trns_70x52",
    "rgba16_70x52",
    "la16_70x52",
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

/// The same comparison for files whose PNG colour type decides Pillow's
/// mode ([`PILLOW_MODE_INPUTS`]): exact too, at a downscale (64) and an
/// upscale (224).
#[test]
fn png_colour_types_are_resized_as_pillow_opens_them() -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for size in [224u32, 64] {
        for name in PILLOW_MODE_INPUTS {
            let (max, differing) = compare(&format!("{name}.png"), size)?;
            if (max, differing) != (0, 0) {
                failures.push(format!(
                    "{name} at {size}: {differing} values differ, by up to {max}/255"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Training's random resized crop resizes a palette file nearest-neighbour
/// too, as torchvision's `RandomResizedCrop` on the PIL image does. Scale
/// (1, 1) and ratio 4/3 leave one crop of the 120x90 input, the whole
/// image, squashed to 32x32: `palette_120x90.crop32.png` from the generator.
#[test]
fn random_resized_crop_of_a_palette_file_is_nearest_as_in_torchvision() -> anyhow::Result<()> {
    use fas_data::{AugmentConfig, RandomResizedCrop};
    use rand::SeedableRng;
    let config = AugmentConfig {
        crop: Some(RandomResizedCrop {
            scale: (1.0, 1.0),
            ratio: (4.0 / 3.0, 4.0 / 3.0),
        }),
        hflip_probability: 0.0,
        color_jitter: None,
    };
    // Normalised back to 0..255, so the output reads as the uint8 image.
    let transform = ClipTransform {
        size: 32,
        normalization: Normalization::Custom {
            mean: [0.0; 3],
            std: [1.0 / 255.0; 3],
        },
    };
    let image = load_image(&fixture("palette_120x90.png"))?;
    let ours = config.apply(
        &image,
        &transform,
        &mut rand_chacha::ChaCha8Rng::seed_from_u64(3),
    )?;
    let expected = image::open(fixture("palette_120x90.crop32.png"))?.to_rgb8();
    let mut differing = 0;
    for (i, px) in expected.pixels().enumerate() {
        for c in 0..3 {
            if (ours[c * 32 * 32 + i] - f32::from(px[c])).abs() > 1e-3 {
                differing += 1;
            }
        }
    }
    assert_eq!(differing, 0, "{differing} of 3072 values differ");
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
