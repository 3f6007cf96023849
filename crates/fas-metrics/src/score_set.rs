//! A validated set of scores with labels and polarity, sorted once so every
//! metric afterwards is a binary search or a linear merge.

use crate::error::{MetricsError, Result};
use crate::label::{Class, Label, Polarity, ScoredSample};
use crate::validate::{check_parallel, check_scores};

/// Attack scores of one attack type, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackTypeScores {
    /// Attack-type name; `None` for attacks given without one.
    pub attack_type: Option<String>,
    /// The type's scores, ascending.
    pub scores: Vec<f64>,
}

/// Scores and labels checked once: at least one bona fide and one attack
/// sample, all scores finite. Construction sorts each class's scores
/// (`sort_unstable_by(f64::total_cmp)`), O(n log n); all metrics then run in
/// O(n) or O(log n) per threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSet {
    polarity: Polarity,
    bonafide: Vec<f64>,
    attack: Vec<f64>,
    attack_types: Vec<AttackTypeScores>,
}

impl ScoreSet {
    /// Builds a set from parallel slices of scores and labels.
    ///
    /// Errors: [`MetricsError::NoSamples`], [`MetricsError::LengthMismatch`],
    /// [`MetricsError::NonFiniteScore`], [`MetricsError::EmptyClass`].
    pub fn new(scores: &[f64], labels: &[Label], polarity: Polarity) -> Result<Self> {
        check_parallel(scores.len(), labels.len(), "labels")?;
        check_scores(scores)?;
        let mut bonafide = Vec::new();
        let mut typed: Vec<(Option<&str>, f64)> = Vec::new();
        for (&score, label) in scores.iter().zip(labels) {
            match label {
                Label::Bonafide => bonafide.push(score),
                Label::Attack(kind) => typed.push((kind.as_deref(), score)),
            }
        }
        typed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut attack_types: Vec<AttackTypeScores> = Vec::new();
        for (kind, score) in typed {
            match attack_types.last_mut() {
                Some(last) if last.attack_type.as_deref() == kind => last.scores.push(score),
                _ => attack_types.push(AttackTypeScores {
                    attack_type: kind.map(str::to_owned),
                    scores: vec![score],
                }),
            }
        }
        let attack = attack_types
            .iter()
            .flat_map(|t| t.scores.iter().copied())
            .collect();
        Self::from_parts(polarity, bonafide, attack, attack_types)
    }

    /// Builds a set from binary labels (`true` = attack), the fast path for
    /// large untyped score arrays. Errors as [`ScoreSet::new`].
    pub fn from_binary(scores: &[f64], is_attack: &[bool], polarity: Polarity) -> Result<Self> {
        check_parallel(scores.len(), is_attack.len(), "labels")?;
        check_scores(scores)?;
        let (mut attack, mut bonafide) = (Vec::new(), Vec::new());
        for (&score, &attack_sample) in scores.iter().zip(is_attack) {
            if attack_sample {
                attack.push(score);
            } else {
                bonafide.push(score);
            }
        }
        attack.sort_unstable_by(f64::total_cmp);
        let attack_types = vec![AttackTypeScores {
            attack_type: None,
            scores: attack.clone(),
        }];
        Self::from_parts(polarity, bonafide, attack, attack_types)
    }

    /// Builds a set from scored samples (e.g. a parsed score file). Errors as
    /// [`ScoreSet::new`].
    pub fn from_samples(samples: &[ScoredSample], polarity: Polarity) -> Result<Self> {
        let scores: Vec<f64> = samples.iter().map(|s| s.score).collect();
        let labels: Vec<Label> = samples.iter().map(|s| s.label.clone()).collect();
        Self::new(&scores, &labels, polarity)
    }

    /// `attack` must be sorted; `bonafide` is sorted here.
    fn from_parts(
        polarity: Polarity,
        mut bonafide: Vec<f64>,
        mut attack: Vec<f64>,
        attack_types: Vec<AttackTypeScores>,
    ) -> Result<Self> {
        if bonafide.is_empty() {
            return Err(MetricsError::EmptyClass {
                class: Class::Bonafide,
            });
        }
        if attack.is_empty() {
            return Err(MetricsError::EmptyClass {
                class: Class::Attack,
            });
        }
        bonafide.sort_unstable_by(f64::total_cmp);
        if attack_types.len() > 1 {
            attack.sort_unstable_by(f64::total_cmp);
        }
        Ok(Self {
            polarity,
            bonafide,
            attack,
            attack_types,
        })
    }

