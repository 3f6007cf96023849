//! The paper's ablations as runs, not hand-edited code: the MoE study
//! (Table 6: plain CLIP, Soft MoE, La-SoftMoE) and the prompt study
//! (Table 5: templates T-1 to T-8), each variant trained from the same base
//! configuration into its own run directory, the results collected into one
//! markdown table.

use std::path::Path;

use candle_core::Device;
use clip_moe::{MoeConfig, MoeKind, PromptTemplate};
use fas_data::protocol::uniattack::Split;
use serde::{Deserialize, Serialize};

use crate::checkpoint::ListDigest;
use crate::error::{Error, Result};
use crate::evaluator::{EvalReport, ThresholdOrigin};
use crate::experiment::{ExperimentConfig, ModelConfig, Selection};
use crate::run_dir::RunDir;
use crate::trainer::{data_moved, differing_sections, resolved, TrainOptions, Trainer};

/// Which ablation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Study {
    /// Table 6: no MoE, Soft MoE, La-SoftMoE.
    Moe,
    /// Table 5: prompt templates T-1 to T-8.
    Prompts,
}

impl Study {
    /// Its `--study` value.
    pub fn name(self) -> &'static str {
        match self {
            Study::Moe => "moe",
            Study::Prompts => "prompts",
        }
    }

    /// The first line of the study's `table.md`, by which a later run
    /// recognises the table as its own (and not a person's, or the other
    /// study's) before replacing it.
    pub fn heading(self) -> &'static str {
        match self {
            Study::Moe => "# MoE study (Table 6 of the paper), written by run_studies --study moe",
            Study::Prompts => {
                "# Prompt study (Table 5 of the paper), written by run_studies --study prompts"
            }
        }
    }
}

/// How a study trains its variants.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Where every variant trains.
    pub device: Device,
    /// Decode every listed image at each variant's start
    /// ([`TrainOptions::check_images`]), so a damaged image stops the study
    /// there.
    pub check_images: bool,
}

/// `cfg` with only the settings its model uses: plain CLIP keeps no MoE
/// placement (which blocks get a branch, how wide its experts are belong to
/// the MoE variants), so changing those leaves its finished run reusable.
fn own_settings(mut cfg: ExperimentConfig) -> ExperimentConfig {
    if cfg.model.moe.kind() == MoeKind::None {
        cfg.model.moe = MoeConfig::none();
    }
    cfg
}

/// The variants of `study`, named, each `base` with one setting changed.
pub fn variants(study: Study, base: &ExperimentConfig) -> Vec<(String, ExperimentConfig)> {
    match study {
        Study::Moe => [
            ("clip", MoeKind::None),
            ("soft-moe", MoeKind::SoftMoe),
            ("la-soft-moe", MoeKind::LaSoftMoe),
        ]
        .into_iter()
        .map(|(name, kind)| {
            let mut cfg = base.clone();
            cfg.model.moe = cfg.model.moe.with_kind(kind);
            (name.to_string(), own_settings(cfg))
        })
        .collect(),
        Study::Prompts => PromptTemplate::ALL
            .into_iter()
            .enumerate()
            .map(|(i, template)| {
                let mut cfg = base.clone();
                cfg.prompts.templates = vec![template];
                (format!("T-{}", i + 1), own_settings(cfg))
            })
            .collect(),
    }
}

