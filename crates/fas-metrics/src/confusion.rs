//! Error rates at one threshold: APCER (pooled, worst case, per attack type),
//! BPCER, ACER, HTER, ACC and the confusion counts behind them.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::label::Polarity;
use crate::score_set::{count_at_or_above, AttackTypeScores, ScoreSet};
use crate::validate::check_threshold;

/// How APCER is pooled over attack types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApcerPooling {
    /// All attacks in one pool: accepted attacks / attacks. CFB, FA3, CDCN,
    /// CelebA-Spoof and every UniAttackData paper.
    #[default]
    Pooled,
    /// The maximum APCER over attack types, as ISO/IEC 30107-3 defines APCER
    /// (bob's `apcer_bpcer`, OULU-NPU).
    WorstCase,
}

/// Decisions at one threshold, counted per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionCounts {
    /// Attacks decided attack.
    pub attacks_rejected: usize,
    /// Attacks decided bona fide (APCER numerator).
    pub attacks_accepted: usize,
    /// Bona fide decided bona fide.
    pub bonafide_accepted: usize,
    /// Bona fide decided attack (BPCER numerator).
    pub bonafide_rejected: usize,
}

/// APCER of one attack type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackTypeRate {
    /// Attack-type name; `None` for attacks given without one.
    pub attack_type: Option<String>,
    /// Attacks of this type.
    pub attacks: usize,
    /// Of which decided bona fide.
    pub accepted: usize,
    /// accepted / attacks.
    pub apcer: f64,
}

/// Every rate at one threshold. Rates are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    /// The threshold: `score >= threshold` decides for the class high scores
    /// mean (in JSON a number, or `"inf"` / `"-inf"`).
    #[serde(with = "crate::serde_threshold")]
    pub threshold: f64,
    /// Pooled APCER = accepted attacks / attacks (CFB `FN/(TP+FN)`, FA3 `FP/(FP+TN)`).
    pub apcer: f64,
    /// ISO/IEC 30107-3 APCER: max over attack types (equals `apcer` with one type).
    pub apcer_worst_case: f64,
    /// BPCER (NPCER) = rejected bona fide / bona fide.
    pub bpcer: f64,
    /// ACER = (APCER + BPCER) / 2 with pooled APCER, as CFB/FA3/CDCN compute it.
    pub acer: f64,
    /// HTER = (FAR + FRR) / 2 at this threshold; FAR = APCER and FRR = BPCER,
    /// so it equals `acer` (the cross-domain name, SSDG/FLIP `get_HTER_at_thr`).
    pub hter: f64,
    /// ACC = correct decisions / samples (CFB `(TP+TN)/N`).
    pub acc: f64,
    /// The counts behind the rates.
    pub counts: ConfusionCounts,
    /// APCER of each attack type, in name order (untyped first).
    pub per_attack_type: Vec<AttackTypeRate>,
}

/// Number of `sorted` attack scores decided bona fide at `threshold`.
fn attacks_accepted(sorted: &[f64], threshold: f64, polarity: Polarity) -> usize {
    match polarity {
        Polarity::HigherIsAttack => sorted.len() - count_at_or_above(sorted, threshold),
        Polarity::HigherIsBonafide => count_at_or_above(sorted, threshold),
    }
}

/// Number of `sorted` bona fide scores decided attack at `threshold`.
fn bonafide_rejected(sorted: &[f64], threshold: f64, polarity: Polarity) -> usize {
    match polarity {
        Polarity::HigherIsAttack => count_at_or_above(sorted, threshold),
        Polarity::HigherIsBonafide => sorted.len() - count_at_or_above(sorted, threshold),
    }
}

/// Each attack type with its number of attacks decided bona fide at
/// `threshold`, in the set's type order.
fn accepted_per_type(
    set: &ScoreSet,
    threshold: f64,
) -> impl Iterator<Item = (&AttackTypeScores, usize)> {
    let polarity = set.polarity();
    set.attack_types()
        .iter()
        .map(move |t| (t, attacks_accepted(&t.scores, threshold, polarity)))
}

/// `count / total` as a rate (`total` is never 0: classes and types are non-empty).
fn rate(count: usize, total: usize) -> f64 {
    count as f64 / total as f64
}

/// The ISO/IEC 30107-3 APCER: the largest of the per-type APCERs.
fn worst_case(apcers: impl Iterator<Item = f64>) -> f64 {
    apcers.fold(0.0, f64::max)
}

/// APCER at `threshold`, pooled as asked, in O(types x log n).
pub(crate) fn apcer_at(set: &ScoreSet, threshold: f64, pooling: ApcerPooling) -> f64 {
    match pooling {
        ApcerPooling::Pooled => {
            let attacks = set.attack_scores();
            rate(
                attacks_accepted(attacks, threshold, set.polarity()),
                attacks.len(),
            )
        }
        ApcerPooling::WorstCase => worst_case(
            accepted_per_type(set, threshold).map(|(t, accepted)| rate(accepted, t.scores.len())),
        ),
    }
}

