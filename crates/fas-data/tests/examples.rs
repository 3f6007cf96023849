//! The example tools' edges: standard output that is a full disk or a
//! closed pipe, and settings refused before any work.
//!
//! The tools are run as the binaries `cargo test -p fas-data` builds next to
//! this test (`target/<profile>/examples/`) before running it; run alone
//! (`cargo test --test examples`), the test needs them built first (`cargo
//! build -p fas-data --examples`) and fails when they are not.

// The tools' `outln!` is `written` applied to a `writeln!`; `written` is
// what is tested here.
#[allow(unused_macros, unused_imports)]
#[path = "../examples/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The example binary `name`, which `cargo test -p fas-data` (and `cargo test
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
        "{} is not built: run `cargo test -p fas-data`, which builds the examples, or \
         `cargo build -p fas-data --examples` before `--test examples`",
        path.display()
    );
    path
}

/// Runs `tool` with `args`, its standard output going to `stdout`.
fn run(tool: &Path, args: &[&str], stdout: impl Into<Stdio>) -> Output {
    Command::new(tool)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

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

/// A pipe whose reader has gone, as after `... | head` has read enough.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// A small synthetic dataset and its P1 train list.
fn dataset(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("synth");
    let config = fas_data::synth::SynthConfig {
        subjects: 5,
        image_size: 32,
        ..Default::default()
    };
    fas_data::synth::write_dataset(&root, &config).unwrap();
    let list = root.join("UniAttackData/protocol/UniAttackData@p1_image_train.txt");
    (root, list)
}

#[test]
fn a_closed_pipe_is_no_error_and_a_failed_write_is() {
    let closed = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
    assert!(common::written(Err(closed)).is_ok());
    let full = std::io::Error::from_raw_os_error(28);
    let err = common::written(Err(full)).unwrap_err().to_string();
    assert!(err.contains("standard output"), "{err}");
    if let Some(mut file) = full_disk() {
        use std::io::Write as _;
        let err = common::written(writeln!(file, "report"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("No space left"), "{err}");
    }
}

/// A report that could not be written fails the tool (it used to exit 0
/// with nothing written); a reader that stopped reading does not.
#[test]
fn inspect_dataset_fails_on_a_full_disk_and_not_on_a_closed_pipe() {
    let tool = example("inspect_dataset");
    let dir = tempfile::tempdir().unwrap();
    let (root, list) = dataset(dir.path());
    let args = [
        "--data",
        root.to_str().unwrap(),
        "--format",
        "uniattack-protocol",
        "--list",
        list.to_str().unwrap(),
    ];
    let json: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    if let Some(full) = full_disk() {
        for args in [&args[..], &json] {
            let out = run(&tool, args, full.try_clone().unwrap());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(stderr.contains("No space left"), "{stderr}");
        }
    }
    let out = run(&tool, &args, closed_pipe());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A data root that does not exist is one error, not one "file not found"
/// per list entry.
#[test]
fn inspect_dataset_names_a_missing_data_root_once() {
    let tool = example("inspect_dataset");
    let dir = tempfile::tempdir().unwrap();
    let (_, list) = dataset(dir.path());
    let missing = dir.path().join("missing");
    let out = run(
        &tool,
        &[
            "--data",
            missing.to_str().unwrap(),
            "--format",
            "uniattack-protocol",
            "--list",
            list.to_str().unwrap(),
        ],
        Stdio::piped(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains("file not found"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// `--output a.jpg` is refused (the sheet is PNG), and a sheet too large is
/// refused before anything is drawn (it took 14 s and 1.2 GB at 4096 px).
#[test]
fn synth_contact_sheet_refuses_a_non_png_name_and_a_huge_sheet_at_once() {
    let tool = example("synth_contact_sheet");
    let dir = tempfile::tempdir().unwrap();
    let jpg = dir.path().join("sheet.jpg");
    let out = run(&tool, &["--output", jpg.to_str().unwrap()], Stdio::null());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("name a .png file"), "{stderr}");
    assert!(!jpg.exists());
    let png = dir.path().join("sheet.png");
    let started = std::time::Instant::now();
    let out = run(
        &tool,
        &[
            "--output",
            png.to_str().unwrap(),
            "--subjects",
            "2",
            "--size",
            "4096",
        ],
        Stdio::null(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fewer subjects or a smaller size"),
        "{stderr}"
    );
    // A process start and a refusal; drawing first took about 20 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(8));
    assert!(!png.exists());
}

/// `synth_dataset` reports a full disk on its summary, not exit 0.
#[test]
fn synth_dataset_fails_on_a_full_disk() {
    let tool = example("synth_dataset");
    let Some(full) = full_disk() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    let out = run(
        &tool,
        &[
            "--output",
            output.to_str().unwrap(),
            "--size",
            "32",
            "--subjects",
            "5",
        ],
        full,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
}
