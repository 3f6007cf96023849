"""Reference fixtures for the fas-metrics crate, computed independently of it.

Expected values come from scikit-learn (`roc_curve`, `roc_auc_score`) and
NumPy re-implementations of the reference evaluation code described in
/work/shared/notes/fas-conventions.md section 5:

* CFB `util/utils_FAS.py` (positive = fake) and FA3 (positive = live):
  `eval_state`, the organiser grid `get_Threshold_Grid` (thresholds
  `0.0 + i * 1.0 / 10000.0`, i = 0..10000, plus 1.1; keep when
  `|FRR - FAR| <= min_dist`, so ties go to the largest threshold; EER =
  (FAR + FRR) / 2) and `get_Metrics_at_Threshold`, with the floating-point
  operations in the reference's order;
* the ROC-index EERs, each with its reference's curve and formula (the two
  formulas are equal in exact arithmetic but round differently):
  - SAFAS `get_err_threhold_cross_db`: `roc_curve(..., drop_intermediate=False)`,
    `nanargmin(np.abs(tpr + fpr - 1.0))` (crate: `EerMethod::RocIndex`);
  - FA3 `compute_eer` / CFB `get_Threshold_List`: `roc_curve(labels, probs)`
    (default `drop_intermediate=True`), `fnr = 1 - tpr`,
    `nanargmin(np.absolute(fnr - fpr))` (`EerMethod::RocIndexDropIntermediate`);
  - CDCN `get_err_threhold`: default `roc_curve`, `argmin(np.abs(tpr + fpr - 1.0))`
    (`EerMethod::RocIndexCdcn`);
  the case `eer_formula_ties` is searched for so that the two formulas pick
  different indices on both curves;
* CFB `Recall` = `np.interp(x, fpr, tpr)` (both curves) and the SSDG/FLIP
  floor `tpr[fpr <= x][-1]` (FLIP `utils/evaluate.py` runs it on the default,
  dropped curve: `floor_drop_intermediate`; the full curve: `floor`);
* per-attack-type APCER with its maximum (ISO/IEC 30107-3) and BPCER at a
  target APCER by brute force over every candidate threshold.

bob (bob.pad.base) is not available here, so the last item is not bob's
code: the BPCER@APCER brute force (candidates +inf and every distinct score;
lowest BPCER with APCER <= target, then lowest APCER) and the per-type order
(untyped attacks first, then type names in byte order) follow the crate's
documented definitions (`bpcer_at_apcer`, `ScoreSet::attack_types`), only
computed here independently by brute force with NumPy.

The positive class (`pos_label`) is always the class high scores mean, so
`polarity = higher_is_attack` reproduces CFB and `higher_is_bonafide` FA3.

The JSON files are pretty-printed (indent 1) so that regenerated fixtures
diff line by line; sample counts are kept small (reference_cases.json
< 120 KiB).

It also writes the small score files tests/fixtures/scores/{dev,test_crlf}.txt
with their expected protocol report (tests/fixtures/scores/malformed.txt is
hand-written).

Run (writes crates/fas-metrics/tests/fixtures/, deterministic seeds):

    python3 -m venv /tmp/venv-metrics
    /tmp/venv-metrics/bin/pip install numpy scikit-learn
    /tmp/venv-metrics/bin/python scripts/fas_metrics/gen_fixtures.py

Generated with Python 3.11.7, NumPy 2.4.6, scikit-learn 1.9.1 (>= 1.3 needed:
`roc_curve` thresholds start at +inf; stored here without that first entry).
"""

import json
import math
import pathlib

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score, roc_curve

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "fas-metrics" / "tests" / "fixtures"
ATTACK_TYPES = ["print", "replay", "adversarial", "digital"]
FPR_POINTS = [0.0, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 1.0]
APCER_TARGETS = [0.0, 0.01, 0.05, 0.1, 0.5]


def grid_eer(scores, is_high):
    """Organiser grid (CFB get_Threshold_Grid / FA3 get_thr), positive = high class."""
    thresholds = [0.0 + i * 1.0 / float(10000) for i in range(10000 + 1)] + [1.1]
    positives = is_high
    negatives = ~is_high
    min_dist = 1.0
    kept = None
    for thr in thresholds:
        decided_positive = scores >= thr
        tp = np.sum(positives & decided_positive)
        fn = np.sum(positives & ~decided_positive)
        tn = np.sum(negatives & ~decided_positive)
        fp = np.sum(negatives & decided_positive)
        if fn + tp == 0:
            frr, far = 1.0, fp / float(fp + tn)
        elif fp + tn == 0:
            far, frr = 1.0, fn / float(fn + tp)
        else:
            far = fp / float(fp + tn)
            frr = fn / float(fn + tp)
        dist = math.fabs(frr - far)
        if dist <= min_dist:
            min_dist = dist
            kept = (float(far), float(frr), thr)
    far, frr, thr = kept
    return {"threshold": thr, "far": far, "frr": frr, "eer": (far + frr) / 2.0}


