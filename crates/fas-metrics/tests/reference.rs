//! Every metric against independent reference values: scikit-learn and NumPy
//! re-implementations of the CFB/FA3 organiser code, computed by
//! `scripts/fas_metrics/gen_fixtures.py` into `tests/fixtures/reference_*.json`.
//! Tolerance 1e-12 absolute throughout.

mod common;

use common::{check_type_rates, close, TypeRate};
use fas_metrics::{
    auc, bpcer_at_apcer, eer, evaluate_protocol, metrics_at_threshold, roc_index_eer, ApcerPooling,
    EerMethod, IntermediatePoints, Label, Polarity, ProtocolConfig, RocCurve, RocIndexDistance,
    ScoreSet, ThresholdRule,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    polarity: Polarity,
    scores: Vec<f64>,
    labels: Vec<String>,
    roc: Roc,
    auc: f64,
    eer_grid: GridEer,
    eer_roc_index: IndexEer,
    eer_roc_index_drop_intermediate: IndexEer,
    eer_roc_index_cdcn: IndexEer,
    tpr_at_fpr: Vec<TprAtFpr>,
    at_threshold: Vec<AtThreshold>,
    bpcer_at_apcer: Vec<BpcerAtApcer>,
}

#[derive(Deserialize)]
struct Roc {
    fpr: Vec<f64>,
    tpr: Vec<f64>,
    thresholds_after_inf: Vec<f64>,
    drop_intermediate_indices: Vec<usize>,
}

#[derive(Deserialize)]
struct GridEer {
    threshold: f64,
    far: f64,
    frr: f64,
    eer: f64,
}

#[derive(Deserialize)]
struct IndexEer {
    eer: f64,
    /// `None` = +inf (the ROC curve's leading point; JSON has no infinity).
    threshold: Option<f64>,
    fnr: f64,
}

#[derive(Deserialize)]
struct TprAtFpr {
    fpr: f64,
    interpolated: f64,
    interpolated_drop_intermediate: f64,
    floor: f64,
    floor_drop_intermediate: f64,
}

#[derive(Deserialize)]
struct AtThreshold {
    threshold: f64,
    apcer: f64,
    bpcer: f64,
    acer: f64,
    acc: f64,
    apcer_worst_case: f64,
    per_attack_type: Vec<TypeRate>,
}

#[derive(Deserialize)]
struct BpcerAtApcer {
    target: f64,
    worst_case: bool,
    apcer: f64,
    bpcer: f64,
}

#[derive(Deserialize)]
struct Protocol {
    polarity: Polarity,
    dev: Split,
    test: Split,
    threshold: f64,
    apcer: f64,
    bpcer: f64,
    acer: f64,
    acc: f64,
    apcer_worst_case: f64,
    per_attack_type: Vec<TypeRate>,
    auc: f64,
    eer_grid: f64,
    eer_fa3: f64,
}

#[derive(Deserialize)]
struct Split {
    scores: Vec<f64>,
    labels: Vec<String>,
}

/// Fixture label strings: "bonafide", "attack" (untyped) or an attack type.
fn label(name: &str) -> Label {
    match name {
        "bonafide" => Label::Bonafide,
        "attack" => Label::attack(),
        kind => Label::attack_of(kind),
    }
}

fn score_set(scores: &[f64], labels: &[String], polarity: Polarity) -> ScoreSet {
    let labels: Vec<Label> = labels.iter().map(|l| label(l)).collect();
    ScoreSet::new(scores, &labels, polarity).expect("fixture sets are valid")
}

fn close_all(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        close(a, e, &format!("{what}[{i}]"));
    }
}

fn load_cases() -> Vec<(Case, ScoreSet)> {
    let text = include_str!("fixtures/reference_cases.json");
    let cases: Cases = serde_json::from_str(text).expect("fixture parses");
    cases
        .cases
        .into_iter()
        .map(|case| {
            let set = score_set(&case.scores, &case.labels, case.polarity);
            (case, set)
        })
        .collect()
}

