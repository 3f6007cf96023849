//! Typed errors. Every message names the file (and line) at fault, so a user
//! holding a 20,000-line protocol list can go straight to the bad entry.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with the input, located as precisely as possible.
///
/// Listing collects these instead of stopping at the first, so one run shows
/// every broken line and missing image of a list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The list file (or, for folder layouts and image checks, the image) at fault.
    /// In JSON a path that is not UTF-8 is written lossily (U+FFFD for the
    /// bad bytes), so one such path cannot make a whole report unwritable.
    #[serde(serialize_with = "lossy_path")]
    pub file: PathBuf,
    /// 1-based line in `file`; `None` when the problem is not tied to a line.
    pub line: Option<usize>,
    /// What is wrong and, where it helps, what was expected.
    pub message: String,
}

fn lossy_path<S: serde::Serializer>(
    path: &std::path::Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// Longest piece of input an error message quotes.
const QUOTE_LIMIT: usize = 200;

/// `text` for an error message: whole when short, else its first
/// [`QUOTE_LIMIT`] bytes (at a character boundary) and its length, so a
/// message about a 20 MB line is not 20 MB.
pub(crate) fn quote(text: &str) -> String {
    if text.len() <= QUOTE_LIMIT {
        return text.to_string();
    }
    let mut end = QUOTE_LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

impl Problem {
    /// A problem at `line` (1-based) of `file`.
    pub fn at_line(file: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: Some(line),
            message: message.into(),
        }
    }

    /// A problem with a whole file (an image that does not decode, a folder).
    pub fn in_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "protocol file {} line {line}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The operating system's reason.
        reason: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {reason}", path.display())]
    Write {
        /// What was being written.
        path: PathBuf,
        /// The operating system's or encoder's reason.
        reason: std::io::Error,
    },
    /// An image is missing, truncated or not decodable.
    #[error("image {}: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why it could not be used.
        message: String,
    },
    /// Listing or checking found problems and the policy is [`crate::BadInputPolicy::Fail`].
    #[error("{} problem(s) in {}:\n{}", problems.len(), source_name.display(), join_problems(problems))]
    Invalid {
        /// The list file or folder that was read.
        source_name: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// Frame directories given to the loader could not be listed (missing,
    /// or holding no frames) and the policy is [`crate::BadInputPolicy::Fail`].
    #[error("{} unusable frame director(ies):\n{}", problems.len(), join_problems(problems))]
    FrameDirectories {
        /// One problem per unusable directory.
        problems: Vec<Problem>,
    },
    /// A configuration value is out of range (batch size 0, crop scale > 1, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A sample needed a label (for training targets or balancing) and has none.
    #[error("sample {0} has no label")]
    Unlabelled(String),
    /// A decoded image cannot be preprocessed (zero width or height).
    #[error("cannot preprocess image: {0}")]
    Preprocess(String),
    /// A worker thread (loader, checker or generator) failed.
    #[error("worker thread failed: {0}")]
    Worker(String),
    /// Building the output tensor failed.
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
