//! `eval_uniattack`: checkpoint(s) + dev and test splits -> the paper's
//! Table 2 metrics and more, as JSON, CSV, score files and plots.

use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::{Parser, ValueEnum};
use fas_data::protocol::uniattack::{Modality, Protocol, Split};
use serde::Serialize;

use super::parse_protocol;
use crate::checkpoint::{
    read_header, read_model_checkpoint, resolve_checkpoint, CheckpointKind, CheckpointMeta,
};
use crate::data::{protocol_name, read_split};
use crate::detector::Detector;
use crate::error::{Error, Result};
use crate::evaluator::{
    bpcer_table, evaluate, score_split, write_plots, write_text, EvalReport, ThresholdOrigin,
};
use crate::experiment::{DataConfig, Dataset, Selection};
use crate::labels::{ScoreExport, SCORE_POLARITY};
use crate::run_dir::RunDir;

/// Evaluate La-SoftMoE CLIP checkpoints on a protocol's test split, at the
/// threshold chosen on its dev split.
///
/// Reports ACER, ACC, AUC and EER (the paper's Table 2), APCER, BPCER,
/// HTER, per-attack-type APCER and BPCER at APCER 1/5/10 %. Scores are
/// attack probabilities (higher = attack) unless --score-polarity live.
/// Without --data the data of the checkpoint's own run is used.
#[derive(Debug, Parser)]
#[command(name = "eval_uniattack", version)]
pub struct EvalArgs {
    /// A checkpoint file or a run directory (its best checkpoint; its latest
    /// step checkpoint while it has no best yet); repeat for several runs
    /// (seeds): mean and standard deviation per metric.
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// Data root [default: the checkpoint's].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// UniAttackData protocol [default: the checkpoint's].
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Image or video lists [default: the checkpoint's, else image].
    #[arg(long, value_enum)]
    pub modality: Option<super::train::ModalityArg>,
    /// Where the threshold comes from: dev (recomputed on the dev split),
    /// checkpoint (calibrated on dev during training), or a number in
    /// [0, 1] on P(attack).
    #[arg(long, default_value = "dev", value_parser = parse_threshold)]
    pub threshold: ThresholdArg,
    /// Average frame scores per video.
    #[arg(long)]
    pub video_level: bool,
    /// Write report.json, report.csv, scores/<split>.txt and plots/ here.
    #[arg(long, alias = "out")]
    pub output: Option<PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Polarity of written score files: attack (P(attack), default) or live (P(live), challenge format).
    #[arg(long, value_enum, default_value = "attack")]
    pub score_polarity: PolarityArg,
    /// Batch, threads, device.
    #[command(flatten)]
    pub run: super::RunFlags,
}

/// `--threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdArg {
    /// Chosen on the dev split's scores now.
    Dev,
    /// The one stored in the checkpoint.
    Checkpoint,
    /// This one.
    Fixed(f64),
}

fn parse_threshold(text: &str) -> std::result::Result<ThresholdArg, String> {
    match text {
        "dev" => Ok(ThresholdArg::Dev),
        "checkpoint" => Ok(ThresholdArg::Checkpoint),
        number => super::parse_probability(number)
            .map(ThresholdArg::Fixed)
            .map_err(|e| format!("expected dev, checkpoint or a number: {e}")),
    }
}

/// `--score-polarity`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolarityArg {
    /// P(attack): higher = attack.
    Attack,
    /// P(live): higher = live.
    Live,
}

/// Mean and (sample) standard deviation of one metric over checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1); 0 for one checkpoint.
    pub std: f64,
}

/// The result of several checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MultiReport {
    /// One report per checkpoint, in argument order.
    pub runs: Vec<EvalReport>,
    /// Per metric (acer, apcer, bpcer, hter, acc, auc, eer).
    pub summary: std::collections::BTreeMap<String, Spread>,
}

fn spread(values: &[f64]) -> Spread {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Spread { mean, std }
}

