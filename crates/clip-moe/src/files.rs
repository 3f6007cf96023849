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
/// `path`, so readers never see a partial file. The temporary file is removed
/// on failure.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| Error::Io {
        action: "writing",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    // Unique per process and per call: two saves of the same path (threads,
    // or a save while another is under way) must not share a temporary file.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{call}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = write(&tmp).and_then(|()| {
        // Flush the data to disk before the rename makes it visible, so a
        // crash cannot leave the final name pointing at a partial file.
        std::fs::File::open(&tmp)
            .and_then(|file| file.sync_all())
            .map_err(|source| Error::Io {
                action: "syncing",
                path: tmp.clone(),
                source,
            })?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            action: "renaming into",
            path: path.to_path_buf(),
            source,
        })?;
        // Make the rename itself durable. Best effort: some file systems
        // cannot open a directory for syncing, and the data is already safe.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    });
    if result.is_err() {
        // Best effort: the write error is what the caller needs to see.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_text(text: &'static str) -> impl FnOnce(&Path) -> Result<()> {
        move |tmp| {
            std::fs::write(tmp, text).map_err(|source| Error::Io {
                action: "writing",
                path: tmp.to_path_buf(),
                source,
            })
        }
    }

    #[test]
    fn overlapping_saves_of_one_path_do_not_share_a_temporary_file() -> Result<()> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("model.safetensors");
        // A second save of the same path completes while the first is
        // between its write and its rename (as with two threads).
        write_atomically(&path, |tmp| {
            write_text("first")(tmp)?;
            write_atomically(&path, write_text("second"))?;
            assert_eq!(std::fs::read_to_string(&path).expect("second"), "second");
            Ok(())
        })?;
        assert_eq!(std::fs::read_to_string(&path).expect("first"), "first");
        // Nothing but the target is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listing")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
        Ok(())
    }
}