def index_fnr_minus_fpr(fpr, tpr):
    """FA3 compute_eer / CFB get_Threshold_List, verbatim: fnr = 1 - tpr."""
    fnr = 1 - tpr
    return int(np.nanargmin(np.absolute(fnr - fpr)))


def index_tpr_plus_fpr(fpr, tpr):
    """SAFAS get_err_threhold_cross_db, verbatim; CDCN get_err_threhold has
    np.argmin for np.nanargmin, the same here (no NaN: both classes present)."""
    differ_tpr_fpr_1 = tpr + fpr - 1.0
    return int(np.nanargmin(np.abs(differ_tpr_fpr_1)))


def roc_index_eer(fpr, tpr, thresholds, index):
    """EER = fpr[i], threshold thresholds[i] at the reference's index i."""
    i = index(fpr, tpr)
    fnr = 1 - tpr
    # JSON has no infinity: the leading ROC threshold (+inf) is written as null.
    threshold = None if math.isinf(thresholds[i]) else float(thresholds[i])
    return {"index": i, "eer": float(fpr[i]), "threshold": threshold,
            "fnr": float(fnr[i])}


def rates_at(scores, is_high, is_attack, types, thr, polarity):
    """CFB/FA3 get_Metrics_at_Threshold plus per-type APCER (bob apcer_bpcer)."""
    decided_positive = scores >= thr
    tp = np.sum(is_high & decided_positive)
    fn = np.sum(is_high & ~decided_positive)
    tn = np.sum(~is_high & ~decided_positive)
    fp = np.sum(~is_high & decided_positive)
    far = fp / (fp + tn)
    frr = fn / (tp + fn)
    if polarity == "higher_is_attack":  # CFB: APCER = FRR, NPCER = FAR
        apcer, bpcer = frr, far
    else:  # FA3: positive = live, APCER = FAR, BPCER = FRR
        apcer, bpcer = far, frr
    acer = (apcer + bpcer) / 2
    acc = (tp + tn) / (tp + fp + fn + tn)
    decided_attack = decided_positive if polarity == "higher_is_attack" else ~decided_positive
    per_type = []
    for name in sorted(set(t for t in types if t is not None), key=lambda t: (t != "attack", t)):
        members = is_attack & (types == name)
        accepted = int(np.sum(members & ~decided_attack))
        per_type.append({"attack_type": name, "attacks": int(np.sum(members)),
                         "accepted": accepted, "apcer": accepted / int(np.sum(members))})
    return {"threshold": thr, "apcer": float(apcer), "bpcer": float(bpcer), "acer": float(acer),
            "acc": float(acc), "apcer_worst_case": max(t["apcer"] for t in per_type),
            "per_attack_type": per_type}


def bpcer_at_apcer(scores, is_attack, types, polarity, target, worst_case):
    """Brute force: every distinct score and +inf; lowest BPCER with APCER <= target,
    then lowest APCER."""
    candidates = np.concatenate([[np.inf], np.unique(scores)])
    names = sorted(set(types[is_attack]))
    best = None
    for thr in candidates:
        decided_attack = scores >= thr if polarity == "higher_is_attack" else scores < thr
        if worst_case:
            apcer = max(np.sum(is_attack & (types == n) & ~decided_attack) / np.sum(is_attack & (types == n))
                        for n in names)
        else:
            apcer = np.sum(is_attack & ~decided_attack) / np.sum(is_attack)
        bpcer = np.sum(~is_attack & decided_attack) / np.sum(~is_attack)
        if apcer <= target and (best is None or (bpcer, apcer) < (best[1], best[0])):
            best = (float(apcer), float(bpcer))
    return {"target": target, "worst_case": worst_case, "apcer": best[0], "bpcer": best[1]}


def positives(labels, polarity):
    """ROC positives (pos_label = 1): the class high scores mean."""
    is_attack = np.array([label != "bonafide" for label in labels])
    return is_attack if polarity == "higher_is_attack" else ~is_attack


def curves(scores, labels, polarity):
    """(full, dropped) roc_curve outputs with the high class as positive."""
    y = positives(labels, polarity).astype(int)
    return (roc_curve(y, scores, pos_label=1, drop_intermediate=False),
            roc_curve(y, scores, pos_label=1))


