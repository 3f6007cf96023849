//! From a [`DataConfig`] to the samples of each split, and the loader
//! settings every stage uses: training (shuffled, augmented) and evaluation
//! (CLIP's transform, fixed frames), both at the model's image size.

use std::path::{Path, PathBuf};

use fas_data::protocol::uniattack::{protocol_list_path, Modality, Split};
use fas_data::{
    read_list, BadInputPolicy, ClipTransform, FileCheck, FrameSelection, ListFormat, ListOptions,
    LoaderConfig, Sample,
};

use crate::error::{Error, Result};
use crate::experiment::{DataConfig, Dataset, LoaderSettings};

/// One split's samples and where they came from.
#[derive(Debug, Clone)]
pub struct SplitData {
    /// Which split.
    pub split: Split,
    /// The list file.
    pub source: PathBuf,
    /// Its samples, in list order.
    pub samples: Vec<Sample>,
}

impl SplitData {
    /// Errors unless the split holds both bona fide and attack samples: a
    /// threshold, ACER and AUC need both.
    pub fn require_both_classes(&self) -> Result<()> {
        let attacks = self
            .samples
            .iter()
            .filter(|s| s.label.as_ref().is_some_and(fas_data::Label::is_attack))
            .count();
        let unlabelled = self.samples.iter().filter(|s| s.label.is_none()).count();
        if unlabelled > 0 {
            return Err(self.error(format!(
                "{unlabelled} sample(s) have no label; training and evaluation need labelled lists"
            )));
        }
        let live = self.samples.len() - attacks;
        if attacks == 0 || live == 0 {
            return Err(self.error(format!(
                "holds {live} bona fide and {attacks} attack sample(s); both classes are needed"
            )));
        }
        Ok(())
    }

    fn error(&self, reason: String) -> Error {
        Error::Split {
            split: self.split.name().to_string(),
            source_name: self.source.clone(),
            reason,
        }
    }
}

/// The list format a dataset's lists are read with.
pub fn list_format(data: &DataConfig) -> ListFormat {
    match &data.dataset {
        Dataset::UniAttack {
            modality: Modality::Image,
            ..
        } => ListFormat::UniattackProtocol,
        Dataset::UniAttack {
            modality: Modality::Video,
            ..
        } => ListFormat::UniattackProtocolVideo,
        Dataset::Lists { format, .. } => format.clone(),
    }
}

/// The list file of `split`.
pub fn list_path(data: &DataConfig, split: Split) -> PathBuf {
    match &data.dataset {
        Dataset::UniAttack { protocol, modality } => {
            protocol_list_path(&data.root, *protocol, *modality, split)
        }
        Dataset::Lists {
            train, dev, test, ..
        } => {
            let list = match split {
                Split::Train => train,
                Split::Dev => dev,
                Split::Test => test,
            };
            if list.is_absolute() {
                list.clone()
            } else {
                data.root.join(list)
            }
        }
    }
}

/// Reads `split`'s list: every entry must parse and its file exist (a broken
/// list is reported whole, never trained on); it must not be empty.
pub fn read_split(data: &DataConfig, split: Split) -> Result<SplitData> {
    read_split_checked(data, split, FileCheck::Exists)
}

/// [`read_split`] with `check` of every listed file: `FileCheck::Decode`
/// decodes each image too (on all cores).
pub fn read_split_checked(data: &DataConfig, split: Split, check: FileCheck) -> Result<SplitData> {
    if !data.root.is_dir() {
        return Err(Error::config(
            "--data",
            format!(
                "the data root {} is not a directory (moved? give --data <its new place>)",
                data.root.display()
            ),
        ));
    }
    let source = list_path(data, split);
    let options = ListOptions {
        policy: BadInputPolicy::Fail,
        check,
        allow_outside_root: data.allow_outside_root,
    };
    let listing = read_list(&source, &data.root, &list_format(data), &options)?;
    let split_data = SplitData {
        split,
        source,
        samples: listing.samples,
    };
    if split_data.samples.is_empty() {
        return Err(split_data.error("lists no samples".into()));
    }
    Ok(split_data)
}

