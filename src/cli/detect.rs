//! `detect`: attack probabilities and live/attack decisions for images,
//! directories of images and list files, batched, decoded on all cores.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use fas_data::image_io::{is_image_file, is_unsupported_image};
use fas_data::protocol::MAX_LIST_BYTES;
use fas_data::{BadInputPolicy, Loader, Media, Problem, Sample};

use crate::checkpoint::{read_model_checkpoint, resolve_checkpoint};
use crate::data::evaluation_loader;
use crate::detector::Detector;
use crate::error::{Error, Result};

/// Score face images with a trained detector.
///
/// Each PATH is an image, a directory (its images, recursively, sorted), or
/// a list file (.txt: the first column of every non-blank line; an entry is
/// relative to --root, except an absolute path to an existing file, which is
/// kept). Prints per image the attack probability (higher = attack) and the
/// decision at the checkpoint's dev-calibrated threshold, as CSV or, with
/// --json, one JSON object per line. An unreadable image gets an error line (naming the list
/// file and line of a listed one) and the others go on; the exit status is
/// 1 when any failed.
///
/// Give face crops like the training images (the detector finds no face:
/// a whole photo or a frame with a small face gives a meaningless score).
/// An image with a side under 16 px is scored with a warning on standard
/// error.
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
    /// Directory that list-file entries are relative to (a leading / dropped, as in
    /// FA3-CLIP's lists, unless the entry is an existing file) [default: the current one].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Batch, threads, device.
    #[command(flatten)]
    pub run: super::RunFlags,
    /// Images, directories or list files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// An image with a side shorter than this many pixels cannot be a face
/// crop: it is scored, as any image, with a warning that the score means
/// nothing.
pub const MIN_FACE_CROP_SIDE: u32 = 16;

/// One input: an image to score, or a problem found while expanding the
/// arguments.
#[derive(Debug, Clone)]
enum Input {
    /// An image; for a list entry, the list file and 1-based line naming it.
    Image(PathBuf, Option<(PathBuf, usize)>),
    Unusable(PathBuf, String),
}

/// The outcome for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The image, as given or found.
    pub path: PathBuf,
    /// Attack probability, or why there is none.
    pub result: std::result::Result<f64, String>,
    /// Why the score, though given, means nothing (an image too small to be
    /// a face crop); [`run`] prints it on standard error.
    pub warning: Option<String>,
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
            let said = found.iter().any(|input| matches!(input, Input::Image(..)))
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
            match read_list(path, root) {
                Ok(listed) => inputs.extend(listed),
                Err(reason) => inputs.push(Input::Unusable(path.clone(), reason)),
            }
        } else {
            inputs.push(Input::Image(path.clone(), None));
        }
    }
    inputs
}

impl Input {
    fn path(&self) -> &Path {
        match self {
            Input::Image(path, _) | Input::Unusable(path, _) => path,
        }
    }
}

/// The images `list` names: the first column of each line that is not
/// blank. Like the protocol lists (`fas_data::protocol::read_list`): a
/// byte-order mark starting a line (the file, or one of several
/// concatenated) is not part of the entry, CRLF endings work, and there is
/// no comment syntax. An entry is joined onto `root`, with a leading `/`
/// dropped as the protocol lists' readers drop it (FA3-CLIP writes its
/// entries so), unless it is an absolute path to an existing file (a list
/// that `find /data -name '*.jpg'` wrote): that is kept, as is one that
/// names no file either way (its error names it as written). The error says why
/// the list cannot be read.
fn read_list(list: &Path, root: &Path) -> std::result::Result<Vec<Input>, String> {
    let bytes = read_list_bytes(list)?;
    let mut inputs = Vec::new();
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        // The `\r` of a CRLF ending is whitespace.
        if let Some(entry) = String::from_utf8_lossy(line).split_whitespace().next() {
            let origin = (list.to_path_buf(), index + 1);
            let relative = root.join(entry.trim_start_matches('/'));
            let path = match Path::new(entry) {
                // Kept where it names a file, or where the root does not
                // either (the error then names the entry as written).
                absolute
                    if absolute.is_absolute() && (absolute.is_file() || !relative.is_file()) =>
                {
                    absolute.to_path_buf()
                }
                _ => relative,
            };
            inputs.push(Input::Image(path, Some(origin)));
        }
    }
    Ok(inputs)
}

/// The bytes of `list`, a regular file of at most [`MAX_LIST_BYTES`] (the
/// protocol lists' limit): a FIFO would block, a device never end, and a
/// file far larger is not a list of images (an archive, a video).
fn read_list_bytes(list: &Path) -> std::result::Result<Vec<u8>, String> {
    atomic_io::read_regular_file(list, MAX_LIST_BYTES).map_err(|refused| match refused {
        atomic_io::ReadRefused::Io(e) => format!("cannot read list: {e}"),
        atomic_io::ReadRefused::NotRegular(kind) => {
            format!("cannot read list: not a regular file but {kind}; give a file")
        }
        atomic_io::ReadRefused::TooLarge => format!(
            "cannot read list: more than {MAX_LIST_BYTES} bytes, the most a list of images is \
             read at; is it the right file?"
        ),
    })
}