/// The paper's Table 2 columns per variant (percent, two decimals), with
/// where each row's threshold and checkpoint came from (a row selected on
/// test is flagged: its numbers overstate).
pub fn table(protocol: &str, rows: &[(String, EvalReport)]) -> String {
    let pct = |x: f64| format!("{:.2}", 100.0 * x);
    let mut out = format!(
        "| {protocol} | ACER (%) | ACC (%) | AUC (%) | EER (%) | APCER (%) | BPCER (%) |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for (name, r) in rows {
        let t = &r.test;
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            pct(t.acer),
            pct(t.acc),
            pct(t.auc),
            pct(t.eer),
            pct(t.apcer),
            pct(t.bpcer)
        ));
    }
    let names = |keep: &dyn Fn(&EvalReport) -> bool| -> Vec<&str> {
        rows.iter()
            .filter(|(_, r)| keep(r))
            .map(|(name, _)| name.as_str())
            .collect()
    };
    let threshold_not_dev = names(&|r| r.threshold_origin != ThresholdOrigin::Dev);
    let test_selected = names(&|r| r.selected_on == Some(Selection::Test));
    out.push('\n');
    if threshold_not_dev.is_empty() {
        out.push_str("Thresholds chosen on dev, ");
    } else {
        out.push_str(&format!(
            "Thresholds chosen on dev, except {} (stored or given threshold), ",
            threshold_not_dev.join(", ")
        ));
    }
    if test_selected.is_empty() {
        out.push_str("checkpoints selected on dev; metrics on test.\n");
    } else {
        out.push_str(&format!(
            "checkpoints selected on dev, except {}; metrics on test.\n\nNOTE: the \
             checkpoint of {} was selected on TEST (--select-on test): those test numbers \
             overstate.\n",
            test_selected.join(", "),
            test_selected.join(", ")
        ));
    }
    out
}

/// Errors on the `train_uniattack` flags a study cannot honour: it decides
/// for each variant whether to continue it, writes its own table, and
/// trains on one device. Accepting them would ignore them.
pub fn refuse_run_flags(train: &crate::cli::train::TrainArgs) -> Result<()> {
    for (flag, given) in [
        ("--resume", train.resume),
        ("--report", train.report.is_some()),
        ("--gpus", train.gpus.is_some()),
    ] {
        if given {
            return Err(Error::config(
                flag,
                "is not a run_studies flag: a study trains each variant into its own directory \
                 under --output on one device, continues finished variants by itself, and \
                 writes its table to <output>/table.md",
            ));
        }
    }
    Ok(())
}

/// The largest `table.md` read to recognise it (a study's is a few KiB).
const MAX_TABLE_BYTES: u64 = 1 << 20;

/// Refuses, before anything trains, an `out` the study must not write
/// into: a file, the data root, or a directory whose `table.md` this study
/// did not write (a person's notes, the other study's table).
fn check_study_dir(study: Study, base: &ExperimentConfig, out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::config(
            "--output",
            format!(
                "{} exists and is not a directory; give a directory for the study",
                out.display()
            ),
        ));
    }
    if resolved(out) == resolved(&base.data.root) {
        return Err(Error::config(
            "--output",
            format!(
                "{} is the data root; the study would write its runs and table.md among the \
                 dataset's files: choose another directory",
                out.display()
            ),
        ));
    }
    let table = out.join("table.md");
    if std::fs::symlink_metadata(&table).is_err() {
        return Ok(());
    }
    let bytes = match atomic_io::read_regular_file(&table, MAX_TABLE_BYTES) {
        Ok(bytes) => bytes,
        Err(atomic_io::ReadRefused::NotRegular(what)) => {
            return Err(Error::config(
                "--output",
                format!(
                    "{} is {what}, not a table run_studies wrote, and the study would replace \
                     it: move it, or choose another --output",
                    table.display()
                ),
            ))
        }
        // Unreadable or too large: not a table this tool wrote (below).
        Err(_) => Vec::new(),
    };
    let first_line = String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .map(str::to_string);
    let writer = [Study::Moe, Study::Prompts]
        .into_iter()
        .find(|s| first_line.as_deref() == Some(s.heading()));
    match writer {
        Some(writer) if writer == study => Ok(()),
        Some(writer) => Err(Error::config(
            "--output",
            format!(
                "{} holds the table of the {} study, which this {} study would replace: \
                 choose another --output",
                table.display(),
                writer.name(),
                study.name()
            ),
        )),
        None => Err(Error::config(
            "--output",
            format!(
                "{} was not written by run_studies (its first line is not a study's heading), \
                 and the study would replace it: move it, or choose another --output (a table \
                 of an earlier run_studies without the heading may be removed: the finished \
                 variants are reused)",
                table.display()
            ),
        )),
    }
}

