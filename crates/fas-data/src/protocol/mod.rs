//! List formats and the reader that turns a list file into [`Sample`]s.
//!
//! One reader ([`read_list`]) and one line parser ([`line::parse_line`]) serve
//! every format; a [`ListFormat`] only fixes the label convention, whether
//! entries are images or frame directories, and how video ids are formed.

pub mod challenge;
mod check;
pub mod folder;
pub mod line;
pub mod uniattack;

use crate::error::{quote, Error, Problem, Result};
use crate::label::{attack_hint_from_path, Category, Label, LabelConvention};
use crate::sample::{Media, Sample};
use crate::video::FrameNames;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What to do with bad input (malformed lines, unknown labels, missing or
/// undecodable images).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadInputPolicy {
    /// Default: report every problem in one [`Error::Invalid`] and return no samples,
    /// so a broken list is never silently trained on.
    #[default]
    Fail,
    /// Drop bad entries, keep the rest, and record each in [`Listing::problems`].
    Skip,
}

/// How thoroughly listed files are checked while listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileCheck {
    /// Trust the list (fastest; missing files surface in the loader).
    None,
    /// Default: the image file (or frame directory with at least one image) exists.
    #[default]
    Exists,
    /// Fully decode every image (every frame of frame directories) and walk
    /// the scans of baseline JPEGs ([`crate::image_io::verify_image`]);
    /// catches unreadable, truncated and damaged files. Runs on all cores.
    Decode,
}

/// Which element of the entry identifies a video for score aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VideoIdRule {
    /// The entry itself: each image (or frame directory) is its own video.
    Entry,
    /// The entry's parent folder: UniAttackData frames `.../color/0070.jpg`
    /// of one recording share `.../color`.
    ParentDir,
    /// The parent folder when it is called `color` (a UniAttackData frame,
    /// `.../color/0070.jpg`), the entry itself otherwise: lists that mix
    /// UniAttackData frames with other images never merge a whole folder of
    /// unrelated images (`p1/train/000001.jpg`, ...) into one video.
    ColorFolder,
}

/// Everything that distinguishes one list format from another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSpec {
    /// How label integers map to labels.
    pub convention: LabelConvention,
    /// Whether entries are images or frame directories.
    pub media: Media,
    /// How video ids are formed.
    pub video_id: VideoIdRule,
    /// Refine attack kinds from UniAttackData folder names
    /// ([`attack_hint_from_path`]). On for the UniAttackData formats, off by
    /// default: other datasets may use folder names that look like hints.
    pub path_hints: bool,
}

impl Default for ListSpec {
    /// Images with UniAttackData's detailed labels, one video per image, path hints off.
    fn default() -> Self {
        Self {
            convention: LabelConvention::UniattackDetailed,
            media: Media::Image,
            video_id: VideoIdRule::Entry,
            path_hints: false,
        }
    }
}

/// A named list format. The names (for the command-line tools) are given on each variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListFormat {
    /// `uniattack-protocol`: CASIA-FAS-Dataset `UniAttackData@<protocol>_image_<split>.txt`,
    /// 0 live, 1 physical, 2 adversarial, 3 editing; video id = frame folder.
    UniattackProtocol,
    /// `uniattack-protocol-video`: the `_video_` lists, whose entries are frame directories
    /// (every image in them is a frame).
    UniattackProtocolVideo,
    /// `challenge`: CVPR 2024 challenge `train_label.txt`, `dev_label.txt`: 0 live, 1 fake.
    Challenge,
    /// `challenge-unlabelled`: challenge `dev.txt`, `test.txt`: paths only.
    ChallengeUnlabelled,
    /// `binary`: UniAttackData "Protocol" lists (FA3): 1 live, 0 fake; video
    /// id = the `color` folder for UniAttackData frames, the entry otherwise.
    Binary,
    /// `jfsfdb`: JFSFDB lists `<video dir> <label>`, 1 real, 0 fake; the
    /// frames of a video folder are its `Face_*.jpg` files.
    Jfsfdb,
    /// Any other list, described by a [`ListSpec`] (not nameable on the command line).
    Generic(ListSpec),
}

