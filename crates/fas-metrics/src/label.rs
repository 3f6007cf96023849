//! Labels, classes and score polarity: the conventions that papers and
//! reference implementations disagree on, made explicit in types.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Ground truth of one sample: bona fide (live) or an attack, optionally with
/// the attack type's name (e.g. `"print"`, `"adversarial"`, `"digital"`), which
/// the per-attack-type APCER table of ISO/IEC 30107-3 groups by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// A live, genuine presentation.
    Bonafide,
    /// A presentation attack; `None` when the attack type is unknown.
    Attack(Option<String>),
}

impl Label {
    /// An attack without a type name.
    pub fn attack() -> Self {
        Self::Attack(None)
    }

    /// An attack of the named type.
    pub fn attack_of(kind: impl Into<String>) -> Self {
        Self::Attack(Some(kind.into()))
    }

    /// The binary class of this label.
    pub fn class(&self) -> Class {
        match self {
            Self::Bonafide => Class::Bonafide,
            Self::Attack(_) => Class::Attack,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bonafide => f.write_str("bona fide"),
            Self::Attack(None) => f.write_str("attack"),
            Self::Attack(Some(kind)) => write!(f, "attack ({kind})"),
        }
    }
}

/// The two classes of presentation attack detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Live presentations (CFB/MTF label 0, FA3 "Protocol" and CDCN label 1).
    Bonafide,
    /// Presentation attacks.
    Attack,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bonafide => "bona fide",
            Self::Attack => "attack",
        })
    }
}

/// What a high score means. Never inferred: the same number is P(fake) in
/// CFB and MTF but P(live) in FA3, FLIP, CDCN and the challenge submissions,
/// and swapping them silently swaps APCER and BPCER (MTF issue #2).
///
/// The decision rule everywhere in this crate is `score >= threshold` ->
/// the class high scores mean, as in scikit-learn's `roc_curve` and the
/// organiser code (CFB/FA3 `probs >= thr`). CDCN's `performances()` differs on
/// ties only: it rejects bona fide at `score <= thr` and accepts attacks at
/// `score > thr` (higher = bona fide), so a score equal to the threshold is an
/// attack there and bona fide here. SAFAS counts a tie as no error at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Polarity {
    /// Higher score = attack, e.g. `softmax[:, 1]` = P(fake) (CFB, MTF).
    HigherIsAttack,
    /// Higher score = bona fide, e.g. P(live) (FA3, FLIP, CDCN, challenge submissions).
    HigherIsBonafide,
}

impl Polarity {
    /// The class that `score >= threshold` decides for; it is the positive
    /// class (`pos_label`) of every ROC curve computed here.
    pub fn high_class(self) -> Class {
        match self {
            Self::HigherIsAttack => Class::Attack,
            Self::HigherIsBonafide => Class::Bonafide,
        }
    }

    /// (APCER, BPCER) from the rates of the ROC's positive (high) class: `far`
    /// = negatives decided positive (the ROC's FPR), `frr` = positives decided
    /// negative (1 - TPR).
    pub(crate) fn apcer_bpcer(self, far: f64, frr: f64) -> (f64, f64) {
        match self {
            Self::HigherIsAttack => (frr, far),
            Self::HigherIsBonafide => (far, frr),
        }
    }
}

impl fmt::Display for Polarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HigherIsAttack => "higher score = attack",
            Self::HigherIsBonafide => "higher score = bona fide",
        })
    }
}

/// One scored sample, as read from a score file or produced by video
/// aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    /// Sample id (image path, video id), when known.
    pub id: Option<String>,
    /// The model's score.
    pub score: f64,
    /// Ground truth.
    pub label: Label,
}