/// Errors when `later` lists the same samples as `earlier` (one list given
/// for two splits, or two files with the same entries): a threshold and
/// best checkpoint chosen on dev would be chosen on test, and a model
/// scored on its training samples would report nothing of what it learned.
/// When they share only some entries, the note to print says how many.
/// With `test_selected` (`--select-on test`, which reports say overstate),
/// one list for dev and test is taken, with a note; so is any pair with
/// `resuming` (a run trained so before this check existed continues as it
/// was trained). `hint` ends the error for one list given as dev and test:
/// what the caller can do instead.
pub fn check_distinct(
    earlier: &SplitData,
    later: &SplitData,
    test_selected: bool,
    resuming: bool,
    hint: &str,
) -> Result<Option<String>> {
    fn entries(split: &SplitData) -> std::collections::HashSet<&str> {
        split.samples.iter().map(|s| s.entry.as_str()).collect()
    }
    let (first, second) = (entries(earlier), entries(later));
    let mut shared: Vec<&str> = second.intersection(&first).copied().collect();
    if shared.is_empty() {
        return Ok(None);
    }
    let (a, b) = (earlier.split.name(), later.split.name());
    let dev_and_test = later.split == Split::Test && earlier.split == Split::Dev;
    if first == second && dev_and_test && test_selected {
        return Ok(Some(format!(
            "note: the dev and test lists hold the same samples ({}); with the checkpoint \
             selected on test, the threshold is chosen on test too",
            later.source.display()
        )));
    }
    if first == second && resuming {
        return Ok(Some(format!(
            "note: the {a} and {b} lists hold the same samples ({}); this run was trained so, \
             and its numbers do not measure what a held-out split would",
            later.source.display()
        )));
    }
    if first == second {
        let consequence = if dev_and_test {
            format!("the threshold and the best checkpoint would be chosen on the test samples ({hint})")
        } else {
            "the model would be scored on the samples it trains on".to_string()
        };
        return Err(later.error(format!(
            "lists the same samples as the {a} split ({}): {consequence}; give each split its \
             own list",
            earlier.source.display()
        )));
    }
    shared.sort_unstable();
    Ok(Some(format!(
        "note: the {a} list ({}) and the {b} list ({}) share {} entries (first: {}); the \
         {b} metrics include them",
        earlier.source.display(),
        later.source.display(),
        shared.len(),
        shared[0]
    )))
}

/// A human-readable name of the protocol (`p1`, or the list names).
pub fn protocol_name(data: &DataConfig) -> String {
    match &data.dataset {
        Dataset::UniAttack { protocol, modality } => match modality {
            Modality::Image => protocol.name().to_string(),
            Modality::Video => format!("{} (video)", protocol.name()),
        },
        Dataset::Lists { test, .. } => file_stem(test),
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The training loader: shuffled by (seed, epoch), augmented, incomplete
/// last batch dropped, one random frame per frame directory per epoch.
pub fn training_loader(settings: &LoaderSettings, image_size: usize, seed: u64) -> LoaderConfig {
    LoaderConfig {
        batch_size: settings.batch_size,
        workers: settings.workers,
        balance: settings.balance,
        augment: settings.augment,
        transform: transform(image_size),
        ..LoaderConfig::training(seed)
    }
}

/// The evaluation loader: list order, CLIP's transform, first and last
/// frame of frame directories (CASIA-FAS-Benchmark's test frames).
pub fn evaluation_loader(batch_size: usize, workers: usize, image_size: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        workers,
        frames: FrameSelection::FirstAndLast,
        transform: transform(image_size),
        ..LoaderConfig::default()
    }
}

/// CLIP's transform at `image_size`.
pub fn transform(image_size: usize) -> ClipTransform {
    ClipTransform {
        size: image_size as u32,
        ..ClipTransform::default()
    }
}
