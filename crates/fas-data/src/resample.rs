//! Pillow-compatible resampling of 8-bit images: antialiased bicubic, and
//! the nearest-neighbour scaling Pillow forces on palette and 1-bit images.
//!
//! A port of Pillow's `libImaging/Resample.c` (`ImagingResampleInner` with the
//! bicubic filter, a = -0.5): separable convolution in two passes (in
//! Pillow 13's order, see [`vertical_first`]), the filter support widened by
//! the downscale factor (this is the antialiasing), coefficients normalised
//! per output pixel and quantised to 22-bit fixed point, each pass rounded and
//! clipped to `u8`. It reproduces Pillow 13's `Image.resize(size,
//! Image.BICUBIC)` bit for bit (see `tests/preprocess_parity.rs`).
//!
//! Unlike Pillow it computes only a requested window of the output, so
//! "resize, then centre crop" never produces the pixels the crop throws away;
//! every output pixel is computed exactly as in the full resize.

/// Pillow's `PRECISION_BITS` for 8-bit images (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rect {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
}

/// An 8-bit image with `channels` interleaved channels, rows packed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Image8<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub channels: usize,
}

/// Pillow's bicubic kernel, a = -0.5 (`bicubic_filter` in Resample.c).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps for a range of output pixels along one axis
/// (`precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    /// Per output pixel: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Row-major `bounds.len() x ksize` weights.
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    /// Taps mapping input `[0, in_size)` onto `out_size` pixels, for outputs `[first, first + count)`.
    fn new(in_size: usize, out_size: usize, first: usize, count: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = SUPPORT * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(count);
        let mut weights = vec![0i32; count * ksize];
        // Pillow multiplies by the reciprocal; dividing can round differently.
        let inv_filter_scale = 1.0 / filter_scale;
        let mut k = vec![0f64; ksize];
        for (i, out) in (first..first + count).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; the clamp makes that a floor here.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, w) in k.iter_mut().enumerate().take(taps) {
                *w = bicubic((x as f64 + xmin as f64 - center + 0.5) * inv_filter_scale);
                total += *w;
            }
            for x in 0..taps {
                let w = if total != 0.0 { k[x] / total } else { k[x] };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                weights[i * ksize + x] = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            bounds.push((xmin, taps));
        }
        Self {
            bounds,
            weights,
            ksize,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + len])
    }
}

/// Pillow's `clip8`: round-half-up was folded into the accumulator's start value.
#[inline(always)]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes `region` of `src` to `out_width x out_height` with Pillow's bicubic
/// filter and returns only `window` of the result (packed, `src.channels` channels).
///
/// Equals Pillow's `src.crop(region).resize((out_width, out_height), BICUBIC).crop(window)`.
pub(crate) fn resize_bicubic(
    src: Image8<'_>,
    region: Rect,
    out_width: usize,
    out_height: usize,
    window: Rect,
) -> Vec<u8> {
    match src.channels {
        1 => resize_channels::<1>(src, region, out_width, out_height, window),
        2 => resize_channels::<2>(src, region, out_width, out_height, window),
        3 => resize_channels::<3>(src, region, out_width, out_height, window),
        _ => resize_channels::<4>(src, region, out_width, out_height, window),
    }
}

