//! The paper's ablations as runs, not hand-edited code: the MoE study
//! (Table 6: plain CLIP, Soft MoE, La-SoftMoE) and the prompt study
//! (Table 5: templates T-1 to T-8), each variant trained from the same base
//! configuration into its own run directory, the results collected into one
//! markdown table.

use std::path::Path;

use candle_core::Device;
use clip_moe::{MoeKind, PromptTemplate};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::evaluator::{EvalReport, ThresholdOrigin};
use crate::experiment::{ExperimentConfig, Selection};
use crate::run_dir::RunDir;
use crate::trainer::{differing_sections, TrainOptions, Trainer};

/// Which ablation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Study {
    /// Table 6: no MoE, Soft MoE, La-SoftMoE.
    Moe,
    /// Table 5: prompt templates T-1 to T-8.
    Prompts,
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
            (name.to_string(), cfg)
        })
        .collect(),
        Study::Prompts => PromptTemplate::ALL
            .into_iter()
            .enumerate()
            .map(|(i, template)| {
                let mut cfg = base.clone();
                cfg.prompts.templates = vec![template];
                (format!("T-{}", i + 1), cfg)
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

/// Trains every variant of `study` into `out/<variant>` (a finished
/// variant, one with `report.json` from the same settings, is read instead
/// of retrained; an interrupted one is resumed), then writes and returns
/// `out/table.md`. A finished variant of other settings (another protocol,
/// seed, length...) is an error: its row would not belong in the table.
pub fn run(study: Study, base: &ExperimentConfig, out: &Path, device: &Device) -> Result<String> {
    let mut rows = Vec::new();
    for (name, cfg) in variants(study, base) {
        let dir = out.join(&name);
        let run_dir = RunDir::new(dir.clone());
        let finished = std::fs::read_to_string(run_dir.report())
            .ok()
            .and_then(|text| serde_json::from_str::<EvalReport>(&text).ok());
        if finished.is_some() {
            let saved = ExperimentConfig::from_file(&run_dir.config())?;
            let mut differ = differing_sections(&saved, &cfg);
            // Unlike a resumed run, a reused one must have run as long.
            if saved.training.epochs != cfg.training.epochs
                || saved.training.max_steps != cfg.training.max_steps
            {
                differ.push("training length");
            }
            if !differ.is_empty() {
                return Err(Error::config(
                    "--output",
                    format!(
                        "{} holds a finished {name} run of other settings (differs in: {}); \
                         its row would not belong in this table: choose another --output",
                        dir.display(),
                        differ.join(", ")
                    ),
                ));
            }
        }
        let report = match finished {
            Some(report) => report,
            None => {
                crate::runtime::say(&format!(
                    "study {study:?}: training {name} into {}",
                    dir.display()
                ));
                let resume = run_dir.config().is_file();
                let options = TrainOptions {
                    output: dir,
                    resume,
                    device: device.clone(),
                    report: None,
                    sync: None,
                    // `--freeze` of everything CLIP has leaves the plain
                    // variant a frozen baseline beside the trained MoE ones.
                    frozen_baseline: true,
                    check_images: false,
                };
                Trainer::new(cfg, options)?.run()?
            }
        };
        rows.push((name, report));
    }
    let protocol = rows
        .first()
        .map_or_else(String::new, |(_, r)| r.protocol.clone());
    let text = table(&protocol, &rows);
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
}
