//! ROC curve + AUC + EER on 1,000,000 random scores, the workload compared
//! with scikit-learn's `roc_auc_score` + `roc_curve(drop_intermediate=False)`
//! by `scripts/fas_metrics/bench_sklearn.py` (results in docs/benchmarks.md).
//!
//! `cargo bench -p fas-metrics --bench roc_auc_eer`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use fas_metrics::{
    auc, eer, EerMethod, IntermediatePoints, Polarity, RocCurve, RocIndexDistance, ScoreSet,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SAMPLES: usize = 1_000_000;

/// Half attacks; scores uniform, attacks shifted up by 0.3 (distinct doubles).
fn random_scores() -> (Vec<f64>, Vec<bool>) {
    let mut rng = ChaCha8Rng::seed_from_u64(1_000_000);
    let is_attack: Vec<bool> = (0..SAMPLES).map(|_| rng.random_bool(0.5)).collect();
    let scores = is_attack
        .iter()
        .map(|&attack| rng.random::<f64>() * 0.7 + if attack { 0.3 } else { 0.0 })
        .collect();
    (scores, is_attack)
}

fn bench(c: &mut Criterion) {
    let (scores, is_attack) = random_scores();
    let mut group = c.benchmark_group("1e6 scores");
    group.sample_size(20);
    group.bench_function("validate+sort, ROC, AUC, ROC-index EER", |b| {
        b.iter(|| {
            let set =
                ScoreSet::from_binary(black_box(&scores), &is_attack, Polarity::HigherIsAttack)
                    .expect("valid scores");
            let roc = RocCurve::new(&set, IntermediatePoints::Keep);
            let area = auc(&set);
            // The scikit-learn script's `fpr[argmin |fnr - fpr|]`.
            let equal_error = fas_metrics::roc_index_eer(&roc, RocIndexDistance::FnrMinusFpr);
            black_box((roc.len(), area, equal_error))
        })
    });
    let set =
        ScoreSet::from_binary(&scores, &is_attack, Polarity::HigherIsAttack).expect("valid scores");
    group.bench_function("validate+sort only", |b| {
        b.iter(|| ScoreSet::from_binary(black_box(&scores), &is_attack, Polarity::HigherIsAttack))
    });
    group.bench_function("ROC curve (sorted set)", |b| {
        b.iter(|| RocCurve::new(black_box(&set), IntermediatePoints::Keep))
    });
    group.bench_function("AUC (sorted set)", |b| b.iter(|| auc(black_box(&set))));
    group.bench_function("organiser grid EER (sorted set)", |b| {
        b.iter(|| eer(black_box(&set), EerMethod::OrganiserGrid))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