impl ListFormat {
    /// Command-line names of the named formats.
    pub const NAMES: [&'static str; 6] = [
        "uniattack-protocol",
        "uniattack-protocol-video",
        "challenge",
        "challenge-unlabelled",
        "binary",
        "jfsfdb",
    ];

    /// The format with command-line name `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "uniattack-protocol" => ListFormat::UniattackProtocol,
            "uniattack-protocol-video" => ListFormat::UniattackProtocolVideo,
            "challenge" => ListFormat::Challenge,
            "challenge-unlabelled" => ListFormat::ChallengeUnlabelled,
            "binary" => ListFormat::Binary,
            "jfsfdb" => ListFormat::Jfsfdb,
            _ => return None,
        })
    }

    /// The spec this format stands for.
    pub fn spec(&self) -> ListSpec {
        let base = ListSpec::default();
        let uniattack = ListSpec {
            path_hints: true,
            ..base.clone()
        };
        match self {
            ListFormat::UniattackProtocol => ListSpec {
                video_id: VideoIdRule::ParentDir,
                ..uniattack
            },
            ListFormat::UniattackProtocolVideo => ListSpec {
                media: Media::FrameDir(FrameNames::AnyImage),
                ..uniattack
            },
            ListFormat::Challenge => ListSpec {
                convention: LabelConvention::LiveZeroFakeOne,
                ..base
            },
            ListFormat::ChallengeUnlabelled => ListSpec {
                convention: LabelConvention::Unlabelled,
                ..base
            },
            ListFormat::Binary => ListSpec {
                convention: LabelConvention::LiveOneFakeZero,
                video_id: VideoIdRule::ColorFolder,
                ..uniattack
            },
            ListFormat::Jfsfdb => ListSpec {
                convention: LabelConvention::LiveOneFakeZero,
                media: Media::FrameDir(FrameNames::JfsfdbFace),
                ..base
            },
            ListFormat::Generic(spec) => spec.clone(),
        }
    }
}

/// Options for [`read_list`] and [`folder::read_folder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ListOptions {
    /// Fail (default) or skip-and-count.
    pub policy: BadInputPolicy,
    /// How listed files are checked (default: they exist).
    pub check: FileCheck,
    /// Accept entries whose `..` components lead out of the data root
    /// (`../other/x.jpg`). Off by default: a list is then confined to the
    /// root it is read against, and such a line is a problem.
    pub allow_outside_root: bool,
}

/// The result of listing: the usable samples and what was wrong with the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Listing {
    /// Valid samples, in file order.
    pub samples: Vec<Sample>,
    /// Problems of skipped entries (only non-empty under [`BadInputPolicy::Skip`]).
    pub problems: Vec<Problem>,
    /// Entries listed more than once with the same label. They are kept (CFD
    /// lists repeat a few paths) and counted here.
    pub duplicates: usize,
    /// Files and links passed over while listing a folder layout, each with
    /// the reason (an image format the reader does not decode, a link cycle,
    /// a link to a directory already walked under the same category): they
    /// are not samples, and are reported so that a count is never silently
    /// short.
    pub ignored: Vec<Problem>,
}

impl Listing {
    /// Valid samples per coarse category (all five keys present).
    pub fn counts_by_category(&self) -> BTreeMap<Category, usize> {
        let mut counts: BTreeMap<Category, usize> = Category::ALL.iter().map(|c| (*c, 0)).collect();
        for sample in &self.samples {
            *counts.entry(sample.category()).or_default() += 1;
        }
        counts
    }

    /// Valid samples per label (`live`, `print`, `adversarial/alma`, ...; `unlabelled`).
    pub fn counts_by_label(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for sample in &self.samples {
            let key = sample
                .label
                .as_ref()
                .map_or_else(|| "unlabelled".to_string(), Label::to_string);
            *counts.entry(key).or_default() += 1;
        }
        counts
    }

