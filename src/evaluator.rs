//! Evaluation: a split through the loader and the [`Detector`] to one score
//! per list entry, then (optionally per video) to `fas-metrics`' protocol
//! report with the threshold chosen on dev, score files and plots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fas_data::Loader;
use fas_metrics::{
    bpcer_at_apcer, evaluate_protocol, ApcerPooling, ProtocolConfig, ProtocolReport, ScoreSet,
    ScoredSample, ThresholdRule,
};
use serde::{Deserialize, Serialize};

use crate::data::{evaluation_loader, SplitData};
use crate::detector::Detector;
use crate::error::{Error, Result};
use crate::experiment::Selection;
use crate::labels::{metrics_label, ScoreExport, SCORE_POLARITY};

/// The scores of one split: one per list entry, in list order (the frames
/// of a frame directory averaged).
#[derive(Debug, Clone, PartialEq)]
pub struct SplitScores {
    /// `train`, `dev` or `test`.
    pub split: String,
    /// The list file.
    pub source: PathBuf,
    /// List entries, as the list writes them.
    pub entries: Vec<String>,
    /// Video id per entry.
    pub video_ids: Vec<String>,
    /// Ground truth per entry.
    pub labels: Vec<Option<fas_data::Label>>,
    /// Attack probability per entry.
    pub scores: Vec<f64>,
}

/// Scores every sample of `split` with `detector`, `batch_size` images at a
/// time on `workers` decoding threads. Any unreadable image fails the split
/// (naming it): metrics over a silently shrunken split would not be the
/// protocol's.
pub fn score_split(
    detector: &Detector,
    split: &SplitData,
    batch_size: usize,
    workers: usize,
) -> Result<SplitScores> {
    let config = evaluation_loader(batch_size, workers, detector.transform().size as usize);
    let loader = Loader::new(split.samples.clone(), config)?;
    // (sum, count) per listed sample (a frame directory's frames are one
    // sample; an entry listed twice is two, as the list counts it), in
    // first-appearance order: the list's.
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut out = SplitScores {
        split: split.split.name().to_string(),
        source: split.source.clone(),
        entries: Vec::new(),
        video_ids: Vec::new(),
        labels: Vec::new(),
        scores: Vec::new(),
    };
    let mut counts: Vec<usize> = Vec::new();
    for batch in loader.epoch(0) {
        let batch = batch?;
        let probabilities = detector.attack_probabilities(&batch.images)?;
        for (i, p) in probabilities.into_iter().enumerate() {
            let entry = &batch.entries[i];
            let k = *index.entry(batch.samples[i]).or_insert_with(|| {
                out.entries.push(entry.clone());
                out.video_ids.push(batch.ids[i].clone());
                out.labels.push(batch.labels[i].clone());
                out.scores.push(0.0);
                counts.push(0);
                out.entries.len() - 1
            });
            out.scores[k] += p;
            counts[k] += 1;
        }
    }
    for (score, n) in out.scores.iter_mut().zip(&counts) {
        *score /= *n as f64;
    }
    Ok(out)
}

impl SplitScores {
    /// The scored samples for metrics: per entry, or per video (mean of its
    /// entries' scores, SSDG/FLIP) with `video_level`.
    pub fn scored_samples(&self, video_level: bool) -> Result<Vec<ScoredSample>> {
        let labels = self
            .labels
            .iter()
            .zip(&self.entries)
            .map(|(label, entry)| {
                label
                    .as_ref()
                    .map(metrics_label)
                    .ok_or_else(|| Error::Split {
                        split: self.split.clone(),
                        source_name: self.source.clone(),
                        reason: format!("entry {entry} has no label; metrics need labelled lists"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        if video_level {
            return Ok(fas_metrics::mean_score_per_video(
                &self.video_ids,
                &self.scores,
                &labels,
            )?);
        }
        Ok(self
            .entries
            .iter()
            .zip(&self.scores)
            .zip(labels)
            .map(|((entry, &score), label)| ScoredSample {
                id: Some(entry.clone()),
                score,
                label,
            })
            .collect())
    }

    /// The `fas-metrics` score set (higher = attack).
    pub fn score_set(&self, video_level: bool) -> Result<ScoreSet> {
        let samples = self.scored_samples(video_level)?;
        ScoreSet::from_samples(&samples, SCORE_POLARITY).map_err(|e| Error::Split {
            split: self.split.clone(),
            source_name: self.source.clone(),
            reason: e.to_string(),
        })
    }

    /// `<entry> <score>` lines, scores in shortest round-trip form, written
    /// atomically. `export` states which way they point.
    pub fn write(&self, path: &Path, export: ScoreExport) -> Result<()> {
        let mut text = String::with_capacity(self.entries.len() * 64);
        for (entry, score) in self.entries.iter().zip(&self.scores) {
            text.push_str(entry);
            text.push(' ');
            text.push_str(&export.apply(*score).to_string());
            text.push('\n');
        }
        write_text(path, &text)
    }
}

/// Writes `text` to `path` atomically, creating the parent directory.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_bytes(path, text.as_bytes())
}

/// Writes `bytes` to `path` atomically, creating the parent directory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_io::write_bytes(path, bytes).map_err(|failure| match failure {
        atomic_io::Failure::Write(source) => Error::io("writing", path, source),
        atomic_io::Failure::Io {
            action,
            path,
            source,
        } => Error::io(action, path, source),
    })
}

/// BPCER at a fixed APCER (ISO/IEC 30107-3's BPCER20 and BPCER100 style).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BpcerAtApcer {
    /// The APCER bound (pooled), a fraction.
    pub apcer: f64,
    /// The lowest BPCER with APCER at most the bound.
    pub bpcer: f64,
    /// The threshold reaching it.
    #[serde(with = "fas_metrics::serde_threshold")]
    pub threshold: f64,
}