/// ROC curve equals `sklearn.metrics.roc_curve(drop_intermediate=False)` and,
/// restricted to the reference's kept indices, `drop_intermediate=True`
/// (generator: scripts/fas_metrics/gen_fixtures.py).
#[test]
fn roc_curve_matches_sklearn() {
    for (case, set) in load_cases() {
        let name = &case.name;
        let roc = RocCurve::new(&set, IntermediatePoints::Keep);
        assert_eq!(roc.thresholds()[0], f64::INFINITY, "{name}");
        close_all(
            &roc.thresholds()[1..],
            &case.roc.thresholds_after_inf,
            &format!("{name} thresholds"),
        );
        close_all(roc.fpr(), &case.roc.fpr, &format!("{name} fpr"));
        close_all(roc.tpr(), &case.roc.tpr, &format!("{name} tpr"));
        let dropped = RocCurve::new(&set, IntermediatePoints::Drop);
        let pick = |values: &[f64]| -> Vec<f64> {
            case.roc
                .drop_intermediate_indices
                .iter()
                .map(|&i| values[i])
                .collect()
        };
        close_all(
            dropped.fpr(),
            &pick(roc.fpr()),
            &format!("{name} dropped fpr"),
        );
        close_all(
            dropped.tpr(),
            &pick(roc.tpr()),
            &format!("{name} dropped tpr"),
        );
        assert_eq!(
            dropped.thresholds(),
            pick(roc.thresholds()),
            "{name} dropped thresholds"
        );
    }
}

/// AUC equals `roc_auc_score` (generator: scripts/fas_metrics/gen_fixtures.py).
#[test]
fn auc_matches_sklearn() {
    for (case, set) in load_cases() {
        close(auc(&set), case.auc, &format!("{} auc", case.name));
    }
}

/// Grid EER equals the NumPy re-implementation of CFB `get_Threshold_Grid`;
/// each ROC-index EER equals its reference's own formula on its own curve:
/// SAFAS `argmin |tpr + fpr - 1|` on the full curve, FA3
/// `nanargmin |fnr - fpr|` and CDCN `argmin |tpr + fpr - 1|` on the default
/// (dropped) curve. Case `eer_formula_ties` has mathematically tied points
/// that the two formulas resolve differently (generator:
/// scripts/fas_metrics/gen_fixtures.py).
#[test]
fn eer_matches_reference_implementations() {
    for (case, set) in load_cases() {
        let name = &case.name;
        let grid = eer(&set, EerMethod::OrganiserGrid);
        assert_eq!(
            grid.threshold, case.eer_grid.threshold,
            "{name} grid threshold"
        );
        close(grid.eer, case.eer_grid.eer, &format!("{name} grid eer"));
        let (far, frr) = match set.polarity() {
            Polarity::HigherIsAttack => (grid.bpcer, grid.apcer),
            Polarity::HigherIsBonafide => (grid.apcer, grid.bpcer),
        };
        close(far, case.eer_grid.far, &format!("{name} grid far"));
        close(frr, case.eer_grid.frr, &format!("{name} grid frr"));
        let grid_threshold =
            fas_metrics::select_threshold(&set, ThresholdRule::OrganiserGrid).unwrap();
        assert_eq!(grid_threshold, case.eer_grid.threshold, "{name}");

        for (method, expected) in [
            (EerMethod::RocIndex, &case.eer_roc_index),
            (
                EerMethod::RocIndexDropIntermediate,
                &case.eer_roc_index_drop_intermediate,
            ),
            (EerMethod::RocIndexCdcn, &case.eer_roc_index_cdcn),
        ] {
            let got = eer(&set, method);
            close(got.eer, expected.eer, &format!("{name} {method:?} eer"));
            let threshold = expected.threshold.unwrap_or(f64::INFINITY);
            assert_eq!(got.threshold, threshold, "{name} {method:?} threshold");
            let fnr = match set.polarity() {
                Polarity::HigherIsAttack => got.apcer,
                Polarity::HigherIsBonafide => got.bpcer,
            };
            close(fnr, expected.fnr, &format!("{name} {method:?} fnr"));
        }
        let sweep = fas_metrics::select_threshold(&set, ThresholdRule::ExactSweep).unwrap();
        let threshold = case.eer_roc_index.threshold.unwrap_or(f64::INFINITY);
        assert_eq!(sweep, threshold, "{name} exact sweep");
    }
}

/// TPR@FPR equals `np.interp(x, fpr, tpr)` (CFB Recall) and
/// `tpr[fpr <= x][-1]` (SSDG/FLIP, whose value is the one on the dropped
/// curve), each on both curves (generator: scripts/fas_metrics/gen_fixtures.py).
#[test]
fn tpr_at_fpr_matches_numpy() {
    for (case, set) in load_cases() {
        let full = RocCurve::new(&set, IntermediatePoints::Keep);
        let dropped = RocCurve::new(&set, IntermediatePoints::Drop);
        for point in &case.tpr_at_fpr {
            let what = format!("{} @ {}", case.name, point.fpr);
            close(
                full.tpr_at_fpr_interpolated(point.fpr).unwrap(),
                point.interpolated,
                &what,
            );
            close(
                dropped.tpr_at_fpr_interpolated(point.fpr).unwrap(),
                point.interpolated_drop_intermediate,
                &what,
            );
            close(
                full.tpr_at_fpr_floor(point.fpr).unwrap(),
                point.floor,
                &what,
            );
            close(
                dropped.tpr_at_fpr_floor(point.fpr).unwrap(),
                point.floor_drop_intermediate,
                &format!("{what} dropped floor"),
            );
        }
    }
}