    /// What a high score means.
    pub fn polarity(&self) -> Polarity {
        self.polarity
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.bonafide.len() + self.attack.len()
    }

    /// Always false: a set holds at least one sample of each class.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bona fide scores, ascending.
    pub fn bonafide_scores(&self) -> &[f64] {
        &self.bonafide
    }

    /// Attack scores of all types, ascending.
    pub fn attack_scores(&self) -> &[f64] {
        &self.attack
    }

    /// Attack scores per attack type, types in name order (untyped first).
    pub fn attack_types(&self) -> &[AttackTypeScores] {
        &self.attack_types
    }

    /// Scores of one class, ascending.
    pub fn class_scores(&self, class: Class) -> &[f64] {
        match class {
            Class::Bonafide => &self.bonafide,
            Class::Attack => &self.attack,
        }
    }

    /// Scores of the class high scores mean (ROC positives), ascending.
    pub(crate) fn high_scores(&self) -> &[f64] {
        self.class_scores(self.polarity.high_class())
    }

    /// Scores of the other class (ROC negatives), ascending.
    pub(crate) fn low_scores(&self) -> &[f64] {
        match self.polarity.high_class() {
            Class::Attack => &self.bonafide,
            Class::Bonafide => &self.attack,
        }
    }
}

/// Number of `sorted` scores at or above `threshold` (decided for the high class).
pub(crate) fn count_at_or_above(sorted: &[f64], threshold: f64) -> usize {
    sorted.len() - sorted.partition_point(|&s| s < threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_input_with_named_errors() {
        let p = Polarity::HigherIsAttack;
        assert!(matches!(
            ScoreSet::new(&[], &[], p),
            Err(MetricsError::NoSamples)
        ));
        assert!(matches!(
            ScoreSet::new(&[0.1], &[], p),
            Err(MetricsError::LengthMismatch {
                scores: 1,
                items: 0,
                what: "labels"
            })
        ));
        let labels = [Label::Bonafide, Label::attack()];
        assert!(matches!(
            ScoreSet::new(&[0.1, f64::NAN], &labels, p),
            Err(MetricsError::NonFiniteScore { index: 1, .. })
        ));
        assert!(matches!(
            ScoreSet::new(&[f64::INFINITY, 0.2], &labels, p),
            Err(MetricsError::NonFiniteScore { index: 0, .. })
        ));
        assert!(matches!(
            ScoreSet::new(&[0.1, 0.2], &[Label::Bonafide, Label::Bonafide], p),
            Err(MetricsError::EmptyClass {
                class: Class::Attack
            })
        ));
        assert!(matches!(
            ScoreSet::from_binary(&[0.1], &[true], p),
            Err(MetricsError::EmptyClass {
                class: Class::Bonafide
            })
        ));
        let message = ScoreSet::new(&[0.1, f64::NAN], &labels, p)
            .unwrap_err()
            .to_string();
        assert!(message.contains("score 1 is NaN"), "{message}");
    }

    #[test]
    fn groups_attack_types_and_sorts() {
        let labels = [
            Label::attack_of("replay"),
            Label::Bonafide,
            Label::attack_of("print"),
            Label::attack(),
            Label::attack_of("print"),
        ];
        let set = ScoreSet::new(
            &[0.9, 0.1, 0.7, 0.5, 0.6],
            &labels,
            Polarity::HigherIsAttack,
        )
        .unwrap();
        assert_eq!(set.attack_scores(), &[0.5, 0.6, 0.7, 0.9]);
        let names: Vec<_> = set
            .attack_types()
            .iter()
            .map(|t| (t.attack_type.clone(), t.scores.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                (None, vec![0.5]),
                (Some("print".into()), vec![0.6, 0.7]),
                (Some("replay".into()), vec![0.9]),
            ]
        );
        assert_eq!(set.len(), 5);
    }
}