/// Where the test threshold came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdOrigin {
    /// Chosen on the dev split's scores now.
    Dev,
    /// Stored in the checkpoint (chosen on dev during training).
    Checkpoint,
    /// Given on the command line.
    Fixed,
}

/// The report of one evaluated model: the protocol report on test (flattened:
/// `threshold`, `apcer`, `bpcer`, `acer`, `hter`, `acc`, `auc`, `eer`,
/// `per_attack_type`, ...) and what it rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Protocol name (`p1`, ...).
    pub protocol: String,
    /// `image` or `video` (scores averaged per video).
    pub level: String,
    /// What a high score means.
    pub score_polarity: String,
    /// Where the threshold came from.
    pub threshold_origin: ThresholdOrigin,
    /// Which split chose the checkpoint: `dev` (honest) or `test` (to
    /// reproduce test-selected numbers; such results overstate); `None`
    /// for a step checkpoint, which no split chose.
    pub selected_on: Option<Selection>,
    /// Which way the score files written with this report point (`None`:
    /// none written). The metrics above always use `score_polarity`.
    #[serde(default)]
    pub score_files: Option<crate::labels::ScoreExport>,
    /// The checkpoint evaluated.
    pub checkpoint: Option<PathBuf>,
    /// Optimizer step of that checkpoint.
    pub step: Option<u64>,
    /// Test metrics at the threshold.
    #[serde(flatten)]
    pub test: ProtocolReport,
    /// Dev metrics at dev's own threshold, when dev was scored.
    pub dev: Option<ProtocolReport>,
    /// BPCER at APCER 1 %, 5 % and 10 % on test.
    pub bpcer_at_apcer: Vec<BpcerAtApcer>,
}

/// The protocol's threshold and metrics: `threshold` (or, when `None`, the
/// rule applied to dev's scores) on test.
pub fn evaluate(
    dev: Option<&ScoreSet>,
    test: &ScoreSet,
    rule: ThresholdRule,
    threshold: Option<f64>,
) -> Result<(ProtocolReport, Option<ProtocolReport>)> {
    let config = ProtocolConfig {
        threshold_rule: rule,
        ..ProtocolConfig::default()
    };
    let dev_report = dev
        .map(|dev| evaluate_protocol(Some(dev), dev, config))
        .transpose()?;
    let test_report = match (threshold, dev) {
        (Some(threshold), _) => {
            let fixed = ProtocolConfig {
                threshold_rule: ThresholdRule::Fixed { threshold },
                ..config
            };
            evaluate_protocol(None, test, fixed)?
        }
        (None, Some(dev)) => evaluate_protocol(Some(dev), test, config)?,
        (None, None) => return Err(Error::config(
            "threshold",
            "needs a dev split or a stored/fixed threshold (choosing it on test is not offered)",
        )),
    };
    Ok((test_report, dev_report))
}

/// BPCER at APCER 1 %, 5 %, 10 % (pooled).
pub fn bpcer_table(test: &ScoreSet) -> Result<Vec<BpcerAtApcer>> {
    [0.01, 0.05, 0.10]
        .into_iter()
        .map(|apcer| {
            let point = bpcer_at_apcer(test, apcer, ApcerPooling::Pooled)?;
            Ok(BpcerAtApcer {
                apcer,
                bpcer: point.bpcer,
                threshold: point.threshold,
            })
        })
        .collect()
}

/// Writes the test ROC, DET and score-histogram PNGs into `dir`.
pub fn write_plots(test: &ScoreSet, dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(fas_metrics::plot::write_all(test, dir)?)
}
