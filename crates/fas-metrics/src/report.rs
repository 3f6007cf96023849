//! Protocol evaluation as UniAttackData papers report it (CFB
//! `evaluator.py`, FA3): threshold at the dev EER, rates on test at that
//! threshold, AUC and EER on test's own scores.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::confusion::{metrics_at_threshold, AttackTypeRate, ConfusionCounts};
use crate::eer::{eer, EerMethod};
use crate::error::{MetricsError, Result};
use crate::label::Polarity;
use crate::roc::auc;
use crate::score_set::ScoreSet;
use crate::threshold::{select_threshold, ThresholdRule};

/// How a protocol is evaluated. The default is the organisers' (CFB):
/// grid EER threshold on dev, grid EER on test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProtocolConfig {
    /// How the threshold is chosen (on dev, or on test without dev).
    pub threshold_rule: ThresholdRule,
    /// Which EER is reported for test (CFB: [`EerMethod::OrganiserGrid`];
    /// FA3: [`EerMethod::RocIndexDropIntermediate`]).
    pub test_eer: EerMethod,
}

/// Which split the threshold was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdSource {
    /// The development set (the challenge protocol).
    Dev,
    /// The test set itself (no dev set given; SSDG/FLIP cross-domain HTER).
    Test,
    /// Given ([`ThresholdRule::Fixed`]): chosen on no split here.
    Fixed,
}

/// Everything a UniAttackData paper reports for one protocol. Rates are
/// fractions in [0, 1]; the markdown table shows percent.
///
/// JSON (serde): the field names below, rates as numbers; `threshold` is a
/// number, or the string `"inf"` / `"-inf"` when infinite (possible with
/// [`ThresholdRule::Fixed`], [`ThresholdRule::TargetApcer`] and
/// [`ThresholdRule::ExactSweep`]), since JSON has no infinity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolReport {
    /// Threshold applied to test (`score >= threshold` -> the high-score class).
    #[serde(with = "crate::serde_threshold")]
    pub threshold: f64,
    /// Pooled APCER on test at `threshold`.
    pub apcer: f64,
    /// BPCER on test at `threshold`.
    pub bpcer: f64,
    /// (APCER + BPCER) / 2 on test at `threshold`.
    pub acer: f64,
    /// Accuracy on test at `threshold`.
    pub acc: f64,
    /// Test AUC (threshold-free, `roc_auc_score`).
    pub auc: f64,
    /// Test EER on test's own scores, by `config.test_eer`.
    pub eer: f64,
    /// (FAR + FRR) / 2 on test at `threshold`; equals `acer` by definition.
    /// CFB prints its grid EER under the name "HTER": that is `eer` here.
    pub hter: f64,
    /// APCER per attack type on test at `threshold`.
    pub per_attack_type: Vec<AttackTypeRate>,
    /// ISO/IEC 30107-3 APCER: max over attack types.
    pub apcer_worst_case: f64,
    /// Split the threshold came from.
    pub threshold_source: ThresholdSource,
    /// Test confusion counts at `threshold`.
    pub counts: ConfusionCounts,
    /// What a high score means.
    pub polarity: Polarity,
    /// The configuration used.
    pub config: ProtocolConfig,
    /// Things that make the numbers suspect without making them wrong
    /// (a test AUC below 0.5: is the polarity swapped?). Absent from JSON
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Errors when the organisers' grid (0 to 1.1) would be applied to scores
/// outside [0, 1].
fn check_grid_range(set: &ScoreSet, name: &'static str) -> Result<()> {
    let (b, a) = (set.bonafide_scores(), set.attack_scores());
    let low = b[0].min(a[0]);
    let high = b[b.len() - 1].max(a[a.len() - 1]);
    if low < 0.0 || high > 1.0 {
        return Err(MetricsError::ScoresOutsideGrid {
            set: name,
            low,
            high,
        });
    }
    Ok(())
}