/// Pillow's nearest-neighbour resize (`_resize` with `NEAREST`, which runs
/// `ImagingScaleAffine` in `libImaging/Geometry.c`), of `region` of `src` to
/// `out_width x out_height`, returning only `window` (packed, `src.channels`
/// channels).
///
/// Equals Pillow's `src.crop(region).resize((out_width, out_height),
/// NEAREST).crop(window)`. Pillow steps through the source in `f64`: the
/// first sample sits at half a step, each next one a step further (the
/// running sum, not `(x + 0.5) * step`, whose rounding can differ), and
/// truncates it to an index.
pub(crate) fn resize_nearest(
    src: Image8<'_>,
    region: Rect,
    out_width: usize,
    out_height: usize,
    window: Rect,
) -> Vec<u8> {
    /// Source index per output index along one axis (`COORD` of the running
    /// position); `None` past the source, which Pillow fills with 0.
    fn positions(
        in_size: usize,
        out_size: usize,
        first: usize,
        count: usize,
    ) -> Vec<Option<usize>> {
        let step = in_size as f64 / out_size as f64;
        let mut at = step * 0.5;
        let mut out = Vec::with_capacity(count);
        for x in 0..first + count {
            if x >= first {
                // `at` only grows from a positive start, so truncation is `COORD`.
                let index = at as usize;
                out.push((index < in_size).then_some(index));
            }
            at += step;
        }
        out
    }
    let channels = src.channels;
    let columns = positions(region.width, out_width, window.x, window.width);
    let rows = positions(region.height, out_height, window.y, window.height);
    let stride = src.width * channels;
    let mut out = vec![0u8; window.width * window.height * channels];
    for (row, out_row) in rows
        .iter()
        .zip(out.chunks_exact_mut(window.width * channels))
    {
        let Some(y) = row else { continue };
        let line = &src.data[(region.y + y) * stride..];
        for (column, px) in columns.iter().zip(out_row.chunks_exact_mut(channels)) {
            if let Some(x) = column {
                let at = (region.x + x) * channels;
                px.copy_from_slice(&line[at..at + channels]);
            }
        }
    }
    out
}

fn resize_channels<const C: usize>(
    src: Image8<'_>,
    region: Rect,
    out_width: usize,
    out_height: usize,
    window: Rect,
) -> Vec<u8> {
    let stride = src.width * C;
    let origin = region.y * stride + region.x * C;
    let need_horizontal = out_width != region.width;
    let need_vertical = out_height != region.height;
    let horizontal =
        need_horizontal.then(|| Taps::new(region.width, out_width, window.x, window.width));
    let vertical =
        need_vertical.then(|| Taps::new(region.height, out_height, window.y, window.height));
    match (horizontal, vertical) {
        (None, None) => {
            let mut out = Vec::with_capacity(window.width * window.height * C);
            for row in window.y..window.y + window.height {
                let from = origin + row * stride + window.x * C;
                out.extend_from_slice(&src.data[from..from + window.width * C]);
            }
            out
        }
        (Some(h), None) => {
            let first = origin + window.y * stride;
            horizontal_pass::<C>(&src.data[first..], stride, window.height, &h, 0)
        }
        (None, Some(v)) => vertical_pass::<C>(
            &src.data[origin + window.x * C..],
            stride,
            window.width,
            &v,
            0,
        ),
        (Some(h), Some(v)) if vertical_first(region, out_width, out_height) => {
            // Only the input columns the horizontal taps read.
            let (first, end) = h.span();
            let temp =
                vertical_pass::<C>(&src.data[origin + first * C..], stride, end - first, &v, 0);
            horizontal_pass::<C>(&temp, (end - first) * C, window.height, &h, first)
        }
        (Some(h), Some(v)) => {
            // Only the input rows the vertical taps read (Pillow's `ybox`).
            let (first, end) = v.span();
            let temp = horizontal_pass::<C>(
                &src.data[origin + first * stride..],
                stride,
                end - first,
                &h,
                0,
            );
            vertical_pass::<C>(&temp, window.width * C, window.width, &v, first)
        }
    }
}

/// Pillow 13's pass order (python-pillow/Pillow#9549): vertical first when the
/// height shrinks by more than twice as many pixels as the width; before
/// Pillow 13 the horizontal pass always came first. The order changes a few
/// pixel values by rounding, so it must match for bit-exact output.
fn vertical_first(region: Rect, out_width: usize, out_height: usize) -> bool {
    let shrink_h = region.height as i64 - out_height as i64;
    let shrink_w = region.width as i64 - out_width as i64;
    shrink_h > 0 && shrink_h > 2 * shrink_w
}

impl Taps {
    /// Input indices `[first, end)` read by any of these taps.
    fn span(&self) -> (usize, usize) {
        let first = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(first);
        (first, end)
    }
}

