//! Video entries: which frames of a frame directory become samples.
//!
//! CASIA-FAS-Benchmark reads one random frame per video in training and the
//! first and last frames at test, then averages their scores per video; this
//! module reproduces that with frames sorted by name (CFB used `os.listdir`
//! order, which depends on the file system).

use crate::error::{Error, Result};
use crate::image_io::is_image_file;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which frames of a frame directory are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameSelection {
    /// One frame drawn per epoch from the sample's seed (training).
    Random,
    /// The first and the last frame (CFB evaluation; one frame if only one).
    FirstAndLast,
    /// `n` frames evenly spaced from first to last (all frames if fewer).
    Evenly(usize),
    /// Every frame.
    All,
}

impl FrameSelection {
    /// Indices of the frames chosen from `count` frames for a fixed selection;
    /// `None` for [`FrameSelection::Random`], which is drawn per epoch.
    pub fn fixed_indices(self, count: usize) -> Option<Vec<usize>> {
        if count == 0 {
            return Some(Vec::new());
        }
        Some(match self {
            FrameSelection::Random => return None,
            FrameSelection::FirstAndLast if count == 1 => vec![0],
            FrameSelection::FirstAndLast => vec![0, count - 1],
            FrameSelection::Evenly(n) if n >= count => (0..count).collect(),
            FrameSelection::Evenly(0) => Vec::new(),
            FrameSelection::Evenly(1) => vec![0],
            FrameSelection::Evenly(n) => (0..n).map(|i| i * (count - 1) / (n - 1)).collect(),
            FrameSelection::All => (0..count).collect(),
        })
    }
}

/// Which files of a frame directory are frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameNames {
    /// Every image file ([`is_image_file`]); UniAttackData `color/` folders.
    #[default]
    AnyImage,
    /// JFSFDB face crops `Face_*.jpg` only: its video folders also hold
    /// `STmap.png` and `CWT_*.jpg` maps, which are not frames.
    JfsfdbFace,
}

impl FrameNames {
    /// True when the file called `name` is a frame.
    pub fn accepts(self, name: &str) -> bool {
        match self {
            FrameNames::AnyImage => is_image_file(Path::new(name)),
            FrameNames::JfsfdbFace => name
                .strip_prefix("Face_")
                .and_then(|rest| rest.strip_suffix(".jpg"))
                .is_some_and(|stem| !stem.is_empty()),
        }
    }
}

/// The frames (files accepted by `names`) directly inside `dir`, sorted by
/// name. A directory without frames is an error: a video with no frames
/// cannot be scored.
pub fn list_frames(dir: &Path, names: FrameNames) -> Result<Vec<PathBuf>> {
    let io = |reason| Error::Io {
        path: dir.to_path_buf(),
        reason,
    };
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_frame = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| names.accepts(n));
        if is_frame && path.is_file() {
            frames.push(path);
        }
    }
    if frames.is_empty() {
        return Err(Error::Image {
            path: dir.to_path_buf(),
            message: "frame directory holds no frames".to_string(),
        });
    }
    frames.sort();
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_selections() {
        assert_eq!(
            FrameSelection::FirstAndLast.fixed_indices(5),
            Some(vec![0, 4])
        );
        assert_eq!(FrameSelection::FirstAndLast.fixed_indices(1), Some(vec![0]));
        assert_eq!(
            FrameSelection::Evenly(3).fixed_indices(9),
            Some(vec![0, 4, 8])
        );
        assert_eq!(FrameSelection::Evenly(4).fixed_indices(2), Some(vec![0, 1]));
        assert_eq!(FrameSelection::Random.fixed_indices(3), None);
    }

    #[test]
    fn jfsfdb_frames_are_the_face_crops_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = (1..=7).map(|i| format!("Face_{i:02}.jpg")).collect();
        names.extend(["STmap.png".to_string(), "CWT_63.jpg".to_string()]);
        for name in &names {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let faces = list_frames(dir.path(), FrameNames::JfsfdbFace).unwrap();
        let faces: Vec<_> = faces.iter().filter_map(|p| p.file_name()).collect();
        assert_eq!(
            faces,
            names[..7]
                .iter()
                .map(std::ffi::OsStr::new)
                .collect::<Vec<_>>()
        );
        // First and last of the faces, not the maps that sort after them.
        assert_eq!(
            FrameSelection::FirstAndLast.fixed_indices(faces.len()),
            Some(vec![0, 6])
        );
        assert_eq!(
            list_frames(dir.path(), FrameNames::AnyImage).unwrap().len(),
            9
        );
        assert!(!FrameNames::JfsfdbFace.accepts("Face_.jpg"));
        assert!(!FrameNames::JfsfdbFace.accepts("face_01.png"));
    }
}
