//! Shared set-up of the end-to-end tests: a small synthetic UniAttackData
//! tree (10 subjects at 64 px: 40 train, 20 dev, 40 test images) and the
//! demo experiment on it, shortened so a run takes seconds.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use fas_data::synth::{write_dataset, SynthConfig};
use uniattack::experiment::EvalEvery;
use uniattack::{ExperimentConfig, TrainOptions};

/// Writes the small dataset under `root` and returns `root`.
pub fn dataset(root: &Path) -> PathBuf {
    write_dataset(
        root,
        &SynthConfig {
            subjects: 10,
            image_size: 64,
            ..SynthConfig::default()
        },
    )
    .expect("synthetic dataset");
    root.to_path_buf()
}

/// The demo experiment on `root`: batches of 16 (2 per epoch), 3 epochs,
/// an evaluation per epoch, a log line per step, 2 decoding threads.
pub fn experiment(root: &Path) -> ExperimentConfig {
    let mut cfg = uniattack::demo::experiment(root);
    cfg.loader.batch_size = 16;
    cfg.loader.eval_batch_size = 32;
    cfg.loader.workers = 2;
    cfg.training.epochs = 3;
    cfg.training.log_every = 1;
    cfg.schedule.warmup_steps = 0;
    cfg.eval.every = EvalEvery::Epoch;
    cfg
}

/// The small dataset under `dir/data` and a one-epoch experiment on it,
/// with `dir/run` as its output directory.
pub fn one_epoch(dir: &Path) -> (ExperimentConfig, PathBuf) {
    let data = dataset(&dir.join("data"));
    let mut cfg = experiment(&data);
    cfg.training.epochs = 1;
    (cfg, dir.join("run"))
}

/// Options for a CPU run into `output`.
pub fn options(output: &Path, resume: bool) -> TrainOptions {
    TrainOptions {
        output: output.to_path_buf(),
        resume,
        device: Device::Cpu,
        report: None,
        sync: None,
        frozen_baseline: false,
        check_images: false,
        profile_phases: false,
    }
}

/// A trainer's parameters by name, as F32 values.
pub type Params = std::collections::BTreeMap<String, Vec<f32>>;

/// A snapshot of `trainer`'s parameters.
pub fn parameters(trainer: &uniattack::Trainer) -> Params {
    trainer
        .varmap()
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

/// Every tensor of a checkpoint file, as raw little-endian bytes by name.
pub fn tensor_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("checkpoint");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<(String, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect();
    out.sort();
    out
}

/// The error of a `Trainer::new` that must be refused (a panic if it was
/// accepted).
pub fn error_of(result: uniattack::Result<uniattack::Trainer>) -> String {
    match result {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

/// Every file under `dir`, recursively (links followed), sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}