/// The report of `run` when it is a finished run of `cfg` (`None` when it
/// is not finished). A finished run of other settings is an error: its row
/// would not belong in the table. Its settings may differ where a resume
/// allows (its data moved, its lists the same; its rolling checkpoints and
/// evaluation batch size, which its weights do not depend on) and, for
/// plain CLIP, in the MoE placement; not in its length.
fn finished_report(run: &RunDir, name: &str, cfg: &ExperimentConfig) -> Result<Option<EvalReport>> {
    let Some(report) = std::fs::read_to_string(run.report())
        .ok()
        .and_then(|text| serde_json::from_str::<EvalReport>(&text).ok())
    else {
        return Ok(None);
    };
    let saved = own_settings(ExperimentConfig::from_file(&run.config())?);
    let mut differ = differing_sections(&saved, &own_settings(cfg.clone()));
    // Unlike a resumed run, a reused one must have run as long.
    if saved.training.epochs != cfg.training.epochs
        || saved.training.max_steps != cfg.training.max_steps
    {
        differ.push("training length");
    }
    let moved = differ.contains(&"data") && data_moved(&saved, cfg);
    if moved {
        differ.retain(|section| *section != "data");
    }
    if !differ.is_empty() {
        return Err(Error::config(
            "--output",
            format!(
                "{} holds a finished {name} run of other settings (differs in: {}); its row \
                 would not belong in this table: choose another --output",
                run.root().display(),
                differ.join(", ")
            ),
        ));
    }
    check_lists(run, name, cfg, moved)?;
    if moved {
        crate::runtime::say(&format!(
            "note: the data of the finished {name} run moved from {} to {}; its lists hold \
             the entries and labels it was trained on (the images' contents are not compared)",
            saved.data.root.display(),
            cfg.data.root.display()
        ));
    }
    Ok(Some(report))
}

/// Errors unless the lists of `cfg` hold the entries and labels the
/// finished `run`'s checkpoint recorded, as a resume checks them (lists
/// edited in place would otherwise tabulate a run on other data). A run
/// from before checkpoints recorded their lists passes, unless its data
/// `moved`: that cannot be checked.
fn check_lists(run: &RunDir, name: &str, cfg: &ExperimentConfig, moved: bool) -> Result<()> {
    let checkpoint = match run.best_checkpoint() {
        best if best.is_file() => Some(best),
        _ => run.latest_checkpoint()?,
    };
    let recorded = match &checkpoint {
        Some(path) => crate::checkpoint::read_header(path)?.lists,
        None => None,
    };
    let Some(recorded) = recorded else {
        if !moved {
            return Ok(());
        }
        return Err(Error::config(
            "--data",
            format!(
                "the finished {name} run in {} has no checkpoint recording its lists, so data \
                 that moved cannot be checked: give the data root and lists it was trained on",
                run.root().display()
            ),
        ));
    };
    for (split, then) in [
        (Split::Train, recorded.train),
        (Split::Dev, recorded.dev),
        (Split::Test, recorded.test),
    ] {
        let now = crate::data::read_split(&cfg.data, split)?;
        if let Some(change) = ListDigest::of(&now.samples).change_since(&then) {
            return Err(Error::Split {
                split: split.name().to_string(),
                source_name: now.source,
                reason: format!(
                    "differs from the list the finished {name} run in {} was trained on \
                     ({change}); its row would not belong in this table: give the data it was \
                     trained on, or another --output",
                    run.root().display(),
                ),
            });
        }
    }
    Ok(())
}

/// Makes, for every variant still to train, the checks of its start that
/// differ between variants (its settings, its model, its directory, an
/// interrupted one's saved settings), so a
/// bad setting of a later variant (`--moe-layers 99`) stops the study
/// before the first variant trains, not hours in.
fn check_variants(to_train: &[(&ExperimentConfig, &RunDir)]) -> Result<()> {
    let mut built: Vec<&ModelConfig> = Vec::new();
    for &(cfg, run) in to_train {
        cfg.validate()?;
        let resume = run.config().is_file();
        crate::trainer::check_output(run, cfg, resume)?;
        // An interrupted variant resumes only with its own settings.
        if resume {
            crate::trainer::check_saved_settings(run, cfg)?;
        }
        if !built.contains(&&cfg.model) {
            // Building the model checks the MoE placement against the
            // tower, the experts and slots, and pretrained weights against
            // their configuration; the prompt variants share one model.
            crate::backbone::build(&cfg.model, cfg.seed, &Device::Cpu)?;
            built.push(&cfg.model);
        }
    }
    Ok(())
}

