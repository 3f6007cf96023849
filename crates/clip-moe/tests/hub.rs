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
    assert_eq!(files.config, dir.join("config.json"));
    assert_eq!(files.tokenizer, dir.join("tokenizer.json"));

    // Not directories, and not hub ids (`owner/name`): refused without
    // asking the hub (the default options are online, so an attempt would
    // fail here on the network instead, with another message).
    for missing in ["./no/such/model", "clip-b16", "owner/", "/name", "a/b/c"] {
        let err = resolve(missing, &HubOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("does not exist"),
            "{missing}: {err}"
        );
    }

    let empty = tempfile::tempdir()?;
    let err = ModelFiles::from_dir(empty.path()).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains(&empty.path().display().to_string()));
    Ok(())
}

/// A cache as hf-hub leaves it: `refs/<revision>` holds a commit hash,
/// `snapshots/<hash>/` the files.
fn fake_cache(root: &Path, revision: &str, files: &[&str]) -> anyhow::Result<()> {
    fake_cache_of(root, "openai--clip-vit-base-patch16", revision, files)
}

fn fake_cache_of(root: &Path, model: &str, revision: &str, files: &[&str]) -> anyhow::Result<()> {
    let repo = root.join(format!("models--{model}"));
    // A commit per revision, as on the hub.
    let hash = if revision == "main" {
        "0123456789abcdef0123456789abcdef01234567"
    } else {
        "fedcba9876543210fedcba9876543210fedcba98"
    };
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

    // Another repository's pull request is anyone's: not looked at.
    let other = "someone--clip";
    fake_cache_of(
        cache.path(),
        other,
        "main",
        &["config.json", "tokenizer.json"],
    )?;
    fake_cache_of(cache.path(), other, "refs/pr/4", &["model.safetensors"])?;
    let err = resolve("someone/clip", &options).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("revisions main"),
        "{err}"
    );
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

    // The same unreachable hub with the model whole in the cache: the
    // cached files, as Python's client falls back to them.
    fake_cache(cache.path(), "main", &["config.json", "tokenizer.json"])?;
    fake_cache(cache.path(), "refs/pr/4", &["model.safetensors"])?;
    let files = resolve(DEFAULT_MODEL_ID, &options)?;
    assert!(files.weights.starts_with(cache.path()));
    Ok(())
}

/// Resolves the default model from a hub at `127.0.0.1:port` with a
/// `timeout_ms` deadline into the cache `cache`: the error, which must come
/// within 20 s.
fn resolve_quickly(port: u16, cache: &Path, timeout_ms: u64) -> String {
    let options = HubOptions {
        offline: false,
        cache_dir: Some(cache.to_path_buf()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        timeout: std::time::Duration::from_millis(timeout_ms),
        ..HubOptions::default()
    };
    let start = std::time::Instant::now();
    let err = resolve(DEFAULT_MODEL_ID, &options)
        .expect_err("the hub cannot deliver")
        .to_string();
    let took = start.elapsed();
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    err
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
    let err = resolve_quickly(port, cache.path(), 500);
    assert!(
        err.contains("no answer within 0.5 s") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    drop(holder);
    Ok(())
}

/// A local server that answers the probe and the metadata request as the
/// hub does and hands each file download, after its response head for 1000
/// bytes, to `body` on a thread of its own; returns the port.
fn fake_hub(body: fn(std::net::TcpStream)) -> anyhow::Result<u16> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                request.push(line.to_ascii_lowercase());
            }
            let head = request.first().is_some_and(|l| l.starts_with("head"));
            let range_start = request.iter().any(|l| l.starts_with("range: bytes=0-0"));
            let common = "x-repo-commit: 0123456789abcdef\r\netag: \"abc\"\r\n";
            if head {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\n{common}content-length: 0\r\nconnection: close\r\n\r\n"
                );
            } else if range_start {
                let _ = write!(
                    stream,
                    "HTTP/1.1 206 Partial Content\r\n{common}content-range: bytes 0-0/1000\r\n\
                     content-length: 1\r\nconnection: close\r\n\r\n{{"
                );
            } else {
                let _ = write!(
                    stream,
                    "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-999/1000\r\n\
                     content-length: 1000\r\n\r\n"
                );
                std::thread::spawn(move || body(stream));
            }
        }
    });
    Ok(port)
}

/// The download sends 10 of its 1000 bytes, then silence: it is given up
/// once too little data has arrived for the timeout, with an error that
/// says so.
#[test]
fn stalled_download_is_given_up() -> anyhow::Result<()> {
    let port = fake_hub(|mut stream| {
        use std::io::Write;
        let _ = stream.write_all(b"{\"a\": 1, ");
        let _ = stream.flush();
        std::thread::sleep(std::time::Duration::from_secs(60));
    })?;
    let cache = tempfile::tempdir()?;
    let err = resolve_quickly(port, cache.path(), 800);
    assert!(
        err.contains("downloading config.json")
            && err.contains("less than 16 KiB")
            && err.contains("the transfer stalled")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    // Nothing half-written was put where the model's files go.
    let snapshot = cache
        .path()
        .join("models--openai--clip-vit-base-patch16/snapshots");
    assert!(
        !snapshot.exists(),
        "{snapshot:?} exists after a stalled download"
    );
    Ok(())
}

/// A server that trickles the file, a byte every 50 ms, never silent for
/// the 0.8 s timeout: it is given up all the same, since 16 KiB does not
/// arrive in 0.8 s.
#[test]
fn trickling_download_is_given_up() -> anyhow::Result<()> {
    let port = fake_hub(|mut stream| {
        use std::io::Write;
        for _ in 0..1000 {
            if stream
                .write_all(b" ")
                .and_then(|()| stream.flush())
                .is_err()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })?;
    let cache = tempfile::tempdir()?;
    let err = resolve_quickly(port, cache.path(), 800);
    assert!(
        err.contains("downloading config.json") && err.contains("less than 16 KiB in"),
        "{err}"
    );
    Ok(())
}