    /// Applies `policy` to collected problems: an error under `Fail`, `self` otherwise.
    pub(crate) fn finish(mut self, source: &Path, policy: BadInputPolicy) -> Result<Self> {
        if self.problems.is_empty() || policy == BadInputPolicy::Skip {
            return Ok(self);
        }
        self.samples.clear();
        Err(Error::Invalid {
            source_name: source.to_path_buf(),
            problems: self.problems,
        })
    }
}

/// The largest list file read (1 GiB).
pub const MAX_LIST_BYTES: u64 = 1 << 30;

/// Reads `list`, resolving entries against `root`.
///
/// Blank lines (trailing ones included), CRLF endings and a UTF-8 byte-order
/// mark are accepted. Every
/// malformed line, unknown label, conflicting duplicate and (per
/// `options.check`) missing or undecodable file is reported with its file and
/// line; `options.policy` decides between failing and skipping.
pub fn read_list(
    list: &Path,
    root: &Path,
    format: &ListFormat,
    options: &ListOptions,
) -> Result<Listing> {
    let not_a_list = |reason: String| Error::Invalid {
        source_name: list.to_path_buf(),
        problems: vec![Problem::in_file(list, reason)],
    };
    // A list of every image of the largest face datasets is tens of MB.
    use crate::bounded_read::{read_bounded, ReadFailure};
    let bytes =
        read_bounded(list, MAX_LIST_BYTES, "a list of images").map_err(
            |failure| match failure {
                ReadFailure::Io(reason) => Error::Io {
                    path: list.to_path_buf(),
                    reason,
                },
                ReadFailure::Refused(reason) => {
                    not_a_list(format!("{reason}: is it the right file?"))
                }
            },
        )?;
    if let Some(at) = bytes.iter().position(|b| *b == 0) {
        return Err(not_a_list(format!(
            "holds a NUL byte (at byte {at}): a binary file, not a text list"
        )));
    }
    let spec = format.spec();
    let mut listing = Listing::default();
    let mut seen: HashMap<String, (usize, Option<Label>)> = HashMap::new();
    let mut entries = 0usize;
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = index + 1;
        // A byte-order mark starts the file, or a later line where lists
        // were concatenated (`cat dev.txt test.txt`): it is not part of the
        // entry.
        let raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        let parsed = std::str::from_utf8(raw)
            .map_err(|_| "line is not valid UTF-8".to_string())
            .and_then(|text| line::parse_line(text, &spec.convention));
        if !matches!(parsed, Ok(None)) {
            entries += 1;
        }
        let parsed = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => continue,
            Err(message) => {
                listing
                    .problems
                    .push(Problem::at_line(list, line_no, message));
                continue;
            }
        };
        let key = match normalize_entry(&parsed.entry, options.allow_outside_root) {
            Ok(key) => key,
            Err(message) => {
                listing
                    .problems
                    .push(Problem::at_line(list, line_no, message));
                continue;
            }
        };
        let label = parsed
            .label
            .map(|label| refine(label, &parsed.entry, spec.path_hints));
        if let Some((first_line, first_label)) = seen.get(&key) {
            if *first_label == label {
                listing.duplicates += 1;
            } else {
                listing.problems.push(Problem::at_line(
                    list,
                    line_no,
                    format!(
                        "\"{}\" is listed on line {first_line} with another label",
                        quote(&parsed.entry)
                    ),
                ));
                continue;
            }
        } else {
            seen.insert(key.clone(), (line_no, label.clone()));
        }
        listing.samples.push(Sample {
            path: root.join(&key),
            video_id: video_id(&key, spec.video_id),
            entry: parsed.entry,
            label,
            media: spec.media,
            origin: (list.to_path_buf(), line_no),
        });
    }
    if entries == 0 {
        return Err(Error::Invalid {
            source_name: list.to_path_buf(),
            problems: vec![Problem::in_file(
                list,
                "the list has no entries (it is empty or only blank lines)",
            )],
        });
    }
    check_files(&mut listing, options.check);
    listing.finish(list, options.policy)
}

