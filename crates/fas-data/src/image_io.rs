//! Reading images from disk, with errors that say which file and why.

use crate::error::{Error, Result};
use crate::jpeg_segments::segment_at;
use image::{DynamicImage, Luma, Rgb};
use std::path::Path;

/// File extensions treated as images when scanning folders (case-insensitive):
/// the formats the decoder is built with.
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// True when `path` has an image extension.
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Image formats found in face datasets that this reader does not decode.
const UNSUPPORTED_IMAGES: [&str; 8] = ["webp", "bmp", "gif", "tif", "tiff", "jfif", "heic", "avif"];

/// True when `path` has the extension of an image format this reader does
/// not decode (WebP, BMP, GIF, TIFF, HEIC, AVIF): worth reporting when a
/// folder is scanned, where other files are passed over.
pub fn is_unsupported_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| UNSUPPORTED_IMAGES.iter().any(|u| u.eq_ignore_ascii_case(e)))
}

/// Reads and decodes one image (JPEG or PNG; the format comes from the bytes,
/// not the extension).
///
/// The JPEG decoder is lenient and would return a half-grey picture for a
/// file cut short; like PIL (without `LOAD_TRUNCATED_IMAGES`) we reject JPEGs
/// whose scans do not reach the end-of-image marker. Data after that marker
/// (camera trailers) is ignored, as PIL ignores it. [`verify_image`] checks
/// more, at the cost of a second entropy decode.
pub fn load_image(path: &Path) -> Result<DecodedImage> {
    read_and_decode(path).map_err(|message| Error::Image {
        path: path.to_path_buf(),
        message,
    })
}

/// Reads and decodes `path`; the error is a message without the path.
fn read_and_decode(path: &Path) -> std::result::Result<DecodedImage, String> {
    decode_image(&read_bytes(path)?)
}

fn read_bytes(path: &Path) -> std::result::Result<Vec<u8>, String> {
    use crate::bounded_read::{read_bounded, ReadFailure};
    read_bounded(path, MAX_IMAGE_FILE_BYTES, "an image of a face dataset").map_err(|failure| {
        match failure {
            ReadFailure::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "file not found".to_string()
            }
            ReadFailure::Io(e) => format!("cannot read: {e}"),
            ReadFailure::Refused(reason) => reason,
        }
    })
}

/// The largest image file read (256 MiB).
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// Reads and [verifies](verify_image) `path`; the error is a message
/// without the path.
pub(crate) fn read_and_verify(path: &Path) -> std::result::Result<DecodedImage, String> {
    let bytes = read_bytes(path)?;
    verify_image(&bytes)
}

/// [`decode_image`] after walking the entropy-coded data of baseline and
/// extended JPEGs block by block, so damaged scan data is refused where its
/// structure shows it (`jpeg_scan.rs` lists what that finds and what no
/// check can) instead of decoding to wrong pixels. The walk costs about
/// one more entropy decode (a dataset check of detailed 384 px files takes
/// 1.8x as long, `docs/benchmarks.md`), so the dataset check
/// ([`crate::FileCheck::Decode`], `inspect_dataset`) runs it once and the
/// training loader does not.
pub fn verify_image(bytes: &[u8]) -> std::result::Result<DecodedImage, String> {
    check_markers(bytes)?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        crate::jpeg_scan::check(bytes).map_err(|fault| format!("corrupt JPEG: {fault}"))?;
    }
    decode_unchecked(bytes)
}

/// Decodes image bytes; the error is a message for [`Error::Image`].
pub fn decode_image(bytes: &[u8]) -> std::result::Result<DecodedImage, String> {
    check_markers(bytes)?;
    decode_unchecked(bytes)
}

fn decode_unchecked(bytes: &[u8]) -> std::result::Result<DecodedImage, String> {
    let image = image::load_from_memory(bytes).map_err(|e| format!("cannot decode: {e}"))?;
    Ok(as_pillow_opens(bytes, image))
}

/// How Pillow's `Image.resize` resamples an image, which its mode decides:
/// `P` (palette) and `1` (bilevel) images are always resized
/// nearest-neighbour, whatever filter is asked for; every other mode with
/// the filter asked for (CLIP asks for bicubic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resampling {
    /// The requested filter: bicubic in CLIP's transform.
    #[default]
    Bicubic,
    /// Nearest-neighbour, for palette and 1-bit files.
    Nearest,
}

