//! Writing files so that a crash never leaves a partial file under the
//! final name, never writing over a file that is also an input, and
//! reading an input file whole only where that ends ([`read_regular_file`]:
//! a regular file, up to a bound).
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

mod read;
pub use read::{read_regular_file, ReadRefused};

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

/// The private temporary directory beside `path`: `.<name>.tmp-<pid>-<n>`,
/// unique per process and call, so two writes of one path never share it.
fn temporary_dir(path: &Path) -> Option<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name()?;
    let call = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(".");
    name.push(file_name);
    name.push(format!(".tmp-{}-{call}", std::process::id()));
    Some(path.with_file_name(name))
}

/// Whether `name` is one of [`write_atomically`]'s temporary directories
/// (or, from earlier versions, temporary files): `.<name>.tmp-<pid>-<n>`,
/// left behind only by a process killed mid-write. Nothing else matches,
/// so a person's `.notes.tmp-draft` is never taken for one.
pub fn is_temporary_name(name: &str) -> bool {
    temporary_parts(name).is_some()
}

/// The target name and process id of a temporary's name
/// (`.<name>.tmp-<pid>-<n>`), `None` for any other name.
fn temporary_parts(name: &str) -> Option<(&str, &str)> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (target, tail) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let (pid, call) = tail.split_once('-')?;
    (!target.is_empty() && digits(pid) && digits(call)).then_some((target, pid))
}

/// Removes what a killed [`write_atomically`] left at `path` (a temporary
/// directory, or an earlier version's temporary file).
pub fn remove_temporary(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `write` on a temporary file, flushes it to disk and renames it to
/// `path`. On any failure `path` is untouched and the temporary is removed.
///
/// The temporary file is `<name>` inside a private directory
/// `.<name>.tmp-<pid>-<n>` beside `path`, so that a writer which makes
/// temporaries of its own beside the file it is given (safetensors
/// writes a `.tmpXXXXXX` and renames it) makes them inside that
/// directory: a kill at any moment leaves one directory, which
/// [`is_temporary_name`] recognises and [`remove_temporary`] removes,
/// rather than a nameless file as large as a checkpoint.
///
/// `path` must name a regular file or nothing: a directory, a FIFO, a
/// device or a socket there is refused, not replaced (an output given as
/// `/dev/full` or a named pipe is a mistake, and renaming over it would
/// remove it). A symbolic link is written through: the file it points to
/// gets the new content (and is created if missing, as `>` in a shell
/// would) and the link stays.
///
/// Before the first write into a directory, each process removes the
/// temporaries there that killed processes left ([`remove_dead_temporaries`]),
/// so a rerun after a kill does not leave them for good.
pub fn write_atomically<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), Failure<E>> {
    let refused = |why: String| Failure::Io {
        action: "writing",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, why),
    };
    let target = write_target(path).map_err(refused)?;
    let path = target.as_path();
    let (Some(dir), Some(file_name)) = (temporary_dir(path), path.file_name()) else {
        return Err(refused("not a file path".to_string()));
    };
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sweep_once(parent),
        // A bare file name: the current directory.
        _ => sweep_once(Path::new(".")),
    }
    std::fs::create_dir(&dir).map_err(|source| Failure::Io {
        action: "creating",
        path: dir.clone(),
        source,
    })?;
    let tmp = dir.join(file_name);
    let result = write(&tmp).map_err(Failure::Write).and_then(|()| {
        // A writer's own temporary is private (tempfile's 0600, which
        // safetensors' files kept): the file gets the mode any new file
        // gets here instead, the umask's.
        #[cfg(unix)]
        default_permissions(&dir, &tmp).map_err(|source| Failure::Io {
            action: "setting the permissions of",
            path: tmp.clone(),
            source,
        })?;
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
        if let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(parent) = std::fs::File::open(parent) {
                let _ = parent.sync_all();
            }
        }
        Ok(())
    });
    // Best effort, on success too (a writer's own leftovers): the write's
    // result is what the caller needs to see, and a directory left here is
    // removed with the other temporaries on the next resume.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Where a write of `path` goes: `path` itself when it names a regular
