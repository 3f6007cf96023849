//! The `moe_routing` example's command line and standard output: `--help`
//! and `--version` succeed (they used to be usage errors, exit 2), other
//! arguments are usage errors, and a full disk fails it (it used to exit 0).
//!
//! Runs the binary `cargo test -p softmoe` builds next to this test
//! (`target/<profile>/examples/moe_routing`); run alone (`cargo test --test
//! examples`), the test needs the examples built first (`cargo build -p
//! softmoe --examples`) and fails without them.

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

/// The example binary `name`, which `cargo test -p softmoe` (and `cargo test
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
        "{} is not built: run `cargo test -p softmoe`, which builds the examples, or \
         `cargo build -p softmoe --examples` before `--test examples`",
        path.display()
    );
    path
}

fn run(tool: &PathBuf, args: &[&str], stdout: impl Into<Stdio>) -> Output {
    Command::new(tool)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn moe_routing_help_version_and_usage_errors() {
    let tool = example("moe_routing");
    let help = run(&tool, &["--help"], Stdio::piped());
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: moe_routing"));
    let version = run(&tool, &["--version"], Stdio::piped());
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("moe_routing {}", env!("CARGO_PKG_VERSION"))
    );
    for args in [&["--frobnicate"][..], &["extra"]] {
        let out = run(&tool, args, Stdio::piped());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn moe_routing_fails_on_a_full_disk() {
    let tool = example("moe_routing");
    let Some(full) = full_disk() else {
        return;
    };
    let out = run(&tool, &[], full);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
}
