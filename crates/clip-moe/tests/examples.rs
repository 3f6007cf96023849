//! The `zero_shot` example's standard output: a closed pipe ends it quietly
//! (it used to panic, exit 101), a full disk fails it (it used to exit 0).
//!
//! Runs the binary `cargo test -p clip-moe` builds next to this test
//! (`target/<profile>/examples/zero_shot`) on the tiny CLIP fixture; a test
//! built alone (`cargo test --test examples`) needs the examples
//! built first (`cargo build -p clip-moe --examples`) and fails without them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `/dev/full`, which refuses every write with "no space left on device":
/// there on Linux (a failure if not), `None` on other systems, where the
/// full-disk checks do not apply.
fn full_disk() -> Option<std::fs::File> {
    cfg!(target_os = "linux").then(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full on Linux")
    })
}

/// The example binary `name`, which `cargo test -p clip-moe` (and `cargo test
/// --workspace`) builds before running this test. Missing is a failure,
/// not a skip.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is not built: run `cargo test -p clip-moe`, which builds the examples, or \
         `cargo build -p clip-moe --examples` before `--test examples`",
        path.display()
    );
    path
}

/// `zero_shot` on the tiny fixture model and one synthetic face, standard
/// output going to `stdout`.
fn zero_shot(tool: &Path, image: &Path, json: bool, stdout: impl Into<Stdio>) -> Output {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_clip");
    let mut command = Command::new(tool);
    command
        .arg("--model")
        .arg(model)
        .arg("--image")
        .arg(image)
        .args(["--text", "a live face", "--text", "a printed photo"])
        .env("HF_HUB_OFFLINE", "1");
    if json {
        command.arg("--json");
    }
    command
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn zero_shot_stops_quietly_on_a_closed_pipe_and_fails_on_a_full_disk() {
    let tool = example("zero_shot");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("face.png");
    let config = fas_data::synth::SynthConfig {
        subjects: 5,
        image_size: 32,
        ..Default::default()
    };
    fas_data::synth::subject_images(&config, 0).unwrap()[0]
        .image
        .save(&image)
        .unwrap();
    for json in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = zero_shot(&tool, &image, json, writer);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "json {json}: {stderr}");
        assert!(stderr.is_empty(), "json {json}: {stderr}");
        if let Some(full) = full_disk() {
            let out = zero_shot(&tool, &image, json, full);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "json {json}: {stderr}");
            assert!(stderr.contains("No space left"), "json {json}: {stderr}");
        }
    }
}