/// file or nothing, the file a symbolic link there points to (existing or
/// not); the reason otherwise.
fn write_target(path: &Path) -> Result<PathBuf, String> {
    let mut target = path.to_path_buf();
    // Links are followed one at a time (a link to a missing file is written
    // through, which `canonicalize` cannot resolve), up to the kernel's own
    // limit on a chain.
    for _ in 0..40 {
        if is_descriptor_path(&target) {
            return Err(format!(
                "leads to {}, an open file descriptor (such as standard output), which a write \
                 that replaces the file by renaming cannot reach: it would replace the file \
                 behind it (a redirect's earlier lines) or create a stray one; give the path of \
                 a file",
                target.display()
            ));
        }
        let meta = match std::fs::symlink_metadata(&target) {
            Ok(meta) => meta,
            // Nothing there (or an unreadable parent, which the write reports).
            Err(_) => return Ok(target),
        };
        if meta.is_file() {
            return Ok(target);
        }
        if !meta.file_type().is_symlink() {
            let what = read::kind_of(meta.file_type());
            return Err(if target == path {
                format!("is {what}, not a regular file; refusing to replace it (give the path of a file)")
            } else {
                format!(
                    "is a symbolic link to {}, which is {what}, not a regular file; refusing \
                     to replace it (give the path of a file)",
                    target.display()
                )
            });
        }
        // A link to something that is not a path (`/dev/stdout` on a pipe
        // leads to `pipe:[…]`): what it points to, as the kernel follows it.
        if let Ok(followed) = std::fs::metadata(&target) {
            if !followed.is_file() {
                return Err(format!(
                    "is a symbolic link to {}, not a regular file; refusing to write through \
                     it (give the path of a file)",
                    read::kind_of(followed.file_type())
                ));
            }
        }
        let next = std::fs::read_link(&target)
            .map_err(|e| format!("is a symbolic link that cannot be read: {e}"))?;
        target = match target.parent() {
            Some(parent) if next.is_relative() => parent.join(next),
            _ => next,
        };
    }
    Err("is a chain of more than 40 symbolic links (a loop?)".to_string())
}

/// Whether `path` names an open file descriptor: `/dev/fd/N`,
/// `/dev/stdout` and the like lead to `/proc/<pid>/fd/N` (or
/// `/proc/self/fd/N`), whose "link" is the open file itself (a pipe, a
/// deleted file, a file opened for appending), not a path to rename onto.
fn is_descriptor_path(path: &Path) -> bool {
    let parts: Vec<_> = path.components().collect();
    matches!(
        parts.as_slice(),
        [std::path::Component::RootDir, proc, _, fd, _]
            if proc.as_os_str() == "proc" && fd.as_os_str() == "fd"
    )
}

/// [`remove_dead_temporaries`] of `dir`, once per directory per process
/// (best effort: a failure to list or remove is not the write's failure).
fn sweep_once(dir: &Path) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let first = match SWEPT.lock() {
        Ok(mut swept) => swept
            .get_or_insert_with(HashSet::new)
            .insert(dir.to_path_buf()),
        Err(_) => false,
    };
    if first {
        let _ = remove_dead_temporaries(dir);
    }
}

/// Whether `/proc/<pid>/stat` gives the process's state as zombie (`Z`) or
/// dead (`X`): it has exited and will write nothing more, though its id is
/// still taken. The state is the first field after the command name's
/// closing parenthesis (the name itself may hold spaces and parentheses).
/// `false` where `/proc` cannot tell (not Linux, or no such file).
#[cfg(unix)]
fn has_exited(pid: libc::pid_t) -> bool {
    std::fs::read(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after_name = stat
            .iter()
            .rposition(|&b| b == b')')
            .map(|at| &stat[at + 1..]);
        let state = after_name.and_then(|rest| rest.iter().find(|b| !b.is_ascii_whitespace()));
        matches!(state, Some(b'Z' | b'X'))
    })
}