def diagonal_fprs(fpr, tpr, thr, thr_d, most=3):
    """FPRs of points that drop_intermediate removes from a diagonal run (both
    rates rising): there the floor differs between the two curves, since the
    full curve's last point within the FPR is the dropped one."""
    dropped = [i for i, t in enumerate(thr) if t not in set(thr_d)]
    return [fpr[i] for i in dropped if tpr[i] > tpr[i - 1] and fpr[i] > fpr[i - 1]][:most]


def case(name, scores, labels, polarity, note):
    scores = np.asarray(scores, dtype=np.float64)
    types = np.array([None if label == "bonafide" else label for label in labels], dtype=object)
    is_attack = np.array([label != "bonafide" for label in labels])
    is_high = positives(labels, polarity)
    y = is_high.astype(int)
    (fpr, tpr, thr), (fpr_d, tpr_d, thr_d) = curves(scores, labels, polarity)
    # The dropped curve is a subset of the full one: store which points it keeps.
    kept = [int(np.nonzero(thr == t)[0][0]) for t in thr_d]
    grid = grid_eer(scores, is_high)
    thresholds = [grid["threshold"], 0.5, float(np.median(scores)), float(scores[0]),
                  float(np.min(scores)), float(np.max(scores)) + 1.0]
    return {
        "name": name,
        "note": note,
        "polarity": polarity,
        "scores": scores.tolist(),
        "labels": list(labels),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds_after_inf": thr[1:].tolist(),
                "drop_intermediate_indices": kept},
        "auc": float(roc_auc_score(y, scores)),
        "eer_grid": grid,
        "eer_roc_index": roc_index_eer(fpr, tpr, thr, index_tpr_plus_fpr),
        "eer_roc_index_drop_intermediate": roc_index_eer(fpr_d, tpr_d, thr_d, index_fnr_minus_fpr),
        "eer_roc_index_cdcn": roc_index_eer(fpr_d, tpr_d, thr_d, index_tpr_plus_fpr),
        "tpr_at_fpr": [
            {"fpr": float(x),
             "interpolated": float(np.interp(x, fpr, tpr)),
             "interpolated_drop_intermediate": float(np.interp(x, fpr_d, tpr_d)),
             "floor": float(tpr[fpr <= x][-1]),
             "floor_drop_intermediate": float(tpr_d[fpr_d <= x][-1])}
            for x in FPR_POINTS + diagonal_fprs(fpr, tpr, thr, thr_d)
        ],
        "at_threshold": [rates_at(scores, is_high, is_attack, types, t, polarity) for t in thresholds],
        "bpcer_at_apcer": [bpcer_at_apcer(scores, is_attack, types, polarity, t, w)
                           for t in APCER_TARGETS for w in (False, True)],
    }


def typed_labels(rng, n_bonafide, n_attack, typed=True):
    if typed:
        attacks = list(rng.choice(ATTACK_TYPES, size=n_attack))
    else:
        attacks = ["attack"] * n_attack
    return ["bonafide"] * n_bonafide + attacks


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def attack_shift(labels):
    shift = {"print": 2.5, "replay": 1.5, "adversarial": 0.8, "digital": 2.0, "attack": 2.0}
    return np.array([0.0 if label == "bonafide" else shift[label] for label in labels])


def formula_ties(rng):
    """Tie-heavy scores (eighths) on which the two ROC-index formulas,
    |(1 - tpr) - fpr| and |tpr + fpr - 1|, pick different first minima on the
    full and on the dropped curve (points at mathematically equal distance
    from the EER line, rounded differently). Drawn until found; deterministic."""
    polarity = "higher_is_bonafide"
    for _ in range(10000):
        labels = typed_labels(rng, 24, 36)
        steps = rng.integers(0, 6, len(labels)) + rng.integers(0, 3, len(labels)) * (np.array(labels) == "bonafide")
        scores = steps / 8.0
        full, dropped = curves(scores, labels, polarity)
        if all(index_fnr_minus_fpr(f, t) != index_tpr_plus_fpr(f, t) for f, t, _ in (full, dropped)):
            return scores, labels, polarity
    raise RuntimeError("no tie case found")


