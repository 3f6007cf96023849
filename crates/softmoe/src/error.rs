//! Typed errors of this crate.

/// Errors of Soft MoE construction and forward passes.
///
/// Forward passes run through [`candle_nn::Module`], whose signature is
/// `candle_core::Result`: there these errors travel wrapped in
/// [`candle_core::Error`] (see the `From` impl) and keep their message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field has an unusable value.
    #[error("invalid Soft MoE config: `{field}` {reason}")]
    InvalidConfig {
        /// The field at fault.
        field: &'static str,
        /// What is wrong and what would fix it.
        reason: String,
    },
    /// The input tensor does not have the `(batch, tokens, dim)` shape the
    /// layer was built for.
    #[error("Soft MoE input: expected shape (batch, tokens, {expected_dim}), got {got:?}")]
    InputShape {
        /// The layer's `dim`.
        expected_dim: usize,
        /// Shape of the tensor given.
        got: Vec<usize>,
    },
    /// A tensor operation failed (shape mismatch in a checkpoint, device
    /// error, ...); candle's message names the tensor.
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
