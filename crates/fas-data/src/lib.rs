//! Face anti-spoofing data: dataset readers (UniAttackData in its three
//! published forms, JFSFDB, generic lists, image folders), CLIP's image
//! transform (Pillow's resize and crop, bit for bit), seedable augmentation,
//! a multi-threaded batch loader, and a synthetic unified-attack generator
//! for demos and tests.
//!
//! Everything between files on disk and a `(batch, 3, 224, 224)` tensor; it
//! knows nothing of models. Every reader states its label convention
//! ([`LabelConvention`]): published FAS code uses both "1 = live" and
//! "1 = fake", so none is guessed.
//!
//! ```
//! use fas_data::{read_list, synth, ListFormat, ListOptions, Loader, LoaderConfig};
//! use fas_data::protocol::uniattack::{protocol_list_path, Modality, Protocol, Split};
//!
//! # fn main() -> fas_data::Result<()> {
//! let root = tempfile::tempdir().map_err(|reason| fas_data::Error::Io {
//!     path: std::env::temp_dir(),
//!     reason,
//! })?;
//! // A tiny synthetic UniAttackData tree (6 subjects, 64 px images).
//! synth::write_dataset(root.path(), &synth::SynthConfig { subjects: 6, image_size: 64, ..Default::default() })?;
//! let list = protocol_list_path(root.path(), Protocol::P1, Modality::Image, Split::Train);
//! let listing = read_list(&list, root.path(), &ListFormat::UniattackProtocol, &ListOptions::default())?;
//!
//! let config = LoaderConfig { batch_size: 4, ..LoaderConfig::training(42) };
//! let loader = Loader::new(listing.samples, config)?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     assert_eq!(batch.images.dims(), &[4, 3, 224, 224]);
//! }
//! # Ok(())
//! # }
//! ```

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod augment;
mod bounded_read;
mod error;
pub mod image_io;
mod jpeg_scan;
mod jpeg_segments;
mod label;
pub mod loader;
pub mod preprocess;
pub mod protocol;
mod resample;
mod sample;
pub mod synth;
pub mod video;

pub use augment::{AugmentConfig, ColorJitter, RandomResizedCrop};
pub use error::{Error, Problem, Result};
pub use image_io::{DecodedImage, Resampling};
pub use label::{attack_hint_from_path, AttackKind, Category, Label, LabelConvention};
pub use loader::{Balance, Batch, Epoch, Loader, LoaderConfig};
pub use preprocess::{ClipTransform, Normalization, TransformInput};
pub use protocol::folder::read_folder;
pub use protocol::{
    read_list, BadInputPolicy, FileCheck, ListFormat, ListOptions, ListSpec, Listing, VideoIdRule,
};
pub use sample::{Media, Sample};
pub use video::{FrameNames, FrameSelection};
