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
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Lists every image under `root` (sorted by path, so the order is the same on
/// every file system), labelled by its top-level folder. Symbolic links to
/// directories are followed, and every directory is walked once per label
/// its paths give, however many links lead to it: one reached again under
/// the same label (through another link) is passed over, and so is a link
/// into a directory being walked or one holding it (a cycle, such as a link
/// to `/`). Files in image formats the reader does not decode (`.webp`,
/// `.bmp`, ...) and the links passed over are reported in
/// [`Listing::ignored`]. A file reached through links under two different
/// categories is a problem; a file reached twice under one is listed once
/// (counted in [`Listing::duplicates`]).
pub fn read_folder(root: &Path, options: &ListOptions) -> Result<Listing> {
    let mut walk = Walk {
        root,
        files: Vec::new(),
        ignored: Vec::new(),
        open: Vec::new(),
        walked: HashMap::new(),
    };
    let canonical_root = std::fs::canonicalize(root).map_err(|reason| Error::Io {
        path: root.to_path_buf(),
        reason,
    })?;
    walk.enter(root, canonical_root)?;
    let Walk {
        mut files,
        mut ignored,
        ..
    } = walk;
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
    let mut reached: HashMap<PathBuf, (PathBuf, Label)> = HashMap::new();
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

/// The label a folder's path gives every image below it, as far as the path
/// fixes it: the category folder and, for adversarial and editing, the method
/// folder under it. `None` for the root and a folder of no category.
fn folder_path_label(relative: &Path) -> Option<Label> {
    let mut parts = relative.iter().map(|p| p.to_string_lossy().into_owned());
    let category = parts.next()?;
    folder_label(&category, parts.next())
}

/// One walk over a folder layout, collecting its image files.
struct Walk<'a> {
    root: &'a Path,
    files: Vec<PathBuf>,
    ignored: Vec<Problem>,
    /// The canonical directories being walked, the root first.
    open: Vec<PathBuf>,
    /// Every directory walked, with the label its path gives (canonical
    /// path and label -> the path it was walked under). Each is walked once
    /// per label: directories shared by links (`a` and `b` both linking to
    /// one folder, level after level) would otherwise be walked once per
    /// path, a number that doubles with every level. Under another label
    /// (or none) it is walked again, so that its files are listed under
    /// each category a path gives them, and a file under two categories
    /// is reported as before, whichever path comes first.
    walked: HashMap<(PathBuf, Option<Label>), PathBuf>,
}

impl Walk<'_> {
    /// Collects the image files under `dir` (whose canonical path is
    /// `canonical`), in path order, following links to directories not
    /// walked yet.
    fn enter(&mut self, dir: &Path, canonical: PathBuf) -> Result<()> {
        let io = |reason| Error::Io {
            path: dir.to_path_buf(),
            reason,
        };
        let label = self.label_of(dir);
        self.walked
            .insert((canonical.clone(), label), dir.to_path_buf());
        self.open.push(canonical.clone());
        // Sorted, so that of two paths to one directory the first in path
        // order is the one walked, on every file system.
        let mut entries = std::fs::read_dir(dir)
            .map_err(io)?
            .map(|entry| entry.and_then(|e| Ok((e.path(), e.file_type()?.is_symlink()))))
            .collect::<std::io::Result<Vec<(PathBuf, bool)>>>()
            .map_err(io)?;
        entries.sort();
        for (path, is_link) in entries {
            // `metadata` follows links: a link to a directory is a directory.
            let Ok(meta) = std::fs::metadata(&path) else {
                self.ignored
                    .push(Problem::in_file(&path, "broken symbolic link"));
                continue;
            };
            if meta.is_dir() {
                let target = match (is_link, path.file_name()) {
                    (false, Some(name)) => canonical.join(name),
                    _ => std::fs::canonicalize(&path).map_err(|reason| Error::Io {
                        path: path.clone(),
                        reason,
                    })?,
                };
                self.enter_subdirectory(&path, target)?;
            } else if is_image_file(&path) {
                self.files.push(path);
            } else if crate::image_io::is_unsupported_image(&path) {
                self.ignored.push(Problem::in_file(
                    &path,
                    "image format not decoded by this reader (JPEG and PNG only); convert it to use it",
                ));
            }
        }
        self.open.pop();
        Ok(())
    }

    /// The label `dir`'s path gives the images below it (`None`: no category yet).
    fn label_of(&self, dir: &Path) -> Option<Label> {
        dir.strip_prefix(self.root).ok().and_then(folder_path_label)
    }

    /// Walks the subdirectory at `path` (canonical path `target`) unless it
    /// leads back into the walk or was walked already under the label its
    /// path gives.
    fn enter_subdirectory(&mut self, path: &Path, target: PathBuf) -> Result<()> {
        if self.open.iter().any(|open| open.starts_with(&target)) {
            self.ignored.push(Problem::in_file(
                path,
                "symbolic link to a directory being listed or one holding it (a cycle); not followed",
            ));
            return Ok(());
        }
        let key = (target, self.label_of(path));
        let Some(first) = self.walked.get(&key) else {
            return self.enter(path, key.0);
        };
        self.ignored.push(Problem::in_file(
            path,
            format!(
                "the same directory as {} (through a link); its images are listed once, there",
                first.display()
            ),
        ));
        Ok(())
    }
}
