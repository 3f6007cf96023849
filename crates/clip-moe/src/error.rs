//! Typed errors of this crate. Every variant names the file, tensor or input
//! at fault and, where there is one, the fix.

use std::path::PathBuf;

/// Errors of model construction, loading, saving, tokenisation and forward
/// passes.
///
/// Forward passes also run through [`candle_core::Module`]-style signatures
/// returning `candle_core::Result`: there these errors travel wrapped in
/// [`candle_core::Error`] (see the `From` impl) and keep their message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`"reading"`, `"writing"`, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `config.json` (or checkpoint config) is not valid JSON of the
    /// expected shape.
    #[error("config {path}: {source}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// serde's message, with line and column.
        source: serde_json::Error,
    },
    /// A configuration field has an unusable value.
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The field at fault.
        field: String,
        /// What is wrong and what would fix it.
        reason: String,
    },
    /// A checkpoint tensor has another shape than the model's parameter of
    /// the same name: the checkpoint and the config disagree.
    #[error(
        "checkpoint {path}: tensor `{name}` has shape {found:?}, the model expects {expected:?} \
         (does config.json match this checkpoint?)"
    )]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Shape of the model's parameter.
        expected: Vec<usize>,
        /// Shape stored in the file.
        found: Vec<usize>,
    },
    /// A checkpoint file could not be opened or one of its tensors read
    /// (not safetensors, a corrupt pickle, an unsupported dtype, ...).
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong, with the tensor's name where there is one.
        message: String,
    },
    /// Strict loading found missing or unexpected tensors.
    #[error(
        "checkpoint {path} does not match the model exactly: {} missing ({}), {} unexpected ({})",
        missing.len(), preview(missing), unexpected.len(), preview(unexpected)
    )]
    StrictLoad {
        /// The checkpoint file.
        path: PathBuf,
        /// Model parameters absent from the file.
        missing: Vec<String>,
        /// File tensors the model has no parameter for.
        unexpected: Vec<String>,
    },
    /// A model input has the wrong shape, dtype or content.
    #[error("{input}: {reason}")]
    InvalidInput {
        /// The input at fault (`pixel_values`, `input_ids` row 3, ...).
        input: String,
        /// What is wrong and what would fix it.
        reason: String,
    },
    /// The tokenizer file could not be read or used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// The tokenizers crate's message.
        message: String,
    },
    /// The model files could not be found locally nor fetched from the hub.
    #[error("{0}")]
    Hub(String),
    /// A Soft MoE layer could not be built.
    #[error(transparent)]
    SoftMoe(#[from] softmoe::Error),
    /// A tensor operation failed; candle's message names the operation.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for candle_core::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Candle(inner) => inner,
            other => candle_core::Error::wrap(other),
        }
    }
}

/// The first few names of a list, for error messages.
fn preview(names: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = names
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(", ...");
    }
    text
}

impl Error {
    pub(crate) fn invalid_input(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            input: input.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
