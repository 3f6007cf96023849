//! The file names of a model directory and the atomic write every saved
//! file goes through. Kept apart from [`crate::checkpoint`] so that the
//! configuration, the hub client and the checkpoint code all import this
//! small module instead of each other.

use std::path::Path;

use crate::error::{Error, Result};

/// Name of a model directory's configuration file.
pub const CONFIG_FILE: &str = "config.json";
/// Name of a model directory's full weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// PyTorch's pickled state dict, which older hub repositories hold instead
/// of [`WEIGHTS_FILE`]; read when that is absent.
pub const LEGACY_WEIGHTS_FILE: &str = "pytorch_model.bin";
/// Name of a fine-tuned directory's trainable delta (see
/// [`crate::checkpoint::WeightSelection::Delta`]).
pub const DELTA_FILE: &str = "delta.safetensors";

/// Name of a model directory's tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Runs `write` on a temporary file beside `path`, then renames it to
/// `path`, so readers never see a partial file (see the `atomic-io` crate).
/// The temporary file is removed on failure.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    atomic_io::write_atomically(path, write).map_err(|failure| match failure {
        atomic_io::Failure::Write(e) => e,
        atomic_io::Failure::Io {
            action,
            path,
            source,
        } => Error::Io {
            action,
            path,
            source,
        },
    })
}
