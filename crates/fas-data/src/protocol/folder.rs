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
/// every file system), labelled by its top-level folder. Symbolic links to
/// directories are followed, except one that leads back into a directory
/// being walked (a cycle); files in image formats the reader does not decode
/// (`.webp`, `.bmp`, ...) and such links are reported in [`Listing::ignored`].
/// A file reached twice through links is listed once (counted in
/// [`Listing::duplicates`]), or is a problem when the two paths give it
/// different categories.
pub fn read_folder(root: &Path, options: &ListOptions) -> Result<Listing> {
    let mut files = Vec::new();
    let mut ignored = Vec::new();
    let mut ancestors = Vec::new();
    walk(root, &mut files, &mut ignored, &mut ancestors)?;
    files.sort();
    ignored.sort_by(|a: &Problem, b: &Problem| a.file.cmp(&b.file));
    if files.is_empty() {
        // As an empty list is: nothing to read is an error, not an empty
        // dataset; what was passed over says why.
        let mut problems = vec![Problem::in_file(
            root,
            "holds no JPEG or PNG image in any folder",
        )];
        problems.extend(ignored);
        return Err(Error::Invalid {
            source_name: root.to_path_buf(),
            problems,
        });
    }
    let mut listing = Listing {
        ignored,
        ..Listing::default()
    };
    let mut reached: std::collections::HashMap<PathBuf, (PathBuf, Label)> =
        std::collections::HashMap::new();
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
        // Linked folders can reach one file by two paths: it is one sample,
        // and reaching it under two categories is a contradiction.
        let canonical = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if let Some((first, first_label)) = reached.get(&canonical) {
            if *first_label == label {
                listing.duplicates += 1;
            } else {
                listing.problems.push(Problem::in_file(
                    &file,
                    format!(
                        "the same file as {} (through a link), under another category",
                        first.display()
                    ),
                ));
            }
            continue;
        }
        reached.insert(canonical, (file.clone(), label.clone()));
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

/// Collects the image files under `dir`, following links to directories
/// unless they lead back into `ancestors` (the canonical directories being
/// walked).
fn walk(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    ignored: &mut Vec<Problem>,
    ancestors: &mut Vec<PathBuf>,
) -> Result<()> {
    let io = |reason| Error::Io {
        path: dir.to_path_buf(),
        reason,
    };
    let here = std::fs::canonicalize(dir).map_err(io)?;
    ancestors.push(here);
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        // `metadata` follows links: a link to a directory is a directory.
        let Ok(meta) = std::fs::metadata(&path) else {
            ignored.push(Problem::in_file(&path, "broken symbolic link"));
            continue;
        };
        if meta.is_dir() {
            let target = std::fs::canonicalize(&path).map_err(io)?;
            if ancestors.iter().any(|a| a == &target) {
                ignored.push(Problem::in_file(
                    &path,
                    "symbolic link back into a directory being listed (a cycle); not followed",
                ));
                continue;
            }
            walk(&path, files, ignored, ancestors)?;
        } else if is_image_file(&path) {
            files.push(path);
        } else if crate::image_io::is_unsupported_image(&path) {
            ignored.push(Problem::in_file(
                &path,
                "image format not decoded by this reader (JPEG and PNG only); convert it to use it",
            ));
        }
    }
    ancestors.pop();
    Ok(())
}
