//! The `pytorch_model.bin` fallback: PyTorch's pickled state dict (written by
//! `scripts/clip_moe/gen_pytorch_bin.py` with `torch.save`) loads to exactly
//! the parameters of the safetensors fixture, and a model directory or hub
//! cache holding only the pickle resolves to it.

mod common;

use candle_core::Device;
use clip_moe::checkpoint::{load_model, LEGACY_WEIGHTS_FILE};
use clip_moe::hub::{resolve, HubOptions, ModelFiles, DEFAULT_MODEL_ID};
use common::{fixture_config, fixture_dir};

#[test]
fn pickle_loads_the_same_parameters_as_safetensors() -> anyhow::Result<()> {
    let cfg = fixture_config();
    let from_st = load_model(
        &cfg,
        fixture_dir().join("model.safetensors"),
        &Device::Cpu,
        true,
    )?;
    let from_bin = load_model(
        &cfg,
        fixture_dir().join(LEGACY_WEIGHTS_FILE),
        &Device::Cpu,
        true,
    )?;
    assert!(from_bin.report.is_exact(), "{:?}", from_bin.report);
    assert_eq!(from_bin.report.loaded, from_st.report.loaded);
    let st = from_st.varmap.data().lock().expect("lock");
    let bin = from_bin.varmap.data().lock().expect("lock");
    assert_eq!(st.len(), bin.len());
    for (name, var) in st.iter() {
        let other = &bin[name];
        let diff = (var.as_tensor() - other.as_tensor())?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "{name} differs");
    }
    Ok(())
}

#[test]
fn a_corrupt_pickle_is_an_error_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(LEGACY_WEIGHTS_FILE);
    std::fs::write(&path, b"not a zip archive")?;
    let err = match load_model(&fixture_config(), &path, &Device::Cpu, false) {
        Ok(_) => panic!("a corrupt pickle loaded"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
    Ok(())
}

/// A well-formed pickle of a malformed checkpoint (a tensor rebuilt from
/// no arguments; `scripts/clip_moe/gen_malformed_pickle.py`): an error
/// naming the file, not a crash of the reader.
#[test]
fn a_malformed_pickle_is_an_error_not_a_crash() {
    let err = match load_fixture_pickle("malformed_pickle") {
        Ok(_) => panic!("a malformed pickle loaded"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("malformed_pickle"), "{err}");
}

/// A pickle of 538 bytes whose lists each hold the one before twice
/// (`scripts/clip_moe/gen_pickle_bomb.py`): candle's reader copies where
/// Python shares and would need 2^40 copies. Refused with an error naming
/// the file, in well under a second, before candle's reader runs.
#[test]
fn a_pickle_that_would_exhaust_memory_is_refused() {
    let err = match load_fixture_pickle("pickle_bomb") {
        Ok(_) => panic!("the pickle bomb loaded"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("pickle_bomb"), "{err}");
    assert!(err.contains("archive/data.pkl"), "{err}");
    assert!(err.contains("makes a reader copy more than"), "{err}");
}

/// Loads `tests/fixtures/<name>/pytorch_model.bin` into the fixture's model.
fn load_fixture_pickle(name: &str) -> clip_moe::Result<clip_moe::checkpoint::LoadedModel> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join(LEGACY_WEIGHTS_FILE);
    load_model(&fixture_config(), &path, &Device::Cpu, false)
}

#[test]
fn directory_with_only_the_pickle_resolves_to_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for file in ["config.json", "tokenizer.json", LEGACY_WEIGHTS_FILE] {
        std::fs::copy(fixture_dir().join(file), dir.path().join(file))?;
    }
    let files = ModelFiles::from_dir(dir.path())?;
    assert_eq!(files.weights, dir.path().join(LEGACY_WEIGHTS_FILE));
    // Both present: safetensors wins.
    assert_eq!(
        ModelFiles::from_dir(fixture_dir())?.weights,
        fixture_dir().join("model.safetensors")
    );
    // Neither: the error names both.
    std::fs::remove_file(dir.path().join(LEGACY_WEIGHTS_FILE))?;
    let err = ModelFiles::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains(LEGACY_WEIGHTS_FILE),
        "{err}"
    );
    Ok(())
}

#[test]
fn hub_cache_with_only_the_pickle_resolves_to_it() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let repo = cache.path().join("models--openai--clip-vit-base-patch16");
    let hash = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs").join("main"), hash)?;
    let snapshot = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snapshot)?;
    for file in ["config.json", "tokenizer.json", LEGACY_WEIGHTS_FILE] {
        std::fs::copy(fixture_dir().join(file), snapshot.join(file))?;
    }
    let options = HubOptions {
        offline: true,
        cache_dir: Some(cache.path().to_path_buf()),
        ..HubOptions::default()
    };
    let files = resolve(DEFAULT_MODEL_ID, &options)?;
    assert!(files.weights.ends_with(LEGACY_WEIGHTS_FILE), "{files:?}");
    let loaded = load_model(&fixture_config(), &files.weights, &Device::Cpu, true)?;
    assert!(loaded.report.is_exact());
    Ok(())
}
