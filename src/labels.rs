//! The one place where the workspace's label and score conventions meet.
//!
//! Three crates speak of the same ground truth in their own types:
//! `fas_data::Label` (bona fide or an attack with its kind), the prompt class
//! of `clip_moe::FaceClass` (logit column 0 live, 1 fake) and
//! `fas_metrics::Label` (bona fide or an attack with an attack-type name).
//! Every conversion between them, and every score this crate writes, goes
//! through this module.
//!
//! **Score polarity**: every score uniattack produces is the attack
//! probability, the softmax over the live/fake prompt logits, fake column:
//! higher = more likely an attack ([`SCORE_POLARITY`]). Files for code that
//! expects P(live) (FLIP, FA3-CLIP, the CVPR 2024 challenge submissions) are
//! written with [`ScoreExport::LiveProbability`].

use clip_moe::FaceClass;
use fas_data::{Category, Label, LabelConvention};
use fas_metrics::Polarity;
use serde::{Deserialize, Serialize};

/// What a high score means, for every score this crate computes.
pub const SCORE_POLARITY: Polarity = Polarity::HigherIsAttack;

/// The prompt class of a label: bona fide -> live, any attack -> fake.
pub fn face_class(label: &Label) -> FaceClass {
    if label.is_attack() {
        FaceClass::Fake
    } else {
        FaceClass::Live
    }
}

/// The training target of a label: its prompt class's logit column
/// (0 live, 1 fake), which is also `fas_data::Label::attack_target`.
pub fn class_index(label: &Label) -> u32 {
    face_class(label).index() as u32
}

/// The metrics label of a sample: bona fide, or an attack whose type is its
/// coarse category (`physical`, `adversarial`, `editing`, `unknown`), the
/// unit of UniAttackData's per-type tables and of per-attack-type APCER.
pub fn metrics_label(label: &Label) -> fas_metrics::Label {
    match label.category() {
        Category::Live => fas_metrics::Label::Bonafide,
        category => fas_metrics::Label::attack_of(category.name()),
    }
}

/// Integer label conventions of other FAS code, for reading generic lists
/// and writing labelled score files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntegerLabels {
    /// 1 live, 0 fake: FLIP, FA3-CLIP's "Protocol" lists, JFSFDB, CDCN.
    LiveOne,
    /// 0 live, 1 fake: the CVPR 2024 challenge label files, CFB, MTFace.
    LiveZero,
    /// 0 live, 1 physical, 2 adversarial, 3 editing: the CASIA
    /// (CASIA-FAS-Dataset) UniAttackData protocol files.
    Detailed,
}

impl IntegerLabels {
    /// The reading convention of `fas_data` for lists written this way.
    pub fn convention(self) -> LabelConvention {
        match self {
            IntegerLabels::LiveOne => LabelConvention::LiveOneFakeZero,
            IntegerLabels::LiveZero => LabelConvention::LiveZeroFakeOne,
            IntegerLabels::Detailed => LabelConvention::UniattackDetailed,
        }
    }

    /// The integer this convention writes for `label`. Attacks of unknown
    /// kind have no detailed label: `None` then.
    pub fn value(self, label: &Label) -> Option<u8> {
        match (self, label.category()) {
            (IntegerLabels::LiveOne, Category::Live) => Some(1),
            (IntegerLabels::LiveOne, _) => Some(0),
            (IntegerLabels::LiveZero, Category::Live) => Some(0),
            (IntegerLabels::LiveZero, _) => Some(1),
            (IntegerLabels::Detailed, Category::Live) => Some(0),
            (IntegerLabels::Detailed, Category::Physical) => Some(1),
            (IntegerLabels::Detailed, Category::Adversarial) => Some(2),
            (IntegerLabels::Detailed, Category::Editing) => Some(3),
            (IntegerLabels::Detailed, Category::Unknown) => None,
        }
    }
}

/// Which way scores point in a written score file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreExport {
    /// The attack probability as computed (higher = attack; CFB, MTFace).
    #[default]
    AttackProbability,
    /// `1 - attack probability` = P(live) (higher = live; FLIP, FA3-CLIP,
    /// the challenge submissions).
    LiveProbability,
}

impl ScoreExport {
    /// The written value of an attack probability.
    pub fn apply(self, attack_probability: f64) -> f64 {
        match self {
            ScoreExport::AttackProbability => attack_probability,
            ScoreExport::LiveProbability => 1.0 - attack_probability,
        }
    }

    /// The polarity of the written values.
    pub fn polarity(self) -> Polarity {
        match self {
            ScoreExport::AttackProbability => Polarity::HigherIsAttack,
            ScoreExport::LiveProbability => Polarity::HigherIsBonafide,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fas_data::AttackKind;

    fn all_labels() -> Vec<Label> {
        vec![
            Label::BonaFide,
            Label::Attack(AttackKind::Print),
            Label::Attack(AttackKind::Replay),
            Label::Attack(AttackKind::Adversarial { method: None }),
            Label::Attack(AttackKind::Editing {
                method: Some("simswap".into()),
            }),
            Label::Attack(AttackKind::Unknown),
        ]
    }

    #[test]
    fn prompt_class_target_and_metrics_label_agree() {
        for label in all_labels() {
            let class = face_class(&label);
            assert_eq!(class_index(&label), label.attack_target(), "{label}");
            assert_eq!(class == FaceClass::Fake, label.is_attack(), "{label}");
            let metrics = metrics_label(&label);
            assert_eq!(
                metrics.class() == fas_metrics::Class::Attack,
                label.is_attack()
            );
            // The project's polarity: the class high scores mean is the
            // prompt column whose probability is the score.
            assert_eq!(SCORE_POLARITY.high_class(), fas_metrics::Class::Attack);
        }
        assert_eq!(
            metrics_label(&Label::Attack(AttackKind::Print)),
            fas_metrics::Label::attack_of("physical")
        );
    }

    /// Every integer convention reads back what it writes.
    #[test]
    fn integer_conventions_round_trip() {
        for convention in [
            IntegerLabels::LiveOne,
            IntegerLabels::LiveZero,
            IntegerLabels::Detailed,
        ] {
            for label in all_labels() {
                let Some(value) = convention.value(&label) else {
                    assert_eq!(convention, IntegerLabels::Detailed);
                    assert_eq!(label.category(), Category::Unknown);
                    continue;
                };
                let read = convention.convention().label(i64::from(value)).unwrap();
                assert_eq!(read.category() == Category::Live, !label.is_attack());
                if convention == IntegerLabels::Detailed {
                    assert_eq!(read.category(), label.category());
                }
            }
        }
        assert_eq!(IntegerLabels::LiveOne.value(&Label::BonaFide), Some(1));
        assert_eq!(IntegerLabels::LiveZero.value(&Label::BonaFide), Some(0));
    }

    #[test]
    fn exported_scores_keep_their_stated_polarity() {
        assert_eq!(ScoreExport::AttackProbability.apply(0.8), 0.8);
        assert!((ScoreExport::LiveProbability.apply(0.8) - 0.2).abs() < 1e-15);
        assert_eq!(
            ScoreExport::LiveProbability.polarity(),
            Polarity::HigherIsBonafide
        );
    }
}
