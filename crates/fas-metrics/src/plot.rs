//! ROC, DET and per-class score-histogram PNGs (feature `plot`), drawn with
//! plotters' bitmap backend and pure-Rust glyph rendering (ab_glyph).
//!
//! Text needs a TrueType font read at run time: `$FAS_METRICS_FONT`, else
//! DejaVu Sans or Liberation Sans from the usual system paths. Without one the
//! plots are drawn without any text (curves, axes and grid only).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{MetricsError, Result};
use crate::label::Polarity;
use crate::roc::{auc, IntermediatePoints, RocCurve};
use crate::score_set::ScoreSet;
use atomic_io::read_regular_file;

const SIZE: (u32, u32) = (800, 600);
const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// The most bytes read from a font file. DejaVu Sans is 0.7 MB and large
/// CJK collections some 20 to 30 MB; the cap keeps a wrong
/// `$FAS_METRICS_FONT` (a video, `/dev/zero`) from taking all memory.
const MAX_FONT_BYTES: u64 = 64 << 20;
/// The files [`write_all`] writes into its directory.
const PLOT_FILE_NAMES: [&str; 3] = ["roc.png", "det.png", "scores.png"];
const BONAFIDE_COLOR: RGBColor = RGBColor(0, 128, 0);
const ATTACK_COLOR: RGBColor = RGBColor(200, 30, 30);

/// Whether a font is registered as "sans-serif"; looked up once per process.
fn text_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let from_env = std::env::var_os("FAS_METRICS_FONT").map(PathBuf::from);
        let candidates = from_env
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from));
        for path in candidates {
            if let Some(bytes) = font_bytes(&path) {
                // plotters keeps fonts for the whole process (`&'static`); this
                // one allocation happens once, guarded by the OnceLock.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// The font file at `path`, if it is a regular file of at most
/// [`MAX_FONT_BYTES`]: a FIFO would block the plots, a device never end.
fn font_bytes(path: &Path) -> Option<Vec<u8>> {
    read_regular_file(path, MAX_FONT_BYTES).ok()
}

fn plot_error(path: &Path, error: impl std::fmt::Display) -> MetricsError {
    MetricsError::Plot {
        file: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// Draws with `draw` on an 800 x 600 bitmap in memory and writes it to
/// `path` as a PNG, atomically (temporary file, fsync, rename): a run killed
/// while plotting leaves the previous plot or the new one, never a cut file.
fn write_png(
    path: &Path,
    draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    let mut pixels = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    draw(BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area())?;
    // Encoded in memory: the encoder finishes the file (IEND) and a
    // buffered writer flushes in their drops, which cannot report a full
    // disk; `fs::write` can.
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&pixels, SIZE.0, SIZE.1, image::ExtendedColorType::Rgb8)
            .map_err(|e| plot_error(path, e))?;
    }
    atomic_io::write_atomically(path, |tmp| std::fs::write(tmp, &png))
        .map_err(|e| plot_error(path, e))
}

/// Fills `root` white and starts a chart on it with the plots' margin, and,
/// when `text` can be drawn, `caption` and room for the axis labels.
fn chart_on<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    text: bool,
    caption: impl AsRef<str>,
    path: &Path,
) -> Result<ChartBuilder<'a, 'b, BitMapBackend<'b>>> {
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut builder = ChartBuilder::on(root);
    builder.margin(20);
    if text {
        builder
            .caption(caption, ("sans-serif", 24))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    Ok(builder)
}

/// Axis names of the ROC curve's rates under `polarity`.
fn roc_axis_names(polarity: Polarity) -> (&'static str, &'static str) {
    match polarity {
        Polarity::HigherIsAttack => ("FPR = BPCER", "TPR = 1 - APCER"),
        Polarity::HigherIsBonafide => ("FPR = APCER", "TPR = 1 - BPCER"),
    }
}

/// ROC curve (FPR against TPR, chance diagonal) with its AUC in the caption.
pub fn write_roc(set: &ScoreSet, path: &Path) -> Result<()> {
    let roc = RocCurve::new(set, IntermediatePoints::Drop);
    let text = text_available();
    write_png(path, |root| {
        let mut builder = chart_on(&root, text, format!("ROC, AUC = {:.4}", auc(set)), path)?;
        let mut chart = builder
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(|e| plot_error(path, e))?;
        let (x_name, y_name) = roc_axis_names(set.polarity());
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc(x_name).y_desc(y_name);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| plot_error(path, e))?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(|e| plot_error(path, e))?;
        let points = roc.fpr().iter().copied().zip(roc.tpr().iter().copied());
        chart
            .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))
    })
}

