//! `detect`: attack probabilities and live/attack decisions for images,
//! directories of images and list files, batched, decoded on all cores.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use fas_data::image_io::is_image_file;
use fas_data::{BadInputPolicy, Loader, Media, Problem, Sample};

use crate::checkpoint::{read_model_checkpoint, resolve_checkpoint};
use crate::data::evaluation_loader;
use crate::detector::Detector;
use crate::error::{Error, Result};

/// Score face images with a trained detector.
///
/// Each PATH is an image, a directory (its images, recursively, sorted), or
/// a list file (.txt: the first column of every non-blank line, relative to
/// --root). Prints per image the attack probability (higher = attack) and
/// the decision at the checkpoint's dev-calibrated threshold, as CSV or,
/// with --json, one JSON object per line. An unreadable image gets an error
/// line and the others go on; the exit status is 1 when any failed.
#[derive(Debug, Parser)]
#[command(name = "detect", version)]
pub struct DetectArgs {
    /// A checkpoint file or a run directory (its best checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// One JSON object per line instead of CSV.
    #[arg(long)]
    pub json: bool,
    /// Decision threshold on P(attack), in [0, 1] [default: the checkpoint's].
    #[arg(long, value_parser = super::parse_probability)]
    pub threshold: Option<f64>,
    /// Directory that list-file entries are relative to [default: the current one].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Batch, threads, device.
    #[command(flatten)]
    pub run: super::RunFlags,
    /// Images, directories or list files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// One input: an image to score, or a problem found while expanding the
/// arguments.
#[derive(Debug, Clone)]
enum Input {
    Image(PathBuf),
    Unusable(PathBuf, String),
}

/// The outcome for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The image, as given or found.
    pub path: PathBuf,
    /// Attack probability, or why there is none.
    pub result: std::result::Result<f64, String>,
}

fn expand(paths: &[PathBuf], root: &Path) -> Vec<Input> {
    let mut inputs = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            if let Err(e) = collect_images(path, &mut found) {
                inputs.push(Input::Unusable(path.clone(), e));
            }
            found.sort();
            inputs.extend(found.into_iter().map(Input::Image));
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
        {
            match std::fs::read(path) {
                Ok(bytes) => {
                    for line in String::from_utf8_lossy(&bytes).lines() {
                        if let Some(entry) = line.split_whitespace().next() {
                            inputs.push(Input::Image(root.join(entry.trim_start_matches('/'))));
                        }
                    }
                }
                Err(e) => inputs.push(Input::Unusable(
                    path.clone(),
                    format!("cannot read list: {e}"),
                )),
            }
        } else {
            inputs.push(Input::Image(path.clone()));
        }
    }
    inputs
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> std::result::Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot list directory: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list directory: {e}"))?;
        let path = entry.path();
        // Follow links to files and directories alike, but never a link
        // back into a directory being listed (a cycle).
        if path.is_dir() {
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            let cycles = is_link
                && std::fs::canonicalize(&path)
                    .ok()
                    .zip(std::fs::canonicalize(dir).ok())
                    .is_some_and(|(target, here)| here.starts_with(target));
            if !cycles {
                collect_images(&path, out)?;
            }
        } else if is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Scores every input in order; unreadable images get their error.
pub fn detect(detector: &Detector, args: &DetectArgs) -> Result<Vec<Detection>> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("."));
    let inputs = expand(&args.paths, &root);
    let images: Vec<(usize, PathBuf)> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| match input {
            Input::Image(path) => Some((i, path.clone())),
            Input::Unusable(..) => None,
        })
        .collect();
    let mut results: Vec<Option<std::result::Result<f64, String>>> = vec![None; inputs.len()];
    for (i, input) in inputs.iter().enumerate() {
        if let Input::Unusable(_, reason) = input {
            results[i] = Some(Err(reason.clone()));
        }
    }
    let samples: Vec<Sample> = images
        .iter()
        .map(|(i, path)| Sample {
            path: path.clone(),
            entry: path.display().to_string(),
            label: None,
            media: Media::Image,
            // The input's position, to put the results back in order.
            video_id: i.to_string(),
            origin: (path.clone(), 0),
        })
        .collect();
    let mut config = evaluation_loader(
        args.run.batch_size,
        args.run.workers,
        detector.transform().size as usize,
    );
    config.on_bad_image = BadInputPolicy::Skip;
    if !samples.is_empty() {
        let loader = Loader::new(samples, config)?;
        let mut next_image = 0;
        for batch in loader.epoch(0) {
            let batch = batch?;
            let scored: Vec<usize> = batch
                .ids
                .iter()
                .map(|id| id.parse().unwrap_or(usize::MAX))
                .collect();
            let probabilities = if batch.is_empty() {
                Vec::new()
            } else {
                detector.attack_probabilities(&batch.images)?
            };
            for (index, p) in scored.iter().zip(probabilities) {
                if let Some(slot) = results.get_mut(*index) {
                    *slot = Some(Ok(p));
                }
            }
            // The skipped images are this batch's inputs that were not
            // scored, in order.
            let mut skipped = batch.skipped.iter();
            let batch_end = (next_image + args.run.batch_size).min(images.len());
            for (index, _) in &images[next_image..batch_end] {
                if results[*index].is_none() {
                    let reason = skipped
                        .next()
                        .map_or_else(|| "not scored".to_string(), |p: &Problem| p.message.clone());
                    results[*index] = Some(Err(reason));
                }
            }
            next_image = batch_end;
        }
    }
    Ok(inputs
        .into_iter()
        .zip(results)
        .map(|(input, result)| {
            let path = match input {
                Input::Image(path) | Input::Unusable(path, _) => path,
            };
            Detection {
                path,
                result: result.unwrap_or_else(|| Err("not scored".into())),
            }
        })
        .collect())
}

/// Runs `detect`, writing to `out`; returns the number of failed inputs.
pub fn run(args: &DetectArgs, out: &mut dyn Write) -> Result<usize> {
    crate::runtime::init();
    if args.run.batch_size == 0 {
        return Err(Error::config("--batch-size", "must be at least 1"));
    }
    let path = resolve_checkpoint(&args.checkpoint)?;
    let checkpoint = read_model_checkpoint(&path)?;
    let device = crate::runtime::device(args.run.device.as_deref())?;
    let detector = Detector::from_checkpoint(&checkpoint, &device)?;
    let threshold = match args.threshold {
        Some(threshold) => Some(threshold),
        None => checkpoint.meta.own_threshold().map_err(|why| {
            Error::checkpoint(
                &path,
                format!("{why}; pass --threshold, or use the run's best.safetensors"),
            )
        })?,
    };
    let detections = detect(&detector, args)?;
    let io = |e| Error::io("writing", "standard output", e);
    if !args.json {
        writeln!(out, "path,attack_probability,decision,error").map_err(io)?;
    }
    let mut failed = 0;
    for d in &detections {
        let path = d.path.to_string_lossy();
        let line = match (&d.result, args.json) {
            (Ok(p), true) => serde_json::json!({
                "path": path,
                "attack_probability": p,
                "attack": threshold.map(|t| *p >= t),
            })
            .to_string(),
            (Err(e), true) => serde_json::json!({ "path": path, "error": e }).to_string(),
            (Ok(p), false) => format!(
                "{},{p},{},",
                csv_field(&path),
                threshold.map_or("", |t| if *p >= t { "attack" } else { "live" })
            ),
            (Err(e), false) => format!("{},,,{}", csv_field(&path), csv_field(e)),
        };
        if d.result.is_err() {
            failed += 1;
        }
        writeln!(out, "{line}").map_err(io)?;
    }
    Ok(failed)
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