/// Evaluates a protocol: threshold by `config.threshold_rule` on `dev`
/// (on `test` when `dev` is `None`), rates on `test` at it, AUC and EER on
/// `test` alone. Errors if dev and test polarities differ.
pub fn evaluate_protocol(
    dev: Option<&ScoreSet>,
    test: &ScoreSet,
    config: ProtocolConfig,
) -> Result<ProtocolReport> {
    let (threshold_set, threshold_source) = match dev {
        Some(dev) if dev.polarity() != test.polarity() => {
            return Err(MetricsError::PolarityMismatch {
                dev: dev.polarity(),
                test: test.polarity(),
            })
        }
        Some(dev) => (dev, ThresholdSource::Dev),
        None => (test, ThresholdSource::Test),
    };
    if config.threshold_rule == ThresholdRule::OrganiserGrid {
        let name = if dev.is_some() { "dev" } else { "test" };
        check_grid_range(threshold_set, name)?;
    }
    if config.test_eer == EerMethod::OrganiserGrid {
        check_grid_range(test, "test")?;
    }
    // A fixed threshold is given, not chosen on the set it is applied to.
    let threshold_source = match config.threshold_rule {
        ThresholdRule::Fixed { .. } => ThresholdSource::Fixed,
        _ => threshold_source,
    };
    let threshold = select_threshold(threshold_set, config.threshold_rule)?;
    let at = metrics_at_threshold(test, threshold)?;
    let auc = auc(test);
    let mut warnings = Vec::new();
    if auc < 0.5 {
        warnings.push(format!(
            "test AUC is {auc:.4}, below chance: is the score polarity swapped? (the scores were \
             read as \"{}\")",
            test.polarity()
        ));
    }
    Ok(ProtocolReport {
        threshold,
        apcer: at.apcer,
        bpcer: at.bpcer,
        acer: at.acer,
        acc: at.acc,
        auc,
        eer: eer(test, config.test_eer).eer,
        hter: at.hter,
        per_attack_type: at.per_attack_type,
        apcer_worst_case: at.apcer_worst_case,
        threshold_source,
        counts: at.counts,
        polarity: test.polarity(),
        config,
        warnings,
    })
}

impl ProtocolReport {
    /// A markdown table in the layout of the La-SoftMoE paper's Table 2
    /// (ACER, ACC, AUC, EER in percent, two decimals) under `protocol`, then
    /// APCER, BPCER, HTER, worst-case APCER and one row per attack type.
    /// A `|` in `protocol` or an attack-type name is escaped as `\|`, line
    /// breaks become spaces.
    pub fn to_markdown(&self, protocol: &str) -> String {
        let pct = |rate: f64| format!("{:.2}", 100.0 * rate);
        let protocol = escape_cell(protocol);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "| Protocol | ACER (%) | ACC (%) | AUC (%) | EER (%) |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {protocol} | {} | {} | {} | {} |\n",
            pct(self.acer),
            pct(self.acc),
            pct(self.auc),
            pct(self.eer)
        );
        let _ = writeln!(out, "| Rate | Value (%) |");
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(out, "| APCER (pooled) | {} |", pct(self.apcer));
        let _ = writeln!(out, "| BPCER | {} |", pct(self.bpcer));
        let _ = writeln!(out, "| HTER | {} |", pct(self.hter));
        let _ = writeln!(
            out,
            "| APCER (worst attack type) | {} |",
            pct(self.apcer_worst_case)
        );
        for rate in &self.per_attack_type {
            let name = escape_cell(rate.attack_type.as_deref().unwrap_or("untyped"));
            let _ = writeln!(
                out,
                "| APCER {name} ({}/{}) | {} |",
                rate.accepted,
                rate.attacks,
                pct(rate.apcer)
            );
        }
        let source = match self.threshold_source {
            ThresholdSource::Dev => "chosen on dev",
            ThresholdSource::Test => "chosen on test",
            ThresholdSource::Fixed => "given",
        };
        let _ = writeln!(
            out,
            "\nThreshold {} {source} ({:?}), {}; test EER by {:?}.",
            self.threshold, self.config.threshold_rule, self.polarity, self.config.test_eer
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "\nWarning: {warning}");
        }
        out
    }
}

/// `text` as a markdown table cell: `|` would end the cell and a line
/// break the row.
fn escape_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\r', '\n'], " ")
}

impl fmt::Display for ProtocolReport {
    /// The markdown table with protocol name "test".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_markdown("test"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::label::Label;

    fn set(scores: &[f64], labels: &[Label], polarity: Polarity) -> ScoreSet {
        ScoreSet::new(scores, labels, polarity).unwrap()
    }