/// Inverse standard normal CDF (Acklam's rational approximation, relative
/// error < 1.2e-9): the DET curve's axis transform.
fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// DET curve: APCER against BPCER on normal-deviate axes (ISO/IEC 30107-3
/// style), rates clipped to [0.05 %, 99.5 %].
pub fn write_det(set: &ScoreSet, path: &Path) -> Result<()> {
    const RANGE: (f64, f64) = (0.0005, 0.995);
    const TICKS: [f64; 10] = [0.001, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95];
    let roc = RocCurve::new(set, IntermediatePoints::Drop);
    let (z_low, z_high) = (probit(RANGE.0), probit(RANGE.1));
    let text = text_available();
    write_png(path, |root| {
        let mut builder = chart_on(&root, text, "DET", path)?;
        let mut chart = builder
            .build_cartesian_2d(z_low..z_high, z_low..z_high)
            .map_err(|e| plot_error(path, e))?;
        // The probit axes get their grid and labels at round percentages, drawn
        // here: plotters' automatic ticks would fall at round deviates.
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh().x_labels(0).y_labels(0);
        if text {
            mesh.x_desc("APCER").y_desc("BPCER");
        }
        mesh.draw().map_err(|e| plot_error(path, e))?;
        for tick in TICKS {
            let z = probit(tick);
            let grid = [[(z, z_low), (z, z_high)], [(z_low, z), (z_high, z)]];
            for line in grid {
                chart
                    .draw_series(LineSeries::new(line, BLACK.mix(0.15)))
                    .map_err(|e| plot_error(path, e))?;
            }
            if text {
                let label = format!("{}%", 100.0 * tick);
                let style = ("sans-serif", 13).into_font().color(&BLACK);
                let (x, y) = chart.backend_coord(&(z, z_low));
                root.draw(&Text::new(label.clone(), (x - 12, y + 6), style.clone()))
                    .map_err(|e| plot_error(path, e))?;
                let (x, y) = chart.backend_coord(&(z_low, z));
                root.draw(&Text::new(label, (x - 42, y - 7), style))
                    .map_err(|e| plot_error(path, e))?;
            }
        }
        let clip = |rate: f64| probit(rate.clamp(RANGE.0, RANGE.1));
        let points = roc.fpr().iter().zip(roc.tpr()).map(|(&fpr, &tpr)| {
            let (apcer, bpcer) = set.polarity().apcer_bpcer(fpr, 1.0 - tpr);
            (clip(apcer), clip(bpcer))
        });
        chart
            .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?;
        root.present().map_err(|e| plot_error(path, e))
    })
}

