//! The output directory of a training run, the contract scripts rely on:
//!
//! ```text
//! OUT/config.json                 the experiment configuration
//! OUT/metrics.jsonl               one JSON object per logged step and per evaluation
//! OUT/checkpoints/step-<N, 10 digits>.safetensors   the last few resumable checkpoints
//! OUT/checkpoints/best.safetensors       the best checkpoint (chosen on dev)
//! OUT/report.json                 final metrics of the best checkpoint
//! OUT/scores/dev.txt, test.txt    `<entry> <attack probability>` per list entry
//! OUT/plots/{roc,det,scores}.png  test ROC, DET and score histograms
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Paths inside a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

const STEP_PREFIX: &str = "step-";
const CHECKPOINT_SUFFIX: &str = ".safetensors";

impl RunDir {
    /// The run directory `root` (not created).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The resumable checkpoint after optimizer step `step`.
    pub fn step_checkpoint(&self, step: u64) -> PathBuf {
        self.checkpoints()
            .join(format!("{STEP_PREFIX}{step:010}{CHECKPOINT_SUFFIX}"))
    }

    /// `checkpoints/best.safetensors`.
    pub fn best_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("best.safetensors")
    }

    /// `report.json`.
    pub fn report(&self) -> PathBuf {
        self.root.join("report.json")
    }

    /// `scores/<split>.txt`.
    pub fn scores(&self, split: &str) -> PathBuf {
        self.root.join("scores").join(format!("{split}.txt"))
    }

    /// `plots/`.
    pub fn plots(&self) -> PathBuf {
        self.root.join("plots")
    }

    /// The resumable checkpoints, oldest first, by step.
    pub fn step_checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        let dir = self.checkpoints();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("listing", dir, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("listing", &dir, e))?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|n| n.strip_prefix(STEP_PREFIX))
                .and_then(|n| n.strip_suffix(CHECKPOINT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((step, entry.path()));
        }
        found.sort();
        Ok(found)
    }

    /// The newest resumable checkpoint.
    pub fn latest_checkpoint(&self) -> Result<Option<PathBuf>> {
        Ok(self.step_checkpoints()?.pop().map(|(_, path)| path))
    }

    /// Deletes all but the newest `keep` resumable checkpoints.
    pub fn prune_checkpoints(&self, keep: usize) -> Result<()> {
        let found = self.step_checkpoints()?;
        let excess = found.len().saturating_sub(keep);
        for (_, path) in found.into_iter().take(excess) {
            std::fs::remove_file(&path).map_err(|e| Error::io("removing", &path, e))?;
        }
        Ok(())
    }

    /// Removes what a killed atomic write left behind (the temporary
    /// directory `.<name>.tmp-<pid>-<n>`, or an earlier version's temporary
    /// file, beside the checkpoints, reports, scores and plots).
    pub fn remove_stale_temporaries(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.checkpoints(),
            self.root.join("scores"),
            self.plots(),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let in_checkpoints = dir == self.checkpoints();
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if atomic_io::is_temporary_name(&name)
                    || (in_checkpoints && is_safetensors_temporary(&name))
                {
                    let path = entry.path();
                    atomic_io::remove_temporary(&path)
                        .map_err(|e| Error::io("removing", &path, e))?;
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is the temporary file safetensors makes beside the file
/// it writes (`.tmp` and six letters or digits, `tempfile`'s default):
/// earlier versions left one in `checkpoints/` when killed mid-write.
pub(crate) fn is_safetensors_temporary(name: &str) -> bool {
    name.strip_prefix(".tmp")
        .is_some_and(|rest| rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_ordered_by_step_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().to_path_buf());
        assert_eq!(run.latest_checkpoint().unwrap(), None);
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        for step in [30, 4, 120] {
            std::fs::write(run.step_checkpoint(step), b"x").unwrap();
        }
        std::fs::write(run.best_checkpoint(), b"x").unwrap();
        std::fs::write(run.checkpoints().join(".step-1.safetensors.tmp-9-0"), b"x").unwrap();
        // A killed write of this version: its directory and the writer's own
        // temporary inside it.
        let killed = run.checkpoints().join(".step-2.safetensors.tmp-9-1");
        std::fs::create_dir(&killed).unwrap();
        std::fs::write(killed.join(".tmpAb3dEf"), b"x").unwrap();
        // An earlier version's leak: safetensors' own temporary.
        std::fs::write(run.checkpoints().join(".tmpAb3dEf"), b"x").unwrap();
        // Not a temporary of this crate's: kept.
        std::fs::write(run.checkpoints().join(".notes.tmp-draft"), b"x").unwrap();
        assert_eq!(
            run.latest_checkpoint().unwrap(),
            Some(run.step_checkpoint(120))
        );
        run.prune_checkpoints(2).unwrap();
        let steps: Vec<u64> = run
            .step_checkpoints()
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, vec![30, 120]);
        assert!(run.best_checkpoint().is_file());
        run.remove_stale_temporaries().unwrap();
        let names: Vec<_> = std::fs::read_dir(run.checkpoints())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().any(|n| n == ".notes.tmp-draft"), "{names:?}");
    }
}