def cases():
    rng = np.random.default_rng(20240611)
    out = []

    labels = typed_labels(rng, 40, 45)
    logits = rng.normal(-1.0, 1.2, len(labels)) + attack_shift(labels)
    out.append(case("random_higher_attack", np.round(sigmoid(logits), 6), labels, "higher_is_attack",
                    "P(fake) to 6 decimals, 4 attack types with different separations (CFB polarity)"))

    labels = typed_labels(rng, 40, 35)
    logits = rng.normal(1.0, 1.0, len(labels)) - attack_shift(labels)
    out.append(case("random_higher_bonafide", sigmoid(logits), labels, "higher_is_bonafide",
                    "P(live), full double precision, 4 attack types (FA3 polarity)"))

    labels = typed_labels(rng, 30, 30, typed=False)
    logits = rng.normal(0.0, 2.0, len(labels)) + attack_shift(labels)
    out.append(case("logits_untyped", np.round(logits, 5), labels, "higher_is_attack",
                    "raw logits outside [0, 1] (grid meaningless but defined), untyped attacks"))

    labels = typed_labels(rng, 60, 60)
    few = rng.integers(0, 6, len(labels)) + (attack_shift(labels) > 0) * rng.integers(0, 4, len(labels))
    out.append(case("ties_few_values", few / 10.0, labels, "higher_is_attack",
                    "scores from 10 values a tenth apart: ties everywhere, on the grid exactly"))

    labels = typed_labels(rng, 80, 80)
    logits = rng.normal(-0.3, 0.8, len(labels)) + 0.3 * attack_shift(labels)
    out.append(case("grid_decimals", np.round(sigmoid(logits), 2), labels, "higher_is_bonafide",
                    "2-decimal scores, all equal to grid thresholds i/10000, many tied"))

    labels = typed_labels(rng, 20, 20)
    scores = np.where(np.array(labels) == "bonafide", rng.uniform(0.0, 0.4, 40), rng.uniform(0.6, 1.0, 40))
    out.append(case("perfectly_separated", np.round(scores, 6), labels, "higher_is_attack",
                    "every attack above every bona fide: AUC 1, EER 0"))
    out.append(case("fully_inverted", np.round(scores, 6), labels, "higher_is_bonafide",
                    "the same scores read with the wrong polarity: AUC 0"))

    labels = typed_labels(rng, 80, 6)
    logits = rng.normal(-1.0, 1.0, len(labels)) + attack_shift(labels)
    out.append(case("imbalanced_few_attacks", np.round(sigmoid(logits), 3), labels, "higher_is_attack",
                    "80 bona fide, 6 attacks"))

    labels = typed_labels(rng, 5, 80, typed=False)
    logits = rng.normal(1.0, 1.0, len(labels)) - attack_shift(labels)
    out.append(case("imbalanced_few_bonafide", np.round(sigmoid(logits), 3), labels, "higher_is_bonafide",
                    "5 bona fide, 80 attacks"))

    scores, labels, polarity = formula_ties(rng)
    out.append(case("eer_formula_ties", scores, labels, polarity,
                    "scores k/8, searched so that |(1 - tpr) - fpr| (FA3/CFB) and |tpr + fpr - 1| "
                    "(CDCN/SAFAS) pick different ROC indices on both curves"))

    out.append(case("tiny", [0.3, 0.3], ["bonafide", "attack"], "higher_is_attack",
                    "one sample per class, tied"))

    # The fixtures must be able to tell the variants apart.
    tie = out[-2]
    assert tie["eer_roc_index_drop_intermediate"]["index"] != tie["eer_roc_index_cdcn"]["index"]
    assert any(p["floor"] != p["floor_drop_intermediate"] for c in out for p in c["tpr_at_fpr"]), \
        "no case where the floor TPR@FPR differs between the full and the dropped curve"
    return out


def protocol(rng):
    """CFB evaluator flow: grid threshold on dev, rates on test, AUC and EER on
    test (CFB: grid; FA3: compute_eer on the default, dropped curve)."""
    def draw(n_bonafide, n_attack):
        labels = typed_labels(rng, n_bonafide, n_attack)
        logits = rng.normal(-1.2, 1.0, len(labels)) + attack_shift(labels)
        return np.round(sigmoid(logits), 6), labels

    dev_scores, dev_labels = draw(60, 100)
    test_scores, test_labels = draw(100, 160)
    polarity = "higher_is_attack"
    dev_high = np.array([label != "bonafide" for label in dev_labels])
    test_attack = np.array([label != "bonafide" for label in test_labels])
    types = np.array([None if label == "bonafide" else label for label in test_labels], dtype=object)
    thr = grid_eer(dev_scores, dev_high)["threshold"]
    at = rates_at(test_scores, test_attack, test_attack, types, thr, polarity)
    fpr, tpr, thresholds = roc_curve(test_attack.astype(int), test_scores)
    return {
        "polarity": polarity,
        "dev": {"scores": dev_scores.tolist(), "labels": dev_labels},
        "test": {"scores": test_scores.tolist(), "labels": test_labels},
        "threshold": thr,
        "apcer": at["apcer"], "bpcer": at["bpcer"], "acer": at["acer"], "acc": at["acc"],
        "apcer_worst_case": at["apcer_worst_case"], "per_attack_type": at["per_attack_type"],
        "auc": float(roc_auc_score(test_attack.astype(int), test_scores)),
        "eer_grid": grid_eer(test_scores, test_attack)["eer"],
        "eer_fa3": roc_index_eer(fpr, tpr, thresholds, index_fnr_minus_fpr)["eer"],
    }