/// The warning for a scored image with a side under [`MIN_FACE_CROP_SIDE`],
/// from its header. None when its size cannot be read (it was just read to
/// be scored, so this is a file changed since).
fn small_image_warning(path: &Path) -> Option<String> {
    // Only a regular file's header is read (it was one when it was scored).
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let (width, height) = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    (width.min(height) < MIN_FACE_CROP_SIDE).then(|| {
        format!(
            "{width}x{height} px, too small to be a face crop (a side under \
             {MIN_FACE_CROP_SIDE} px): its score means nothing"
        )
    })
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
            Ok(_) if is_image_file(&path) => out.push(Input::Image(path, None)),
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

/// Scores every input in order; unreadable images get their error (with
/// the list file and line of a listed one), images too small to be face
/// crops a warning.
pub fn detect(detector: &Detector, args: &DetectArgs) -> Result<Vec<Detection>> {
    let root = args.root.clone().unwrap_or_else(|| PathBuf::from("."));
    let inputs = expand(&args.paths, &root);
    let images: Vec<(usize, PathBuf)> = inputs
        .iter()
        .enumerate()
        .filter_map(|(i, input)| match input {
            Input::Image(path, _) => Some((i, path.clone())),
            Input::Unusable(..) => None,
        })
        .collect();
    let mut results: Vec<Option<std::result::Result<f64, String>>> = vec![None; inputs.len()];
    let mut warnings: Vec<Option<String>> = vec![None; inputs.len()];
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
            origin: match &inputs[*i] {
                Input::Image(_, Some(listed)) => listed.clone(),
                _ => (path.clone(), 0),
            },
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
                    warnings[*index] = small_image_warning(inputs[*index].path());
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
        .zip(results.into_iter().zip(warnings))
        .map(|(input, (result, warning))| {
            let result = result.unwrap_or_else(|| Err("not scored".into()));
            let (path, result) = match input {
                Input::Image(path, Some((list, line))) => {
                    let result = result
                        .map_err(|e| format!("list file {} line {line}: {e}", list.display()));
                    (path, result)
                }
                Input::Image(path, None) | Input::Unusable(path, _) => (path, result),
            };
            Detection {
                path,
                result,
                warning,
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
        if let Some(warning) = &d.warning {
            crate::runtime::note(&format!("warning: {path}: {warning}"));
        }
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
    use std::time::Duration;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn images_and_problems(inputs: &[Input]) -> (Vec<String>, Vec<String>) {
        let mut images = Vec::new();
        let mut problems = Vec::new();
        for input in inputs {
            match input {
                Input::Image(path, _) => images.push(path.display().to_string()),
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

    /// `expand` of `paths` on another thread; `None` when it has not
    /// returned within 30 s (reading a FIFO list blocked for ever).
    fn expand_in_time(paths: Vec<PathBuf>) -> Option<Vec<Input>> {
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = send.send(expand(&paths, Path::new(".")));
        });
        receive.recv_timeout(Duration::from_secs(30)).ok()
    }

    /// The one problem `expand` found with a list that cannot be read.
    fn refusal(list: &Path) -> String {
        let inputs = expand_in_time(vec![list.to_path_buf()])
            .unwrap_or_else(|| panic!("reading {} did not end", list.display()));
        let (images, problems) = images_and_problems(&inputs);
        assert!(images.is_empty(), "{images:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        problems[0].clone()
    }

    /// A FIFO given as a list is refused at once, not opened (which blocks
    /// until a writer comes).
    #[cfg(unix)]
    #[test]
    fn a_fifo_list_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("faces.txt");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let problem = refusal(&fifo);
        assert!(
            problem.contains("faces.txt: cannot read list: not a regular file"),
            "{problem}"
        );
    }

    /// A list linked to `/dev/zero` is refused before reading, not read
    /// until memory runs out.
    #[cfg(unix)]
    #[test]
    fn a_list_linked_to_a_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.txt");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let problem = refusal(&zero);
        assert!(
            problem.contains("zero.txt: cannot read list: not a regular file"),
            "{problem}"
        );
    }

    /// A list larger than [`MAX_LIST_BYTES`] (a sparse file: nothing is
    /// written) is refused with the limit, not read whole.
    #[test]
    fn a_list_over_the_size_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.txt");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(MAX_LIST_BYTES + 1)
            .unwrap();
        let problem = refusal(&huge);
        assert!(
            problem.contains(&format!(
                "huge.txt: cannot read list: more than {MAX_LIST_BYTES} bytes"
            )),
            "{problem}"
        );
    }

    /// A byte-order mark starting the list, or a line of lists
    /// concatenated, is not part of the entry.
    #[test]
    fn a_byte_order_mark_is_not_part_of_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("faces.txt");
        std::fs::write(
            &list,
            "\u{feff}first.jpg\r\nsecond.jpg\r\n\u{feff}third.jpg\n",
        )
        .unwrap();
        let (images, problems) = images_and_problems(&expand(&[list], Path::new("data")));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            images,
            ["data/first.jpg", "data/second.jpg", "data/third.jpg"]
        );
    }

    /// An absolute list entry naming an existing file is kept; other entries
    /// are joined onto the root, a leading `/` dropped (FA3-CLIP's protocol
    /// lists), unless they name no file there either (then the entry as
    /// written is what the error names); blank lines (CRLF ones too) and
    /// further columns are ignored.
    #[test]
    fn absolute_list_entries_of_existing_files_stay_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let absolute = dir.path().join("elsewhere/face.jpg");
        assert!(absolute.is_absolute());
        std::fs::create_dir_all(absolute.parent().unwrap()).unwrap();
        std::fs::write(&absolute, "x").unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("z.jpg"), "x").unwrap();
        let missing = dir.path().join("nowhere/gone.jpg");
        let list = dir.path().join("faces.txt");
        let text = format!(
            "{}\r\n\r\n   \r\nrel/y.jpg 1\r\n\n/z.jpg\n{}\n\n",
            absolute.display(),
            missing.display()
        );
        std::fs::write(&list, text).unwrap();
        let (images, problems) = images_and_problems(&expand(&[list], &root));
        assert!(problems.is_empty(), "{problems:?}");
        let under_root = |name: &str| root.join(name).display().to_string();
        assert_eq!(
            images,
            [
                absolute.display().to_string(),
                under_root("rel/y.jpg"),
                under_root("z.jpg"),
                missing.display().to_string(),
            ]
        );
    }

    /// A detector of `ClipConfig::tiny()`'s shapes with random weights:
    /// enough to score 32 px inputs.
    fn tiny_detector() -> Detector {
        let cfg = clip_moe::ClipConfig::tiny();
        let varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = clip_moe::ClipModel::new(&cfg, vb).unwrap();
        let embeddings = Tensor::randn(0f32, 1., (2, cfg.projection_dim), &Device::Cpu).unwrap();
        Detector::new(model, embeddings)
    }

    fn args(extra: &[&str]) -> DetectArgs {
        let mut argv = vec!["detect", "--checkpoint", "unused", "--workers", "1"];
        argv.extend_from_slice(extra);
        DetectArgs::try_parse_from(argv).unwrap()
    }

    fn write_png(path: &Path, width: u32, height: u32) {
        image::RgbImage::from_pixel(width, height, image::Rgb([120, 90, 70]))
            .save(path)
            .unwrap();
    }

    /// A listed image that is missing fails with the list file and the
    /// 1-based line that named it; the others are scored.
    #[test]
    fn a_missing_listed_image_names_its_list_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("face.png"), 40, 40);
        let list = dir.path().join("faces.txt");
        std::fs::write(&list, "\r\nface.png\r\nmissing.jpg\r\n").unwrap();
        let root = dir.path().to_str().unwrap();
        let detections = detect(
            &tiny_detector(),
            &args(&["--root", root, list.to_str().unwrap()]),
        )
        .unwrap();
        assert_eq!(detections.len(), 2, "{detections:?}");
        assert!(detections[0].result.is_ok(), "{detections:?}");
        let error = detections[1].result.as_ref().unwrap_err();
        let expected = format!("list file {} line 3: ", list.display());
        assert!(error.starts_with(&expected), "{error}");
        assert!(error.contains("missing.jpg"), "{error}");
    }

    /// Images with a side under [`MIN_FACE_CROP_SIDE`] px are scored, with
    /// a warning each; a face-crop-sized one gets none.
    #[test]
    fn images_too_small_for_a_face_are_scored_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [(1, 1), (1, 5000), (15, 300), (16, 16), (40, 40)];
        for (width, height) in sizes {
            write_png(
                &dir.path().join(format!("{width}x{height}.png")),
                width,
                height,
            );
        }
        let detections = detect(&tiny_detector(), &args(&[dir.path().to_str().unwrap()])).unwrap();
        let found: Vec<(String, bool, Option<String>)> = detections
            .iter()
            .map(|d| {
                let name = d.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, d.result.is_ok(), d.warning.clone())
            })
            .collect();
        let small = |size: &str| {
            Some(format!("{size} px, too small to be a face crop (a side under 16 px): its score means nothing"))
        };
        assert_eq!(
            found,
            [
                ("15x300.png".to_string(), true, small("15x300")),
                ("16x16.png".to_string(), true, None),
                ("1x1.png".to_string(), true, small("1x1")),
                ("1x5000.png".to_string(), true, small("1x5000")),
                ("40x40.png".to_string(), true, None),
            ]
        );
    }
}