/// A decoded image file as PIL holds it for CLIP's transform: 8-bit pixels
/// (L, LA, RGB or RGBA) and the resampling its mode gets.
///
/// The decoder expands what PIL keeps as metadata or modes, so the file's
/// own header decides ([`load_image`] and [`decode_image`] do this):
///
/// - palette and 1-bit PNGs decode to RGB(A) / grey here, but PIL keeps them
///   as `P` and `1` and resizes them nearest-neighbour;
/// - a tRNS chunk on a grey or RGB PNG becomes an alpha channel here, but
///   PIL opens `L` and `RGB` (the transparency only in `info`), resizes the
///   colours without premultiplying and `convert("RGB")` ignores it: the
///   alpha channel is dropped;
/// - 16-bit RGB, RGBA and grey + alpha PNGs open in PIL as 8-bit modes that
///   keep each sample's high byte (the decoder would round): the high byte
///   is kept.
///
/// A 16-bit grey PNG is the one case not reproduced: PIL opens it as
/// `I;16`, and `convert("RGB")` then saturates every value above 255 to
/// white; here it keeps the high byte, as for the other 16-bit files.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    /// The pixels.
    pub image: DynamicImage,
    /// What Pillow's resize does with them.
    pub resampling: Resampling,
}

impl From<DynamicImage> for DecodedImage {
    /// An image without a file behind it, resized as PIL resizes an image of
    /// its mode (`L`, `LA`, `RGB`, `RGBA`: with the filter asked for).
    fn from(image: DynamicImage) -> Self {
        Self {
            image,
            resampling: Resampling::Bicubic,
        }
    }
}

/// The pixels, for reading them (size, colour type, conversions).
impl std::ops::Deref for DecodedImage {
    type Target = DynamicImage;
    fn deref(&self) -> &DynamicImage {
        &self.image
    }
}

/// The PNG header's bit depth and colour type, if `bytes` is a PNG.
fn png_depth_and_colour(bytes: &[u8]) -> Option<(u8, u8)> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1A, b'\n'];
    // Signature, then the IHDR chunk: length, "IHDR", width, height, bit
    // depth (byte 24), colour type (byte 25). The decoder has accepted the
    // file, so IHDR is where the format puts it.
    if !bytes.starts_with(&SIGNATURE) || bytes.get(12..16) != Some(b"IHDR") {
        return None;
    }
    Some((*bytes.get(24)?, *bytes.get(25)?))
}

/// `image` (decoded from `bytes`) as PIL would open the file ([`DecodedImage`]).
fn as_pillow_opens(bytes: &[u8], image: DynamicImage) -> DecodedImage {
    let Some((depth, colour)) = png_depth_and_colour(bytes) else {
        return image.into();
    };
    const GREY: u8 = 0;
    const RGB: u8 = 2;
    const PALETTE: u8 = 3;
    let image = match (colour, image) {
        // Alpha from a tRNS chunk, which PIL's L and RGB modes do not hold.
        // (Conversion to fewer channels drops alpha without blending.)
        (GREY, image @ DynamicImage::ImageLumaA8(_)) => image.to_luma8().into(),
        (RGB, image @ DynamicImage::ImageRgba8(_)) => image.to_rgb8().into(),
        (_, image) => high_bytes(image, colour == GREY || colour == RGB),
    };
    let resampling = if colour == PALETTE || (colour == GREY && depth == 1) {
        Resampling::Nearest
    } else {
        Resampling::Bicubic
    };
    DecodedImage { image, resampling }
}

/// A 16-bit image reduced to 8 bits by keeping each sample's high byte, as
/// PIL's `;16B` raw modes do (alpha dropped when `drop_alpha`: it came from
/// a tRNS chunk); an 8-bit image unchanged.
fn high_bytes(image: DynamicImage, drop_alpha: bool) -> DynamicImage {
    use image::{GrayAlphaImage, GrayImage, LumaA, RgbImage, Rgba, RgbaImage};
    let hi = |v: u16| (v >> 8) as u8;
    let (w, h) = (image.width(), image.height());
    match image {
        DynamicImage::ImageLuma16(im) => {
            GrayImage::from_fn(w, h, |x, y| Luma([hi(im.get_pixel(x, y)[0])])).into()
        }
        DynamicImage::ImageLumaA16(im) if drop_alpha => {
            GrayImage::from_fn(w, h, |x, y| Luma([hi(im.get_pixel(x, y)[0])])).into()
        }
        DynamicImage::ImageLumaA16(im) => GrayAlphaImage::from_fn(w, h, |x, y| {
            let [l, a] = im.get_pixel(x, y).0;
            LumaA([hi(l), hi(a)])
        })
        .into(),
        DynamicImage::ImageRgb16(im) => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b] = im.get_pixel(x, y).0;
            Rgb([hi(r), hi(g), hi(b)])
        })
        .into(),
        DynamicImage::ImageRgba16(im) if drop_alpha => RgbImage::from_fn(w, h, |x, y| {
            let [r, g, b, _] = im.get_pixel(x, y).0;
            Rgb([hi(r), hi(g), hi(b)])
        })
        .into(),
        DynamicImage::ImageRgba16(im) => RgbaImage::from_fn(w, h, |x, y| {
            let [r, g, b, a] = im.get_pixel(x, y).0;
            Rgba([hi(r), hi(g), hi(b), hi(a)])
        })
        .into(),
        other => other,
    }
}

