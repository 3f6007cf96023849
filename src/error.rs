//! Typed errors of the application layer. Each variant names the file,
//! step, split or tensor at fault and, where there is one, the fix.

use std::path::PathBuf;

/// Errors of training, evaluation and detection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An experiment setting is unusable.
    #[error("invalid setting `{field}`: {reason}")]
    Config {
        /// The setting at fault (`optim.lr`, `--protocol`, ...).
        field: String,
        /// What is wrong and what would fix it.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`"reading"`, `"writing"`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A JSON file (config, metrics, report) is not what was expected.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's message, with line and column.
        source: serde_json::Error,
    },
    /// A training checkpoint is unreadable, corrupted or belongs to another run.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },
    /// The loss or a gradient stopped being finite.
    #[error(
        "step {step}: {what} is not finite; training stopped. The checkpoints written so far \
         are intact, but --resume replays the same steps and would diverge again: train anew \
         (another --output) with a lower --lr or with --clip-grad-norm"
    )]
    NonFinite {
        /// The optimizer step (1-based) at which it happened.
        step: u64,
        /// The loss, or the gradient of a named parameter.
        what: String,
    },
    /// A data split cannot be used as asked (empty, one class only, ...).
    #[error("{split} split ({}): {reason}", source_name.display())]
    Split {
        /// `train`, `dev` or `test`.
        split: String,
        /// The list file or folder it came from.
        source_name: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The requested device is not available in this build or machine.
    #[error("device {device}: {reason}")]
    Device {
        /// The device as asked (`cuda:0`, ...).
        device: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Dataset reading or loading failed.
    #[error(transparent)]
    Data(#[from] fas_data::Error),
    /// The model could not be built, loaded or run.
    #[error(transparent)]
    Model(#[from] clip_moe::Error),
    /// Metrics could not be computed.
    #[error(transparent)]
    Metrics(#[from] fas_metrics::MetricsError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Config`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Io`] about `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Checkpoint`] about `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
