//! Writing a synthetic dataset to disk in UniAttackData's layout.

use super::{subject_images, subject_split, SynthConfig, SynthImage};
use crate::error::{Error, Result};
use crate::label::{Category, Label};
use crate::protocol::uniattack::{protocol_list_path, Modality, Protocol, Split};
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::Path;

/// One subject's written images: (entry, label).
type Listed = Vec<(String, Label)>;

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// Images written.
    pub images: usize,
    /// Lines per written protocol file (file name -> lines).
    pub lists: BTreeMap<String, usize>,
}

/// The detailed UniAttackData label of a category (0 live, 1 physical, 2 adversarial, 3 editing).
fn detailed_label(label: &Label) -> u8 {
    match label.category() {
        Category::Live => 0,
        Category::Physical => 1,
        Category::Adversarial => 2,
        Category::Editing | Category::Unknown => 3,
    }
}

/// Whether `category` belongs in `split` of `protocol`: P1 has everything
/// everywhere; P2.1 (unseen physical) trains on live + digital and tests on
/// live + physical; P2.2 (unseen digital) the reverse.
fn in_protocol(protocol: Protocol, split: Split, category: Category) -> bool {
    let digital = matches!(category, Category::Adversarial | Category::Editing);
    match (protocol, split) {
        (_, _) if category == Category::Live => true,
        (Protocol::P2_1, Split::Test) | (Protocol::P2_2, Split::Train | Split::Dev) => {
            category == Category::Physical
        }
        (Protocol::P2_1, _) | (Protocol::P2_2, Split::Test) => digital,
        _ => true,
    }
}

/// Generates the dataset under `root`: `root/UniAttackData/Data/...` JPEGs and
/// `root/UniAttackData/protocol/UniAttackData@{p1,p2.1,p2.2}_image_{train,dev,test}.txt`.
/// Subjects are rendered on all cores; the output is byte-identical for a
/// given configuration whatever the thread timing.
///
/// A `root` that exists and is not empty is refused (its protocol lists
/// would be overwritten in place); [`write_dataset_over`] writes into one
/// anyway. A `root` that exists and is not a directory is refused, and so is
/// a configuration [`SynthConfig::validate`] rejects (more than
/// [`super::MAX_SUBJECTS`] subjects or [`super::MAX_DATASET_PIXELS`]
/// pixels among them), before anything is written. Every file is written
/// atomically.
pub fn write_dataset(root: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    if let Ok(mut entries) = std::fs::read_dir(root) {
        if entries.next().is_some() {
            return Err(Error::Config(format!(
                "{} is not empty; refusing to write a synthetic dataset over its files \
                 (choose an empty or new directory, or --force)",
                root.display()
            )));
        }
    }
    write_dataset_over(root, config)
}

