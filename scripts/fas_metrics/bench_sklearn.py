"""scikit-learn baseline for the fas-metrics criterion bench (benches/roc_auc_eer.rs):
`roc_auc_score` + `roc_curve(drop_intermediate=False)` + the ROC-index EER
(`fpr[argmin |fnr - fpr|]`) on 1,000,000 random scores, median of 11 runs.

Same distribution as the Rust bench (half attacks, uniform scores, attacks
shifted up by 0.3; a different random generator, so not bit-identical data).

    /tmp/venv-metrics/bin/python scripts/fas_metrics/bench_sklearn.py

Measured with Python 3.11.7, NumPy 2.4.6, scikit-learn 1.9.1.
"""

import statistics
import time

import numpy as np
import sklearn
from sklearn.metrics import roc_auc_score, roc_curve

SAMPLES = 1_000_000
RUNS = 11


def main():
    rng = np.random.default_rng(1_000_000)
    is_attack = rng.random(SAMPLES) < 0.5
    scores = rng.random(SAMPLES) * 0.7 + np.where(is_attack, 0.3, 0.0)
    y = is_attack.astype(int)

    def auc_and_roc():
        auc = roc_auc_score(y, scores)
        fpr, tpr, thr = roc_curve(y, scores, drop_intermediate=False)
        return auc, fpr, tpr, thr

    def auc_roc_eer():
        auc, fpr, tpr, thr = auc_and_roc()
        i = np.argmin(np.abs((1 - tpr) - fpr))
        return auc, fpr[i], thr[i]

    print(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}, {SAMPLES} scores, {RUNS} runs")
    for name, fn in [("roc_auc_score + roc_curve", auc_and_roc),
                     ("roc_auc_score + roc_curve + ROC-index EER", auc_roc_eer)]:
        fn()  # warm-up
        times = []
        for _ in range(RUNS):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(f"{name}: median {statistics.median(times) * 1e3:.1f} ms "
              f"(min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f})")


if __name__ == "__main__":
    main()
