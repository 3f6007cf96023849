//! What a run shows and records as it goes: a progress bar with loss,
//! learning rate, images/s and ETA while stdout is a terminal (plain lines
//! otherwise), and `metrics.jsonl`, one JSON object per logged step and per
//! evaluation.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsRecord {
    /// A logged optimizer step.
    Train {
        /// Optimizer step (1-based).
        step: u64,
        /// Epoch (0-based).
        epoch: u64,
        /// Mean loss over the steps since the last record.
        loss: f64,
        /// Learning rate of this step.
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
        /// Training images per second since the last record.
        images_per_second: f64,
        /// Seconds per step spent waiting for the loader's next batch, mean
        /// since the last record (the rest of a step is the model's): near
        /// 0 when the loader keeps up, the time to win back when not.
        /// Absent from logs written before it was recorded.
        #[serde(default)]
        data_wait_s: f64,
        /// With `train_uniattack --profile-phases`: seconds per step in each
        /// phase, mean since the last record, the device synchronised
        /// after each phase so that its work is counted there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phases: Option<PhaseSeconds>,
    },
    /// An evaluation.
    Eval {
        /// Optimizer step evaluated.
        step: u64,
        /// Epochs completed.
        epoch: u64,
        /// Dev ACER at dev's threshold.
        dev_acer: f64,
        /// Dev AUC.
        dev_auc: f64,
        /// Dev EER.
        dev_eer: f64,
        /// The threshold chosen on dev.
        #[serde(with = "fas_metrics::serde_threshold")]
        threshold: f64,
        /// Test ACER at the dev threshold, when test was scored.
        test_acer: Option<f64>,
        /// Test AUC.
        test_auc: Option<f64>,
        /// Whether this evaluation produced the new best checkpoint.
        best: bool,
    },
}

impl MetricsRecord {
    /// The optimizer step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Train { step, .. } | MetricsRecord::Eval { step, .. } => *step,
        }
    }
}

/// Where the time of a training step goes, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseSeconds {
    /// Waiting for the loader's batches.
    pub data: f64,
    /// Uploading the batches and the forward pass, to the loss.
    pub forward: f64,
    /// The backward pass and the gradients' sum over micro-batches.
    pub backward: f64,
    /// Averaging with the other ranks (data parallelism; 0 without).
    pub exchange: f64,
    /// The global gradient norm (its read) and clipping.
    pub clip: f64,
    /// The optimizer's update.
    pub update: f64,
}

impl PhaseSeconds {
    /// The phases' sum, phase by phase.
    pub fn add(&mut self, other: &Self) {
        self.data += other.data;
        self.forward += other.forward;
        self.backward += other.backward;
        self.exchange += other.exchange;
        self.clip += other.clip;
        self.update += other.update;
    }

    /// Every phase divided by `n`.
    pub fn divided(&self, n: f64) -> Self {
        Self {
            data: self.data / n,
            forward: self.forward / n,
            backward: self.backward / n,
            exchange: self.exchange / n,
            clip: self.clip / n,
            update: self.update / n,
        }
    }
}

/// Appends records to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping records after `step`
    /// (those of a run resumed from step `step` will be written again) and
    /// any line a kill cut short. `step` 0 starts an empty log.
    pub fn open(path: &Path, step: u64) -> Result<Self> {
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<MetricsRecord>(line).is_ok_and(|r| r.step() <= step)
                })
                .map(|line| format!("{line}\n"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io("reading", path, e)),
        };
        crate::evaluator::write_text(path, if step == 0 { "" } else { &kept })?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io("opening", path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one record as a line.
    pub fn append(&mut self, record: &MetricsRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|source| Error::Json {
            path: self.path.clone(),
            source,
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io("writing", &self.path, e))
    }
}

/// The terminal side of a run.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl Progress {
    /// A bar over `total` optimizer steps, starting at `done`, when stdout
    /// is a terminal; plain lines otherwise.
    pub fn new(total: u64, done: u64) -> Self {
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_position(done);
            bar
        });
        Self { bar, quiet: false }
    }

    /// Shows nothing (data-parallel ranks other than 0).
    pub fn silent() -> Self {
        Self {
            bar: None,
            quiet: true,
        }
    }

    /// Shows a training record.
    pub fn train(&self, record: &MetricsRecord, total: u64) {
        let MetricsRecord::Train {
            step,
            epoch,
            loss,
            lr,
            images_per_second,
            ..
        } = record
        else {
            return;
        };
        let text =
            format!("epoch {epoch}  loss {loss:.4}  lr {lr:.2e}  {images_per_second:.1} img/s");
        match &self.bar {
            Some(bar) => {
                bar.set_position(*step);
                bar.set_message(text);
            }
            None if self.quiet => {}
            None => crate::runtime::say(&format!("step {step}/{total}  {text}")),
        }
    }

    /// Prints a line above the bar (or plainly).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.quiet => {}
            None => crate::runtime::say(line),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> MetricsRecord {
        MetricsRecord::Train {
            step,
            epoch: 0,
            loss: 0.5,
            lr: 1e-3,
            grad_norm: 1.0,
            images_per_second: 10.0,
            data_wait_s: 0.0,
            phases: None,
        }
    }

    /// Resuming from step 2 drops later records and a line cut short.
    #[test]
    fn reopening_drops_records_after_the_resumed_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for step in 1..=4 {
            log.append(&train(step)).unwrap();
        }
        drop(log);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"kind\":\"train\",\"st");
        std::fs::write(&path, text).unwrap();
        let mut log = MetricsLog::open(&path, 2).unwrap();
        log.append(&train(3)).unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<MetricsRecord>(l).unwrap().step())
            .collect();
        assert_eq!(steps, vec![1, 2, 3]);
    }
}