/// [`write_dataset`] without the emptiness check: files of the same names
/// are replaced (atomically), other files are left alone.
pub fn write_dataset_over(root: &Path, config: &SynthConfig) -> Result<SynthSummary> {
    config.validate()?;
    if std::fs::metadata(root).is_ok_and(|meta| !meta.is_dir()) {
        return Err(Error::Config(format!(
            "{} exists and is not a directory; choose a new or empty directory for the dataset",
            root.display()
        )));
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(config.subjects.max(1));
    let per_subject: Vec<(usize, Result<Listed>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..config.subjects)
                        .step_by(threads)
                        .map(|index| (index, write_subject(root, config, index)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut results = Vec::new();
        for handle in handles {
            let done = handle.join().unwrap_or_else(|_| {
                vec![(
                    usize::MAX,
                    Err(Error::Worker("synthetic generator thread panicked".into())),
                )]
            });
            results.extend(done);
        }
        // Subject order, whatever order the threads finished in.
        results.sort_by_key(|(index, _)| *index);
        results
    });
    let mut entries: Vec<(usize, String, Label)> = Vec::new();
    for (index, subject) in per_subject {
        entries.extend(
            subject?
                .into_iter()
                .map(|(entry, label)| (index, entry, label)),
        );
    }
    let mut summary = SynthSummary {
        images: entries.len(),
        lists: BTreeMap::new(),
    };
    for protocol in [Protocol::P1, Protocol::P2_1, Protocol::P2_2] {
        for split in Split::ALL {
            let path = protocol_list_path(root, protocol, Modality::Image, split);
            let mut text = String::new();
            for (index, entry, label) in &entries {
                if subject_split(*index) == split && in_protocol(protocol, split, label.category())
                {
                    text.push_str(&format!("{entry} {}\n", detailed_label(label)));
                }
            }
            summary.lists.insert(
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                text.lines().count(),
            );
            write_file(&path, text.as_bytes())?;
        }
    }
    Ok(summary)
}

fn write_subject(root: &Path, config: &SynthConfig, index: usize) -> Result<Listed> {
    let images = subject_images(config, index)?;
    let mut listed = Vec::with_capacity(images.len());
    for SynthImage {
        entry,
        label,
        image,
    } in images
    {
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, config.jpeg_quality)
            .encode_image(&image)
            .map_err(|e| Error::Write {
                path: root.join(&entry),
                reason: std::io::Error::other(e.to_string()),
            })?;
        write_file(&root.join(&entry), &bytes)?;
        listed.push((entry, label));
    }
    Ok(listed)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_io::write_bytes(path, bytes).map_err(|failure| match failure {
        atomic_io::Failure::Write(reason) => Error::Write {
            path: path.to_path_buf(),
            reason,
        },
        atomic_io::Failure::Io { path, source, .. } => Error::Write {
            path,
            reason: source,
        },
    })
}

/// The largest contact sheet drawn, in pixels (256 Mpx, 768 MB of RGB).
pub const MAX_SHEET_PIXELS: u64 = 1 << 28;

/// A grid of the first `subjects` subjects, one row each: live frames, print
/// indoor, print outdoor, replay, the adversarial images and the face swaps.
pub fn contact_sheet(config: &SynthConfig, subjects: usize) -> Result<RgbImage> {
    let count = subjects.min(config.subjects);
    if count == 0 {
        return Err(Error::Config(
            "a contact sheet needs at least one subject".into(),
        ));
    }
    // Refuse a sheet no machine should allocate before rendering anything,
    // after the image size's own range (its message names the range).
    let side = config.image_size;
    if !(32..=super::MAX_SIZE).contains(&side) {
        return Err(Error::Config(format!(
            "synthetic images must be 32 to {} px, got {side} px",
            super::MAX_SIZE
        )));
    }
    let gap = 4;
    let width = (config.images_per_subject() as u64)
        .saturating_mul(u64::from(side) + gap)
        .saturating_add(gap);
    let height = (count as u64)
        .saturating_mul(u64::from(side) + gap)
        .saturating_add(gap);
    if width.saturating_mul(height) > MAX_SHEET_PIXELS || width > u64::from(u32::MAX) {
        return Err(Error::Config(format!(
            "a sheet of {count} subjects at {side} px would be {width}x{height} pixels, more than \
             {MAX_SHEET_PIXELS}: use fewer subjects or a smaller size"
        )));
    }
    let rows = (0..count)
        .map(|i| subject_images(config, i))
        .collect::<Result<Vec<_>>>()?;
    let columns = rows[0].len() as u32;
    let gap = gap as u32;
    let mut sheet = RgbImage::from_pixel(
        columns * (side + gap) + gap,
        rows.len() as u32 * (side + gap) + gap,
        image::Rgb([255, 255, 255]),
    );
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (x0, y0) = (gap + c as u32 * (side + gap), gap + r as u32 * (side + gap));
            image::imageops::overlay(&mut sheet, &cell.image, i64::from(x0), i64::from(y0));
        }
    }
    Ok(sheet)
}
