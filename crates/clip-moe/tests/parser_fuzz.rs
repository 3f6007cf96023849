//! Model-file parsers under arbitrary input (seeded ChaCha8 streams):
//! `config.json`, safetensors headers and `tokenizer.json`, as random bytes
//! and as mutations of the committed tiny model's files. None panics, each
//! finishes quickly, and an accepted config is within the documented limits.

mod common;

use std::time::{Duration, Instant};

use candle_nn::{VarBuilder, VarMap};
use clip_moe::{check_config_against_file, load_weights, ClipConfig, ClipModel, ClipTokenizer};
use common::fixture_dir;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `bytes` with a few random bytes overwritten, inserted or cut.
fn mutate(bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..rng.random_range(1..8) {
        if out.is_empty() {
            break;
        }
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..3) {
            0 => out[at] = rng.random(),
            1 => out.insert(at, rng.random()),
            _ => out.truncate(at),
        }
    }
    out
}

/// A config.json with one number replaced by an extreme value.
fn extreme_config(text: &str, rng: &mut ChaCha8Rng) -> String {
    let values = [
        "0",
        "-1",
        "1e308",
        "18446744073709551615",
        "99999999999",
        "NaN",
        "-0.0",
        "1e-320",
        "3",
    ];
    let digits: Vec<usize> = text
        .char_indices()
        .filter(|(i, c)| {
            c.is_ascii_digit() && !text[..*i].ends_with(|p: char| p.is_ascii_digit() || p == '.')
        })
        .map(|(i, _)| i)
        .collect();
    let start = digits[rng.random_range(0..digits.len())];
    let end = text[start..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'))
        .map_or(text.len(), |n| start + n);
    format!(
        "{}{}{}",
        &text[..start],
        values[rng.random_range(0..values.len())],
        &text[end..]
    )
}

#[test]
fn configs_parse_or_fail_without_panic_and_stay_within_limits() {
    let text = std::fs::read_to_string(fixture_dir().join("config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut accepted = 0;
    for round in 0..400 {
        let candidate = if round % 2 == 0 {
            extreme_config(&text, &mut rng).into_bytes()
        } else {
            mutate(text.as_bytes(), &mut rng)
        };
        std::fs::write(&path, &candidate).unwrap();
        let Ok(cfg) = ClipConfig::from_file(&path) else {
            continue;
        };
        accepted += 1;
        assert!(cfg.parameter_estimate() <= clip_moe::MAX_PARAMETERS);
        // Small enough to build quickly: the tiny model's sizes or a few changed.
        if cfg.parameter_estimate() < 2_000_000 {
            let start = Instant::now();
            let varmap = VarMap::new();
            let built = ClipModel::new(
                &cfg,
                VarBuilder::from_varmap(
                    &varmap,
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                ),
            );
            assert!(built.is_ok(), "{:?}", built.err());
            assert!(start.elapsed() < Duration::from_secs(10));
        }
    }
    assert!(accepted > 20, "only {accepted} configs accepted");
}

/// Damaged weight files: the header check and the loader report an error
/// or load, never panic.
#[test]
fn damaged_safetensors_never_panic() {
    let bytes = std::fs::read(fixture_dir().join("model.safetensors")).unwrap();
    let cfg = ClipConfig::from_file(fixture_dir().join("config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for round in 0..150 {
        let damaged = if round % 3 == 0 {
            // Damage the header (its length prefix and JSON) specifically.
            let mut head = bytes.clone();
            let at = rng.random_range(0..head.len().min(2_000));
            head[at] = rng.random();
            head
        } else {
            mutate(&bytes, &mut rng)
        };
        std::fs::write(&path, &damaged).unwrap();
        let start = Instant::now();
        let _ = check_config_against_file(&cfg, &path);
        let varmap = VarMap::new();
        let model = ClipModel::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu),
        )
        .unwrap();
        let _ = load_weights(&varmap, &path, true);
        drop(model);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn damaged_tokenizer_files_never_panic() {
    let bytes = std::fs::read(fixture_dir().join("tokenizer.json")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    for round in 0..200 {
        let damaged = if round % 4 == 0 {
            (0..rng.random_range(0..500))
                .map(|_| rng.random())
                .collect()
        } else {
            mutate(&bytes, &mut rng)
        };
        let start = Instant::now();
        if let Ok(tokenizer) = ClipTokenizer::from_bytes(&damaged, "fuzz.json", 16) {
            let _ = tokenizer.encode_ids(&["This is an image of a live face.", ""]);
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
