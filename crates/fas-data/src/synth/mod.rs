//! Synthetic unified-attack data: the demo and test data when no real
//! dataset is present (UniAttackData is distributed on request only).
//!
//! Deterministic from a seed and ID-consistent like UniAttackData: each
//! subject has a procedurally drawn face ([`face`]); its live frames, its
//! physical attacks (print indoor/outdoor, replay) and its digital attacks
//! (adversarial perturbations, a swap of another subject's face onto it) are
//! all made from that same face ([`attacks`]). [`write_dataset`] writes JPEGs
//! in the UniAttackData layout with protocol lists for P1, P2.1 and P2.2, so
//! the real readers run on it unchanged. See `docs/synthetic-data.md`.

pub mod attacks;
pub mod canvas;
pub mod face;
mod writer;

pub use writer::{contact_sheet, write_dataset, write_dataset_over, SynthSummary};

use crate::error::{Error, Result};
use crate::label::{AttackKind, Label};
use crate::preprocess::MAX_SIZE;
use attacks::{PrintSetting, ADVERSARIAL_METHODS, EDITING_METHODS};
use face::{render, Capture, Identity};
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Generator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Seed of everything; default 0.
    pub seed: u64,
    /// Number of subjects (at least 5, so every split has one); default 15.
    pub subjects: usize,
    /// Image side in pixels; default 128 (tests), 224 for demos.
    pub image_size: u32,
    /// Live frames per subject (one recording); default 2.
    pub live_frames: usize,
    /// JPEG quality of written images; default 92.
    pub jpeg_quality: u8,
    /// How strong the digital attacks' traces are, 1 (default) to 8: the
    /// adversarial perturbation's amplitude, and the face swap's
    /// misalignment and resampling blur, are multiplied by it, its colour
    /// matching divided by it. At 1 neither a small ViT nor a small CNN
    /// trained for minutes tells them from live faces (see
    /// `docs/synthetic-data.md`); the offline demo uses a stronger setting.
    #[serde(default = "default_strength")]
    pub digital_strength: f32,
}

fn default_strength() -> f32 {
    1.0
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            subjects: 15,
            image_size: 128,
            live_frames: 2,
            jpeg_quality: 92,
            digital_strength: default_strength(),
        }
    }
}

/// The most subjects generated (UniAttackData has 1,800).
pub const MAX_SUBJECTS: usize = 10_000;

/// The most pixels a whole dataset may hold, all images together (2^33,
/// about 8.6 gigapixels: 3 to 5 GB of JPEGs), so a mistyped flag cannot fill
/// a disk.
pub const MAX_DATASET_PIXELS: u64 = 1 << 33;

impl SynthConfig {
    /// Images [`subject_images`] renders per subject: the live frames, two
    /// prints, a replay, one per adversarial and one per editing method.
    pub fn images_per_subject(&self) -> usize {
        self.live_frames
            .saturating_add(3 + ADVERSARIAL_METHODS.len() + EDITING_METHODS.len())
    }

    /// Pixels of all the dataset's images together (saturating).
    fn dataset_pixels(&self) -> u64 {
        let side = u64::from(self.image_size);
        (self.subjects as u64)
            .saturating_mul(self.images_per_subject() as u64)
            .saturating_mul(side * side)
    }

    /// Rejects a digital strength outside 1 to 8, fewer than 5 or more than
    /// [`MAX_SUBJECTS`] subjects, images outside 32 to
    /// [`crate::preprocess::MAX_SIZE`] pixels, live frame counts outside 1
    /// to 8, and datasets of more than [`MAX_DATASET_PIXELS`]. The message
    /// names the one setting at fault.
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| Err(Error::Config(message));
        if !(1.0..=8.0).contains(&self.digital_strength) {
            return invalid(format!(
                "digital attack strength must be 1 to 8, got {}",
                self.digital_strength
            ));
        }
        if !(5..=MAX_SUBJECTS).contains(&self.subjects) {
            return invalid(format!(
                "synthetic data needs 5 to {MAX_SUBJECTS} subjects (2 of every 5 train, 1 dev, 2 test), got {}",
                self.subjects
            ));
        }
        if !(32..=MAX_SIZE).contains(&self.image_size) {
            return invalid(format!(
                "synthetic images must be 32 to {MAX_SIZE} px, got {} px",
                self.image_size
            ));
        }
        if !(1..=LIVE_FRAMES.len()).contains(&self.live_frames) {
            return invalid(format!(
                "synthetic data needs 1 to {} live frames per subject, got {}",
                LIVE_FRAMES.len(),
                self.live_frames
            ));
        }
        if self.dataset_pixels() > MAX_DATASET_PIXELS {
            return invalid(format!(
                "{} subjects x {} images of {size}x{size} px is {} pixels, more than {MAX_DATASET_PIXELS} \
                 (several GB of JPEGs): use fewer subjects or a smaller size",
                self.subjects,
                self.images_per_subject(),
                self.dataset_pixels(),
                size = self.image_size,
            ));
        }
        Ok(())
    }
}