/// Removes the temporaries of [`write_atomically`] in `dir` that a process
/// killed mid-write left: a directory named `.<name>.tmp-<pid>-<n>` whose
/// process is gone (no process `<pid>` runs) and that holds only what a
/// write puts there (the file `<name>`, a writer's own `.tmp…` files, the
/// mode probe). Anything else of that name (a person's folder, a file) is
/// kept, and so are all of them where liveness cannot be checked (not
/// Unix).
///
/// A process id is local to its machine and PID namespace: on a file
/// system shared between machines or containers, a write in progress
/// elsewhere into this directory may have its temporary removed, and that
/// write then fails with an error (its target untouched); nothing is lost.
///
/// Returns the number removed; one that cannot be removed is passed over.
pub fn remove_dead_temporaries(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some((target, pid)) = name
            .to_str()
            .and_then(temporary_parts)
            .and_then(|(target, pid)| Some((target, pid.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let path = entry.path();
        if process_is_gone(pid)
            && holds_only_a_write(&path, target)
            && std::fs::remove_dir_all(&path).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `dir` is a directory (not a link) holding only what
/// [`write_atomically`] of `target` puts in its temporary directory: the
/// file `target`, the mode probe `.mode`, and a writer's own `.tmp…` files.
fn holds_only_a_write(dir: &Path, target: &str) -> bool {
    let is_dir = std::fs::symlink_metadata(dir).is_ok_and(|meta| meta.is_dir());
    is_dir
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries.into_iter().all(|entry| {
                entry.is_ok_and(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let plain = entry.file_type().is_ok_and(|t| t.is_file());
                    plain && (name == target || name == ".mode" || name.starts_with(".tmp"))
                })
            })
        })
}

/// Whether no process with id `pid` runs any more: `kill(pid, 0)` says no
/// such process, or (Linux) `/proc/<pid>/stat` says it has exited and only
/// waits to be reaped (a zombie: a writer killed by `timeout -s KILL` stays
/// one until its parent waits, and writes nothing more). `false` wherever
/// that cannot be told.
fn process_is_gone(pid: u32) -> bool {
    #[cfg(unix)]
    {
        if pid == std::process::id() {
            return false;
        }
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: signal 0 sends nothing; it only checks that the process
        // exists and may be signalled.
        let status = unsafe { libc::kill(pid, 0) };
        if status != 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        has_exited(pid)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// Gives `file` the permissions a file newly created in `dir` gets (the
/// umask's), read from a probe file made there.
#[cfg(unix)]
fn default_permissions(dir: &Path, file: &Path) -> io::Result<()> {
    let probe = dir.join(".mode");
    let permissions = std::fs::File::create(&probe)?.metadata()?.permissions();
    std::fs::remove_file(&probe)?;
    std::fs::set_permissions(file, permissions)
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
    fn a_writers_own_temporaries_stay_in_the_private_directory() {
        // As safetensors does: its own temporary beside the path it is
        // given, renamed onto that path. A kill before that rename must
        // leave only something the run's clean-up recognises.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step.safetensors");
        let mut seen = None;
        write_atomically(&path, |tmp| {
            let own = tmp.with_file_name(".tmpAb3dEf");
            std::fs::write(&own, "weights")?;
            // What a kill at this moment leaves beside the target.
            let left: Vec<(String, bool)> = std::fs::read_dir(dir.path())?
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name().into_string().unwrap(), e.path().is_dir())
                })
                .collect();
            seen = Some(left);
            std::fs::rename(&own, tmp)
        })
        .unwrap();
        let left = seen.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(is_temporary_name(&left[0].0) && left[0].1, "{left:?}");
        let temporary = dir.path().join(&left[0].0);
        assert!(!temporary.exists());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "weights");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("step.safetensors")]);

        // The clean-up of what a kill left: the directory with its files,
        // and an earlier version's temporary file.
        std::fs::create_dir(&temporary).unwrap();
        std::fs::write(temporary.join(".tmpAb3dEf"), "half").unwrap();
        remove_temporary(&temporary).unwrap();
        let old_style = dir.path().join(".step.safetensors.tmp-9-0");
        std::fs::write(&old_style, "half").unwrap();
        remove_temporary(&old_style).unwrap();
        remove_temporary(&old_style).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A file its writer made private (as tempfile, and so safetensors, do)
    /// ends with the mode of any new file here.
    #[cfg(unix)]
    #[test]
    fn the_file_gets_the_mode_of_a_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step.safetensors");
        write_atomically(&path, |tmp| {
            std::fs::write(tmp, "weights")?;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))
        })
        .unwrap();
        let fresh = dir.path().join("fresh");
        std::fs::write(&fresh, "").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&fresh));
    }

    /// Makes a FIFO (named pipe) at `path`.
    #[cfg(unix)]
    fn make_fifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mkfifo {}", path.display());
    }

    /// A FIFO, a socket or a directory at the path is refused and left as
    /// it was (a rename would have replaced it with a regular file).
    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        make_fifo(&fifo);
        let socket = dir.path().join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).unwrap();
        for (path, kind) in [
            (&fifo, "a FIFO"),
            (&socket, "a socket"),
            (&folder, "a directory"),
        ] {
            let err = write_bytes(path, b"data").unwrap_err().to_string();
            assert!(
                err.contains(&format!("is {kind}, not a regular file")),
                "{err}"
            );
        }
        let kind = |p: &Path| std::fs::symlink_metadata(p).unwrap().file_type();
        assert!(kind(&fifo).is_fifo() && kind(&socket).is_socket() && kind(&folder).is_dir());
        assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
        // Nothing else was made beside them (no temporary left).
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    /// A symbolic link is written through: the file it points to gets the
    /// content (and is created when missing) and the link stays a link. A
    /// link to a FIFO is refused.
    #[cfg(unix)]
    #[test]
    fn symbolic_links_are_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        write_bytes(&link, b"new").unwrap();
        let is_link = |p: &Path| {
            std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()
        };
        assert!(is_link(&link));
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");

        // A link to a file not made yet, through a second link.
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        let pending = dir.path().join("pending.json");
        std::os::unix::fs::symlink("elsewhere/made.json", &pending).unwrap();
        let chain = dir.path().join("chain.json");
        std::os::unix::fs::symlink(&pending, &chain).unwrap();
        write_bytes(&chain, b"made").unwrap();
        assert!(is_link(&chain) && is_link(&pending));
        let made = dir.path().join("elsewhere/made.json");
        assert_eq!(std::fs::read_to_string(made).unwrap(), "made");

        let fifo = dir.path().join("pipe");
        make_fifo(&fifo);
        let to_fifo = dir.path().join("to-fifo.json");
        std::os::unix::fs::symlink("pipe", &to_fifo).unwrap();
        let err = write_bytes(&to_fifo, b"x").unwrap_err().to_string();
        assert!(
            err.contains("is a symbolic link to a FIFO, not a regular file"),
            "{err}"
        );
        // A link to an open descriptor of a regular file (`/dev/stdout`
        // redirected to a log): refused, the log kept whole.
        let log = dir.path().join("log.txt");
        std::fs::write(&log, "earlier line\n").unwrap();
        let open = std::fs::File::open(&log).unwrap();
        let descriptor = {
            use std::os::fd::AsRawFd;
            format!("/proc/self/fd/{}", open.as_raw_fd())
        };
        let to_descriptor = dir.path().join("stdout");
        std::os::unix::fs::symlink(&descriptor, &to_descriptor).unwrap();
        for path in [Path::new(&descriptor), to_descriptor.as_path()] {
            let err = write_bytes(path, b"x").unwrap_err().to_string();
            assert!(err.contains("an open file descriptor"), "{err}");
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "earlier line\n");
        drop(open);
        std::fs::remove_file(&log).unwrap();
        std::fs::remove_file(&to_descriptor).unwrap();
        let names = |p: &Path| {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            names(dir.path()),
            [
                "chain.json",
                "elsewhere",
                "link.json",
                "pending.json",
                "pipe",
                "real.json",
                "to-fifo.json"
            ]
        );
    }

    /// The first write into a directory removes the temporary directories
    /// of processes that are gone, and keeps a live process's, and
    /// anything of such a name that a write does not leave (a person's
    /// folder of other files, a plain file).
    #[cfg(unix)]
    #[test]
    fn temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let dead = done.id();
        done.wait().unwrap();
        let mut running = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Killed mid-write: the file, a writer's own temporary.
        let dead_dir = dir.path().join(format!(".out.png.tmp-{dead}-0"));
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("out.png"), "half").unwrap();
        std::fs::write(dead_dir.join(".tmpAb3dEf"), "half").unwrap();
        // Killed between making the directory and writing.
        let empty = dir.path().join(format!(".c.jpg.tmp-{dead}-2"));
        std::fs::create_dir(&empty).unwrap();
        // Kept: a live process's, a person's folder, a plain file.
        let live = dir.path().join(format!(".b.jpg.tmp-{}-0", running.id()));
        std::fs::create_dir(&live).unwrap();
        let photos = dir.path().join(format!(".photos.tmp-{dead}-12"));
        std::fs::create_dir(&photos).unwrap();
        std::fs::write(photos.join("holiday.jpg"), "a person's").unwrap();
        let plain = dir.path().join(format!(".a.jpg.tmp-{dead}-3"));
        std::fs::write(&plain, "a person's").unwrap();

        write_bytes(&dir.path().join("out.png"), b"whole").unwrap();
        let _ = running.kill();
        let _ = running.wait();
        assert!(!dead_dir.exists() && !empty.exists());
        assert!(live.is_dir() && photos.join("holiday.jpg").is_file() && plain.is_file());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.png")).unwrap(),
            "whole"
        );
    }

    /// A writer that was killed but not yet reaped by its parent (a
    /// zombie, as `timeout -s KILL` leaves one for a moment) writes
    /// nothing more: its temporary is removed though its id is taken.
    #[cfg(target_os = "linux")]
    #[test]
    fn temporaries_of_unreaped_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not waited for: it stays a zombie until `wait` below.
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(&stat)
            .unwrap()
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            assert!(std::time::Instant::now() < deadline, "{pid} never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let temporary = dir.path().join(format!(".out.png.tmp-{pid}-0"));
        std::fs::create_dir(&temporary).unwrap();
        std::fs::write(temporary.join("out.png"), "half").unwrap();

        let removed = remove_dead_temporaries(dir.path()).unwrap();
        child.wait().unwrap();
        assert_eq!(removed, 1);
        assert!(!temporary.exists());
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
        assert!(is_temporary_name(".a.tmp-b.tmp-7-31"));
        for name in [
            "face.png",
            ".draft.tmp-notes",
            ".face.png.tmp-12",
            ".face.png.tmp-12-",
            ".face.png.tmp--0",
            ".face.png.tmp-1x-0",
            "..tmp-1-0",
            "face.png.tmp-12-0",
            ".tmpAb3dEf",
        ] {
            assert!(!is_temporary_name(name), "{name}");
        }
    }
}
