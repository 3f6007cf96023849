//! Reading a whole input file into memory, safely for any path a user may
//! give: only regular files (a FIFO blocks until a writer appears, a device
//! such as `/dev/zero` never ends), and only up to a size limit.

use std::fs::{File, FileType, Metadata};
use std::io::{self, Read};
use std::path::Path;

/// Why [`read_regular_file`] returned no bytes.
#[derive(Debug)]
pub enum ReadRefused {
    /// Inspecting, opening or reading the file failed.
    Io(io::Error),
    /// The path, after following symlinks, is not a regular file; what it
    /// is instead (`"a FIFO"`, `"a directory"`, ...).
    NotRegular(&'static str),
    /// The file holds more bytes than the limit.
    TooLarge,
}

/// The bytes of the regular file at `path` (symlinks followed), if it holds
/// at most `limit` bytes.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadRefused> {
    // The path first: opening a FIFO for reading would block until a
    // writer appears.
    check_regular(&std::fs::metadata(path).map_err(ReadRefused::Io)?)?;
    let (file, metadata) = open_regular(path)?;
    if metadata.len() > limit {
        return Err(ReadRefused::TooLarge);
    }
    // The length is only a hint (a file may grow while it is read, and
    // /proc files report 0), so the read itself stops after limit + 1 bytes.
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadRefused::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadRefused::TooLarge);
    }
    Ok(bytes)
}

/// Opens `path` and checks the open handle, which is what is read: the
/// path may have been replaced since it was checked (by a FIFO, too). On
/// Unix the open does not block (`O_NONBLOCK`, which a FIFO without a
/// writer would otherwise wait on, and which does not change reads of
/// regular files); the flag is cleared again before reading.
fn open_regular(path: &Path) -> Result<(File, Metadata), ReadRefused> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(ReadRefused::Io)?;
    let metadata = file.metadata().map_err(ReadRefused::Io)?;
    check_regular(&metadata)?;
    #[cfg(unix)]
    clear_nonblocking(&file).map_err(ReadRefused::Io)?;
    Ok((file, metadata))
}

/// Clears `O_NONBLOCK` on `file` (a regular file on a network file system
/// may honour it).
#[cfg(unix)]
fn clear_nonblocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the duration of the calls (`file` is
    // borrowed); F_GETFL and F_SETFL read and set status flags only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn check_regular(metadata: &Metadata) -> Result<(), ReadRefused> {
    if metadata.is_file() {
        Ok(())
    } else {
        Err(ReadRefused::NotRegular(kind_of(metadata.file_type())))
    }
}

/// What a file that is not a regular file is, for error messages.
pub(crate) fn kind_of(file_type: FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run`'s result, or a test failure after 30 s: a read blocked on a
    /// FIFO must fail the test, not hang it.
    fn within_30s<T: Send + 'static>(run: impl FnOnce() -> T + Send + 'static) -> T {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || sender.send(run()));
        receiver
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("still running after 30 s (blocked on a FIFO?)")
    }

    /// Makes a FIFO (named pipe) at `path`.
    #[cfg(unix)]
    fn make_fifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {}", path.display());
    }

    /// A FIFO is refused at once, not opened: opening it for reading would
    /// block until a writer appears.
    #[cfg(unix)]
    #[test]
    fn fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.txt");
        make_fifo(&fifo);
        let result = within_30s(move || read_regular_file(&fifo, 1 << 30));
        assert!(
            matches!(result, Err(ReadRefused::NotRegular("a FIFO"))),
            "{result:?}"
        );
    }

    /// A FIFO swapped in for the file after the path was checked: the open
    /// itself does not block, and the open handle is refused.
    #[cfg(unix)]
    #[test]
    fn a_fifo_behind_a_checked_path_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.txt");
        make_fifo(&fifo);
        let result = within_30s(move || open_regular(&fifo).map(|_| ()));
        assert!(
            matches!(result, Err(ReadRefused::NotRegular("a FIFO"))),
            "{result:?}"
        );
    }

    /// Files of up to `limit` bytes are read whole; one byte more is refused.
    #[test]
    fn reads_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten.txt");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular_file(&path, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular_file(&path, 9),
            Err(ReadRefused::TooLarge)
        ));
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(read_regular_file(&empty, 0).unwrap(), b"");
    }

    /// A regular file whose length says 0 but which holds more (a /proc
    /// file) is still cut at the limit: the read is bounded, not only the
    /// length check.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_read_is_bounded_when_the_length_is_wrong() {
        let path = Path::new("/proc/self/status");
        assert_eq!(std::fs::metadata(path).unwrap().len(), 0);
        assert!(matches!(
            read_regular_file(path, 16),
            Err(ReadRefused::TooLarge)
        ));
        assert!(read_regular_file(path, 1 << 20).unwrap().len() > 16);
    }

    /// Directories and devices, also behind a symlink, are named, not read.
    #[cfg(unix)]
    #[test]
    fn directories_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero.txt");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        for (path, kind) in [(dir.path(), "a directory"), (&zero, "a character device")] {
            match read_regular_file(path, 1 << 30) {
                Err(ReadRefused::NotRegular(got)) => assert_eq!(got, kind),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
    }
}