/// BPCER at `threshold`.
pub(crate) fn bpcer_at(set: &ScoreSet, threshold: f64) -> f64 {
    let bonafide = set.bonafide_scores();
    rate(
        bonafide_rejected(bonafide, threshold, set.polarity()),
        bonafide.len(),
    )
}

/// All rates at `threshold` (decision `score >= threshold` -> the class high
/// scores mean). O(types x log n). Errors on a NaN threshold only.
pub fn metrics_at_threshold(set: &ScoreSet, threshold: f64) -> Result<ThresholdMetrics> {
    check_threshold(threshold)?;
    let polarity = set.polarity();
    let (attack, bonafide) = (set.attack_scores(), set.bonafide_scores());
    let attacks_accepted = attacks_accepted(attack, threshold, polarity);
    let bonafide_rejected = bonafide_rejected(bonafide, threshold, polarity);
    let counts = ConfusionCounts {
        attacks_accepted,
        attacks_rejected: attack.len() - attacks_accepted,
        bonafide_rejected,
        bonafide_accepted: bonafide.len() - bonafide_rejected,
    };
    let per_attack_type: Vec<AttackTypeRate> = accepted_per_type(set, threshold)
        .map(|(t, accepted)| AttackTypeRate {
            attack_type: t.attack_type.clone(),
            attacks: t.scores.len(),
            accepted,
            apcer: rate(accepted, t.scores.len()),
        })
        .collect();
    let apcer = rate(attacks_accepted, attack.len());
    let bpcer = rate(bonafide_rejected, bonafide.len());
    let acer = (apcer + bpcer) / 2.0;
    Ok(ThresholdMetrics {
        threshold,
        apcer,
        apcer_worst_case: worst_case(per_attack_type.iter().map(|t| t.apcer)),
        bpcer,
        acer,
        hter: acer,
        acc: rate(
            counts.attacks_rejected + counts.bonafide_accepted,
            set.len(),
        ),
        counts,
        per_attack_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::MetricsError;
    use crate::label::Label;

    /// Hand-worked: attacks 0.2 (print), 0.6 (print), 0.9 (replay); bona fide
    /// 0.1, 0.4, 0.6. Higher = attack, threshold 0.6: attack 0.2 accepted
    /// (APCER 1/3; print 1/2, replay 0), bona fide 0.6 rejected (BPCER 1/3, the
    /// tie goes to the attack side), ACC 4/6.
    #[test]
    fn hand_worked_rates_at_threshold() {
        let scores = [0.2, 0.6, 0.9, 0.1, 0.4, 0.6];
        let labels = [
            Label::attack_of("print"),
            Label::attack_of("print"),
            Label::attack_of("replay"),
            Label::Bonafide,
            Label::Bonafide,
            Label::Bonafide,
        ];
        let set = ScoreSet::new(&scores, &labels, Polarity::HigherIsAttack).unwrap();
        let m = metrics_at_threshold(&set, 0.6).unwrap();
        assert_eq!(m.apcer, 1.0 / 3.0);
        assert_eq!(m.bpcer, 1.0 / 3.0);
        assert_eq!(m.acer, 1.0 / 3.0);
        assert_eq!(m.hter, m.acer);
        assert_eq!(m.acc, 4.0 / 6.0);
        assert_eq!(m.apcer_worst_case, 0.5);
        assert_eq!(m.per_attack_type[0].attack_type.as_deref(), Some("print"));
        assert_eq!(m.per_attack_type[1].apcer, 0.0);
        assert_eq!(
            m.counts,
            ConfusionCounts {
                attacks_rejected: 2,
                attacks_accepted: 1,
                bonafide_accepted: 2,
                bonafide_rejected: 1,
            }
        );
        assert_eq!(apcer_at(&set, 0.6, ApcerPooling::WorstCase), 0.5);
        assert_eq!(bpcer_at(&set, 0.6), 1.0 / 3.0);
    }

    /// The same data with negated scores and higher = bona fide: at threshold
    /// -0.6 the tie now goes to the bona fide side (`score >= thr` -> bona fide).
    #[test]
    fn polarity_flips_tie_side() {
        let scores = [-0.2, -0.6, -0.9, -0.1, -0.4, -0.6];
        let labels = [
            Label::attack(),
            Label::attack(),
            Label::attack(),
            Label::Bonafide,
            Label::Bonafide,
            Label::Bonafide,
        ];
        let set = ScoreSet::new(&scores, &labels, Polarity::HigherIsBonafide).unwrap();
        let m = metrics_at_threshold(&set, -0.6).unwrap();
        // Attacks -0.2 and -0.6 are >= -0.6: accepted.
        assert_eq!(m.apcer, 2.0 / 3.0);
        assert_eq!(m.bpcer, 0.0);
        assert!(matches!(
            metrics_at_threshold(&set, f64::NAN),
            Err(MetricsError::NanThreshold)
        ));
        let all_accepted = metrics_at_threshold(&set, f64::NEG_INFINITY).unwrap();
        assert_eq!((all_accepted.apcer, all_accepted.bpcer), (1.0, 0.0));
    }
}
