//! Writing files so that a crash never leaves a partial file under the
//! final name, and never writing over a file that is also an input.
//!
//! The workspace's writers (model configs and checkpoints, training
//! checkpoints and reports, synthetic datasets, the command-line tools'
//! outputs) all go through [`write_atomically`]: the data goes to a
//! temporary file beside the target, is flushed to disk, and is renamed
//! over the target, and the directory entry is flushed too. Readers see the
//! old file or the new one, never a mix.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an atomic write failed: the caller's writer, or the file system.
#[derive(Debug)]
pub enum Failure<E> {
    /// The closure that wrote the temporary file failed.
    Write(E),
    /// Creating, syncing or renaming failed.
    Io {
        /// What was being done (`"syncing"`, `"renaming into"`, ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
}

impl<E: std::fmt::Display> std::fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Write(e) => e.fmt(f),
            Failure::Io {
                action,
                path,
                source,
            } => write!(f, "{action} {}: {source}", path.display()),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for Failure<E> {}

/// The temporary name beside `path`: `.<name>.tmp-<pid>-<n>`, unique per
/// process and call, so two writes of one path never share it.
fn temporary_path(path: &Path) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name()?;
    let call = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(file_name);
    name.push(format!(".tmp-{}-{call}", std::process::id()));
    Some(path.with_file_name(name))
}

/// Whether `name` is one of [`write_atomically`]'s temporary files (left
/// behind only by a process killed mid-write).
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

/// Runs `write` on a temporary file beside `path`, flushes it to disk and
/// renames it to `path`. On any failure the temporary file is removed and
/// `path` is untouched.
pub fn write_atomically<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), Failure<E>> {
    let tmp = temporary_path(path).ok_or_else(|| Failure::Io {
        action: "writing",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let result = write(&tmp).map_err(Failure::Write).and_then(|()| {
        // Flush the data before the rename makes it visible, so a crash
        // cannot leave the final name pointing at a partial file.
        std::fs::File::open(&tmp)
            .and_then(|file| file.sync_all())
            .map_err(|source| Failure::Io {
                action: "syncing",
                path: tmp.clone(),
                source,
            })?;
        std::fs::rename(&tmp, path).map_err(|source| Failure::Io {
            action: "renaming into",
            path: path.to_path_buf(),
            source,
        })?;
        // Make the rename durable. Best effort: some file systems cannot
        // open a directory for syncing, and the data is already safe.
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

/// [`write_atomically`] of `bytes`, creating the parent directory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), Failure<io::Error>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Failure::Io {
            action: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_atomically(path, |tmp| std::fs::write(tmp, bytes))
}

/// Whether `a` and `b` are the same file: the same path once resolved, or
/// (on Unix) hard links to one inode. A path that does not exist is the
/// same as no existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
    }
}

/// Errors when `output` is one of `inputs` (so writing it would destroy an
/// input), naming both.
pub fn refuse_input_as_output(output: &Path, inputs: &[&Path]) -> io::Result<()> {
    match inputs.iter().find(|input| same_file(output, input)) {
        Some(input) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "refusing to write {}: it is the input {}; choose another output",
                output.display(),
                input.display()
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_saves_of_one_path_do_not_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // A second save of the same path completes while the first is
        // between its write and its rename (as with two threads).
        write_atomically(&path, |tmp| {
            std::fs::write(tmp, "first")?;
            write_atomically(&path, |tmp| std::fs::write(tmp, "second")).unwrap();
            assert_eq!(std::fs::read_to_string(&path)?, "second");
            Ok::<(), io::Error>(())
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("model.safetensors")]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        std::fs::write(&path, "old").unwrap();
        let err = write_atomically(&path, |tmp| {
            std::fs::write(tmp, "partial")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(matches!(err, Failure::Write(_)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn inputs_are_recognised_through_other_spellings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("face.png");
        std::fs::write(&input, "x").unwrap();
        let dotted = dir.path().join(".").join("face.png");
        assert!(refuse_input_as_output(&dotted, &[&input]).is_err());
        #[cfg(unix)]
        {
            let link = dir.path().join("hard.png");
            std::fs::hard_link(&input, &link).unwrap();
            let err = refuse_input_as_output(&link, &[&input]).unwrap_err();
            assert!(err.to_string().contains("face.png"), "{err}");
        }
        assert!(refuse_input_as_output(&dir.path().join("new.png"), &[&input]).is_ok());
        assert!(is_temporary_name(".face.png.tmp-12-0"));
        assert!(!is_temporary_name("face.png"));
    }
}
