//! Reading a whole input file (a list, an image) with the checks every
//! reader needs before it starts: a FIFO or a device reports no size and
//! may never end, and a file far larger than its kind can be is a mistake
//! (an archive or a video given as a list or an image). The reading itself
//! is `atomic_io::read_regular_file`'s; this names the refusals.

/// Why a file was not read.
pub(crate) enum ReadFailure {
    /// The operating system's error.
    Io(std::io::Error),
    /// Refused before reading: not a regular file, or too large.
    Refused(String),
}

/// The bytes of `path`, a regular file of at most `max` bytes; `what`
/// names what it should be ("a list of images"), for the message.
pub(crate) fn read_bounded(
    path: &std::path::Path,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, ReadFailure> {
    atomic_io::read_regular_file(path, max).map_err(|refused| match refused {
        atomic_io::ReadRefused::Io(e) => ReadFailure::Io(e),
        atomic_io::ReadRefused::NotRegular(kind) => {
            ReadFailure::Refused(format!("not a regular file but {kind}"))
        }
        atomic_io::ReadRefused::TooLarge => {
            ReadFailure::Refused(format!("more than {what} would be ({max} bytes at most)"))
        }
    })
}