/// The cheap checks of [`decode_image`]: an empty file, and the JPEG marker
/// structure against truncation, stray markers and lying headers.
fn check_markers(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.is_empty() {
        return Err("empty file".to_string());
    }
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let layout = jpeg_layout(bytes);
        if let Some(fault) = layout.corruption {
            return Err(format!("corrupt JPEG: {fault}"));
        }
        if !layout.reaches_eoi {
            // An end-of-image marker at the very end that the marker walk
            // never reached means the segments in between are damaged.
            if bytes.ends_with(&[0xFF, 0xD9]) {
                return Err(
                    "corrupt JPEG: its marker segments do not lead to the end-of-image marker \
                     at the end of the file"
                        .to_string(),
                );
            }
            return Err(
                "truncated JPEG (the data ends before the end-of-image marker)".to_string(),
            );
        }
        // In a sequential Huffman JPEG every 8x8 block of the luma plane
        // costs at least two bits of scan data (a DC code and an
        // end-of-block code); in a progressive one at least one (its DC
        // code: one end-of-band run can cover thousands of blocks' AC
        // data). A header claiming more blocks than the scans can hold
        // describes pixels that are not in the file, which the lenient
        // decoder would fill with grey. Arithmetic coding has no such
        // floor.
        let bits_per_block = match layout.frame_marker {
            Some(0xC0 | 0xC1) => 2,
            Some(0xC2) => 1,
            _ => 0,
        };
        if let Some((width, height)) = layout.frame {
            let blocks = u64::from(width).div_ceil(8) * u64::from(height).div_ceil(8);
            if (layout.scan_bytes as u64) * 8 < bits_per_block * blocks {
                return Err(format!(
                    "corrupt JPEG: its header claims {width}x{height} pixels but its scans hold \
                     only {} bytes, too few for that many",
                    layout.scan_bytes
                ));
            }
        }
    }
    Ok(())
}

/// What [`jpeg_layout`] finds in a JPEG's marker structure.
struct JpegLayout {
    /// The end-of-image marker comes before the data runs out.
    reaches_eoi: bool,
    /// Width and height from the (first) start-of-frame header.
    frame: Option<(u16, u16)>,
    /// That header's marker (`C0` baseline, `C1` extended, `C2`
    /// progressive, ...).
    frame_marker: Option<u8>,
    /// Bytes of entropy-coded scan data.
    scan_bytes: usize,
    /// A marker that cannot occur where it stands: a reserved marker, a
    /// start-of-frame after the image data began, or restart markers out of
    /// their cyclic order. Overwritten or shifted scan data shows up this
    /// way whenever it holds an `FF` byte; damage without one decodes to
    /// wrong pixels silently (no decoder can tell).
    corruption: Option<String>,
}