/// Frame names of UniAttackData's live recordings.
const LIVE_FRAMES: [&str; 8] = [
    "0012", "0057", "0070", "0092", "0107", "0123", "0129", "0145",
];

/// Regions and identity prefixes of UniAttackData.
const REGIONS: [(&str, &str); 3] = [
    ("africa", "AF"),
    ("central-asia", "CA"),
    ("east-asia", "EA"),
];

/// One generated image with its label and its path below the data root.
#[derive(Debug, Clone)]
pub struct SynthImage {
    /// Path relative to the data root, as the protocol lists write it.
    pub entry: String,
    /// Ground truth (with attack kind and method).
    pub label: Label,
    /// The picture.
    pub image: RgbImage,
}

/// Which split a subject belongs to: 2 of every 5 subjects train, 1 dev, 2 test.
pub fn subject_split(index: usize) -> crate::protocol::uniattack::Split {
    use crate::protocol::uniattack::Split;
    match index % 5 {
        0 | 1 => Split::Train,
        2 => Split::Dev,
        _ => Split::Test,
    }
}

fn subject_id(index: usize) -> (&'static str, String) {
    let (region, prefix) = REGIONS[index % REGIONS.len()];
    (region, format!("{prefix}-{:03}", index + 1))
}

fn subject_rng(seed: u64, index: usize, purpose: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((index as u64) << 8) | purpose);
    rng
}

/// Everything about subject `index`: identity and base capture.
fn subject(config: &SynthConfig, index: usize) -> (Identity, Capture) {
    let mut rng = subject_rng(config.seed, index, 0);
    (Identity::random(&mut rng), Capture::random(&mut rng))
}

/// The donor of subject `index`'s face swaps: another subject, fixed by the seed.
fn donor_of(config: &SynthConfig, index: usize) -> usize {
    let offset = 1 + (subject_rng(config.seed, index, 1).random_range(0..config.subjects - 1));
    (index + offset) % config.subjects
}

/// Renders every image of subject `index`: live frames, print (indoor,
/// outdoor), replay, one image per adversarial method and per editing method.
pub fn subject_images(config: &SynthConfig, index: usize) -> Result<Vec<SynthImage>> {
    config.validate()?;
    let size = config.image_size as usize;
    let (identity, capture) = subject(config, index);
    let (region, id) = subject_id(index);
    let mut rng = subject_rng(config.seed, index, 2);
    let mut images = Vec::new();
    let live_dir = format!("UniAttackData/Data/live/{region}/{id}/real.rssdk/color");
    let mut frame_capture = capture.clone();
    let mut first_live = None;
    for frame in LIVE_FRAMES.iter().take(config.live_frames) {
        let canvas = render(&identity, &frame_capture, size);
        images.push(SynthImage {
            entry: format!("{live_dir}/{frame}.jpg"),
            label: Label::BonaFide,
            image: canvas.to_rgb8(),
        });
        first_live.get_or_insert(canvas);
        frame_capture = frame_capture.next_frame(&mut rng);
    }
    let live = first_live.unwrap_or_else(|| render(&identity, &capture, size));
    for (setting, folder) in [
        (PrintSetting::Indoor, "cloth-indoor"),
        (PrintSetting::Outdoor, "cloth-outdoor"),
    ] {
        images.push(SynthImage {
            entry: format!("UniAttackData/Data/spoof/{region}/{id}/{folder}/color/0070.jpg"),
            label: Label::Attack(AttackKind::Print),
            image: attacks::print(&live, setting, &mut rng).to_rgb8(),
        });
    }
    images.push(SynthImage {
        entry: format!("UniAttackData/Data/spoof/{region}/{id}/screen-rs/color/0070.jpg"),
        label: Label::Attack(AttackKind::Replay),
        image: attacks::replay(&live, &mut rng).to_rgb8(),
    });
    for (m, method) in ADVERSARIAL_METHODS.iter().enumerate() {
        images.push(SynthImage {
            entry: format!("UniAttackData/Data/adv-attacks/{method}/{method}_{region}-{size}x{size}/{id}/0057.jpg"),
            label: Label::Attack(AttackKind::Adversarial { method: Some(method.to_string()) }),
            image: attacks::adversarial(&live, m, config.digital_strength, &mut rng).to_rgb8(),
        });
    }
    let donor_index = donor_of(config, index);
    let (donor, _) = subject(config, donor_index);
    let (_, donor_id) = subject_id(donor_index);
    for (m, method) in EDITING_METHODS.iter().enumerate() {
        images.push(SynthImage {
            entry: format!("UniAttackData/Data/{method}/{region}/{id}-To-{donor_id}/0001.jpg"),
            label: Label::Attack(AttackKind::Editing {
                method: Some(method.to_string()),
            }),
            image: attacks::editing(
                &live,
                &capture,
                &donor,
                &identity,
                m,
                config.digital_strength,
                &mut rng,
            )
            .to_rgb8(),
        });
    }
    Ok(images)
}
