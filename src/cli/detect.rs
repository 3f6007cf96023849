//! `detect`: attack probabilities and live/attack decisions for images,
//! directories of images and list files, batched, decoded on all cores.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use fas_data::image_io::{is_image_file, is_unsupported_image};
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
///
/// Give face crops like the training images (the detector finds no face:
/// a whole photo or a frame with a small face gives a meaningless score).
#[derive(Debug, Parser)]
#[command(name = "detect", version)]
pub struct DetectArgs {
    /// A checkpoint file or a run directory (its best checkpoint; its latest
    /// step checkpoint while it has no best yet).
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
    let mut listed = std::collections::HashSet::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            let walked = collect_images(path, &mut found, &mut listed);
            // A folder an earlier argument already listed adds nothing (its
            // images are in); one that could not be listed says so itself.
            let said = found.iter().any(|input| matches!(input, Input::Image(_)))
                || found
                    .iter()
                    .any(|input| matches!(input, Input::Unusable(p, _) if p == path));
            if walked && !said {
                found.push(Input::Unusable(
                    path.clone(),
                    "holds no JPEG or PNG image".into(),
                ));
            }
            found.sort_by(|a, b| a.path().cmp(b.path()));
            inputs.extend(found);
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

impl Input {
    fn path(&self) -> &Path {
        match self {
            Input::Image(path) | Input::Unusable(path, _) => path,
        }
    }
}

/// The images under `dir`, following links, each real directory listed
/// once (`listed` holds those done): a link back into a directory being
/// walked, or two links to one directory, would otherwise repeat its images
/// (without end, for a cycle). A subdirectory that cannot be listed, a
/// broken link and an image format that is not decoded are inputs of their
/// own with the reason; the walk goes on. Whether `dir` was walked now
/// (not listed before).
fn collect_images(
    dir: &Path,
    out: &mut Vec<Input>,
    listed: &mut std::collections::HashSet<PathBuf>,
) -> bool {
    let here = match std::fs::canonicalize(dir) {
        Ok(here) => here,
        Err(e) => {
            out.push(Input::Unusable(
                dir.to_path_buf(),
                format!("cannot resolve: {e}"),
            ));
            return true;
        }
    };
    if !listed.insert(here) {
        return false;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            out.push(Input::Unusable(
                dir.to_path_buf(),
                format!("cannot list directory: {e}"),
            ));
            return true;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                out.push(Input::Unusable(
                    dir.to_path_buf(),
                    format!("cannot list directory: {e}"),
                ));
                continue;
            }
        };
        // `metadata` follows links: a link to a directory is a directory.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                collect_images(&path, out, listed);
            }
            Ok(_) if is_image_file(&path) => out.push(Input::Image(path)),
            Ok(_) if is_unsupported_image(&path) => out.push(Input::Unusable(
                path,
                "image format not decoded (JPEG and PNG only); convert it to score it".into(),
            )),
            Ok(_) => {}
            Err(e) if is_image_file(&path) || is_unsupported_image(&path) => {
                out.push(Input::Unusable(path, format!("cannot read: {e}")))
            }
            Err(_) => {}
        }
    }
    true
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
    crate::runtime::note(&format!("device: {}", crate::runtime::describe(&device)));
    let detector = Detector::from_checkpoint(&checkpoint, &device)?;
    let threshold = match args.threshold {
        Some(threshold) => Some(threshold),
        None => checkpoint.own_threshold("pass --threshold")?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn images_and_problems(inputs: &[Input]) -> (Vec<String>, Vec<String>) {
        let mut images = Vec::new();
        let mut problems = Vec::new();
        for input in inputs {
            match input {
                Input::Image(path) => images.push(path.display().to_string()),
                Input::Unusable(path, why) => problems.push(format!("{}: {why}", path.display())),
            }
        }
        (images, problems)
    }

    /// Links between two folders in both directions (a cycle) and a second
    /// link to one of them: each real folder is listed once, so each image
    /// is one input, and the walk ends.
    #[cfg(unix)]
    #[test]
    fn linked_folders_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("one.jpg"), b"x").unwrap();
        std::fs::write(b.join("two.png"), b"x").unwrap();
        std::os::unix::fs::symlink("../b", a.join("to-b")).unwrap();
        std::os::unix::fs::symlink("../b", a.join("to-b-again")).unwrap();
        std::os::unix::fs::symlink("../a", b.join("to-a")).unwrap();
        let (images, problems) =
            images_and_problems(&expand(std::slice::from_ref(&a), Path::new(".")));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(images.len(), 2, "{images:?}");
        assert!(images[0].ends_with("a/one.jpg"), "{images:?}");
        assert!(images[1].ends_with("two.png"), "{images:?}");
    }

    /// A folder given again, or inside one given before, adds nothing and
    /// fails nothing: its images are already in, once.
    #[test]
    fn a_folder_given_twice_is_listed_once_without_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("live");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("one.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("two.png"), b"x").unwrap();
        let root = dir.path().to_path_buf();
        let (images, problems) =
            images_and_problems(&expand(&[root.clone(), sub, root], Path::new(".")));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(images.len(), 2, "{images:?}");
    }

    /// A folder holding only formats that are not decoded, or nothing, is
    /// a failed input with the reason, not an empty success; an undecoded
    /// image beside good ones is reported and the good ones are kept.
    #[test]
    fn folders_without_usable_images_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let (webp, empty, mixed) = (
            dir.path().join("webp"),
            dir.path().join("empty"),
            dir.path().join("mixed"),
        );
        for folder in [&webp, &empty, &mixed] {
            std::fs::create_dir_all(folder).unwrap();
        }
        std::fs::write(webp.join("face.webp"), b"x").unwrap();
        std::fs::write(mixed.join("face.bmp"), b"x").unwrap();
        std::fs::write(mixed.join("face.jpg"), b"x").unwrap();
        std::fs::write(mixed.join("notes.txt"), b"x").unwrap();
        let (images, problems) =
            images_and_problems(&expand(&[webp, empty, mixed], Path::new(".")));
        assert_eq!(images.len(), 1, "{images:?}");
        assert!(images[0].ends_with("mixed/face.jpg"));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("webp: holds no JPEG or PNG image"));
        assert!(problems[1].contains("face.webp: image format not decoded"));
        assert!(problems[2].contains("empty: holds no JPEG or PNG image"));
        assert!(problems[3].contains("face.bmp: image format not decoded"));
    }
}