/// Rates at a threshold equal CFB/FA3 `get_Metrics_at_Threshold` and bob's
/// per-type APCER (generator: scripts/fas_metrics/gen_fixtures.py).
#[test]
fn rates_at_threshold_match_reference() {
    for (case, set) in load_cases() {
        for expected in &case.at_threshold {
            let what = format!("{} @ {}", case.name, expected.threshold);
            let got = metrics_at_threshold(&set, expected.threshold).unwrap();
            close(got.apcer, expected.apcer, &format!("{what} apcer"));
            close(got.bpcer, expected.bpcer, &format!("{what} bpcer"));
            close(got.acer, expected.acer, &format!("{what} acer"));
            close(got.hter, expected.acer, &format!("{what} hter"));
            close(got.acc, expected.acc, &format!("{what} acc"));
            close(
                got.apcer_worst_case,
                expected.apcer_worst_case,
                &format!("{what} worst"),
            );
            check_type_rates(&got.per_attack_type, &expected.per_attack_type, &what);
        }
    }
}

/// BPCER at a target APCER equals a NumPy brute force over every threshold
/// of the crate's documented definition (generator:
/// scripts/fas_metrics/gen_fixtures.py).
#[test]
fn bpcer_at_apcer_matches_brute_force() {
    for (case, set) in load_cases() {
        for expected in &case.bpcer_at_apcer {
            let pooling = if expected.worst_case {
                ApcerPooling::WorstCase
            } else {
                ApcerPooling::Pooled
            };
            let what = format!("{} target {} {pooling:?}", case.name, expected.target);
            let got = bpcer_at_apcer(&set, expected.target, pooling).unwrap();
            close(got.apcer, expected.apcer, &format!("{what} apcer"));
            close(got.bpcer, expected.bpcer, &format!("{what} bpcer"));
            let at = metrics_at_threshold(&set, got.threshold).unwrap();
            let apcer = match pooling {
                ApcerPooling::Pooled => at.apcer,
                ApcerPooling::WorstCase => at.apcer_worst_case,
            };
            close(apcer, got.apcer, &format!("{what} threshold apcer"));
            close(at.bpcer, got.bpcer, &format!("{what} threshold bpcer"));
        }
    }
}

/// The protocol report equals the CFB evaluator flow: grid threshold on dev,
/// rates on test, AUC and EER on test (generator: scripts/fas_metrics/gen_fixtures.py).
#[test]
fn protocol_report_matches_cfb_evaluator() {
    let text = include_str!("fixtures/reference_protocol.json");
    let expected: Protocol = serde_json::from_str(text).expect("fixture parses");
    let dev = score_set(
        &expected.dev.scores,
        &expected.dev.labels,
        expected.polarity,
    );
    let test = score_set(
        &expected.test.scores,
        &expected.test.labels,
        expected.polarity,
    );
    let report = evaluate_protocol(Some(&dev), &test, ProtocolConfig::default()).unwrap();
    assert_eq!(report.threshold, expected.threshold);
    close(report.apcer, expected.apcer, "apcer");
    close(report.bpcer, expected.bpcer, "bpcer");
    close(report.acer, expected.acer, "acer");
    close(report.hter, expected.acer, "hter");
    close(report.acc, expected.acc, "acc");
    close(report.auc, expected.auc, "auc");
    close(report.eer, expected.eer_grid, "eer");
    close(
        report.apcer_worst_case,
        expected.apcer_worst_case,
        "apcer worst case",
    );
    check_type_rates(
        &report.per_attack_type,
        &expected.per_attack_type,
        "protocol",
    );
    // FA3 reports `compute_eer`: the ROC index on the default (dropped) curve.
    let fa3 = ProtocolConfig {
        test_eer: EerMethod::RocIndexDropIntermediate,
        ..ProtocolConfig::default()
    };
    let report = evaluate_protocol(Some(&dev), &test, fa3).unwrap();
    close(report.eer, expected.eer_fa3, "FA3 eer");
    close(
        roc_index_eer(
            &RocCurve::new(&test, IntermediatePoints::Drop),
            RocIndexDistance::FnrMinusFpr,
        )
        .eer,
        expected.eer_fa3,
        "roc_index_eer",
    );
}