/// The entry as a clean relative path: empty and `.` components dropped,
/// `..` applied, so `./a/b.jpg`, `a//b.jpg` and `a/x/../b.jpg` all name
/// `a/b.jpg` (one file, one sample). An entry that climbs out of the root is
/// an error unless `allow_outside_root`, and then keeps its leading `..`.
pub(crate) fn normalize_entry(
    entry: &str,
    allow_outside_root: bool,
) -> std::result::Result<String, String> {
    let mut parts: Vec<&str> = Vec::new();
    let mut above_root = 0usize;
    for part in entry.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    above_root += 1;
                }
            }
            other => parts.push(other),
        }
    }
    if above_root > 0 && !allow_outside_root {
        return Err(format!(
            "\"{}\" leads out of the data root (`..`); entries must stay below it",
            quote(entry)
        ));
    }
    if parts.is_empty() {
        return Err(format!(
            "\"{}\" names the data root itself, not a file",
            quote(entry)
        ));
    }
    let mut key = "../".repeat(above_root);
    key.push_str(&parts.join("/"));
    Ok(key)
}

fn refine(label: Label, entry: &str, path_hints: bool) -> Label {
    match label {
        Label::Attack(kind) if path_hints => {
            Label::Attack(kind.refined_by(attack_hint_from_path(entry)))
        }
        other => other,
    }
}

/// The entry without its last component; `None` for a bare file name.
fn parent(entry: &str) -> Option<&str> {
    entry.rfind(['/', '\\']).map(|i| &entry[..i])
}

pub(crate) fn video_id(entry: &str, rule: VideoIdRule) -> String {
    match rule {
        VideoIdRule::Entry => entry.to_string(),
        VideoIdRule::ParentDir => parent(entry).unwrap_or(entry).to_string(),
        VideoIdRule::ColorFolder => parent(entry)
            .filter(|dir| dir == &"color" || dir.ends_with("/color") || dir.ends_with("\\color"))
            .unwrap_or(entry)
            .to_string(),
    }
}

/// Checks the files of `listing.samples` and moves failing samples into
/// `listing.problems` (with the sample's list line).
pub(crate) fn check_files(listing: &mut Listing, check: FileCheck) {
    if check == FileCheck::None {
        return;
    }
    let verdicts = check::check_samples(&listing.samples, check == FileCheck::Decode);
    let samples = std::mem::take(&mut listing.samples);
    for (sample, verdict) in samples.into_iter().zip(verdicts) {
        match verdict {
            Ok(()) => listing.samples.push(sample),
            Err(message) => {
                let (file, line) = &sample.origin;
                let problem = if *line == 0 {
                    Problem::in_file(file, message)
                } else {
                    // The entry as listed may be any length: quoted briefly.
                    let entry = quote(&sample.path.display().to_string());
                    Problem::at_line(file, *line, format!("{entry}: {message}"))
                };
                listing.problems.push(problem);
            }
        }
    }
    listing
        .problems
        .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
}

#[cfg(test)]
mod tests {
    use super::normalize_entry;

    #[test]
    fn entries_naming_one_file_normalise_alike() {
        for entry in [
            "a/b.jpg",
            "./a/b.jpg",
            "a//b.jpg",
            "a/./b.jpg",
            "a/x/../b.jpg",
        ] {
            assert_eq!(normalize_entry(entry, false).unwrap(), "a/b.jpg", "{entry}");
        }
        let err = normalize_entry("../secret/x.jpg", false).unwrap_err();
        assert!(err.contains("data root"), "{err}");
        assert!(normalize_entry("a/../../x.jpg", false).is_err());
        assert_eq!(normalize_entry("../x/y.jpg", true).unwrap(), "../x/y.jpg");
        assert!(normalize_entry("a/..", false).is_err());
    }
}