def score_files(rng):
    """Small score files for the score-file parser and the evaluate_scores path:
    dev in `<score> <label>` form with 0/1 labels, LF, starting with a UTF-8
    byte order mark; test in `<id> <score> <label>` form with attack-type names
    and bona fide as 0, live, Bonafide or REAL in turn, CRLF; comments and
    blank lines in both.
    Polarity: higher = bona fide (challenge submissions give P(live)).
    Expected: CFB evaluator flow with positive = live (FA3)."""
    folder = OUT / "scores"
    folder.mkdir(parents=True, exist_ok=True)

    def draw(n_bonafide, n_attack):
        labels = typed_labels(rng, n_bonafide, n_attack)
        logits = rng.normal(1.0, 1.0, len(labels)) - attack_shift(labels)
        order = rng.permutation(len(labels))
        return np.round(sigmoid(logits), 4)[order], [labels[i] for i in order]

    dev_scores, dev_labels = draw(12, 18)
    lines = ["# dev scores: <score> <label>, 0 = bona fide, 1 = attack", ""]
    for i, (score, label) in enumerate(zip(dev_scores, dev_labels)):
        lines.append(f"{score:.4f} {0 if label == 'bonafide' else 1}")
        if i == 10:
            lines += ["", "   # indented comment", ""]
    (folder / "dev.txt").write_bytes(("\ufeff" + "\n".join(lines) + "\n").encode())

    test_scores, test_labels = draw(16, 24)
    lines = ["# test scores: <id> <score> <label>, CRLF line endings"]
    bonafide_tokens = ["0", "live", "Bonafide", "REAL"]
    n_bonafide = 0
    for i, (score, label) in enumerate(zip(test_scores, test_labels)):
        token = label
        if label == "bonafide":
            token = bonafide_tokens[n_bonafide % len(bonafide_tokens)]
            n_bonafide += 1
        lines.append(f"test/{i:06d}.jpg\t{score:.4f} {token}  # frame {i}" if i % 7 == 0
                     else f"test/{i:06d}.jpg {score:.4f} {token}")
    (folder / "test_crlf.txt").write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())

    polarity = "higher_is_bonafide"
    dev_high = np.array([label == "bonafide" for label in dev_labels])
    test_high = np.array([label == "bonafide" for label in test_labels])
    types = np.array([None if label == "bonafide" else label for label in test_labels], dtype=object)
    thr = grid_eer(dev_scores, dev_high)["threshold"]
    at = rates_at(test_scores, test_high, ~test_high, types, thr, polarity)
    own_thr = grid_eer(test_scores, test_high)["threshold"]
    own = rates_at(test_scores, test_high, ~test_high, types, own_thr, polarity)
    expected = {
        "polarity": polarity,
        "dev_samples": len(dev_labels), "test_samples": len(test_labels),
        "threshold": thr, "apcer": at["apcer"], "bpcer": at["bpcer"], "acer": at["acer"],
        "acc": at["acc"], "hter": at["acer"], "per_attack_type": at["per_attack_type"],
        "auc": float(roc_auc_score(test_high.astype(int), test_scores)),
        "eer": grid_eer(test_scores, test_high)["eer"],
        "test_only": {"threshold": own_thr, "acer": own["acer"]},
    }
    (folder / "expected_report.json").write_text(json.dumps(expected, indent=1, allow_nan=False) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "scripts/fas_metrics/gen_fixtures.py", "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}
    all_cases = cases()
    (OUT / "reference_cases.json").write_text(
        json.dumps({"meta": meta, "cases": all_cases}, indent=1, allow_nan=False) + "\n")
    (OUT / "reference_protocol.json").write_text(
        json.dumps({"meta": meta, **protocol(np.random.default_rng(7))}, indent=1, allow_nan=False) + "\n")
    score_files(np.random.default_rng(11))
    for path in sorted(OUT.glob("**/*.*")):
        print(f"{path.relative_to(OUT)}: {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