/// Trains every variant of `study` into `out/<variant>` (a finished
/// variant, one with `report.json` from the same settings, is read instead
/// of retrained; an interrupted one is resumed), then writes and returns
/// `out/table.md`, headed by [`Study::heading`]. Everything that would stop
/// the study is checked before the first variant trains: `out` (not a
/// file, not the data root, no `table.md` but this study's), every finished
/// variant's settings and lists (see [`finished_report`]), and every other
/// variant's settings, model, directory and, for an interrupted one, its
/// saved settings. What only a resume's checkpoint can tell (its lists,
/// its world size) is checked when that variant starts.
pub fn run(
    study: Study,
    base: &ExperimentConfig,
    out: &Path,
    options: &StudyOptions,
) -> Result<String> {
    check_study_dir(study, base, out)?;
    let mut planned = Vec::new();
    for (name, cfg) in variants(study, base) {
        let run_dir = RunDir::new(out.join(&name));
        let finished = finished_report(&run_dir, &name, &cfg)?;
        planned.push((name, cfg, run_dir, finished));
    }
    let to_train: Vec<_> = planned
        .iter()
        .filter(|(_, _, _, finished)| finished.is_none())
        .map(|(_, cfg, run_dir, _)| (cfg, run_dir))
        .collect();
    check_variants(&to_train)?;
    let mut rows = Vec::new();
    for (name, cfg, run_dir, finished) in planned {
        let report = match finished {
            Some(report) => report,
            None => {
                crate::runtime::say(&format!(
                    "study {}: training {name} into {}",
                    study.name(),
                    run_dir.root().display()
                ));
                let train = TrainOptions {
                    output: run_dir.root().to_path_buf(),
                    resume: run_dir.config().is_file(),
                    device: options.device.clone(),
                    report: None,
                    sync: None,
                    // `--freeze` of everything CLIP has leaves the plain
                    // variant a frozen baseline beside the trained MoE ones.
                    frozen_baseline: true,
                    check_images: options.check_images,
                    profile_phases: false,
                };
                Trainer::new(cfg, train)?.run()?
            }
        };
        rows.push((name, report));
    }
    let protocol = rows
        .first()
        .map_or_else(String::new, |(_, r)| r.protocol.clone());
    let text = format!("{}\n\n{}", study.heading(), table(&protocol, &rows));
    crate::evaluator::write_text(&out.join("table.md"), &text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_change_one_setting() {
        let base =
            ExperimentConfig::paper("/data".into(), fas_data::protocol::uniattack::Protocol::P1);
        let moe = variants(Study::Moe, &base);
        assert_eq!(moe.len(), 3);
        assert_eq!(moe[0].1.model.moe.kind(), MoeKind::None);
        assert_eq!(moe[2].1, base);
        let prompts = variants(Study::Prompts, &base);
        assert_eq!(prompts.len(), 8);
        assert_eq!(prompts[7].1, base);
        assert_eq!(prompts[2].1.prompts.templates, vec![PromptTemplate::T3]);
    }

    /// Plain CLIP's settings carry no MoE placement: `--moe-layers` and
    /// the experts' width belong to the MoE variants.
    #[test]
    fn the_plain_variant_has_no_moe_settings() {
        let mut base =
            ExperimentConfig::paper("/data".into(), fas_data::protocol::uniattack::Protocol::P1);
        base.model.moe.layers = clip_moe::MoeLayers::Last(3);
        base.model.moe.expert_hidden_dim = Some(64);
        let moe = variants(Study::Moe, &base);
        assert_eq!(moe[0].1.model.moe, MoeConfig::none());
        assert_eq!(moe[2].1, base);
    }
}