/// Walks the JPEG marker segments after SOI, skipping each scan's
/// entropy-coded data (where `FF 00` is a stuffed byte and `FF D0`-`FF D7`
/// are restart markers), up to the end-of-image marker. Bytes after it are
/// not looked at.
fn jpeg_layout(bytes: &[u8]) -> JpegLayout {
    let mut layout = JpegLayout {
        reaches_eoi: false,
        frame: None,
        frame_marker: None,
        scan_bytes: 0,
        corruption: None,
    };
    let mut i = 2;
    let mut after_scan = false;
    while let Some(segment) = segment_at(bytes, i) {
        let marker = segment.marker;
        let is_frame = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if after_scan && (matches!(marker, 0x02..=0xBF) || is_frame) {
            layout.corruption = Some(format!(
                "marker FF {marker:02X} at byte {} cannot follow image data (damaged scan)",
                segment.at
            ));
            return layout;
        }
        if marker == 0xD9 {
            layout.reaches_eoi = true;
            return layout;
        }
        // Start of frame (baseline, extended, progressive, lossless, ...;
        // not DHT C4, JPG C8, DAC CC): precision, height, width.
        if is_frame && layout.frame.is_none() {
            if let Some(h) = segment.body.get(1..5) {
                let height = u16::from_be_bytes([h[0], h[1]]);
                let width = u16::from_be_bytes([h[2], h[3]]);
                layout.frame = Some((width, height));
                layout.frame_marker = Some(marker);
            }
        }
        i = segment.next;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is neither a
            // stuffed zero nor a restart marker; restart markers count
            // RST0, RST1, ..., RST7, RST0, ... from each scan's start.
            let start = i;
            let mut next_restart = 0u8;
            loop {
                let Some(offset) = bytes
                    .get(i..)
                    .and_then(|b| b.iter().position(|&v| v == 0xFF))
                else {
                    return layout;
                };
                i += offset;
                match bytes.get(i + 1) {
                    None => return layout,
                    Some(0x00) => i += 2,
                    // Fill bytes may precede any marker (T.81 B.1.1.2).
                    Some(0xFF) => i += 1,
                    Some(&rst @ 0xD0..=0xD7) => {
                        if rst - 0xD0 != next_restart {
                            layout.corruption = Some(format!(
                                "restart marker RST{} at byte {i} where RST{next_restart} was due \
                                 (damaged scan)",
                                rst - 0xD0
                            ));
                            return layout;
                        }
                        next_restart = (next_restart + 1) % 8;
                        i += 2;
                    }
                    Some(_) => break,
                }
            }
            layout.scan_bytes += i - start;
            after_scan = true;
        }
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decodable_formats_are_images() {
        assert!(is_image_file(Path::new("a/B.JPG")));
        assert!(is_image_file(Path::new("a.png")));
        assert!(!is_image_file(Path::new("a.bmp")));
        assert!(!is_image_file(Path::new("a.webp")));
    }

    #[test]
    fn eoi_is_found_past_stuffed_bytes_and_restart_markers_only() {
        // SOI, an APP segment holding FF D9, SOS, entropy data with a stuffed
        // FF 00 and a restart marker, EOI, then a trailer.
        let head = [0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, 0xFF, 0xD9];
        let scan = [
            0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56,
        ];
        let whole: Vec<u8> = [&head[..], &scan, &[0xFF, 0xD9], b"trailer"].concat();
        assert!(jpeg_layout(&whole).reaches_eoi);
        let cut: Vec<u8> = [&head[..], &scan].concat();
        assert!(
            !jpeg_layout(&cut).reaches_eoi,
            "the FF D9 inside the APP segment does not count"
        );
    }

    /// SOI, SOS, entropy data with the given restart markers, EOI.
    fn with_restarts(markers: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12];
        for &m in markers {
            bytes.extend([0x34, 0xFF, m]);
        }
        bytes.extend([0x56, 0xFF, 0xD9]);
        bytes
    }

    #[test]
    fn restart_markers_must_cycle_in_order() {
        let cycle: Vec<u8> = (0..10).map(|k| 0xD0 + k % 8).collect();
        let layout = jpeg_layout(&with_restarts(&cycle));
        assert!(layout.reaches_eoi && layout.corruption.is_none());
        let skipped = jpeg_layout(&with_restarts(&[0xD0, 0xD2]));
        let fault = skipped.corruption.expect("RST2 after RST0 is a fault");
        assert!(
            fault.contains("RST2") && fault.contains("RST1 was due"),
            "{fault}"
        );
    }

    #[test]
    fn reserved_or_frame_markers_after_image_data_are_faults() {
        for marker in [0x47, 0x02, 0xBF, 0xC0, 0xC2] {
            let mut bytes = with_restarts(&[]);
            let eoi = bytes.len() - 2;
            bytes.splice(eoi..eoi, [0xFF, marker, 0x00, 0x02]);
            let layout = jpeg_layout(&bytes);
            let fault = layout.corruption.unwrap_or_default();
            assert!(
                fault.contains(&format!("FF {marker:02X}")),
                "{marker:02X}: {fault:?}"
            );
        }
        // What may follow a scan: tables, restart interval, comments, APPn,
        // another scan, the end.
        for marker in [0xC4, 0xDB, 0xDD, 0xFE, 0xE1, 0xDA] {
            let mut bytes = with_restarts(&[]);
            let eoi = bytes.len() - 2;
            bytes.splice(eoi..eoi, [0xFF, marker, 0x00, 0x02]);
            let layout = jpeg_layout(&bytes);
            assert!(
                layout.corruption.is_none(),
                "{marker:02X}: {:?}",
                layout.corruption
            );
        }
    }
}