/// The metrics summarised over several runs.
pub fn summarise(runs: &[EvalReport]) -> std::collections::BTreeMap<String, Spread> {
    let metric = |f: fn(&EvalReport) -> f64| spread(&runs.iter().map(f).collect::<Vec<_>>());
    [
        ("acer", metric(|r| r.test.acer)),
        ("apcer", metric(|r| r.test.apcer)),
        ("bpcer", metric(|r| r.test.bpcer)),
        ("hter", metric(|r| r.test.hter)),
        ("acc", metric(|r| r.test.acc)),
        ("auc", metric(|r| r.test.auc)),
        ("eer", metric(|r| r.test.eer)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Evaluates one checkpoint; with `output`, writes its score files and plots there.
pub fn evaluate_checkpoint(
    args: &EvalArgs,
    checkpoint: &Path,
    output: Option<&Path>,
    device: &Device,
) -> Result<EvalReport> {
    let path = resolve_checkpoint(checkpoint)?;
    let loaded = read_model_checkpoint(&path)?;
    let detector = Detector::from_checkpoint(&loaded, device)?;
    let data = data_config(args, &loaded.meta.experiment.data);
    if args.data.is_none() && data.root.is_relative() {
        // Older runs stored the data root as given.
        crate::runtime::note(&format!(
            "note: {} records the relative data root {}, taken from the current directory as \
             {}; give --data to use another",
            path.display(),
            data.root.display(),
            std::path::absolute(&data.root)
                .unwrap_or_else(|_| data.root.clone())
                .display()
        ));
    }
    let video_level = args.video_level;
    // The threshold's source is settled before any scoring: a checkpoint
    // without a usable stored threshold fails now, not after a test pass.
    let (threshold, origin) = match args.threshold {
        ThresholdArg::Dev => (None, ThresholdOrigin::Dev),
        ThresholdArg::Checkpoint => {
            let threshold = loaded
                .own_threshold("use --threshold dev")?
                .ok_or_else(|| {
                    Error::checkpoint(&path, "stores no calibrated threshold; use --threshold dev")
                })?;
            check_calibration_fits(&loaded.meta, &data, video_level)?;
            (Some(threshold), ThresholdOrigin::Checkpoint)
        }
        ThresholdArg::Fixed(value) => (Some(value), ThresholdOrigin::Fixed),
    };
    let test = read_split(&data, Split::Test)?;
    test.require_both_classes()?;
    let dev = match origin {
        ThresholdOrigin::Dev => {
            let dev = read_split(&data, Split::Dev)?;
            dev.require_both_classes()?;
            let test_selected = loaded.meta.experiment.eval.select_on == Selection::Test;
            let hint = "use the checkpoint's own threshold (--threshold checkpoint) or a number";
            let overlap = crate::data::check_distinct(&dev, &test, test_selected, false, hint)?;
            if let Some(overlap) = overlap {
                crate::runtime::note(&overlap);
            }
            Some(dev)
        }
        _ => None,
    };
    let workers = args.run.workers;
    let test_scores = score_split(&detector, &test, args.run.batch_size, workers)?;
    let test_set = test_scores.score_set(video_level)?;
    let rule = loaded.meta.experiment.eval.threshold_rule;
    let dev_scores = dev
        .map(|dev| score_split(&detector, &dev, args.run.batch_size, workers))
        .transpose()?;
    let dev_set = dev_scores
        .as_ref()
        .map(|s| s.score_set(video_level))
        .transpose()?;
    let (test_report, dev_report) = evaluate(dev_set.as_ref(), &test_set, rule, threshold)?;
    let export = match args.score_polarity {
        PolarityArg::Attack => ScoreExport::AttackProbability,
        PolarityArg::Live => ScoreExport::LiveProbability,
    };
    if let Some(dir) = output {
        let run = RunDir::new(dir.to_path_buf());
        test_scores.write(&run.scores("test"), export)?;
        if let Some(dev) = &dev_scores {
            dev.write(&run.scores("dev"), export)?;
        }
        write_plots(&test_set, &run.plots())?;
    }
    Ok(EvalReport {
        protocol: protocol_name(&data),
        level: if video_level { "video" } else { "image" }.into(),
        score_polarity: SCORE_POLARITY.to_string(),
        threshold_origin: origin,
        // Only the best checkpoint was chosen (on a split); a step
        // checkpoint is the weights of its step.
        selected_on: (loaded.meta.kind == CheckpointKind::Model)
            .then_some(loaded.meta.experiment.eval.select_on),
        score_files: output.map(|_| export),
        checkpoint: Some(path),
        step: Some(loaded.meta.step),
        test: test_report,
        dev: dev_report,
        bpcer_at_apcer: bpcer_table(&test_set)?,
    })
}

/// Errors unless the checkpoint's stored threshold was chosen on scores
/// like those it would now be applied to: the same scoring level, and the
/// dev split of the same protocol and modality (a data root moved
/// elsewhere is fine).
fn check_calibration_fits(
    meta: &CheckpointMeta,
    data: &DataConfig,
    video_level: bool,
) -> Result<()> {
    let level = |video: bool| if video { "per-video mean" } else { "per-image" };
    if let Some(calibrated) = meta.calibration.and_then(|c| c.video_level) {
        if calibrated != video_level {
            return Err(Error::config(
                "--threshold checkpoint",
                format!(
                    "the stored threshold was chosen on {} scores and these are {}: evaluate at \
                     the same level ({} --video-level) or use --threshold dev",
                    level(calibrated),
                    level(video_level),
                    if calibrated { "add" } else { "drop" }
                ),
            ));
        }
    }
    let saved = &meta.experiment.data;
    if data.dataset != saved.dataset {
        return Err(Error::config(
            "--threshold checkpoint",
            format!(
                "the stored threshold was chosen on the dev split of {}; this evaluation is of \
                 {}: use --threshold dev",
                protocol_name(saved),
                protocol_name(data)
            ),
        ));
    }
    Ok(())
}

/// The checkpoint's data, with the command line's overrides.
fn data_config(args: &EvalArgs, saved: &DataConfig) -> DataConfig {
    let mut data = saved.clone();
    if let Some(root) = &args.data {
        data.root = root.clone();
    }
    if args.protocol.is_some() || args.modality.is_some() {
        let (protocol, modality) = match &saved.dataset {
            Dataset::UniAttack { protocol, modality } => (*protocol, *modality),
            Dataset::Lists { .. } => (Protocol::P1, Modality::Image),
        };
        data.dataset = Dataset::UniAttack {
            protocol: args.protocol.unwrap_or(protocol),
            modality: args.modality.map_or(modality, |m| match m {
                super::train::ModalityArg::Image => Modality::Image,
                super::train::ModalityArg::Video => Modality::Video,
            }),
        };
    }
    data
}

/// What makes two checkpoints' metrics not of one experiment (so not to
/// be averaged), read from their headers before anything is scored: the
/// protocol, how the checkpoint was selected, and (for a threshold chosen
/// on dev now) the rule that chooses it. The scoring level and the
/// threshold's origin come from the command line, the same for all. Seeds
/// of one configuration agree in all of these.
fn summary_key(args: &EvalArgs, meta: &CheckpointMeta) -> [(&'static str, String); 4] {
    let selection = match meta.kind {
        CheckpointKind::Model => {
            format!("selected on {:?}", meta.experiment.eval.select_on).to_lowercase()
        }
        CheckpointKind::Training => "a step checkpoint".to_string(),
    };
    let rule = match args.threshold {
        ThresholdArg::Dev => format!("{:?}", meta.experiment.eval.threshold_rule),
        _ => String::new(),
    };
    let data = data_config(args, &meta.experiment.data);
    // The files scored: runs on other data (or other lists of it) are no
    // seeds of one result.
    let lists = [Split::Dev, Split::Test]
        .map(|split| {
            // Absolute: an older run's relative root and a newer run's
            // absolute one may name the same lists.
            let list = crate::data::list_path(&data, split);
            std::path::absolute(&list)
                .unwrap_or(list)
                .display()
                .to_string()
        })
        .join(" and ");
    [
        ("protocol", protocol_name(&data)),
        ("the lists scored", lists),
        ("checkpoint selection", selection),
        ("threshold rule", rule),
    ]
}

/// Errors unless every checkpoint can be averaged with the first, naming
/// the first difference.
fn check_summarisable(args: &EvalArgs) -> Result<()> {
    let paths = args
        .checkpoint
        .iter()
        .map(|checkpoint| resolve_checkpoint(checkpoint))
        .collect::<Result<Vec<_>>>()?;
    for (i, path) in paths.iter().enumerate() {
        if let Some(j) = (0..i).find(|&j| atomic_io::same_file(&paths[j], path)) {
            return Err(Error::config(
                "--checkpoint",
                format!(
                    "{} and {} are the same checkpoint; a mean over it twice would show a \
                     spread of 0: give each seed's run once",
                    args.checkpoint[j].display(),
                    args.checkpoint[i].display()
                ),
            ));
        }
    }
    let metas = paths
        .iter()
        .map(|path| read_header(path))
        .collect::<Result<Vec<_>>>()?;
    // A copy of a run directory, or a rerun of one seed, holds the same
    // training under another path: the same experiment (seed included) at
    // the same step. Training is deterministic, so a mean over both would
    // show a spread of (close to) 0 that no second seed measured. (Another
    // number of ranks trains another run from the same seed.)
    for (i, meta) in metas.iter().enumerate() {
        let same = |other: &CheckpointMeta| {
            other.step == meta.step
                && other.kind == meta.kind
                && other.world_size == meta.world_size
                && other.experiment == meta.experiment
        };
        if let Some(j) = (0..i).find(|&j| same(&metas[j])) {
            return Err(Error::config(
                "--checkpoint",
                format!(
                    "{} and {} hold the same training (one experiment with seed {}, at step \
                     {}): a copy of one run, or a rerun of its seed; a mean over them would \
                     show no spread between seeds: give runs of different seeds",
                    args.checkpoint[j].display(),
                    args.checkpoint[i].display(),
                    meta.experiment.seed,
                    meta.step
                ),
            ));
        }
    }
    let keys: Vec<_> = metas.iter().map(|meta| summary_key(args, meta)).collect();
    for (i, key) in keys.iter().enumerate().skip(1) {
        let differing = keys[0].iter().zip(key).find(|(a, b)| a.1 != b.1);
        if let Some(((what, first), (_, this))) = differing {
            return Err(Error::config(
                "--checkpoint",
                format!(
                    "{} and {} differ in {what} ({first} vs {this}): a mean over them would be \
                     neither's result; evaluate them separately (or, for one dataset in two \
                     places, give --data)",
                    args.checkpoint[0].display(),
                    args.checkpoint[i].display()
                ),
            ));
        }
    }
    Ok(())
}

/// The score and plot files of one evaluation directory (`dir` itself, or
/// one checkpoint's subdirectory).
const SCORE_FILES: [&str; 2] = ["scores/dev.txt", "scores/test.txt"];
const PLOT_FILES: [&str; 3] = ["plots/roc.png", "plots/det.png", "plots/scores.png"];

/// Whether `name` is `checkpoint-<n>`, the subdirectory of one of several
/// checkpoints.
fn is_checkpoint_dir(name: &str) -> bool {
    name.strip_prefix("checkpoint-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The files of an earlier evaluation in `dir` (none when it does not
/// exist or is empty). Anything else there is refused: this command
/// replaces its own files, not other programs' or a person's.
fn earlier_evaluation(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let foreign = |path: &Path| {
        Error::config(
            "--output",
            format!(
                "{} is not from an earlier evaluation; the directory would mix it with this \
                 one's files: choose a new or empty directory",
                path.display()
            ),
        )
    };
    if dir.exists() && !dir.is_dir() {
        return Err(Error::config(
            "--output",
            format!(
                "{} exists and is not a directory; give a directory for the evaluation",
                dir.display()
            ),
        ));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match name.as_str() {
            "report.json" | "report.csv" if path.is_file() => found.push(path),
            // A write a killed evaluation left: removed with the rest.
            _ if atomic_io::is_temporary_name(&name) => found.push(path),
            "scores" | "plots" => collect_known(dir, &path, &mut found, &foreign)?,
            _ if is_checkpoint_dir(&name) && path.is_dir() => {
                for child in std::fs::read_dir(&path).map_err(|e| Error::io("listing", &path, e))? {
                    let child = child.map_err(|e| Error::io("listing", &path, e))?.path();
                    match child.file_name().and_then(|n| n.to_str()) {
                        Some("scores" | "plots") => {
                            collect_known(&path, &child, &mut found, &foreign)?
                        }
                        _ => return Err(foreign(&child)),
                    }
                }
            }
            _ => return Err(foreign(&path)),
        }
    }
    Ok(found)
}

/// The files of `sub` (`<base>/scores` or `<base>/plots`), each one an
/// evaluation writes, or the error `foreign` makes.
fn collect_known(
    base: &Path,
    sub: &Path,
    found: &mut Vec<PathBuf>,
    foreign: &dyn Fn(&Path) -> Error,
) -> Result<()> {
    if !sub.is_dir() {
        return Err(foreign(sub));
    }
    for entry in std::fs::read_dir(sub).map_err(|e| Error::io("listing", sub, e))? {
        let path = entry.map_err(|e| Error::io("listing", sub, e))?.path();
        let temporary = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(atomic_io::is_temporary_name);
        let known = temporary
            || SCORE_FILES
                .iter()
                .chain(&PLOT_FILES)
                .any(|file| base.join(file) == path);
        if !known || !(temporary || path.is_file()) {
            return Err(foreign(&path));
        }
        found.push(path);
    }
    Ok(())
}

/// The files this evaluation wrote into `dir`.
fn evaluation_files(dir: &Path, runs: &[EvalReport]) -> Vec<PathBuf> {
    let mut files = vec![dir.join("report.json"), dir.join("report.csv")];
    let bases: Vec<PathBuf> = if runs.len() > 1 {
        (0..runs.len())
            .map(|i| dir.join(format!("checkpoint-{i}")))
            .collect()
    } else {
        vec![dir.to_path_buf()]
    };
    for (base, run) in bases.iter().zip(runs) {
        files.push(base.join("scores/test.txt"));
        if run.dev.is_some() {
            files.push(base.join("scores/dev.txt"));
        }
        files.extend(PLOT_FILES.iter().map(|file| base.join(file)));
    }
    files
}

/// Removes the files of the earlier evaluation this one did not write
/// again, and the directories they leave empty.
fn remove_stale(dir: &Path, earlier: &[PathBuf], written: &[PathBuf]) -> Result<()> {
    for path in earlier.iter().filter(|path| !written.contains(path)) {
        // A file, or the directory of a killed write.
        atomic_io::remove_temporary(path).map_err(|e| Error::io("removing", path, e))?;
        // Its scores/ or plots/ directory, then checkpoint-<n>/, if empty
        // now (a directory still holding files stays).
        let mut parent = path.parent();
        while let Some(folder) = parent.filter(|folder| *folder != dir) {
            if std::fs::remove_dir(folder).is_err() {
                break;
            }
            parent = folder.parent();
        }
    }
    Ok(())
}

/// One CSV row per report (and mean/std rows for several).
pub fn csv(runs: &[EvalReport]) -> String {
    let mut out = String::from("checkpoint,step,threshold,acer,apcer,bpcer,hter,acc,auc,eer\n");
    let row = |name: &str, step: &str, threshold: String, r: [f64; 7]| {
        format!(
            "{name},{step},{threshold},{}\n",
            r.map(|v| v.to_string()).join(",")
        )
    };
    for r in runs {
        let t = &r.test;
        out.push_str(&row(
            &r.checkpoint
                .as_ref()
                .map(|p| p.display().to_string().replace(',', "_"))
                .unwrap_or_default(),
            &r.step.map(|s| s.to_string()).unwrap_or_default(),
            t.threshold.to_string(),
            [t.acer, t.apcer, t.bpcer, t.hter, t.acc, t.auc, t.eer],
        ));
    }
    if runs.len() > 1 {
        let s = summarise(runs);
        let pick = |f: fn(&Spread) -> f64| {
            ["acer", "apcer", "bpcer", "hter", "acc", "auc", "eer"].map(|k| f(&s[k]))
        };
        out.push_str(&row("mean", "", String::new(), pick(|s| s.mean)));
        out.push_str(&row("std", "", String::new(), pick(|s| s.std)));
    }
    out
}

/// Runs `eval_uniattack`; returns the JSON it printed or wrote.
pub fn run(args: &EvalArgs) -> Result<String> {
    crate::runtime::init();
    if let Some(dir) = &args.output {
        // A training run's report, scores and plots are the record of that
        // run: an evaluation (perhaps at another threshold or polarity)
        // must not replace some of them.
        let run = RunDir::new(dir.clone());
        if run.config().is_file() || run.checkpoints().is_dir() {
            return Err(Error::config(
                "--output",
                format!(
                    "{} holds a training run; writing this evaluation there would replace its \
                     report, scores and plots: choose another directory",
                    dir.display()
                ),
            ));
        }
    }
    // Checkpoints that cannot be averaged are refused before anything is
    // scored or written.
    if args.checkpoint.len() > 1 {
        check_summarisable(args)?;
    }
    // An earlier evaluation's files here are replaced: those this one does
    // not write again are removed once it has written its own, so a success
    // leaves nothing of it beside the new one. (A failure midway can leave
    // some of this evaluation's score files and plots beside the earlier
    // report; the earlier report is replaced only at the end.)
    let earlier = match &args.output {
        Some(dir) => earlier_evaluation(dir)?,
        None => Vec::new(),
    };
    let device = crate::runtime::device(args.run.device.as_deref())?;
    crate::runtime::note(&format!("device: {}", crate::runtime::describe(&device)));
    let several = args.checkpoint.len() > 1;
    let mut runs = Vec::with_capacity(args.checkpoint.len());
    for (i, checkpoint) in args.checkpoint.iter().enumerate() {
        let output = args.output.as_ref().map(|dir| {
            if several {
                dir.join(format!("checkpoint-{i}"))
            } else {
                dir.clone()
            }
        });
        runs.push(evaluate_checkpoint(
            args,
            checkpoint,
            output.as_deref(),
            &device,
        )?);
    }
    let json = if several {
        let multi = MultiReport {
            summary: summarise(&runs),
            runs: runs.clone(),
        };
        serde_json::to_string_pretty(&multi)
    } else {
        serde_json::to_string_pretty(&runs[0])
    }
    .map_err(|source| Error::Json {
        path: PathBuf::from("report.json"),
        source,
    })?;
    if let Some(dir) = &args.output {
        write_text(&dir.join("report.json"), &json)?;
        write_text(&dir.join("report.csv"), &csv(&runs))?;
        let written = evaluation_files(dir, &runs);
        remove_stale(dir, &earlier, &written)?;
    }
    if args.json {
        crate::runtime::say(&json);
    } else {
        for report in &runs {
            if let Some(path) = &report.checkpoint {
                crate::runtime::say(&format!("checkpoint {}", path.display()));
            }
            crate::runtime::say(&super::train::summary_table(report));
        }
        if several {
            for (name, s) in summarise(&runs) {
                crate::runtime::say(&format!(
                    "{name}: {:.2} ± {:.2} %",
                    100.0 * s.mean,
                    100.0 * s.std
                ));
            }
        }
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::spread;

    /// Hand-worked: [0.1, 0.2, 0.6] has mean 0.3 and squared deviations
    /// 0.04, 0.01, 0.09, so a sample variance (n - 1 = 2) of 0.07. One
    /// value has no spread.
    #[test]
    fn spread_is_mean_and_sample_deviation() {
        let s = spread(&[0.1, 0.2, 0.6]);
        assert!((s.mean - 0.3).abs() < 1e-15, "{}", s.mean);
        assert!((s.std - 0.07f64.sqrt()).abs() < 1e-15, "{}", s.std);
        let one = spread(&[0.25]);
        assert_eq!((one.mean, one.std), (0.25, 0.0));
    }
}
