//! Image-folder layout: `root/live/**` for bona fide images and
//! `root/<attack-kind>/**` for attacks, for data that comes without lists.
//!
//! Top-level folder names (case-insensitive): `live`, `bonafide`, `real` ->
//! bona fide; `print`, `replay`, `physical`; `adversarial` and `editing`, whose
//! next folder, if any, names the method (`adversarial/fgsm/x.jpg`); `attack`,
//! `fake`, `spoof` -> attack of unknown kind. Any other top-level folder, and
//! images directly in `root`, are problems.

use crate::error::{Error, Problem, Result};
use crate::image_io::is_image_file;
use crate::label::{AttackKind, Label};
use crate::protocol::{check_files, ListOptions, Listing};
use crate::sample::{Media, Sample};
use std::path::{Path, PathBuf};

/// Lists every image under `root` (sorted by path, so the order is the same on
/// every file system), labelled by its top-level folder.
pub fn read_folder(root: &Path, options: &ListOptions) -> Result<Listing> {
    let mut files = Vec::new();
    walk(root, &mut files)?;
    files.sort();
    let mut listing = Listing::default();
    for file in files {
        let Ok(relative) = file.strip_prefix(root) else {
            continue;
        };
        let parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if parts.len() < 2 {
            listing
                .problems
                .push(Problem::in_file(&file, "image outside a category folder"));
            continue;
        }
        let method = (parts.len() > 2).then(|| parts[1].clone());
        let Some(label) = folder_label(&parts[0], method) else {
            listing.problems.push(Problem::in_file(
                &file,
                format!(
                    "unknown category folder \"{}\"; expected live, bonafide, real, print, replay, physical, adversarial, editing, attack, fake or spoof",
                    parts[0]
                ),
            ));
            continue;
        };
        let entry = parts.join("/");
        listing.samples.push(Sample {
            path: file.clone(),
            video_id: entry.clone(),
            entry,
            label: Some(label),
            media: Media::Image,
            origin: (file, 0),
        });
    }
    check_files(&mut listing, options.check);
    listing.finish(root, options.policy)
}

fn folder_label(name: &str, method: Option<String>) -> Option<Label> {
    let kind = match name.to_ascii_lowercase().as_str() {
        "live" | "bonafide" | "real" => return Some(Label::BonaFide),
        "print" => AttackKind::Print,
        "replay" => AttackKind::Replay,
        "physical" => AttackKind::Physical,
        "adversarial" => AttackKind::Adversarial { method },
        "editing" => AttackKind::Editing { method },
        "attack" | "fake" | "spoof" => AttackKind::Unknown,
        _ => return None,
    };
    Some(Label::Attack(kind))
}

/// Collects the image files under `dir`. Symbolic links to directories are
/// not followed (a link back to an ancestor would recurse forever); links
/// to files are kept.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    let io = |reason| Error::Io {
        path: dir.to_path_buf(),
        reason,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_type().map_err(io)?.is_dir() {
            walk(&path, files)?;
        } else if is_image_file(&path) && path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}
