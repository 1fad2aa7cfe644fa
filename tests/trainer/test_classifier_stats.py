"""The classifier's scores and the paired comparison of arms, against scikit-learn, scipy and simulation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import recall_score

from trainer.classifier.stats import compare_arms, run_scores, sign_flip_test


def test_run_scores_match_scikit_learn_and_a_hand_count() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 1, 0, 1, 1, 2, 0, 2, 1])
    scores = run_scores(truth, predicted, ["ADI", "BACK", "TUM"])
    assert scores["per_class"] == pytest.approx(
        dict(zip(["ADI", "BACK", "TUM"], [2 / 3, 1.0, 0.5], strict=True))
    )
    recall = recall_score(truth, predicted, average=None)
    assert list(scores["per_class"].values()) == pytest.approx(list(recall))
    assert scores["accuracy"] == pytest.approx(6 / 9)
    assert scores["balanced_accuracy"] == pytest.approx(np.mean([2 / 3, 1.0, 0.5]))
    assert scores["n"] == {"ADI": 3, "BACK": 2, "TUM": 4}
    assert scores["confusion"].sum() == 9 and scores["confusion"][2, 0] == 1


def test_sign_flip_is_exact_against_scipy_and_a_hand_count() -> None:
    assert sign_flip_test([0.1, 0.2, 0.3]) == pytest.approx(2 / 8)  # only all-plus and all-minus reach it
    assert sign_flip_test([0.0, 0.0]) == 1.0
    rng = np.random.default_rng(3)
    for n in (4, 7, 9):
        d = rng.normal(0.3, 1.0, n)
        reference = stats.permutation_test(
            (d,), np.mean, permutation_type="samples", alternative="two-sided", n_resamples=np.inf
        )
        assert sign_flip_test(d) == pytest.approx(reference.pvalue)


def test_sign_flip_is_calibrated_under_no_difference_and_has_power_under_a_planted_one() -> None:
    rng = np.random.default_rng(11)
    n, trials = 8, 1500
    null = np.array([sign_flip_test(rng.normal(0.0, 0.02, n)) for _ in range(trials)])
    rate = float(np.mean(null < 0.05))
    assert rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)  # exact test: at most alpha
    planted = np.array([sign_flip_test(rng.normal(0.03, 0.02, n)) for _ in range(400)])
    assert np.mean(planted < 0.05) > 0.8  # 1.5 standard deviations of difference, 8 seeds


def test_compare_arms_names_the_better_arm_only_when_the_test_says_so() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for seed in range(8):
        base = rng.normal(0.8, 0.02)  # a seed effect shared by the arms: pairing removes it
        rows += [
            {"arm": "real", "seed": seed, "accuracy": base, "balanced_accuracy": base, "macro_f1": base},
            {"arm": "combined", "seed": seed, "accuracy": base + 0.04 + rng.normal(0, 0.005)},
        ]
        rows[-1] |= {"balanced_accuracy": rows[-1]["accuracy"], "macro_f1": base + rng.normal(0, 0.02)}
    table = compare_arms(pd.DataFrame(rows), ["real", "combined"])
    accuracy = table[table["metric"] == "accuracy"].iloc[0]
    assert accuracy["better"] == "combined" and accuracy["p_sign_flip"] == pytest.approx(2 / 256)
    assert accuracy["mean_difference"] < 0 and accuracy["min_attainable_p"] == pytest.approx(2 / 256)
    assert accuracy["p_ttest"] == pytest.approx(
        stats.ttest_rel(
            [r["accuracy"] for r in rows if r["arm"] == "real"],
            [r["accuracy"] for r in rows if r["arm"] == "combined"],
        ).pvalue
    )
    noise = table[table["metric"] == "macro_f1"].iloc[0]
    assert noise["better"] == "no difference shown" and noise["p_sign_flip"] > 0.05
