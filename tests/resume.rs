//! A training run killed with SIGKILL at an arbitrary moment and resumed
//! with `--resume` ends bit-identical to an uninterrupted run with the same
//! seed: every tensor of the final and best checkpoints, and the score files.
//!
//! The killed run is a child process: this test binary started again on the
//! ignored test `child_training_run`, which trains into the directory named
//! by `UNIATTACK_RESUME_CHILD_OUT`. The parent kills it at varying points
//! (after the checkpoint of step 1, 2, 4, plus a delay that can land in
//! the middle of a step or of a checkpoint write), then resumes in-process.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use uniattack::run_dir::RunDir;
use uniattack::{ExperimentConfig, Trainer};

const CHILD_OUT: &str = "UNIATTACK_RESUME_CHILD_OUT";
const CHILD_DATA: &str = "UNIATTACK_RESUME_CHILD_DATA";

/// Three epochs of two steps, a checkpoint after every step, a training
/// record every 4 steps (and at the last): a run resumed from step 1 or 2
/// must still log the mean of steps 1 to 4 at step 4.
fn config(root: &Path) -> ExperimentConfig {
    let mut cfg = common::experiment(root);
    cfg.training.checkpoint_every = Some(1);
    cfg.training.keep_last = 2;
    cfg.training.log_every = 4;
    cfg
}

#[test]
#[ignore = "entry point of the child process that killed_and_resumed_run_equals_an_uninterrupted_one kills"]
fn child_training_run() {
    let (Some(out), Some(data)) = (std::env::var_os(CHILD_OUT), std::env::var_os(CHILD_DATA))
    else {
        panic!("run by killed_and_resumed_run_equals_an_uninterrupted_one only");
    };
    let cfg = config(Path::new(&data));
    let mut trainer = Trainer::new(cfg, common::options(Path::new(&out), false)).unwrap();
    trainer.run().unwrap();
}

/// What must match: every checkpoint tensor and both score files.
fn outcome(out: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let run = RunDir::new(out.to_path_buf());
    let mut found = Vec::new();
    let (last_step, last) = run.step_checkpoints()?.pop().expect("a step checkpoint");
    for (name, bytes) in common::tensor_bytes(&last) {
        found.push((format!("step-{last_step}/{name}"), bytes));
    }
    for (name, bytes) in common::tensor_bytes(&run.best_checkpoint()) {
        found.push((format!("best/{name}"), bytes));
    }
    for split in ["dev", "test"] {
        found.push((split.to_string(), std::fs::read(run.scores(split))?));
    }
    Ok(found)
}

fn kill_after(out: &Path, data: &Path, checkpoints: u64, delay: Duration) -> Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "child_training_run",
            "--ignored",
            "--test-threads",
            "1",
        ])
        .env(CHILD_OUT, out)
        .env(CHILD_DATA, data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let run = RunDir::new(out.to_path_buf());
    let started = Instant::now();
    loop {
        let latest = run
            .step_checkpoints()
            .ok()
            .and_then(|c| c.last().map(|(step, _)| *step));
        if latest.is_some_and(|step| step >= checkpoints) {
            break;
        }
        if child.try_wait()?.is_some() {
            bail!("the child run ended before it was killed");
        }
        if started.elapsed() > Duration::from_secs(300) {
            child.kill()?;
            bail!("the child run wrote no checkpoint in 300 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(delay);
    // SIGKILL on Unix: no destructor, no flush, nothing runs.
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// `metrics.jsonl`'s records without their timings: kind, step, and the
/// loss or dev metrics, in order.
fn logged(out: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let mut records = Vec::new();
    for line in text.lines() {
        let mut record: serde_json::Value = serde_json::from_str(line)?;
        if let Some(fields) = record.as_object_mut() {
            for timing in ["images_per_second", "data_wait_s", "phases"] {
                fields.remove(timing);
            }
        }
        records.push(record.to_string());
    }
    Ok(records)
}

#[test]
fn killed_and_resumed_run_equals_an_uninterrupted_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let reference_dir = dir.path().join("reference");
    Trainer::new(config(&data), common::options(&reference_dir, false))?.run()?;
    let reference = outcome(&reference_dir)?;

    for (trial, (checkpoints, delay_ms)) in [(1, 0), (2, 40), (4, 15)].into_iter().enumerate() {
        let out: PathBuf = dir.path().join(format!("killed-{trial}"));
        kill_after(&out, &data, checkpoints, Duration::from_millis(delay_ms))?;
        let mut resumed = Trainer::new(config(&data), common::options(&out, true))?;
        assert!(
            resumed.step() >= checkpoints,
            "trial {trial}: resumed at step {}",
            resumed.step()
        );
        if trial == 0 {
            // Killed right after the first checkpoint: the resumed run has
            // steps left to take.
            assert!(
                resumed.step() < resumed.total_steps(),
                "trial 0 ran to the end"
            );
        }
        resumed.run()?;
        // The metrics log holds every step and evaluation once, as the
        // uninterrupted run's: nothing before the resumed step is lost.
        assert_eq!(
            logged(&out)?,
            logged(&reference_dir)?,
            "trial {trial}: metrics.jsonl"
        );
        let got = outcome(&out)?;
        assert_eq!(got.len(), reference.len(), "trial {trial}");
        for ((name, a), (ref_name, b)) in got.iter().zip(&reference) {
            assert_eq!(name, ref_name, "trial {trial}");
            assert!(
                a == b,
                "trial {trial}: {name} differs from the uninterrupted run"
            );
        }
    }
    Ok(())
}
