"""Scores of a classifier run and the paired comparison of arms across seeds.

Per run: accuracy per class (the share of the class's test tiles predicted as that class: the
paper's Table 3 cells, i.e. per-class recall), overall accuracy, balanced accuracy and macro F1
(scikit-learn), and the confusion matrix.

Between arms: every seed trains each arm once with the same seed (same initialisation, the same
real tiles and validation draws), so the runs pair by seed. For arms A and B and a metric, the
differences d_s = metric_A(s) - metric_B(s) are tested with the exact sign-flip permutation
test. Its null hypothesis: the two arms are exchangeable within each seed, so each d_s is as
likely to have either sign (d is symmetric about 0); the statistic is |mean d|, and the p-value
is the share of all 2^n sign patterns whose |mean| reaches the observed one (two-sided). With n
seeds the smallest attainable p is 2 / 2^n: 6 seeds are needed for p < 0.05. A paired t-test's
p-value (scipy) is shown beside it. p-values are Holm-adjusted over the arm pairs of a metric.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score
from statsmodels.stats.multitest import multipletests

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
ALPHA = 0.05


def run_scores(truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> dict[str, object]:
    """Scores of one run on the test tiles.

    Args:
        truth: true labels (indices into `classes`).
        predicted: predicted labels.
        classes: class names in label order.

    Returns:
        `per_class` ({class: accuracy}), `accuracy`, `balanced_accuracy`, `macro_f1`, `n`
        ({class: test tiles}) and `confusion` (rows true, columns predicted, counts).
    """
    labels = list(range(len(classes)))
    matrix = confusion_matrix(truth, predicted, labels=labels)
    counts = matrix.sum(axis=1)
    per_class = {name: float(matrix[i, i] / counts[i]) for i, name in enumerate(classes) if counts[i]}
    return {
        "per_class": per_class,
        "n": {name: int(counts[i]) for i, name in enumerate(classes)},
        "accuracy": float(np.mean(truth == predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "confusion": matrix,
    }


def sign_flip_test(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip permutation p-value of paired differences (H0: symmetric about 0).

    Every one of the 2^n sign patterns is enumerated (n <= 20 keeps that to a million), and the
    p-value counts those with |mean| at least the observed |mean|, the identity included.
    Differences all zero give p = 1.

    Raises:
        ValueError: no differences, or more than 20.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0 or d.size > 20:
        raise ValueError(f"sign_flip_test takes 1..20 paired differences, got {d.size}")
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(signs @ d) / d.size
    observed = abs(d.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def compare_arms(runs: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """The paired comparison of every two arms on every metric.

    Args:
        runs: one row per (arm, seed) with the `METRICS` columns.
        arms: the arms in report order; pairs are (earlier, later).

    Returns:
        One row per metric and pair: the mean and standard deviation of the paired
        differences (arm_a - arm_b), n seeds, the sign-flip p-value and its Holm adjustment,
        the paired t-test's p-value, and `better`: the arm with the higher mean where the
        adjusted p-value is below 0.05, else "no difference shown".
    """
    rows = []
    for metric in METRICS:
        block = []
        for first, second in itertools.combinations(arms, 2):
            a = runs[runs["arm"] == first].set_index("seed")[metric]
            b = runs[runs["arm"] == second].set_index("seed")[metric]
            seeds = sorted(set(a.index) & set(b.index))
            d = (a.loc[seeds] - b.loc[seeds]).to_numpy(dtype=np.float64)
            t_p = float(stats.ttest_rel(a.loc[seeds], b.loc[seeds]).pvalue) if len(seeds) > 1 else np.nan
            block.append(
                {
                    "metric": metric,
                    "arm_a": first,
                    "arm_b": second,
                    "mean_difference": float(d.mean()),
                    "std_difference": float(d.std(ddof=1)) if len(d) > 1 else np.nan,
                    "n_seeds": len(seeds),
                    "p_sign_flip": sign_flip_test(d),
                    "min_attainable_p": 2.0 / 2 ** len(seeds) if len(seeds) else np.nan,
                    "p_ttest": t_p,
                }
            )
        adjusted = multipletests([row["p_sign_flip"] for row in block], method="holm")[1] if block else []
        for row, p_holm in zip(block, adjusted, strict=True):
            row["p_holm"] = float(p_holm)
            winner = row["arm_a"] if row["mean_difference"] > 0 else row["arm_b"]
            row["better"] = winner if p_holm < ALPHA else "no difference shown"
            rows.append(row)
    columns = [
        "metric",
        "arm_a",
        "arm_b",
        "mean_difference",
        "std_difference",
        "n_seeds",
        "p_sign_flip",
        "p_holm",
        "p_ttest",
        "min_attainable_p",
        "better",
    ]
    return pd.DataFrame(rows, columns=columns)
