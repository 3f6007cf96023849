//! Finding model files without network: a local directory, a Hugging Face
//! cache laid out as hf-hub writes it, and the error when neither works.

mod common;

use std::path::Path;

use clip_moe::hub::{resolve, HubOptions, ModelFiles, DEFAULT_MODEL_ID};
use common::fixture_dir;

#[test]
fn local_directory() -> anyhow::Result<()> {
    let dir = fixture_dir();
    let files = resolve(dir.to_str().expect("utf-8 path"), &HubOptions::default())?;
    assert_eq!(files.weights, dir.join("model.safetensors"));
    assert_eq!(files, ModelFiles::from_dir(&dir)?);

    let err = resolve("./no/such/model", &HubOptions::default()).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    let empty = tempfile::tempdir()?;
    let err = ModelFiles::from_dir(empty.path()).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains(&empty.path().display().to_string()));
    Ok(())
}

/// A cache as hf-hub leaves it: `refs/<revision>` holds a commit hash,
/// `snapshots/<hash>/` the files.
fn fake_cache(root: &Path, revision: &str, files: &[&str]) -> anyhow::Result<()> {
    let repo = root.join("models--openai--clip-vit-base-patch16");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let ref_path = repo.join("refs").join(revision);
    std::fs::create_dir_all(ref_path.parent().expect("refs dir"))?;
    std::fs::write(ref_path, hash)?;
    let snapshot = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snapshot)?;
    for file in files {
        std::fs::copy(fixture_dir().join(file), snapshot.join(file))?;
    }
    Ok(())
}

#[test]
fn offline_cache_with_revision_fallback() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    // config and tokenizer on main, the weights only on the safetensors PR.
    fake_cache(cache.path(), "main", &["config.json", "tokenizer.json"])?;
    let options = HubOptions {
        offline: true,
        cache_dir: Some(cache.path().to_path_buf()),
        ..HubOptions::default()
    };
    let err = resolve(DEFAULT_MODEL_ID, &options).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("offline"),
        "{err}"
    );
    fake_cache(cache.path(), "refs/pr/4", &["model.safetensors"])?;
    let files = resolve(DEFAULT_MODEL_ID, &options)?;
    assert!(files.weights.is_file() && files.config.is_file() && files.tokenizer.is_file());
    assert!(files.weights.to_string_lossy().contains("snapshots"));
    Ok(())
}

#[test]
fn unreachable_hub_says_how_to_proceed() -> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let options = HubOptions {
        offline: false,
        cache_dir: Some(cache.path().to_path_buf()),
        // Nothing listens on the discard port: the connection is refused
        // at once, no network involved.
        endpoint: Some("http://127.0.0.1:9".into()),
        ..HubOptions::default()
    };
    let err = resolve(DEFAULT_MODEL_ID, &options).unwrap_err().to_string();
    assert!(err.contains("could not fetch config.json"), "{err}");
    assert!(
        err.contains("--local-dir DIR") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    Ok(())
}

/// A server that accepts the connection and never answers: the error comes
/// within the timeout instead of a hang.
#[test]
fn silent_hub_times_out() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // Accept and hold connections without ever writing.
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
    });
    let cache = tempfile::tempdir()?;
    let options = HubOptions {
        offline: false,
        cache_dir: Some(cache.path().to_path_buf()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        timeout: std::time::Duration::from_millis(500),
        ..HubOptions::default()
    };
    let start = std::time::Instant::now();
    let err = resolve(DEFAULT_MODEL_ID, &options).unwrap_err().to_string();
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.contains("no answer within 0.5 s") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    drop(holder);
    Ok(())
}