/// Horizontal convolution of `rows` rows of `src` (row pitch `stride` bytes);
/// `src` column 0 is input index `shift` of the taps.
fn horizontal_pass<const C: usize>(
    src: &[u8],
    stride: usize,
    rows: usize,
    taps: &Taps,
    shift: usize,
) -> Vec<u8> {
    let out_len = taps.bounds.len();
    let mut out = vec![0u8; rows * out_len * C];
    for (row, out_line) in out.chunks_exact_mut(out_len * C).enumerate() {
        let line = &src[row * stride..];
        for (ox, out_px) in out_line.chunks_exact_mut(C).enumerate() {
            let (start, weights) = taps.of(ox);
            let pixels = &line[(start - shift) * C..][..weights.len() * C];
            let mut acc = [HALF; C];
            for (px, &w) in pixels.chunks_exact(C).zip(weights) {
                for c in 0..C {
                    acc[c] += i32::from(px[c]) * w;
                }
            }
            for c in 0..C {
                out_px[c] = clip8(acc[c]);
            }
        }
    }
    out
}

/// Vertical convolution over `width` pixels of each row of `src` (row pitch
/// `stride` bytes); `src` row 0 is input index `shift` of the taps.
fn vertical_pass<const C: usize>(
    src: &[u8],
    stride: usize,
    width: usize,
    taps: &Taps,
    shift: usize,
) -> Vec<u8> {
    let row_len = width * C;
    let mut out = vec![0u8; taps.bounds.len() * row_len];
    let mut acc = vec![0i32; row_len];
    for (oy, out_line) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, weights) = taps.of(oy);
        acc.fill(HALF);
        for (dy, &w) in weights.iter().enumerate() {
            let line = &src[(start + dy - shift) * stride..][..row_len];
            for (a, &p) in acc.iter_mut().zip(line) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_line.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rect(x: usize, y: usize, width: usize, height: usize) -> Rect {
        Rect {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn identity_size_copies_window() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
        let src = Image8 {
            data: &data,
            width: 4,
            channels: 3,
        };
        let full = rect(0, 0, 4, 3);
        let window = rect(1, 1, 2, 2);
        let out = resize_bicubic(src, full, 4, 3, window);
        assert_eq!(out, [15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32]);
    }

    /// Pillow `Image.resize((4, 3), NEAREST)` of a 1-channel 5x2 image whose
    /// value is `10 * y + x`, derived by hand from `ImagingScaleAffine`
    /// (columns at 5/4 * (0.5, 1.5, 2.5, 3.5) = 0.625, 1.875, 3.125, 4.375 ->
    /// 0, 1, 3, 4; rows at 2/3 * (0.5, 1.5, 2.5) -> 0, 1, 1) and checked
    /// against Pillow 13.0.0, as is the cut-out region below. The window
    /// keeps columns 1..3 of rows 1..2.
    #[test]
    fn nearest_follows_pillows_running_position() {
        let data: Vec<u8> = (0..2)
            .flat_map(|y| (0..5).map(move |x| 10 * y + x))
            .collect();
        let src = Image8 {
            data: &data,
            width: 5,
            channels: 1,
        };
        let region = rect(0, 0, 5, 2);
        let all = rect(0, 0, 4, 3);
        assert_eq!(
            resize_nearest(src, region, 4, 3, all),
            [0, 1, 3, 4, 10, 11, 13, 14, 10, 11, 13, 14]
        );
        let window = rect(1, 1, 2, 2);
        assert_eq!(resize_nearest(src, region, 4, 3, window), [11, 13, 11, 13]);
        // A region is cut out first: columns 1..5 of row 1 to 2x1.
        let part = rect(1, 1, 4, 1);
        let two = rect(0, 0, 2, 1);
        assert_eq!(resize_nearest(src, part, 2, 1, two), [12, 14]);
        // 2 -> 7 pixels: the fourth sample's running position is
        // 0.9999999999999999 (index 0), where (3 + 0.5) * 2/7 gives 1.0.
        // Pillow 13.0.0: [0, 0, 0, 0, 1, 1, 1].
        let pair = Image8 {
            data: &[0, 1],
            width: 2,
            channels: 1,
        };
        assert_eq!(
            resize_nearest(pair, rect(0, 0, 2, 1), 7, 1, rect(0, 0, 7, 1)),
            [0, 0, 0, 0, 1, 1, 1]
        );
    }

    #[test]
    fn constant_image_stays_constant() {
        let data = vec![200u8; 50 * 30];
        let src = Image8 {
            data: &data,
            width: 50,
            channels: 1,
        };
        let region = rect(0, 0, 50, 30);
        let out = resize_bicubic(src, region, 17, 9, rect(0, 0, 17, 9));
        assert!(out.iter().all(|&v| v == 200));
    }
}