    /// Hand-worked: dev attacks 0.6, 0.9, bona fide 0.1, 0.3 (separable, grid
    /// EER 0 on (0.3, 0.6], largest grid value 0.6). Test attacks 0.55 (print),
    /// 0.95 (replay), bona fide 0.2, 0.7: at 0.6 the print attack is accepted
    /// and 0.7 rejected: APCER 1/2, BPCER 1/2, ACC 1/2; test AUC 3/4.
    #[test]
    fn dev_threshold_applied_to_test() {
        let dev = set(
            &[0.6, 0.9, 0.1, 0.3],
            &[
                Label::attack(),
                Label::attack(),
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsAttack,
        );
        let test = set(
            &[0.55, 0.95, 0.2, 0.7],
            &[
                Label::attack_of("print"),
                Label::attack_of("replay"),
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsAttack,
        );
        let report = evaluate_protocol(Some(&dev), &test, ProtocolConfig::default()).unwrap();
        assert_eq!(report.threshold, 0.6);
        assert_eq!(report.threshold_source, ThresholdSource::Dev);
        assert_eq!((report.apcer, report.bpcer, report.acer), (0.5, 0.5, 0.5));
        assert_eq!((report.acc, report.auc), (0.5, 0.75));
        assert_eq!(report.apcer_worst_case, 1.0);
        let markdown = report.to_markdown("P1");
        assert!(
            markdown.contains("| P1 | 50.00 | 50.00 | 75.00 |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("| APCER print (1/1) | 100.00 |"),
            "{markdown}"
        );
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "threshold",
            "apcer",
            "bpcer",
            "acer",
            "acc",
            "auc",
            "eer",
            "hter",
        ] {
            assert!(json[key].is_number(), "{key}");
        }
        assert_eq!(json["per_attack_type"][1]["attack_type"], "replay");

        let own = evaluate_protocol(None, &test, ProtocolConfig::default()).unwrap();
        assert_eq!(own.threshold_source, ThresholdSource::Test);
        // A fixed threshold was chosen on neither split, with or without dev.
        let given = ProtocolConfig {
            threshold_rule: ThresholdRule::Fixed { threshold: 0.5 },
            ..ProtocolConfig::default()
        };
        for dev in [Some(&dev), None] {
            let fixed = evaluate_protocol(dev, &test, given).unwrap();
            assert_eq!(fixed.threshold_source, ThresholdSource::Fixed);
            assert_eq!(
                serde_json::to_value(&fixed).unwrap()["threshold_source"],
                "fixed"
            );
            assert!(fixed.to_markdown("P1").contains("Threshold 0.5 given"));
        }
        let flipped = set(
            &[0.6, 0.9, 0.1, 0.3],
            &[
                Label::attack(),
                Label::attack(),
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsBonafide,
        );
        assert!(matches!(
            evaluate_protocol(Some(&flipped), &test, ProtocolConfig::default()),
            Err(MetricsError::PolarityMismatch { .. })
        ));
    }

    /// An infinite threshold (fixed here) is `"inf"` in JSON and reads back;
    /// `|` in names cannot break the markdown table.
    #[test]
    fn infinite_threshold_json_and_markdown_escaping() {
        let test = set(
            &[0.2, 0.9, 0.1, 0.3],
            &[
                Label::attack_of("print|replay"),
                Label::attack(),
                Label::Bonafide,
                Label::Bonafide,
            ],
            Polarity::HigherIsBonafide,
        );
        let config = ProtocolConfig {
            threshold_rule: ThresholdRule::Fixed {
                threshold: f64::INFINITY,
            },
            ..ProtocolConfig::default()
        };
        let report = evaluate_protocol(None, &test, config).unwrap();
        // Nothing reaches infinity: every sample is decided attack.
        assert_eq!((report.apcer, report.bpcer), (0.0, 1.0));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["threshold"], "inf");
        assert_eq!(
            json["config"]["threshold_rule"]["fixed"]["threshold"],
            "inf"
        );
        let back: ProtocolReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);

        let markdown = report.to_markdown("P|1\nx");
        assert!(markdown.contains("| P\\|1 x | "), "{markdown}");
        assert!(
            markdown.contains("| APCER print\\|replay (0/1) | 0.00 |"),
            "{markdown}"
        );
    }

    /// Logits (scores outside [0, 1]) are refused by the organisers' grid,
    /// and accepted by the exact sweep; swapped polarity gives a warning.
    #[test]
    fn grid_refuses_logits_and_swapped_polarity_warns() {
        let labels = [
            Label::Bonafide,
            Label::Bonafide,
            Label::attack(),
            Label::attack(),
        ];
        let logits = set(&[-3.0, -1.0, 2.0, 4.5], &labels, Polarity::HigherIsAttack);
        let err = evaluate_protocol(Some(&logits), &logits, ProtocolConfig::default()).unwrap_err();
        assert!(
            matches!(err, MetricsError::ScoresOutsideGrid { set: "dev", low, high } if low == -3.0 && high == 4.5)
        );
        let text = err.to_string();
        assert!(
            text.starts_with("dev scores") && text.contains("logits"),
            "{text}"
        );
        // One line of text: no run of spaces from a lost line continuation.
        assert!(!text.contains("  "), "{text}");
        let sweep = ProtocolConfig {
            threshold_rule: ThresholdRule::ExactSweep,
            test_eer: EerMethod::RocIndex,
        };
        let report = evaluate_protocol(Some(&logits), &logits, sweep).unwrap();
        assert!(report.warnings.is_empty());
        let swapped = set(&[0.9, 0.8, 0.2, 0.1], &labels, Polarity::HigherIsAttack);
        let report = evaluate_protocol(None, &swapped, ProtocolConfig::default()).unwrap();
        assert_eq!(report.auc, 0.0);
        assert!(
            report.warnings[0].contains("polarity"),
            "{:?}",
            report.warnings
        );
        assert!(report.to_markdown("P1").contains("Warning: test AUC"));
        assert!(serde_json::to_value(&report).unwrap()["warnings"].is_array());
    }
}
