//! Shared helpers of the integration tests. The fixtures under
//! `tests/fixtures/tiny_clip/` come from `scripts/clip_moe/gen_fixtures.py`
//! (a tiny random transformers `CLIPModel` and CLIP tokenizer, with the
//! outputs transformers computes).

#![allow(dead_code)] // each test binary uses a subset

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use clip_moe::{ClipConfig, TextInput};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip")
}

pub fn fixture_config() -> ClipConfig {
    ClipConfig::from_file(fixture_dir().join("config.json")).expect("fixture config")
}

pub fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("expected.safetensors"), &Device::Cpu)
        .expect("expected.safetensors")
}

/// `(rows, len)` i64 ids as u32 rows.
pub fn id_rows(ids: &Tensor) -> Vec<Vec<u32>> {
    ids.to_dtype(DType::U32)
        .and_then(|t| t.to_vec2::<u32>())
        .expect("u32 ids")
}

/// The fixture's three prompts, as transformers fed them.
pub fn fixture_text(cfg: &ClipConfig) -> TextInput {
    let rows = id_rows(&expected()["input_ids"]);
    TextInput::new(&rows, cfg.text_config.end_of_text_id(), &Device::Cpu).expect("text input")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference")
}
