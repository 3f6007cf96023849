//! The Rust tokenizer against the ids transformers' `CLIPTokenizer` gives
//! for the same `tokenizer.json` (`tests/fixtures/tiny_clip/tokens.json`,
//! from `scripts/clip_moe/gen_fixtures.py`).

mod common;

use candle_core::Device;
use clip_moe::{ClipTokenizer, Error};
use common::fixture_dir;
use serde_json::Value;

fn python_tokens() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("tokens.json")).expect("tokens.json");
    serde_json::from_str(&text).expect("tokens.json is JSON")
}

fn ids(value: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(value.clone()).expect("id rows")
}

#[test]
fn reproduces_transformers_ids() -> anyhow::Result<()> {
    let tokens = python_tokens();
    let context = tokens["context_length"].as_u64().expect("context") as usize;
    let tokenizer = ClipTokenizer::from_file(fixture_dir().join("tokenizer.json"), context)?;
    assert_eq!(
        u64::from(tokenizer.end_of_text_id()),
        tokens["eos_id"].as_u64().expect("eos")
    );
    let prompts: Vec<String> = serde_json::from_value(tokens["prompts"].clone())?;
    let padded = tokenizer.encode_ids(&prompts)?;
    assert_eq!(padded, ids(&tokens["padded_ids"]));
    // The unpadded ids are the padded rows' prefixes up to the first
    // <|endoftext|> for every prompt that fits.
    let eos = tokenizer.end_of_text_id();
    for (row, full) in padded.iter().zip(ids(&tokens["ids"])) {
        if full.len() <= context {
            assert_eq!(&row[..full.len()], full.as_slice());
        } else {
            assert_eq!(row.last(), Some(&eos), "truncation keeps <|endoftext|>");
        }
    }
    Ok(())
}

#[test]
fn batch_pools_at_the_first_end_of_text() -> anyhow::Result<()> {
    let tokenizer = ClipTokenizer::from_file(fixture_dir().join("tokenizer.json"), 16)?;
    let text = tokenizer.encode(
        &["A photo of a cat", "", "this is a fake face"],
        &Device::Cpu,
    )?;
    assert_eq!(text.input_ids().dims(), &[3, 16]);
    let rows = common::id_rows(text.input_ids());
    for (row, &pos) in rows.iter().zip(text.eos_positions()) {
        assert_eq!(row[pos], tokenizer.end_of_text_id());
        assert!(row[..pos]
            .iter()
            .all(|&id| id != tokenizer.end_of_text_id()));
        assert!(row[pos..]
            .iter()
            .all(|&id| id == tokenizer.end_of_text_id()));
    }
    assert_eq!(text.eos_positions()[1], 1);
    Ok(())
}

#[test]
fn errors_name_the_file() {
    let err = ClipTokenizer::from_file(fixture_dir().join("absent.json"), 16).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }));
    assert!(err.to_string().contains("absent.json"), "{err}");
    let err = ClipTokenizer::from_file(fixture_dir().join("config.json"), 16).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

/// A `tokenizer.json` without the post-processor that adds the start and
/// end tokens is refused: its rows would have no `<|startoftext|>`, and
/// long ones no `<|endoftext|>` to pool at.
#[test]
fn a_tokenizer_without_start_and_end_tokens_is_refused() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(fixture_dir().join("tokenizer.json"))?;
    let mut json: Value = serde_json::from_str(&text)?;
    json["post_processor"] = Value::Null;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json)?)?;
    let err = ClipTokenizer::from_file(&path, 16).unwrap_err().to_string();
    assert!(
        err.contains("<|startoftext|>") && err.contains("tokenizer.json"),
        "{err}"
    );
    Ok(())
}

#[test]
fn context_shorter_than_the_special_tokens_is_an_error() -> anyhow::Result<()> {
    // A post-processor adding three special tokens, with room for two:
    // `tokenizers` would subtract 3 from 2 unchecked.
    let text = std::fs::read_to_string(fixture_dir().join("tokenizer.json"))?;
    let mut json: Value = serde_json::from_str(&text)?;
    let special = |id: &str| serde_json::json!({"SpecialToken": {"id": id, "type_id": 0}});
    let seq = |id: &str| serde_json::json!({"Sequence": {"id": id, "type_id": 0}});
    let (bos, eos) = ("<|startoftext|>", "<|endoftext|>");
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [special(bos), special(bos), seq("A"), special(eos)],
        "pair": [special(bos), special(bos), seq("A"), seq("B"), special(eos)],
        "special_tokens": {
            bos: {"id": bos, "ids": [599], "tokens": [bos]},
            eos: {"id": eos, "ids": [600], "tokens": [eos]},
        },
    });
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json)?)?;
    let err = ClipTokenizer::from_file(&path, 2).unwrap_err();
    assert!(err.to_string().contains("context length 2"), "{err}");
    // With room for them, rows carry all three.
    let tokenizer = ClipTokenizer::from_file(&path, 4)?;
    let rows = tokenizer.encode_ids(&["a photo of a cat"])?;
    assert_eq!(rows[0].len(), 4);
    assert_eq!(rows[0][..2], [599, 599]);
    assert_eq!(rows[0][3], 600);
    Ok(())
}
