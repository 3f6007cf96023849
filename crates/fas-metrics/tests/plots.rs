//! PNG output of the `plot` feature: ROC, DET and score histograms are valid,
//! drawn 800x600 PNG files, written atomically. Their content was checked by
//! eye when written.
#![cfg(feature = "plot")]

use fas_metrics::{read_score_file, MetricsError, Polarity, ScoreSet};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Writes all three plots for the committed test score file (generator:
/// scripts/fas_metrics/gen_fixtures.py) into a temporary directory.
#[test]
fn writes_valid_pngs() {
    let scores = read_score_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scores/test_crlf.txt"
    ))
    .unwrap();
    let set = ScoreSet::from_samples(&scores, Polarity::HigherIsBonafide).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = fas_metrics::plot::write_all(&set, &dir.path().join("plots")).unwrap();
    assert_eq!(written.len(), 3);
    for path in written {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() > 1000,
            "{} is {} bytes",
            path.display(),
            bytes.len()
        );
        assert_eq!(bytes[..8], PNG_SIGNATURE, "{}", path.display());
        // IHDR: width and height, big-endian, at bytes 16..24.
        assert_eq!(
            bytes[16..24],
            [0, 0, 3, 32, 0, 0, 2, 88],
            "{} is 800x600",
            path.display()
        );
        // Drawn, not a blank canvas: the curves, axes and bars give many
        // colours (a white or black image has one).
        let image = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let mut colours: Vec<[u8; 3]> = image.pixels().map(|p| p.0).collect();
        colours.sort_unstable();
        colours.dedup();
        assert!(
            colours.len() > 2,
            "{} has {} colours",
            path.display(),
            colours.len()
        );
    }
    // Written through temporary files renamed into place: none is left.
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["det.png", "roc.png", "scores.png"]);
}

/// The command line's `--plot-dir` writes the three PNGs after the report
/// and lists them on the log stream, keeping stdout for the report.
#[test]
fn cli_plot_dir_writes_pngs() {
    let test = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scores/test_crlf.txt"
    );
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    let args = [
        "--test".into(),
        test.into(),
        "--higher".into(),
        "bonafide".into(),
        "--json".into(),
        "--plot-dir".into(),
        plots.clone().into_os_string(),
    ];
    let (mut out, mut log) = (Vec::new(), Vec::new());
    fas_metrics::cli::run(args, &mut out, &mut log).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out).expect("stdout is only JSON");
    assert!(report["acer"].is_number());
    let log = String::from_utf8(log).unwrap();
    for name in ["roc.png", "det.png", "scores.png"] {
        let path = plots.join(name);
        assert!(path.is_file(), "{}", path.display());
        assert!(
            log.contains(&format!("wrote {}\n", path.display())),
            "{log}"
        );
    }
}

/// Extreme and degenerate score ranges (near +-f64::MAX, all equal, a span
/// of one ulp) are drawn in well under a second instead of spinning on
/// the axis ticks.
#[test]
fn extreme_score_ranges_are_drawn_quickly() {
    let labels = [
        fas_metrics::Label::Bonafide,
        fas_metrics::Label::Bonafide,
        fas_metrics::Label::attack(),
        fas_metrics::Label::attack(),
    ];
    let tiny = 1.0f64 + f64::EPSILON;
    for scores in [
        [-1e308, -5e307, 5e307, 1e308],
        [0.5, 0.5, 0.5, 0.5],
        [1.0, 1.0, tiny, tiny],
        [-1e-300, 0.0, 1e-300, 2e-300],
    ] {
        let set = ScoreSet::new(&scores, &labels, Polarity::HigherIsAttack).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let start = std::time::Instant::now();
        fas_metrics::plot::write_all(&set, dir.path()).unwrap();
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{scores:?} took {:?}",
            start.elapsed()
        );
    }
}

/// A `--plot-dir` that cannot hold the plots (an existing file, a path
/// under one, a plot name taken by a directory) is refused before any
/// metric is computed or printed, with an error naming the path in the
/// way; `write_all` refuses it the same way, leaving the file as it was.
#[test]
fn plot_dirs_that_cannot_hold_plots_are_refused_up_front() {
    let test = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scores/test_crlf.txt"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("good.txt");
    std::fs::copy(test, &file).unwrap();
    let taken = dir.path().join("taken");
    std::fs::create_dir_all(taken.join("det.png")).unwrap();
    let cases = [
        (file.clone(), file.clone(), "is not a directory"),
        (file.join("plots"), file.clone(), "is not a directory"),
        (
            taken.clone(),
            taken.join("det.png"),
            "is a directory, not a plot to replace",
        ),
    ];
    let scores = read_score_file(test).unwrap();
    let set = ScoreSet::from_samples(&scores, Polarity::HigherIsBonafide).unwrap();
    for (plot_dir, in_the_way, problem) in cases {
        let message = format!(
            "cannot write plots to {}: {} exists and {problem}",
            plot_dir.display(),
            in_the_way.display()
        );
        let args = [
            "--test".into(),
            test.into(),
            "--higher".into(),
            "bonafide".into(),
            "--plot-dir".into(),
            plot_dir.clone().into_os_string(),
        ];
        let (mut out, mut log) = (Vec::new(), Vec::new());
        let err = fas_metrics::cli::run(args, &mut out, &mut log).unwrap_err();
        assert!(
            matches!(
                err,
                fas_metrics::cli::CliError::Metrics(MetricsError::PlotPathTaken { .. })
            ),
            "{err}"
        );
        assert_eq!(err.to_string(), message);
        assert!(out.is_empty() && log.is_empty(), "output before the error");

        let err = fas_metrics::plot::write_all(&set, &plot_dir).unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(test).unwrap());
    assert!(!taken.join("roc.png").exists(), "nothing drawn");
}
