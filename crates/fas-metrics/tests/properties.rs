//! Invariants that must hold for any scores, checked on seeded random sets
//! (ChaCha8, 200 sets each). Scores are dyadic fractions k/64 so that the
//! transforms below are exact in floating point and ties are frequent.

use fas_metrics::{
    auc, bpcer_at_apcer, eer, metrics_at_threshold, ApcerPooling, EerMethod, IntermediatePoints,
    Label, Polarity, RocCurve, ScoreSet,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TYPES: [&str; 3] = ["print", "replay", "digital"];

/// Random scores k/64 (k in 0..64) and labels with both classes present.
fn random_set(rng: &mut ChaCha8Rng) -> (Vec<f64>, Vec<Label>) {
    let n = rng.random_range(2..120);
    let mut labels: Vec<Label> = (0..n)
        .map(|_| match rng.random_range(0..4) {
            0 => Label::Bonafide,
            t => Label::attack_of(TYPES[t - 1]),
        })
        .collect();
    labels[0] = Label::Bonafide;
    labels[1] = Label::attack_of("print");
    let scores = (0..n)
        .map(|_| f64::from(rng.random_range(0..64u32)) / 64.0)
        .collect();
    (scores, labels)
}

fn for_random_sets(mut check: impl FnMut(&[f64], &[Label])) {
    let mut rng = ChaCha8Rng::seed_from_u64(30107);
    for _ in 0..200 {
        let (scores, labels) = random_set(&mut rng);
        check(&scores, &labels);
    }
}

fn set(scores: &[f64], labels: &[Label], polarity: Polarity) -> ScoreSet {
    ScoreSet::new(scores, labels, polarity).unwrap()
}

/// AUC(s) = 1 - AUC(-s), and negating scores while flipping polarity keeps AUC.
#[test]
fn auc_antisymmetric_under_negation() {
    for_random_sets(|scores, labels| {
        let negated: Vec<f64> = scores.iter().map(|s| -s).collect();
        let a = auc(&set(scores, labels, Polarity::HigherIsAttack));
        let b = auc(&set(&negated, labels, Polarity::HigherIsAttack));
        assert!((a - (1.0 - b)).abs() < 1e-12, "{a} vs 1 - {b}");
        let c = auc(&set(&negated, labels, Polarity::HigherIsBonafide));
        assert_eq!(a, c);
    });
}

/// ACER is invariant under a strictly increasing transform with the threshold
/// transformed alike (x -> x^3 and x -> 8x - 3 are exact on k/64).
#[test]
fn acer_invariant_under_monotone_transforms() {
    let transforms: [fn(f64) -> f64; 2] = [|x| x * x * x, |x| 8.0 * x - 3.0];
    for_random_sets(|scores, labels| {
        for polarity in [Polarity::HigherIsAttack, Polarity::HigherIsBonafide] {
            let original = set(scores, labels, polarity);
            for transform in transforms {
                let moved: Vec<f64> = scores.iter().map(|&s| transform(s)).collect();
                let moved = set(&moved, labels, polarity);
                for &threshold in scores.iter().take(5) {
                    let a = metrics_at_threshold(&original, threshold).unwrap();
                    let b = metrics_at_threshold(&moved, transform(threshold)).unwrap();
                    assert_eq!((a.acer, a.apcer, a.bpcer), (b.acer, b.apcer, b.bpcer));
                    assert_eq!(a.per_attack_type, b.per_attack_type);
                }
            }
        }
    });
}

/// A decreasing transform with flipped polarity keeps the rates at thresholds
/// that fall between scores (at a tie `score >= thr` picks the other side).
#[test]
fn negation_with_flipped_polarity_keeps_rates_between_scores() {
    for_random_sets(|scores, labels| {
        let negated: Vec<f64> = scores.iter().map(|s| -s).collect();
        let a = set(scores, labels, Polarity::HigherIsAttack);
        let b = set(&negated, labels, Polarity::HigherIsBonafide);
        for k in 0..=64 {
            let between = (f64::from(k) - 0.5) / 64.0;
            let x = metrics_at_threshold(&a, between).unwrap();
            let y = metrics_at_threshold(&b, -between).unwrap();
            assert_eq!((x.apcer, x.bpcer, x.acc), (y.apcer, y.bpcer, y.acc));
        }
    });
}

/// The ROC curve is monotone from (0, 0) to (1, 1), its trapezoid area is the
/// Mann-Whitney AUC, and each point's rates are those at its threshold.
#[test]
fn roc_curve_is_consistent() {
    for_random_sets(|scores, labels| {
        let s = set(scores, labels, Polarity::HigherIsAttack);
        let roc = RocCurve::new(&s, IntermediatePoints::Keep);
        let (fpr, tpr, thresholds) = (roc.fpr(), roc.tpr(), roc.thresholds());
        assert_eq!((fpr[0], tpr[0]), (0.0, 0.0));
        assert_eq!((fpr[roc.len() - 1], tpr[roc.len() - 1]), (1.0, 1.0));
        let mut area = 0.0;
        for i in 1..roc.len() {
            assert!(fpr[i] >= fpr[i - 1] && tpr[i] >= tpr[i - 1]);
            assert!(thresholds[i] < thresholds[i - 1]);
            area += (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2.0;
            let at = metrics_at_threshold(&s, thresholds[i]).unwrap();
            assert!((at.bpcer - fpr[i]).abs() < 1e-12);
            assert!((at.apcer - (1.0 - tpr[i])).abs() < 1e-12);
        }
        assert!((area - auc(&s)).abs() < 1e-12);
    });
}

/// Shuffling the samples changes nothing; BPCER@APCER falls as the target
/// rises; the worst-case APCER is at least the pooled one.
#[test]
fn order_free_and_monotone() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for_random_sets(|scores, labels| {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        let shuffled: Vec<f64> = order.iter().map(|&i| scores[i]).collect();
        let shuffled_labels: Vec<Label> = order.iter().map(|&i| labels[i].clone()).collect();
        let a = set(scores, labels, Polarity::HigherIsBonafide);
        let b = set(&shuffled, &shuffled_labels, Polarity::HigherIsBonafide);
        assert_eq!(a, b);
        for method in [
            EerMethod::OrganiserGrid,
            EerMethod::RocIndex,
            EerMethod::RocIndexDropIntermediate,
            EerMethod::RocIndexCdcn,
        ] {
            assert_eq!(eer(&a, method), eer(&b, method));
        }
        let mut previous = f64::INFINITY;
        for target in [0.0, 0.01, 0.05, 0.2, 0.5, 1.0] {
            let point = bpcer_at_apcer(&a, target, ApcerPooling::WorstCase).unwrap();
            assert!(point.apcer <= target && point.bpcer <= previous);
            previous = point.bpcer;
            let at = metrics_at_threshold(&a, point.threshold).unwrap();
            assert!(at.apcer_worst_case >= at.apcer);
        }
    });
}
