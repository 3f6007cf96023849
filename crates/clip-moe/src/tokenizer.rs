//! CLIP's byte-level BPE tokenizer from a `tokenizer.json` (the `tokenizers`
//! crate with its pure-Rust regex engine), padded and truncated to the
//! model's context length.
//!
//! Rows are padded with `<|endoftext|>`, as transformers' `CLIPTokenizer`
//! pads; the text tower pools at the first end-of-text token (see
//! [`crate::TextInput`]), so padding never moves the pooled position.
//! Truncation keeps the closing `<|endoftext|>`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tokenizers::{PaddingParams, PaddingStrategy, PostProcessor, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::text::TextInput;

/// CLIP's end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The token CLIP puts before every text.
pub const START_OF_TEXT: &str = "<|startoftext|>";

/// A CLIP tokenizer producing fixed-length rows.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    end_of_text_id: u32,
    context_length: usize,
    path: PathBuf,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` and sets padding and truncation to
    /// `context_length` tokens (the text config's `max_position_embeddings`).
    pub fn from_file(path: impl AsRef<Path>, context_length: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::from_bytes(&bytes, path, context_length)
    }

    /// As [`ClipTokenizer::from_file`], from the bytes of a `tokenizer.json`
    /// (e.g. one bundled with `include_bytes!`); `name` stands for the file
    /// in error messages.
    pub fn from_bytes(
        bytes: &[u8],
        name: impl Into<PathBuf>,
        context_length: usize,
    ) -> Result<Self> {
        let path = name.into();
        let fail = |message: String| Error::Tokenizer {
            path: path.clone(),
            message,
        };
        // `tokenizers` panics on some malformed files (e.g. an invalid code
        // point in a decoder); a bad file must be an error, not an abort.
        let parsed =
            std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)).map_err(|panic| {
                let reason = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                fail(format!("malformed tokenizer.json ({reason})"))
            })?;
        let mut tokenizer = parsed.map_err(|e| fail(e.to_string()))?;
        let end_of_text_id = tokenizer.token_to_id(END_OF_TEXT).ok_or_else(|| {
            fail(format!(
                "has no `{END_OF_TEXT}` token: not a CLIP tokenizer"
            ))
        })?;
        // The post-processor's special tokens must fit: `tokenizers`
        // subtracts their count from the truncation length unchecked.
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if context_length < added.max(2) {
            return Err(fail(format!(
                "context length {context_length} leaves no room for the {} special tokens \
                 (start and end) every row gets",
                added.max(2)
            )));
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: context_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| fail(e.to_string()))?;
        // CLIP pools the text at its first `<|endoftext|>` and was trained
        // with `<|startoftext|>` first: a file without the post-processor
        // that adds them loads, and gives wrong embeddings. Checked before
        // padding, which pads with `<|endoftext|>` too.
        let start = tokenizer.token_to_id(START_OF_TEXT);
        let probe = tokenizer
            .encode("a", true)
            .map_err(|e| fail(e.to_string()))?;
        let ids = probe.get_ids();
        if start.is_none() || ids.first() != start.as_ref() || ids.last() != Some(&end_of_text_id) {
            return Err(fail(format!(
                "does not put `{START_OF_TEXT}` before a text and `{END_OF_TEXT}` after it (its \
                 post-processor is missing or another model's): not a CLIP tokenizer"
            )));
        }
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            pad_id: end_of_text_id,
            pad_token: END_OF_TEXT.to_string(),
            ..PaddingParams::default()
        }));
        Ok(Self {
            tokenizer,
            end_of_text_id,
            context_length,
            path,
        })
    }

    /// The id of `<|endoftext|>`.
    pub fn end_of_text_id(&self) -> u32 {
        self.end_of_text_id
    }

    /// Tokens per row.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Token ids of each text: `<|startoftext|> ... <|endoftext|>`, padded
    /// with `<|endoftext|>` or truncated to the context length.
    pub fn encode_ids<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings =
            self.tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| Error::Tokenizer {
                    path: self.path.clone(),
                    message: e.to_string(),
                })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Tokenises a batch for the text tower.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S], device: &Device) -> Result<TextInput> {
        if texts.is_empty() {
            return Err(Error::invalid_input("texts", "no text to encode"));
        }
        TextInput::new(&self.encode_ids(texts)?, self.end_of_text_id, device)
    }
}