/// Per-class score histograms (50 bins over the score range, each class
/// normalised to fractions so imbalanced sets compare), bona fide green,
/// attacks red, overlaid.
pub fn write_score_histograms(set: &ScoreSet, path: &Path) -> Result<()> {
    const BINS: usize = 50;
    let (bonafide, attack) = (set.bonafide_scores(), set.attack_scores());
    let low = bonafide[0].min(attack[0]);
    let high = bonafide[bonafide.len() - 1].max(attack[attack.len() - 1]);
    // Halves keep the span finite even for scores near +-f64::MAX.
    let half_span = high / 2.0 - low / 2.0;
    // A score range the axis cannot be drawn over (overflowing, or too
    // narrow for distinct tick labels) is drawn as [0, 1], its ends named
    // in the caption; plotters would otherwise spin on the tick marks.
    let plain = half_span > 0.0
        && half_span < 1e12
        && half_span > 1e-9 * low.abs().max(high.abs()).max(1e-300);
    let position = |s: f64| {
        if half_span > 0.0 {
            (s / 2.0 - low / 2.0) / half_span
        } else {
            0.0
        }
    };
    let fractions = |scores: &[f64]| {
        let mut counts = [0usize; BINS];
        for &s in scores {
            let bin = ((position(s) * BINS as f64) as usize).min(BINS - 1);
            counts[bin] += 1;
        }
        counts.map(|c| c as f64 / scores.len() as f64)
    };
    let (axis_low, width) = if plain {
        (low, 2.0 * half_span / BINS as f64)
    } else {
        (0.0, 1.0 / BINS as f64)
    };
    let (bonafide_bins, attack_bins) = (fractions(bonafide), fractions(attack));
    let tallest = bonafide_bins
        .iter()
        .chain(&attack_bins)
        .copied()
        .fold(0.0, f64::max);
    let text = text_available();
    write_png(path, |root| {
        let mut builder = chart_on(
            &root,
            text,
            if plain {
                format!("Scores ({})", set.polarity())
            } else {
                format!("Scores ({}), axis 0..1 = {low:e}..{high:e}", set.polarity())
            },
            path,
        )?;
        let mut chart = builder
            .build_cartesian_2d(
                axis_low..axis_low + width * BINS as f64,
                0.0..tallest * 1.05,
            )
            .map_err(|e| plot_error(path, e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("score").y_desc("fraction of class");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| plot_error(path, e))?;
        for (bins, color, name) in [
            (bonafide_bins, BONAFIDE_COLOR, "bona fide"),
            (attack_bins, ATTACK_COLOR, "attack"),
        ] {
            let bars = bins.into_iter().enumerate().map(move |(i, fraction)| {
                let left = axis_low + width * i as f64;
                Rectangle::new(
                    [(left, 0.0), (left + width, fraction)],
                    color.mix(0.45).filled(),
                )
            });
            let series = chart.draw_series(bars).map_err(|e| plot_error(path, e))?;
            if text {
                series.label(name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled())
                });
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
        root.present().map_err(|e| plot_error(path, e))
    })
}

/// Errors with [`MetricsError::PlotPathTaken`] when [`write_all`] could not
/// write into `dir`: `dir`, or the nearest existing path above it, is not a
/// directory, or `roc.png`, `det.png` or `scores.png` in it is a directory.
/// Cheap, and touches nothing: callers check before computing what they
/// plot, so a bad directory fails at once, not after the work.
pub fn check_plot_dir(dir: &Path) -> Result<()> {
    let taken = |path: &Path, problem| MetricsError::PlotPathTaken {
        dir: dir.display().to_string(),
        path: path.display().to_string(),
        problem,
    };
    // `create_dir_all` makes the missing part below the nearest existing path.
    for path in dir.ancestors().filter(|path| !path.as_os_str().is_empty()) {
        match std::fs::metadata(path) {
            Ok(metadata) if metadata.is_dir() => break,
            Ok(_) => return Err(taken(path, "is not a directory")),
            // Nothing there (yet): look further up.
            Err(_) if std::fs::symlink_metadata(path).is_err() => continue,
            // A symlink to nothing: `create_dir_all` cannot create through it.
            Err(_) => return Err(taken(path, "is a broken symlink")),
        }
    }
    for name in PLOT_FILE_NAMES {
        let path = dir.join(name);
        if path.is_dir() {
            return Err(taken(&path, "is a directory, not a plot to replace"));
        }
    }
    Ok(())
}

/// Writes `roc.png`, `det.png` and `scores.png` into `dir` (created if
/// missing) and returns their paths. Errors as [`check_plot_dir`] before
/// drawing anything, and with [`MetricsError::Plot`] when drawing or
/// writing a plot fails.
pub fn write_all(set: &ScoreSet, dir: &Path) -> Result<Vec<PathBuf>> {
    check_plot_dir(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| plot_error(dir, e))?;
    let [roc, det, scores] = PLOT_FILE_NAMES.map(|name| dir.join(name));
    write_roc(set, &roc)?;
    write_det(set, &det)?;
    write_score_histograms(set, &scores)?;
    Ok(vec![roc, det, scores])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of the standard normal quantile (Abramowitz & Stegun table 26.1).
    #[test]
    fn probit_matches_normal_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_985),
            (0.01, -2.326_347_874),
            (0.001, -3.090_232_306),
        ] {
            assert!((probit(p) - z).abs() < 1e-8, "probit({p})");
        }
    }

    /// A `$FAS_METRICS_FONT` that is a FIFO or a device is skipped at once:
    /// reading it would block the plots or fill memory.
    #[cfg(unix)]
    #[test]
    fn font_paths_that_are_no_regular_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, zero) = (dir.path().join("font.ttf"), dir.path().join("zero.ttf"));
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo {}", fifo.display());
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for path in [fifo, zero] {
            // A read blocked on the FIFO fails the test after 30 s.
            let (sender, receiver) = std::sync::mpsc::channel();
            let shown = path.display().to_string();
            std::thread::spawn(move || sender.send(font_bytes(&path)));
            let read = receiver.recv_timeout(std::time::Duration::from_secs(30));
            assert!(read.expect("still reading after 30 s").is_none(), "{shown}");
        }
        let font = dir.path().join("font.bin");
        std::fs::write(&font, b"glyphs").unwrap();
        assert_eq!(font_bytes(&font).as_deref(), Some(&b"glyphs"[..]));
    }
}
