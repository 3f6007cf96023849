//! One dataset entry, as listed, with its resolved path and label.

use crate::label::{Category, Label};
use crate::video::FrameNames;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Whether an entry is one image or a directory of video frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    /// A single image file.
    Image,
    /// A directory of frames (UniAttackData video lists, JFSFDB), the
    /// frames being the files accepted by the [`FrameNames`]; frames are
    /// chosen at load time, see [`crate::FrameSelection`].
    FrameDir(FrameNames),
}

/// One listed sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// The entry joined onto the data root.
    pub path: PathBuf,
    /// The entry exactly as written in the list (leading `/` removed), used
    /// as the sample's name in score files.
    pub entry: String,
    /// Ground truth; `None` for unlabelled lists (challenge `dev.txt`, `test.txt`).
    pub label: Option<Label>,
    /// Image or frame directory.
    pub media: Media,
    /// Scores of samples sharing this id are aggregated into one video-level
    /// score (UniAttackData frames of one recording share their folder).
    pub video_id: String,
    /// The list file and 1-based line this sample came from (the image path
    /// itself for folder layouts, line 0).
    pub origin: (PathBuf, usize),
}

impl Sample {
    /// Coarse category; unlabelled samples are [`Category::Unknown`].
    pub fn category(&self) -> Category {
        self.label
            .as_ref()
            .map_or(Category::Unknown, Label::category)
    }
}
