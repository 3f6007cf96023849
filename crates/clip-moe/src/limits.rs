//! Upper bounds on what a configuration may ask for, checked before anything
//! is allocated (`ClipConfig::validate`, `MoeConfig::validate`).

/// The largest width (hidden, intermediate, projection) a config may ask for.
pub const MAX_WIDTH: usize = 65_536;
/// The most encoder layers a config may ask for.
pub const MAX_LAYERS: usize = 1_024;
/// The largest input side, vocabulary and context a config may ask for:
/// `(image_size, vocab_size, max_position_embeddings)`.
pub const LIMITS: (usize, usize, usize) = (16_384, 10_000_000, 65_536);
/// The largest model a config may describe (40 GB of F32 weights).
pub const MAX_PARAMETERS: u128 = 10_000_000_000;
/// The largest `|logit_scale_init_value|` (e^10 is about 22,000).
pub const MAX_LOG_TEMPERATURE: f64 = 10.0;
